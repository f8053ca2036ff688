//! The collector agent against the real Kubernetes cluster: the real `tally-agent collector`
//! binary under exactly the ClusterRole kept in `agents/collector/rbac.yaml` (a
//! ServiceAccount of the test bound to it), writing to the real `tally` binary through
//! mutual TLS with a certificate it obtained from the appliance's bootstrap endpoint (its
//! ServiceAccount token checked with a real TokenReview). Pods really run, spin against
//! their CPU limit and are really OOM-killed by the kernel.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use tally_e2e::Server;
use tally_e2e::cluster::{
    Cluster, Collector, TestNamespace, cluster, free_address, start_tally_at,
};
use tally_wire::bootstrap::{BootstrapError, request_certificate};
use tally_wire::{ClientTls, IngestClient, Table};

/// A namespace with the collector's and the appliance's ServiceAccounts and their RBAC.
struct Rig {
    ns: TestNamespace,
    dir: tempfile::TempDir,
    /// The collector's kubeconfig: its ServiceAccount token, nothing else.
    collector_kubeconfig: PathBuf,
    collector_token_file: PathBuf,
    appliance_token_file: PathBuf,
    api_ca_file: PathBuf,
}

fn rig(prefix: &str) -> Rig {
    let cluster = cluster();
    let mut ns = TestNamespace::create(&cluster, prefix);
    // The collector's ClusterRole exactly as the repository keeps it, under a name of this test.
    ns.agent_account(
        include_str!("../../agents/collector/rbac.yaml"),
        "tally-collector",
        "collector",
    );
    ns.appliance_account();
    ns.service_accounts(&["stranger"]);
    let dir = tempfile::tempdir().unwrap();
    let collector_token_file = ns.token_file(dir.path(), "collector");
    let appliance_token_file = ns.token_file(dir.path(), "appliance");
    let collector_token = std::fs::read_to_string(&collector_token_file).unwrap();
    let api_ca_file = dir.path().join("api-ca.crt");
    std::fs::write(&api_ca_file, &cluster.ca_pem).unwrap();
    let collector_kubeconfig =
        cluster.kubeconfig_for_token(dir.path(), "collector", &collector_token);
    Rig {
        ns,
        dir,
        collector_kubeconfig,
        collector_token_file,
        appliance_token_file,
        api_ca_file,
    }
}

/// Addresses of an appliance that can be restarted in place.
struct ApplianceAt {
    data_dir: PathBuf,
    flight: String,
    http: String,
    bootstrap: String,
    args: Vec<String>,
}

impl Rig {
    fn cluster(&self) -> &Cluster {
        &self.ns.cluster
    }

    /// An appliance with the certificate bootstrap on, allowing the collector's account.
    fn appliance(&self, extra: &[&str]) -> ApplianceAt {
        let mut args: Vec<String> = vec![
            "--bootstrap-allow".into(),
            format!("{}:collector", self.ns.name),
            "--kube-api-server".into(),
            self.cluster().api_server.clone(),
            "--kube-ca".into(),
            self.api_ca_file.display().to_string(),
            "--kube-token-file".into(),
            self.appliance_token_file.display().to_string(),
            "--server-name".into(),
            "127.0.0.1".into(),
            "--flush-interval".into(),
            "1s".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let bootstrap = free_address();
        args.extend(["--bootstrap-listen".to_string(), bootstrap.clone()]);
        ApplianceAt {
            data_dir: self.dir.path().join("data"),
            flight: free_address(),
            http: free_address(),
            bootstrap,
            args,
        }
    }

    fn collector(&self, at: &ApplianceAt, ca_file: &Path, extra: &[&str], log: &str) -> Collector {
        let mut args = vec![
            "--appliance".to_string(),
            format!("https://{}", at.flight),
            "--bootstrap-url".into(),
            format!("https://{}", at.bootstrap),
            "--appliance-ca".into(),
            ca_file.display().to_string(),
            "--token-file".into(),
            self.collector_token_file.display().to_string(),
            "--kubeconfig".into(),
            self.collector_kubeconfig.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Collector::start(&self.dir.path().join(log), &args, &[])
    }
}

impl ApplianceAt {
    fn start(&self) -> Server {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        start_tally_at(&self.data_dir, &self.flight, &self.http, &args).unwrap()
    }
}

async fn rows(server: &Server, sql: &str) -> Vec<Vec<Value>> {
    tally_e2e::sql_rows(&server.http_url, sql).await
}

/// Polls `check` every 500 ms until it returns `Some`, or panics after `timeout`.
async fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => {
                panic!("timed out after {timeout:?} waiting for {what}: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Waits (at most 20 s) for a `workloads` row of Deployment `web` matching `filter`.
async fn wait_workload(appliance: &Server, ns: &str, what: &str, filter: &str) {
    let started = Instant::now();
    let q = format!(
        "SELECT count(*) FROM workloads WHERE namespace = '{ns}' AND kind = 'Deployment' AND name = 'web' AND {filter}"
    );
    eventually(what, Duration::from_secs(20), async || {
        let found = rows(appliance, &q).await;
        if found[0][0].as_i64() >= Some(1) {
            Ok(())
        } else {
            Err("no row yet".to_string())
        }
    })
    .await;
    eprintln!("{what}: in workloads after {:?}", started.elapsed());
}

fn pod(name: &str, ns: &str, image: &str, script: &str, resources: &str, env: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}}}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: main
    image: {image}
    imagePullPolicy: Never
    command: ["sh", "-c", "{script}"]
    resources: {resources}
    env: {env}
"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_collector_reports_usage_throttling_oom_kills_and_workload_changes_but_no_secrets() {
    let rig = rig("collect");
    let ns = rig.ns.name.clone();
    let cluster = rig.cluster().clone();
    let image = cluster.busybox_image.clone();
    // The CA lives in a Secret of the appliance's namespace; its certificate is published in
    // a ConfigMap, which is what agents trust.
    let at = rig.appliance(&["--ca-secret", &format!("{ns}/tally-ca")]);
    let appliance = at.start();
    let ca_pem = cluster.published_ca(&ns);
    assert!(
        ca_pem.starts_with("-----BEGIN CERTIFICATE-----"),
        "{ca_pem}"
    );
    let ca_file = rig.dir.path().join("appliance-ca.pem");
    std::fs::write(&ca_file, &ca_pem).unwrap();

    let collector = rig.collector(
        &at,
        &ca_file,
        &["--scrape-interval", "5s", "--flush-interval", "500ms"],
        "collector.log",
    );
    let canary = format!("tally-canary-{}", &ns[ns.len() - 6..]);
    let mut manifest = String::new();
    manifest.push_str(&pod(
        "busy",
        &ns,
        &image,
        "while :; do :; done",
        "{requests: {cpu: 100m, memory: 16Mi}, limits: {cpu: 200m, memory: 32Mi}}",
        "[]",
    ));
    manifest.push_str("---\n");
    manifest.push_str(&pod(
        "oom",
        &ns,
        &image,
        "sleep 2; tail /dev/zero",
        "{limits: {memory: 20Mi}}",
        "[]",
    ));
    manifest.push_str("---\n");
    manifest.push_str(&pod(
        "canary",
        &ns,
        &image,
        "sleep 3600",
        "{}",
        &format!("[{{name: SECRET_TOKEN, value: {canary}}}]"),
    ));
    manifest.push_str("---\n");
    // No node has a thousand cores: the real scheduler marks this pod Unschedulable.
    manifest.push_str(&pod(
        "huge",
        &ns,
        &image,
        "sleep 3600",
        "{requests: {cpu: 1000}}",
        "[]",
    ));
    manifest.push_str("---\n");
    // The kubelet's eviction manager evicts this pod for real: its emptyDir outgrows its
    // sizeLimit (the test nodes measure emptyDirs every 10 s, see tests/cluster/up.sh).
    manifest.push_str(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: fill, namespace: {ns}}}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: main
    image: {image}
    imagePullPolicy: Never
    command: ["sh", "-c", "dd if=/dev/zero of=/scratch/fill bs=1M count=8; sleep 3600"]
    volumeMounts: [{{name: scratch, mountPath: /scratch}}]
  volumes:
  - name: scratch
    emptyDir: {{sizeLimit: 1Mi}}
"#
    ));
    cluster.apply(&manifest);

    // Informers synced: /readyz turns 200.
    eventually(
        "the collector to be ready",
        Duration::from_secs(30),
        async || {
            let status = reqwest::get(format!("{}/readyz", collector.health_url))
                .await
                .map_err(|e| e.to_string())?
                .status();
            if status.is_success() {
                Ok(())
            } else {
                Err(status.to_string())
            }
        },
    )
    .await;

    // A Deployment created, scaled, autoscaled, changed and deleted: each change shows in
    // `workloads` within seconds.
    cluster.apply(&format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {ns}, labels: {{app: web}}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 0
      containers:
      - name: app
        image: {image}
        imagePullPolicy: Never
        command: ["sh", "-c", "sleep 3600"]
        resources: {{requests: {{cpu: 50m, memory: 16Mi}}}}
"#
    ));
    wait_workload(
        &appliance,
        &ns,
        "the new Deployment",
        "replicas = 1 AND cpu_request_cores = 0.05 AND NOT deleted",
    )
    .await;
    cluster
        .kubectl(&["-n", &ns, "scale", "deployment/web", "--replicas=3"])
        .unwrap();
    wait_workload(&appliance, &ns, "the scale to 3", "replicas = 3").await;
    cluster
        .kubectl(&[
            "-n",
            &ns,
            "autoscale",
            "deployment/web",
            "--min=2",
            "--max=5",
            "--cpu-percent=70",
        ])
        .unwrap();
    wait_workload(
        &appliance,
        &ns,
        "the HPA",
        "hpa_max_replicas = 5 AND hpa_min_replicas = 2 AND hpa_target_cpu_utilization = 0.7",
    )
    .await;
    cluster
        .kubectl(&[
            "-n",
            &ns,
            "set",
            "resources",
            "deployment/web",
            "-c",
            "app",
            "--requests=cpu=75m",
        ])
        .unwrap();
    wait_workload(
        &appliance,
        &ns,
        "the new CPU request",
        "cpu_request_cores = 0.075",
    )
    .await;
    // The Deployment's pods resolve to it through their ReplicaSet.
    eventually("web's pods owned by the Deployment", Duration::from_secs(30), async || {
        let found = rows(&appliance, &format!(
            "SELECT count(DISTINCT name) FROM pods WHERE namespace = '{ns}' AND workload_kind = 'Deployment' AND workload_name = 'web'"
        )).await;
        let n = found[0][0].as_i64().unwrap_or(0);
        if n >= 3 { Ok(()) } else { Err(format!("{n} pods")) }
    })
    .await;
    cluster
        .kubectl(&["-n", &ns, "delete", "deployment/web", "--wait=false"])
        .unwrap();
    wait_workload(&appliance, &ns, "the deletion", "deleted").await;

    // A CronJob is served as batch/v1beta1 by this API server: discovered, not assumed.
    cluster
        .kubectl(&[
            "-n",
            &ns,
            "create",
            "cronjob",
            "nightly",
            &format!("--image={image}"),
            "--schedule=0 0 * * *",
            "--",
            "true",
        ])
        .unwrap();
    eventually("the CronJob in workloads", Duration::from_secs(20), async || {
        let found = rows(&appliance, &format!("SELECT count(*) FROM workloads WHERE namespace = '{ns}' AND kind = 'CronJob' AND name = 'nightly'")).await;
        if found[0][0].as_i64() >= Some(1) { Ok(()) } else { Err("none".into()) }
    })
    .await;

    // The busy loop runs at its 200m limit and is throttled more at every sample.
    let usage = eventually("busy's usage at its limit with rising throttling", Duration::from_secs(90), async || {
        let found = rows(&appliance, &format!(
            "SELECT cpu_cores, cpu_throttled_seconds, cpu_limit_cores, cpu_request_cores, memory_working_set_bytes, workload_kind, node \
             FROM container_usage WHERE namespace = '{ns}' AND pod = 'busy' AND container = 'main' ORDER BY time"
        )).await;
        // The kubelet refreshes cadvisor's counters every 10-15 s, so some 5 s samples see no
        // new throttling; rising means the counter grew at two samples or more.
        let throttled = found.iter().filter(|r| r[1].as_f64().unwrap_or(0.0) > 0.0).count();
        let throttled_rising = throttled >= 2;
        let Some(cpu) = found.last().and_then(|r| r[0].as_f64()) else {
            return Err(format!("{found:?}"));
        };
        if throttled_rising && (0.12..=0.24).contains(&cpu) { Ok(found) } else { Err(format!("{found:?}")) }
    })
    .await;
    let last = usage.last().unwrap();
    eprintln!("busy: {} samples, last {last:?}", usage.len());
    assert_eq!(last[2].as_f64(), Some(0.2), "the CPU limit in force");
    assert_eq!(last[3].as_f64(), Some(0.1), "the CPU request in force");
    assert!(last[4].as_i64().unwrap() > 0, "working set");
    assert_eq!(last[5], "Pod", "a bare pod is its own workload");
    if !cluster.real_nodes.is_empty() {
        assert!(
            cluster
                .real_nodes
                .contains(&last[6].as_str().unwrap().to_string()),
            "{last:?}"
        );
    }

    // The kernel OOM-kills the hog; the kill and the restart reach `events`.
    let events = eventually("the OOM kill and the restart in events", Duration::from_secs(90), async || {
        let found = rows(&appliance, &format!(
            "SELECT reason, container, memory_limit_bytes, restart_count, workload_kind, node FROM events \
             WHERE namespace = '{ns}' AND pod = 'oom' ORDER BY time"
        )).await;
        let has = |reason: &str| found.iter().any(|r| r[0] == reason);
        if has("OOMKilled") && has("Restarted") { Ok(found) } else { Err(format!("{found:?}")) }
    })
    .await;
    let oom = events.iter().find(|r| r[0] == "OOMKilled").unwrap();
    assert_eq!(oom[1], "main");
    assert_eq!(oom[2].as_i64(), Some(20 << 20), "the memory limit it hit");
    // The first kill is seen in the container's current state, before the restart.
    assert!(oom[3].as_i64().is_some(), "{oom:?}");
    let restarted = events.iter().find(|r| r[0] == "Restarted").unwrap();
    assert!(restarted[3].as_i64().unwrap() >= 1, "{restarted:?}");

    // The scheduler's verdict on the pod nothing can hold reaches `events` with its message.
    let unschedulable =
        eventually(
            "the unschedulable pod in events",
            Duration::from_secs(60),
            async || {
                let found = rows(&appliance, &format!(
            "SELECT reason, message FROM events WHERE namespace = '{ns}' AND pod = 'huge'"
        )).await;
                match found.iter().find(|r| r[0] == "Unschedulable") {
                    Some(row) => Ok(row.clone()),
                    None => Err(format!("{found:?}")),
                }
            },
        )
        .await;
    assert!(
        unschedulable[1].as_str().is_some_and(|m| m.contains("cpu")),
        "the scheduler's message names the resource: {unschedulable:?}"
    );

    // The kubelet's eviction reaches `events` once, with the kubelet's reason.
    let evicted = eventually(
        "the evicted pod in events",
        Duration::from_secs(90),
        async || {
            let found = rows(
                &appliance,
                &format!(
                    "SELECT reason, message, node FROM events WHERE namespace = '{ns}' AND pod = 'fill'"
                ),
            )
            .await;
            let evictions: Vec<_> = found.iter().filter(|r| r[0] == "Evicted").collect();
            match evictions.as_slice() {
                [one] => Ok((*one).clone()),
                _ => Err(format!("{found:?}")),
            }
        },
    )
    .await;
    assert!(
        evicted[1]
            .as_str()
            .is_some_and(|m| m.contains("EmptyDir volume \"scratch\" exceeds the limit")),
        "the kubelet's message: {evicted:?}"
    );
    assert!(
        evicted[2]
            .as_str()
            .is_some_and(|n| n.starts_with("tally-n")),
        "{evicted:?}"
    );

    // Nodes: real ones with usage, kubelet-less ones with their labels and capacity only.
    let nodes = rows(&appliance, "SELECT node, zone, region, instance_type, capacity_type, cpu_allocatable_cores, cpu_cores, taints \
                                   FROM node_usage ORDER BY time DESC").await;
    if let Some(fake) = cluster
        .fake_nodes
        .iter()
        .find(|n| n.as_str() == "fake-node-b")
    {
        let row = nodes
            .iter()
            .find(|r| r[0] == fake.as_str())
            .expect("fake-node-b in node_usage");
        assert_eq!(row[1], "us-east-1b");
        assert_eq!(row[2], "us-east-1");
        assert_eq!(row[3], "c5.2xlarge");
        assert_eq!(row[4], "spot");
        assert_eq!(row[5].as_f64(), Some(7.91));
        assert!(row[6].is_null(), "no kubelet, no usage: {row:?}");
        assert!(
            row[7].as_str().unwrap().contains("tally.dev/fake-node"),
            "{row:?}"
        );
    }
    for real in &cluster.real_nodes {
        let row = nodes
            .iter()
            .find(|r| r[0] == real.as_str())
            .unwrap_or_else(|| panic!("{real} in node_usage"));
        assert!(row[6].as_f64().unwrap() > 0.0, "{row:?}");
    }

    // The collector's own health.
    let metrics = collector.metrics().await;
    let metric = |name: &str| metrics.get(name).copied().unwrap_or(0.0);
    assert!(
        metric("tally_collector_rows_sent_total{table=\"container_usage\"}") > 0.0,
        "{metrics:?}"
    );
    assert!(
        metric("tally_collector_rows_sent_total{table=\"events\"}") > 0.0,
        "{metrics:?}"
    );
    assert_eq!(metric("tally_collector_rows_dropped_total"), 0.0);
    for fake in &cluster.fake_nodes {
        let errors: f64 = metrics
            .iter()
            .filter(|(k, _)| {
                k.starts_with(&format!(
                    "tally_collector_scrape_errors_total{{node=\"{fake}\""
                ))
            })
            .map(|(_, v)| v)
            .sum();
        assert!(
            errors > 0.0,
            "{fake} is not scraped and counted as a scrape error: {metrics:?}"
        );
    }
    assert_eq!(
        metric("tally_collector_informer_synced{kind=\"CronJob\"}"),
        1.0,
        "{metrics:?}"
    );
    assert_eq!(
        metric("tally_collector_informer_synced{kind=\"HorizontalPodAutoscaler\"}"),
        1.0
    );

    // The canary pod reached `pods`, but its secret-looking env value reached nothing: not
    // one text column of any table, not the appliance's files, not the collector's log.
    let canary_pod = rows(
        &appliance,
        &format!("SELECT count(*) FROM pods WHERE namespace = '{ns}' AND name = 'canary'"),
    )
    .await;
    assert!(
        canary_pod[0][0].as_i64() >= Some(1),
        "the canary pod is in pods"
    );
    for table in Table::ALL {
        for field in table.schema().fields() {
            if field.data_type() != &arrow::datatypes::DataType::Utf8 {
                continue;
            }
            let found = rows(&appliance, &format!(
                "SELECT count(*) FROM {table} WHERE {col} LIKE '%tally-canary%' OR {col} LIKE '%SECRET_TOKEN%'",
                col = field.name()
            )).await;
            assert_eq!(
                found[0][0].as_i64(),
                Some(0),
                "{table}.{} holds the canary",
                field.name()
            );
        }
    }
    let collector_log = collector.stderr_log.clone();
    drop(collector);
    appliance.terminate();
    let mut files = vec![at.data_dir.clone()];
    let mut scanned = 0;
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else {
            let bytes = std::fs::read(&path).unwrap();
            scanned += 1;
            assert!(
                !bytes.windows(canary.len()).any(|w| w == canary.as_bytes()),
                "{} holds the canary",
                path.display()
            );
        }
    }
    assert!(scanned > 0);
    let log = std::fs::read_to_string(&collector_log).unwrap();
    assert!(!log.contains(&canary), "the collector logged the canary");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bootstrap_issues_certificates_only_for_allowed_service_account_tokens() {
    let rig = rig("bootstrap");
    let ns = rig.ns.name.clone();
    let at = rig.appliance(&["--agent-cert-ttl", "1h"]);
    let appliance = at.start();
    // No --ca-secret: the CA was created on disk.
    let ca_pem = std::fs::read(at.data_dir.join("pki/ca.pem")).expect("the CA on disk");
    let url = format!("https://{}", at.bootstrap);

    let err = request_certificate(&url, &ca_pem, "not-a-token")
        .await
        .unwrap_err();
    eprintln!("bad token: {err}");
    assert!(
        matches!(&err, BootstrapError::Refused { status: 401, message } if message.contains("rejected the token")),
        "{err}"
    );

    let stranger = rig.cluster().service_account_token(&ns, "stranger");
    let err = request_certificate(&url, &ca_pem, &stranger)
        .await
        .unwrap_err();
    eprintln!("unlisted account: {err}");
    assert!(
        matches!(&err, BootstrapError::Refused { status: 403, message } if message.contains("may not get an agent certificate")),
        "{err}"
    );

    let token = std::fs::read_to_string(&rig.collector_token_file).unwrap();
    let issued = request_certificate(&url, &ca_pem, &token)
        .await
        .expect("the collector's account gets a certificate");
    assert_eq!(
        issued.identity,
        format!("system:serviceaccount:{ns}:collector")
    );
    let life = issued.not_after_ms - issued.not_before_ms;
    assert!(
        (3_600_000..=3_600_000 + 600_000).contains(&life),
        "valid for about --agent-cert-ttl: {life} ms"
    );

    // The certificate writes; one from another CA does not.
    let flight = format!("https://{}", at.flight);
    let mut client = IngestClient::connect(&flight, Some(issued.tls.clone()))
        .await
        .unwrap();
    client
        .write(Table::Events, vec![tally_e2e::events("bootstrap", 0, 2)])
        .await
        .expect("write with the issued certificate");
    let other = tally_appliance::tls::CertificateAuthority::generate("Somebody else's CA").unwrap();
    let stranger_cert = other.client("collector").unwrap();
    let foreign = ClientTls {
        ca_pem: ca_pem.clone(),
        cert_pem: stranger_cert.cert_pem.into_bytes(),
        key_pem: stranger_cert.key_pem.into_bytes(),
        domain: None,
    };
    let refused = match IngestClient::connect(&flight, Some(foreign)).await {
        Err(e) => e.to_string(),
        Ok(mut c) => c
            .write(Table::Events, vec![tally_e2e::events("foreign", 0, 1)])
            .await
            .expect_err("another CA's certificate is refused")
            .to_string(),
    };
    eprintln!("other CA: {refused}");
    let answer = tally_e2e::sql(&appliance.http_url, "SELECT count(*) FROM events")
        .await
        .unwrap();
    assert_eq!(answer["rows"][0][0], 2, "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn batches_wait_while_the_appliance_is_down_and_beyond_the_bound_the_oldest_are_dropped_and_counted()
 {
    let rig = rig("buffer");
    // Short-lived certificates: the collector renews at 2/3 of 12 s.
    let at = rig.appliance(&["--agent-cert-ttl", "12s"]);
    let mut appliance = at.start();
    let ca_file = at.data_dir.join("pki/ca.pem");
    let node = rig
        .cluster()
        .fake_nodes
        .first()
        .cloned()
        .unwrap_or_else(|| {
            rig.cluster()
                .kubectl(&["get", "nodes", "-o", "jsonpath={.items[0].metadata.name}"])
                .unwrap()
        });
    let times = async |server: &Server| -> Vec<i64> {
        let found = rows(server, &format!(
            "SELECT CAST(time AS BIGINT) AS t FROM node_usage WHERE node = '{node}' ORDER BY time"
        )).await;
        found.iter().map(|r| r[0].as_i64().unwrap()).collect()
    };
    // Times are in milliseconds here only because the cast of a millisecond timestamp is.
    let max_gap = |t: &[i64]| t.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);

    // Part 1: a generous buffer. Nothing is lost across a 10 s outage.
    let collector = rig.collector(
        &at,
        &ca_file,
        &["--scrape-interval", "1s", "--flush-interval", "200ms"],
        "collector-1.log",
    );
    eventually("node rows", Duration::from_secs(30), async || {
        let t = times(&appliance).await;
        if t.len() >= 3 {
            Ok(())
        } else {
            Err(format!("{} rows", t.len()))
        }
    })
    .await;
    let expiry_before = collector.metrics().await["tally_collector_certificate_expiry_seconds"];
    appliance.terminate();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let during = collector.metrics().await;
    assert!(
        during["tally_collector_buffer_bytes"] > 0.0,
        "batches wait in the buffer: {during:?}"
    );
    assert!(
        during["tally_collector_send_errors_total"] > 0.0,
        "{during:?}"
    );
    appliance = at.start();
    eventually(
        "the buffer delivered",
        Duration::from_secs(30),
        async || {
            let m = collector.metrics().await;
            if m["tally_collector_buffer_batches"] == 0.0 {
                Ok(())
            } else {
                Err(format!("{m:?}"))
            }
        },
    )
    .await;
    let t = times(&appliance).await;
    eprintln!(
        "part 1: {} samples of {node}, largest gap {} ms",
        t.len(),
        max_gap(&t)
    );
    assert!(
        max_gap(&t) < 3_000,
        "a sample every second, none lost across the outage: {t:?}"
    );
    assert!(t.len() >= 15, "{}", t.len());
    let after = collector.metrics().await;
    assert_eq!(after["tally_collector_rows_dropped_total"], 0.0);
    assert!(
        after["tally_collector_certificate_expiry_seconds"] > expiry_before,
        "the certificate was renewed: {after:?}"
    );
    collector.terminate();

    // Part 2: a buffer of 32 KiB overflows during the outage; the oldest batches go and are counted.
    let collector = rig.collector(
        &at,
        &ca_file,
        &[
            "--scrape-interval",
            "1s",
            "--flush-interval",
            "200ms",
            "--buffer-bytes",
            "32KiB",
        ],
        "collector-2.log",
    );
    eventually(
        "the second collector's rows",
        Duration::from_secs(30),
        async || {
            let m = collector.metrics().await;
            if m.get("tally_collector_rows_sent_total{table=\"node_usage\"}")
                .copied()
                .unwrap_or(0.0)
                > 0.0
            {
                Ok(())
            } else {
                Err("none".into())
            }
        },
    )
    .await;
    let before_outage = times(&appliance).await.len();
    let dropped_before = collector.metrics().await["tally_collector_rows_dropped_total"];
    appliance.terminate();
    tokio::time::sleep(Duration::from_secs(12)).await;
    let during = collector.metrics().await;
    eprintln!("part 2 during the outage: {during:?}");
    assert!(
        during["tally_collector_rows_dropped_total"] > dropped_before,
        "rows dropped and counted: {during:?}"
    );
    assert!(
        during["tally_collector_buffer_bytes"] <= 32_768.0,
        "{during:?}"
    );
    let appliance = at.start();
    eventually(
        "the second buffer delivered",
        Duration::from_secs(30),
        async || {
            let m = collector.metrics().await;
            if m["tally_collector_buffer_batches"] == 0.0 {
                Ok(())
            } else {
                Err(format!("{m:?}"))
            }
        },
    )
    .await;
    let t = times(&appliance).await;
    eprintln!(
        "part 2: {} samples (were {before_outage}), largest gap {} ms",
        t.len(),
        max_gap(&t)
    );
    assert!(
        t.len() > before_outage,
        "newer samples were kept and delivered"
    );
    let since_outage = &t[before_outage.saturating_sub(1)..];
    assert!(
        max_gap(since_outage) > 5_000,
        "the oldest samples of the outage were dropped: {since_outage:?}"
    );
    collector.terminate();
    appliance.terminate();
}
