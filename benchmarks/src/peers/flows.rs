//! The network-flow half of `tally-bench peers`: the same cluster's `network_flows` over the
//! same window, loaded into a fresh instance of each system (so each one's disk and peak RSS
//! are the flows' alone), and one flow question over the whole window: bytes sent and
//! received by source namespace and destination domain.
//!
//! - Tally: Flight `DoPut` into `network_flows`, then `queries/network_bytes_by_namespace_domain.sql`.
//! - VictoriaMetrics and Prometheus: two series per flow, `flow_tx_bytes` and `flow_rx_bytes`,
//!   each sample the bytes of the window ending at its time (a per-window gauge), labelled with
//!   the flow's key and names (see [`super::dataset`]); the question is
//!   `sum by (src_namespace, dst_domain) (sum_over_time(flow_tx_bytes[window]))` and the same
//!   for `flow_rx_bytes`.
//! - DuckDB: `GROUP BY src_namespace, dst_domain` over Tally's Parquet export of
//!   `network_flows`.
//!
//! A null namespace or domain (host traffic, a destination no DNS lookup named) is a group of
//! its own everywhere: SQL groups nulls together, PromQL groups series without the label.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use arrow::array::{Array, RecordBatch};
use tally_wire::Table;

use super::dataset::{Dataset, FLOW_RX_METRIC, FLOW_TX_METRIC};
use super::promql;
use super::{
    Load, TallyLoad, Window, backfill_prometheus, best, export_parquet, float_column,
    import_victoria_metrics, load_table, load_tally, post_sql, settle_dir, start_tally,
    start_victoria_metrics, string_column, times, timestamp, window_selector,
};
use crate::machine;

/// (source namespace, destination domain), "" where the value is null or the label absent.
pub type Group = (String, String);

/// Bytes sent and received by one group over the window.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bytes {
    pub tx: f64,
    pub rx: f64,
}

/// One system's answer and its wall times.
pub struct Answered {
    system: &'static str,
    seconds: Vec<f64>,
    groups: HashMap<Group, Bytes>,
}

/// Everything the flow half measured.
pub struct Flows {
    loads: Vec<Load>,
    answered: Vec<Answered>,
    duckdb_version: String,
}

pub async fn flows(
    ds: &Dataset,
    work: &Path,
    window: &Window,
    repeat: usize,
    python: &Path,
) -> Flows {
    let (tally_load, tally_answer, export) = tally(ds, work, window, repeat).await;
    let (vm_load, vm_answer) = victoria_metrics(ds, work, window, repeat).await;
    let (prom_load, prom_answer) = prometheus(ds, work, window, repeat).await;
    let (duck_load, duck_answer, duckdb_version) =
        duckdb(ds, &export, work, repeat, python, window);
    Flows {
        loads: vec![tally_load, vm_load, prom_load, duck_load],
        answered: vec![tally_answer, vm_answer, prom_answer, duck_answer],
        duckdb_version,
    }
}

fn text_or_empty(column: &arrow::array::StringArray, row: usize) -> String {
    if column.is_null(row) {
        String::new()
    } else {
        column.value(row).to_string()
    }
}

fn groups_from_batches(batches: &[RecordBatch]) -> HashMap<Group, Bytes> {
    let mut out = HashMap::new();
    for batch in batches {
        let (namespace, domain) = (
            string_column(batch, "src_namespace"),
            string_column(batch, "dst_domain"),
        );
        let (tx, rx) = (
            float_column(batch, "tx_bytes"),
            float_column(batch, "rx_bytes"),
        );
        for row in 0..batch.num_rows() {
            out.insert(
                (text_or_empty(&namespace, row), text_or_empty(&domain, row)),
                Bytes {
                    tx: tx.value(row),
                    rx: rx.value(row),
                },
            );
        }
    }
    out
}

/// The exported Parquet of `network_flows` DuckDB reads: file and seconds.
struct Export {
    file: std::path::PathBuf,
    seconds: f64,
}

async fn tally(
    ds: &Dataset,
    work: &Path,
    window: &Window,
    repeat: usize,
) -> (Load, Answered, Export) {
    let data = work.join("tally-flows-data");
    let (server, flight) =
        start_tally(&data, &work.join("logs/tally-flows.log"), window.flush()).await;
    let base = server.base.clone();
    eprintln!("  peers: loading Tally (network flows)");
    let TallyLoad {
        acknowledged,
        in_parquet,
        cpu,
        rss_after_load,
    } = load_tally(
        &server,
        &flight,
        &ds.flows.arrow_file,
        Table::NetworkFlows,
        ds.flows.rows,
        window.settle,
    )
    .await;
    let table_bytes = promql::dir_bytes(&data.join("tables/network_flows"));
    let all_bytes = promql::dir_bytes(&data);

    eprintln!("  peers: asking Tally (network flows)");
    let sql = tally_queries::network::NETWORK_BYTES_BY_NAMESPACE_DOMAIN
        .render(&[
            ("window_start", timestamp(window.start_ms)),
            ("window_end", timestamp(window.end_ms)),
        ])
        .expect("render query");
    let mut answered = Answered {
        system: "Tally",
        seconds: Vec::new(),
        groups: HashMap::new(),
    };
    for _ in 0..repeat {
        let (batches, wall) = post_sql(&base, &sql).await;
        answered.seconds.push(wall);
        answered.groups = groups_from_batches(&batches);
    }

    eprintln!("  peers: exporting network_flows Parquet from Tally for DuckDB");
    let file = work.join("network_flows.parquet");
    let seconds = export_parquet(&base, Table::NetworkFlows, window, &file).await;
    let peak = server.peak_rss();
    drop(server);
    let load = Load {
        system: "Tally",
        how: format!(
            "Arrow Flight DoPut into `network_flows`, 2 clients, batches of ≤ 65,536 rows, 8 per \
             call; load time until the last row is acknowledged; every row was in Parquet after \
             {in_parquet:.1} s (flush interval {:.0} s); server CPU {cpu:.1} s ({:.0} rows per CPU \
             second)",
            window.flush().as_secs_f64(),
            ds.flows.rows as f64 / cpu.max(1e-9)
        ),
        seconds: acknowledged,
        disk_bytes: table_bytes,
        disk_note: format!(
            "network_flows Parquet after compaction (all 14 columns); whole data dir {}",
            machine::mib(all_bytes)
        ),
        peak_rss: peak,
        rss_note: format!(
            "`tally serve` VmHWM ({} after loading)",
            machine::mib(rss_after_load)
        ),
    };
    (load, answered, Export { file, seconds })
}

/// The flow question in PromQL, asked at the window's last millisecond (as the usage ones).
async fn ask_promql(system: &'static str, base: &str, window: &Window, repeat: usize) -> Answered {
    let range = window_selector(window);
    let at = window.end_ms - 1;
    let mut answered = Answered {
        system,
        seconds: Vec::new(),
        groups: HashMap::new(),
    };
    for _ in 0..repeat {
        let mut groups: HashMap<Group, Bytes> = HashMap::new();
        let mut wall = 0.0;
        for (metric, is_tx) in [(FLOW_TX_METRIC, true), (FLOW_RX_METRIC, false)] {
            let query =
                format!("sum by (src_namespace, dst_domain) (sum_over_time({metric}{range}))");
            let (samples, seconds) = promql::instant(base, &query, at, &[]).await;
            wall += seconds;
            for (labels, value) in samples {
                let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
                let bytes = groups
                    .entry((get("src_namespace"), get("dst_domain")))
                    .or_default();
                if is_tx {
                    bytes.tx = value;
                } else {
                    bytes.rx = value;
                }
            }
        }
        answered.seconds.push(wall);
        answered.groups = groups;
    }
    answered
}

async fn victoria_metrics(
    ds: &Dataset,
    work: &Path,
    window: &Window,
    repeat: usize,
) -> (Load, Answered) {
    let data = work.join("victoria-metrics-flows-data");
    let server = start_victoria_metrics(&data, &work.join("logs/victoria-metrics-flows.log")).await;
    eprintln!("  peers: loading VictoriaMetrics (network flows)");
    let cpu_before = machine::process_cpu_seconds(server.pid());
    let seconds = import_victoria_metrics(&server, &ds.flows.vm_files).await;
    let cpu = machine::process_cpu_seconds(server.pid()) - cpu_before;
    let rss_after_load = server.peak_rss();
    let disk = settle_dir(&data, window.settle).await;
    eprintln!("  peers: asking VictoriaMetrics (network flows)");
    let answered = ask_promql("VictoriaMetrics", &server.base, window, repeat).await;
    let load = Load {
        system: "VictoriaMetrics",
        how: format!(
            "`POST /api/v1/import/prometheus`, {} requests (one hour each), then \
             `/internal/force_flush`; server CPU {cpu:.1} s",
            ds.flows.vm_files.len()
        ),
        seconds,
        disk_bytes: disk,
        disk_note: "whole `-storageDataPath` after merges settled".into(),
        peak_rss: server.peak_rss(),
        rss_note: format!(
            "`victoria-metrics` VmHWM ({} after loading)",
            machine::mib(rss_after_load)
        ),
    };
    (load, answered)
}

async fn prometheus(ds: &Dataset, work: &Path, window: &Window, repeat: usize) -> (Load, Answered) {
    eprintln!("  peers: loading Prometheus (network flows, promtool backfill)");
    let (seconds, promtool_rss, disk, server) = backfill_prometheus(
        &ds.flows.openmetrics_file,
        &work.join("prometheus-flows-data"),
        work,
        "prometheus-flows",
    )
    .await;
    eprintln!("  peers: asking Prometheus (network flows)");
    let answered = ask_promql("Prometheus", &server.base, window, repeat).await;
    let load = Load {
        system: "Prometheus",
        how: "`promtool tsdb create-blocks-from openmetrics`, then `prometheus` on the blocks"
            .into(),
        seconds,
        disk_bytes: disk,
        disk_note: "the blocks promtool wrote".into(),
        peak_rss: server.peak_rss().max(promtool_rss),
        rss_note: format!(
            "max of `promtool` ({}) and `prometheus` serving the queries ({})",
            machine::mib(promtool_rss),
            machine::mib(server.peak_rss())
        ),
    };
    (load, answered)
}

fn duckdb(
    ds: &Dataset,
    export: &Export,
    work: &Path,
    repeat: usize,
    python: &Path,
    window: &Window,
) -> (Load, Answered, String) {
    eprintln!("  peers: asking DuckDB (network flows)");
    let script = work.join("duckdb_queries.py");
    std::fs::write(&script, include_str!("duckdb_queries.py")).expect("write script");
    let out = work.join("duckdb-flows.json");
    let args = serde_json::json!({
        "parquet": export.file,
        "out": out,
        "repeat": repeat,
        "queries": {
            "bytes": "SELECT src_namespace, dst_domain, sum(tx_bytes), sum(rx_bytes) \
                      FROM {source} GROUP BY src_namespace, dst_domain",
            "rows": "SELECT count(*) FROM {source}",
        },
    });
    let mut command = Command::new(python);
    command.arg(&script).arg(args.to_string());
    let (_, peak) = promql::run_measured(command, &work.join("logs/duckdb-flows.log"));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out).expect("read DuckDB answers"))
            .expect("DuckDB answers");
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let number = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
    let groups = json["bytes"]["rows"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| {
            (
                (text(&r[0]), text(&r[1])),
                Bytes {
                    tx: number(&r[2]),
                    rx: number(&r[3]),
                },
            )
        })
        .collect();
    let exported = json["rows"]["rows"][0][0].as_u64().unwrap_or(0);
    assert_eq!(
        exported, ds.flows.rows,
        "Tally's export of network_flows over {}..{} holds every row",
        window.start_ms, window.end_ms
    );
    let version = json["version"].as_str().unwrap_or("?").to_string();
    let load = Load {
        system: "DuckDB (over Tally's export)",
        how: format!(
            "reads Tally's export in place: `GET /api/v1/export?table=network_flows` streamed \
             {exported} rows of Parquet in {:.1} s; DuckDB {version}, `read_parquet`",
            export.seconds
        ),
        seconds: export.seconds,
        disk_bytes: std::fs::metadata(&export.file)
            .map(|m| m.len())
            .unwrap_or(0),
        disk_note: "the exported Parquet file".into(),
        peak_rss: peak.max(json["peak_rss_bytes"].as_u64().unwrap_or(0)),
        rss_note: "the Python process running DuckDB (VmHWM, polled and as the script read it at \
                   its end)"
            .into(),
    };
    let seconds = json["bytes"]["seconds"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_f64()).collect())
        .unwrap_or_default();
    let answered = Answered {
        system: "DuckDB",
        seconds,
        groups,
    };
    (load, answered, version)
}

/// Largest relative difference (got − want) ÷ want over the groups both hold (NaN when a
/// value is not a number), and the groups missing from / extra in `got`.
fn compare(want: &HashMap<Group, Bytes>, got: &HashMap<Group, Bytes>) -> (f64, f64, usize, usize) {
    let relative = |g: f64, w: f64| {
        if g.is_nan() || w.is_nan() {
            f64::NAN
        } else if w == 0.0 {
            g.abs()
        } else {
            ((g - w) / w).abs()
        }
    };
    let (mut tx, mut rx, mut missing) = (0.0f64, 0.0f64, 0);
    for (group, w) in want {
        match got.get(group) {
            Some(g) => {
                let (t, r) = (relative(g.tx, w.tx), relative(g.rx, w.rx));
                tx = if t.is_nan() { f64::NAN } else { tx.max(t) };
                rx = if r.is_nan() { f64::NAN } else { rx.max(r) };
            }
            None => missing += 1,
        }
    }
    let extra = got.keys().filter(|g| !want.contains_key(*g)).count();
    (tx, rx, missing, extra)
}

/// The "Network flows" subsection of the peers report.
pub fn report(ds: &Dataset, flows: &Flows, window: &Window, repeat: usize) -> String {
    let (load_lines, notes) = load_table(&flows.loads, ds.flows.rows);
    let tally = &flows.answered[0];
    let mut query_lines = Vec::new();
    for a in &flows.answered {
        query_lines.push(format!(
            "| {} | {} | {:.2} |",
            a.system,
            times(&a.seconds),
            best(&a.seconds) / best(&tally.seconds)
        ));
    }
    let fastest_peer = flows.answered[1..]
        .iter()
        .map(|a| (best(&a.seconds), a.system))
        .fold((f64::INFINITY, ""), |m, x| if x.0 < m.0 { x } else { m });
    let reference = flows
        .answered
        .iter()
        .find(|a| a.system == "DuckDB")
        .expect("DuckDB answered");
    let mut agree_lines = Vec::new();
    let mut disagreements = Vec::new();
    for a in flows.answered.iter().filter(|a| a.system != "DuckDB") {
        // Tally and DuckDB add int64 exactly; the PromQL peers add float64 samples, exact
        // while a sum stays below 2^53 bytes.
        let tolerance = 1e-9;
        let (tx, rx, missing, extra) = compare(&reference.groups, &a.groups);
        agree_lines.push(format!(
            "| {} | {} | {missing} / {extra} | {tx:.1e} | {rx:.1e} |",
            a.system,
            a.groups.len(),
        ));
        if missing + extra > 0 || tx.is_nan() || rx.is_nan() || tx > tolerance || rx > tolerance {
            disagreements.push(format!(
                "{}: {missing} groups missing, {extra} extra, tx bytes off by up to {tx:.1e}, rx \
                 bytes by up to {rx:.1e} (relative)",
                a.system
            ));
        }
    }
    let disagreements = if disagreements.is_empty() {
        format!(
            "Every system's {} groups agree with DuckDB within 1e-9 relative.",
            reference.groups.len()
        )
    } else {
        format!("**Disagreements**: {}.", disagreements.join("; "))
    };
    let total_tx: f64 = reference.groups.values().map(|b| b.tx).sum();
    format!(
        "### Network flows\n\n\
         The same cluster's `network_flows` over the same window: {} flow series (about 1.5 per \
         long-running pod), **{} rows**, one per flow and {} s window (src/dst IP, port, protocol, \
         source namespace/pod, destination domain, tx/rx bytes and packets), {:.1} GiB sent in \
         all. For the peers each row is two samples, `{FLOW_TX_METRIC}` and `{FLOW_RX_METRIC}`: \
         the window's bytes (a per-window gauge, so `sum_over_time` adds windows up), labelled \
         `src_namespace`, `src_pod`, `src_ip`, `dst_ip`, `dst_port`, `protocol`, `dst_domain` (a \
         null is no label); Tally keeps the whole 14-column row. Each system loads the flows \
         into a fresh instance of its own, so disk and peak RSS below are the flows' alone. \
         Versions as above (DuckDB {}).\n\n\
         #### Loading and storage (network flows)\n\n\
         | system | load time | rows/s | time ÷ Tally | on disk | bytes/row | disk ÷ Tally | peak RSS | RSS ÷ Tally |\n\
         |---|---|---|---|---|---|---|---|---|\n{load_lines}\n\n{notes}\n\n\
         #### Bytes by source namespace and destination domain, whole window\n\n\
         Tally: `queries/network_bytes_by_namespace_domain.sql` (sent and received bytes and \
         samples per group); the PromQL peers: `sum by (src_namespace, dst_domain) \
         (sum_over_time({FLOW_TX_METRIC}{w}))` and the same for `{FLOW_RX_METRIC}`, the two wall \
         times added up; DuckDB: `GROUP BY src_namespace, dst_domain` over the export. Wall \
         time of each of {repeat} runs; \"÷ Tally\" compares best runs.\n\n\
         | system | wall time | ÷ Tally |\n|---|---|---|\n{}\n\n\
         The fastest peer ({fastest_name}) takes {fastest_ratio:.2}× Tally's time (above 1: Tally is faster).\n\n\
         #### Do the flow answers agree?\n\n\
         Against DuckDB's sums ({} groups). Relative differences |system − DuckDB| ÷ DuckDB.\n\n\
         | system | groups | missing / extra | tx bytes max diff | rx bytes max diff |\n\
         |---|---|---|---|---|\n{}\n\n{disagreements}",
        ds.flow_series,
        ds.flows.rows,
        ds.step_ms / 1000,
        total_tx / 1_073_741_824.0,
        flows.duckdb_version,
        query_lines.join("\n"),
        reference.groups.len(),
        agree_lines.join("\n"),
        w = window_selector(window),
        fastest_ratio = fastest_peer.0 / best(&tally.seconds),
        fastest_name = fastest_peer.1,
    )
}
