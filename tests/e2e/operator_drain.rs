//! Node drain and the updater against the real cluster: the real `tally-agent operator`
//! under exactly `agents/operator/rbac.yaml` (see operator.rs for the rig), real kubelet
//! nodes running real pods, PodDisruptionBudgets enforced by the real API server's eviction
//! subresource (policy/v1beta1 on Kubernetes 1.20).
//!
//! The drain test uses the cluster's node reserved for it (`TALLY_DRAIN_NODE`, tainted
//! `tally.dev/drain-test=true:NoSchedule` so no other test's pods land there); a guard makes
//! it schedulable again however the test ends.

use std::collections::HashMap;
use std::io::BufReader;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tally_e2e::cluster::Cluster;
use tally_wire::Table;

use crate::operator::{MI, Rig, chrono_now_ms, json_rows, rig};

/// The node reserved for drain tests, from the environment or the cluster's env file.
fn drain_node() -> String {
    if let Ok(node) = std::env::var("TALLY_DRAIN_NODE") {
        return node;
    }
    let dir = std::env::var("TALLY_CLUSTER_DIR").unwrap_or_else(|_| "/tmp/tally-cluster".into());
    let text = std::fs::read_to_string(format!("{dir}/env")).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("export TALLY_DRAIN_NODE="))
        .map(|v| v.trim_matches('"').to_string())
        .next()
        .expect("TALLY_DRAIN_NODE: the test cluster has no node reserved for drain tests (tests/cluster/up.sh adds it)")
}

/// The rig of a drain test: when dropped, the operator stops first (so it cannot cordon
/// again), then the node is made schedulable again and the recommendation's finalizer
/// cleared, then the rig's own cleanup deletes the namespace.
struct DrainRig {
    rig: Rig,
    node: String,
    recommendation: String,
}

impl Drop for DrainRig {
    fn drop(&mut self) {
        if let Some(operator) = self.rig.operator.take() {
            if std::thread::panicking() {
                eprintln!(
                    "operator log:\n{}",
                    std::fs::read_to_string(&operator.log).unwrap_or_default()
                );
            }
            drop(operator);
        }
        let cluster = self.rig.cluster();
        let _ = cluster.kubectl(&["uncordon", &self.node]);
        let _ = cluster.kubectl(&["annotate", "node", &self.node, "tally.dev/cordoned-by-"]);
        let _ = cluster.kubectl(&[
            "patch",
            "nodegrouprecommendations.tally.dev",
            &self.recommendation,
            "--type=merge",
            "-p",
            r#"{"metadata":{"finalizers":null}}"#,
        ]);
    }
}

/// Counts the Ready, not terminating pods of a label selector from a watch (`kubectl get
/// -w`), so a dip between two polls cannot be missed; remembers the lowest count seen once
/// the count first reached `full`.
struct ReadyWatch {
    child: Child,
    lowest: Arc<Mutex<Option<usize>>>,
}

impl ReadyWatch {
    fn start(cluster: &Cluster, namespace: &str, selector: &str, full: usize) -> ReadyWatch {
        let mut child = Command::new(&cluster.kubectl)
            .arg("--kubeconfig")
            .arg(&cluster.kubeconfig)
            .args(["-n", namespace, "get", "pods", "-l", selector])
            .args(["--watch", "--output-watch-events", "-o", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("kubectl get --watch");
        let stdout = child.stdout.take().expect("stdout");
        let lowest = Arc::new(Mutex::new(None));
        let seen = lowest.clone();
        std::thread::spawn(move || {
            let mut healthy: HashMap<String, bool> = HashMap::new();
            let mut armed = false;
            let events =
                serde_json::Deserializer::from_reader(BufReader::new(stdout)).into_iter::<Value>();
            for event in events {
                let Ok(event) = event else { break };
                let pod = &event["object"];
                let uid = pod["metadata"]["uid"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                if event["type"] == "DELETED" {
                    healthy.remove(&uid);
                } else {
                    let ready = pod["status"]["conditions"].as_array().is_some_and(|c| {
                        c.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    });
                    let terminating = !pod["metadata"]["deletionTimestamp"].is_null();
                    healthy.insert(uid, ready && !terminating);
                }
                let count = healthy.values().filter(|h| **h).count();
                armed |= count >= full;
                if armed {
                    let mut lowest = seen.lock().unwrap();
                    *lowest = Some(lowest.map_or(count, |l: usize| l.min(count)));
                }
            }
        });
        ReadyWatch { child, lowest }
    }

    fn lowest(&self) -> Option<usize> {
        *self.lowest.lock().unwrap()
    }
}

impl Drop for ReadyWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pods of `selector` as (name, uid, node, ready, terminating).
fn pods(rig: &Rig, selector: &str) -> Vec<(String, String, String, bool, bool)> {
    let text = rig
        .kubectl(&["get", "pods", "-l", selector, "-o", "json"])
        .unwrap();
    let list: Value = serde_json::from_str(&text).unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let ready = p["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
            (
                p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                p["metadata"]["uid"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                p["spec"]["nodeName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                ready,
                !p["metadata"]["deletionTimestamp"].is_null(),
            )
        })
        .collect()
}

fn node_json(cluster: &Cluster, node: &str) -> Value {
    serde_json::from_str(
        &cluster
            .kubectl(&["get", "node", node, "-o", "json"])
            .unwrap(),
    )
    .unwrap()
}

fn ngr_json(cluster: &Cluster, name: &str) -> Result<Value, String> {
    let text = cluster.kubectl(&[
        "get",
        "nodegrouprecommendations.tally.dev",
        name,
        "-o",
        "json",
    ])?;
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

fn wait_ngr_phase(cluster: &Cluster, name: &str, phase: &str, timeout: Duration) -> Value {
    cluster.wait(&format!("{name} in phase {phase}"), timeout, || {
        let found = ngr_json(cluster, name)?;
        if found["status"]["phase"] == phase {
            Ok(found)
        } else {
            Err(found["status"].to_string())
        }
    })
}

/// Writes a consolidation plan (run `run`) that empties `node` of node group `group`, with
/// the node's `node_usage` row naming its group, as the collector and the analysis would.
async fn plan_consolidation(rig: &mut Rig, run: &str, group: &str, node: &str) {
    let now = chrono_now_ms();
    let usage = format!(
        r#"{{"time":{},"node":"{node}","node_group":"{group}","cpu_capacity_cores":2.0,"memory_capacity_bytes":4294967296,"cpu_allocatable_cores":2.0,"memory_allocatable_bytes":4294967296}}"#,
        now - 60_000
    );
    let row = |kind: &str, name: &str, current: i64, target: i64, why: &str| {
        format!(
            r#"{{"time":{now},"run_id":"{run}","kind":"consolidation","namespace":"","target_kind":"{kind}","target_name":"{name}","current_replicas":{current},"recommended_replicas":{target},"confidence":1.0,"why":"{why}","savings_monthly_usd":70.08}}"#
        )
    };
    let plan = vec![
        row(
            "NodeGroup",
            group,
            1,
            0,
            "1 → 0 node(s): its pods fit elsewhere",
        ),
        row("Node", node, 1, 0, "its pods fit on the other nodes"),
    ];
    rig.ingest
        .write(
            Table::NodeUsage,
            vec![json_rows(Table::NodeUsage, &[usage])],
        )
        .await
        .expect("write the node");
    rig.ingest
        .write(
            Table::Recommendations,
            vec![json_rows(Table::Recommendations, &plan)],
        )
        .await
        .expect("write the plan");
}

#[tokio::test(flavor = "multi_thread")]
async fn drain_respects_a_pdb_that_allows_one_disruption_at_a_time() {
    let node = drain_node();
    let rig = rig("drain").await;
    let n = rig.ns.name.clone();
    let group = format!("{n}-pool");
    let recommendation = format!("nodegroup-{group}");
    let mut t = DrainRig {
        rig,
        node: node.clone(),
        recommendation: recommendation.clone(),
    };
    t.rig
        .ns
        .owns_cluster_object("nodegrouprecommendations.tally.dev", &recommendation);
    let cluster = t.rig.cluster().clone();
    let image = cluster.busybox_image.clone();

    // All three pods must start on the drain node, and their replacements must be able to
    // go elsewhere: a blocker pod on every other real node, which the Deployment's pods
    // refuse to share a node with (required anti-affinity, checked only at scheduling);
    // the blockers go once the pods run.
    let others: Vec<String> = cluster
        .real_nodes
        .iter()
        .filter(|o| **o != node)
        .cloned()
        .collect();
    for other in &others {
        cluster.apply(&format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: blocker-{other}, namespace: {n}, labels: {{tally.dev/blocker: "yes"}}}}
spec:
  nodeName: {other}
  terminationGracePeriodSeconds: 0
  containers:
  - {{name: main, image: {image}, imagePullPolicy: Never, command: [sleep, '3600'], resources: {{requests: {{cpu: 5m, memory: 8Mi}}}}}}
"#
        ));
    }
    cluster.apply(&format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {n}}}
spec:
  replicas: 3
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 1
      tolerations:
      - {{key: tally.dev/drain-test, operator: Exists, effect: NoSchedule}}
      affinity:
        nodeAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
          - weight: 100
            preference:
              matchExpressions:
              - {{key: kubernetes.io/hostname, operator: In, values: [{node}]}}
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - labelSelector: {{matchLabels: {{tally.dev/blocker: "yes"}}}}
            topologyKey: kubernetes.io/hostname
      containers:
      - name: main
        image: {image}
        imagePullPolicy: Never
        command: [sleep, '3600']
        resources: {{requests: {{cpu: 10m, memory: 16Mi}}}}
        readinessProbe:
          exec: {{command: ['true']}}
          initialDelaySeconds: 5
          periodSeconds: 1
---
apiVersion: policy/v1beta1
kind: PodDisruptionBudget
metadata: {{name: web, namespace: {n}}}
spec:
  maxUnavailable: 1
  selector: {{matchLabels: {{app: web}}}}
"#
    ));
    let started = cluster.wait(
        "three Ready pods of web on the drain node",
        Duration::from_secs(120),
        || {
            let found = pods(&t.rig, "app=web");
            let ready_here = found.iter().filter(|p| p.2 == node && p.3 && !p.4).count();
            if ready_here == 3 {
                Ok(found)
            } else {
                Err(format!("{found:?}"))
            }
        },
    );
    let original: Vec<String> = started.iter().map(|p| p.1.clone()).collect();
    for other in &others {
        t.rig
            .kubectl(&["delete", "pod", &format!("blocker-{other}"), "--wait=true"])
            .unwrap();
    }
    let watch = ReadyWatch::start(&cluster, &n, "app=web", 3);
    // A pod no controller owns: an eviction would lose it, so the drain leaves it to a
    // person (as kubectl drain does without --force).
    cluster.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: loner, namespace: {n}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 0
  tolerations:
  - {{key: tally.dev/drain-test, operator: Exists, effect: NoSchedule}}
  containers:
  - {{name: main, image: {image}, imagePullPolicy: Never, command: [sleep, '3600'], resources: {{requests: {{cpu: 5m, memory: 8Mi}}}}}}
"#
    ));
    let loner_uid = t
        .rig
        .kubectl(&["get", "pod", "loner", "-o", "jsonpath={.metadata.uid}"])
        .unwrap();

    // The plan empties the drain node. First no Policy lets the operator act: one naming
    // the group is only audit-only, and an auto-apply one names another group. Nothing is
    // cordoned, no pod moves.
    plan_consolidation(&mut t.rig, "run-drain", &group, &node).await;
    let audit = t.rig.policy(
        "audit",
        &format!("  mode: audit-only\n  namespaces: [{n}]\n  nodeGroups: ['{group}']\n"),
    );
    t.rig.policy(
        "elsewhere",
        &format!("  mode: auto-apply\n  namespaces: [{n}]\n  nodeGroups: ['{n}-other']\n"),
    );
    let pending = wait_ngr_phase(
        &cluster,
        &recommendation,
        "Pending",
        Duration::from_secs(60),
    );
    assert_eq!(pending["spec"]["nodesToRemove"], serde_json::json!([node]));
    let pending = cluster.wait(
        "the audit-only policy named in the status",
        Duration::from_secs(60),
        || {
            let found = ngr_json(&cluster, &recommendation)?;
            let message = found["status"]["message"].as_str().unwrap_or_default();
            if message.contains("audit-only") {
                Ok(found)
            } else {
                Err(message.to_string())
            }
        },
    );
    assert_eq!(pending["status"]["phase"], "Pending");
    t.rig.passes(3.0).await;
    let untouched = node_json(&cluster, &node);
    assert!(
        untouched["spec"]["unschedulable"].is_null(),
        "cordoned outside an auto-apply policy: {}",
        untouched["spec"]
    );
    let now: Vec<String> = pods(&t.rig, "app=web")
        .iter()
        .map(|p| p.1.clone())
        .collect();
    assert_eq!(now, original, "pods moved outside an active policy");

    // An auto-apply policy names the group: cordon, then evictions the PDB paces.
    t.rig
        .cluster()
        .kubectl(&["delete", "policies.tally.dev", &audit])
        .unwrap();
    let nodes_policy = t.rig.policy(
        "nodes",
        &format!("  mode: auto-apply\n  namespaces: [{n}]\n  nodeGroups: ['{group}']\n"),
    );
    // The web pods leave; the bare pod stays and holds the drain, which says why.
    let waiting = cluster.wait(
        "the drain waiting for the bare pod alone",
        Duration::from_secs(240),
        || {
            let found = ngr_json(&cluster, &recommendation)?;
            let message = found["status"]["message"].as_str().unwrap_or_default();
            let web_here = pods(&t.rig, "app=web").iter().any(|p| p.2 == node);
            let alone = message.contains(&format!("1 on {node}"));
            if !web_here && alone && message.contains("belong to no controller") {
                Ok(found)
            } else {
                Err(format!("{message}; web pods on the node: {web_here}"))
            }
        },
    );
    assert_eq!(waiting["status"]["phase"], "Approved", "{waiting}");
    let message = waiting["status"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(&format!("{n}/loner")), "{message}");
    t.rig.passes(2.0).await;
    assert_eq!(
        t.rig
            .kubectl(&["get", "pod", "loner", "-o", "jsonpath={.metadata.uid}"])
            .unwrap(),
        loner_uid,
        "the bare pod was evicted"
    );
    t.rig
        .kubectl(&["delete", "pod", "loner", "--wait=true"])
        .unwrap();
    let applied = wait_ngr_phase(
        &cluster,
        &recommendation,
        "Applied",
        Duration::from_secs(240),
    );
    assert_eq!(
        applied["status"]["policy"],
        nodes_policy.as_str(),
        "{applied}"
    );
    assert_eq!(applied["status"]["cordoned"], serde_json::json!([node]));
    let cordoned = node_json(&cluster, &node);
    assert_eq!(cordoned["spec"]["unschedulable"], true);
    assert_eq!(
        cordoned["metadata"]["annotations"]["tally.dev/cordoned-by"],
        recommendation.as_str()
    );
    // Empty of the test's pods (Applied waits for terminating pods to go, too) ...
    let left: Vec<_> = pods(&t.rig, "app=web")
        .into_iter()
        .filter(|p| p.2 == node)
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // ... and every original pod was replaced, elsewhere.
    let replaced = cluster.wait(
        "three Ready replacements elsewhere",
        Duration::from_secs(120),
        || {
            let found = pods(&t.rig, "app=web");
            let fine = found
                .iter()
                .filter(|p| p.3 && !p.4 && p.2 != node && !original.contains(&p.1))
                .count();
            if fine == 3 {
                Ok(found)
            } else {
                Err(format!("{found:?}"))
            }
        },
    );
    eprintln!("replacements: {replaced:?}");
    // The PDB allowed one disruption at a time: never fewer than two Ready pods.
    let lowest = watch.lowest().expect("the watch saw the pods");
    assert!(lowest >= 2, "only {lowest} Ready pods at one moment");
    assert_eq!(lowest, 2, "the drain never took a pod away");

    // The audit log: the cordon, at least one refusal (429) that a later pass retried
    // successfully, an eviction of each original pod, and the drain, logged once.
    let id = format!("run-drain//NodeGroup/{group}");
    let log = t
        .rig
        .rows(&format!(
            "SELECT operation, result, target_kind, target_name FROM actions \
             WHERE recommendation_id = '{id}' ORDER BY time"
        ))
        .await;
    let of = |op: &str, result: &str| -> Vec<String> {
        log.iter()
            .filter(|r| r[0] == op && r[1] == result)
            .map(|r| r[3].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(
        of("cordon", "applied"),
        std::slice::from_ref(&node),
        "{log:?}"
    );
    assert_eq!(
        of("drain", "applied"),
        std::slice::from_ref(&group),
        "{log:?}"
    );
    assert_eq!(
        of("audit", "skipped"),
        std::slice::from_ref(&group),
        "{log:?}"
    );
    let refused = of("evict", "refused");
    let evicted = of("evict", "evicted");
    assert!(!refused.is_empty(), "the PDB never refused: {log:?}");
    assert!(
        refused.iter().any(|pod| evicted.contains(pod)),
        "no refused pod was evicted on a later pass: {log:?}"
    );
    let names: Vec<String> = started.iter().map(|p| p.0.clone()).collect();
    let mut evicted_sorted = evicted.clone();
    evicted_sorted.sort();
    let mut names_sorted = names.clone();
    names_sorted.sort();
    assert_eq!(evicted_sorted, names_sorted, "{log:?}");
    let metrics =
        tally_e2e::prometheus_metrics(&t.rig.operator.as_ref().expect("operator").health_url).await;
    let refusals = metrics
        .iter()
        .filter(|(k, _)| k.contains("operation=\"evict\"") && k.contains("result=\"refused\""))
        .map(|(_, v)| *v)
        .sum::<f64>();
    assert!(refusals >= 1.0, "{metrics:?}");

    // Rejected after the drain: the node the operator cordoned is schedulable again.
    cluster
        .kubectl(&[
            "patch",
            "nodegrouprecommendations.tally.dev",
            &recommendation,
            "--type=merge",
            "-p",
            r#"{"spec":{"approval":"Rejected"}}"#,
        ])
        .unwrap();
    let rolled = wait_ngr_phase(
        &cluster,
        &recommendation,
        "RolledBack",
        Duration::from_secs(60),
    );
    assert!(rolled["status"]["cordoned"].is_null(), "{rolled}");
    let back = node_json(&cluster, &node);
    assert!(back["spec"]["unschedulable"].is_null(), "{}", back["spec"]);
    assert!(
        back["metadata"]["annotations"]["tally.dev/cordoned-by"].is_null(),
        "{}",
        back["metadata"]
    );

    // Approved again (the rejection withdrawn): cordoned again, nothing left to evict. Then
    // deleted: the finalizer uncordons the node, and the recommendation is not created again
    // for this run.
    cluster
        .kubectl(&[
            "patch",
            "nodegrouprecommendations.tally.dev",
            &recommendation,
            "--type=merge",
            "-p",
            r#"{"spec":{"approval":null}}"#,
        ])
        .unwrap();
    wait_ngr_phase(
        &cluster,
        &recommendation,
        "Applied",
        Duration::from_secs(60),
    );
    assert_eq!(node_json(&cluster, &node)["spec"]["unschedulable"], true);
    cluster
        .kubectl(&[
            "delete",
            "nodegrouprecommendations.tally.dev",
            &recommendation,
            "--wait=true",
            "--timeout=60s",
        ])
        .unwrap();
    let back = node_json(&cluster, &node);
    assert!(back["spec"]["unschedulable"].is_null(), "{}", back["spec"]);
    t.rig.passes(3.0).await;
    let gone = ngr_json(&cluster, &recommendation).expect_err("created again after deletion");
    assert!(gone.contains("NotFound"), "{gone}");
    let log = t
        .rig
        .rows(&format!(
            "SELECT operation, result FROM actions WHERE recommendation_id = '{id}' \
             AND operation IN ('uncordon', 'dismiss') ORDER BY time"
        ))
        .await;
    let ops: Vec<(String, String)> = log
        .iter()
        .map(|r| {
            (
                r[0].as_str().unwrap_or_default().to_string(),
                r[1].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let count = |op: &str| ops.iter().filter(|(o, _)| o == op).count();
    assert_eq!(
        count("uncordon"),
        2,
        "one for the rejection, one for the deletion: {ops:?}"
    );
    assert_eq!(count("dismiss"), 1, "{ops:?}");
}

/// One row per container of an analysis run's rightsizing recommendation, any kind.
fn rightsizing(
    run: &str,
    namespace: &str,
    kind: &str,
    name: &str,
    cpu: (f64, f64),
    memory: (i64, i64),
) -> String {
    format!(
        r#"{{"time":{},"run_id":"{run}","kind":"rightsizing","namespace":"{namespace}","target_kind":"{kind}","target_name":"{name}","container":"main","current_cpu_request_cores":{},"recommended_cpu_request_cores":{},"current_memory_request_bytes":{},"recommended_memory_request_bytes":{},"confidence":0.9,"why":"p95 CPU over 14 days","savings_monthly_usd":3.5}}"#,
        chrono_now_ms(),
        cpu.0,
        cpu.1,
        memory.0,
        memory.1
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_updater_evicts_differing_pods_one_at_a_time() {
    let mut rig = rig("updater").await;
    let n = rig.ns.name.clone();
    let image = rig.cluster().busybox_image.clone();
    let pod_spec = |cpu: &str| {
        format!(
            r#"      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: {image}
        imagePullPolicy: Never
        command: [sleep, '3600']
        resources: {{requests: {{cpu: {cpu}, memory: 16Mi}}}}
        readinessProbe:
          exec: {{command: ['true']}}
          initialDelaySeconds: 4
          periodSeconds: 1
"#
        )
    };
    // `db` runs three pods at 100m CPU. Its template already asks for 50m and it updates
    // OnDelete: a re-created pod gets 50m, the way the admission webhook would give it the
    // recommended requests (the webhook itself is tested in operator_webhook.rs; here the
    // API server could not reach a webhook on the host). `steady` already runs what is
    // recommended.
    rig.cluster().apply(&format!(
        r#"apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: db, namespace: {n}}}
spec:
  replicas: 3
  serviceName: db
  podManagementPolicy: Parallel
  updateStrategy: {{type: OnDelete}}
  selector: {{matchLabels: {{app: db}}}}
  template:
    metadata: {{labels: {{app: db}}}}
    spec:
{}---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: steady, namespace: {n}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: steady}}}}
  template:
    metadata: {{labels: {{app: steady}}}}
    spec:
{}---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: stale, namespace: {n}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: stale}}}}
  template:
    metadata: {{labels: {{app: stale}}}}
    spec:
{}---
apiVersion: policy/v1beta1
kind: PodDisruptionBudget
metadata: {{name: db, namespace: {n}}}
spec:
  maxUnavailable: 1
  selector: {{matchLabels: {{app: db}}}}
"#,
        pod_spec("100m"),
        pod_spec("50m"),
        pod_spec("100m")
    ));
    let cluster = rig.cluster().clone();
    let ready = |selector: &str, count: usize| {
        cluster.wait(
            &format!("{count} Ready pods of {selector}"),
            Duration::from_secs(120),
            || {
                let found = pods(&rig, selector);
                if found.iter().filter(|p| p.3 && !p.4).count() == count {
                    Ok(found)
                } else {
                    Err(format!("{found:?}"))
                }
            },
        )
    };
    let old_db: Vec<String> = ready("app=db", 3).iter().map(|p| p.1.clone()).collect();
    let steady: Vec<String> = ready("app=steady", 1).iter().map(|p| p.1.clone()).collect();
    ready("app=stale", 1);
    rig.kubectl(&[
        "patch",
        "statefulset",
        "db",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/template/spec/containers/0/resources/requests/cpu","value":"50m"}]"#,
    ])
    .unwrap();
    let watch = ReadyWatch::start(&cluster, &n, "app=db", 3);

    let policy = rig.policy(
        "webhook",
        &format!(
            "  mode: auto-apply\n  applyMethod: webhook\n  namespaces: [{n}]\n  workloads: {{names: [db, steady, stale]}}\n"
        ),
    );
    let rows = vec![
        rightsizing(
            "run-u",
            &n,
            "StatefulSet",
            "db",
            (0.1, 0.05),
            (16 * MI, 16 * MI),
        ),
        // `stale` differs, and nothing gives its replacement other requests (no webhook
        // here, and its template keeps 100m).
        rightsizing(
            "run-u",
            &n,
            "Deployment",
            "stale",
            (0.1, 0.05),
            (16 * MI, 16 * MI),
        ),
        // 52m against the 50m it runs: inside the 10 % threshold.
        rightsizing(
            "run-u",
            &n,
            "Deployment",
            "steady",
            (0.05, 0.052),
            (16 * MI, 16 * MI),
        ),
    ];
    rig.ingest
        .write(
            Table::Recommendations,
            vec![json_rows(Table::Recommendations, &rows)],
        )
        .await
        .expect("write the recommendations");

    // Every db pod is replaced, one at a time, by one with the recommended 50m.
    let done = cluster.wait(
        "every db pod replaced with 50m",
        Duration::from_secs(240),
        || {
            let text = rig.kubectl(&["get", "pods", "-l", "app=db", "-o", "json"])?;
            let list: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
            let items = list["items"].as_array().cloned().unwrap_or_default();
            let fine: Vec<&Value> = items
                .iter()
                .filter(|p| {
                    p["metadata"]["deletionTimestamp"].is_null()
                        && !old_db.contains(
                            &p["metadata"]["uid"]
                                .as_str()
                                .unwrap_or_default()
                                .to_string(),
                        )
                        && p["spec"]["containers"][0]["resources"]["requests"]["cpu"] == "50m"
                        && p["status"]["conditions"].as_array().is_some_and(|c| {
                            c.iter()
                                .any(|c| c["type"] == "Ready" && c["status"] == "True")
                        })
                })
                .collect();
            if fine.len() == 3 {
                Ok(items.len())
            } else {
                Err(format!("{} of 3 replaced", fine.len()))
            }
        },
    );
    assert_eq!(done, 3);
    let lowest = watch.lowest().expect("the watch saw the pods");
    assert_eq!(lowest, 2, "never more than one db pod away at once");

    // The pod that already matches is left alone, and the status says so.
    rig.passes(3.0).await;
    let still: Vec<String> = pods(&rig, "app=steady")
        .iter()
        .map(|p| p.1.clone())
        .collect();
    assert_eq!(still, steady, "a matching pod was evicted");
    let steady_rec: Value = serde_json::from_str(
        &rig.kubectl(&[
            "get",
            "workloadrecommendations.tally.dev",
            "deployment-steady",
            "-o",
            "json",
        ])
        .unwrap(),
    )
    .unwrap();
    assert_eq!(steady_rec["status"]["phase"], "Applied", "{steady_rec}");
    let message = steady_rec["status"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("every running pod within 10%"),
        "{message}"
    );
    assert_eq!(steady_rec["status"]["policy"], policy.as_str());

    // The audit log: one eviction per original db pod, none of steady's pod; the later
    // passes evict nothing more (the replacements match).
    let db_log = evictions(&rig, "StatefulSet/db").await;
    let mut evicted: Vec<String> = db_log
        .iter()
        .filter(|r| r[1] == "evicted")
        .map(|r| r[0].as_str().unwrap_or_default().to_string())
        .collect();
    evicted.sort();
    assert_eq!(evicted, ["db-0", "db-1", "db-2"], "{db_log:?}");
    let steady_log = evictions(&rig, "Deployment/steady").await;
    assert!(steady_log.is_empty(), "{steady_log:?}");

    // `stale`: its pod is evicted once; the replacement still differs, so the webhook is not
    // doing its part and the updater stops instead of churning pods, saying why.
    let stale = cluster.wait(
        "the updater stopping for stale",
        Duration::from_secs(120),
        || {
            let text = rig.kubectl(&[
                "get",
                "workloadrecommendations.tally.dev",
                "deployment-stale",
                "-o",
                "json",
            ])?;
            let found: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
            let message = found["status"]["message"].as_str().unwrap_or_default();
            if message.contains("did not set its requests") {
                Ok(found)
            } else {
                Err(message.to_string())
            }
        },
    );
    assert_eq!(stale["status"]["phase"], "Applied", "{stale}");
    rig.passes(3.0).await;
    let stale_log = evictions(&rig, "Deployment/stale").await;
    assert_eq!(stale_log.len(), 1, "{stale_log:?}");
    assert_eq!(stale_log[0][1], "evicted", "{stale_log:?}");
    assert_eq!(
        pods(&rig, "app=stale").iter().filter(|p| !p.4).count(),
        1,
        "one pod of stale runs"
    );
}

/// The updater's `evict` rows of one workload (`Kind/name`): (pod, result).
async fn evictions(rig: &Rig, target: &str) -> Vec<Vec<Value>> {
    rig.rows(&format!(
        "SELECT target_name, result FROM actions WHERE namespace = '{n}' \
         AND operation = 'evict' AND recommendation_id = 'run-u/{n}/{target}' ORDER BY time",
        n = rig.ns.name
    ))
    .await
}

/// `HH:00` of the UTC hour `offset` hours from now.
fn hour_from_now(offset: i64) -> String {
    let hour = (chrono_now_ms() / 3_600_000 + offset).rem_euclid(24);
    format!("{hour:02}:00")
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_outside_an_active_policy_is_drained() {
    let rig = rig("undrained").await;
    let n = rig.ns.name.clone();
    // A node without a kubelet: nothing runs there, and it must stay schedulable.
    let node = rig
        .cluster()
        .fake_nodes
        .first()
        .expect("a fake node")
        .clone();
    let group = format!("{n}-fake");
    let recommendation = format!("nodegroup-{group}");
    let mut t = DrainRig {
        rig,
        node: node.clone(),
        recommendation: recommendation.clone(),
    };
    t.rig
        .ns
        .owns_cluster_object("nodegrouprecommendations.tally.dev", &recommendation);
    let cluster = t.rig.cluster().clone();
    let before = node_json(&cluster, &node);

    // An auto-apply policy for the namespace's workloads (no node group), and one that names
    // the group but is invalid (so it covers nothing).
    t.rig.policy(
        "workloads",
        &format!("  mode: auto-apply\n  namespaces: [{n}]\n"),
    );
    t.rig.policy(
        "invalid",
        &format!(
            "  mode: auto-apply\n  namespaces: [{n}]\n  nodeGroups: ['{group}']\n  minCpu: '2'\n  maxCpu: 500m\n"
        ),
    );
    plan_consolidation(&mut t.rig, "run-none", &group, &node).await;
    let pending = wait_ngr_phase(
        &cluster,
        &recommendation,
        "Pending",
        Duration::from_secs(60),
    );
    let message = pending["status"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("does not cordon or drain"), "{pending}");
    // A person's approval is not a policy: still nothing.
    cluster
        .kubectl(&[
            "patch",
            "nodegrouprecommendations.tally.dev",
            &recommendation,
            "--type=merge",
            "-p",
            r#"{"spec":{"approval":"Approved"}}"#,
        ])
        .unwrap();
    t.rig.passes(3.0).await;
    let still = ngr_json(&cluster, &recommendation).unwrap();
    assert_eq!(still["status"]["phase"], "Pending", "{still}");
    assert!(still["status"]["cordoned"].is_null(), "{still}");
    assert!(still["metadata"]["finalizers"].is_null(), "{still}");

    // A valid auto-apply policy names the group, but its window opens in two hours: approved,
    // waiting, nothing cordoned.
    let later = t.rig.policy(
        "later",
        &format!(
            "  mode: auto-apply\n  namespaces: [{n}]\n  nodeGroups: ['{group}']\n  \
             windows: [{{start: '{}', end: '{}', timeZone: UTC}}]\n",
            hour_from_now(2),
            hour_from_now(3)
        ),
    );
    let waiting = wait_ngr_phase(
        &cluster,
        &recommendation,
        "Approved",
        Duration::from_secs(60),
    );
    assert_eq!(waiting["status"]["policy"], later.as_str(), "{waiting}");
    assert!(
        waiting["status"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("waiting for its time window"),
        "{waiting}"
    );
    t.rig.passes(3.0).await;
    let after = node_json(&cluster, &node);
    assert_eq!(after["spec"], before["spec"], "the node was changed");
    assert!(
        after["metadata"]["annotations"]["tally.dev/cordoned-by"].is_null(),
        "{}",
        after["metadata"]
    );
    let id = format!("run-none//NodeGroup/{group}");
    let log = t
        .rig
        .rows(&format!(
            "SELECT operation, result FROM actions WHERE recommendation_id = '{id}' ORDER BY time"
        ))
        .await;
    assert!(
        log.iter().all(|r| r[0] == "skip" || r[0] == "defer"),
        "{log:?}"
    );
    assert!(
        log.iter().any(|r| r[0] == "defer" && r[1] == "deferred"),
        "{log:?}"
    );
}
