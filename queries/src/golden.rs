//! Golden tests: each query runs on a hand-made fixture, through the same read-only engine the
//! appliance uses, and its result must equal `golden/<query>.result`. `engine_with` and
//! `check` serve every area's golden tests; the usage queries' fixture is below.
//! `TALLY_UPDATE_GOLDEN=1 cargo test -p tally-queries` rewrites the files; review the diff.
//!
//! The fixture, small enough to check by hand (window 2026-01-05 10:00 to 12:00 UTC):
//! - shop/web-1/app (Deployment web): from 10:00, 100 samples 36 s apart with CPU
//!   0.01, 0.02, …, 1.00 cores and memory 101, 102, …, 200 MiB; from 11:00, 20 samples at
//!   2.0 cores and 300 MiB. 120 samples: the exact p95 is 2.0 (the top 20 are all 2.0), the
//!   p50 is the 60th value, 0.60; the max is 2.0 cores and 300 MiB.
//! - shop/db-0/postgres (StatefulSet db): from 10:00, 60 samples at 0.5 cores and 1 GiB.
//!   Every percentile is 0.5 (raw) or the end of 0.5's bucket, 0.5111 (rollup); the p50 of
//!   web-1 is 0.60 (raw; the t-digest interpolates 0.605) or 0.6232 (rollup), its p95 2.0 or
//!   2.0935: each rollup value is the end of the 5 % bucket holding the exact one.
//! - other/idle-1/app: one sample at 09:59, outside the window: it must not appear.

use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use chrono::{DateTime, Utc};
use tally_store::{Store, StoreConfig};
use tally_wire::Table;

use crate::{Param, Query, USAGE};

const MIB: i64 = 1 << 20;

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

struct Sample {
    time: DateTime<Utc>,
    ns: &'static str,
    pod: &'static str,
    container: &'static str,
    kind: &'static str,
    workload: &'static str,
    cpu: f64,
    memory: i64,
}

fn fixture() -> Vec<Sample> {
    let mut samples = Vec::new();
    let ten = at("2026-01-05T10:00:00Z");
    let eleven = at("2026-01-05T11:00:00Z");
    for k in 1..=100 {
        samples.push(Sample {
            time: ten + chrono::Duration::seconds(36 * (k - 1)),
            ns: "shop",
            pod: "web-1",
            container: "app",
            kind: "Deployment",
            workload: "web",
            cpu: k as f64 / 100.0,
            memory: (100 + k) * MIB,
        });
    }
    for k in 0..20 {
        samples.push(Sample {
            time: eleven + chrono::Duration::seconds(30 * k),
            ns: "shop",
            pod: "web-1",
            container: "app",
            kind: "Deployment",
            workload: "web",
            cpu: 2.0,
            memory: 300 * MIB,
        });
    }
    for k in 0..60 {
        samples.push(Sample {
            time: ten + chrono::Duration::seconds(60 * k),
            ns: "shop",
            pod: "db-0",
            container: "postgres",
            kind: "StatefulSet",
            workload: "db",
            cpu: 0.5,
            memory: 1024 * MIB,
        });
    }
    samples.push(Sample {
        time: at("2026-01-05T09:59:00Z"),
        ns: "other",
        pod: "idle-1",
        container: "app",
        kind: "Deployment",
        workload: "idle",
        cpu: 0.001,
        memory: MIB,
    });
    samples
}

fn container_usage(samples: &[Sample]) -> RecordBatch {
    let n = samples.len();
    let text = |f: &dyn Fn(&Sample) -> &str| {
        Arc::new(StringArray::from_iter_values(samples.iter().map(f))) as _
    };
    let none_f = || Arc::new(Float64Array::from(vec![None; n])) as _;
    let none_i = || Arc::new(Int64Array::from(vec![None; n])) as _;
    RecordBatch::try_new(
        Table::ContainerUsage.schema(),
        vec![
            Arc::new(
                TimestampMillisecondArray::from_iter_values(
                    samples.iter().map(|s| s.time.timestamp_millis()),
                )
                .with_timezone("UTC"),
            ),
            text(&|s| s.ns),
            text(&|s| s.pod),
            text(&|s| s.container),
            text(&|_| "node-a"),
            text(&|s| s.kind),
            text(&|s| s.workload),
            Arc::new(Float64Array::from_iter_values(
                samples.iter().map(|s| s.cpu),
            )),
            Arc::new(Int64Array::from_iter_values(
                samples.iter().map(|s| s.memory),
            )),
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

/// A store in a temporary directory holding `batches` (flushed, so the rollups exist) and the
/// read-only engine over it. Keep the directory alive while the engine is used.
pub(crate) async fn engine_with(
    batches: Vec<(Table, RecordBatch)>,
) -> (tempfile::TempDir, tally_query::QueryEngine) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StoreConfig::new(dir.path());
    config.background = false;
    let store = Store::open(config).await.unwrap();
    for (table, batch) in batches {
        store.write(table, batch).await.unwrap();
    }
    // The rollups are derived when rows are flushed.
    store.flush().await.unwrap();
    // One partition: approximate percentiles (t-digest) merge partial states in whatever
    // order partitions finish, so with several the last digits of a golden result can vary.
    let limits = tally_query::QueryLimits {
        target_partitions: 1,
        ..Default::default()
    };
    let engine = tally_query::QueryEngine::new(store, limits);
    (dir, engine)
}

/// Runs each query with the parameters it declares (taken from `params`) and compares its
/// result with `golden/<query>.result`; panics listing every difference.
/// `fixture` names the file that builds the data, written at the top of each result.
pub(crate) async fn check(
    queries: &[Query],
    engine: &tally_query::QueryEngine,
    params: &[(&str, Param)],
    fixture: &str,
) {
    let update = std::env::var_os("TALLY_UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for query in queries {
        let values: Vec<(&str, Param)> = params
            .iter()
            .filter(|(name, _)| query.params.contains(name))
            .cloned()
            .collect();
        let sql = query.render(&values).unwrap();
        let (_, batches) = engine
            .collect(&sql)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", query.name));
        let table = arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        let mut actual = format!("-- fixture: {fixture}\n");
        for (name, value) in &values {
            actual.push_str(&format!("-- ${name} = {value:?}\n"));
        }
        actual.push_str(&table);
        actual.push('\n');
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("golden/{}.result", query.name));
        if update {
            std::fs::write(&path, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_default();
        if expected != actual {
            failures.push(format!(
                "{}:\n--- expected\n{expected}\n--- actual\n{actual}",
                path.display()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "golden results differ (TALLY_UPDATE_GOLDEN=1 rewrites them):\n{}",
        failures.join("\n")
    );
}

#[tokio::test]
async fn usage_queries_match_their_golden_results() {
    let (_dir, engine) =
        engine_with(vec![(Table::ContainerUsage, container_usage(&fixture()))]).await;
    let params = [
        ("window_start", Param::Timestamp(at("2026-01-05T10:00:00Z"))),
        ("window_end", Param::Timestamp(at("2026-01-05T12:00:00Z"))),
    ];
    check(USAGE, &engine, &params, "queries/src/golden.rs").await;
}

#[test]
fn every_query_has_a_golden_result() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("golden");
    for query in crate::all() {
        assert!(
            dir.join(format!("{}.result", query.name)).exists(),
            "{} has no golden/{}.result: add a golden test for it",
            query.name,
            query.name
        );
    }
}
