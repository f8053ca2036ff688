//! Node consolidation: cordon and drain the nodes a `NodeGroupRecommendation` lists.
//!
//! A node group is drained only when a valid Policy names it in `spec.nodeGroups` and
//! either every such policy is auto-apply or a person approved the recommendation
//! (`spec.approval: Approved`, e.g. under an audit-only policy), and only inside every one
//! of those policies' time windows. Without such a policy nothing is cordoned, whatever
//! the appliance sends (phase Pending, [`crate::reconcile::NODE_GROUP_PENDING`]).
//!
//! Each pass, for an allowed recommendation:
//! 1. the operator's finalizer goes on the recommendation, so deleting it can undo the cordon;
//! 2. each listed node that is schedulable is recorded in the status (`cordoned`) and then
//!    cordoned (`spec.unschedulable`, annotation `tally.dev/cordoned-by`); nodes someone else
//!    cordoned are left to them;
//! 3. the pods on those nodes are evicted a few at a time ([`EVICTIONS_PER_PASS`]) through
//!    the eviction API ([`crate::evict`]): a PodDisruptionBudget's refusal (429) is retried
//!    on a later pass; DaemonSet pods, mirror pods and finished pods stay; pods no
//!    controller would re-create are never evicted (as `kubectl drain` without `--force`):
//!    the drain waits for a person and says so;
//! 4. when no other pod is left the phase is Applied (the nodes can be removed), before that
//!    Approved with a message saying what it waits for.
//!
//! Rejecting the recommendation, or deleting it, makes the nodes it cordoned schedulable
//! again (evicted pods stay where they were rescheduled). Every step goes to the appliance's
//! `actions` table.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::appliance::{ActionRow, NodeGroupRow};
use crate::crd::{
    Approval, FINALIZER, Mode, NodeGroupRecommendation, NodeGroupRecommendationStatus, Phase,
};
use crate::evict::{self, EvictionApi, Outcome};
use crate::policy;
use crate::reconcile::{Checked, NODE_GROUP_PENDING, ReconcileError, Reconciler, node_group_name};

/// The annotation on a node the operator cordoned: the NodeGroupRecommendation's name.
pub const CORDONED_BY: &str = "tally.dev/cordoned-by";
/// Evictions asked for per recommendation and pass ("a few at a time").
pub const EVICTIONS_PER_PASS: usize = 3;

/// What the drain and the updater remember between passes.
#[derive(Default)]
pub struct State {
    /// The eviction API version, discovered once.
    pub eviction_api: Option<EvictionApi>,
    /// Pods (by uid) whose first refusal is logged already: a refusal is logged once per
    /// pod, not on every pass it is retried.
    pub refusals_logged: HashSet<String>,
    /// When the updater last evicted a pod of each workload (`ns/Kind/name`).
    pub last_eviction: HashMap<String, DateTime<Utc>>,
    /// The client evictions go through: one that does not retry 429s itself (see
    /// `tally_operator::run`); absent, the reconciler's own.
    pub eviction_client: Option<kube::Client>,
}

/// The recommendation id of a node group in the `actions` table: `run//NodeGroup/group`.
pub fn node_group_id(run_id: &str, group: &str) -> String {
    format!("{run_id}//NodeGroup/{group}")
}

/// What the policies say about one node group's recommendation.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// No valid policy names the group: never drained.
    Uncovered,
    /// Covered, but only audited and nobody approved it.
    AuditOnly { policy: String },
    /// Allowed, but a time window is closed.
    Waiting { policy: String },
    /// Drain now.
    Drain { policy: String, actor: String },
}

/// Decides from the policies naming the group, the person's approval and the time.
pub(crate) fn verdict(
    group: &str,
    approval: Option<Approval>,
    policies: &[Checked],
    now: DateTime<Utc>,
) -> Verdict {
    let covering: Vec<&Checked> = policies
        .iter()
        .filter(|p| p.valid && p.policy.spec.node_groups.iter().any(|g| g == group))
        .collect();
    if covering.is_empty() {
        return Verdict::Uncovered;
    }
    let names = covering
        .iter()
        .map(|p| p.name.as_str())
        .collect::<Vec<_>>()
        .join("+");
    let auto = covering
        .iter()
        .all(|p| p.policy.spec.mode == Mode::AutoApply);
    let approved = approval == Some(Approval::Approved);
    if !auto && !approved {
        return Verdict::AuditOnly { policy: names };
    }
    if !covering
        .iter()
        .all(|p| policy::in_window(&p.policy.spec.windows, now))
    {
        return Verdict::Waiting { policy: names };
    }
    let actor = if auto {
        format!("policy/{names} (auto-apply)")
    } else {
        format!("user (approved) under policy/{names}")
    };
    Verdict::Drain {
        policy: names,
        actor,
    }
}

fn row(
    ngr: &NodeGroupRecommendation,
    operation: &str,
    (namespace, kind, name): (&str, &str, &str),
    actor: &str,
    policy: Option<&str>,
    result: &str,
    message: String,
) -> ActionRow {
    ActionRow {
        recommendation_id: Some(node_group_id(&ngr.spec.run_id, &ngr.spec.node_group)),
        operation: operation.into(),
        namespace: namespace.into(),
        target_kind: kind.into(),
        target_name: name.into(),
        actor: actor.into(),
        policy: policy.map(str::to_string),
        before: None,
        after: None,
        result: result.into(),
        message: Some(message),
    }
}

impl Reconciler {
    /// Drains (or leaves, or undoes) every NodeGroupRecommendation of this pass's plan, and
    /// finishes the deletion of any the operator cordoned nodes for. Errors of one are
    /// logged and counted; the others go on.
    pub(crate) async fn drain_node_groups(
        &mut self,
        plan: &[NodeGroupRow],
        policies: &[Checked],
        now: DateTime<Utc>,
    ) -> Result<(), ReconcileError> {
        let names: HashSet<String> = plan
            .iter()
            .map(|g| node_group_name(&g.node_group))
            .collect();
        let api: Api<NodeGroupRecommendation> = Api::all(self.client.clone());
        for ngr in api.list(&ListParams::default()).await?.items {
            let ours = ngr.finalizers().iter().any(|f| f == FINALIZER);
            let deleting = ngr.metadata.deletion_timestamp.is_some();
            if !(names.contains(&ngr.name_any()) || (deleting && ours)) {
                continue;
            }
            if let Err(error) = self.drain_one(&api, &ngr, policies, now).await {
                self.metrics.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(name = %ngr.name_any(), %error, "node group reconcile failed; retried next pass");
            }
        }
        Ok(())
    }

    pub(crate) async fn eviction_api(&mut self) -> Result<EvictionApi, ReconcileError> {
        if let Some(api) = self.drain.eviction_api {
            return Ok(api);
        }
        let api = evict::discover(&self.client)
            .await
            .map_err(|e| ReconcileError::Other(e.to_string()))?;
        tracing::info!(version = api.api_version(), "eviction API discovered");
        self.drain.eviction_api = Some(api);
        Ok(api)
    }

    pub(crate) async fn log_actions(&mut self, actions: &[ActionRow]) -> bool {
        if actions.is_empty() {
            return true;
        }
        match self.appliance.log(actions).await {
            Ok(()) => {
                self.count(actions);
                true
            }
            Err(error) => {
                self.metrics.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "cannot log the actions; retried next pass");
                false
            }
        }
    }

    /// Logs `action` unless the status says it was logged under `key` already.
    async fn log_once(
        &mut self,
        status: &mut NodeGroupRecommendationStatus,
        key: String,
        action: ActionRow,
    ) {
        if status.last_logged.as_deref() == Some(key.as_str()) {
            return;
        }
        if self.log_actions(std::slice::from_ref(&action)).await {
            status.last_logged = Some(key);
        }
    }

    async fn write_node_group_status(
        &self,
        api: &Api<NodeGroupRecommendation>,
        ngr: &NodeGroupRecommendation,
        status: &NodeGroupRecommendationStatus,
    ) -> Result<(), ReconcileError> {
        if ngr.status.as_ref() == Some(status) {
            return Ok(());
        }
        // The whole status replaced, so cleared fields really go.
        let patch: json_patch::Patch = serde_json::from_value(json!([
            {"op": "add", "path": "/status", "value": status}
        ]))
        .map_err(|e| ReconcileError::Other(e.to_string()))?;
        api.patch_status(
            &ngr.name_any(),
            &PatchParams::default(),
            &Patch::<()>::Json(patch),
        )
        .await?;
        Ok(())
    }

    async fn set_finalizer(
        &self,
        api: &Api<NodeGroupRecommendation>,
        ngr: &NodeGroupRecommendation,
        present: bool,
    ) -> Result<(), ReconcileError> {
        let has = ngr.finalizers().iter().any(|f| f == FINALIZER);
        if has == present {
            return Ok(());
        }
        let mut finalizers: Vec<String> = ngr
            .finalizers()
            .iter()
            .filter(|f| *f != FINALIZER)
            .cloned()
            .collect();
        if present {
            finalizers.push(FINALIZER.to_string());
        }
        let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": ngr.resource_version()}});
        api.patch(
            &ngr.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
        Ok(())
    }

    /// Makes the nodes the recommendation cordoned schedulable again (those still carrying
    /// its annotation; a node someone cordoned since is theirs now).
    async fn uncordon(
        &mut self,
        ngr: &NodeGroupRecommendation,
        nodes: &[String],
        actor: &str,
    ) -> Result<Vec<ActionRow>, ReconcileError> {
        let api: Api<Node> = Api::all(self.client.clone());
        let name = ngr.name_any();
        let mut actions = Vec::new();
        for node in nodes {
            let Some(found) = api.get_opt(node).await? else {
                continue;
            };
            if found.annotations().get(CORDONED_BY) != Some(&name) {
                continue;
            }
            let patch = json!({
                "metadata": {"annotations": {CORDONED_BY: null}},
                "spec": {"unschedulable": null},
            });
            api.patch(node, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            actions.push(row(
                ngr,
                "uncordon",
                ("", "Node", node),
                actor,
                ngr.status.as_ref().and_then(|s| s.policy.as_deref()),
                "rolled-back",
                format!("node {node} is schedulable again"),
            ));
        }
        Ok(actions)
    }

    async fn drain_one(
        &mut self,
        api: &Api<NodeGroupRecommendation>,
        ngr: &NodeGroupRecommendation,
        policies: &[Checked],
        now: DateTime<Utc>,
    ) -> Result<(), ReconcileError> {
        let old = ngr.status.clone().unwrap_or_default();
        let group = ngr.spec.node_group.clone();
        let run = ngr.spec.run_id.clone();

        if ngr.metadata.deletion_timestamp.is_some() {
            let actor = "user (deleted the NodeGroupRecommendation)";
            let mut actions = self.uncordon(ngr, &old.cordoned, actor).await?;
            actions.push(row(
                ngr,
                "dismiss",
                ("", "NodeGroup", &group),
                actor,
                old.policy.as_deref(),
                "deleted",
                "the recommendation was deleted; it is not created again for this analysis run"
                    .into(),
            ));
            // Logged before the finalizer goes: the audit log is what keeps it dismissed.
            self.appliance.log(&actions).await?;
            self.count(&actions);
            self.dismissed.insert(node_group_id(&run, &group));
            self.set_finalizer(api, ngr, false).await?;
            return Ok(());
        }

        let mut status = old.clone();
        if ngr.spec.approval == Some(Approval::Rejected) {
            // The finalizer goes first (its patch carries the resourceVersion the status
            // write would move on); nothing is left to undo once the nodes are uncordoned.
            if !old.cordoned.is_empty() {
                let actions = self
                    .uncordon(ngr, &old.cordoned, "user (rejected the recommendation)")
                    .await?;
                self.set_finalizer(api, ngr, false).await?;
                self.log_actions(&actions).await;
                status.phase = Phase::RolledBack;
                status.message = Some(format!(
                    "rejected: {} schedulable again (pods already evicted stay where they run now)",
                    old.cordoned.join(", ")
                ));
                status.cordoned.clear();
            } else if !matches!(old.phase, Phase::RolledBack | Phase::Rejected) {
                status.phase = Phase::Rejected;
                status.message = Some("rejected: its nodes are never cordoned or drained".into());
                let action = row(
                    ngr,
                    "reject",
                    ("", "NodeGroup", &group),
                    "user",
                    None,
                    "skipped",
                    status.message.clone().unwrap_or_default(),
                );
                self.log_once(&mut status, format!("{run}:reject"), action)
                    .await;
            }
            self.write_node_group_status(api, ngr, &status).await?;
            return Ok(());
        }

        let draining = !old.cordoned.is_empty();
        let (policy, actor) = match verdict(&group, ngr.spec.approval, policies, now) {
            Verdict::Drain { policy, actor } => (policy, actor),
            other => {
                let (phase, message, key, operation, result, policy) = match &other {
                    Verdict::Uncovered => (
                        Phase::Pending,
                        if draining {
                            format!(
                                "no Policy names node group {group} now: draining stopped; {} stay cordoned until the recommendation is rejected or deleted",
                                old.cordoned.join(", ")
                            )
                        } else {
                            NODE_GROUP_PENDING.to_string()
                        },
                        format!("{run}:uncovered"),
                        "skip",
                        "skipped",
                        None,
                    ),
                    Verdict::AuditOnly { policy } => (
                        Phase::Pending,
                        format!(
                            "policy {policy} is audit-only: the nodes are drained only once a person approves (spec.approval: Approved)"
                        ),
                        format!("{run}:audit:{policy}"),
                        "audit",
                        "skipped",
                        Some(policy.clone()),
                    ),
                    Verdict::Waiting { policy } => (
                        Phase::Approved,
                        format!("approved by policy {policy}; waiting for its time window"),
                        format!("{run}:window:{policy}"),
                        "defer",
                        "deferred",
                        Some(policy.clone()),
                    ),
                    Verdict::Drain { .. } => unreachable!("handled above"),
                };
                status.phase = phase;
                status.message = Some(message.clone());
                if policy.is_some() {
                    status.policy = policy.clone();
                }
                let action = row(
                    ngr,
                    operation,
                    ("", "NodeGroup", &group),
                    &format!("policy/{}", policy.as_deref().unwrap_or("none")),
                    policy.as_deref(),
                    result,
                    message,
                );
                self.log_once(&mut status, key, action).await;
                self.write_node_group_status(api, ngr, &status).await?;
                return Ok(());
            }
        };

        // Allowed and inside the window: cordon, then evict a few pods.
        status.policy = Some(policy.clone());
        self.set_finalizer(api, ngr, true).await?;
        let nodes_api: Api<Node> = Api::all(self.client.clone());
        let name = ngr.name_any();
        let mut missing = Vec::new();
        let mut present = Vec::new();
        for node in &ngr.spec.nodes_to_remove {
            let Some(found) = nodes_api.get_opt(node).await? else {
                missing.push(node.clone());
                continue;
            };
            present.push(node.clone());
            let unschedulable = found.spec.as_ref().and_then(|s| s.unschedulable) == Some(true);
            if unschedulable {
                continue;
            }
            // Recorded before the node changes, so a rollback knows it even if the operator
            // stops right after the cordon.
            if !status.cordoned.contains(node) {
                status.cordoned.push(node.clone());
                status.message = Some(format!("cordoning {node}"));
                self.write_node_group_status(api, ngr, &status).await?;
            }
            let patch = json!({
                "metadata": {"annotations": {CORDONED_BY: name}},
                "spec": {"unschedulable": true},
            });
            nodes_api
                .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            let action = row(
                ngr,
                "cordon",
                ("", "Node", node),
                &actor,
                Some(&policy),
                "applied",
                format!("node {node} cordoned for the consolidation of node group {group}"),
            );
            self.log_actions(&[action]).await;
        }

        let eviction_api = self.eviction_api().await?;
        let pods_api: Api<Pod> = Api::all(self.client.clone());
        let mut left: BTreeMap<String, usize> = BTreeMap::new();
        let mut refused = Vec::new();
        let mut unmanaged = Vec::new();
        let mut budget = EVICTIONS_PER_PASS;
        let mut actions = Vec::new();
        for node in &present {
            let pods = pods_api
                .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
                .await?
                .items;
            for pod in pods {
                if evict::finished(&pod) {
                    continue;
                }
                match evict::skip_reason(&pod) {
                    Some("already terminating") => {
                        *left.entry(node.clone()).or_default() += 1;
                        continue;
                    }
                    Some(_) => continue,
                    None => {}
                }
                *left.entry(node.clone()).or_default() += 1;
                if !evict::managed(&pod) {
                    unmanaged.push(format!(
                        "{}/{}",
                        pod.namespace().unwrap_or_default(),
                        pod.name_any()
                    ));
                    continue;
                }
                if budget == 0 {
                    continue;
                }
                budget -= 1;
                let ns = pod.namespace().unwrap_or_default();
                let pod_name = pod.name_any();
                let uid = pod.uid().unwrap_or_default();
                let client = self.drain.eviction_client.as_ref().unwrap_or(&self.client);
                match evict::evict(client, eviction_api, &ns, &pod_name).await {
                    Ok(Outcome::Evicted) => {
                        actions.push(row(
                            ngr,
                            "evict",
                            (&ns, "Pod", &pod_name),
                            &actor,
                            Some(&policy),
                            "evicted",
                            format!("draining node {node}"),
                        ));
                    }
                    Ok(Outcome::Gone) => {}
                    Ok(Outcome::Refused(reason)) => {
                        refused.push(format!("{ns}/{pod_name}"));
                        if self.drain.refusals_logged.insert(uid) {
                            actions.push(row(
                                ngr,
                                "evict",
                                (&ns, "Pod", &pod_name),
                                &actor,
                                Some(&policy),
                                "refused",
                                format!("draining node {node}: {reason} (retried on a later pass)"),
                            ));
                        }
                    }
                    Err(error) => {
                        self.metrics.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%error, "eviction failed; retried next pass");
                        refused.push(format!("{ns}/{pod_name} ({error})"));
                    }
                }
            }
        }
        self.log_actions(&actions).await;

        let remaining: usize = left.values().sum();
        if remaining == 0 {
            status.phase = Phase::Applied;
            let mut message = format!(
                "{} cordoned and drained by policy {policy}: the nodes can be removed from node group {group}",
                present.join(", ")
            );
            if !missing.is_empty() {
                message.push_str(&format!("; {} no longer exist", missing.join(", ")));
            }
            status.message = Some(message.clone());
            let action = row(
                ngr,
                "drain",
                ("", "NodeGroup", &group),
                &actor,
                Some(&policy),
                "applied",
                message,
            );
            self.log_once(&mut status, format!("{run}:drained"), action)
                .await;
        } else {
            status.phase = Phase::Approved;
            let per_node = left
                .iter()
                .map(|(node, n)| format!("{n} on {node}"))
                .collect::<Vec<_>>()
                .join(", ");
            let mut message = format!("draining under policy {policy}: {per_node} pod(s) left");
            if !refused.is_empty() {
                message.push_str(&format!(
                    "; a PodDisruptionBudget allows no disruption of {} now (retried next pass)",
                    refused.join(", ")
                ));
            }
            if !unmanaged.is_empty() {
                message.push_str(&format!(
                    "; {} belong to no controller and would not come back after an eviction: the operator leaves them, move or delete them yourself",
                    unmanaged.join(", ")
                ));
            }
            status.message = Some(message);
        }
        self.write_node_group_status(api, ngr, &status).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{Policy, PolicySpec, TimeWindow};
    use chrono::TimeZone;

    fn checked(name: &str, mode: Mode, groups: &[&str], windows: Vec<TimeWindow>) -> Checked {
        let spec = PolicySpec {
            namespaces: vec![],
            namespace_selector: None,
            workloads: None,
            mode,
            min_cpu: None,
            max_cpu: None,
            min_memory: None,
            max_memory: None,
            max_step_percent: None,
            windows,
            apply_method: Default::default(),
            node_groups: groups.iter().map(|g| g.to_string()).collect(),
        };
        Checked {
            name: name.into(),
            policy: Policy::new(name, spec),
            valid: true,
        }
    }

    #[test]
    fn only_a_policy_naming_the_group_lets_it_be_drained() {
        let now = Utc.with_ymd_and_hms(2026, 11, 28, 12, 0, 0).unwrap();
        // An auto-apply policy that covers every workload but names no node group: never.
        let workloads_only = [checked("all", Mode::AutoApply, &[], vec![])];
        assert_eq!(
            verdict("pool", None, &workloads_only, now),
            Verdict::Uncovered
        );
        // Even a person's approval does not act outside a policy.
        assert_eq!(
            verdict("pool", Some(Approval::Approved), &workloads_only, now),
            Verdict::Uncovered
        );
        // An invalid policy covers nothing.
        let mut invalid = checked("bad", Mode::AutoApply, &["pool"], vec![]);
        invalid.valid = false;
        assert_eq!(verdict("pool", None, &[invalid], now), Verdict::Uncovered);

        let auto = [checked("nodes", Mode::AutoApply, &["pool"], vec![])];
        assert_eq!(
            verdict("pool", None, &auto, now),
            Verdict::Drain {
                policy: "nodes".into(),
                actor: "policy/nodes (auto-apply)".into()
            }
        );
        assert_eq!(verdict("other", None, &auto, now), Verdict::Uncovered);

        // Audit-only: waits for a person's approval, then drains.
        let audit = [checked("watch", Mode::AuditOnly, &["pool"], vec![])];
        assert_eq!(
            verdict("pool", None, &audit, now),
            Verdict::AuditOnly {
                policy: "watch".into()
            }
        );
        assert!(matches!(
            verdict("pool", Some(Approval::Approved), &audit, now),
            Verdict::Drain { actor, .. } if actor.starts_with("user (approved)")
        ));

        // A closed window holds it, even when approved.
        let night = vec![TimeWindow {
            days: vec![],
            start: "22:00".into(),
            end: "06:00".into(),
            time_zone: None,
        }];
        let later = [checked("night", Mode::AutoApply, &["pool"], night)];
        assert_eq!(
            verdict("pool", Some(Approval::Approved), &later, now),
            Verdict::Waiting {
                policy: "night".into()
            }
        );
        let midnight = Utc.with_ymd_and_hms(2026, 11, 28, 23, 0, 0).unwrap();
        assert!(matches!(
            verdict("pool", None, &later, midnight),
            Verdict::Drain { .. }
        ));
    }

    #[test]
    fn node_group_ids_share_the_run_prefix_of_dismissals() {
        assert_eq!(node_group_id("run-1", "pool"), "run-1//NodeGroup/pool");
        assert!(node_group_id("run-1", "pool").starts_with("run-1/"));
    }
}
