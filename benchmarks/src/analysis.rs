//! `tally-bench analysis`: wall time and peak memory of one analysis run (rightsizing,
//! replicas, consolidation, instance types; the rows written to `recommendations`) over a
//! simulated cluster's history.
//!
//! Rightsizing reads the hourly rollups, so what the run costs depends on container-hours,
//! not on the raw sample rate: the history is generated at a coarse step (default 30 min,
//! two samples per hour) to load fast, giving the same number of rollup rows as 30 s
//! samples would. The run's peak RSS is measured from a reset high-water mark
//! (`/proc/self/clear_refs`), so loading the history does not count.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tally_analysis::{AnalysisConfig, Analyzer};
use tally_simulator::{Cluster, SimConfig};
use tally_store::{Store, StoreConfig};
use tally_wire::Table;

use crate::machine;

/// Resets this process's peak RSS (VmHWM) to its current RSS.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

pub async fn analysis(
    containers: usize,
    days: u32,
    step_ms: i64,
    data_dir: &Path,
) -> (String, String) {
    let _ = std::fs::remove_dir_all(data_dir);
    let cluster = Cluster::new(SimConfig {
        flows_per_pod: 0.0,
        ..SimConfig::benchmark(containers)
    });
    let mut config = StoreConfig::new(data_dir);
    config.background = false;
    config.max_batch_rows = 1 << 20;
    config.retention.clear();
    let store = Store::open(config).await.expect("open store");
    let start_ms = 1_767_571_200_000i64; // 2026-01-05
    let end_ms = start_ms + i64::from(days) * 86_400_000;
    let loading = Instant::now();
    for (table, batch) in cluster.snapshot_batches(start_ms) {
        store.write(table, batch).await.expect("write");
    }
    let mut from = start_ms;
    let mut rows = 0u64;
    while from < end_ms {
        let to = (from + 6 * 3_600_000).min(end_ms);
        let mut pending = Vec::new();
        for (table, batch) in cluster.samples(from, to, step_ms, 65_536) {
            if matches!(table, Table::NetworkFlows | Table::DnsLookups) {
                continue;
            }
            rows += batch.num_rows() as u64;
            pending.push(store.write(table, batch));
            if pending.len() >= 8 {
                for ack in futures::future::join_all(pending.drain(..)).await {
                    ack.expect("write");
                }
            }
        }
        for ack in futures::future::join_all(pending).await {
            ack.expect("write");
        }
        store.flush().await.expect("flush");
        from = to;
        eprint!(
            "\r  analysis: loading {:.0} %",
            100.0 * (to - start_ms) as f64 / (end_ms - start_ms) as f64
        );
    }
    for (table, batch) in cluster.snapshot_batches(end_ms - step_ms) {
        store.write(table, batch).await.expect("write");
    }
    store.flush().await.expect("flush");
    while store.compact().await.expect("compact") > 0 {}
    eprintln!();
    let load = loading.elapsed().as_secs_f64();
    let hourly_rows = store.published()[&Table::ContainerUsageHourly].1;

    let engine = tally_query::QueryEngine::new(
        store.clone(),
        tally_query::QueryLimits {
            timeout: Duration::from_secs(3600),
            // The appliance's default --analysis-memory.
            memory_bytes: 2 << 30,
            ..Default::default()
        },
    );
    let analyzer = Arc::new(Analyzer::new(
        store.clone(),
        engine,
        AnalysisConfig::default(),
    ));
    analyzer.seed_catalog().await.expect("seed catalog");
    let now = chrono::DateTime::from_timestamp_millis(end_ms).expect("time");
    let mut lines = Vec::new();
    for run in 1..=2 {
        let rss_before = machine::self_rss();
        let reset = reset_peak_rss();
        let started = Instant::now();
        let summary = analyzer.run(now).await.expect("analysis run");
        let wall = started.elapsed().as_secs_f64();
        let peak = machine::self_peak_rss();
        lines.push(format!(
            "| {run} | {wall:.2} s | {} | {} | {} | {} |",
            machine::mib(rss_before),
            if reset {
                machine::mib(peak)
            } else {
                format!("{} (process peak: reset refused)", machine::mib(peak))
            },
            summary.recommendations.values().sum::<usize>(),
            summary
                .recommendations
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", "),
        ));
    }
    store.close().await.expect("close");
    let body = format!(
        "One analysis run (rightsizing over {days} day(s) of hourly rollups, replicas/HPA, node consolidation, \
         instance types; rows written to `recommendations`) over a simulated cluster of {} containers \
         ({containers} asked) on {} nodes. History generated at {} s steps ({rows} rows loaded in {load:.0} s), \
         {hourly_rows} container_usage_hourly rows after compaction. Peak RSS is the process's high-water \
         mark during the run, reset just before it.\n\n\
         | run | wall time | RSS before | peak RSS during the run | rows written | by kind |\n|---|---|---|---|---|---|\n{}",
        cluster.container_count(),
        cluster.nodes().len(),
        step_ms / 1000,
        lines.join("\n")
    );
    ("analysis".into(), body)
}
