//! Writes batches as Parquet files, one per table and hour partition, sorted by the table's
//! series key and then time, zstd-compressed, with page-level statistics (and so the page
//! index) for pruning.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch, UInt32Array};
use arrow::compute::{
    SortColumn, concat_batches, filter_record_batch, lexsort_to_indices, take_record_batch,
};
use arrow::datatypes::{DataType, TimestampMillisecondType};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use tally_wire::{TIME_COLUMN, Table};

use crate::StoreError;
use crate::manifest::FileEntry;

pub(crate) const HOUR_MS: i64 = 3_600_000;

pub(crate) fn hour_of(ms: i64) -> i64 {
    ms.div_euclid(HOUR_MS) * HOUR_MS
}

/// `tables/<table>/date=YYYY-MM-DD/hour=HH`
pub(crate) fn partition_dir(table: Table, hour_ms: i64) -> String {
    let at: DateTime<Utc> = DateTime::from_timestamp_millis(hour_ms).unwrap_or_default();
    format!(
        "tables/{}/{}",
        table.name(),
        at.format("date=%Y-%m-%d/hour=%H")
    )
}

pub(crate) fn times(
    batch: &RecordBatch,
) -> &arrow::array::PrimitiveArray<TimestampMillisecondType> {
    batch.column(0).as_primitive::<TimestampMillisecondType>()
}

/// (min, max) of the time column, or None for an empty batch.
pub(crate) fn time_range(batch: &RecordBatch) -> Option<(i64, i64)> {
    let t = times(batch);
    Some((arrow::compute::min(t)?, arrow::compute::max(t)?))
}

/// Splits batches into hour partitions.
pub(crate) fn split_by_hour(
    batches: &[RecordBatch],
) -> Result<BTreeMap<i64, Vec<RecordBatch>>, StoreError> {
    let mut parts: BTreeMap<i64, Vec<RecordBatch>> = BTreeMap::new();
    for batch in batches.iter().filter(|b| b.num_rows() > 0) {
        let Some((min, max)) = time_range(batch) else {
            continue;
        };
        if hour_of(min) == hour_of(max) {
            parts.entry(hour_of(min)).or_default().push(batch.clone());
            continue;
        }
        let t = times(batch);
        let mut hour = hour_of(min);
        while hour <= max {
            let mask = arrow::array::BooleanArray::from_iter(
                t.values().iter().map(|&v| Some(hour_of(v) == hour)),
            );
            let part = filter_record_batch(batch, &mask)?;
            if part.num_rows() > 0 {
                parts.entry(hour).or_default().push(part);
            }
            hour += HOUR_MS;
        }
    }
    Ok(parts)
}

/// Sorts rows by the table's series key, then time.
pub(crate) fn sort(table: Table, batch: &RecordBatch) -> Result<RecordBatch, StoreError> {
    let def = table.def();
    let mut columns: Vec<SortColumn> = def
        .series_key
        .iter()
        .map(|name| SortColumn {
            values: batch
                .column_by_name(name)
                .expect("series key column")
                .clone(),
            options: None,
        })
        .collect();
    columns.push(SortColumn {
        values: batch
            .column_by_name(TIME_COLUMN)
            .expect("time column")
            .clone(),
        options: None,
    });
    let indices: UInt32Array = lexsort_to_indices(&columns, None)?;
    Ok(take_record_batch(batch, &indices)?)
}

fn properties(table: Table) -> WriterProperties {
    let schema = table.schema();
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).expect("valid level"),
        ))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(1 << 20))
        .set_data_page_row_count_limit(20_000)
        .set_column_dictionary_enabled(ColumnPath::from(TIME_COLUMN), false)
        .set_column_encoding(ColumnPath::from(TIME_COLUMN), Encoding::DELTA_BINARY_PACKED);
    // Measured values (usage, sums) rarely repeat: byte-stream split lets zstd find the
    // patterns in exponents and high mantissa bytes. Settings (requests, limits) repeat and
    // stay dictionary-encoded.
    for field in schema.fields() {
        let name = field.name();
        let measured = matches!(
            name.as_str(),
            "cpu_cores" | "cpu_sum" | "memory_sum" | "cpu_throttled_seconds" | "gpu_utilization"
        );
        if measured && field.data_type() == &DataType::Float64 {
            builder = builder
                .set_column_dictionary_enabled(ColumnPath::from(name.as_str()), false)
                .set_column_encoding(ColumnPath::from(name.as_str()), Encoding::BYTE_STREAM_SPLIT);
        }
        if matches!(
            name.as_str(),
            "memory_working_set_bytes" | "memory_rss_bytes"
        ) {
            builder = builder
                .set_column_dictionary_enabled(ColumnPath::from(name.as_str()), false)
                .set_column_encoding(
                    ColumnPath::from(name.as_str()),
                    Encoding::DELTA_BINARY_PACKED,
                );
        }
    }
    builder.build()
}

/// Encodes one partition's rows (already sorted) as a Parquet file.
pub(crate) fn encode(table: Table, batch: &RecordBatch) -> Result<Bytes, StoreError> {
    let mut out = Vec::with_capacity(batch.get_array_memory_size() / 4 + 4096);
    let mut writer = ArrowWriter::try_new(&mut out, table.schema(), Some(properties(table)))?;
    writer.write(batch)?;
    writer.close()?;
    Ok(Bytes::from(out))
}

/// Writes one partition file and returns its manifest entry. `local_root` is the directory
/// behind a local object store, whose files are fsynced before they are published.
pub(crate) async fn write_partition(
    store: &Arc<dyn ObjectStore>,
    local_root: Option<&Path>,
    table: Table,
    hour_ms: i64,
    batches: Vec<RecordBatch>,
) -> Result<FileEntry, StoreError> {
    let (bytes, rows, min, max) = tokio::task::spawn_blocking(move || {
        let batch = concat_batches(&table.schema(), &batches)?;
        let batch = sort(table, &batch)?;
        let (min, max) = time_range(&batch).unwrap_or((hour_ms, hour_ms));
        Ok::<_, StoreError>((encode(table, &batch)?, batch.num_rows() as u64, min, max))
    })
    .await
    .expect("encoding task panicked")?;
    let path = format!(
        "{}/{}.parquet",
        partition_dir(table, hour_ms),
        uuid::Uuid::new_v4()
    );
    let size = bytes.len() as u64;
    store
        .put(&ObjectPath::from(path.as_str()), bytes.into())
        .await?;
    if let Some(root) = local_root {
        let file = root.join(&path);
        let parent = file.parent().map(Path::to_path_buf);
        tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
            std::fs::File::open(&file)
                .and_then(|f| f.sync_all())
                .map_err(|e| StoreError::io(&file, e))?;
            if let Some(parent) = parent {
                crate::wal::sync_dir(&parent)?;
            }
            Ok(())
        })
        .await
        .expect("sync task panicked")?;
    }
    Ok(FileEntry {
        table,
        path,
        hour_ms,
        min_time_ms: min,
        max_time_ms: max,
        rows,
        bytes: size,
    })
}

/// Reads a whole Parquet file (for compaction).
pub(crate) async fn read_file(
    store: &Arc<dyn ObjectStore>,
    table: Table,
    path: &str,
) -> Result<Vec<RecordBatch>, StoreError> {
    let bytes = store.get(&ObjectPath::from(path)).await?.bytes().await?;
    tokio::task::spawn_blocking(move || {
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)?
            .with_batch_size(64 * 1024)
            .build()?;
        let mut out = Vec::new();
        for batch in reader {
            let batch = batch?;
            out.push(RecordBatch::try_new(
                table.schema(),
                batch.columns().to_vec(),
            )?);
        }
        Ok(out)
    })
    .await
    .expect("read task panicked")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_named_by_utc_date_and_hour() {
        // 2026-03-01T13:20:00Z
        let ms = 1_772_323_200_000 + 13 * HOUR_MS + 20 * 60_000;
        assert_eq!(hour_of(ms), 1_772_323_200_000 + 13 * HOUR_MS);
        assert_eq!(
            partition_dir(Table::ContainerUsage, hour_of(ms)),
            "tables/container_usage/date=2026-03-01/hour=13"
        );
        assert_eq!(hour_of(-1), -HOUR_MS);
    }
}
