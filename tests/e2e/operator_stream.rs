//! Recommendations pushed from the appliance to the operator over the gRPC server stream
//! (issue 7): the real `tally serve` and the real `tally-agent operator` under the ClusterRole
//! of `agents/operator/rbac.yaml`, mutual TLS with certificates from the bootstrap endpoint,
//! against the real cluster (the rig of [`crate::operator`], but with an hour-long
//! `--poll-interval`: a run that becomes a WorkloadRecommendation within seconds came over
//! the stream, not from a poll).
//!
//! The test is the analysis, as in `operator.rs`: it writes `recommendations` rows with
//! `DoPut`, which announces the run to the stream's subscribers.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tally_e2e::cluster::{TestNamespace, cluster, free_address, start_tally_at, tally_agent_bin};
use tally_wire::IngestClient;
use tally_wire::bootstrap::request_certificate;

use crate::operator::{MI, Operator, Rec, Rig, container, install_crds};

/// How `tally serve` was started, to start it again on the same data and ports.
struct ApplianceStart {
    data: std::path::PathBuf,
    flight: String,
    http: String,
    args: Vec<String>,
}

impl ApplianceStart {
    fn start(&self) -> tally_e2e::Server {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        start_tally_at(&self.data, &self.flight, &self.http, &args).unwrap()
    }
}

/// The rig of `operator.rs`, with the operator polling once an hour; `extra`: more flags
/// of `tally serve`.
async fn stream_rig(prefix: &str, extra: &[&str]) -> (Rig, ApplianceStart, tally_wire::ClientTls) {
    let cluster = cluster();
    install_crds(&cluster);
    let mut ns = TestNamespace::create(&cluster, prefix);
    let n = ns.name.clone();
    ns.agent_account(
        include_str!("../../agents/operator/rbac.yaml"),
        "tally-operator",
        "operator",
    );
    ns.appliance_account();
    let dir = tempfile::tempdir().unwrap();
    let operator_token_file = ns.token_file(dir.path(), "operator");
    let appliance_token_file = ns.token_file(dir.path(), "appliance");
    let operator_token = std::fs::read_to_string(&operator_token_file).unwrap();
    let api_ca_file = dir.path().join("api-ca.crt");
    std::fs::write(&api_ca_file, &cluster.ca_pem).unwrap();
    let operator_kubeconfig = cluster.kubeconfig_for_token(dir.path(), "operator", &operator_token);

    let bootstrap = free_address();
    let start = ApplianceStart {
        data: dir.path().join("data"),
        flight: free_address(),
        http: free_address(),
        args: [
            "--bootstrap-allow",
            &format!("{n}:operator"),
            "--kube-api-server",
            &cluster.api_server,
            "--kube-ca",
            &api_ca_file.display().to_string(),
            "--kube-token-file",
            &appliance_token_file.display().to_string(),
            "--server-name",
            "127.0.0.1",
            "--flush-interval",
            "1s",
            // The test is the analysis: no periodic run writes rows of its own.
            "--analysis-interval",
            "0",
            // The CA lives in this Secret: a restarted appliance keeps it, so the
            // operator's certificate stays valid.
            "--ca-secret",
            &format!("{n}/tally-ca"),
            "--bootstrap-listen",
            &bootstrap,
        ]
        .iter()
        .chain(extra)
        .map(|a| a.to_string())
        .collect(),
    };
    let appliance = start.start();
    let ca_pem = cluster.published_ca(&n);
    let ca_file = dir.path().join("appliance-ca.crt");
    std::fs::write(&ca_file, &ca_pem).unwrap();
    let issued = request_certificate(
        &format!("https://{bootstrap}"),
        ca_pem.as_bytes(),
        &operator_token,
    )
    .await
    .expect("a client certificate for the test");
    let flight_url = appliance.flight_url.replace("http://", "https://");
    let ingest = IngestClient::connect(&flight_url, Some(issued.tls.clone()))
        .await
        .expect("connect to the appliance");

    let log = dir.path().join("operator.log");
    let mut child = Command::new(tally_agent_bin())
        .arg("operator")
        // An hour: within this test, no run can reach the operator by a poll after the first.
        .args(["--listen", "127.0.0.1:0", "--poll-interval", "1h"])
        .args(["--namespace", &n])
        .args(["--appliance", &flight_url])
        .args(["--bootstrap-url", &format!("https://{bootstrap}")])
        .arg("--appliance-ca")
        .arg(&ca_file)
        .arg("--token-file")
        .arg(&operator_token_file)
        .arg("--kubeconfig")
        .arg(&operator_kubeconfig)
        .env_remove("KUBECONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .expect("start tally-agent operator");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let health_url = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(addr) = line.strip_prefix("listening ") {
                    break format!("http://{addr}");
                }
            }
            _ => panic!(
                "tally-agent operator exited before it was ready:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ),
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let rig = Rig {
        operator: Some(Operator {
            child,
            health_url,
            log,
        }),
        appliance,
        ingest,
        _dir: dir,
        ns,
    };
    (rig, start, issued.tls)
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
