use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use arrow::array::RecordBatch;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use tally_wire::{BatchKey, IngestAck, Table, validate_schema};
use tokio::sync::{Notify, oneshot};

use crate::StoreError;
use crate::dedupe::{KeyStamp, Producers};
use crate::manifest::{FileEntry, Manifest};
use crate::persist::{self, HOUR_MS, split_by_hour, time_range};
use crate::provider::{StoreTable, TimeRange};
use crate::rollup;
use crate::wal::{self, EncodedBatch, ReplayStats, WalWriter};

/// How a store is laid out and when it flushes, compacts and forgets.
#[derive(Clone)]
pub struct StoreConfig {
    /// Holds the write-ahead log (`wal/`), the manifest and, with the default local object
    /// store, the Parquet files (`tables/`).
    pub data_dir: PathBuf,
    /// Where Parquet files go; `None` is the local file system under `data_dir`.
    pub object_store: Option<Arc<dyn ObjectStore>>,
    /// Flush the hot buffer at least this often.
    pub flush_interval: Duration,
    /// … and as soon as it holds this many rows.
    pub flush_rows: usize,
    /// Backpressure: a write waits while the hot buffer holds this many rows (flushes have
    /// not kept up), so memory stays bounded whatever the ingest rate; after
    /// `max_hot_wait` it is refused with [`StoreError::Overloaded`]. Only with `background`.
    pub max_hot_rows: usize,
    pub max_hot_wait: Duration,
    /// How often compaction and retention run.
    pub maintenance_interval: Duration,
    /// Files replaced by compaction or dropped by retention are deleted after this grace,
    /// so queries that started before keep reading them.
    pub delete_grace: Duration,
    /// How long each table keeps its rows; tables not listed keep them forever.
    pub retention: BTreeMap<Table, Duration>,
    /// Batches with more rows are refused.
    pub max_batch_rows: usize,
    /// How long the store remembers a producer's batch keys after its last batch: a resend
    /// within this window is recognised and stored once; after it, stored again.
    pub dedupe_window: Duration,
    /// At most this many producers are remembered; beyond it the longest idle are forgotten.
    pub max_producers: usize,
    /// Run flush and maintenance in the background (off in tests that drive them by hand).
    pub background: bool,
}

impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreConfig")
            .field("data_dir", &self.data_dir)
            .field("flush_interval", &self.flush_interval)
            .field("flush_rows", &self.flush_rows)
            .field("max_hot_rows", &self.max_hot_rows)
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

const DAY: Duration = Duration::from_secs(86_400);

impl StoreConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            object_store: None,
            flush_interval: Duration::from_secs(10),
            flush_rows: 1_000_000,
            max_hot_rows: 2_000_000,
            max_hot_wait: Duration::from_secs(30),
            maintenance_interval: Duration::from_secs(60),
            delete_grace: Duration::from_secs(120),
            retention: Self::default_retention(),
            max_batch_rows: 1_000_000,
            dedupe_window: DAY,
            max_producers: 100_000,
            background: true,
        }
    }

    /// Raw samples for 15 days (rightsizing's default window is 14), hourly rollups for 90,
    /// inventory and events for 90, DNS for 7, the audit log and recommendations for a year.
    pub fn default_retention() -> BTreeMap<Table, Duration> {
        BTreeMap::from([
            (Table::ContainerUsage, DAY * 15),
            (Table::NodeUsage, DAY * 15),
            (Table::NetworkFlows, DAY * 15),
            (Table::DnsLookups, DAY * 7),
            (Table::ContainerUsageHourly, DAY * 90),
            (Table::Workloads, DAY * 90),
            (Table::Pods, DAY * 90),
            (Table::Events, DAY * 90),
            (Table::Prices, DAY * 365),
            (Table::Recommendations, DAY * 365),
            (Table::Actions, DAY * 365),
        ])
    }
}

/// Counters for `/metrics` and the benchmarks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub acknowledged_rows: u64,
    pub acknowledged_batches: u64,
    pub wal_bytes: u64,
    pub hot_rows: u64,
    pub flushes: u64,
    pub compactions: u64,
    pub files: u64,
    pub parquet_bytes: u64,
    pub replayed_rows: u64,
    /// Batches sent again with a key already durable: acknowledged, not stored again.
    pub duplicate_batches: u64,
    pub duplicate_rows: u64,
    /// Producers whose batch keys are remembered.
    pub producers: u64,
}

#[derive(Clone)]
struct HotBatch {
    batch: RecordBatch,
    min_ms: i64,
    max_ms: i64,
}

#[derive(Default)]
struct Visible {
    manifest: Arc<Manifest>,
    hot: HashMap<Table, Vec<HotBatch>>,
    flushing: HashMap<Table, Vec<HotBatch>>,
    hot_rows: usize,
}

/// What the table providers share with the store.
pub(crate) struct Shared {
    visible: RwLock<Visible>,
    pub url: ObjectStoreUrl,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// The files and hot batches of `table` that may hold rows in `range`, taken together
    /// under one lock so that a concurrent flush never shows a row twice or not at all.
    pub fn snapshot(&self, table: Table, range: TimeRange) -> (Vec<FileEntry>, Vec<RecordBatch>) {
        let visible = self.visible.read().expect("lock");
        let files = visible
            .manifest
            .files_of(table)
            .filter(|f| range.overlaps(f.min_time_ms, f.max_time_ms))
            .cloned()
            .collect();
        let hot = [&visible.flushing, &visible.hot]
            .into_iter()
            .filter_map(|m| m.get(&table))
            .flatten()
            .filter(|h| range.overlaps(h.min_ms, h.max_ms))
            .map(|h| h.batch.clone())
            .collect();
        (files, hot)
    }

    pub(crate) fn manifest(&self) -> Arc<Manifest> {
        self.visible.read().expect("lock").manifest.clone()
    }
}

/// What became of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Appended {
    /// Durable under this WAL sequence number.
    Stored(u64),
    /// Its key was durable already: nothing was written.
    Duplicate,
}

/// What a freeze answers: the last sequence number in the closed segments, the first of the
/// new one, and the batch keys durable so far (for the manifest).
struct Frozen {
    through: u64,
    active_first: u64,
    producers: Vec<KeyStamp>,
}

enum Request {
    Append {
        record: EncodedBatch,
        batch: HotBatch,
        ack: oneshot::Sender<Result<Appended, StoreError>>,
    },
    /// Rotate the log and move the hot buffer to `flushing`.
    Freeze {
        ack: oneshot::Sender<Result<Frozen, StoreError>>,
    },
}

#[derive(Default)]
struct Counters {
    acknowledged_rows: AtomicU64,
    acknowledged_batches: AtomicU64,
    wal_bytes: AtomicU64,
    flushes: AtomicU64,
    compactions: AtomicU64,
    replayed_rows: AtomicU64,
    duplicate_batches: AtomicU64,
    duplicate_rows: AtomicU64,
}

/// The storage engine. See the crate documentation for the write path.
pub struct Store {
    config: StoreConfig,
    wal_dir: PathBuf,
    object_store: Arc<dyn ObjectStore>,
    local_root: Option<PathBuf>,
    pub(crate) shared: Arc<Shared>,
    requests: Mutex<Option<mpsc::Sender<Request>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Serialises manifest publication (flush, compaction, retention).
    publish: tokio::sync::Mutex<()>,
    /// Serialises flushes (only one freeze/flush cycle at a time).
    flushing: tokio::sync::Mutex<()>,
    /// Serialises compaction and retention (the only ones that remove files).
    maintenance: tokio::sync::Mutex<()>,
    flush_wanted: Notify,
    /// Woken after every flush attempt (writers waiting for room in the hot buffer).
    flushed: Notify,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    counters: Arc<Counters>,
    /// The batch keys made durable; the writer thread checks and records them at commit.
    producers: Arc<Mutex<Producers>>,
}

impl Store {
    /// Opens (or creates) a store: loads the manifest, removes files a crash left
    /// unpublished, replays the write-ahead log and starts the writer.
    pub async fn open(config: StoreConfig) -> Result<Arc<Store>, StoreError> {
        let data_dir = config.data_dir.clone();
        let wal_dir = data_dir.join("wal");
        std::fs::create_dir_all(&wal_dir).map_err(|e| StoreError::io(&wal_dir, e))?;
        probe_writable(&data_dir)?;
        let (object_store, local_root): (Arc<dyn ObjectStore>, Option<PathBuf>) =
            match &config.object_store {
                Some(store) => (store.clone(), None),
                None => {
                    let tables = data_dir.join("tables");
                    std::fs::create_dir_all(&tables).map_err(|e| StoreError::io(&tables, e))?;
                    let local = LocalFileSystem::new_with_prefix(&data_dir)?;
                    (Arc::new(local), Some(data_dir.clone()))
                }
            };

        let mut manifest = Manifest::load(&data_dir)?;
        remove_unpublished(&object_store, &mut manifest, &data_dir).await?;

        let mut visible = Visible::default();
        let mut producers = Producers::new(config.dedupe_window, config.max_producers);
        for stamp in &manifest.producers {
            producers.record(*stamp);
        }
        let replay = {
            let wal_dir = wal_dir.clone();
            let after = manifest.wal_through;
            tokio::task::spawn_blocking(move || {
                let mut batches = Vec::new();
                let stats = wal::replay(
                    &wal_dir,
                    after,
                    |key| producers.record(key),
                    |_, table, batch| batches.push((table, batch)),
                )?;
                Ok::<_, StoreError>((stats, batches, producers))
            })
            .await
            .expect("replay task panicked")?
        };
        let (stats, batches, mut producers): (ReplayStats, Vec<(Table, RecordBatch)>, Producers) =
            replay;
        producers.expire(now_ms());
        let producers = Arc::new(Mutex::new(producers));
        for (table, batch) in batches {
            if let Some(hot) = hot_batch(batch) {
                visible.hot_rows += hot.batch.num_rows();
                visible.hot.entry(table).or_default().push(hot);
            }
        }
        if stats.records > 0 {
            tracing::info!(
                records = stats.records,
                rows = stats.rows,
                "replayed the write-ahead log"
            );
        }
        let next_seq = stats.last_seq.max(manifest.wal_through) + 1;
        let writer = WalWriter::create(&wal_dir, next_seq)?;
        visible.manifest = Arc::new(manifest);

        let shared = Arc::new(Shared {
            visible: RwLock::new(visible),
            url: ObjectStoreUrl::parse("tally://store").expect("valid url"),
        });
        let counters = Arc::new(Counters::default());
        counters.replayed_rows.store(stats.rows, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        let thread = {
            let shared = shared.clone();
            let counters = counters.clone();
            let producers = producers.clone();
            std::thread::Builder::new()
                .name("tally-wal".into())
                .spawn(move || run_writer(writer, rx, shared, counters, producers))
                .map_err(|e| StoreError::io(&wal_dir, e))?
        };
        let (stop, _) = tokio::sync::watch::channel(false);
        let store = Arc::new(Store {
            config,
            wal_dir,
            object_store,
            local_root,
            shared,
            requests: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(thread)),
            publish: tokio::sync::Mutex::new(()),
            flushing: tokio::sync::Mutex::new(()),
            maintenance: tokio::sync::Mutex::new(()),
            flush_wanted: Notify::new(),
            flushed: Notify::new(),
            stop,
            tasks: Mutex::new(Vec::new()),
            counters,
            producers,
        });
        if store.config.background {
            store.start_background();
        }
        Ok(store)
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Validates a batch, makes it durable and visible, and acknowledges it. When this
    /// returns `Ok`, the rows are fsynced in the write-ahead log and every query sees them.
    /// Without a key, so a batch written twice is stored twice (see [`Store::write_keyed`]).
    pub async fn write(&self, table: Table, batch: RecordBatch) -> Result<IngestAck, StoreError> {
        self.write_keyed(table, batch, None).await
    }

    /// [`Store::write`] for a batch with the key its sender gave it: when a batch with this
    /// key was made durable before (also before a crash or a flush), the batch is
    /// acknowledged again with `duplicate: true` and its rows are not stored a second time.
    pub async fn write_keyed(
        &self,
        table: Table,
        batch: RecordBatch,
        key: Option<BatchKey>,
    ) -> Result<IngestAck, StoreError> {
        validate_schema(table, &batch.schema())?;
        if batch.num_rows() > self.config.max_batch_rows {
            return Err(StoreError::InvalidBatch {
                table,
                reason: format!(
                    "{} rows is over the limit of {} rows per batch; send smaller batches",
                    batch.num_rows(),
                    self.config.max_batch_rows
                ),
            });
        }
        let batch =
            RecordBatch::try_new(table.schema(), batch.columns().to_vec()).map_err(|e| {
                StoreError::InvalidBatch {
                    table,
                    reason: e.to_string(),
                }
            })?;
        let rows = batch.num_rows() as u64;
        let duplicate = IngestAck {
            rows,
            sequence: 0,
            duplicate: true,
        };
        // A resend of a durable key needs neither room nor the log (the writer checks again
        // at commit, where it counts).
        if let Some(key) = &key
            && self.producers.lock().expect("lock").is_duplicate(key)
        {
            self.duplicate(rows);
            return Ok(duplicate);
        }
        self.wait_for_room().await?;
        let Some(hot) = hot_batch(batch) else {
            return Ok(IngestAck {
                rows: 0,
                sequence: 0,
                duplicate: false,
            });
        };
        let key = key.map(|key| KeyStamp::new(key, now_ms()));
        let record = wal::encode(table, &hot.batch, key)?;
        let (ack, done) = oneshot::channel();
        {
            let requests = self.requests.lock().expect("lock");
            let sender = requests.as_ref().ok_or(StoreError::Closed)?;
            sender
                .send(Request::Append {
                    record,
                    batch: hot,
                    ack,
                })
                .map_err(|_| StoreError::Closed)?;
        }
        let sequence = match done.await.map_err(|_| StoreError::Closed)?? {
            Appended::Stored(sequence) => sequence,
            Appended::Duplicate => {
                self.duplicate(rows);
                return Ok(duplicate);
            }
        };
        if self.hot_rows() >= self.config.flush_rows {
            self.flush_wanted.notify_one();
        }
        Ok(IngestAck {
            rows,
            sequence,
            duplicate: false,
        })
    }

    fn duplicate(&self, rows: u64) {
        self.counters
            .duplicate_batches
            .fetch_add(1, Ordering::Relaxed);
        self.counters
            .duplicate_rows
            .fetch_add(rows, Ordering::Relaxed);
    }

    /// Backpressure: waits while the hot buffer is over `max_hot_rows`, asking for a flush.
    async fn wait_for_room(&self) -> Result<(), StoreError> {
        let limit = self.config.max_hot_rows;
        if !self.config.background || self.hot_rows() < limit {
            return Ok(());
        }
        let started = std::time::Instant::now();
        loop {
            let flushed = self.flushed.notified();
            tokio::pin!(flushed);
            flushed.as_mut().enable();
            let hot_rows = self.hot_rows();
            if hot_rows < limit {
                return Ok(());
            }
            if self.requests.lock().expect("lock").is_none() {
                return Err(StoreError::Closed);
            }
            if started.elapsed() >= self.config.max_hot_wait {
                return Err(StoreError::Overloaded {
                    hot_rows,
                    limit,
                    waited_seconds: started.elapsed().as_secs(),
                });
            }
            self.flush_wanted.notify_one();
            // The timeout re-checks even if a wake-up was missed or a flush failed.
            let _ = tokio::time::timeout(Duration::from_millis(200), flushed).await;
        }
    }

    fn hot_rows(&self) -> usize {
        self.shared.visible.read().expect("lock").hot_rows
    }

    /// Registers every table, the object store behind them and Tally's SQL functions.
    pub fn register(&self, ctx: &SessionContext) -> Result<(), StoreError> {
        ctx.runtime_env()
            .register_object_store(self.shared.url.as_ref(), self.object_store.clone());
        for table in Table::ALL {
            ctx.register_table(
                table.name(),
                Arc::new(StoreTable {
                    table,
                    shared: self.shared.clone(),
                }),
            )?;
        }
        crate::functions::register(ctx);
        Ok(())
    }

    /// A fresh session with every table registered (for tests and tools; the appliance's
    /// SQL endpoint builds its own, with limits).
    pub fn session(&self) -> Result<SessionContext, StoreError> {
        let ctx = SessionContext::new();
        self.register(&ctx)?;
        Ok(ctx)
    }

    pub fn stats(&self) -> StoreStats {
        let visible = self.shared.visible.read().expect("lock");
        let c = &self.counters;
        StoreStats {
            acknowledged_rows: c.acknowledged_rows.load(Ordering::Relaxed),
            acknowledged_batches: c.acknowledged_batches.load(Ordering::Relaxed),
            wal_bytes: c.wal_bytes.load(Ordering::Relaxed),
            hot_rows: visible.hot_rows as u64,
            flushes: c.flushes.load(Ordering::Relaxed),
            compactions: c.compactions.load(Ordering::Relaxed),
            files: visible.manifest.files.len() as u64,
            parquet_bytes: visible.manifest.files.iter().map(|f| f.bytes).sum(),
            replayed_rows: c.replayed_rows.load(Ordering::Relaxed),
            duplicate_batches: c.duplicate_batches.load(Ordering::Relaxed),
            duplicate_rows: c.duplicate_rows.load(Ordering::Relaxed),
            producers: self.producers.lock().expect("lock").len() as u64,
        }
    }

    /// Per table: (files, rows, bytes) of what is published in Parquet.
    pub fn published(&self) -> BTreeMap<Table, (u64, u64, u64)> {
        let mut out: BTreeMap<Table, (u64, u64, u64)> = BTreeMap::new();
        for f in &self.shared.manifest().files {
            let e = out.entry(f.table).or_default();
            e.0 += 1;
            e.1 += f.rows;
            e.2 += f.bytes;
        }
        out
    }

    /// Writes everything in the hot buffer to Parquet, publishes it and truncates the log.
    /// Returns the number of rows flushed.
    pub async fn flush(&self) -> Result<u64, StoreError> {
        let _one_at_a_time = self.flushing.lock().await;
        let Frozen {
            through,
            active_first,
            producers,
        } = self.freeze().await?;
        let flushing: Vec<(Table, Vec<RecordBatch>)> = {
            let visible = self.shared.visible.read().expect("lock");
            let mut tables: Vec<_> = visible
                .flushing
                .iter()
                .map(|(t, hs)| (*t, hs.iter().map(|h| h.batch.clone()).collect::<Vec<_>>()))
                .collect();
            tables.sort_by_key(|(t, _)| *t);
            tables
        };
        let rows: u64 = flushing
            .iter()
            .flat_map(|(_, bs)| bs.iter().map(|b| b.num_rows() as u64))
            .sum();

        if rows == 0 && through <= self.shared.manifest().wal_through {
            return Ok(0);
        }
        let mut new_files = Vec::new();
        let written = self.write_tables(flushing, &mut new_files).await;
        if let Err(error) = written {
            self.discard(&new_files).await;
            return Err(error);
        }
        {
            let _publishing = self.publish.lock().await;
            let mut manifest = (*self.shared.manifest()).clone();
            manifest.version += 1;
            manifest.wal_through = manifest.wal_through.max(through);
            manifest.files.extend(new_files.iter().cloned());
            // Every key of the records through `through` is in here (and maybe a few later
            // ones, which are durable too), so the WAL can go.
            manifest.producers = producers;
            if let Err(error) = self.publish_manifest(manifest, true).await {
                self.discard(&new_files).await;
                return Err(error);
            }
        }
        let wal_dir = self.wal_dir.clone();
        tokio::task::spawn_blocking(move || wal::truncate(&wal_dir, through, active_first))
            .await
            .expect("truncate task panicked")?;
        self.counters.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(rows)
    }

    async fn write_tables(
        &self,
        tables: Vec<(Table, Vec<RecordBatch>)>,
        out: &mut Vec<FileEntry>,
    ) -> Result<(), StoreError> {
        for (table, batches) in tables {
            if table == Table::ContainerUsage {
                let raw = batches.clone();
                let rollup = tokio::task::spawn_blocking(move || rollup::from_raw(&raw))
                    .await
                    .expect("rollup task panicked")?;
                if let Some(rollup) = rollup {
                    self.write_partitions(Table::ContainerUsageHourly, vec![rollup], out)
                        .await?;
                }
            }
            self.write_partitions(table, batches, out).await?;
        }
        Ok(())
    }

    async fn write_partitions(
        &self,
        table: Table,
        batches: Vec<RecordBatch>,
        out: &mut Vec<FileEntry>,
    ) -> Result<(), StoreError> {
        for (hour, parts) in split_by_hour(&batches)? {
            let entry = persist::write_partition(
                &self.object_store,
                self.local_root.as_deref(),
                table,
                hour,
                parts,
            )
            .await?;
            out.push(entry);
        }
        Ok(())
    }

    /// Removes files that were written but will never be published.
    async fn discard(&self, files: &[FileEntry]) {
        for f in files {
            let _ = self
                .object_store
                .delete(&ObjectPath::from(f.path.as_str()))
                .await;
        }
    }

    async fn publish_manifest(
        &self,
        manifest: Manifest,
        clear_flushing: bool,
    ) -> Result<(), StoreError> {
        let dir = self.config.data_dir.clone();
        let manifest = Arc::new(manifest);
        let to_store = manifest.clone();
        tokio::task::spawn_blocking(move || to_store.store(&dir))
            .await
            .expect("manifest task panicked")?;
        let mut visible = self.shared.visible.write().expect("lock");
        visible.manifest = manifest;
        if clear_flushing {
            visible.flushing.clear();
        }
        Ok(())
    }

    async fn freeze(&self) -> Result<Frozen, StoreError> {
        let (ack, done) = oneshot::channel();
        {
            let requests = self.requests.lock().expect("lock");
            let sender = requests.as_ref().ok_or(StoreError::Closed)?;
            sender
                .send(Request::Freeze { ack })
                .map_err(|_| StoreError::Closed)?;
        }
        done.await.map_err(|_| StoreError::Closed)?
    }

    /// Merges partitions that have several files into one (rollup rows of the same container
    /// and hour into one row) and deletes files whose grace has passed. Returns the number
    /// of partitions compacted.
    pub async fn compact(&self) -> Result<usize, StoreError> {
        let _maintenance = self.maintenance.lock().await;
        let now = now_ms();
        let manifest = self.shared.manifest();
        let mut partitions: BTreeMap<(Table, i64), Vec<FileEntry>> = BTreeMap::new();
        for f in &manifest.files {
            partitions
                .entry((f.table, f.hour_ms))
                .or_default()
                .push(f.clone());
        }
        let mut compacted = 0;
        for ((table, hour), files) in partitions {
            let hour_over = hour + HOUR_MS + 60_000 < now;
            if files.len() < 2 || (!hour_over && files.len() < 8) {
                continue;
            }
            let mut batches = Vec::new();
            for f in &files {
                batches.extend(persist::read_file(&self.object_store, table, &f.path).await?);
            }
            if table == Table::ContainerUsageHourly {
                let merged = tokio::task::spawn_blocking(move || rollup::merge(&batches))
                    .await
                    .expect("merge task panicked")?;
                batches = merged.into_iter().collect();
            }
            let mut written = Vec::new();
            if let Err(error) = self.write_partitions(table, batches, &mut written).await {
                self.discard(&written).await;
                return Err(error);
            }
            let _publishing = self.publish.lock().await;
            let mut next = (*self.shared.manifest()).clone();
            next.version += 1;
            next.files.retain(|f| !files.contains(f));
            next.files.extend(written.iter().cloned());
            next.pending_deletes
                .extend(files.iter().map(|f| crate::manifest::PendingDelete {
                    path: f.path.clone(),
                    since_ms: now,
                }));
            if let Err(error) = self.publish_manifest(next, false).await {
                self.discard(&written).await;
                return Err(error);
            }
            compacted += 1;
            self.counters.compactions.fetch_add(1, Ordering::Relaxed);
        }
        self.delete_expired(now).await?;
        Ok(compacted)
    }

    /// Drops every partition that ended before `now - retention` of its table. Returns the
    /// number of files dropped.
    pub async fn enforce_retention(&self, now_ms: i64) -> Result<usize, StoreError> {
        let _maintenance = self.maintenance.lock().await;
        let _publishing = self.publish.lock().await;
        let mut next = (*self.shared.manifest()).clone();
        let before = next.files.len();
        let retention = &self.config.retention;
        let mut dropped = Vec::new();
        next.files.retain(|f| {
            let keep = match retention.get(&f.table) {
                Some(keep_for) => f.hour_ms + HOUR_MS > now_ms - keep_for.as_millis() as i64,
                None => true,
            };
            if !keep {
                dropped.push(f.path.clone());
            }
            keep
        });
        if dropped.is_empty() {
            return Ok(0);
        }
        next.version += 1;
        next.pending_deletes.extend(dropped.into_iter().map(|path| {
            crate::manifest::PendingDelete {
                path,
                since_ms: now_ms,
            }
        }));
        let count = before - next.files.len();
        self.publish_manifest(next, false).await?;
        Ok(count)
    }

    async fn delete_expired(&self, now: i64) -> Result<(), StoreError> {
        let grace = self.config.delete_grace.as_millis() as i64;
        let manifest = self.shared.manifest();
        let expired: Vec<_> = manifest
            .pending_deletes
            .iter()
            .filter(|p| p.since_ms + grace <= now)
            .cloned()
            .collect();
        if expired.is_empty() {
            return Ok(());
        }
        for p in &expired {
            match self
                .object_store
                .delete(&ObjectPath::from(p.path.as_str()))
                .await
            {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let _publishing = self.publish.lock().await;
        let mut next = (*self.shared.manifest()).clone();
        next.pending_deletes.retain(|p| !expired.contains(p));
        next.version += 1;
        self.publish_manifest(next, false).await
    }

    fn start_background(self: &Arc<Self>) {
        let mut tasks = self.tasks.lock().expect("lock");
        let weak = Arc::downgrade(self);
        let mut stop = self.stop.subscribe();
        let interval = self.config.flush_interval;
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(store) = weak.upgrade() else { return };
                let wanted = store.flush_wanted.notified();
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = wanted => {}
                    _ = stop.changed() => return,
                }
                if let Err(error) = store.flush().await {
                    tracing::error!(%error, "flush failed; the rows stay in the write-ahead log and the hot buffer, and the flush is retried");
                }
                store.flushed.notify_waiters();
            }
        }));
        let weak = Arc::downgrade(self);
        let mut stop = self.stop.subscribe();
        let interval = self.config.maintenance_interval;
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = stop.changed() => return,
                }
                let Some(store) = weak.upgrade() else { return };
                if let Err(error) = store.enforce_retention(now_ms()).await {
                    tracing::error!(%error, "retention failed");
                }
                if let Err(error) = store.compact().await {
                    tracing::error!(%error, "compaction failed");
                }
            }
        }));
    }

    /// Stops the background work, flushes what is buffered and stops the writer.
    pub async fn close(&self) -> Result<(), StoreError> {
        let _ = self.stop.send(true);
        let tasks: Vec<_> = self.tasks.lock().expect("lock").drain(..).collect();
        for task in tasks {
            let _ = task.await;
        }
        let flushed = self.flush().await;
        self.requests.lock().expect("lock").take();
        let writer = self.writer.lock().expect("lock").take();
        if let Some(thread) = writer {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        flushed.map(|_| ())
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.requests.lock().map(|mut r| r.take()).ok();
    }
}

fn hot_batch(batch: RecordBatch) -> Option<HotBatch> {
    let (min_ms, max_ms) = time_range(&batch)?;
    Some(HotBatch {
        batch,
        min_ms,
        max_ms,
    })
}

pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn probe_writable(dir: &Path) -> Result<(), StoreError> {
    let probe = dir.join(".write-probe");
    std::fs::write(&probe, b"ok")
        .and_then(|_| std::fs::remove_file(&probe))
        .map_err(|e| StoreError::io(dir, e))
}

/// Deletes Parquet files that a crash left written but unpublished, and files whose delete
/// was pending (no query from before the restart can still read them).
async fn remove_unpublished(
    store: &Arc<dyn ObjectStore>,
    manifest: &mut Manifest,
    data_dir: &Path,
) -> Result<(), StoreError> {
    let published: std::collections::HashSet<&str> =
        manifest.files.iter().map(|f| f.path.as_str()).collect();
    let listed: Vec<_> = store
        .list(Some(&ObjectPath::from("tables")))
        .try_collect()
        .await?;
    let mut removed = 0;
    for meta in listed {
        if meta.location.as_ref().ends_with(".parquet")
            && !published.contains(meta.location.as_ref())
        {
            store.delete(&meta.location).await?;
            removed += 1;
        }
    }
    if removed > 0 {
        tracing::info!(removed, "removed Parquet files that were never published");
    }
    if !manifest.pending_deletes.is_empty() {
        manifest.pending_deletes.clear();
        manifest.version += 1;
        manifest.store(data_dir)?;
    }
    Ok(())
}

fn run_writer(
    mut wal: WalWriter,
    requests: mpsc::Receiver<Request>,
    shared: Arc<Shared>,
    counters: Arc<Counters>,
    producers: Arc<Mutex<Producers>>,
) {
    let mut poisoned: Option<String> = None;
    while let Ok(first) = requests.recv() {
        let mut group = vec![first];
        while group.len() < 4096 {
            match requests.try_recv() {
                Ok(request) => group.push(request),
                Err(_) => break,
            }
        }
        let mut appends = Vec::new();
        for request in group {
            match request {
                Request::Append { record, batch, ack } => appends.push((record, batch, ack)),
                Request::Freeze { ack } => {
                    commit(
                        &mut wal,
                        &mut appends,
                        &shared,
                        &counters,
                        &producers,
                        &mut poisoned,
                    );
                    let _ = ack.send(freeze(&mut wal, &shared, &producers));
                }
            }
        }
        commit(
            &mut wal,
            &mut appends,
            &shared,
            &counters,
            &producers,
            &mut poisoned,
        );
    }
}

type Pending = (
    EncodedBatch,
    HotBatch,
    oneshot::Sender<Result<Appended, StoreError>>,
);

/// One group commit: one write and one fsync for every waiting batch, then the batches
/// become visible, then they are acknowledged. A batch whose key is durable already is
/// acknowledged as a duplicate and not written; one whose key an earlier batch of the same
/// group carries shares that batch's fate.
fn commit(
    wal: &mut WalWriter,
    appends: &mut Vec<Pending>,
    shared: &Shared,
    counters: &Counters,
    producers: &Mutex<Producers>,
    poisoned: &mut Option<String>,
) {
    if appends.is_empty() {
        return;
    }
    if let Some(reason) = poisoned {
        for (_, _, ack) in appends.drain(..) {
            let _ = ack.send(Err(StoreError::Poisoned(reason.clone())));
        }
        return;
    }
    let mut known = producers.lock().expect("lock");
    let mut in_group: HashMap<tally_wire::ProducerId, u64> = HashMap::new();
    let mut resent_in_group = Vec::new();
    let mut index = 0;
    while index < appends.len() {
        let Some(key) = appends[index].0.key else {
            index += 1;
            continue;
        };
        let batch_key = BatchKey {
            producer: key.producer,
            sequence: key.sequence,
        };
        if known.is_duplicate(&batch_key) {
            let (_, _, ack) = appends.remove(index);
            let _ = ack.send(Ok(Appended::Duplicate));
            known.record(key);
            continue;
        }
        match in_group.get_mut(&key.producer) {
            Some(highest) if key.sequence <= *highest => {
                resent_in_group.push(appends.remove(index).2);
                continue;
            }
            Some(highest) => *highest = key.sequence,
            None => {
                in_group.insert(key.producer, key.sequence);
            }
        }
        index += 1;
    }
    // Only this thread records keys: the lock can go while the group is written, so that
    // writers checking for a resend do not wait for the fsync.
    drop(known);
    if appends.is_empty() {
        return;
    }
    let records: Vec<&EncodedBatch> = appends.iter().map(|(r, _, _)| r).collect();
    let bytes: u64 = records.iter().map(|r| r.payload.len() as u64 + 16).sum();
    match wal.append(&records) {
        Ok(seqs) => {
            {
                let mut visible = shared.visible.write().expect("lock");
                for (record, batch, _) in appends.iter() {
                    visible.hot_rows += batch.batch.num_rows();
                    visible
                        .hot
                        .entry(record.table)
                        .or_default()
                        .push(batch.clone());
                }
            }
            counters.wal_bytes.fetch_add(bytes, Ordering::Relaxed);
            {
                let mut producers = producers.lock().expect("lock");
                for (record, _, _) in appends.iter() {
                    if let Some(key) = record.key {
                        producers.record(key);
                    }
                }
            }
            for ((_, batch, ack), seq) in appends.drain(..).zip(seqs) {
                counters
                    .acknowledged_rows
                    .fetch_add(batch.batch.num_rows() as u64, Ordering::Relaxed);
                counters
                    .acknowledged_batches
                    .fetch_add(1, Ordering::Relaxed);
                let _ = ack.send(Ok(Appended::Stored(seq)));
            }
            for ack in resent_in_group {
                let _ = ack.send(Ok(Appended::Duplicate));
            }
        }
        Err(error) => {
            tracing::error!(%error, "write-ahead log append failed; the batches are refused");
            if let StoreError::Poisoned(reason) = &error {
                *poisoned = Some(reason.clone());
            }
            let message = error.to_string();
            let no_space = matches!(error, StoreError::NoSpace { .. });
            let mut first = Some(error);
            let acks = appends.drain(..).map(|(_, _, ack)| ack);
            for ack in acks.chain(resent_in_group) {
                let error = first
                    .take()
                    .unwrap_or_else(|| replicate(no_space, &message));
                let _ = ack.send(Err(error));
            }
        }
    }
}

/// The same refusal for every batch of a failed group (io::Error is not Clone).
fn replicate(no_space: bool, message: &str) -> StoreError {
    if no_space {
        StoreError::NoSpace {
            path: PathBuf::new(),
            source: std::io::Error::other(message.to_string()),
        }
    } else {
        StoreError::Unwritable {
            path: PathBuf::new(),
            source: std::io::Error::other(message.to_string()),
        }
    }
}

fn freeze(
    wal: &mut WalWriter,
    shared: &Shared,
    producers: &Mutex<Producers>,
) -> Result<Frozen, StoreError> {
    let through = wal.rotate()?;
    let producers = {
        let mut producers = producers.lock().expect("lock");
        let forgotten = producers.expire(now_ms());
        if forgotten > 0 {
            tracing::info!(
                forgotten,
                "forgot the batch keys of producers idle for longer than the deduplication window"
            );
        }
        producers.stamps()
    };
    let mut visible = shared.visible.write().expect("lock");
    let hot = std::mem::take(&mut visible.hot);
    for (table, batches) in hot {
        visible.flushing.entry(table).or_default().extend(batches);
    }
    visible.hot_rows = 0;
    Ok(Frozen {
        through,
        active_first: wal.next_seq(),
        producers,
    })
}
