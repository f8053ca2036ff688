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
//!
//! The same pass writes the cluster's `network_flows` (one row per flow and window, the window
//! ending at each sample time) in the same three formats, to separate files. The peers get two
//! series per flow, `flow_tx_bytes` and `flow_rx_bytes`: the bytes of the window ending at the
//! sample's time (a per-window gauge, so `sum_over_time` is the traffic over a range), labelled
//! with the flow's key (`src_ip`, `dst_ip`, `dst_port`, `protocol`) and what the node agent
//! adds (`src_namespace`, `src_pod`, `dst_domain`; a null is no label). Tally keeps the whole
//! 14-column row.

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
pub const FLOW_TX_METRIC: &str = "flow_tx_bytes";
pub const FLOW_RX_METRIC: &str = "flow_rx_bytes";

/// One table's rows in each system's import format.
pub struct Files {
    /// Rows (each is two samples for the peers).
    pub rows: u64,
    /// Tally: an Arrow IPC stream of the table's record batches.
    pub arrow_file: PathBuf,
    /// VictoriaMetrics: Prometheus text, one file per hour of data.
    pub vm_files: Vec<PathBuf>,
    /// Prometheus: one OpenMetrics file.
    pub openmetrics_file: PathBuf,
}

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
    /// `network_flows` of the same cluster and window.
    pub flows: Files,
    /// Flow series (rows per sample time when every flow is active).
    pub flow_series: usize,
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
        let stamp = stamp(t, seconds);
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

fn stamp(t: i64, seconds: bool) -> String {
    if !seconds {
        t.to_string()
    } else if t % 1000 == 0 {
        (t / 1000).to_string()
    } else {
        format!("{}.{:03}", t.div_euclid(1000), t.rem_euclid(1000))
    }
}

/// Appends one `network_flows` batch as text lines: `flow_tx_bytes{labels} bytes timestamp`
/// and the same for `flow_rx_bytes`.
fn append_flow_lines(batch: &RecordBatch, seconds: bool, out: &mut String) {
    let column = |name: &str| {
        batch
            .column_by_name(name)
            .unwrap_or_else(|| panic!("network_flows has {name}"))
    };
    let time = column("time").as_primitive::<arrow::datatypes::TimestampMillisecondType>();
    let texts = [
        ("src_namespace", column("src_namespace").as_string::<i32>()),
        ("src_pod", column("src_pod").as_string::<i32>()),
        ("src_ip", column("src_ip").as_string::<i32>()),
        ("dst_ip", column("dst_ip").as_string::<i32>()),
        ("protocol", column("protocol").as_string::<i32>()),
        ("dst_domain", column("dst_domain").as_string::<i32>()),
    ];
    let port = column("dst_port").as_primitive::<Int64Type>();
    let tx = column("tx_bytes").as_primitive::<Int64Type>();
    let rx = column("rx_bytes").as_primitive::<Int64Type>();
    let mut labels = String::new();
    for row in 0..batch.num_rows() {
        labels.clear();
        labels.push('{');
        for (name, values) in &texts {
            if values.is_valid(row) {
                labels.push_str(name);
                labels.push_str("=\"");
                escape(values.value(row), &mut labels);
                labels.push_str("\",");
            }
        }
        let _ = write!(labels, "dst_port=\"{}\"}}", port.value(row));
        let stamp = stamp(time.value(row), seconds);
        let _ = writeln!(out, "{FLOW_TX_METRIC}{labels} {} {stamp}", tx.value(row));
        let _ = writeln!(out, "{FLOW_RX_METRIC}{labels} {} {stamp}", rx.value(row));
    }
}

/// Writers of one table's import files.
struct Writers {
    files: Files,
    ipc: arrow::ipc::writer::StreamWriter<BufWriter<std::fs::File>>,
    openmetrics: BufWriter<std::fs::File>,
    vm_text: String,
    om_text: String,
}

impl Writers {
    fn new(dir: &Path, name: &str, table: Table) -> Writers {
        std::fs::create_dir_all(dir.join(format!("vm-{name}"))).expect("create dataset directory");
        let arrow_file = dir.join(format!("{name}.arrows"));
        let openmetrics_file = dir.join(format!("{name}.om.txt"));
        let ipc = arrow::ipc::writer::StreamWriter::try_new(
            BufWriter::new(std::fs::File::create(&arrow_file).expect("create arrow file")),
            &table.schema(),
        )
        .expect("arrow writer");
        let openmetrics =
            BufWriter::new(std::fs::File::create(&openmetrics_file).expect("create openmetrics"));
        Writers {
            files: Files {
                rows: 0,
                arrow_file,
                vm_files: Vec::new(),
                openmetrics_file,
            },
            ipc,
            openmetrics,
            vm_text: String::new(),
            om_text: String::new(),
        }
    }

    /// Writes the hour's VictoriaMetrics file (one per hour even when empty).
    fn end_hour(&mut self, dir: &Path, name: &str) {
        let file = dir
            .join(format!("vm-{name}"))
            .join(format!("{:04}.prom", self.files.vm_files.len()));
        std::fs::write(&file, self.vm_text.as_bytes()).expect("write VictoriaMetrics import file");
        self.files.vm_files.push(file);
        self.vm_text.clear();
    }

    fn finish(mut self) -> Files {
        self.ipc.finish().expect("finish arrow file");
        self.openmetrics
            .write_all(b"# EOF\n")
            .expect("write openmetrics");
        self.openmetrics.flush().expect("flush openmetrics");
        self.files
    }
}

/// A simulated cluster of about `containers` containers with its network flows, sampled
/// every `step_ms` for `hours` hours from 2026-01-05.
pub fn generate(containers: usize, hours: u32, step_ms: i64, dir: &Path) -> Dataset {
    let started = Instant::now();
    std::fs::create_dir_all(dir).expect("create dataset directory");
    let cluster = Cluster::new(SimConfig::benchmark(containers));
    let start_ms = 1_767_571_200_000i64; // 2026-01-05T00:00:00Z
    let end_ms = start_ms + i64::from(hours) * 3_600_000;
    let mut usage = Writers::new(dir, "container_usage", Table::ContainerUsage);
    let mut flows = Writers::new(dir, "network_flows", Table::NetworkFlows);
    let mut null_values = 0u64;
    let mut from = start_ms;
    while from < end_ms {
        let to = (from + 3_600_000).min(end_ms);
        for (table, batch) in cluster.samples(from, to, step_ms, 65_536) {
            let w = match table {
                Table::ContainerUsage => &mut usage,
                Table::NetworkFlows => &mut flows,
                _ => continue,
            };
            w.files.rows += batch.num_rows() as u64;
            w.ipc.write(&batch).expect("write arrow");
            w.om_text.clear();
            if table == Table::ContainerUsage {
                null_values += append_lines(&batch, false, &mut w.vm_text);
                append_lines(&batch, true, &mut w.om_text);
            } else {
                append_flow_lines(&batch, false, &mut w.vm_text);
                append_flow_lines(&batch, true, &mut w.om_text);
            }
            w.openmetrics
                .write_all(w.om_text.as_bytes())
                .expect("write openmetrics");
        }
        usage.end_hour(dir, "container_usage");
        flows.end_hour(dir, "network_flows");
        eprint!(
            "\r  peers: generating {:.0} % ({} usage rows, {} flow rows)",
            100.0 * (to - start_ms) as f64 / (end_ms - start_ms) as f64,
            usage.files.rows,
            flows.files.rows
        );
        from = to;
    }
    eprintln!();
    let usage = usage.finish();
    Dataset {
        containers: cluster.container_count(),
        nodes: cluster.nodes().len(),
        start_ms,
        end_ms,
        step_ms,
        rows: usage.rows,
        null_values,
        arrow_file: usage.arrow_file,
        vm_files: usage.vm_files,
        openmetrics_file: usage.openmetrics_file,
        flows: flows.finish(),
        flow_series: cluster.flow_count(),
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
