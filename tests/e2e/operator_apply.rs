//! The operator applies replicas and HPA settings, falls back from in-place resize to a
//! patch, and holds its rollback finalizer only while there is something to restore, against
//! the real Kubernetes 1.20 cluster (the real `tally-agent operator` under exactly
//! `agents/operator/rbac.yaml`, the real `tally` appliance; see tests/e2e/operator.rs).
//!
//! The test plays the analysis: it writes `recommendations` rows of kinds `rightsizing`,
//! `replicas` and `hpa` (queries/replicas.sql's shape) with Flight `DoPut`.

use std::time::Duration;

use serde_json::{Value, json};
use tally_wire::Table;

use crate::operator::{MI, Rec, Rig, chrono_now_ms, container, json_rows, rig};

/// A Deployment with `replicas` pods that never run: they select a node label no node has,
/// so they stay Pending and cost the shared 2-core machine nothing.
fn deployment(rig: &Rig, name: &str, replicas: i64) {
    let n = &rig.ns.name;
    let containers = container("main", "{requests: {cpu: 100m, memory: 64Mi}}")
        .replace("IMAGE", &rig.cluster().busybox_image);
    rig.cluster().apply(&format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {n}, labels: {{app: {name}}}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      nodeSelector: {{tally.dev/e2e-no-such-node: "true"}}
      containers:
{containers}"#
    ));
}

/// An autoscaling/v2beta2 HPA (what 1.20 serves) on Deployment `name`: 2 to 10 replicas,
/// CPU at 80 %, and a memory metric the operator must leave alone.
fn hpa(rig: &Rig, name: &str) {
    let n = &rig.ns.name;
    rig.cluster().apply(&format!(
        r#"apiVersion: autoscaling/v2beta2
kind: HorizontalPodAutoscaler
metadata: {{name: {name}, namespace: {n}}}
spec:
  scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: {name}}}
  minReplicas: 2
  maxReplicas: 10
  metrics:
  - type: Resource
    resource: {{name: memory, target: {{type: Utilization, averageUtilization: 90}}}}
  - type: Resource
    resource: {{name: cpu, target: {{type: Utilization, averageUtilization: 80}}}}
"#
    ));
}

/// `.spec` of the HPA as JSON text, read through autoscaling/v2beta2.
fn hpa_spec(rig: &Rig, name: &str) -> String {
    rig.kubectl(&[
        "get",
        "horizontalpodautoscalers.v2beta2.autoscaling",
        name,
        "-o",
        "jsonpath={.spec}",
    ])
    .unwrap()
}

fn finalizers(rig: &Rig, name: &str) -> Vec<String> {
    let text = rig
        .kubectl(&[
            "get",
            "workloadrecommendations.tally.dev",
            &format!("deployment-{name}"),
            "-o",
            "jsonpath={.metadata.finalizers}",
        ])
        .unwrap();
    if text.trim().is_empty() {
        return Vec::new();
    }
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// A `replicas` or `hpa` row of run `run` (the replicas columns as queries/replicas.sql
/// writes them).
fn scaling_row(rig: &Rig, run: &str, kind: &str, name: &str, values: &str) -> String {
    format!(
        r#"{{"time":{},"run_id":"{run}","kind":"{kind}","namespace":"{}","target_kind":"Deployment","target_name":"{name}",{values},"confidence":0.8,"why":"demand over 168 h","savings_monthly_usd":7.5}}"#,
        chrono_now_ms(),
        rig.ns.name
    )
}

/// The run's rightsizing rows: the requests stay as they are (only replicas and HPAs
/// change), except `resized`'s CPU, which falls from 100m to 50m.
async fn recommend_unchanged_requests(rig: &mut Rig, run: &str, names: &[&str]) {
    let recs: Vec<Rec> = names
        .iter()
        .map(|name| Rec {
            name,
            container: "main",
            cpu: (0.1, if *name == "resized" { 0.05 } else { 0.1 }),
            memory: (64 * MI, 64 * MI),
        })
        .collect();
    rig.recommend(run, &recs).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_and_hpas_are_applied_and_rolled_back_exactly() {
    let mut rig = rig("apply").await;
    let n = rig.ns.name.clone();
    deployment(&rig, "steady", 3);
    deployment(&rig, "scaled", 2);
    hpa(&rig, "scaled");
    deployment(&rig, "watched", 3);
    deployment(&rig, "watched-hpa", 2);
    hpa(&rig, "watched-hpa");
    deployment(&rig, "resized", 0);
    let auto = rig.policy(
        "auto",
        &format!(
            "  mode: auto-apply\n  namespaces: [{n}]\n  workloads: {{names: [steady, scaled]}}\n  maxStepPercent: 30\n"
        ),
    );
    rig.policy(
        "audit",
        &format!("  mode: audit-only\n  namespaces: [{n}]\n  workloads: {{names: [watched, watched-hpa]}}\n"),
    );
    rig.policy(
        "resize",
        &format!(
            "  mode: auto-apply\n  namespaces: [{n}]\n  workloads: {{names: [resized]}}\n  applyMethod: in-place-resize\n"
        ),
    );
    let original = rig.spec_json("steady");
    let original_hpa = hpa_spec(&rig, "scaled");
    let watched = (rig.spec_json("watched"), rig.generation("watched"));
    let watched_hpa = hpa_spec(&rig, "watched-hpa");

    let names = ["steady", "scaled", "watched", "watched-hpa", "resized"];
    recommend_unchanged_requests(&mut rig, "run-s", &names).await;
    let steady = r#""current_replicas":3,"recommended_replicas":1"#;
    let scaled = r#""current_replicas":2,"recommended_replicas":1,"current_max_replicas":10,"recommended_max_replicas":8,"current_target_cpu_utilization":0.8,"recommended_target_cpu_utilization":0.6"#;
    let rows = vec![
        scaling_row(&rig, "run-s", "replicas", "steady", steady),
        scaling_row(&rig, "run-s", "hpa", "scaled", scaled),
        scaling_row(&rig, "run-s", "replicas", "watched", steady),
        scaling_row(&rig, "run-s", "hpa", "watched-hpa", scaled),
    ];
    rig.ingest
        .write(
            Table::Recommendations,
            vec![json_rows(Table::Recommendations, &rows)],
        )
        .await
        .expect("write the replicas and hpa rows");

    // No HPA: spec.replicas, moved at most 30 % per step (at least one: 3 → 2, not to the
    // recommended 1).
    let applied = rig.wait_phase("steady", "Applied");
    assert_eq!(
        rig.kubectl(&[
            "get",
            "deployment",
            "steady",
            "-o",
            "jsonpath={.spec.replicas}"
        ])
        .unwrap(),
        "2"
    );
    assert_eq!(applied["spec"]["replicas"]["recommended"], 1, "{applied}");
    assert_eq!(
        applied["status"]["previousScaling"],
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "steady", "specJson": "{\"replicas\":3}"})
    );
    assert!(
        applied["status"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("replicas 3 → 2")),
        "{applied}"
    );
    assert_eq!(finalizers(&rig, "steady"), ["tally.dev/rollback"]);

    // With an HPA (v2beta2 on 1.20): the HPA's min, max and CPU target change, the memory
    // metric stays; the Deployment's replicas are the HPA's and are not written.
    let scaled_wr = rig.wait_phase("scaled", "Applied");
    let hpa_now: Value = serde_json::from_str(&hpa_spec(&rig, "scaled")).unwrap();
    assert_eq!(hpa_now["minReplicas"], 1, "{hpa_now}");
    assert_eq!(hpa_now["maxReplicas"], 8, "{hpa_now}");
    assert_eq!(
        hpa_now["metrics"][1]["resource"],
        json!({"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}})
    );
    assert_eq!(
        hpa_now["metrics"][0]["resource"],
        json!({"name": "memory", "target": {"type": "Utilization", "averageUtilization": 90}})
    );
    assert_eq!(
        scaled_wr["status"]["previousScaling"]["apiVersion"], "autoscaling/v2beta2",
        "{scaled_wr}"
    );
    assert_eq!(finalizers(&rig, "scaled"), ["tally.dev/rollback"]);

    // Each change is in the audit log once, with the fields before and after.
    let log = rig.actions("steady").await;
    let apply: Vec<_> = log.iter().filter(|r| r[0] == "apply").collect();
    assert_eq!(apply.len(), 1, "{log:?}");
    assert_eq!(apply[0][1], "applied");
    assert_eq!(apply[0][3], auto.as_str());
    let before: Value = serde_json::from_str(apply[0][4].as_str().unwrap()).unwrap();
    let after: Value = serde_json::from_str(apply[0][5].as_str().unwrap()).unwrap();
    assert_eq!(before["Deployment/steady"], json!({"replicas": 3}));
    assert_eq!(after["Deployment/steady"], json!({"replicas": 2}));
    let log = rig.actions("scaled").await;
    let apply: Vec<_> = log.iter().filter(|r| r[0] == "apply").collect();
    assert_eq!(apply.len(), 1, "{log:?}");
    let after: Value = serde_json::from_str(apply[0][5].as_str().unwrap()).unwrap();
    assert_eq!(after["HorizontalPodAutoscaler/scaled"]["maxReplicas"], 8);

    // In-place resize asked for: 1.20 has no pods/resize, so the template was patched, and
    // the status and the action say why.
    let resized = rig.wait_phase("resized", "Applied");
    let message = resized["status"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("no pods/resize"), "{resized}");
    assert_eq!(
        rig.resources("resized", "main"),
        json!({"requests": {"cpu": "50m", "memory": "64Mi"}})
    );
    let log = rig.actions("resized").await;
    assert!(
        log.iter().any(|r| r[0] == "apply"
            && r[1] == "applied"
            && r[5].as_str().is_some_and(|a| a.contains("50m"))),
        "{log:?}"
    );
    let action_message = rig
        .rows(&format!(
            "SELECT message FROM actions WHERE namespace = '{n}' AND target_name = 'resized' AND operation = 'apply'"
        ))
        .await;
    assert!(
        action_message[0][0]
            .as_str()
            .is_some_and(|m| m.contains("no pods/resize")),
        "{action_message:?}"
    );

    // Audit-only changes neither the replicas nor the HPA, however often the operator passes.
    let audited = rig.wait_phase("watched", "Pending");
    assert!(
        audited["status"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("audit-only")),
        "{audited}"
    );
    rig.wait_phase("watched-hpa", "Pending");
    rig.passes(3.0).await;
    assert_eq!(
        (rig.spec_json("watched"), rig.generation("watched")),
        watched
    );
    assert_eq!(hpa_spec(&rig, "watched-hpa"), watched_hpa);
    assert!(finalizers(&rig, "watched").is_empty());
    assert!(finalizers(&rig, "watched-hpa").is_empty());

    // Rejected: the Deployment's spec comes back byte for byte, and the finalizer goes
    // (nothing is left to restore).
    rig.kubectl(&[
        "patch",
        "workloadrecommendations.tally.dev",
        "deployment-steady",
        "--type=merge",
        "-p",
        r#"{"spec":{"approval":"Rejected"}}"#,
    ])
    .unwrap();
    rig.wait_phase("steady", "RolledBack");
    assert_eq!(rig.spec_json("steady"), original);
    rig.cluster().wait(
        "the finalizer of a rolled-back recommendation is removed",
        Duration::from_secs(60),
        || {
            let left = finalizers(&rig, "steady");
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{left:?}"))
            }
        },
    );

    // Deleted: the finalizer restores the HPA's spec byte for byte before it goes.
    rig.kubectl(&[
        "delete",
        "workloadrecommendations.tally.dev",
        "deployment-scaled",
        "--wait=true",
        "--timeout=90s",
    ])
    .unwrap();
    assert_eq!(hpa_spec(&rig, "scaled"), original_hpa);
    let log = rig.actions("scaled").await;
    let rollback: Vec<_> = log.iter().filter(|r| r[0] == "rollback").collect();
    assert_eq!(rollback.len(), 1, "{log:?}");
    assert_eq!(rollback[0][1], "rolled-back");
}

#[tokio::test(flavor = "multi_thread")]
async fn only_recommendations_with_something_to_restore_hold_a_finalizer() {
    let mut rig = rig("finalizer").await;
    let n = rig.ns.name.clone();
    let standard = container("main", "{requests: {cpu: '1', memory: 256Mi}}");
    rig.deployment("pending", "", &standard);
    rig.deployment("applied", "", &standard);
    rig.policy(
        "auto",
        &format!("  mode: auto-apply\n  namespaces: [{n}]\n  workloads: {{names: [applied]}}\n"),
    );
    let original = rig.spec_json("applied");
    let rec = |name| Rec {
        name,
        container: "main",
        cpu: (1.0, 0.5),
        memory: (256 * MI, 128 * MI),
    };
    rig.recommend("run-f", &[rec("pending"), rec("applied")])
        .await;

    // Nothing to roll back: no finalizer. Applied with previous values: the finalizer.
    rig.wait_phase("pending", "Pending");
    assert!(finalizers(&rig, "pending").is_empty());
    rig.wait_phase("applied", "Applied");
    assert_eq!(finalizers(&rig, "applied"), ["tally.dev/rollback"]);

    // Deleting the Pending one needs no operator: it is gone at once ...
    rig.kubectl(&[
        "delete",
        "workloadrecommendations.tally.dev",
        "deployment-pending",
        "--wait=true",
        "--timeout=30s",
    ])
    .unwrap();
    // ... and the operator, which had seen it, logs the dismissal and does not create it again.
    let sql = format!(
        "SELECT operation, result, recommendation_id FROM actions WHERE namespace = '{n}' \
         AND target_name = 'pending' AND operation = 'dismiss'"
    );
    let started = std::time::Instant::now();
    loop {
        if !rig.rows(&sql).await.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no dismissal logged for the deleted Pending recommendation"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    rig.passes(3.0).await;
    let dismissals = rig.rows(&sql).await;
    assert_eq!(dismissals.len(), 1, "logged once: {dismissals:?}");
    assert_eq!(dismissals[0][1], "deleted");
    assert_eq!(
        dismissals[0][2],
        format!("run-f/{n}/Deployment/pending").as_str()
    );
    let left = rig
        .kubectl(&[
            "get",
            "workloadrecommendations.tally.dev",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ])
        .unwrap();
    assert_eq!(
        left, "deployment-applied",
        "the dismissed one is not re-created"
    );

    // Deleting the Applied one rolls back through the finalizer, then it goes.
    rig.kubectl(&[
        "delete",
        "workloadrecommendations.tally.dev",
        "deployment-applied",
        "--wait=true",
        "--timeout=90s",
    ])
    .unwrap();
    assert_eq!(rig.spec_json("applied"), original);
    let mut log: Vec<String> = rig
        .actions("applied")
        .await
        .iter()
        .map(|r| format!("{}:{}", r[0].as_str().unwrap(), r[1].as_str().unwrap()))
        .collect();
    log.sort();
    assert_eq!(
        log,
        ["apply:applied", "dismiss:deleted", "rollback:rolled-back"]
    );
}
