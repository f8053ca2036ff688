//! The collector's own health: `/healthz`, `/readyz` (every informer has listed once) and
//! Prometheus `/metrics` (rows sent and dropped, buffer size, watch errors, scrape errors per
//! node, objects held, certificate expiry).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

/// Counters and gauges, shared by every part of the collector.
#[derive(Debug, Default)]
pub struct Metrics {
    rows_sent: Mutex<BTreeMap<&'static str, u64>>,
    pub rows_dropped: AtomicU64,
    pub batches_dropped: AtomicU64,
    pub buffer_bytes: AtomicU64,
    pub buffer_batches: AtomicU64,
    pub send_errors: AtomicU64,
    pub bootstrap_errors: AtomicU64,
    pub certificate_expiry_ms: AtomicI64,
    pub scrapes: AtomicU64,
    watch_errors: Mutex<BTreeMap<&'static str, u64>>,
    scrape_errors: Mutex<BTreeMap<(String, &'static str), u64>>,
    synced: Mutex<BTreeMap<&'static str, bool>>,
    objects: Mutex<BTreeMap<&'static str, usize>>,
}

impl Metrics {
    /// Rows the appliance acknowledged.
    pub fn sent(&self, table: &'static str, rows: usize) {
        *self.rows_sent.lock().unwrap().entry(table).or_insert(0) += rows as u64;
    }

    /// Rows of a table acknowledged so far.
    pub fn rows_sent(&self, table: &str) -> u64 {
        self.rows_sent
            .lock()
            .unwrap()
            .get(table)
            .copied()
            .unwrap_or(0)
    }

    /// A watch of `kind` failed (it is retried with backoff).
    pub fn watch_error(&self, kind: &'static str) {
        *self.watch_errors.lock().unwrap().entry(kind).or_insert(0) += 1;
    }

    /// A node could not be scraped, and why (`not_ready`, `summary`, `cadvisor`, `timeout`).
    pub fn scrape_error(&self, node: &str, reason: &'static str) {
        *self
            .scrape_errors
            .lock()
            .unwrap()
            .entry((node.to_string(), reason))
            .or_insert(0) += 1;
    }

    /// Declares an informer (not yet synced).
    pub fn expect(&self, kind: &'static str) {
        self.synced.lock().unwrap().entry(kind).or_insert(false);
    }

    /// An informer listed everything once.
    pub fn synced(&self, kind: &'static str) {
        self.synced.lock().unwrap().insert(kind, true);
    }

    /// Whether every informer has listed once.
    pub fn ready(&self) -> bool {
        let synced = self.synced.lock().unwrap();
        !synced.is_empty() && synced.values().all(|s| *s)
    }

    /// Objects held per kind.
    pub fn set_objects(&self, counts: BTreeMap<&'static str, usize>) {
        *self.objects.lock().unwrap() = counts;
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let head = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        head(
            &mut out,
            "tally_collector_rows_sent_total",
            "counter",
            "Rows the appliance acknowledged, per table.",
        );
        for (table, rows) in self.rows_sent.lock().unwrap().iter() {
            let _ = writeln!(
                out,
                "tally_collector_rows_sent_total{{table=\"{table}\"}} {rows}"
            );
        }
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed) as i64;
        let simple = [
            (
                "tally_collector_rows_dropped_total",
                "counter",
                "Rows dropped because the buffer was full (oldest first).",
                load(&self.rows_dropped),
            ),
            (
                "tally_collector_batches_dropped_total",
                "counter",
                "Batches dropped because the buffer was full.",
                load(&self.batches_dropped),
            ),
            (
                "tally_collector_buffer_bytes",
                "gauge",
                "Bytes of batches waiting for the appliance.",
                load(&self.buffer_bytes),
            ),
            (
                "tally_collector_buffer_batches",
                "gauge",
                "Batches waiting for the appliance.",
                load(&self.buffer_batches),
            ),
            (
                "tally_collector_send_errors_total",
                "counter",
                "Failed writes to the appliance (retried).",
                load(&self.send_errors),
            ),
            (
                "tally_collector_bootstrap_errors_total",
                "counter",
                "Failed certificate requests.",
                load(&self.bootstrap_errors),
            ),
            (
                "tally_collector_certificate_expiry_seconds",
                "gauge",
                "Unix time the client certificate expires (0: none).",
                self.certificate_expiry_ms.load(Ordering::Relaxed) / 1000,
            ),
            (
                "tally_collector_scrapes_total",
                "counter",
                "Scrape rounds over all nodes.",
                load(&self.scrapes),
            ),
        ];
        for (name, kind, help, value) in simple {
            head(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {value}");
        }
        head(
            &mut out,
            "tally_collector_watch_errors_total",
            "counter",
            "Watch failures per kind (retried with backoff).",
        );
        for (kind, count) in self.watch_errors.lock().unwrap().iter() {
            let _ = writeln!(
                out,
                "tally_collector_watch_errors_total{{kind=\"{kind}\"}} {count}"
            );
        }
        head(
            &mut out,
            "tally_collector_scrape_errors_total",
            "counter",
            "Nodes that could not be scraped, per node and reason.",
        );
        for ((node, reason), count) in self.scrape_errors.lock().unwrap().iter() {
            let _ = writeln!(
                out,
                "tally_collector_scrape_errors_total{{node=\"{node}\",reason=\"{reason}\"}} {count}"
            );
        }
        head(
            &mut out,
            "tally_collector_informer_synced",
            "gauge",
            "Whether an informer has listed everything once.",
        );
        for (kind, synced) in self.synced.lock().unwrap().iter() {
            let _ = writeln!(
                out,
                "tally_collector_informer_synced{{kind=\"{kind}\"}} {}",
                u8::from(*synced)
            );
        }
        head(
            &mut out,
            "tally_collector_objects",
            "gauge",
            "Objects held by the informers, per kind.",
        );
        for (kind, count) in self.objects.lock().unwrap().iter() {
            let _ = writeln!(out, "tally_collector_objects{{kind=\"{kind}\"}} {count}");
        }
        out
    }
}

/// The router of the health listener.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_page))
        .with_state(metrics)
}

async fn readyz(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    if metrics.ready() {
        (StatusCode::OK, "ok")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "informers are still listing",
        )
    }
}

async fn metrics_page(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics.render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_lists_every_family_with_its_samples() {
        let m = Metrics::default();
        m.sent("pods", 3);
        m.sent("pods", 2);
        m.watch_error("Pod");
        m.scrape_error("fake-node-a", "not_ready");
        m.expect("Pod");
        assert!(!m.ready());
        m.synced("Pod");
        assert!(m.ready());
        let text = m.render();
        assert!(text.contains("# TYPE tally_collector_rows_sent_total counter\ntally_collector_rows_sent_total{table=\"pods\"} 5\n"), "{text}");
        assert!(
            text.contains("tally_collector_watch_errors_total{kind=\"Pod\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "tally_collector_scrape_errors_total{node=\"fake-node-a\",reason=\"not_ready\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("tally_collector_rows_dropped_total 0"),
            "{text}"
        );
        assert!(
            text.contains("tally_collector_informer_synced{kind=\"Pod\"} 1"),
            "{text}"
        );
    }
}
