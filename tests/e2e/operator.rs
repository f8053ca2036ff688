//! The write operator against the real Kubernetes cluster: the real `tally-agent operator`
//! binary under exactly the ClusterRole kept in `agents/operator/rbac.yaml` (bound to a
//! ServiceAccount of the test, whose token is all the operator has), reading recommendations
//! from the real `tally` binary over mutual TLS (a client certificate from the appliance's
//! bootstrap endpoint) and appending its actions to the appliance's `actions` table. The
//! CRDs are the YAML `tally-agent crds` prints, installed as they are.
//!
//! Resources are named fully qualified (`workloadrecommendations.tally.dev`): other tests
//! may install CRDs of the same names under other groups at the same time.
//!
//! The test plays the analysis: it writes `recommendations` rows with Flight `DoPut`, as
//! the analysis crate does.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use arrow::array::{
    ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use serde_json::Value;
use tally_e2e::Server;
use tally_e2e::cluster::{
    Cluster, TestNamespace, cluster, free_address, start_tally_at, tally_agent_bin,
};
use tally_wire::bootstrap::request_certificate;
use tally_wire::{IngestClient, Table};

pub(crate) const MI: i64 = 1 << 20;

/// The CRDs, installed once per test process from `tally-agent crds` (cluster-scoped and
/// shared by every test; they are never deleted, so parallel tests keep them).
pub(crate) fn install_crds(cluster: &Cluster) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let out = Command::new(tally_agent_bin())
            .arg("crds")
            .output()
            .expect("run tally-agent crds");
        assert!(
            out.status.success(),
            "tally-agent crds: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let yaml = String::from_utf8(out.stdout).expect("YAML is text");
        assert_eq!(
            yaml.matches("kind: CustomResourceDefinition").count(),
            3,
            "{yaml}"
        );
        cluster.apply(&yaml);
        for crd in [
            "workloadrecommendations.tally.dev",
            "nodegrouprecommendations.tally.dev",
            "policies.tally.dev",
        ] {
            cluster
                .kubectl(&[
                    "wait",
                    "--for=condition=established",
                    "--timeout=60s",
                    &format!("crd/{crd}"),
                ])
                .unwrap_or_else(|e| panic!("{e}"));
        }
    });
}

/// A `tally-agent operator` process, killed when dropped.
pub(crate) struct Operator {
    pub(crate) child: Child,
    pub(crate) health_url: String,
    pub(crate) log: PathBuf,
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A namespace with the operator's and the appliance's ServiceAccounts and RBAC, a running
/// appliance and a running operator.
pub(crate) struct Rig {
    // Dropped in this order: the operator stops first, then the finalizers are cleared
    // (see Drop), then the appliance, then the namespace.
    pub(crate) operator: Option<Operator>,
    pub(crate) appliance: Server,
    pub(crate) ingest: IngestClient,
    // Holds the tokens, kubeconfig, CA and the appliance's data while the test runs.
    pub(crate) _dir: tempfile::TempDir,
    pub(crate) ns: TestNamespace,
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(operator) = self.operator.take() {
            if std::thread::panicking() {
                eprintln!(
                    "operator log:\n{}",
                    std::fs::read_to_string(&operator.log).unwrap_or_default()
                );
            }
            drop(operator);
        }
        // With the operator gone nobody would remove its finalizer: clear it so the
        // namespace can be deleted.
        let n = &self.ns.name;
        if let Ok(names) = self.ns.cluster.kubectl(&[
            "-n",
            n,
            "get",
            "workloadrecommendations.tally.dev",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ]) {
            for name in names.split_whitespace() {
                let _ = self.ns.cluster.kubectl(&[
                    "-n",
                    n,
                    "patch",
                    "workloadrecommendations.tally.dev",
                    name,
                    "--type=merge",
                    "-p",
                    r#"{"metadata":{"finalizers":null}}"#,
                ]);
            }
        }
    }
}

/// How `tally serve` was started, to start it again on the same data and ports.
pub(crate) struct ApplianceStart {
    data: std::path::PathBuf,
    flight: String,
    http: String,
    args: Vec<String>,
}

impl ApplianceStart {
    pub(crate) fn start(&self) -> Server {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        start_tally_at(&self.data, &self.flight, &self.http, &args).unwrap()
    }
}

/// The rig with the operator polling every second.
pub(crate) async fn rig(prefix: &str) -> Rig {
    rig_with(prefix, "1s", &[]).await.0
}

/// The real appliance and operator in a namespace of their own: the operator reconciles every
/// `poll_interval`; `extra` are more flags of `tally serve`. Also answers how the appliance
/// was started (to restart it on the same data and ports) and the test's own client
/// certificate.
pub(crate) async fn rig_with(
    prefix: &str,
    poll_interval: &str,
    extra: &[&str],
) -> (Rig, ApplianceStart, tally_wire::ClientTls) {
    let cluster = cluster();
    install_crds(&cluster);
    let mut ns = TestNamespace::create(&cluster, prefix);
    let n = ns.name.clone();
    // The operator's ClusterRole exactly as the repository keeps it, under a name of this test.
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
            // The test is the analysis here: no periodic run writes rows of its own.
            "--analysis-interval",
            "0",
            // The CA lives in this Secret: a restarted appliance keeps it, so the operator's
            // certificate stays valid.
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

    // The test writes recommendations as the analysis would, with a certificate of its own.
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
        .args(["--listen", "127.0.0.1:0", "--poll-interval", poll_interval])
        // Tests run side by side, each with its own operator: each serves its namespace.
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

/// One container's recommendation row.
pub(crate) struct Rec<'a> {
    pub(crate) name: &'a str,
    pub(crate) container: &'a str,
    pub(crate) cpu: (f64, f64),
    pub(crate) memory: (i64, i64),
}

impl Rig {
    pub(crate) fn cluster(&self) -> &Cluster {
        &self.ns.cluster
    }

    pub(crate) fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["-n", self.ns.name.as_str()];
        all.extend_from_slice(args);
        self.cluster().kubectl(&all)
    }

    /// Writes one analysis run's rightsizing rows for Deployments of this namespace.
    pub(crate) async fn recommend(&mut self, run_id: &str, recs: &[Rec<'_>]) {
        let n = recs.len();
        let now = chrono_now_ms();
        let text = |v: Vec<String>| Arc::new(StringArray::from(v)) as ArrayRef;
        let f = |v: Vec<Option<f64>>| Arc::new(Float64Array::from(v)) as ArrayRef;
        let i = |v: Vec<Option<i64>>| Arc::new(Int64Array::from(v)) as ArrayRef;
        let ns = self.ns.name.clone();
        let batch = RecordBatch::try_new(
            Table::Recommendations.schema(),
            vec![
                Arc::new(TimestampMillisecondArray::from(vec![now; n]).with_timezone("UTC")),
                text(vec![run_id.to_string(); n]),
                text(vec!["rightsizing".into(); n]),
                text(vec![ns; n]),
                text(vec!["Deployment".into(); n]),
                text(recs.iter().map(|r| r.name.to_string()).collect()),
                Arc::new(StringArray::from(
                    recs.iter().map(|r| Some(r.container)).collect::<Vec<_>>(),
                )),
                f(recs.iter().map(|r| Some(r.cpu.0)).collect()),
                f(recs.iter().map(|r| Some(r.cpu.1)).collect()),
                f(vec![None; n]),
                f(vec![None; n]),
                i(recs.iter().map(|r| Some(r.memory.0)).collect()),
                i(recs.iter().map(|r| Some(r.memory.1)).collect()),
                i(vec![None; n]),
                i(vec![None; n]),
                i(vec![None; n]),
                i(vec![None; n]),
                f(vec![Some(0.9); n]),
                text(vec!["p95 CPU and peak memory over 14 days".into(); n]),
                f(vec![Some(12.5); n]),
                i(vec![None; n]),
                i(vec![None; n]),
                f(vec![None; n]),
                f(vec![None; n]),
                Arc::new(StringArray::from(vec![None::<&str>; n])),
                Arc::new(StringArray::from(vec![None::<&str>; n])),
            ],
        )
        .expect("recommendations batch");
        self.ingest
            .write(Table::Recommendations, vec![batch])
            .await
            .expect("write recommendations");
    }

    /// A Deployment with no replicas (the operator changes its pod template; no pod has to
    /// run for that, which keeps the shared 2-core test machine free).
    pub(crate) fn deployment(&self, name: &str, labels: &str, containers: &str) {
        let n = &self.ns.name;
        let image = &self.cluster().busybox_image;
        let containers = containers.replace("IMAGE", image);
        self.cluster().apply(&format!(
            r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {n}, labels: {{app: {name}{labels}}}}}
spec:
  replicas: 0
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
{containers}"#
        ));
    }

    pub(crate) fn policy(&mut self, name: &str, spec: &str) -> String {
        let full = format!("{}-{name}", self.ns.name);
        self.ns.owns_cluster_object("policies.tally.dev", &full);
        self.cluster().apply(&format!(
            "apiVersion: tally.dev/v1alpha1\nkind: Policy\nmetadata: {{name: {full}}}\nspec:\n{spec}"
        ));
        full
    }

    /// `.spec` of a Deployment as JSON text (what "byte for byte" is checked on).
    pub(crate) fn spec_json(&self, name: &str) -> String {
        self.kubectl(&["get", "deployment", name, "-o", "jsonpath={.spec}"])
            .unwrap()
    }

    pub(crate) fn generation(&self, name: &str) -> String {
        self.kubectl(&[
            "get",
            "deployment",
            name,
            "-o",
            "jsonpath={.metadata.generation}",
        ])
        .unwrap()
    }

    pub(crate) fn resources(&self, name: &str, container: &str) -> Value {
        let text = self
            .kubectl(&[
                "get",
                "deployment",
                name,
                "-o",
                &format!("jsonpath={{.spec.template.spec.containers[?(@.name==\"{container}\")].resources}}"),
            ])
            .unwrap();
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// Waits for the WorkloadRecommendation of Deployment `name` to reach `phase`, returns it.
    pub(crate) fn wait_phase(&self, name: &str, phase: &str) -> Value {
        let wr = format!("deployment-{name}");
        let started = Instant::now();
        let found = self.cluster().wait(
            &format!("{wr} in phase {phase}"),
            Duration::from_secs(90),
            || {
                let text = self.kubectl(&[
                    "get",
                    "workloadrecommendations.tally.dev",
                    &wr,
                    "-o",
                    "json",
                ])?;
                let value: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
                if value["status"]["phase"] == phase {
                    Ok(value)
                } else {
                    Err(format!("status is {}", value["status"]))
                }
            },
        );
        eprintln!("{wr}: {phase} after {:?}", started.elapsed());
        found
    }

    pub(crate) async fn rows(&self, sql: &str) -> Vec<Vec<Value>> {
        tally_e2e::sql_rows(&self.appliance.http_url, sql).await
    }

    /// The `actions` rows of Deployment `name`: (operation, result, actor, policy, before, after).
    pub(crate) async fn actions(&self, name: &str) -> Vec<Vec<Value>> {
        self.rows(&format!(
            "SELECT operation, result, actor, policy, before, after FROM actions \
             WHERE namespace = '{}' AND target_name = '{name}' ORDER BY time",
            self.ns.name
        ))
        .await
    }

    pub(crate) async fn metric(&self, name: &str) -> f64 {
        let url = &self.operator.as_ref().expect("operator").health_url;
        tally_e2e::prometheus_metrics(url)
            .await
            .get(name)
            .copied()
            .unwrap_or(0.0)
    }

    /// Waits until the operator completed `n` more reconcile passes.
    pub(crate) async fn passes(&self, n: f64) {
        let start = self.metric("tally_operator_passes_total").await;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.metric("tally_operator_passes_total").await < start + n {
            assert!(Instant::now() < deadline, "the operator stopped passing");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

pub(crate) fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

pub(crate) fn container(name: &str, resources: &str) -> String {
    format!(
        "      - name: {name}\n        image: IMAGE\n        imagePullPolicy: Never\n        command: [sleep, '3600']\n        resources: {resources}\n"
    )
}

/// `HH:00` of the UTC hour `offset` hours from now.
fn hour_from_now(offset: i64) -> String {
    let hour = (chrono_now_ms() / 3_600_000 + offset).rem_euclid(24);
    format!("{hour:02}:00")
}

#[tokio::test(flavor = "multi_thread")]
async fn policies_decide_what_the_operator_changes() {
    let mut rig = rig("operator").await;
    let n = rig.ns.name.clone();
    let standard = container(
        "main",
        "{requests: {cpu: '1', memory: 256Mi}, limits: {memory: 512Mi}}",
    );
    for name in ["audited", "auto", "uncovered", "later", "guarded", "paired"] {
        rig.deployment(name, "", &standard);
    }

    // An invalid policy the API server refuses outright (OpenAPI schema): the field is named.
    let refused = rig
        .cluster()
        .kubectl_stdin(
            &["apply", "-f", "-"],
            Some(&format!(
                "apiVersion: tally.dev/v1alpha1\nkind: Policy\nmetadata: {{name: {n}-refused}}\nspec:\n  mode: auto-apply\n  maxStepPercent: 500\n  minCpu: lots\n"
            )),
        )
        .expect_err("the API server refuses maxStepPercent 500");
    assert!(refused.contains("spec.maxStepPercent"), "{refused}");
    assert!(refused.contains("spec.minCpu"), "{refused}");

    rig.policy(
        "audit",
        &format!("  mode: audit-only\n  namespaces: [{n}]\n  workloads: {{names: [audited]}}\n"),
    );
    let auto = rig.policy(
        "auto",
        &format!(
            "  mode: auto-apply\n  namespaces: [{n}]\n  workloads: {{kinds: [Deployment], names: [auto]}}\n  \
             minCpu: 100m\n  maxCpu: '2'\n  minMemory: 224Mi\n  maxMemory: 1Gi\n  maxStepPercent: 50\n"
        ),
    );
    // Auto-apply, but only in a one-hour window that starts two hours from now.
    let later = rig.policy(
        "later",
        &format!(
            "  mode: auto-apply\n  namespaces: [{n}]\n  workloads: {{names: [later]}}\n  \
             windows: [{{start: '{}', end: '{}', timeZone: UTC}}]\n",
            hour_from_now(2),
            hour_from_now(3)
        ),
    );
    // Two auto-apply policies cover `paired`: both must hold at once.
    let pair_a = rig.policy(
        "pair-a",
        &format!(
            "  mode: auto-apply\n  namespaces: [{n}]\n  workloads: {{names: [paired]}}\n  \
             minCpu: 100m\n  maxStepPercent: 80\n"
        ),
    );
    let pair_b = rig.policy(
        "pair-b",
        &format!(
            "  mode: auto-apply\n  namespaces: [{n}]\n  workloads: {{names: [paired]}}\n  \
             minMemory: 240Mi\n  maxStepPercent: 20\n"
        ),
    );
    // Valid for the schema, invalid for the operator: it covers nothing.
    let invalid = rig.policy(
        "invalid",
        &format!(
            "  mode: auto-apply\n  namespaces: [{n}]\n  workloads: {{names: [guarded]}}\n  minCpu: '2'\n  maxCpu: 500m\n"
        ),
    );

    let before: Vec<(String, String, String)> =
        ["audited", "auto", "uncovered", "later", "guarded"]
            .iter()
            .map(|d| (d.to_string(), rig.spec_json(d), rig.generation(d)))
            .collect();
    let rec = |name| Rec {
        name,
        container: "main",
        cpu: (1.0, 0.1),
        memory: (256 * MI, 200 * MI),
    };
    rig.recommend(
        "run-1",
        &[
            rec("audited"),
            rec("auto"),
            rec("uncovered"),
            rec("later"),
            rec("guarded"),
            rec("paired"),
        ],
    )
    .await;

    // Both policies hold: pair-b's smaller step (20 %: 1 core falls to 800m, not to 100m) and
    // its memory floor (240Mi, above the recommended 200Mi), with pair-a's CPU floor.
    let paired = rig.wait_phase("paired", "Applied");
    let by = paired["status"]["policy"].as_str().unwrap_or_default();
    assert!(by.contains(&pair_a) && by.contains(&pair_b), "{paired}");
    assert_eq!(
        rig.resources("paired", "main"),
        serde_json::json!({"requests": {"cpu": "800m", "memory": "240Mi"}, "limits": {"memory": "512Mi"}})
    );

    // Auto-apply: the requests change, held by the maximum step (1 core may fall by 50 % to
    // 500m, not to the recommended 100m) and by the bounds (200Mi is below minMemory 224Mi).
    let applied = rig.wait_phase("auto", "Applied");
    assert_eq!(applied["status"]["policy"], auto.as_str());
    assert_eq!(
        rig.resources("auto", "main"),
        serde_json::json!({"requests": {"cpu": "500m", "memory": "224Mi"}, "limits": {"memory": "512Mi"}})
    );
    // The recommendation was server-side applied by the operator's own field manager, with
    // the printer columns' fields.
    let managers: Vec<String> = applied["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["manager"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        managers.iter().any(|m| m == "tally-operator"),
        "{managers:?}"
    );
    let table = rig
        .kubectl(&["get", "workloadrecommendations.tally.dev"])
        .unwrap();
    assert!(
        table.contains("TARGET") && table.contains("PHASE") && table.contains("SAVINGS"),
        "{table}"
    );
    assert!(
        table.contains("auto") && table.contains("Applied") && table.contains("12.5"),
        "{table}"
    );

    // ... and the action is in the appliance's audit log, with before and after.
    let log = rig.actions("auto").await;
    let apply: Vec<_> = log.iter().filter(|r| r[0] == "apply").collect();
    assert_eq!(apply.len(), 1, "{log:?}");
    assert_eq!(apply[0][1], "applied");
    assert_eq!(apply[0][3], auto.as_str());
    assert!(
        apply[0][2].as_str().unwrap().contains(&auto),
        "{:?}",
        apply[0]
    );
    let after: Value = serde_json::from_str(apply[0][5].as_str().unwrap()).unwrap();
    assert_eq!(after["main"]["requests"]["cpu"], "500m");
    let before_json: Value = serde_json::from_str(apply[0][4].as_str().unwrap()).unwrap();
    assert_eq!(before_json["main"]["requests"]["cpu"], "1");

    // Audit-only: the recommendation is there, the Deployment is not touched.
    let audited = rig.wait_phase("audited", "Pending");
    assert!(
        audited["status"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("audit-only"),
        "{audited}"
    );
    // No policy: never touched, whatever the appliance sends.
    let uncovered = rig.wait_phase("uncovered", "Pending");
    assert!(
        uncovered["status"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("no Policy covers"),
        "{uncovered}"
    );
    // Outside its window: approved, waiting, not touched.
    let waiting = rig.wait_phase("later", "Approved");
    assert_eq!(waiting["status"]["policy"], later.as_str());
    // The invalid policy is marked with the field named and covers nothing.
    let status = rig.cluster().wait(
        "the invalid policy's status",
        Duration::from_secs(60),
        || {
            let text = rig.cluster().kubectl(&[
                "get",
                "policies.tally.dev",
                &invalid,
                "-o",
                "jsonpath={.status}",
            ])?;
            let v: Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
            if v["valid"] == false {
                Ok(v)
            } else {
                Err(text)
            }
        },
    );
    assert_eq!(
        status["errors"],
        serde_json::json!(["spec.maxCpu: must be >= spec.minCpu"])
    );
    rig.wait_phase("guarded", "Pending");

    // Several more passes change nothing on any of them.
    rig.passes(3.0).await;
    for (name, spec, generation) in &before {
        if name == "auto" {
            continue;
        }
        assert_eq!(&rig.spec_json(name), spec, "{name} was touched");
        assert_eq!(&rig.generation(name), generation, "{name} was touched");
    }
    for name in ["audited", "uncovered", "later", "guarded"] {
        let log = rig.actions(name).await;
        assert!(
            log.iter().all(|r| r[0] != "apply" && r[1] != "applied"),
            "{name}: {log:?}"
        );
        assert_eq!(
            log.len(),
            1,
            "each decision is logged once: {name}: {log:?}"
        );
    }
    assert_eq!(
        rig.actions("auto").await.len(),
        1,
        "applied once, logged once"
    );

    // When the window opens (the policy now allows this hour), the change happens.
    rig.cluster().apply(&format!(
        "apiVersion: tally.dev/v1alpha1\nkind: Policy\nmetadata: {{name: {later}}}\nspec:\n  mode: auto-apply\n  \
         namespaces: [{n}]\n  workloads: {{names: [later]}}\n  windows: [{{start: '{}', end: '{}', timeZone: UTC}}]\n",
        hour_from_now(0),
        hour_from_now(2)
    ));
    rig.wait_phase("later", "Applied");
    assert_eq!(
        rig.resources("later", "main"),
        serde_json::json!({"requests": {"cpu": "100m", "memory": "200Mi"}, "limits": {"memory": "512Mi"}})
    );
    let operator = rig.operator.as_ref().unwrap();
    let ready = reqwest::get(format!("{}/readyz", operator.health_url))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn rollback_restores_the_previous_spec_byte_for_byte() {
    let mut rig = rig("rollback").await;
    let n = rig.ns.name.clone();
    // Two containers; the sidecar has resources the operator never sets (ephemeral storage)
    // and CPU written as a decimal (the API server stores it in its canonical form).
    let containers = container(
        "main",
        "{requests: {cpu: 750m, memory: 300Mi, ephemeral-storage: 1Gi}, limits: {cpu: '1', memory: 600Mi}}",
    ) + &container("side", "{requests: {cpu: '0.2', memory: 64Mi}}");
    rig.deployment("rejected", ", tier: web", &containers);
    rig.deployment("deleted", ", tier: web", &containers);
    rig.policy(
        "web",
        &format!(
            "  mode: auto-apply\n  namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: {n}}}}}\n  \
             workloads: {{selector: {{matchLabels: {{tier: web}}}}}}\n"
        ),
    );
    // Kubernetes 1.20 does not label namespaces with their name: the test does.
    rig.cluster()
        .kubectl(&[
            "label",
            "namespace",
            &n,
            &format!("kubernetes.io/metadata.name={n}"),
            "--overwrite",
        ])
        .unwrap();
    let original = rig.spec_json("rejected");
    let original_deleted = rig.spec_json("deleted");
    let recs = |name| {
        vec![
            Rec {
                name,
                container: "main",
                cpu: (0.75, 0.3),
                memory: (300 * MI, 150 * MI),
            },
            Rec {
                name,
                container: "side",
                cpu: (0.2, 0.05),
                memory: (64 * MI, 32 * MI),
            },
        ]
    };
    let mut all = recs("rejected");
    all.extend(recs("deleted"));
    rig.recommend("run-7", &all).await;

    for name in ["rejected", "deleted"] {
        rig.wait_phase(name, "Applied");
        assert_eq!(
            rig.resources(name, "main"),
            serde_json::json!({"requests": {"cpu": "300m", "memory": "150Mi", "ephemeral-storage": "1Gi"}, "limits": {"cpu": "1", "memory": "600Mi"}})
        );
        assert_eq!(
            rig.resources(name, "side"),
            serde_json::json!({"requests": {"cpu": "50m", "memory": "32Mi"}})
        );
        assert_ne!(rig.spec_json(name), original);
        assert_ne!(rig.spec_json(name), original_deleted);
    }

    // Rejected after it was applied: the previous spec comes back exactly.
    rig.kubectl(&[
        "patch",
        "workloadrecommendations.tally.dev",
        "deployment-rejected",
        "--type=merge",
        "-p",
        r#"{"spec":{"approval":"Rejected"}}"#,
    ])
    .unwrap();
    rig.wait_phase("rejected", "RolledBack");
    assert_eq!(rig.spec_json("rejected"), original);

    // Deleted: the finalizer restores the previous spec before the recommendation goes ...
    rig.kubectl(&[
        "delete",
        "workloadrecommendations.tally.dev",
        "deployment-deleted",
        "--wait=true",
        "--timeout=90s",
    ])
    .unwrap();
    assert_eq!(rig.spec_json("deleted"), original_deleted);
    // ... and it is not created again for the same run, however often the operator passes.
    rig.passes(3.0).await;
    let left = rig
        .kubectl(&[
            "get",
            "workloadrecommendations.tally.dev",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ])
        .unwrap();
    assert_eq!(left, "deployment-rejected");
    assert_eq!(rig.spec_json("deleted"), original_deleted);
    assert_eq!(rig.spec_json("rejected"), original);

    // Rollback and dismissal are written in one batch (same time): compare them sorted.
    let mut log: Vec<(String, String)> = rig
        .actions("deleted")
        .await
        .iter()
        .map(|r| {
            (
                r[0].as_str().unwrap().to_string(),
                r[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    log.sort();
    assert_eq!(
        log,
        [
            ("apply".to_string(), "applied".to_string()),
            ("dismiss".into(), "deleted".into()),
            ("rollback".into(), "rolled-back".into()),
        ]
    );
    let log = rig.actions("rejected").await;
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[1][0], "rollback");
    assert!(log[1][2].as_str().unwrap().contains("rejected"), "{log:?}");
    assert!(rig.metric("tally_operator_rollbacks_total").await >= 2.0);
}

/// Rows of `table` from JSON lines (columns not named are null).
pub(crate) fn json_rows(table: Table, lines: &[String]) -> RecordBatch {
    let mut decoder = arrow::json::ReaderBuilder::new(table.schema())
        .build_decoder()
        .expect("decoder");
    decoder
        .decode(lines.join("\n").as_bytes())
        .expect("JSON rows");
    decoder.flush().expect("rows").expect("some rows")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consolidation_plan_becomes_a_node_group_recommendation() {
    let mut rig = rig("nodegroups").await;
    let group = format!("{}-pool", rig.ns.name);
    // Named nodegroup-<group> (the namespace's name is already a valid Kubernetes name).
    let object = format!("nodegroup-{group}");
    rig.ns
        .owns_cluster_object("nodegrouprecommendations.tally.dev", &object);
    let now = chrono_now_ms();
    // Times as milliseconds since the epoch (the JSON decoder reads numbers in the column's unit).
    // The nodes as the collector reports them, a minute before the plan.
    let nodes: Vec<String> = ["n-a", "n-b", "n-c"]
        .iter()
        .map(|node| {
            format!(
                r#"{{"time":{},"node":"{node}","node_group":"{group}","cpu_capacity_cores":4.0,"memory_capacity_bytes":17179869184,"cpu_allocatable_cores":3.9,"memory_allocatable_bytes":16106127360}}"#,
                now - 60_000
            )
        })
        .collect();
    // The plan: the group 3 → 2, n-a can go, n-b and n-c cannot.
    let plan = |kind: &str, name: &str, current: i64, target: i64, why: &str| {
        format!(
            r#"{{"time":{},"run_id":"run-ng","kind":"consolidation","namespace":"","target_kind":"{kind}","target_name":"{name}","current_replicas":{current},"recommended_replicas":{target},"confidence":1.0,"why":"{why}","savings_monthly_usd":{}}}"#,
            now,
            if target < current { 140.16 } else { 0.0 }
        )
    };
    let recommendations = vec![
        plan("NodeGroup", &group, 3, 2, "3 → 2 node(s): n-a can go"),
        plan("Node", "n-a", 1, 0, "its pods fit on n-b and n-c"),
        plan("Node", "n-b", 1, 1, "holds a pod with local storage"),
        plan("Node", "n-c", 1, 1, "the others cannot hold its pods"),
    ];
    rig.ingest
        .write(Table::NodeUsage, vec![json_rows(Table::NodeUsage, &nodes)])
        .await
        .expect("write nodes");
    rig.ingest
        .write(
            Table::Recommendations,
            vec![json_rows(Table::Recommendations, &recommendations)],
        )
        .await
        .expect("write the plan");

    // The operator materialises it (server-side apply, cluster-scoped), Pending with why.
    let found: Value = rig.cluster().wait(
        "the NodeGroupRecommendation",
        Duration::from_secs(60),
        || {
            let text = rig.cluster().kubectl(&[
                "get",
                "nodegrouprecommendations.tally.dev",
                &object,
                "-o",
                "json",
            ])?;
            let found: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
            if found["status"]["phase"] == "Pending" {
                Ok(found)
            } else {
                Err(text)
            }
        },
    );
    let spec = &found["spec"];
    assert_eq!(spec["nodeGroup"], group.as_str(), "{found}");
    assert_eq!(spec["action"], "consolidate");
    assert_eq!(spec["runId"], "run-ng");
    assert_eq!(spec["currentNodes"], 3);
    assert_eq!(spec["targetNodes"], 2);
    assert_eq!(spec["nodesToRemove"], serde_json::json!(["n-a"]));
    assert_eq!(spec["savingsMonthlyUsd"], 140.16);
    assert!(
        found["status"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("does not cordon or drain")),
        "{found}"
    );
    let managers = found["metadata"]["managedFields"].to_string();
    assert!(managers.contains("tally-operator"), "{managers}");
}
