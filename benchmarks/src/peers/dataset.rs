//! The one dataset every system loads: `container_usage` rows from the simulator, written
//! once to disk in each system's import format before anything is timed, so generating and
//! formatting never count as anyone's ingest.
//!
//! - Tally: the Arrow record batches themselves (an Arrow IPC stream file), sent over Flight.
//! - VictoriaMetrics: Prometheus text exposition with millisecond timestamps, one file per
//!   hour of data (one `POST /api/v1/import/prometheus` each).
//! - Prometheus: one OpenMetrics file (timestamps in seconds, `# EOF`) for
//!   `promtool tsdb create-blocks-from openmetrics`.
//!
//! The peers get two series per container, CPU cores and memory working set bytes, labelled
//! with `namespace`, `pod` and `container` (the series key of `container_usage`); Tally keeps
//! the whole 18-column row. A "row" below is one container at one time in every system.

use std::fmt::Write as _;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int64Type};
use tally_simulator::{Cluster, SimConfig};
use tally_wire::Table;

pub const CPU_METRIC: &str = "container_cpu_cores";
pub const MEMORY_METRIC: &str = "container_memory_working_set_bytes";

pub struct Dataset {
    pub containers: usize,
    pub nodes: usize,
    pub start_ms: i64,
    pub end_ms: i64,
    pub step_ms: i64,
    /// `container_usage` rows (each is one CPU and one memory sample for the peers).
    pub rows: u64,
    /// Rows whose CPU or memory was null: Tally keeps them, the peers get no sample.
    pub null_values: u64,
    pub arrow_file: PathBuf,
    pub vm_files: Vec<PathBuf>,
    pub openmetrics_file: PathBuf,
    pub generate_seconds: f64,
}

/// Label values escaped as the Prometheus text formats want them.
fn escape(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Appends one batch's samples as text lines: `name{labels} value timestamp`. `seconds`
/// picks OpenMetrics timestamps (seconds) over Prometheus text ones (milliseconds).
fn append_lines(batch: &RecordBatch, seconds: bool, out: &mut String) -> u64 {
    let column = |name: &str| {
        batch
            .column_by_name(name)
            .unwrap_or_else(|| panic!("container_usage has {name}"))
    };
    let time = column("time").as_primitive::<arrow::datatypes::TimestampMillisecondType>();
    let namespace = column("namespace").as_string::<i32>();
    let pod = column("pod").as_string::<i32>();
    let container = column("container").as_string::<i32>();
    let cpu = column("cpu_cores").as_primitive::<Float64Type>();
    let memory = column("memory_working_set_bytes").as_primitive::<Int64Type>();
    let mut nulls = 0;
    let mut labels = String::new();
    for row in 0..batch.num_rows() {
        labels.clear();
        labels.push_str("{namespace=\"");
        escape(namespace.value(row), &mut labels);
        labels.push_str("\",pod=\"");
        escape(pod.value(row), &mut labels);
        labels.push_str("\",container=\"");
        escape(container.value(row), &mut labels);
        labels.push_str("\"}");
        let t = time.value(row);
        let stamp = if !seconds {
            t.to_string()
        } else if t % 1000 == 0 {
            (t / 1000).to_string()
        } else {
            format!("{}.{:03}", t.div_euclid(1000), t.rem_euclid(1000))
        };
        if cpu.is_null(row) || memory.is_null(row) {
            nulls += 1;
        }
        if cpu.is_valid(row) {
            // `{}` prints the shortest text that parses back to the same f64.
            let _ = writeln!(out, "{CPU_METRIC}{labels} {} {stamp}", cpu.value(row));
        }
        if memory.is_valid(row) {
            let _ = writeln!(out, "{MEMORY_METRIC}{labels} {} {stamp}", memory.value(row));
        }
    }
    nulls
}

/// A simulated cluster of about `containers` containers (no network flows: only usage is
/// compared), sampled every `step_ms` for `hours` hours from 2026-01-05.
pub fn generate(containers: usize, hours: u32, step_ms: i64, dir: &Path) -> Dataset {
    let started = Instant::now();
    std::fs::create_dir_all(dir.join("vm")).expect("create dataset directory");
    let cluster = Cluster::new(SimConfig {
        flows_per_pod: 0.0,
        ..SimConfig::benchmark(containers)
    });
    let start_ms = 1_767_571_200_000i64; // 2026-01-05T00:00:00Z
    let end_ms = start_ms + i64::from(hours) * 3_600_000;
    let arrow_file = dir.join("container_usage.arrows");
    let openmetrics_file = dir.join("container_usage.om.txt");
    let schema = Table::ContainerUsage.schema();
    let mut ipc = arrow::ipc::writer::StreamWriter::try_new(
        BufWriter::new(std::fs::File::create(&arrow_file).expect("create arrow file")),
        &schema,
    )
    .expect("arrow writer");
    let mut openmetrics =
        BufWriter::new(std::fs::File::create(&openmetrics_file).expect("create openmetrics"));
    let mut vm_files = Vec::new();
    let (mut rows, mut null_values) = (0u64, 0u64);
    let mut from = start_ms;
    let mut vm_text = String::new();
    let mut om_text = String::new();
    while from < end_ms {
        let to = (from + 3_600_000).min(end_ms);
        vm_text.clear();
        for (table, batch) in cluster.samples(from, to, step_ms, 65_536) {
            if table != Table::ContainerUsage {
                continue;
            }
            rows += batch.num_rows() as u64;
            ipc.write(&batch).expect("write arrow");
            null_values += append_lines(&batch, false, &mut vm_text);
            om_text.clear();
            append_lines(&batch, true, &mut om_text);
            openmetrics
                .write_all(om_text.as_bytes())
                .expect("write openmetrics");
        }
        let file = dir.join("vm").join(format!("{:04}.prom", vm_files.len()));
        std::fs::write(&file, vm_text.as_bytes()).expect("write VictoriaMetrics import file");
        vm_files.push(file);
        eprint!(
            "\r  peers: generating {:.0} % ({rows} rows)",
            100.0 * (to - start_ms) as f64 / (end_ms - start_ms) as f64
        );
        from = to;
    }
    eprintln!();
    ipc.finish().expect("finish arrow file");
    openmetrics
        .write_all(b"# EOF\n")
        .expect("write openmetrics");
    openmetrics.flush().expect("flush openmetrics");
    Dataset {
        containers: cluster.container_count(),
        nodes: cluster.nodes().len(),
        start_ms,
        end_ms,
        step_ms,
        rows,
        null_values,
        arrow_file,
        vm_files,
        openmetrics_file,
        generate_seconds: started.elapsed().as_secs_f64(),
    }
}

/// Reads the Arrow file back in groups of `group` batches, for the Flight clients.
pub fn read_batches(file: &Path, group: usize, send: tokio::sync::mpsc::Sender<Vec<RecordBatch>>) {
    let reader = arrow::ipc::reader::StreamReader::try_new(
        std::io::BufReader::new(std::fs::File::open(file).expect("open arrow file")),
        None,
    )
    .expect("arrow reader");
    let mut pending = Vec::with_capacity(group);
    for batch in reader {
        pending.push(batch.expect("read arrow batch"));
        if pending.len() == group && send.blocking_send(std::mem::take(&mut pending)).is_err() {
            return;
        }
    }
    if !pending.is_empty() {
        let _ = send.blocking_send(pending);
    }
}
