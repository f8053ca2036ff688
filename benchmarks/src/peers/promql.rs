//! The peers' side: starting VictoriaMetrics and Prometheus on loopback, and asking their
//! Prometheus-compatible HTTP API (`/api/v1/query`) the benchmark's questions.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::machine;

/// A server process the benchmark started; killed when dropped.
pub struct Server {
    pub child: Child,
    pub base: String,
}

impl Server {
    /// Starts `command` with its output in `log`, and waits until `ready_path` answers 200.
    pub async fn start(
        name: &'static str,
        mut command: Command,
        port: u16,
        ready_path: &str,
        log: &Path,
    ) -> Server {
        let out = std::fs::File::create(log).expect("create log");
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name} ({command:?}): {e}"));
        let mut server = Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "{name} exited ({status}) before it was ready:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            let ready = client
                .get(format!("{}{ready_path}", server.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return server;
            }
            assert!(Instant::now() < deadline, "{name} not ready after 300 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// VmHWM of the process so far.
    pub fn peak_rss(&self) -> u64 {
        machine::process_peak_rss(self.pid())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free on loopback now (the server binds it right after; a race is unlikely on a
/// benchmark machine and would show as a failed start).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Runs a command to completion; its wall time and peak RSS: the largest VmHWM read from
/// `/proc/<pid>/status` every 20 ms while it runs (growth in its last 20 ms can be missed).
/// Not `wait4`'s `ru_maxrss`: Linux carries the spawning process's high-water mark over
/// `execve` into the child's, so a small child showed this benchmark's own peak.
pub fn run_measured(mut command: Command, log: &Path) -> (f64, u64) {
    let out = std::fs::File::create(log).expect("create log");
    let started = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("run {command:?}: {e}"));
    let mut peak = 0;
    let status = loop {
        peak = peak.max(machine::process_peak_rss(child.id()));
        if let Some(status) = child.try_wait().expect("wait for child") {
            break status;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let wall = started.elapsed().as_secs_f64();
    assert!(
        status.success(),
        "{command:?} failed:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    (wall, peak)
}

/// One series of an instant vector: its labels and value.
pub type Sample = (BTreeMap<String, String>, f64);

/// `GET /api/v1/query` at `time_ms`: the instant vector and the wall time of the request.
pub async fn instant(
    base: &str,
    query: &str,
    time_ms: i64,
    extra: &[(&str, &str)],
) -> (Vec<Sample>, f64) {
    let time = format!(
        "{}.{:03}",
        time_ms.div_euclid(1000),
        time_ms.rem_euclid(1000)
    );
    let mut params = vec![("query", query), ("time", time.as_str())];
    params.extend_from_slice(extra);
    let started = Instant::now();
    let response = reqwest::Client::new()
        .get(format!("{base}/api/v1/query"))
        .query(&params)
        .timeout(Duration::from_secs(3600))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{base}: {query}: {e}"));
    let status = response.status();
    let body = response.bytes().await.expect("query body");
    let wall = started.elapsed().as_secs_f64();
    assert!(
        status.is_success(),
        "{base}: {query}: {status}: {}",
        String::from_utf8_lossy(&body)
    );
    let json: serde_json::Value = serde_json::from_slice(&body).expect("query JSON");
    let result = json["data"]["result"]
        .as_array()
        .unwrap_or_else(|| panic!("{base}: {query}: no result in {json}"));
    let samples = result
        .iter()
        .map(|series| {
            let labels = series["metric"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default();
            let value = series["value"][1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN);
            (labels, value)
        })
        .collect();
    (samples, wall)
}

/// Apparent size of every file under `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}
