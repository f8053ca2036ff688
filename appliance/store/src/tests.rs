//! The store's behaviour end to end inside one process.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    Array, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use datafusion::prelude::SessionContext;
use tally_wire::Table;

use crate::histogram::CPU;
use crate::persist::HOUR_MS;
use crate::provider::TimeRange;
use crate::{Store, StoreConfig};

/// 2026-01-05T00:00:00Z
const DAY0: i64 = 1_767_571_200_000;

fn config(dir: &std::path::Path) -> StoreConfig {
    let mut config = StoreConfig::new(dir);
    config.background = false;
    config
}

/// Samples of one container: `(time_ms, cpu_cores, memory_bytes)`.
pub(crate) fn usage(pod: &str, samples: &[(i64, f64, i64)]) -> RecordBatch {
    let n = samples.len();
    let text = |s: &str| Arc::new(StringArray::from(vec![s; n])) as _;
    let none_f = || Arc::new(Float64Array::from(vec![None; n])) as _;
    let none_i = || Arc::new(Int64Array::from(vec![None; n])) as _;
    RecordBatch::try_new(
        Table::ContainerUsage.schema(),
        vec![
            Arc::new(
                TimestampMillisecondArray::from_iter_values(samples.iter().map(|s| s.0))
                    .with_timezone("UTC"),
            ),
            text("shop"),
            text(pod),
            text("app"),
            text("node-a"),
            text("Deployment"),
            text("web"),
            Arc::new(Float64Array::from_iter_values(samples.iter().map(|s| s.1))),
            Arc::new(Int64Array::from_iter_values(samples.iter().map(|s| s.2))),
            none_i(),
            none_f(),
            none_f(),
            none_f(),
            none_i(),
            none_i(),
            none_f(),
            none_i(),
            none_i(),
        ],
    )
    .unwrap()
}

async fn scalar(ctx: &SessionContext, sql: &str) -> String {
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    arrow::util::display::array_value_to_string(batches[0].column(0), 0).unwrap()
}

fn minutes(pod: &str, start: i64, count: i64) -> RecordBatch {
    let samples: Vec<_> = (0..count)
        .map(|i| (start + i * 60_000, 0.1 + i as f64 / 1000.0, 1 << 20))
        .collect();
    usage(pod, &samples)
}

#[tokio::test]
async fn rows_are_visible_once_before_and_after_a_flush() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).await.unwrap();
    let ctx = store.session().unwrap();
    // 90 minutes: two hour partitions.
    let ack = store
        .write(Table::ContainerUsage, minutes("a", DAY0, 90))
        .await
        .unwrap();
    assert_eq!(ack.rows, 90);
    assert_eq!(
        scalar(&ctx, "SELECT count(*) FROM container_usage").await,
        "90"
    );

    assert_eq!(store.flush().await.unwrap(), 90);
    assert_eq!(
        scalar(&ctx, "SELECT count(*) FROM container_usage").await,
        "90"
    );
    let published = store.published();
    assert_eq!(
        published[&Table::ContainerUsage],
        (2, 90, published[&Table::ContainerUsage].2)
    );
    // One rollup row per container and hour.
    assert_eq!(
        scalar(&ctx, "SELECT count(*) FROM container_usage_hourly").await,
        "2"
    );
    assert_eq!(
        scalar(&ctx, "SELECT sum(samples) FROM container_usage_hourly").await,
        "90"
    );
    let files: Vec<_> = walk(&dir.path().join("tables/container_usage"));
    assert!(
        files.iter().any(|f| f.contains("date=2026-01-05/hour=00/")),
        "{files:?}"
    );
    assert!(
        files.iter().any(|f| f.contains("date=2026-01-05/hour=01/")),
        "{files:?}"
    );
    // The WAL holds nothing flushed.
    assert_eq!(
        crate::wal::replay(
            &dir.path().join("wal"),
            store.shared.manifest().wal_through,
            |_| {},
            |_, _, _| {}
        )
        .unwrap()
        .records,
        0
    );
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path.display().to_string());
        }
    }
    out
}

#[tokio::test]
async fn a_crash_before_the_flush_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(config(dir.path())).await.unwrap();
        store
            .write(Table::ContainerUsage, minutes("a", DAY0, 30))
            .await
            .unwrap();
        store.flush().await.unwrap();
        store
            .write(Table::ContainerUsage, minutes("b", DAY0, 20))
            .await
            .unwrap();
        // Dropped without close: like a crash, nothing more is flushed.
    }
    let store = Store::open(config(dir.path())).await.unwrap();
    assert_eq!(store.stats().replayed_rows, 20);
    let ctx = store.session().unwrap();
    assert_eq!(
        scalar(&ctx, "SELECT count(*) || '/' || count(DISTINCT pod || CAST(time AS VARCHAR)) FROM container_usage").await,
        "50/50"
    );
    store.flush().await.unwrap();
    drop(store);
    let store = Store::open(config(dir.path())).await.unwrap();
    assert_eq!(store.stats().replayed_rows, 0);
    assert_eq!(
        scalar(
            &store.session().unwrap(),
            "SELECT count(*) FROM container_usage"
        )
        .await,
        "50"
    );
}

#[tokio::test]
async fn compaction_merges_a_partition_and_its_rollup_rows() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.delete_grace = Duration::ZERO;
    let store = Store::open(config).await.unwrap();
    for i in 0..3 {
        store
            .write(
                Table::ContainerUsage,
                minutes("a", DAY0 + i * 10 * 60_000, 10),
            )
            .await
            .unwrap();
        store.flush().await.unwrap();
    }
    let ctx = store.session().unwrap();
    assert_eq!(store.published()[&Table::ContainerUsage].0, 3);
    assert_eq!(
        scalar(&ctx, "SELECT count(*) FROM container_usage_hourly").await,
        "3"
    );
    let before = scalar(
        &ctx,
        "SELECT cpu_quantile(cpu_histogram, 0.95) FROM container_usage_hourly",
    )
    .await;

    assert_eq!(store.compact().await.unwrap(), 2);
    let published = store.published();
    assert_eq!(published[&Table::ContainerUsage].0, 1);
    assert_eq!(
        published[&Table::ContainerUsageHourly],
        (1, 1, published[&Table::ContainerUsageHourly].2)
    );
    assert_eq!(
        scalar(&ctx, "SELECT count(*) FROM container_usage").await,
        "30"
    );
    assert_eq!(
        scalar(&ctx, "SELECT sum(samples) FROM container_usage_hourly").await,
        "30"
    );
    assert_eq!(
        scalar(
            &ctx,
            "SELECT cpu_quantile(cpu_histogram, 0.95) FROM container_usage_hourly"
        )
        .await,
        before
    );
    // The replaced files are gone from disk (zero grace), the new ones are there.
    assert_eq!(walk(&dir.path().join("tables/container_usage")).len(), 1);
}

#[tokio::test]
async fn retention_drops_whole_partitions_older_than_the_table_keeps() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config
        .retention
        .insert(Table::ContainerUsage, Duration::from_secs(2 * 86_400));
    let store = Store::open(config).await.unwrap();
    for day in 0..4 {
        store
            .write(
                Table::ContainerUsage,
                minutes("a", DAY0 + day * 86_400_000, 5),
            )
            .await
            .unwrap();
    }
    store.flush().await.unwrap();
    // "Now" is day 4 at noon, the cutoff day 2 at noon: the partitions of days 0, 1 and 2
    // (each the hour from midnight) ended before it; day 3's did not.
    let dropped = store
        .enforce_retention(DAY0 + 4 * 86_400_000 + 12 * HOUR_MS)
        .await
        .unwrap();
    assert_eq!(dropped, 3);
    let ctx = store.session().unwrap();
    assert_eq!(
        scalar(&ctx, "SELECT count(*) FROM container_usage").await,
        "5"
    );
    // Rollups keep 90 days by default.
    assert_eq!(
        scalar(&ctx, "SELECT sum(samples) FROM container_usage_hourly").await,
        "20"
    );
}

#[tokio::test]
async fn time_filters_prune_files_and_hot_batches() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).await.unwrap();
    for hour in 0..6 {
        store
            .write(
                Table::ContainerUsage,
                minutes("a", DAY0 + hour * HOUR_MS, 10),
            )
            .await
            .unwrap();
    }
    store.flush().await.unwrap();
    store
        .write(Table::ContainerUsage, minutes("a", DAY0 + 10 * HOUR_MS, 10))
        .await
        .unwrap();
    let range = TimeRange {
        from_ms: DAY0 + 2 * HOUR_MS,
        to_ms: DAY0 + 3 * HOUR_MS - 1,
    };
    let (files, hot) = store.shared.snapshot(Table::ContainerUsage, range);
    assert_eq!((files.len(), hot.len()), (1, 0));
    let (files, hot) = store.shared.snapshot(Table::ContainerUsage, TimeRange::ALL);
    assert_eq!((files.len(), hot.len()), (6, 1));
    let ctx = store.session().unwrap();
    let sql = format!(
        "SELECT count(*) FROM container_usage WHERE time >= to_timestamp_millis({}) AND time < to_timestamp_millis({})",
        DAY0 + 2 * HOUR_MS,
        DAY0 + 3 * HOUR_MS
    );
    assert_eq!(scalar(&ctx, &sql).await, "10");
}

#[tokio::test]
async fn a_rollup_p95_is_within_one_bucket_of_the_exact_p95() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).await.unwrap();
    // Ten containers, three days at 30 s, diurnal load with noise and spikes.
    let mut state = 0x5eed_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % 10_000) as f64 / 10_000.0
    };
    let mut exact = Vec::new();
    for c in 0..10 {
        let pod = format!("pod-{c}");
        let base = 0.05 * (c + 1) as f64;
        let samples: Vec<_> = (0..3 * 2880)
            .map(|i| {
                let t = DAY0 + i * 30_000;
                let day = ((i as f64 / 2880.0) * std::f64::consts::TAU).sin() * 0.5 + 1.0;
                let spike = if next() > 0.97 { 3.0 } else { 1.0 };
                (t, base * day * spike * (0.8 + 0.4 * next()), 100 << 20)
            })
            .collect();
        let mut values: Vec<f64> = samples.iter().map(|s| s.1).collect();
        values.sort_by(f64::total_cmp);
        // The nearest-rank 95th percentile.
        let rank = (0.95 * values.len() as f64).ceil() as usize - 1;
        exact.push((pod.clone(), values[rank]));
        for chunk in samples.chunks(1000) {
            store
                .write(Table::ContainerUsage, usage(&pod, chunk))
                .await
                .unwrap();
        }
    }
    store.flush().await.unwrap();
    let ctx = store.session().unwrap();
    let batches = ctx
        .sql("SELECT pod, cpu_quantile(cpu_histogram, 0.95) AS p95 FROM container_usage_hourly GROUP BY pod ORDER BY pod")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let pods = batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    let p95s = batches[0]
        .column(1)
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap();
    assert_eq!(pods.len(), 10);
    for (i, (pod, exact)) in exact.iter().enumerate() {
        assert_eq!(pods.value(i), pod);
        let rollup = p95s.value(i);
        let bucket = CPU.bucket(*exact);
        let width = CPU.bucket_end(bucket) - CPU.bucket_start(bucket);
        assert!(
            rollup >= *exact && rollup - exact <= width,
            "{pod}: rollup {rollup}, exact {exact}, bucket width {width}"
        );
    }
}

#[tokio::test]
async fn an_unwritable_data_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-directory");
    std::fs::write(&file, b"x").unwrap();
    let err = Store::open(config(&file))
        .await
        .err()
        .expect("a file is not a data directory");
    assert!(err.to_string().starts_with("cannot write to"), "{err}");
}

#[tokio::test]
async fn writes_wait_for_flushes_when_the_hot_buffer_is_full_and_refuse_when_none_comes() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StoreConfig::new(dir.path());
    // Only backpressure asks for flushes: no timer, no row threshold.
    config.flush_interval = Duration::from_secs(3600);
    config.flush_rows = usize::MAX;
    config.max_hot_rows = 100;
    let store = Store::open(config).await.unwrap();
    let samples: Vec<(i64, f64, i64)> = (0..60).map(|i| (i * 1000, 0.5, 1 << 20)).collect();
    for round in 0..10 {
        store
            .write(Table::ContainerUsage, usage(&format!("p{round}"), &samples))
            .await
            .unwrap();
        // At most one batch beyond the limit is ever held.
        assert!(store.stats().hot_rows < 160, "{:?}", store.stats());
    }
    assert!(store.stats().flushes >= 4, "{:?}", store.stats());
    assert_eq!(store.stats().acknowledged_rows, 600);
    store.close().await.unwrap();

    // With no time to wait, a write over the limit is refused with a clear error.
    let dir = tempfile::tempdir().unwrap();
    let mut config = StoreConfig::new(dir.path());
    config.flush_interval = Duration::from_secs(3600);
    config.flush_rows = usize::MAX;
    config.max_hot_rows = 100;
    config.max_hot_wait = Duration::ZERO;
    let store = Store::open(config).await.unwrap();
    let many: Vec<(i64, f64, i64)> = (0..150).map(|i| (i * 1000, 0.5, 1 << 20)).collect();
    store
        .write(Table::ContainerUsage, usage("big", &many))
        .await
        .unwrap();
    let refused = store
        .write(Table::ContainerUsage, usage("next", &samples))
        .await
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("150 rows wait to be written to Parquet (limit 100)"),
        "{refused}"
    );
    assert_eq!(store.stats().acknowledged_rows, 150);
    store.close().await.unwrap();
}

fn key(producer: u128, sequence: u64) -> Option<tally_wire::BatchKey> {
    Some(tally_wire::BatchKey {
        producer: tally_wire::ProducerId(producer),
        sequence,
    })
}

async fn usage_rows(store: &Store) -> String {
    scalar(
        &store.session().unwrap(),
        "SELECT count(*) || '/' || count(DISTINCT pod || CAST(time AS VARCHAR)) FROM container_usage",
    )
    .await
}

#[tokio::test]
async fn a_batch_resent_with_its_key_is_stored_once_across_a_crash_and_a_flush() {
    let dir = tempfile::tempdir().unwrap();
    let a = || minutes("a", DAY0, 30);
    let b = || minutes("b", DAY0, 20);
    {
        let store = Store::open(config(dir.path())).await.unwrap();
        let first = store
            .write_keyed(Table::ContainerUsage, a(), key(7, 1))
            .await
            .unwrap();
        assert!(!first.duplicate && first.sequence > 0 && first.rows == 30);
        let again = store
            .write_keyed(Table::ContainerUsage, a(), key(7, 1))
            .await
            .unwrap();
        assert_eq!((again.rows, again.sequence, again.duplicate), (30, 0, true));
        assert_eq!(usage_rows(&store).await, "30/30");
        // Another producer's sequence 1 is another batch; so is a batch without a key.
        let other = store
            .write_keyed(Table::ContainerUsage, b(), key(8, 1))
            .await
            .unwrap();
        assert!(!other.duplicate);
        assert_eq!(usage_rows(&store).await, "50/50");
        let stats = store.stats();
        assert_eq!((stats.duplicate_batches, stats.duplicate_rows), (1, 30));
        assert_eq!(stats.producers, 2);
        // Dropped without close: like a crash, nothing is flushed.
    }

    // After the crash the keys come back from the WAL.
    let store = Store::open(config(dir.path())).await.unwrap();
    assert_eq!(store.stats().replayed_rows, 50);
    let again = store
        .write_keyed(Table::ContainerUsage, a(), key(7, 1))
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(usage_rows(&store).await, "50/50");
    let next = store
        .write_keyed(Table::ContainerUsage, minutes("c", DAY0, 10), key(7, 2))
        .await
        .unwrap();
    assert!(!next.duplicate);

    // Flushed to Parquet (the WAL segments go) and crashed again: the keys come back from
    // the manifest.
    store.flush().await.unwrap();
    drop(store);
    let store = Store::open(config(dir.path())).await.unwrap();
    assert_eq!(store.stats().replayed_rows, 0, "nothing left in the WAL");
    for (batch, k) in [(a(), key(7, 1)), (b(), key(8, 1))] {
        let ack = store
            .write_keyed(Table::ContainerUsage, batch, k)
            .await
            .unwrap();
        assert!(ack.duplicate, "{k:?}");
    }
    assert_eq!(usage_rows(&store).await, "60/60");
    // Without a key the same rows are stored again: no deduplication for old clients.
    store.write(Table::ContainerUsage, a()).await.unwrap();
    assert_eq!(usage_rows(&store).await, "90/60");
}

#[tokio::test]
async fn concurrent_copies_of_one_keyed_batch_are_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).await.unwrap();
    // Twenty copies at once land in the same group commit or in consecutive ones.
    let writes: Vec<_> = (0..20)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .write_keyed(Table::ContainerUsage, minutes("a", DAY0, 30), key(9, 4))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut stored = 0;
    for write in writes {
        if !write.await.unwrap().duplicate {
            stored += 1;
        }
    }
    assert_eq!(stored, 1);
    assert_eq!(store.stats().duplicate_batches, 19);
    assert_eq!(usage_rows(&store).await, "30/30");
    // A lower sequence of the same producer counts as sent before.
    assert!(
        store
            .write_keyed(Table::ContainerUsage, minutes("b", DAY0, 5), key(9, 3))
            .await
            .unwrap()
            .duplicate
    );
}

#[tokio::test]
async fn producers_idle_past_the_window_are_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.dedupe_window = Duration::from_millis(1);
    let store = Store::open(config.clone()).await.unwrap();
    store
        .write_keyed(Table::ContainerUsage, minutes("a", DAY0, 30), key(1, 1))
        .await
        .unwrap();
    // Idle for longer than the window; the next flush forgets the producer.
    tokio::time::sleep(Duration::from_millis(20)).await;
    store.flush().await.unwrap();
    assert_eq!(store.stats().producers, 0);
    let resent = store
        .write_keyed(Table::ContainerUsage, minutes("a", DAY0, 30), key(1, 1))
        .await
        .unwrap();
    assert!(!resent.duplicate, "forgotten: stored again");
    assert_eq!(usage_rows(&store).await, "60/30");
    assert_eq!(store.stats().producers, 1);
    // Crashed with the resend's key only in the WAL, and idle past the window: forgotten when
    // the store opens.
    drop(store);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let store = Store::open(config).await.unwrap();
    assert_eq!(store.stats().replayed_rows, 30);
    assert_eq!(store.stats().producers, 0);
}
