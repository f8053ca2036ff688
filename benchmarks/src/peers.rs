//! `tally-bench peers`: Tally side by side with what a user would pick instead, on one
//! dataset, on this machine, in one run.
//!
//! One simulated cluster's `container_usage` is written once in each system's import format
//! ([`dataset`]), then loaded into
//! - Tally: the real `tally serve` binary, Arrow Flight `DoPut` from two clients on loopback;
//! - VictoriaMetrics (Debian `victoria-metrics`): `POST /api/v1/import/prometheus`, one hour
//!   of data per request, then `/internal/force_flush`;
//! - Prometheus (Debian `prometheus`): `promtool tsdb create-blocks-from openmetrics`, then
//!   `prometheus` started on the blocks;
//! - DuckDB (PyPI `duckdb`, the venv of tests/requirements.txt): over the Parquet Tally
//!   exports (`GET /api/v1/export`), in place.
//!
//! Each answers the recommendation questions for the whole window: p95 CPU and max memory per
//! container (Tally: `queries/container_percentiles_hourly.sql` on rollups and
//! `container_percentiles_raw.sql` on raw rows; the peers: `quantile_over_time` and
//! `max_over_time`, DuckDB `quantile_cont` and `max`) and a cost by namespace (usage priced at
//! OpenCost's default rates, which every system can compute from what it holds). Measured:
//! load rate, bytes on disk per row, query wall times (each query twice), peak RSS (VmHWM) of
//! every process; and whether the answers agree, against DuckDB's exact percentiles.
//!
//! Then the same cluster's `network_flows` over the same window go through the same four
//! systems, each a fresh instance ([`flows`]): load rate, bytes on disk per row, peak RSS,
//! and bytes sent and received by source namespace and destination domain over the whole
//! window (Tally: `queries/network_bytes_by_namespace_domain.sql`), checked against DuckDB.
//! Every server listens on 127.0.0.1 only. No assertion is made on any time.

mod compare;
mod dataset;
mod flows;
mod promql;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type};
use tally_queries::Param;
use tally_wire::{IngestClient, Table};

use crate::machine;
use compare::{Answers, Costs, Key, Usage};
use dataset::{CPU_METRIC, Dataset, MEMORY_METRIC};
use promql::Server;

pub struct Options {
    pub containers: usize,
    pub hours: u32,
    pub step_seconds: i64,
    /// Scratch space for the import files and every system's data (replaced, then removed
    /// unless `keep`).
    pub work_dir: PathBuf,
    pub keep: bool,
    /// Runs of each query.
    pub repeat: usize,
    /// How long Tally's files and VictoriaMetrics' directory must stay unchanged (compaction
    /// and merges done) before the disk is measured; more than Tally's 5 s maintenance interval.
    pub settle: Duration,
}

/// Loading one system.
struct Load {
    system: &'static str,
    how: String,
    seconds: f64,
    disk_bytes: u64,
    disk_note: String,
    peak_rss: u64,
    rss_note: String,
}

/// One system's answers and query times.
struct Answered {
    system: &'static str,
    percentiles_seconds: Vec<f64>,
    cost_seconds: Vec<f64>,
    usage: Answers,
    costs: Costs,
}

/// What the questions need to know about the data.
struct Window {
    start_ms: i64,
    end_ms: i64,
    step_ms: i64,
    /// See [`Options::settle`].
    settle: Duration,
    /// Dollars per (core × sample) and per (byte × sample): the rate per hour times the
    /// sample step in hours.
    cpu_factor: f64,
    memory_factor: f64,
}

impl Window {
    /// Tally's flush interval: its default 10 s, or the settle time when shorter.
    fn flush(&self) -> Duration {
        self.settle.min(Duration::from_secs(10))
    }
}

pub async fn peers(options: Options) -> (String, String) {
    let work = &options.work_dir;
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work.join("logs")).expect("create work directory");
    let versions = versions();
    let ds = dataset::generate(
        options.containers,
        options.hours,
        options.step_seconds * 1000,
        &work.join("dataset"),
    );
    let prices = tally_analysis::AnalysisConfig::default();
    let step_hours = ds.step_ms as f64 / 3_600_000.0;
    let window = Window {
        start_ms: ds.start_ms,
        end_ms: ds.end_ms,
        step_ms: ds.step_ms,
        settle: options.settle,
        cpu_factor: prices.default_cpu_core_hour_usd * step_hours,
        memory_factor: prices.default_memory_gib_hour_usd * step_hours / 1_073_741_824.0,
    };
    let repeat = options.repeat.max(1);

    let (tally_load, tally_answers, export) = tally(&ds, work, &window, repeat).await;
    let (vm_load, vm_answers) = victoria_metrics(&ds, work, &window, repeat).await;
    let (prom_load, prom_answers) = prometheus(&ds, work, &window, repeat).await;
    let (duck_load, duck_answers, duck_version, short) =
        duckdb(&export, work, &window, repeat, &versions.python);
    if !options.keep {
        // Room for the flows: the usage part's import files and stores are done with.
        let _ = std::fs::remove_dir_all(work.join("dataset/vm-container_usage"));
        let _ = std::fs::remove_file(&ds.openmetrics_file);
        for dir in ["tally-data", "victoria-metrics-data", "prometheus-data"] {
            let _ = std::fs::remove_dir_all(work.join(dir));
        }
    }
    let flows = flows::flows(&ds, work, &window, repeat, &versions.python).await;

    if !options.keep {
        let _ = std::fs::remove_dir_all(work);
    }
    let loads = [tally_load, vm_load, prom_load, duck_load];
    let mut answered = tally_answers;
    answered.extend([vm_answers, prom_answers, duck_answers]);
    let versions = [
        versions.victoria_metrics,
        versions.prometheus,
        format!(
            "DuckDB {duck_version} (Python, {})",
            versions.python.display()
        ),
    ];
    (
        "peers".into(),
        format!(
            "{}\n\n{}",
            report(&ds, &versions, &loads, &answered, &short, &window, repeat),
            flows::report(&ds, &flows, &window, repeat)
        ),
    )
}

struct Versions {
    victoria_metrics: String,
    prometheus: String,
    python: PathBuf,
}

fn first_line(command: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(command).args(args).output().ok()?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

fn versions() -> Versions {
    let installed = |bin: &str, package: &str| {
        assert!(
            first_line("sh", &["-c", &format!("command -v {bin}")]).is_some(),
            "{bin} is not installed: apt-get install {package} (tests/run.sh installs it)"
        );
    };
    installed("victoria-metrics", "victoria-metrics");
    installed("prometheus", "prometheus");
    installed("promtool", "prometheus");
    // Debian's build prints an empty --version; the package version says the same.
    let victoria_metrics = first_line("victoria-metrics", &["--version"])
        .or_else(|| {
            first_line(
                "dpkg-query",
                &["-W", "-f", "${Version}", "victoria-metrics"],
            )
            .map(|v| format!("victoria-metrics {v} (Debian package)"))
        })
        .unwrap_or_else(|| "unknown".into());
    let prometheus = first_line("prometheus", &["--version"]).unwrap_or_else(|| "unknown".into());
    let cache = std::env::var_os("TALLY_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/tally")))
        .unwrap_or_else(|| PathBuf::from("/root/.cache/tally"));
    let venv = cache.join("venv/bin/python3");
    let python = if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    };
    Versions {
        victoria_metrics,
        prometheus,
        python,
    }
}

fn key(namespace: &str, pod: &str, container: &str) -> Key {
    (namespace.into(), pod.into(), container.into())
}

fn float_column(batch: &RecordBatch, name: &str) -> arrow::array::Float64Array {
    let column = batch
        .column_by_name(name)
        .unwrap_or_else(|| panic!("result has no column {name}"));
    arrow::compute::cast(column, &DataType::Float64)
        .expect("cast to f64")
        .as_primitive::<Float64Type>()
        .clone()
}

fn string_column(batch: &RecordBatch, name: &str) -> arrow::array::StringArray {
    let column = batch
        .column_by_name(name)
        .unwrap_or_else(|| panic!("result has no column {name}"));
    arrow::compute::cast(column, &DataType::Utf8)
        .expect("cast to text")
        .as_string::<i32>()
        .clone()
}

fn usage_from_batches(batches: &[RecordBatch]) -> Answers {
    let mut out = Answers::new();
    for batch in batches {
        let (ns, pod, container) = (
            string_column(batch, "namespace"),
            string_column(batch, "pod"),
            string_column(batch, "container"),
        );
        let (cpu, memory) = (
            float_column(batch, "cpu_p95_cores"),
            float_column(batch, "memory_max_bytes"),
        );
        for row in 0..batch.num_rows() {
            let value = |a: &arrow::array::Float64Array| {
                if a.is_valid(row) {
                    a.value(row)
                } else {
                    f64::NAN
                }
            };
            out.insert(
                key(ns.value(row), pod.value(row), container.value(row)),
                Usage {
                    cpu_p95: value(&cpu),
                    memory_max: value(&memory),
                },
            );
        }
    }
    out
}

fn costs_from_batches(batches: &[RecordBatch]) -> Costs {
    let mut out = Costs::new();
    for batch in batches {
        let (ns, cost) = (
            string_column(batch, "namespace"),
            float_column(batch, "cost_usd"),
        );
        for row in 0..batch.num_rows() {
            out.insert(ns.value(row).to_string(), cost.value(row));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Tally

/// The exported Parquet DuckDB reads.
struct Export {
    file: PathBuf,
    rows: u64,
    seconds: f64,
}

async fn post_sql(base: &str, sql: &str) -> (Vec<RecordBatch>, f64) {
    let started = Instant::now();
    let response = reqwest::Client::new()
        .post(format!("{base}/api/v1/sql"))
        .header("accept", "application/vnd.apache.arrow.stream")
        .json(&serde_json::json!({ "sql": sql }))
        .timeout(Duration::from_secs(3600))
        .send()
        .await
        .expect("POST /api/v1/sql");
    let status = response.status();
    let body = response.bytes().await.expect("SQL answer");
    let wall = started.elapsed().as_secs_f64();
    assert!(
        status.is_success(),
        "Tally SQL failed ({status}): {}\n{sql}",
        String::from_utf8_lossy(&body)
    );
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(body), None)
        .expect("Arrow IPC answer");
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .expect("Arrow batches");
    (batches, wall)
}

async fn tally_metric(base: &str, name: &str) -> u64 {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("/metrics has no {name}"))
}

fn timestamp(ms: i64) -> Param {
    Param::Timestamp(chrono::DateTime::from_timestamp_millis(ms).expect("time"))
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .expect("time")
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// Starts `tally serve` on `data` (loopback ports, analysis off, the past kept): the server
/// and its Flight address.
/// Flushes every `flush` (the benchmark uses 10 s, Tally's default, or the settle time when
/// that is shorter, so `--tiny` does not wait 10 s for each flush).
async fn start_tally(data: &Path, log: &Path, flush: Duration) -> (Server, String) {
    let (flight_port, http_port) = (promql::free_port(), promql::free_port());
    let mut command = Command::new(crate::tally_bin());
    command
        .args(["serve", "--insecure", "--analysis-interval", "0"])
        .args(["--flight-listen", &format!("127.0.0.1:{flight_port}")])
        .args(["--http-listen", &format!("127.0.0.1:{http_port}")])
        .arg("--data-dir")
        .arg(data)
        // The dataset lies in the past: keep it whatever today's date is.
        .args(["--retention", "container_usage=36500d"])
        .args(["--retention", "container_usage_hourly=36500d"])
        .args(["--retention", "network_flows=36500d"])
        .args(["--maintenance-interval", "5s", "--delete-grace", "1s"])
        .args(["--flush-interval", &format!("{}ms", flush.as_millis())])
        // The raw-row query reads every sample: give it the room and time the peers get.
        .args(["--query-memory", "8GiB", "--query-timeout", "1h"]);
    let server = Server::start("tally", command, http_port, "/readyz", log).await;
    (server, format!("http://127.0.0.1:{flight_port}"))
}

/// Sends an Arrow file's batches to `table` over Flight DoPut from two clients, 8 batches per
/// call; returns when every call was acknowledged.
async fn flight_load(file: &Path, table: Table, flight: &str) {
    let (send, receive) = tokio::sync::mpsc::channel(4);
    let file = file.to_path_buf();
    let reader = tokio::task::spawn_blocking(move || dataset::read_batches(&file, 8, send));
    let receive = Arc::new(tokio::sync::Mutex::new(receive));
    let mut clients = Vec::new();
    for _ in 0..2 {
        let (receive, flight) = (receive.clone(), flight.to_string());
        clients.push(tokio::spawn(async move {
            let mut client = IngestClient::connect(&flight, None)
                .await
                .expect("connect to Tally");
            loop {
                let next = receive.lock().await.recv().await;
                let Some(group) = next else { break };
                client.write(table, group).await.expect("write to Tally");
            }
        }));
    }
    for client in clients {
        client.await.expect("client");
    }
    reader.await.expect("reader");
}

/// What loading one table into Tally took.
struct TallyLoad {
    /// Seconds until the last row was acknowledged.
    acknowledged: f64,
    /// Seconds until no row was left in the hot buffer (all in Parquet, rollups included).
    in_parquet: f64,
    /// The server's CPU seconds over the load.
    cpu: f64,
    /// The server's peak RSS right after the load.
    rss_after_load: u64,
}

/// Loads an Arrow file into `table` of a running Tally ([`flight_load`]), waits until every
/// row is in Parquet, checks that `rows` were acknowledged, and lets compaction settle.
async fn load_tally(
    server: &Server,
    flight: &str,
    file: &Path,
    table: Table,
    rows: u64,
    settle: Duration,
) -> TallyLoad {
    let base = &server.base;
    let cpu_before = machine::process_cpu_seconds(server.pid());
    let started = Instant::now();
    flight_load(file, table, flight).await;
    let acknowledged = started.elapsed().as_secs_f64();
    while tally_metric(base, "tally_hot_rows").await > 0 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let in_parquet = started.elapsed().as_secs_f64();
    let cpu = machine::process_cpu_seconds(server.pid()) - cpu_before;
    let rss_after_load = server.peak_rss();
    let acknowledged_rows = tally_metric(base, "tally_ingest_rows_total").await;
    assert_eq!(
        acknowledged_rows, rows,
        "Tally acknowledged every row of {table:?}"
    );
    settle_tally(base, settle).await;
    TallyLoad {
        acknowledged,
        in_parquet,
        cpu,
        rss_after_load,
    }
}

/// Lets compaction finish (and the files it replaced be deleted) before the disk is measured:
/// returns when compactions and file count stayed unchanged for `settle` (at most 180 s).
async fn settle_tally(base: &str, settle: Duration) {
    let started = Instant::now();
    let mut last = (u64::MAX, u64::MAX);
    let mut steady_since = Instant::now();
    while started.elapsed() < Duration::from_secs(180) {
        let now = (
            tally_metric(base, "tally_compactions_total").await,
            tally_metric(base, "tally_parquet_files").await,
        );
        if now != last {
            last = now;
            steady_since = Instant::now();
        } else if steady_since.elapsed() > settle {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Streams `GET /api/v1/export` of `table` over the window into `file`: the seconds it took.
async fn export_parquet(base: &str, table: Table, window: &Window, file: &Path) -> f64 {
    let started = Instant::now();
    let (from, to) = (rfc3339(window.start_ms), rfc3339(window.end_ms));
    let mut response = reqwest::Client::new()
        .get(format!("{base}/api/v1/export"))
        .query(&[
            ("table", table.name()),
            ("from", from.as_str()),
            ("to", to.as_str()),
        ])
        .timeout(Duration::from_secs(3600))
        .send()
        .await
        .expect("GET /api/v1/export");
    assert!(
        response.status().is_success(),
        "export: {}",
        response.status()
    );
    let mut out = std::fs::File::create(file).expect("create export file");
    while let Some(chunk) = response.chunk().await.expect("export body") {
        std::io::Write::write_all(&mut out, &chunk).expect("write export");
    }
    started.elapsed().as_secs_f64()
}

async fn tally(
    ds: &Dataset,
    work: &Path,
    window: &Window,
    repeat: usize,
) -> (Load, Vec<Answered>, Export) {
    let data = work.join("tally-data");
    let (server, flight) = start_tally(&data, &work.join("logs/tally.log"), window.flush()).await;
    let base = server.base.clone();

    eprintln!("  peers: loading Tally");
    let TallyLoad {
        acknowledged,
        in_parquet,
        cpu,
        rss_after_load,
    } = load_tally(
        &server,
        &flight,
        &ds.arrow_file,
        Table::ContainerUsage,
        ds.rows,
        window.settle,
    )
    .await;
    let raw_bytes = promql::dir_bytes(&data.join("tables/container_usage"));
    let hourly_bytes = promql::dir_bytes(&data.join("tables/container_usage_hourly"));
    let all_bytes = promql::dir_bytes(&data);

    eprintln!("  peers: asking Tally");
    let params = [
        ("window_start", timestamp(window.start_ms)),
        ("window_end", timestamp(window.end_ms)),
    ];
    let range = format!(
        "time >= TIMESTAMP '{}' AND time < TIMESTAMP '{}'",
        rfc3339(window.start_ms),
        rfc3339(window.end_ms)
    );
    let mut answered = Vec::new();
    for (system, query, cost_sql) in [
        (
            "Tally (rollups)",
            tally_queries::CONTAINER_PERCENTILES_HOURLY,
            format!(
                "SELECT namespace, sum(cpu_sum) * {:e} + sum(memory_sum) * {:e} AS cost_usd \
                 FROM container_usage_hourly WHERE {range} GROUP BY namespace ORDER BY namespace",
                window.cpu_factor, window.memory_factor
            ),
        ),
        (
            "Tally (raw rows)",
            tally_queries::CONTAINER_PERCENTILES_RAW,
            format!(
                "SELECT namespace, sum(cpu_cores) * {:e} \
                 + sum(CAST(memory_working_set_bytes AS DOUBLE)) * {:e} AS cost_usd \
                 FROM container_usage WHERE {range} GROUP BY namespace ORDER BY namespace",
                window.cpu_factor, window.memory_factor
            ),
        ),
    ] {
        let sql = query.render(&params).expect("render query");
        let mut run = Answered {
            system,
            percentiles_seconds: Vec::new(),
            cost_seconds: Vec::new(),
            usage: Answers::new(),
            costs: Costs::new(),
        };
        for _ in 0..repeat {
            let (batches, wall) = post_sql(&base, &sql).await;
            run.percentiles_seconds.push(wall);
            run.usage = usage_from_batches(&batches);
            let (batches, wall) = post_sql(&base, &cost_sql).await;
            run.cost_seconds.push(wall);
            run.costs = costs_from_batches(&batches);
        }
        answered.push(run);
    }

    eprintln!("  peers: exporting Parquet from Tally for DuckDB");
    let export_file = work.join("container_usage.parquet");
    let seconds = export_parquet(&base, Table::ContainerUsage, window, &export_file).await;
    let export = Export {
        file: export_file,
        rows: ds.rows,
        seconds,
    };
    let peak = server.peak_rss();
    drop(server);

    let load = Load {
        system: "Tally",
        how: format!(
            "Arrow Flight DoPut, 2 clients, batches of ≤ 65,536 rows, 8 per call. Load time: until \
             the last row is acknowledged (WAL fsync'd and visible to queries, as VictoriaMetrics' \
             rows are after its force_flush); every row was in Parquet with its rollups after \
             {in_parquet:.1} s (flush interval {:.0} s); server CPU {cpu:.1} s ({:.0} rows per CPU second)",
            window.flush().as_secs_f64(),
            ds.rows as f64 / cpu.max(1e-9)
        ),
        seconds: acknowledged,
        disk_bytes: raw_bytes,
        disk_note: format!(
            "container_usage Parquet after compaction (all 18 columns); + hourly rollups {} = {:.2} B/row; \
             whole data dir {}",
            machine::mib(hourly_bytes),
            (raw_bytes + hourly_bytes) as f64 / ds.rows as f64,
            machine::mib(all_bytes)
        ),
        peak_rss: peak,
        rss_note: format!(
            "`tally serve` VmHWM ({} after loading)",
            machine::mib(rss_after_load)
        ),
    };
    (load, answered, export)
}

// ---------------------------------------------------------------------------------------
// VictoriaMetrics and Prometheus

fn window_selector(window: &Window) -> String {
    format!("[{}ms]", window.end_ms - window.start_ms)
}

/// The two PromQL questions, asked at the window's last millisecond so the range
/// `(end − width − 1 ms, end − 1 ms]` holds exactly the window's samples.
async fn ask_promql(system: &'static str, base: &str, window: &Window, repeat: usize) -> Answered {
    let range = window_selector(window);
    let at = window.end_ms - 1;
    let p95 = format!("quantile_over_time(0.95, {CPU_METRIC}{range})");
    let max = format!("max_over_time({MEMORY_METRIC}{range})");
    let cost = format!(
        "sum by (namespace) (sum_over_time({CPU_METRIC}{range})) * {:e} \
         + sum by (namespace) (sum_over_time({MEMORY_METRIC}{range})) * {:e}",
        window.cpu_factor, window.memory_factor
    );
    let label_key = |labels: &std::collections::BTreeMap<String, String>| {
        let get = |k: &str| labels.get(k).map(String::as_str).unwrap_or_default();
        key(get("namespace"), get("pod"), get("container"))
    };
    let mut run = Answered {
        system,
        percentiles_seconds: Vec::new(),
        cost_seconds: Vec::new(),
        usage: Answers::new(),
        costs: Costs::new(),
    };
    for _ in 0..repeat {
        let (cpu, cpu_wall) = promql::instant(base, &p95, at, &[]).await;
        let (memory, memory_wall) = promql::instant(base, &max, at, &[]).await;
        run.percentiles_seconds.push(cpu_wall + memory_wall);
        let mut usage: HashMap<Key, Usage> = HashMap::new();
        for (labels, value) in &cpu {
            usage
                .entry(label_key(labels))
                .or_insert(Usage {
                    cpu_p95: f64::NAN,
                    memory_max: f64::NAN,
                })
                .cpu_p95 = *value;
        }
        for (labels, value) in &memory {
            usage
                .entry(label_key(labels))
                .or_insert(Usage {
                    cpu_p95: f64::NAN,
                    memory_max: f64::NAN,
                })
                .memory_max = *value;
        }
        run.usage = usage;
        let (costs, cost_wall) = promql::instant(base, &cost, at, &[]).await;
        run.cost_seconds.push(cost_wall);
        run.costs = costs
            .into_iter()
            .map(|(labels, v)| (labels.get("namespace").cloned().unwrap_or_default(), v))
            .collect();
    }
    run
}

async fn victoria_metrics(
    ds: &Dataset,
    work: &Path,
    window: &Window,
    repeat: usize,
) -> (Load, Answered) {
    let data = work.join("victoria-metrics-data");
    let server = start_victoria_metrics(&data, &work.join("logs/victoria-metrics.log")).await;
    eprintln!("  peers: loading VictoriaMetrics");
    let cpu_before = machine::process_cpu_seconds(server.pid());
    let seconds = import_victoria_metrics(&server, &ds.vm_files).await;
    let cpu = machine::process_cpu_seconds(server.pid()) - cpu_before;
    let rss_after_load = server.peak_rss();
    let disk = settle_dir(&data, window.settle).await;
    eprintln!("  peers: asking VictoriaMetrics");
    let answered = ask_promql("VictoriaMetrics", &server.base, window, repeat).await;
    let load = Load {
        system: "VictoriaMetrics",
        how: format!(
            "`POST /api/v1/import/prometheus`, {} requests (one hour of text each), then \
             `/internal/force_flush`; server CPU {cpu:.1} s",
            ds.vm_files.len()
        ),
        seconds,
        disk_bytes: disk,
        disk_note: "whole `-storageDataPath` (data + indexdb) after merges settled".into(),
        peak_rss: server.peak_rss(),
        rss_note: format!(
            "`victoria-metrics` VmHWM ({} after loading)",
            machine::mib(rss_after_load)
        ),
    };
    (load, answered)
}

/// Starts VictoriaMetrics on `data` (loopback, the past kept, no response cache).
async fn start_victoria_metrics(data: &Path, log: &Path) -> Server {
    let port = promql::free_port();
    let mut command = Command::new("victoria-metrics");
    command
        .arg(format!("-storageDataPath={}", data.display()))
        .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
        // The dataset lies in the past: keep it whatever today's date is.
        .arg("-retentionPeriod=100y")
        // Measure the query, not VictoriaMetrics' response cache.
        .arg("-search.disableCache")
        .arg("-search.maxQueryDuration=1h")
        .arg("-search.maxSamplesPerQuery=100000000000");
    Server::start("victoria-metrics", command, port, "/health", log).await
}

/// Imports the text files (one request each), then `/internal/force_flush`: the seconds the
/// requests took (reading the files is not counted).
async fn import_victoria_metrics(server: &Server, files: &[PathBuf]) -> f64 {
    let client = reqwest::Client::new();
    let mut seconds = 0.0;
    for file in files {
        let body = std::fs::read(file).expect("read import file");
        let started = Instant::now();
        let response = client
            .post(format!("{}/api/v1/import/prometheus", server.base))
            .body(body)
            .timeout(Duration::from_secs(3600))
            .send()
            .await
            .expect("import into VictoriaMetrics");
        assert!(
            response.status().is_success(),
            "VictoriaMetrics import: {}",
            response.status()
        );
        seconds += started.elapsed().as_secs_f64();
    }
    let started = Instant::now();
    let flushed = client
        .get(format!("{}/internal/force_flush", server.base))
        .send()
        .await
        .expect("force_flush");
    assert!(
        flushed.status().is_success(),
        "force_flush: {}",
        flushed.status()
    );
    seconds + started.elapsed().as_secs_f64()
}

/// Waits until `dir`'s size stays unchanged for `settle` (background merges done; at most
/// 180 s) and returns it.
async fn settle_dir(dir: &Path, settle: Duration) -> u64 {
    let started = Instant::now();
    let (mut last, mut steady_since) = (u64::MAX, Instant::now());
    while started.elapsed() < Duration::from_secs(180) {
        let now = promql::dir_bytes(dir);
        if now != last {
            (last, steady_since) = (now, Instant::now());
        } else if steady_since.elapsed() > settle {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    promql::dir_bytes(dir)
}

/// `promtool tsdb create-blocks-from openmetrics` of `file` into `data`, then `prometheus`
/// started on the blocks (logs named after `name`): promtool's wall time and peak RSS, the
/// blocks' bytes, and the server.
async fn backfill_prometheus(
    file: &Path,
    data: &Path,
    work: &Path,
    name: &str,
) -> (f64, u64, u64, Server) {
    let mut backfill = Command::new("promtool");
    backfill
        .args(["tsdb", "create-blocks-from", "openmetrics", "--quiet"])
        .arg(file)
        .arg(data);
    let (seconds, promtool_rss) =
        promql::run_measured(backfill, &work.join(format!("logs/promtool-{name}.log")));
    let disk = promql::dir_bytes(data);
    let config = work.join(format!("{name}.yml"));
    std::fs::write(
        &config,
        "global:\n  scrape_interval: 1h\nscrape_configs: []\n",
    )
    .expect("write prometheus.yml");
    let port = promql::free_port();
    let mut command = Command::new("prometheus");
    command
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", data.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--storage.tsdb.retention.time=100y")
        .arg("--query.timeout=1h")
        .arg("--query.max-samples=2000000000");
    let server = Server::start(
        "prometheus",
        command,
        port,
        "/-/ready",
        &work.join(format!("logs/{name}.log")),
    )
    .await;
    (seconds, promtool_rss, disk, server)
}

async fn prometheus(ds: &Dataset, work: &Path, window: &Window, repeat: usize) -> (Load, Answered) {
    let data = work.join("prometheus-data");
    eprintln!("  peers: loading Prometheus (promtool backfill)");
    let (seconds, promtool_rss, disk, server) =
        backfill_prometheus(&ds.openmetrics_file, &data, work, "prometheus").await;
    eprintln!("  peers: asking Prometheus");
    let answered = ask_promql("Prometheus", &server.base, window, repeat).await;
    let load = Load {
        system: "Prometheus",
        how: "`promtool tsdb create-blocks-from openmetrics` (one OpenMetrics file, 2 h blocks), \
              then `prometheus` started on the blocks"
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

// ---------------------------------------------------------------------------------------
// DuckDB

fn duckdb(
    export: &Export,
    work: &Path,
    window: &Window,
    repeat: usize,
    python: &Path,
) -> (Load, Answered, String, HashSet<Key>) {
    eprintln!("  peers: asking DuckDB");
    let script = work.join("duckdb_queries.py");
    std::fs::write(&script, include_str!("peers/duckdb_queries.py")).expect("write script");
    let out = work.join("duckdb.json");
    let args = serde_json::json!({
        "parquet": export.file,
        "out": out,
        "repeat": repeat,
        "cost_sql": format!(
            "SELECT namespace, sum(cpu_cores) * {:e} + sum(CAST(memory_working_set_bytes AS DOUBLE)) * {:e} \
             FROM {{source}} GROUP BY namespace",
            window.cpu_factor, window.memory_factor
        ),
    });
    let mut command = Command::new(python);
    command.arg(&script).arg(args.to_string());
    let (_, peak) = promql::run_measured(command, &work.join("logs/duckdb.log"));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out).expect("read DuckDB answers"))
            .expect("DuckDB answers");
    let seconds = |name: &str| -> Vec<f64> {
        json[name]["seconds"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_f64()).collect())
            .unwrap_or_default()
    };
    let rows = |name: &str| json[name]["rows"].as_array().cloned().unwrap_or_default();
    let number = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let usage = rows("percentiles")
        .iter()
        .map(|r| {
            (
                (text(&r[0]), text(&r[1]), text(&r[2])),
                Usage {
                    cpu_p95: number(&r[3]),
                    memory_max: number(&r[4]),
                },
            )
        })
        .collect();
    // Containers with less than an hour of samples (job pods, HPA scale-outs): percentile
    // definitions differ most when there are few samples.
    let hour = 3_600_000.0 / window.step_ms as f64;
    let short = rows("percentiles")
        .iter()
        .filter(|r| number(&r[5]) < hour)
        .map(|r| (text(&r[0]), text(&r[1]), text(&r[2])))
        .collect();
    let costs = rows("cost")
        .iter()
        .map(|r| (text(&r[0]), number(&r[1])))
        .collect();
    let load = Load {
        system: "DuckDB (over Tally's export)",
        how: format!(
            "reads Tally's export in place: `GET /api/v1/export?table=container_usage` streamed \
             {} rows of Parquet in {:.1} s; DuckDB {} ({} threads), `read_parquet`",
            export.rows,
            export.seconds,
            json["version"].as_str().unwrap_or("?"),
            json["threads"]
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
    let answered = Answered {
        system: "DuckDB",
        percentiles_seconds: seconds("percentiles"),
        cost_seconds: seconds("cost"),
        usage,
        costs,
    };
    let version = json["version"].as_str().unwrap_or("?").to_string();
    (load, answered, version, short)
}

// ---------------------------------------------------------------------------------------
// The report

fn times(seconds: &[f64]) -> String {
    seconds
        .iter()
        .map(|s| format!("{s:.3} s"))
        .collect::<Vec<_>>()
        .join(" / ")
}

fn best(seconds: &[f64]) -> f64 {
    seconds.iter().copied().fold(f64::INFINITY, f64::min)
}

/// The loading table's rows (`rows` loaded by each system) and the notes under it.
fn load_table(loads: &[Load], rows: u64) -> (String, String) {
    let tally = &loads[0];
    let mut load_lines = Vec::new();
    for l in loads {
        load_lines.push(format!(
            "| {} | {:.1} s | {:.0} | {:.2} | {} | {:.2} | {:.2} | {} | {:.2} |",
            l.system,
            l.seconds,
            rows as f64 / l.seconds,
            l.seconds / tally.seconds,
            machine::mib(l.disk_bytes),
            l.disk_bytes as f64 / rows as f64,
            l.disk_bytes as f64 / tally.disk_bytes as f64,
            machine::mib(l.peak_rss),
            l.peak_rss as f64 / tally.peak_rss as f64,
        ));
    }
    let notes = loads
        .iter()
        .map(|l| {
            format!(
                "- **{}**: {}. Disk: {}. Peak RSS: {}.",
                l.system, l.how, l.disk_note, l.rss_note
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    (load_lines.join("\n"), notes)
}

fn report(
    ds: &Dataset,
    versions: &[String; 3],
    loads: &[Load],
    answered: &[Answered],
    short: &HashSet<Key>,
    window: &Window,
    repeat: usize,
) -> String {
    let tally = &loads[0];
    let (load_lines, notes) = load_table(loads, ds.rows);

    let rollups = &answered[0];
    let peers: Vec<&Answered> = answered
        .iter()
        .filter(|a| !a.system.starts_with("Tally"))
        .collect();
    let mut query_lines = Vec::new();
    for a in answered {
        query_lines.push(format!(
            "| {} | {} | {:.2} | {} | {:.2} |",
            a.system,
            times(&a.percentiles_seconds),
            best(&a.percentiles_seconds) / best(&rollups.percentiles_seconds),
            times(&a.cost_seconds),
            best(&a.cost_seconds) / best(&rollups.cost_seconds),
        ));
    }
    let fastest = |seconds: Vec<(f64, &'static str)>| {
        seconds
            .into_iter()
            .fold((f64::INFINITY, ""), |m, x| if x.0 < m.0 { x } else { m })
    };
    let (fast_p, fast_p_name) = fastest(
        peers
            .iter()
            .map(|a| (best(&a.percentiles_seconds), a.system))
            .collect(),
    );
    let (fast_c, fast_c_name) = fastest(
        peers
            .iter()
            .map(|a| (best(&a.cost_seconds), a.system))
            .collect(),
    );

    let reference = answered
        .iter()
        .find(|a| a.system == "DuckDB")
        .expect("DuckDB answered");
    let mut agree_lines = Vec::new();
    let mut disagreements = Vec::new();
    for a in answered.iter().filter(|a| a.system != "DuckDB") {
        // Rollup percentiles are the end of a log bucket (the first is 10 m wide, each next
        // 5 % wider: one bucket is at most 10 m + 5 %); raw-row percentiles in Tally are
        // t-digest estimates; the peers interpolate exactly as DuckDB does.
        let tolerance = match a.system {
            "Tally (rollups)" => (0.05, 0.01),
            "Tally (raw rows)" => (0.05, 0.001),
            _ => (1e-9, 1e-12),
        };
        let tolerance_text = match tolerance {
            (r, a) if r >= 0.01 => format!("±({:.0} % + {:.0} m)", r * 100.0, a * 1000.0),
            (r, _) => format!("±{r:.0e} relative"),
        };
        let u = compare::usage(&reference.usage, &a.usage, tolerance, short);
        let (cost_worst, cost_missing) = compare::costs(&reference.costs, &a.costs);
        let worst = u
            .cpu_worst
            .as_ref()
            .map(|((ns, pod, c), got, want, times)| {
                format!("{ns}/{pod}/{c}: {got:.4} vs {want:.4} ({times:.1}× the tolerance)")
            })
            .unwrap_or_else(|| "–".into());
        agree_lines.push(format!(
            "| {} | {} | {} / {} | {tolerance_text} | {} ({} ran ≥ 1 h) | {:+.2} % … {:+.2} % | {worst} | {} (worst {:.1e}) | {:.1e} ({cost_missing} missing) |",
            a.system,
            u.compared,
            u.missing,
            u.extra,
            u.cpu_outside,
            u.cpu_outside_long,
            100.0 * u.cpu_low,
            100.0 * u.cpu_high,
            u.memory_outside,
            u.memory_worst,
            cost_worst,
        ));
        if u.missing + u.extra + u.cpu_outside + u.memory_outside + cost_missing > 0
            || cost_worst.is_nan()
            || cost_worst > 1e-6
        {
            disagreements.push(format!(
                "{}: {} containers missing, {} extra, {} p95 CPU outside {tolerance_text} ({} of \
                 them ran at least an hour), {} max memory differing, cost by namespace off by up to {:.1e} ({cost_missing} namespaces \
                 missing)",
                a.system,
                u.missing,
                u.extra,
                u.cpu_outside,
                u.cpu_outside_long,
                u.memory_outside,
                cost_worst
            ));
        }
    }
    let disagreements = if disagreements.is_empty() {
        "Every system agrees with DuckDB within its tolerance.".to_string()
    } else {
        format!("**Disagreements**: {}.", disagreements.join("; "))
    };

    let vm = &loads[1];
    format!(
        "One dataset, the same machine, one run. A simulated cluster (the storage benchmark's \
         generator, `SimConfig::benchmark`, HPAs and jobs included) of {} containers on {} nodes, \
         {} h at {} s steps from {}: **{} `container_usage` rows** (for the peers, each row is two \
         samples: `{CPU_METRIC}` and `{MEMORY_METRIC}` labelled namespace/pod/container; Tally \
         keeps the whole 18-column row; {} rows had a null CPU or memory value). Generating the \
         import files took {:.0} s and is not counted. The issue's 30,000 containers × 14 days \
         (1.2 billion rows, ~250 GB of import text for the peers) does not fit this shared \
         2-core machine; `--containers`/`--hours` scale it.\n\n\
         Versions: Tally at this commit (`tally serve`, {profile} build); {}; {}; {}.\n\n\
         ### Loading and storage\n\n\
         Rows/s is rows ÷ the load time; \"÷ Tally\" is the system's figure over Tally's (above 1: \
         Tally is faster, smaller or leaner).\n\n\
         | system | load time | rows/s | time ÷ Tally | on disk | bytes/row | disk ÷ Tally | peak RSS | RSS ÷ Tally |\n\
         |---|---|---|---|---|---|---|---|---|\n{load_lines}\n\n{notes}\n\n\
         ### Questions over the whole window\n\n\
         Wall time of each of {repeat} runs (client to answer over loopback HTTP; for the peers the \
         two PromQL queries `quantile_over_time(0.95, {CPU_METRIC}[{w}])` and \
         `max_over_time({MEMORY_METRIC}[{w}])` added up; Tally's query files compute p50/p95/p99 and \
         max CPU and p95/max memory in one pass). \"÷ Tally rollups\" compares best runs. Cost by \
         namespace: Σ CPU cores × ${:.6}/core-hour + Σ memory × ${:.6}/GiB-hour × the step, \
         per namespace (OpenCost's default rates; Tally's full allocation model needs specs and \
         node prices the peers do not hold).\n\n\
         | system | p95 CPU + max memory per container | ÷ Tally rollups | cost by namespace | ÷ Tally rollups |\n\
         |---|---|---|---|---|\n{}\n\n\
         Tally's rollup query answers the percentiles {:.2}× faster than the fastest peer \
         ({fast_p_name}; issue 9 aims at ≥ 3×), and the cost by namespace {:.2}× faster than the \
         fastest peer ({fast_c_name}). On disk, Tally's raw rows take \
         {:.2}× VictoriaMetrics' bytes (aim: ≤ 1).\n\n\
         ### Do the answers agree?\n\n\
         Against DuckDB's exact `quantile_cont` (linear interpolation, as PromQL's \
         `quantile_over_time`). Relative differences (system − DuckDB) ÷ DuckDB, CPU below one \
         millicore measured against 1 m. Rollup percentiles are the end of a log bucket (the \
         first 10 m wide, each next 5 % wider), so they sit up to one bucket above; raw-row \
         percentiles in Tally are t-digest estimates (`approx_percentile_cont`).\n\n\
         | system | containers | missing / extra | p95 CPU tolerance | outside ({short_count} of all ran < 1 h) | p95 CPU range | worst container | max memory differing | cost by namespace max diff |\n\
         |---|---|---|---|---|---|---|---|---|\n{}\n\n{disagreements}",
        ds.containers,
        ds.nodes,
        (ds.end_ms - ds.start_ms) / 3_600_000,
        ds.step_ms / 1000,
        rfc3339(ds.start_ms),
        ds.rows,
        ds.null_values,
        ds.generate_seconds,
        versions[0],
        versions[1],
        versions[2],
        tally_analysis::AnalysisConfig::default().default_cpu_core_hour_usd,
        tally_analysis::AnalysisConfig::default().default_memory_gib_hour_usd,
        query_lines.join("\n"),
        fast_p / best(&rollups.percentiles_seconds),
        fast_c / best(&rollups.cost_seconds),
        tally.disk_bytes as f64 / vm.disk_bytes as f64,
        agree_lines.join("\n"),
        short_count = short.len(),
        profile = if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        w = window_selector(window).trim_matches(['[', ']']),
    )
}
