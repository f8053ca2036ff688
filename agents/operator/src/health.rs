//! The operator's own health: `/healthz`, `/readyz` (one full reconcile pass succeeded and
//! the last one is recent; with the admission webhook on, its last health check passed) and
//! Prometheus `/metrics`. When not ready, `/readyz` answers 503 with every reason, one a line.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

/// Counters and gauges of the operator.
#[derive(Debug, Default)]
pub struct Metrics {
    pub passes: AtomicU64,
    pub pass_errors: AtomicU64,
    pub errors: AtomicU64,
    pub patches: AtomicU64,
    pub rollbacks: AtomicU64,
    pub recommendations: AtomicU64,
    pub policies_valid: AtomicU64,
    pub policies_invalid: AtomicU64,
    /// Unix milliseconds of the last successful pass (0: none yet).
    pub last_success_ms: AtomicI64,
    /// How long a pass may be overdue before `/readyz` fails.
    pub stale_after_ms: AtomicI64,
    /// `tally-agent webhook`: no reconcile passes, readiness is the webhook's alone.
    pub webhook_only: AtomicBool,
    /// The admission webhook's last health check (None: no webhook served).
    pub webhook: Mutex<Option<WebhookHealth>>,
    pub webhook_probes: AtomicU64,
    pub webhook_probe_failures: AtomicU64,
    /// The recommendation stream ([`crate::stream`]): subscribed now (1) or not (0).
    pub stream_connected: AtomicU64,
    /// Subscriptions made again after one ended (lost, or its certificate due for renewal).
    pub stream_reconnects: AtomicU64,
    /// Analysis runs received over the stream.
    pub stream_runs: AtomicU64,
    /// The appliance has no stream (1): the operator only polls.
    pub stream_unsupported: AtomicU64,
    actions: Mutex<BTreeMap<(String, String), u64>>,
    webhook_requests: Mutex<BTreeMap<String, u64>>,
}

/// The outcome of the admission webhook's last health check (a dry-run pod create).
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookHealth {
    pub healthy: bool,
    /// Why not (empty when healthy).
    pub reason: String,
}

impl Metrics {
    /// An action appended to the appliance's `actions` table.
    pub fn action(&self, operation: &str, result: &str) {
        *self
            .actions
            .lock()
            .unwrap()
            .entry((operation.to_string(), result.to_string()))
            .or_insert(0) += 1;
    }

    /// An admission request answered (`patched`, `unchanged`, `error`, `ignored`).
    pub fn webhook_request(&self, result: &str) {
        *self
            .webhook_requests
            .lock()
            .unwrap()
            .entry(result.to_string())
            .or_insert(0) += 1;
    }

    /// Ready: a pass succeeded, recently (unless webhook-only), and the webhook, when
    /// served, passed its last health check.
    pub fn ready(&self, now_ms: i64) -> bool {
        self.not_ready(now_ms).is_empty()
    }

    /// Why the operator is not ready (empty: ready).
    pub fn not_ready(&self, now_ms: i64) -> Vec<String> {
        let mut reasons = Vec::new();
        let last = self.last_success_ms.load(Ordering::Relaxed);
        let recent = last > 0 && now_ms - last <= self.stale_after_ms.load(Ordering::Relaxed);
        if !recent && !self.webhook_only.load(Ordering::Relaxed) {
            reasons.push("no recent successful reconcile pass".to_string());
        }
        if let Some(webhook) = self.webhook.lock().unwrap().as_ref()
            && !webhook.healthy
        {
            reasons.push(format!("admission webhook: {}", webhook.reason));
        }
        reasons
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        for (name, kind, help, value) in [
            (
                "tally_operator_passes_total",
                "counter",
                "Reconcile passes completed.",
                load(&self.passes),
            ),
            (
                "tally_operator_pass_errors_total",
                "counter",
                "Reconcile passes that failed (appliance or API server unreachable).",
                load(&self.pass_errors),
            ),
            (
                "tally_operator_errors_total",
                "counter",
                "Errors on single objects (retried next pass).",
                load(&self.errors),
            ),
            (
                "tally_operator_workload_patches_total",
                "counter",
                "Workloads whose requests/limits the operator patched.",
                load(&self.patches),
            ),
            (
                "tally_operator_rollbacks_total",
                "counter",
                "Workloads restored to their previous resources.",
                load(&self.rollbacks),
            ),
            (
                "tally_operator_recommendations",
                "gauge",
                "Workload recommendations in the latest analysis run.",
                load(&self.recommendations),
            ),
            (
                "tally_operator_policies_valid",
                "gauge",
                "Policies that passed validation.",
                load(&self.policies_valid),
            ),
            (
                "tally_operator_policies_invalid",
                "gauge",
                "Policies rejected by validation (they cover nothing).",
                load(&self.policies_invalid),
            ),
            (
                "tally_operator_stream_connected",
                "gauge",
                "Subscribed to the appliance's recommendation stream now (1) or not (0).",
                load(&self.stream_connected),
            ),
            (
                "tally_operator_stream_reconnects_total",
                "counter",
                "Subscriptions to the recommendation stream made again after one ended (lost, or its certificate due for renewal).",
                load(&self.stream_reconnects),
            ),
            (
                "tally_operator_stream_runs_total",
                "counter",
                "Analysis runs received over the recommendation stream.",
                load(&self.stream_runs),
            ),
            (
                "tally_operator_stream_unsupported",
                "gauge",
                "The appliance has no recommendation stream (1): recommendations are only polled.",
                load(&self.stream_unsupported),
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP tally_operator_last_success_timestamp_seconds When the last pass succeeded.\n# TYPE tally_operator_last_success_timestamp_seconds gauge\ntally_operator_last_success_timestamp_seconds {}",
            self.last_success_ms.load(Ordering::Relaxed) as f64 / 1000.0
        );
        let _ = writeln!(
            out,
            "# HELP tally_operator_actions_total Actions appended to the appliance's audit log.\n# TYPE tally_operator_actions_total counter"
        );
        for ((operation, result), n) in self.actions.lock().unwrap().iter() {
            let _ = writeln!(
                out,
                "tally_operator_actions_total{{operation=\"{operation}\",result=\"{result}\"}} {n}"
            );
        }
        let webhook = self.webhook.lock().unwrap().clone();
        if let Some(webhook) = webhook {
            let _ = writeln!(
                out,
                "# HELP tally_operator_webhook_healthy Whether the admission webhook answered its last dry-run probe (1) or not (0).\n# TYPE tally_operator_webhook_healthy gauge\ntally_operator_webhook_healthy {}",
                u8::from(webhook.healthy)
            );
            for (name, help, value) in [
                (
                    "tally_operator_webhook_probes_total",
                    "Dry-run probe pods created by the webhook's health check.",
                    &self.webhook_probes,
                ),
                (
                    "tally_operator_webhook_probe_failures_total",
                    "Health checks that found the webhook not answering (or the probe refused).",
                    &self.webhook_probe_failures,
                ),
            ] {
                let _ = writeln!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                    load(value)
                );
            }
            let _ = writeln!(
                out,
                "# HELP tally_operator_webhook_requests_total Admission requests answered, by result (patched, unchanged, error, ignored).\n# TYPE tally_operator_webhook_requests_total counter"
            );
            for (result, n) in self.webhook_requests.lock().unwrap().iter() {
                let _ = writeln!(
                    out,
                    "tally_operator_webhook_requests_total{{result=\"{result}\"}} {n}"
                );
            }
        }
        out
    }
}

/// The routes of the health listener.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render))
        .with_state(metrics)
}

async fn readyz(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    let reasons = metrics.not_ready(chrono::Utc::now().timestamp_millis());
    if reasons.is_empty() {
        (StatusCode::OK, "ok".to_string())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, reasons.join("\n"))
    }
}

async fn render(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics.render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_after_a_recent_pass() {
        let m = Metrics::default();
        m.stale_after_ms.store(10_000, Ordering::Relaxed);
        assert!(!m.ready(1_000));
        m.last_success_ms.store(1_000, Ordering::Relaxed);
        assert!(m.ready(5_000));
        assert!(!m.ready(20_000));
        m.action("apply", "applied");
        assert!(
            m.render()
                .contains("tally_operator_actions_total{operation=\"apply\",result=\"applied\"} 1")
        );
        assert!(!m.render().contains("tally_operator_webhook_healthy"));
    }

    #[test]
    fn a_failing_webhook_health_check_makes_it_not_ready_with_the_reason() {
        let m = Metrics::default();
        m.stale_after_ms.store(10_000, Ordering::Relaxed);
        m.last_success_ms.store(1_000, Ordering::Relaxed);
        *m.webhook.lock().unwrap() = Some(WebhookHealth {
            healthy: false,
            reason: "not probed yet".into(),
        });
        assert_eq!(m.not_ready(2_000), ["admission webhook: not probed yet"]);
        assert!(m.render().contains("tally_operator_webhook_healthy 0"));
        *m.webhook.lock().unwrap() = Some(WebhookHealth {
            healthy: true,
            reason: String::new(),
        });
        assert!(m.ready(2_000));
        m.webhook_request("patched");
        assert!(m.render().contains("tally_operator_webhook_healthy 1"));
        assert!(
            m.render()
                .contains("tally_operator_webhook_requests_total{result=\"patched\"} 1")
        );
        // Webhook only: no reconcile pass is needed.
        let w = Metrics::default();
        w.webhook_only.store(true, Ordering::Relaxed);
        *w.webhook.lock().unwrap() = Some(WebhookHealth {
            healthy: true,
            reason: String::new(),
        });
        assert!(w.ready(5_000));
    }

    #[test]
    fn the_recommendation_stream_is_in_the_metrics() {
        let m = Metrics::default();
        m.stream_connected.store(1, Ordering::Relaxed);
        m.stream_reconnects.fetch_add(2, Ordering::Relaxed);
        let text = m.render();
        assert!(
            text.contains("\ntally_operator_stream_connected 1\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE tally_operator_stream_reconnects_total counter\ntally_operator_stream_reconnects_total 2\n"), "{text}");
        assert!(
            text.contains("\ntally_operator_stream_runs_total 0\n"),
            "{text}"
        );
        assert!(
            text.contains("\ntally_operator_stream_unsupported 0\n"),
            "{text}"
        );
    }
}
