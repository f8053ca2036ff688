//! The operator's mutating admission webhook against the real API server.
//!
//! The API server runs inside the control plane's network namespace (`tally-cp`) and cannot
//! reach this machine's loopback, so the webhook runs there too: the real `tally-agent
//! webhook` binary under `nsenter --net`, listening on the bridge address (10.213.0.1) with
//! a certificate it generates, reaching the API server on that namespace's own loopback with
//! the token of a ServiceAccount bound to exactly `agents/operator/rbac.yaml` (plus the
//! probe Role the chart gives it in its namespace). The test registers a
//! MutatingWebhookConfiguration with `clientConfig.url` and no caBundle: the webhook writes
//! its CA in itself, as it does in the chart. The configuration is cluster-scoped: it selects
//! only opted-in pods of namespaces carrying this test's label, and is deleted by a Drop guard.
//!
//! Recommendations come the real way: the test writes them to the real appliance, the real
//! operator (on the host, as in `operator.rs`) materialises them and marks those of a
//! webhook-method Policy Approved; the webhook reads them when pods are created.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tally_e2e::cluster::{Cluster, TestNamespace, cluster, tally_agent_bin};

use crate::operator::{MI, Rec, container, rig};

/// The label of the namespaces this test's webhook configuration selects.
const NAMESPACE_LABEL: &str = "tally.dev/e2e-webhook";

/// The control plane's network namespace and bridge address, from the test cluster's env file.
fn control_plane() -> (String, String) {
    let dir = std::env::var("TALLY_CLUSTER_DIR").unwrap_or_else(|_| "/tmp/tally-cluster".into());
    let path = Path::new(&dir).join("env");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "the webhook tests need the test cluster of tests/cluster (its API server must reach \
             a webhook this test runs in its network namespace): {}: {e}",
            path.display()
        )
    });
    let get = |key: &str| {
        text.lines()
            .filter_map(|l| l.trim().strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.trim_matches('"').to_string())
            .unwrap_or_else(|| panic!("{} lacks {key}", path.display()))
    };
    (get("TALLY_CP_NETNS"), get("TALLY_CP_IP"))
}

/// The Role the chart gives the operator in its own namespace: create, for the health
/// check's dry-run probe pod (helm/tally/templates/operator/operator.yaml).
fn probe_role(ns: &TestNamespace, account: &str) {
    ns.cluster.apply(&format!(
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: {account}-webhook-probe, namespace: {n}}}
rules:
- {{apiGroups: [""], resources: [pods], verbs: [create]}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: {account}-webhook-probe, namespace: {n}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: {account}-webhook-probe}}
subjects: [{{kind: ServiceAccount, name: {account}, namespace: {n}}}]
"#,
        n = ns.name
    ));
    ns.cluster
        .kubectl(&[
            "label",
            "namespace",
            &ns.name,
            &format!("{NAMESPACE_LABEL}={}", ns.name),
            "--overwrite",
        ])
        .unwrap();
}

/// A `tally-agent webhook` process inside the control plane's network namespace, killed when
/// dropped.
struct WebhookProcess {
    child: Child,
    netns: String,
    /// `127.0.0.1:PORT` of /readyz and /metrics, inside the namespace.
    health: String,
    /// `https://10.213.0.1:PORT/mutate-pods`.
    url: String,
    log: PathBuf,
}

impl WebhookProcess {
    /// Starts it with the token `<dir>/operator.token`, keeping `configuration`'s caBundle.
    fn start(ns: &TestNamespace, dir: &Path, configuration: &str) -> WebhookProcess {
        let (netns, ip) = control_plane();
        let token = std::fs::read_to_string(dir.join("operator.token")).expect("operator token");
        let kubeconfig = ns.cluster.kubeconfig_for_token(dir, "webhook", &token);
        // Inside the control plane's namespace the API server listens on its loopback.
        let text = std::fs::read_to_string(&kubeconfig).unwrap().replace(
            &format!("server: {}", ns.cluster.api_server),
            "server: https://127.0.0.1:6443",
        );
        assert!(text.contains("https://127.0.0.1:6443"), "{text}");
        std::fs::write(&kubeconfig, text).unwrap();
        let log = dir.join("webhook.log");
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{netns}"))
            .arg("--")
            .arg(tally_agent_bin())
            .arg("webhook")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["--listen", "127.0.0.1:0"])
            .args(["--webhook-listen", &format!("{ip}:0")])
            .args(["--webhook-dns-name", &ip])
            .args(["--webhook-configuration", configuration])
            .args(["--webhook-probe-interval", "1s"])
            .args(["--webhook-probe-namespace", &ns.name])
            .env_remove("KUBECONFIG")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .expect("start tally-agent webhook under nsenter");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = std::io::BufReader::new(stdout).lines();
        let (mut health, mut url) = (None, None);
        while health.is_none() || url.is_none() {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(addr) = line.strip_prefix("webhook listening ") {
                        url = Some(format!("https://{addr}/mutate-pods"));
                    } else if let Some(addr) = line.strip_prefix("listening ") {
                        health = Some(addr.to_string());
                    }
                }
                _ => panic!(
                    "tally-agent webhook exited before it was ready:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ),
            }
        }
        std::thread::spawn(move || for _ in lines {});
        WebhookProcess {
            child,
            netns,
            health: health.unwrap(),
            url: url.unwrap(),
            log,
        }
    }

    /// GET `path` of its health listener (inside the namespace): status and body.
    fn get(&self, path: &str) -> (u16, String) {
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .args(["--", "curl", "-s", "-m", "5", "-w", "\n%{http_code}"])
            .arg(format!("http://{}{path}", self.health))
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until /readyz answers `status`; returns its body.
    fn wait_ready(&self, cluster: &Cluster, status: u16) -> String {
        cluster.wait(
            &format!("/readyz {status}"),
            Duration::from_secs(60),
            || {
                let (code, body) = self.get("/readyz");
                if code == status {
                    Ok(body)
                } else {
                    Err(format!("{code}: {body}\nlog:\n{}", self.log()))
                }
            },
        )
    }
}

impl Drop for WebhookProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("webhook log:\n{}", self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// This test's MutatingWebhookConfiguration (cluster-scoped), deleted when dropped.
struct Registration {
    cluster: Cluster,
    name: String,
}

impl Registration {
    /// Registers `url` for CREATE of pods labelled `tally.dev/rightsize: enabled` in
    /// namespaces labelled with this test's namespace, as the chart does (failurePolicy
    /// Ignore, sideEffects None, a short timeout), in AdmissionReview `version`.
    fn create(ns: &TestNamespace, url: &str, version: &str) -> Registration {
        let name = format!("{}-webhook", ns.name);
        let registration = Registration {
            cluster: ns.cluster.clone(),
            name: name.clone(),
        };
        ns.cluster.apply(&format!(
            r#"apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {{name: {name}}}
webhooks:
- name: pods.{name}.tally.dev
  admissionReviewVersions: [{version}]
  sideEffects: None
  failurePolicy: Ignore
  timeoutSeconds: 5
  reinvocationPolicy: Never
  clientConfig: {{url: "{url}"}}
  rules:
  - {{apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [pods], scope: Namespaced}}
  namespaceSelector: {{matchLabels: {{{NAMESPACE_LABEL}: {n}}}}}
  objectSelector: {{matchLabels: {{tally.dev/rightsize: enabled}}}}
"#,
            n = ns.name
        ));
        registration
    }

    fn set_url(&self, url: &str) {
        self.cluster
            .kubectl(&[
                "patch",
                "mutatingwebhookconfiguration",
                &self.name,
                "--type=json",
                "-p",
                &format!(
                    r#"[{{"op": "replace", "path": "/webhooks/0/clientConfig/url", "value": "{url}"}}]"#
                ),
            ])
            .unwrap();
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = self.cluster.kubectl(&[
            "delete",
            "mutatingwebhookconfiguration",
            &self.name,
            "--ignore-not-found",
        ]);
    }
}

/// A Deployment with no replicas yet; `opted_in` puts the opt-in label on its pods.
fn deployment(ns: &TestNamespace, name: &str, opted_in: bool, containers: &str) {
    let n = &ns.name;
    let containers = containers.replace("IMAGE", &ns.cluster.busybox_image);
    let opt_in = if opted_in {
        ", tally.dev/rightsize: enabled"
    } else {
        ""
    };
    ns.cluster.apply(&format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {n}, labels: {{app: {name}}}}}
spec:
  replicas: 0
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}{opt_in}}}}}
    spec:
      terminationGracePeriodSeconds: 0
      containers:
{containers}"#
    ));
}

/// A StatefulSet with no replicas yet, its pods opted in.
fn stateful_set(ns: &TestNamespace, name: &str, containers: &str) {
    let n = &ns.name;
    let containers = containers.replace("IMAGE", &ns.cluster.busybox_image);
    ns.cluster.apply(&format!(
        r#"apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: {name}, namespace: {n}, labels: {{app: {name}}}}}
spec:
  replicas: 0
  serviceName: {name}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}, tally.dev/rightsize: enabled}}}}
    spec:
      terminationGracePeriodSeconds: 0
      containers:
{containers}"#
    ));
}

/// The pods of workload `name` (waits until there is one not in `except`).
fn pods(ns: &TestNamespace, name: &str, except: &[String]) -> Vec<Value> {
    ns.cluster.wait(
        &format!("a new pod of {name}"),
        Duration::from_secs(60),
        || {
            let text = ns.cluster.kubectl(&[
                "-n",
                &ns.name,
                "get",
                "pods",
                "-l",
                &format!("app={name}"),
                "-o",
                "json",
            ])?;
            let list: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
            let new: Vec<Value> = list["items"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|p| {
                    !except.iter().any(|e| p["metadata"]["name"] == e.as_str())
                        && p["metadata"]["deletionTimestamp"].is_null()
                })
                .collect();
            if new.is_empty() {
                Err(format!("no new pod: {text}"))
            } else {
                Ok(new)
            }
        },
    )
}

fn resources(pod: &Value) -> &Value {
    &pod["spec"]["containers"][0]["resources"]
}

fn result_annotation(pod: &Value) -> Option<&str> {
    pod["metadata"]["annotations"]["tally.dev/rightsize-result"].as_str()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_webhook_sets_the_recommended_requests_at_pod_creation() {
    let mut rig = rig("webhook").await;
    let n = rig.ns.name.clone();
    probe_role(&rig.ns, "operator");
    let standard = container(
        "main",
        "{requests: {cpu: '1', memory: 256Mi}, limits: {memory: 512Mi}}",
    );
    let template = serde_json::json!({"requests": {"cpu": "1", "memory": "256Mi"}, "limits": {"memory": "512Mi"}});
    deployment(&rig.ns, "hooked", true, &standard);
    deployment(&rig.ns, "unlabelled", false, &standard);
    deployment(&rig.ns, "uncovered", true, &standard);
    let hook = rig.policy(
        "hook",
        &format!(
            "  mode: auto-apply\n  applyMethod: webhook\n  namespaces: [{n}]\n  \
             workloads: {{names: [hooked, unlabelled, stateful]}}\n  minMemory: 224Mi\n  maxStepPercent: 50\n"
        ),
    );
    let rec = |name| Rec {
        name,
        container: "main",
        cpu: (1.0, 0.1),
        memory: (256 * MI, 200 * MI),
    };
    rig.recommend(
        "run-w",
        &[rec("hooked"), rec("unlabelled"), rec("uncovered")],
    )
    .await;
    // A StatefulSet (its pods' controller directly). The test rig's analysis rows are for
    // Deployments: its recommendation is created as the operator would, and the operator
    // reconciles it like the others.
    stateful_set(&rig.ns, "stateful", &standard);
    rig.cluster().apply(&format!(
        r#"apiVersion: tally.dev/v1alpha1
kind: WorkloadRecommendation
metadata: {{name: statefulset-stateful, namespace: {n}}}
spec:
  target: {{kind: StatefulSet, name: stateful}}
  runId: run-w
  containers:
  - {{name: main, current: {{cpuRequestCores: 1, memoryRequestBytes: {mem}}}, recommended: {{cpuRequestCores: 0.1, memoryRequestBytes: {rec}}}}}
  confidence: 0.9
  why: p95 CPU and peak memory over 14 days
  savingsMonthlyUsd: 12.5
"#,
        mem = 256 * MI,
        rec = 200 * MI
    ));
    let template_before = rig
        .kubectl(&[
            "get",
            "deployment",
            "hooked",
            "-o",
            "jsonpath={.spec.template}",
        ])
        .unwrap();
    // The operator approves them for the webhook (Approved, or Applied once it counts the
    // webhook as applying them) and leaves the Deployments alone.
    for wr in [
        "deployment-hooked",
        "deployment-unlabelled",
        "statefulset-stateful",
    ] {
        rig.cluster().wait(
            &format!("{wr} approved for the webhook"),
            Duration::from_secs(90),
            || {
                let phase = rig.kubectl(&[
                    "get",
                    "workloadrecommendations.tally.dev",
                    wr,
                    "-o",
                    "jsonpath={.status.phase}",
                ])?;
                if phase == "Approved" || phase == "Applied" {
                    Ok(())
                } else {
                    Err(phase)
                }
            },
        );
    }
    rig.wait_phase("uncovered", "Pending");

    let webhook = WebhookProcess::start(&rig.ns, rig._dir.path(), &format!("{n}-webhook"));
    let registration = Registration::create(&rig.ns, &webhook.url, "v1");
    assert_eq!(webhook.wait_ready(rig.cluster(), 200), "ok");

    for name in [
        "deployment/hooked",
        "deployment/unlabelled",
        "deployment/uncovered",
        "statefulset/stateful",
    ] {
        rig.kubectl(&["scale", name, "--replicas=1"]).unwrap();
    }
    // Opted in, approved under a webhook policy: the recommendation within the policy's step
    // (1 core may fall by 50 % to 500m, not to 100m) and bounds (200Mi is below 224Mi).
    let hooked = pods(&rig.ns, "hooked", &[]);
    for pod in &hooked {
        assert_eq!(
            resources(pod),
            &serde_json::json!({"requests": {"cpu": "500m", "memory": "224Mi"}, "limits": {"memory": "512Mi"}}),
            "{pod}"
        );
        let said = result_annotation(pod).unwrap_or_default();
        assert!(
            said.contains(&hook) && said.contains("deployment-hooked") && said.contains("run-w"),
            "{said}"
        );
    }
    // The same for the StatefulSet's pod.
    for pod in pods(&rig.ns, "stateful", &[]) {
        assert_eq!(
            resources(&pod),
            &serde_json::json!({"requests": {"cpu": "500m", "memory": "224Mi"}, "limits": {"memory": "512Mi"}}),
            "{pod}"
        );
        let said = result_annotation(&pod).unwrap_or_default();
        assert!(said.contains("statefulset-stateful"), "{said}");
    }
    // The workload's spec is never written.
    assert_eq!(
        rig.kubectl(&[
            "get",
            "deployment",
            "hooked",
            "-o",
            "jsonpath={.spec.template}"
        ])
        .unwrap(),
        template_before
    );
    // No opt-in label: the API server does not even ask.
    for pod in pods(&rig.ns, "unlabelled", &[]) {
        assert_eq!(resources(&pod), &template, "{pod}");
        assert_eq!(result_annotation(&pod), None, "{pod}");
    }
    // Opted in, but no Policy covers the workload: unchanged, and the pod says why.
    for pod in pods(&rig.ns, "uncovered", &[]) {
        assert_eq!(resources(&pod), &template, "{pod}");
        let said = result_annotation(&pod).unwrap_or_default();
        assert!(
            said.starts_with("unchanged:") && said.contains("deployment-uncovered is Pending"),
            "{said}"
        );
    }
    let (_, metrics) = webhook.get("/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("tally_operator_webhook_requests_total{result=\"patched\"}")),
        "{metrics}"
    );

    // The webhook is gone: pods are still created (failurePolicy Ignore), unchanged.
    drop(webhook);
    let old: Vec<String> = hooked
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    for name in &old {
        rig.kubectl(&["delete", "pod", name, "--wait=false"])
            .unwrap();
    }
    for pod in pods(&rig.ns, "hooked", &old) {
        assert_eq!(resources(&pod), &template, "{pod}");
        assert_eq!(result_annotation(&pod), None, "{pod}");
    }
    drop(registration);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_health_check_reports_a_webhook_the_api_server_cannot_reach() {
    let cluster = cluster();
    let mut ns = TestNamespace::create(&cluster, "webhook-health");
    ns.agent_account(
        include_str!("../../agents/operator/rbac.yaml"),
        "tally-operator",
        "operator",
    );
    probe_role(&ns, "operator");
    let dir = tempfile::tempdir().unwrap();
    ns.token_file(dir.path(), "operator");
    let webhook = WebhookProcess::start(&ns, dir.path(), &format!("{}-webhook", ns.name));
    // Not registered yet: the probe pod comes back unannotated.
    let body = webhook.wait_ready(&cluster, 503);
    assert!(body.contains("admission webhook:"), "{body}");

    // Registered (AdmissionReview v1beta1 this time) without a caBundle: the webhook writes
    // its CA in, the probe passes.
    let registration = Registration::create(&ns, &webhook.url, "v1beta1");
    assert_eq!(webhook.wait_ready(&cluster, 200), "ok");
    let bundle = cluster
        .kubectl(&[
            "get",
            "mutatingwebhookconfiguration",
            &registration.name,
            "-o",
            "jsonpath={.webhooks[0].clientConfig.caBundle}",
        ])
        .unwrap();
    let ca = String::from_utf8(tally_e2e::cluster::decode_base64(&bundle)).unwrap();
    assert!(ca.contains("BEGIN CERTIFICATE"), "{bundle}");
    let (_, metrics) = webhook.get("/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l == "tally_operator_webhook_healthy 1"),
        "{metrics}"
    );

    // The configuration points at a port where nothing listens: not ready, with the reason,
    // the metric and a line in the log.
    let (_, ip) = control_plane();
    registration.set_url(&format!("https://{ip}:1/mutate-pods"));
    let body = webhook.wait_ready(&cluster, 503);
    assert!(
        body.contains("admission webhook:") && body.contains("did not reach the webhook"),
        "{body}"
    );
    let (_, metrics) = webhook.get("/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l == "tally_operator_webhook_healthy 0"),
        "{metrics}"
    );
    assert!(
        webhook
            .log()
            .contains("admission webhook health check failed"),
        "{}",
        webhook.log()
    );

    // Pointed back at the webhook: ready again.
    registration.set_url(&webhook.url);
    assert_eq!(webhook.wait_ready(&cluster, 200), "ok");
}
