//! Helpers for Tally's end-to-end tests: run the real `tally` binary, talk to it over real
//! sockets, and build batches.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use tally_wire::Table;

/// The real Kubernetes test cluster, and the collector agent run against it.
pub mod cluster;
/// Drives headless Chromium through chromedriver (the UI's end-to-end tests).
pub mod webdriver;

/// The `tally` binary under test: `$TALLY_BIN`, or the debug build in the cargo target
/// directory (the test command builds it first).
pub fn tally_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("TALLY_BIN") {
        return PathBuf::from(bin);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = target.join("debug/tally");
    assert!(
        bin.exists(),
        "{} does not exist: build it with `cargo build --bin tally` (the test command does) or set TALLY_BIN",
        bin.display()
    );
    bin
}

/// A `tally serve` process, killed when dropped.
pub struct Server {
    pub child: Child,
    pub flight_url: String,
    pub http_url: String,
    pub stderr_log: PathBuf,
}

impl Server {
    /// Starts `tally serve` with `args` (listening on free loopback ports) and waits until it
    /// prints its addresses.
    pub fn start(data_dir: &Path, args: &[&str]) -> Result<Server, String> {
        let stderr_log = data_dir.with_extension("stderr.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_log)
            .map_err(|e| e.to_string())?;
        let mut child = Command::new(tally_bin())
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args([
                "--flight-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", tally_bin().display()))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let (mut flight_url, mut http_url) = (None, None);
        while flight_url.is_none() || http_url.is_none() {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(url) = line.strip_prefix("flight ") {
                        flight_url = Some(url.to_string());
                    } else if let Some(url) = line.strip_prefix("http ") {
                        http_url = Some(url.to_string());
                    }
                }
                _ => {
                    let status = child.wait().map_err(|e| e.to_string())?;
                    let log = std::fs::read_to_string(&stderr_log).unwrap_or_default();
                    return Err(format!(
                        "tally serve exited ({status}) before it was ready:\n{log}"
                    ));
                }
            }
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(Server {
            child,
            flight_url: flight_url.unwrap(),
            http_url: http_url.unwrap(),
            stderr_log,
        })
    }

    /// SIGKILL: no flush, no cleanup.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "tally did not exit within 30 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a query through the HTTP SQL API and returns the JSON answer.
pub async fn sql(http_url: &str, query: &str) -> Result<serde_json::Value, String> {
    let response = reqwest::Client::new()
        .post(format!("{http_url}/api/v1/sql"))
        .json(&serde_json::json!({ "sql": query }))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!("{status}: {body}"))
    }
}

/// An agent's Prometheus metrics at `<health_url>/metrics` as `name{labels}` → value.
pub async fn prometheus_metrics(health_url: &str) -> std::collections::HashMap<String, f64> {
    let text = reqwest::get(format!("{health_url}/metrics"))
        .await
        .unwrap_or_else(|e| panic!("{health_url}/metrics: {e}"))
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect()
}

/// The rows of a query's JSON answer; panics naming the query when it fails.
pub async fn sql_rows(http_url: &str, query: &str) -> Vec<Vec<serde_json::Value>> {
    let answer = sql(http_url, query)
        .await
        .unwrap_or_else(|e| panic!("{query}: {e}"));
    answer["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r.as_array().expect("row").clone())
        .collect()
}

/// `n` rows of `events` whose `pod` is `id` and whose times are `start_ms..start_ms+n`.
pub fn events(id: &str, start_ms: i64, n: usize) -> RecordBatch {
    let text = |s: &str| Arc::new(StringArray::from(vec![s; n])) as _;
    let none = || Arc::new(StringArray::from(vec![None::<&str>; n])) as _;
    RecordBatch::try_new(
        Table::Events.schema(),
        vec![
            Arc::new(
                TimestampMillisecondArray::from_iter_values((0..n as i64).map(|i| start_ms + i))
                    .with_timezone("UTC"),
            ),
            text("e2e"),
            text(id),
            none(),
            none(),
            text("Deployment"),
            text("writer"),
            text("OOMKilled"),
            none(),
            Arc::new(Int64Array::from(vec![Some(1 << 20); n])),
            Arc::new(Int64Array::from_iter_values(0..n as i64)),
        ],
    )
    .expect("events batch")
}
