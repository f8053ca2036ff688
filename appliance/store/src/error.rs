use std::path::PathBuf;

use tally_wire::{SchemaMismatch, Table};

/// What can go wrong in the store. Client errors (`Schema`, `InvalidBatch`) reject one batch
/// and nothing else; storage errors refuse the write rather than acknowledge what could not
/// be kept.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Schema(#[from] SchemaMismatch),

    #[error("invalid batch for table `{table}`: {reason}")]
    InvalidBatch { table: Table, reason: String },

    #[error(
        "the data directory {path} is out of space; refusing writes until space is freed: {source}"
    )]
    NoSpace {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot write to {path}: {source}")]
    Unwritable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "the write-ahead log failed earlier and the store refuses writes until it restarts: {0}"
    )]
    Poisoned(String),

    #[error("corrupt write-ahead log record in {path} at byte {offset}: {reason}")]
    CorruptWal {
        path: PathBuf,
        offset: u64,
        reason: String,
    },

    #[error("corrupt manifest {path}: {reason}")]
    CorruptManifest { path: PathBuf, reason: String },

    #[error(
        "the store is behind: {hot_rows} rows wait to be written to Parquet (limit {limit}) and no flush caught up within {waited_seconds} s; retry later"
    )]
    Overloaded {
        hot_rows: usize,
        limit: usize,
        waited_seconds: u64,
    },

    #[error("the store is shut down")]
    Closed,

    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),

    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),

    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),

    #[error("query engine: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
}

impl StoreError {
    /// Maps an I/O error on `path` to the variant a caller can act on.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => StoreError::NoSpace { path, source },
            _ => StoreError::Unwritable { path, source },
        }
    }

    /// True when the client sent something wrong (as opposed to the store failing).
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            StoreError::Schema(_) | StoreError::InvalidBatch { .. }
        )
    }
}
