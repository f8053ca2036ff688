//! The manifest lists every published Parquet file. It is replaced atomically (write a
//! temporary file, fsync, rename, fsync the directory), so a reader or a restart sees either
//! the old set of files or the new one, never a mix. Files written but not yet in the manifest
//! are invisible, and are removed on the next start.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tally_wire::Table;

use crate::StoreError;
use crate::dedupe::KeyStamp;
use crate::wal::sync_dir;

const NAME: &str = "manifest.json";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Manifest {
    /// Incremented on every publish.
    pub version: u64,
    /// Every WAL record up to this sequence number is in the files below.
    pub wal_through: u64,
    pub files: Vec<FileEntry>,
    /// Files no longer listed, kept a little while for queries that started before they
    /// were replaced.
    #[serde(default)]
    pub pending_deletes: Vec<PendingDelete>,
    /// Per producer, the highest batch key made durable (as of the flush that wrote this
    /// manifest), so a resend is recognised after the WAL records carrying the keys are gone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub producers: Vec<KeyStamp>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct FileEntry {
    pub table: Table,
    /// Path inside the object store.
    pub path: String,
    /// Start of the hour partition, ms since the epoch (UTC).
    pub hour_ms: i64,
    pub min_time_ms: i64,
    pub max_time_ms: i64,
    pub rows: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct PendingDelete {
    pub path: String,
    pub since_ms: i64,
}

impl Manifest {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(NAME)
    }

    /// Loads the manifest, or an empty one when the store is new.
    pub fn load(dir: &Path) -> Result<Self, StoreError> {
        let path = Self::path(dir);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::CorruptManifest {
                path,
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(StoreError::io(path, e)),
        }
    }

    pub fn store(&self, dir: &Path) -> Result<(), StoreError> {
        let path = Self::path(dir);
        let tmp = dir.join(format!("{NAME}.tmp"));
        let bytes = serde_json::to_vec(self).expect("manifest serialises");
        let write = || -> std::io::Result<()> {
            let mut file = fs::File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|e| StoreError::io(&path, e))?;
        sync_dir(dir)
    }

    pub fn files_of(&self, table: Table) -> impl Iterator<Item = &FileEntry> {
        self.files.iter().filter(move |f| f.table == table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_store_has_an_empty_manifest_and_publishing_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let empty = Manifest::load(dir.path()).unwrap();
        assert_eq!(empty.version, 0);
        assert!(empty.files.is_empty());

        let mut m = Manifest {
            version: 1,
            wal_through: 9,
            ..Default::default()
        };
        m.files.push(FileEntry {
            table: Table::NodeUsage,
            path: "tables/node_usage/date=2026-01-01/hour=00/a.parquet".into(),
            hour_ms: 1_767_225_600_000,
            min_time_ms: 1_767_225_600_000,
            max_time_ms: 1_767_225_660_000,
            rows: 2,
            bytes: 100,
        });
        m.store(dir.path()).unwrap();
        m.producers.push(KeyStamp {
            producer: tally_wire::ProducerId(0x1f),
            sequence: 12,
            seen_ms: 1_767_225_660_000,
        });
        m.store(dir.path()).unwrap();
        let back = Manifest::load(dir.path()).unwrap();
        assert_eq!(back.wal_through, 9);
        assert_eq!(back.files, m.files);
        assert_eq!(back.producers, m.producers);
        let text = fs::read_to_string(Manifest::path(dir.path())).unwrap();
        assert!(
            text.contains(r#""producers":[{"producer":"0000000000000000000000000000001f","sequence":12,"seen_ms":1767225660000}]"#),
            "{text}"
        );
        // A manifest from before batch keys reads with none.
        fs::write(
            Manifest::path(dir.path()),
            br#"{"version":3,"wal_through":9,"files":[]}"#,
        )
        .unwrap();
        assert!(Manifest::load(dir.path()).unwrap().producers.is_empty());
        assert!(!dir.path().join("manifest.json.tmp").exists());

        fs::write(Manifest::path(dir.path()), b"{not json").unwrap();
        let err = Manifest::load(dir.path()).unwrap_err();
        assert!(err.to_string().starts_with("corrupt manifest"), "{err}");
    }
}
