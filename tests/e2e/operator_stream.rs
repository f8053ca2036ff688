//! Recommendations pushed from the appliance to the operator over the gRPC server stream
//! (issue 7): the real `tally serve` and the real `tally-agent operator` under the ClusterRole
//! of `agents/operator/rbac.yaml`, mutual TLS with certificates from the bootstrap endpoint,
//! against the real cluster (the rig of [`crate::operator`], but with an hour-long
//! `--poll-interval`: a run that becomes a WorkloadRecommendation within seconds came over
//! the stream, not from a poll).
//!
//! The test is the analysis, as in `operator.rs`: it writes `recommendations` rows with
//! `DoPut`, which announces the run to the stream's subscribers.

use std::time::{Duration, Instant};

use serde_json::Value;
use tally_wire::IngestClient;

use crate::operator::{ApplianceStart, MI, Rec, Rig, container, rig_with};

/// The rig of `operator.rs`, with the operator polling once an hour (within these tests no
/// run can reach it by a poll after the first); `extra`: more flags of `tally serve`.
async fn stream_rig(prefix: &str, extra: &[&str]) -> (Rig, ApplianceStart, tally_wire::ClientTls) {
    rig_with(prefix, "1h", extra).await
}

/// Waits (up to `within`) until the operator's metric `name` is `wanted` (or more, for a
/// counter: `at_least`).
async fn metric_is(
    rig: &Rig,
    name: &str,
    wanted: f64,
    at_least: bool,
    within: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let value = rig.metric(name).await;
        if value == wanted || (at_least && value > wanted) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{name} is {value}, not {wanted}, after {within:?}; operator log:\n{}",
            operator_log(rig)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn operator_log(rig: &Rig) -> String {
    let log = &rig.operator.as_ref().expect("operator").log;
    std::fs::read_to_string(log).unwrap_or_default()
}

/// The `spec.runId` of Deployment `name`'s WorkloadRecommendation, once it exists.
fn wait_recommendation(rig: &Rig, name: &str, run_id: &str, within: Duration) -> Duration {
    let started = Instant::now();
    let wr = format!("deployment-{name}");
    rig.cluster()
        .wait(&format!("{wr} of {run_id}"), within, || {
            let text = rig.kubectl(&[
                "get",
                "workloadrecommendations.tally.dev",
                &wr,
                "-o",
                "json",
            ])?;
            let value: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
            if value["spec"]["runId"] == run_id {
                Ok(())
            } else {
                Err(format!("spec.runId is {}", value["spec"]["runId"]))
            }
        });
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_arrive_over_the_stream_and_after_an_appliance_restart() {
    let (mut rig, start, test_tls) = stream_rig("opstream", &[]).await;
    let standard = container("main", "{requests: {cpu: '1', memory: 256Mi}}");
    rig.deployment("web", "", &standard);
    rig.deployment("api", "", &standard);
    let rec = |name| Rec {
        name,
        container: "main",
        cpu: (1.0, 0.25),
        memory: (256 * MI, 200 * MI),
    };

    // The operator subscribed and made its first pass (no run yet).
    let minute = Duration::from_secs(60);
    metric_is(&rig, "tally_operator_stream_connected", 1.0, false, minute).await;
    metric_is(&rig, "tally_operator_passes_total", 1.0, true, minute).await;
    assert_eq!(rig.metric("tally_operator_stream_runs_total").await, 0.0);
    // No failed pass is being retried either: from now on, only a run pushed over the
    // stream (or the poll an hour from now) makes a pass.
    assert_eq!(rig.metric("tally_operator_pass_errors_total").await, 0.0);

    // A run written after the start: with a poll of an hour, only the stream can bring it.
    rig.recommend("run-1", &[rec("web")]).await;
    let took = wait_recommendation(&rig, "web", "run-1", minute);
    eprintln!("run-1 became a WorkloadRecommendation {took:?} after it was written");
    assert!(rig.metric("tally_operator_stream_runs_total").await >= 1.0);
    let log = operator_log(&rig);
    assert!(
        log.contains("analysis run received over the recommendation stream"),
        "{log}"
    );

    // The appliance is killed and started again on the same data directory and ports.
    let appliance = &mut rig.appliance;
    appliance.child.kill().unwrap();
    appliance.child.wait().unwrap();
    // The operator notices at once (the connection is reset; without that, within the
    // 45 s heartbeat timeout).
    metric_is(&rig, "tally_operator_stream_connected", 0.0, false, minute).await;
    assert_eq!(
        rig.metric("tally_operator_stream_reconnects_total").await,
        0.0
    );
    rig.appliance = start.start();
    let took = metric_is(
        &rig,
        "tally_operator_stream_reconnects_total",
        1.0,
        true,
        Duration::from_secs(90),
    )
    .await;
    eprintln!("the operator reconnected {took:?} after the appliance was started again");
    assert_eq!(rig.metric("tally_operator_stream_connected").await, 1.0);
    let log = operator_log(&rig);
    assert!(log.contains("recommendation stream lost"), "{log}");
    assert!(
        log.contains("reconnected to the recommendation stream"),
        "{log}"
    );

    // The next run arrives over the new subscription (the test writes it over a new
    // connection of its own).
    rig.ingest = IngestClient::connect(
        &rig.appliance.flight_url.replace("http://", "https://"),
        Some(test_tls),
    )
    .await
    .expect("connect to the restarted appliance");
    rig.recommend("run-2", &[rec("api")]).await;
    let took = wait_recommendation(&rig, "api", "run-2", minute);
    eprintln!("run-2 became a WorkloadRecommendation {took:?} after it was written");
    let log = operator_log(&rig);
    assert!(log.contains("run_id=run-2"), "{log}");
}

/// A subscription does not outlive its client certificate: with certificates valid for
/// 15 s (renewed at two thirds), the operator subscribes again with the renewed one, and
/// the new subscription delivers (the newest run again).
#[tokio::test(flavor = "multi_thread")]
async fn the_stream_is_made_again_when_its_certificate_is_due_for_renewal() {
    let (mut rig, _start, _tls) = stream_rig("opstreamcert", &["--agent-cert-ttl", "15s"]).await;
    let standard = container("main", "{requests: {cpu: '1', memory: 256Mi}}");
    rig.deployment("web", "", &standard);
    let minute = Duration::from_secs(60);
    metric_is(&rig, "tally_operator_stream_connected", 1.0, false, minute).await;
    rig.recommend(
        "run-1",
        &[Rec {
            name: "web",
            container: "main",
            cpu: (1.0, 0.25),
            memory: (256 * MI, 200 * MI),
        }],
    )
    .await;
    wait_recommendation(&rig, "web", "run-1", minute);
    let took = metric_is(
        &rig,
        "tally_operator_stream_reconnects_total",
        1.0,
        true,
        minute,
    )
    .await;
    eprintln!("subscribed again {took:?} after run-1 arrived (certificate renewal)");
    // The new subscription starts with the newest run: run-1 arrives a second time.
    metric_is(&rig, "tally_operator_stream_runs_total", 2.0, true, minute).await;
    let log = operator_log(&rig);
    assert!(
        log.contains("the client certificate is due for renewal"),
        "{log}"
    );
    assert!(
        log.contains("reconnected to the recommendation stream"),
        "{log}"
    );
}
