//! The operator's subscription to the appliance's recommendation stream (a gRPC server
//! stream on the Flight port, mutual TLS; contract in `tally_wire::subscribe`).
//!
//! [`spawn`] subscribes at start and keeps the subscription: every run that arrives is
//! published on a `watch` channel (newest only: a pass that is still running when two runs
//! arrive reconciles the newest once), and the reconcile loop runs a pass at once. When the
//! stream breaks (the appliance restarted, the connection died: no heartbeat for 45 s) the
//! task reconnects with exponential backoff (0.5 s doubling to a 30 s cap, with jitter so
//! many operators do not reconnect in step), and says so in the log and in `/metrics`:
//! `tally_operator_stream_connected` (gauge), `tally_operator_stream_reconnects_total`
//! (subscriptions made again after one ended), `tally_operator_stream_runs_total`.
//! A subscription also ends when its client certificate is due for renewal (two thirds of
//! its life): it is made again after the first backoff step (at most 0.5 s) with the
//! renewed certificate, so a stream never
//! outlives the certificate it was opened with.
//!
//! An appliance without the stream (an older version) answers `Unimplemented`: the task
//! logs it once, sets `tally_operator_stream_unsupported` and ends, and the operator keeps
//! reading the newest run every `--poll-interval`, as before. With the stream the poll
//! still runs: Policies' time windows open without any new run.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tally_wire::link::AgentTls;
use tally_wire::subscribe::{RecommendationStream, StreamEvent, SubscribeError};
use tokio::sync::watch;

use crate::appliance::Credentials;
use crate::health::Metrics;

/// The first retry's delay.
pub const BACKOFF_START: Duration = Duration::from_millis(500);
/// The longest delay between two attempts.
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);

/// A run received over the stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub run_id: String,
    /// Its rows, every kind.
    pub rows: usize,
}

/// The delay before attempt `attempt` (0: the first retry): `BACKOFF_START × 2^attempt`,
/// capped at [`BACKOFF_CAP`], then scaled into its upper half by `jitter` (in `[0, 1)`),
/// so it lies in `[d/2, d)`.
pub fn backoff_delay(attempt: u32, jitter: f64) -> Duration {
    let full = BACKOFF_START
        .saturating_mul(2u32.saturating_pow(attempt.min(16)))
        .min(BACKOFF_CAP);
    full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// A number in `[0, 1)` from the operating system's randomness (a UUID v4: its low 53
/// bits are random; the version and variant bits lie above them).
fn jitter() -> f64 {
    let bits = uuid::Uuid::new_v4().as_u128() as u64 & ((1u64 << 53) - 1);
    bits as f64 / (1u64 << 53) as f64
}

/// Subscribes to `url`'s recommendation stream in a task of its own. The receiver sees
/// every run that arrives (newest only); it reports `changed()` errors once the task ended
/// because the appliance has no stream.
pub fn spawn(
    url: String,
    credentials: Credentials,
    metrics: Arc<Metrics>,
) -> watch::Receiver<Option<Received>> {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(follow(url, credentials, metrics, tx));
    rx
}

async fn subscribe(url: &str, tls: &mut AgentTls) -> Result<RecommendationStream, String> {
    let current = tls.current().await.map_err(|e| e.to_string())?;
    RecommendationStream::open(url, current.tls)
        .await
        .map_err(|e| {
            if e.is_unsupported() {
                UNSUPPORTED.to_string()
            } else {
                e.to_string()
            }
        })
}

const UNSUPPORTED: &str = "unsupported";

/// Resolves at `renew_at_ms` (Unix ms); never without a certificate.
async fn renewal_due(renew_at_ms: Option<i64>) {
    let Some(at) = renew_at_ms else {
        return std::future::pending().await;
    };
    let now = chrono::Utc::now().timestamp_millis();
    tokio::time::sleep(Duration::from_millis((at - now).max(0) as u64)).await;
}

async fn follow(
    url: String,
    credentials: Credentials,
    metrics: Arc<Metrics>,
    tx: watch::Sender<Option<Received>>,
) {
    let mut tls = AgentTls::new(credentials);
    let mut attempt = 0u32;
    let mut subscribed_before = false;
    loop {
        match subscribe(&url, &mut tls).await {
            Ok(mut stream) => {
                metrics.stream_connected.store(1, Ordering::Relaxed);
                if subscribed_before {
                    metrics.stream_reconnects.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(appliance = %url, "reconnected to the recommendation stream");
                } else {
                    tracing::info!(appliance = %url, "subscribed to the recommendation stream");
                }
                subscribed_before = true;
                // A stream outlives no certificate: subscribe again (with the renewed one)
                // once the current one is due for renewal.
                let renew = renewal_due(tls.renew_at_ms());
                tokio::pin!(renew);
                let reason = loop {
                    let next = tokio::select! {
                        next = stream.next() => next,
                        _ = &mut renew => {
                            attempt = 0;
                            break "the client certificate is due for renewal".to_string();
                        }
                    };
                    match next {
                        Ok(Some(StreamEvent::Run(run))) => {
                            attempt = 0;
                            metrics.stream_runs.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(
                                run_id = %run.run_id,
                                rows = run.rows,
                                "analysis run received over the recommendation stream"
                            );
                            tx.send_replace(Some(Received {
                                run_id: run.run_id,
                                rows: run.rows,
                            }));
                        }
                        Ok(Some(StreamEvent::Heartbeat)) => {
                            attempt = 0;
                            tracing::debug!("recommendation stream heartbeat");
                        }
                        Ok(None) => break "the appliance ended the stream".to_string(),
                        Err(SubscribeError::Silent(after)) => {
                            break format!("no heartbeat for {after:?}: the connection is dead");
                        }
                        Err(e) => break e.to_string(),
                    }
                };
                metrics.stream_connected.store(0, Ordering::Relaxed);
                tracing::warn!(%reason, "recommendation stream lost");
            }
            Err(reason) if reason == UNSUPPORTED => {
                metrics.stream_unsupported.store(1, Ordering::Relaxed);
                tracing::warn!(
                    appliance = %url,
                    "the appliance has no recommendation stream (an older version): \
                     reading the newest run every --poll-interval instead"
                );
                return;
            }
            Err(reason) => {
                tracing::warn!(%reason, "cannot subscribe to the recommendation stream");
            }
        }
        if tx.is_closed() {
            return;
        }
        let delay = backoff_delay(attempt, jitter());
        attempt = attempt.saturating_add(1);
        tracing::info!(retry_in = ?delay, attempt, "reconnecting to the recommendation stream");
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_within_its_jitter() {
        assert_eq!(backoff_delay(0, 0.0), Duration::from_millis(250));
        assert_eq!(backoff_delay(0, 1.0), Duration::from_millis(500));
        assert_eq!(backoff_delay(1, 1.0), Duration::from_secs(1));
        assert_eq!(backoff_delay(3, 1.0), Duration::from_secs(4));
        // 0.5 s × 2^6 = 32 s: capped.
        assert_eq!(backoff_delay(6, 1.0), BACKOFF_CAP);
        assert_eq!(backoff_delay(u32::MAX, 1.0), BACKOFF_CAP);
        assert_eq!(backoff_delay(u32::MAX, 0.0), BACKOFF_CAP / 2);
        for attempt in 0..40 {
            let d = backoff_delay(attempt, jitter());
            let full = backoff_delay(attempt, 1.0);
            assert!(d >= full / 2 && d <= full, "{attempt}: {d:?} of {full:?}");
        }
    }

    #[test]
    fn jitter_is_spread_over_zero_to_one() {
        let values: Vec<f64> = (0..200).map(|_| jitter()).collect();
        assert!(values.iter().all(|v| (0.0..1.0).contains(v)));
        assert!(values.iter().any(|v| *v < 0.5) && values.iter().any(|v| *v >= 0.5));
    }

    /// No appliance listens: the task keeps retrying (not connected, no reconnect counted)
    /// and the receiver stays open, so the operator keeps its poll and waits for runs.
    #[tokio::test]
    async fn an_unreachable_appliance_is_retried_not_given_up() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let metrics = Arc::new(Metrics::default());
        let mut rx = spawn(
            format!("http://127.0.0.1:{port}"),
            Credentials::Insecure,
            metrics.clone(),
        );
        let waited = tokio::time::timeout(Duration::from_secs(2), rx.changed()).await;
        assert!(waited.is_err(), "no run and no end: {waited:?}");
        assert_eq!(metrics.stream_connected.load(Ordering::Relaxed), 0);
        assert_eq!(metrics.stream_reconnects.load(Ordering::Relaxed), 0);
        assert_eq!(metrics.stream_unsupported.load(Ordering::Relaxed), 0);
    }

    /// A Flight SQL server with arrow-flight's defaults only: what an appliance from before
    /// the stream answers to an unknown ticket.
    #[derive(Clone)]
    struct OlderAppliance;

    #[tonic::async_trait]
    impl arrow_flight::sql::server::FlightSqlService for OlderAppliance {
        type FlightService = OlderAppliance;
        async fn register_sql_info(&self, _id: i32, _result: &arrow_flight::sql::SqlInfo) {}
    }

    #[tokio::test]
    async fn an_appliance_without_the_stream_leaves_the_operator_polling() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(
                    arrow_flight::flight_service_server::FlightServiceServer::new(OlderAppliance),
                )
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        let metrics = Arc::new(Metrics::default());
        let mut rx = spawn(url, Credentials::Insecure, metrics.clone());
        // The task ends (the loop then stops waiting for runs and keeps its poll).
        let ended = tokio::time::timeout(Duration::from_secs(30), rx.changed())
            .await
            .expect("the subscription gives up at once");
        assert!(ended.is_err(), "no run arrives from an older appliance");
        assert_eq!(metrics.stream_unsupported.load(Ordering::Relaxed), 1);
        assert_eq!(metrics.stream_connected.load(Ordering::Relaxed), 0);
    }
}
