//! `tally-bench`: Tally's benchmarks. Each subcommand measures one thing and writes its
//! section of `benchmarks/RESULTS.md` (between `<!-- bench:NAME -->` markers) with the
//! command, the machine and the numbers. Benchmarks measure; they never assert on time.
//!
//! ```sh
//! cargo build --release -p tally-appliance -p tally-benchmarks
//! target/release/tally-bench ingest --rows 20000000
//! target/release/tally-bench storage --containers 30000 --days 14 --data-dir /tmp/tally-bench
//! target/release/tally-bench query --data-dir /tmp/tally-bench
//! target/release/tally-bench analysis --containers 30000 --days 14
//! target/release/tally-bench ui --workloads 30000
//! target/release/tally-bench peers             # Tally vs VictoriaMetrics, Prometheus, DuckDB
//! target/release/tally-bench all --tiny        # what the test command runs, so nothing rots
//! ```

mod analysis;
mod collector;
mod machine;
mod netmon;
mod peers;
mod report;
mod ui;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use clap::{Parser, Subcommand};
use tally_queries::Param;
use tally_simulator::{Cluster, SimConfig};
use tally_store::{Store, StoreConfig};
use tally_wire::{IngestClient, Table};

#[derive(Parser)]
#[command(
    name = "tally-bench",
    about = "Tally's benchmarks; results go to benchmarks/RESULTS.md"
)]
struct Cli {
    /// Where to write results (sections are replaced, the rest of the file is kept).
    #[arg(long, global = true, default_value = "benchmarks/RESULTS.md")]
    results: PathBuf,
    #[command(subcommand)]
    command: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Rows/s per core into a `tally serve` process over loopback, WAL on.
    Ingest {
        /// Rows of each table to send.
        #[arg(long, default_value_t = 10_000_000)]
        rows: usize,
        /// Rows per Arrow batch.
        #[arg(long, default_value_t = 65_536)]
        batch_rows: usize,
        /// Concurrent client connections.
        #[arg(long, default_value_t = 2)]
        clients: usize,
    },
    /// Bytes per sample on disk after compaction for a simulated cluster at 30 s.
    Storage {
        #[arg(long, default_value_t = 30_000)]
        containers: usize,
        #[arg(long, default_value_t = 14)]
        days: u32,
        #[arg(long, default_value = "30")]
        step_seconds: i64,
        /// The store's data directory (kept for `query`).
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// p50/p95/p99 CPU and max memory per container over the stored window, from rollups and
    /// from raw rows: wall time and this process's peak memory.
    Query {
        #[arg(long)]
        data_dir: PathBuf,
        /// Skip the raw-row query (6 minutes and 4 GiB at 30,000 containers × 14 days).
        #[arg(long)]
        rollups_only: bool,
    },
    /// One analysis run (rightsizing, replicas, consolidation, instance types) over a
    /// simulated cluster's history: wall time and peak RSS of the run.
    Analysis {
        #[arg(long, default_value_t = 30_000)]
        containers: usize,
        #[arg(long, default_value_t = 14)]
        days: u32,
        /// Step of the generated history; rightsizing reads hourly rollups, so 1800 gives
        /// the same rollup rows as 30 s samples and loads 60 times faster.
        #[arg(long, default_value = "1800")]
        step_seconds: i64,
        /// The store's data directory (replaced).
        #[arg(long, default_value = "/tmp/tally-bench-analysis")]
        data_dir: PathBuf,
    },
    /// Server render time per web UI page (p50/p99) at a simulated cluster's size.
    Ui {
        /// Workloads in the simulated cluster.
        #[arg(long, default_value_t = 30_000)]
        workloads: usize,
        /// Hours of history (5-minute samples) loaded before rendering.
        #[arg(long, default_value_t = 3)]
        hours: i64,
        /// Requests per page.
        #[arg(long, default_value_t = 50)]
        repeat: usize,
    },
    /// The node network agent's peak RSS and CPU with a large conntrack table (needs root).
    Netmon {
        /// Conntrack entries created in the benchmark's network namespace.
        #[arg(long, default_value_t = 100_000)]
        entries: usize,
        /// How long the agent runs while measured, in seconds.
        #[arg(long, default_value_t = 120)]
        seconds: u64,
        /// The agent's --poll-interval.
        #[arg(long, default_value = "5s")]
        poll: String,
        /// The agent's --flush-interval.
        #[arg(long, default_value = "60s")]
        flush: String,
    },
    /// The collector's peak RSS with many pods in the test cluster's API server (needs
    /// `bash tests/cluster/up.sh`).
    CollectorMemory {
        /// Pods to create (bound to the kubelet-less fake nodes).
        #[arg(long, default_value_t = 10_000)]
        pods: usize,
        /// kubectl processes creating pods at the same time.
        #[arg(long, default_value_t = 4)]
        parallel: usize,
    },
    /// Tally side by side with VictoriaMetrics, Prometheus and DuckDB on one dataset: load
    /// rate, bytes per row, p95 CPU / max memory per container and cost by namespace, peak
    /// RSS, and whether the answers agree (needs the Debian victoria-metrics and prometheus
    /// packages and duckdb in the tests' venv).
    Peers {
        #[arg(long, default_value_t = 3_000)]
        containers: usize,
        #[arg(long, default_value_t = 24)]
        hours: u32,
        #[arg(long, default_value = "30")]
        step_seconds: i64,
        /// Scratch directory for import files and every system's data (replaced).
        #[arg(long, default_value = "/tmp/tally-bench-peers")]
        work_dir: PathBuf,
        /// Keep the scratch directory afterwards.
        #[arg(long)]
        keep: bool,
        /// Runs of each query.
        #[arg(long, default_value_t = 2)]
        repeat: usize,
        /// Seconds the stores' files must stay unchanged before their size is measured.
        #[arg(long, default_value_t = 12)]
        settle_seconds: u64,
    },
    /// All of the above at a small size (`--tiny`: a few seconds, for the test suite).
    All {
        #[arg(long)]
        tiny: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let command = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    let sections = runtime.block_on(async {
        match cli.command {
            Bench::Ingest {
                rows,
                batch_rows,
                clients,
            } => vec![ingest(rows, batch_rows, clients).await],
            Bench::Storage {
                containers,
                days,
                step_seconds,
                data_dir,
            } => {
                vec![storage(containers, days, step_seconds * 1000, &data_dir).await]
            }
            Bench::Query {
                data_dir,
                rollups_only,
            } => vec![query(&data_dir, !rollups_only).await],
            Bench::Netmon {
                entries,
                seconds,
                poll,
                flush,
            } => vec![netmon::netmon(entries, seconds, &poll, &flush)],
            Bench::Ui {
                workloads,
                hours,
                repeat,
            } => vec![ui::ui(workloads, hours, repeat).await],
            Bench::Analysis {
                containers,
                days,
                step_seconds,
                data_dir,
            } => vec![analysis::analysis(containers, days, step_seconds * 1000, &data_dir).await],
            Bench::CollectorMemory { pods, parallel } => {
                vec![collector::collector_memory(pods, parallel).await]
            }
            Bench::Peers {
                containers,
                hours,
                step_seconds,
                work_dir,
                keep,
                repeat,
                settle_seconds,
            } => vec![
                peers::peers(peers::Options {
                    containers,
                    hours,
                    step_seconds,
                    work_dir,
                    keep,
                    repeat,
                    settle: Duration::from_secs(settle_seconds),
                })
                .await,
            ],
            Bench::All { tiny } => {
                let dir = std::env::temp_dir().join(format!("tally-bench-{}", std::process::id()));
                let (rows, containers, days) = if tiny {
                    (20_000, 50, 1)
                } else {
                    (2_000_000, 3_000, 2)
                };
                let out = vec![
                    ingest(rows, 4_096, 2).await,
                    storage(containers, days, 30_000, &dir).await,
                    query(&dir, true).await,
                    netmon::netmon(
                        if tiny { 2_000 } else { 20_000 },
                        if tiny { 4 } else { 30 },
                        "1s",
                        "2s",
                    ),
                    analysis::analysis(containers.min(300), days, 1_800_000, &dir).await,
                    ui::ui(if tiny { 60 } else { 3_000 }, 1, if tiny { 2 } else { 20 }).await,
                    peers::peers(peers::Options {
                        containers: if tiny { 60 } else { 3_000 },
                        hours: if tiny { 2 } else { 6 },
                        step_seconds: 30,
                        work_dir: dir.join("peers"),
                        keep: false,
                        repeat: if tiny { 1 } else { 2 },
                        settle: Duration::from_secs(if tiny { 2 } else { 12 }),
                    })
                    .await,
                ];
                let _ = std::fs::remove_dir_all(&dir);
                out
            }
        }
    });
    for (name, body) in sections {
        println!("{body}");
        report::write_section(&cli.results, &name, &command, &body).expect("write results");
    }
}

/// The `tally` binary next to this one (same profile).
fn tally_bin() -> PathBuf {
    let here = std::env::current_exe().expect("current exe");
    let bin = here.with_file_name("tally");
    assert!(
        bin.exists(),
        "{} not found: build it with cargo build -p tally-appliance (same profile)",
        bin.display()
    );
    bin
}

/// Starts `tally serve --insecure` on loopback ports of its choosing with `data_dir`, and
/// answers the process and its Flight URL (read from the line it prints). Its further output
/// is drained in the background so it never blocks on a full pipe.
fn spawn_tally_serve(data_dir: &Path) -> (std::process::Child, String) {
    let mut server = Command::new(tally_bin())
        .args([
            "serve",
            "--insecure",
            "--flight-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tally serve");
    let mut out = BufReader::new(server.stdout.take().expect("piped")).lines();
    let url = loop {
        let line = out
            .next()
            .expect("tally serve printed its address")
            .expect("tally serve output");
        if let Some(url) = line.strip_prefix("flight ") {
            break url.to_string();
        }
    };
    std::thread::spawn(move || for _ in out {});
    (server, url)
}

fn batches_of(cluster: &Cluster, table: Table, rows: usize, batch_rows: usize) -> Vec<RecordBatch> {
    let mut out = Vec::new();
    let mut have = 0;
    let mut from = 1_767_571_200_000i64; // 2026-01-05
    while have < rows {
        let to = from + 3_600_000;
        for (t, batch) in cluster.samples(from, to, 30_000, batch_rows) {
            if t == table && have < rows {
                have += batch.num_rows();
                out.push(batch);
            }
        }
        from = to;
    }
    out
}

async fn ingest(rows: usize, batch_rows: usize, clients: usize) -> (String, String) {
    let cluster = Cluster::new(SimConfig::benchmark(3_000));
    let dir = std::env::temp_dir().join(format!("tally-bench-ingest-{}", std::process::id()));
    let mut lines = Vec::new();
    for table in [Table::ContainerUsage, Table::NetworkFlows] {
        let _ = std::fs::remove_dir_all(&dir);
        let batches = batches_of(&cluster, table, rows, batch_rows);
        let sent: usize = batches.iter().map(|b| b.num_rows()).sum();
        let (mut server, url) = spawn_tally_serve(&dir);
        let pid = server.id();
        let cpu_before = machine::process_cpu_seconds(pid);
        let started = Instant::now();
        let per_client = batches.len().div_ceil(clients);
        let mut tasks = Vec::new();
        for chunk in batches.chunks(per_client).map(|c| c.to_vec()) {
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let mut client = IngestClient::connect(&url, None).await.expect("connect");
                for group in chunk.chunks(8) {
                    client.write(table, group.to_vec()).await.expect("write");
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let wall = started.elapsed().as_secs_f64();
        let cpu = machine::process_cpu_seconds(pid) - cpu_before;
        let rss = machine::process_peak_rss(pid);
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let _ = server.wait();
        lines.push(format!(
            "| `{table}` | {sent} | {batch_rows} | {clients} | {:.0} | {:.0} | {:.2} | {} |",
            sent as f64 / wall,
            sent as f64 / cpu.max(1e-9),
            cpu,
            machine::mib(rss)
        ));
    }
    let _ = std::fs::remove_dir_all(&dir);
    let body = format!(
        "Rows acknowledged by a `tally serve` process (WAL fsync with group commit on every batch) from clients \
         on loopback in another process. rows/s per core = rows ÷ the server's CPU seconds (user + system).\n\n\
         | table | rows | rows/batch | clients | rows/s (wall) | rows/s per core | server CPU s | server peak RSS |\n\
         |---|---|---|---|---|---|---|---|\n{}",
        lines.join("\n")
    );
    ("ingest".into(), body)
}

async fn storage(containers: usize, days: u32, step_ms: i64, data_dir: &Path) -> (String, String) {
    let _ = std::fs::remove_dir_all(data_dir);
    let cluster = Cluster::new(SimConfig::benchmark(containers));
    let mut config = StoreConfig::new(data_dir);
    config.background = false;
    config.max_batch_rows = 1 << 20;
    config.retention.clear();
    let store = Store::open(config).await.expect("open store");
    let start_ms = 1_767_571_200_000i64;
    let end_ms = start_ms + i64::from(days) * 86_400_000;
    let started = Instant::now();
    let mut samples = 0u64;
    let mut from = start_ms;
    while from < end_ms {
        let to = (from + 3_600_000).min(end_ms);
        let mut pending = Vec::new();
        for (table, batch) in cluster.samples(from, to, step_ms, 65_536) {
            if table == Table::ContainerUsage {
                samples += batch.num_rows() as u64;
                pending.push(store.write(table, batch));
            }
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
            "\r  storage: {:.0} % ({samples} samples)",
            100.0 * (to - start_ms) as f64 / (end_ms - start_ms) as f64
        );
    }
    eprintln!();
    let load = started.elapsed().as_secs_f64();
    let compact_started = Instant::now();
    while store.compact().await.expect("compact") > 0 {}
    let compact = compact_started.elapsed().as_secs_f64();
    let published = store.published();
    let (raw_files, raw_rows, raw_bytes) = published[&Table::ContainerUsage];
    let (hourly_files, hourly_rows, hourly_bytes) = published[&Table::ContainerUsageHourly];
    store.close().await.expect("close");
    let body = format!(
        "A simulated cluster of {} containers ({containers} asked), {days} day(s) at {} s, written through the \
         store's full write path (WAL, hot buffer, flush each hour of data), then compacted.\n\n\
         | what | value |\n|---|---|\n\
         | samples (container_usage rows) | {samples} |\n\
         | load time | {load:.1} s ({:.0} samples/s) |\n\
         | compaction time | {compact:.1} s |\n\
         | container_usage on disk | {raw_files} files, {raw_rows} rows, {} |\n\
         | **bytes per sample (raw)** | **{:.2}** |\n\
         | container_usage_hourly on disk | {hourly_files} files, {hourly_rows} rows, {} |\n\
         | bytes per sample incl. rollups | {:.2} |\n\
         | peak RSS of the benchmark process | {} |",
        cluster.container_count(),
        step_ms / 1000,
        samples as f64 / load,
        machine::mib(raw_bytes),
        raw_bytes as f64 / samples as f64,
        machine::mib(hourly_bytes),
        (raw_bytes + hourly_bytes) as f64 / samples as f64,
        machine::mib(machine::self_peak_rss()),
    );
    ("storage".into(), body)
}

async fn query(data_dir: &Path, raw: bool) -> (String, String) {
    let mut config = StoreConfig::new(data_dir);
    config.background = false;
    let store = Store::open(config).await.expect("open store");
    let engine = tally_query::QueryEngine::new(
        store.clone(),
        tally_query::QueryLimits {
            memory_bytes: 8 << 30,
            timeout: Duration::from_secs(3600),
            ..Default::default()
        },
    );
    let (_, batches) = engine
        .collect("SELECT min(time), max(time) + INTERVAL '1 hour' FROM container_usage_hourly")
        .await
        .expect("window");
    let text =
        |c: usize| arrow::util::display::array_value_to_string(batches[0].column(c), 0).unwrap();
    let window = [
        (
            "window_start",
            Param::Timestamp(text(0).parse().expect("start")),
        ),
        (
            "window_end",
            Param::Timestamp(text(1).parse().expect("end")),
        ),
    ];
    let mut lines = Vec::new();
    let mut queries = vec![tally_queries::CONTAINER_PERCENTILES_HOURLY];
    if raw {
        queries.push(tally_queries::CONTAINER_PERCENTILES_RAW);
    }
    for q in queries {
        let sql = q.render(&window).expect("render");
        let rss_before = machine::self_rss();
        let started = Instant::now();
        let (_, result) = engine.collect(&sql).await.expect("query");
        let wall = started.elapsed().as_secs_f64();
        let rows: usize = result.iter().map(|b| b.num_rows()).sum();
        lines.push(format!(
            "| [`{}.sql`](../queries/{}.sql) | {rows} | {wall:.3} s | {} | {} |",
            q.name,
            q.name,
            machine::mib(rss_before),
            machine::mib(machine::self_peak_rss())
        ));
    }
    store.close().await.expect("close");
    let body = format!(
        "p50/p95/p99 CPU and max memory for every container over the whole stored window ({} to {}), \
         through the read-only SQL engine. Peak RSS is this process's high-water mark after the query.\n\n\
         | query | containers | wall time | RSS before | peak RSS after |\n|---|---|---|---|---|\n{}",
        text(0),
        text(1),
        lines.join("\n")
    );
    ("query".into(), body)
}
