//! The write-ahead log: every batch is appended here, and fsynced, before it is acknowledged.
//!
//! A log is a directory of segment files named by the sequence number of their first record.
//! Each record is framed as
//!
//! ```text
//! [u32 LE: length of the rest] [u32 LE: CRC-32 of seq + payload] [u64 LE: seq] [payload]
//! payload = [u8: table name length] [table name] [Arrow IPC stream: schema, one batch, end]
//!         | [u8: 0xFF] [batch key: u128 producer, u64 sequence, i64 ms seen] [as above]
//! ```
//!
//! A batch written with a key (`tally_wire::BatchKey`) carries it in its record, so a replay
//! restores which keys are durable ([`crate::dedupe`]). Table names are shorter than 255
//! bytes, so a first byte of 0xFF cannot start a record without a key, and records written
//! before keys existed read as they always did.
//!
//! A crash can tear only the tail of the segment being written; replay stops at the first
//! record whose frame or checksum does not hold, and truncates the file there, so the torn
//! record (never acknowledged) is gone and nothing after it is misread. A bad record anywhere
//! else is corruption and refuses to start rather than silently dropping acknowledged rows.

use std::fs::{self, File, OpenOptions};
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use tally_wire::Table;

use crate::StoreError;
use crate::dedupe::KeyStamp;

const HEADER: usize = 4 + 4 + 8;
const SUFFIX: &str = ".wal";
/// First payload byte of a record that carries a batch key.
const KEYED: u8 = 0xFF;

/// A batch encoded for the log, before it has a sequence number.
pub(crate) struct EncodedBatch {
    pub table: Table,
    pub key: Option<KeyStamp>,
    pub payload: Vec<u8>,
}

pub(crate) fn encode(
    table: Table,
    batch: &RecordBatch,
    key: Option<KeyStamp>,
) -> Result<EncodedBatch, StoreError> {
    let name = table.name().as_bytes();
    debug_assert!(name.len() < usize::from(KEYED));
    let mut payload = Vec::with_capacity(batch.get_array_memory_size() / 2 + 1024);
    if let Some(key) = &key {
        payload.push(KEYED);
        key.write_to(&mut payload);
    }
    payload.push(name.len() as u8);
    payload.extend_from_slice(name);
    let mut writer = StreamWriter::try_new(&mut payload, &batch.schema())?;
    writer.write(batch)?;
    writer.finish()?;
    drop(writer);
    Ok(EncodedBatch {
        table,
        key,
        payload,
    })
}

/// The key of a record, if it has one, and the rest of its payload.
fn split_key(payload: &[u8]) -> Result<(Option<KeyStamp>, &[u8]), String> {
    match payload.split_first() {
        Some((&KEYED, rest)) => {
            let key = KeyStamp::read_from(rest).ok_or("record shorter than its batch key")?;
            Ok((Some(key), &rest[KeyStamp::BYTES..]))
        }
        _ => Ok((None, payload)),
    }
}

fn decode(payload: &[u8]) -> Result<(Table, RecordBatch), String> {
    let (&name_len, rest) = payload.split_first().ok_or("empty payload")?;
    let name_len = usize::from(name_len);
    if rest.len() < name_len {
        return Err("payload shorter than its table name".into());
    }
    let name = std::str::from_utf8(&rest[..name_len]).map_err(|e| e.to_string())?;
    let table: Table = name
        .parse()
        .map_err(|e: tally_wire::UnknownTable| e.to_string())?;
    let mut reader =
        StreamReader::try_new(Cursor::new(&rest[name_len..]), None).map_err(|e| e.to_string())?;
    let batch = reader
        .next()
        .ok_or("no batch in record")?
        .map_err(|e| e.to_string())?;
    // Batches are stored under the table's canonical schema (nullability and metadata).
    let batch = RecordBatch::try_new(table.schema(), batch.columns().to_vec())
        .map_err(|e| e.to_string())?;
    Ok((table, batch))
}

fn checksum(seq: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&seq.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}{SUFFIX}"))
}

/// Segment files in order, with the sequence number of their first record.
pub(crate) fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let mut found = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| StoreError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(dir, e))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(SUFFIX)) else {
            continue;
        };
        if let Ok(first) = stem.parse::<u64>() {
            found.push((first, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(dir, e))
}

/// What replay found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReplayStats {
    pub records: u64,
    pub rows: u64,
    pub skipped_records: u64,
    pub last_seq: u64,
    pub truncated_bytes: u64,
}

/// Reads every record of the log in order, handing those with a sequence number above
/// `after_seq` to `apply`, and the batch key of every record (flushed or not) to `keys`.
pub(crate) fn replay(
    dir: &Path,
    after_seq: u64,
    mut keys: impl FnMut(KeyStamp),
    mut apply: impl FnMut(u64, Table, RecordBatch),
) -> Result<ReplayStats, StoreError> {
    let mut stats = ReplayStats {
        last_seq: after_seq,
        ..Default::default()
    };
    let all = segments(dir)?;
    for (index, (_, path)) in all.iter().enumerate() {
        let is_last = index + 1 == all.len();
        let bytes = fs::read(path).map_err(|e| StoreError::io(path, e))?;
        let mut offset = 0usize;
        while offset < bytes.len() {
            match read_record(&bytes[offset..]) {
                Ok((seq, payload, used)) => {
                    let corrupt = |reason| StoreError::CorruptWal {
                        path: path.clone(),
                        offset: offset as u64,
                        reason,
                    };
                    let (key, payload) = split_key(payload).map_err(corrupt)?;
                    if let Some(key) = key {
                        keys(key);
                    }
                    if seq > after_seq {
                        let (table, batch) = decode(payload).map_err(corrupt)?;
                        stats.rows += batch.num_rows() as u64;
                        stats.records += 1;
                        apply(seq, table, batch);
                    } else {
                        stats.skipped_records += 1;
                    }
                    stats.last_seq = stats.last_seq.max(seq);
                    offset += used;
                }
                Err(reason) if is_last => {
                    tracing::warn!(
                        path = %path.display(),
                        offset,
                        reason,
                        "write-ahead log ends in a torn record (a crash during a write that was never acknowledged); truncating it"
                    );
                    let file = OpenOptions::new()
                        .write(true)
                        .open(path)
                        .map_err(|e| StoreError::io(path, e))?;
                    file.set_len(offset as u64)
                        .and_then(|_| file.sync_all())
                        .map_err(|e| StoreError::io(path, e))?;
                    stats.truncated_bytes = (bytes.len() - offset) as u64;
                    break;
                }
                Err(reason) => {
                    return Err(StoreError::CorruptWal {
                        path: path.clone(),
                        offset: offset as u64,
                        reason,
                    });
                }
            }
        }
    }
    Ok(stats)
}

fn read_record(bytes: &[u8]) -> Result<(u64, &[u8], usize), String> {
    if bytes.len() < HEADER {
        return Err(format!(
            "{} bytes left, a header needs {HEADER}",
            bytes.len()
        ));
    }
    let len = u32::from_le_bytes(bytes[0..4].try_into().unwrap()) as usize;
    let crc = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
    let seq = u64::from_le_bytes(bytes[8..16].try_into().unwrap());
    if len < 8 || 8 + len > bytes.len() {
        return Err(format!("record length {len} runs past the end"));
    }
    let payload = &bytes[HEADER..8 + len];
    if checksum(seq, payload) != crc {
        return Err("checksum mismatch".into());
    }
    Ok((seq, payload, 8 + len))
}

/// Appends records to the newest segment. Owned by the single writer thread.
pub(crate) struct WalWriter {
    dir: PathBuf,
    file: File,
    path: PathBuf,
    len: u64,
    next_seq: u64,
    buffer: Vec<u8>,
}

impl WalWriter {
    /// Starts a new segment whose first record will be `next_seq`.
    pub fn create(dir: &Path, next_seq: u64) -> Result<Self, StoreError> {
        let path = segment_path(dir, next_seq);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| StoreError::io(&path, e))?;
        let len = file.metadata().map_err(|e| StoreError::io(&path, e))?.len();
        sync_dir(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            file,
            path,
            len,
            next_seq,
            buffer: Vec::new(),
        })
    }

    /// The sequence number the next record will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Appends a group of records with one write and one fsync, returning their sequence
    /// numbers. On failure nothing of the group stays in the log.
    pub fn append(&mut self, group: &[&EncodedBatch]) -> Result<Vec<u64>, StoreError> {
        self.buffer.clear();
        let mut seqs = Vec::with_capacity(group.len());
        for (i, record) in group.iter().enumerate() {
            let seq = self.next_seq + i as u64;
            let len = 8 + record.payload.len();
            let len = u32::try_from(len).map_err(|_| StoreError::InvalidBatch {
                table: record.table,
                reason: format!("encoded batch of {len} bytes is over 4 GiB"),
            })?;
            self.buffer.extend_from_slice(&len.to_le_bytes());
            self.buffer
                .extend_from_slice(&checksum(seq, &record.payload).to_le_bytes());
            self.buffer.extend_from_slice(&seq.to_le_bytes());
            self.buffer.extend_from_slice(&record.payload);
            seqs.push(seq);
        }
        let written = self
            .file
            .write_all(&self.buffer)
            .and_then(|_| self.file.sync_data());
        if let Err(error) = written {
            // Cut off whatever part of the group reached the file, so the log stays a clean
            // sequence of acknowledged records. If even that fails the caller must stop
            // accepting writes.
            let undo = self
                .file
                .set_len(self.len)
                .and_then(|_| self.file.sync_data());
            return Err(match undo {
                Ok(()) => StoreError::io(&self.path, error),
                Err(undo) => StoreError::Poisoned(format!(
                    "write to {} failed ({error}) and the partial write could not be removed ({undo})",
                    self.path.display()
                )),
            });
        }
        self.len += self.buffer.len() as u64;
        self.next_seq += group.len() as u64;
        Ok(seqs)
    }

    /// Closes the current segment and starts a new one; returns the last sequence number
    /// written before the switch.
    pub fn rotate(&mut self) -> Result<u64, StoreError> {
        if self.len > 0 {
            *self = WalWriter::create(&self.dir, self.next_seq)?;
        }
        Ok(self.next_seq - 1)
    }
}

/// Deletes every closed segment whose records are all at or below `through_seq`.
pub(crate) fn truncate(
    dir: &Path,
    through_seq: u64,
    active_first_seq: u64,
) -> Result<usize, StoreError> {
    let all = segments(dir)?;
    let mut removed = 0;
    for (i, (first, path)) in all.iter().enumerate() {
        if *first >= active_first_seq {
            continue;
        }
        // A segment ends where the next one starts.
        let next_first = all.get(i + 1).map(|(f, _)| *f).unwrap_or(active_first_seq);
        if next_first.saturating_sub(1) <= through_seq {
            fs::remove_file(path).map_err(|e| StoreError::io(path, e))?;
            removed += 1;
        }
    }
    if removed > 0 {
        sync_dir(dir)?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray, TimestampMillisecondArray};
    use std::sync::Arc;

    pub(crate) fn events(n: usize, offset: i64) -> RecordBatch {
        let schema = Table::Events.schema();
        let strings = |s: &str| Arc::new(StringArray::from(vec![s; n])) as _;
        let opt = || Arc::new(StringArray::from(vec![None::<&str>; n])) as _;
        let ints = || Arc::new(Int64Array::from(vec![None; n])) as _;
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(
                    TimestampMillisecondArray::from_iter_values((0..n as i64).map(|i| i + offset))
                        .with_timezone("UTC"),
                ),
                strings("ns"),
                strings("pod"),
                opt(),
                opt(),
                strings("Deployment"),
                strings("web"),
                strings("OOMKilled"),
                opt(),
                ints(),
                ints(),
            ],
        )
        .unwrap()
    }

    #[test]
    fn records_round_trip_and_replay_skips_what_is_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = WalWriter::create(dir.path(), 1).unwrap();
        let a = encode(Table::Events, &events(3, 0), None).unwrap();
        let b = encode(Table::Events, &events(2, 100), None).unwrap();
        assert_eq!(wal.append(&[&a, &b]).unwrap(), vec![1, 2]);
        assert_eq!(wal.rotate().unwrap(), 2);
        let c = encode(Table::Events, &events(4, 200), None).unwrap();
        assert_eq!(wal.append(&[&c]).unwrap(), vec![3]);

        let mut seen = Vec::new();
        let stats = replay(
            dir.path(),
            1,
            |_| {},
            |seq, table, batch| seen.push((seq, table, batch.num_rows())),
        )
        .unwrap();
        assert_eq!(seen, vec![(2, Table::Events, 2), (3, Table::Events, 4)]);
        assert_eq!(stats.last_seq, 3);
        assert_eq!(stats.skipped_records, 1);

        // Everything through 2 is flushed: the first segment goes, the active one stays.
        assert_eq!(truncate(dir.path(), 2, 3).unwrap(), 1);
        assert_eq!(segments(dir.path()).unwrap().len(), 1);
    }

    #[test]
    fn keys_come_back_from_every_record_flushed_or_not_and_unkeyed_records_read_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = WalWriter::create(dir.path(), 1).unwrap();
        let stamp = |sequence| KeyStamp {
            producer: tally_wire::ProducerId(0xab),
            sequence,
            seen_ms: 1_000 + sequence as i64,
        };
        let a = encode(Table::Events, &events(3, 0), Some(stamp(1))).unwrap();
        let b = encode(Table::Events, &events(2, 100), None).unwrap();
        let c = encode(Table::Events, &events(4, 200), Some(stamp(2))).unwrap();
        wal.append(&[&a, &b, &c]).unwrap();

        let mut keys = Vec::new();
        let mut seen = Vec::new();
        // Record 1 is flushed: its rows are not replayed, its key is.
        replay(
            dir.path(),
            1,
            |k| keys.push(k),
            |seq, _, batch| seen.push((seq, batch.num_rows())),
        )
        .unwrap();
        assert_eq!(keys, vec![stamp(1), stamp(2)]);
        assert_eq!(seen, vec![(2, 2), (3, 4)]);
    }

    #[test]
    fn a_torn_tail_is_truncated_and_earlier_records_survive() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = WalWriter::create(dir.path(), 1).unwrap();
        let a = encode(Table::Events, &events(3, 0), None).unwrap();
        wal.append(&[&a, &a]).unwrap();
        let path = segments(dir.path()).unwrap()[0].1.clone();
        let full = fs::metadata(&path).unwrap().len();
        // A crash in the middle of the second record.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(full - 10).unwrap();

        let mut rows = 0;
        let stats = replay(dir.path(), 0, |_| {}, |_, _, b| rows += b.num_rows()).unwrap();
        assert_eq!(rows, 3);
        assert_eq!(stats.records, 1);
        assert!(stats.truncated_bytes > 0);
        assert_eq!(fs::metadata(&path).unwrap().len(), full / 2);
        // Replaying again finds a clean log.
        let again = replay(dir.path(), 0, |_| {}, |_, _, _| {}).unwrap();
        assert_eq!(again.truncated_bytes, 0);
    }

    #[test]
    fn corruption_before_the_tail_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = WalWriter::create(dir.path(), 1).unwrap();
        let a = encode(Table::Events, &events(3, 0), None).unwrap();
        wal.append(&[&a]).unwrap();
        wal.rotate().unwrap();
        wal.append(&[&a]).unwrap();
        let first = segments(dir.path()).unwrap()[0].1.clone();
        let mut bytes = fs::read(&first).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        fs::write(&first, bytes).unwrap();
        let err = replay(dir.path(), 0, |_| {}, |_, _, _| {}).unwrap_err();
        assert!(matches!(err, StoreError::CorruptWal { .. }), "{err}");
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
    }
}
