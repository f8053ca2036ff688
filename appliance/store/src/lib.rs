//! Tally's storage engine.
//!
//! The write path reads top to bottom: [`Store::write`] validates a batch against its table's
//! schema, appends it to the write-ahead log ([`wal`]) and waits for the group commit's fsync,
//! inserts it into the hot buffer and only then acknowledges. A background task
//! flushes the hot buffer to Parquet partitions ([`persist`]) every N seconds or rows, publishes
//! the new files in the manifest ([`manifest`], replaced atomically), derives the hourly rollups
//! ([`rollup`]) and truncates the WAL. Compaction merges small files of a partition and retention
//! drops whole partitions. Queries see the hot buffer and the Parquet files through one
//! DataFusion `TableProvider` per table ([`provider`]).
//!
//! A batch written with a key ([`Store::write_keyed`], `tally_wire::BatchKey`) is stored once:
//! a resend of a key already durable is acknowledged as a duplicate without storing its rows
//! again, across crashes and flushes, for a day after the producer's last batch ([`dedupe`]).

mod dedupe;
mod error;
mod functions;
pub mod histogram;
mod manifest;
mod persist;
mod provider;
pub mod rollup;
mod store;
mod wal;

#[cfg(test)]
mod tests;

pub use error::StoreError;
pub use store::{Store, StoreConfig, StoreStats};
