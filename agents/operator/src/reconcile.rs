//! The reconcile loop. Every pass is idempotent and starts from what is true now:
//! 1. the latest analysis run's workload recommendations are read from the appliance and
//!    server-side applied as `WorkloadRecommendation`s (field manager `tally-operator`), and
//!    the newest consolidation plan's node groups as `NodeGroupRecommendation`s;
//! 2. every `Policy` is checked ([`crate::policy::validate`]) and its status written;
//! 3. node groups a valid Policy names are cordoned and drained ([`crate::drain`]);
//! 4. every `WorkloadRecommendation` is reconciled: the policies are evaluated again right
//!    before anything changes. No covering policy: the workload is never touched.
//!    Audit-only: the recommendation is shown, never applied. Auto-apply inside a time
//!    window: the container requests/limits are patched within the policy's bounds and
//!    maximum step, and the replicas or the HPA's min/max/CPU target set ([`crate::scaling`]),
//!    the previous values kept in the status first; or, when a policy applies through the
//!    admission webhook, the workload is left as it is and the updater
//!    ([`crate::updater`]) evicts running pods that differ, one per pass. Deleting the
//!    recommendation or rejecting it after it was applied restores the previous values
//!    exactly.
//!
//! Finalizers only where needed: a recommendation carries `tally.dev/rollback` only while
//! its status keeps previous values to restore (added before the first change, removed once
//! they are restored), so deleting it, its namespace or the CRDs never waits for an operator
//! that is gone. Deleting one without the finalizer dismisses it for its run too: the
//! operator remembers every recommendation it saw in this process and logs one that
//! disappeared as dismissed (one deleted while no operator ran is not known and comes back).
//!
//! Each decision is appended once to the appliance's `actions` table.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DynamicObject, ListParams, Patch, PatchParams};
use kube::core::ApiResource;
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

use crate::appliance::{ActionRow, Appliance, NodeGroupRow, WorkloadRow};
use crate::crd::{
    Approval, FIELD_MANAGER, FINALIZER, Mode, NodeGroupAction, NodeGroupRecommendation,
    NodeGroupRecommendationSpec, NodeGroupRecommendationStatus, Phase, Policy, PolicyStatus,
    PreviousResources, ReplicasRecommendation, Resources, TargetRef, WorkloadKind,
    WorkloadRecommendation, WorkloadRecommendationSpec, WorkloadRecommendationStatus,
};
use crate::health::Metrics;
use crate::policy::{self, Bounds, Subject};
use crate::quantity;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Appliance(#[from] crate::appliance::ApplianceError),
    #[error("{0}")]
    Other(String),
}

/// What one pass needs.
pub struct Reconciler {
    pub client: Client,
    pub appliance: Appliance,
    pub metrics: Arc<Metrics>,
    /// Recommendation ids this process dismissed (their CR was deleted). The audit log is
    /// the lasting record (read every pass, so a restart keeps them dismissed); this set
    /// covers the moment before a just-written row is visible to queries.
    pub dismissed: HashSet<String>,
    /// What the reconcile loop remembers between passes.
    pub memory: Memory,
    /// Only these namespaces (empty: every namespace).
    pub namespaces: Vec<String>,
    /// What node drains and the updater remember between passes.
    pub drain: crate::drain::State,
    /// How far a running pod's requests may be from the recommendation before the updater
    /// evicts it (webhook-method policies).
    pub updater: crate::updater::Settings,
}

/// What the reconcile loop remembers between passes (lost with the process).
#[derive(Default)]
pub struct Memory {
    /// Every WorkloadRecommendation (namespace, name) this process has seen, with the
    /// dismissal to log if it disappears: one without a finalizer that is gone on a later
    /// pass was deleted by a person, which dismisses it for its run.
    pub seen: HashMap<(String, String), ActionRow>,
    /// What the API server offers (HPA version, in-place resize), discovered once per pass
    /// when a recommendation needs it.
    pub apis: Option<crate::scaling::Apis>,
    /// Per recommendation (namespace, name): the action of a decision that could not be
    /// logged, with its key, sent again on the next pass.
    pub unlogged: HashMap<(String, String), (String, ActionRow)>,
}

/// Whether a recommendation's status keeps something a rollback would restore: only then
/// does it carry the `tally.dev/rollback` finalizer.
pub fn has_previous(status: &WorkloadRecommendationStatus) -> bool {
    !status.previous.is_empty() || status.previous_scaling.is_some()
}

/// The name of a workload's recommendation: `deployment-web`.
pub fn recommendation_name(kind: WorkloadKind, name: &str) -> String {
    format!("{}-{name}", kind.as_str().to_ascii_lowercase())
}

/// The NodeGroupRecommendation of a node group: `nodegroup-<group>`, lowercased, with every
/// character a Kubernetes name cannot hold replaced by `-`.
pub fn node_group_name(group: &str) -> String {
    let cleaned: String = group
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let name = format!(
        "nodegroup-{}",
        cleaned.trim_matches(|c| c == '-' || c == '.')
    );
    name.chars().take(253).collect()
}

/// What a NodeGroupRecommendation's status says while no Policy names its node group.
pub const NODE_GROUP_PENDING: &str = "no Policy names this node group in spec.nodeGroups, so the operator does not cordon or drain its nodes: nothing is changed";

fn workload_resource(kind: WorkloadKind) -> ApiResource {
    ApiResource {
        group: "apps".into(),
        version: "v1".into(),
        api_version: "apps/v1".into(),
        kind: kind.as_str().into(),
        plural: kind.plural().into(),
    }
}

fn spec_of(row: &WorkloadRow) -> WorkloadRecommendationSpec {
    WorkloadRecommendationSpec {
        target: TargetRef {
            kind: row.kind,
            name: row.name.clone(),
        },
        run_id: row.run_id.clone(),
        containers: row.containers.clone(),
        replicas: row
            .replicas
            .map(|(current, recommended)| ReplicasRecommendation {
                current,
                recommended,
            }),
        hpa: row.hpa.clone(),
        confidence: row.confidence.clamp(0.0, 1.0),
        why: row.why.clone(),
        savings_monthly_usd: row.savings_monthly_usd,
        approval: None,
    }
}

/// A policy with its checks done.
pub(crate) struct Checked {
    pub(crate) name: String,
    pub(crate) policy: Policy,
    pub(crate) valid: bool,
}

/// The `resources` of each container of a workload's pod template, by name, with its index.
fn template_containers(workload: &DynamicObject) -> Vec<(usize, String, Option<Value>)> {
    workload.data["spec"]["template"]["spec"]["containers"]
        .as_array()
        .map(|containers| {
            containers
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    (
                        i,
                        c["name"].as_str().unwrap_or_default().to_string(),
                        c.get("resources").cloned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn read_resources(resources: Option<&Value>) -> Resources {
    let q = |section: &str, name: &str| {
        resources
            .and_then(|r| r[section][name].as_str())
            .and_then(|t| quantity::parse(t).ok())
    };
    Resources {
        cpu_request_cores: q("requests", "cpu"),
        cpu_limit_cores: q("limits", "cpu"),
        memory_request_bytes: q("requests", "memory").map(|v| v.round() as i64),
        memory_limit_bytes: q("limits", "memory").map(|v| v.round() as i64),
    }
}

/// The container's `resources` object with the planned values written in (other keys, such
/// as ephemeral-storage, kept).
pub(crate) fn write_resources(old: Option<&Value>, planned: &Resources) -> Value {
    let mut out = old.cloned().unwrap_or_else(|| json!({}));
    if !out.is_object() {
        out = json!({});
    }
    let mut set = |section: &str, name: &str, value: Option<String>| {
        if let Some(value) = value {
            let obj = out.as_object_mut().expect("object");
            let entry = obj.entry(section).or_insert_with(|| json!({}));
            if !entry.is_object() {
                *entry = json!({});
            }
            entry[name] = Value::String(value);
        }
    };
    set(
        "requests",
        "cpu",
        planned.cpu_request_cores.map(quantity::cpu),
    );
    set("limits", "cpu", planned.cpu_limit_cores.map(quantity::cpu));
    set(
        "requests",
        "memory",
        planned.memory_request_bytes.map(quantity::memory),
    );
    set(
        "limits",
        "memory",
        planned.memory_limit_bytes.map(quantity::memory),
    );
    out
}

/// Whether two `resources` objects mean the same (quantities compared by value).
pub(crate) fn same_resources(a: Option<&Value>, b: Option<&Value>) -> bool {
    read_resources(a) == read_resources(b)
}

/// An RFC 6902 patch setting each container's `resources` (by index, guarded by a test of
/// the container's name so a reordered template fails instead of changing the wrong one).
fn resources_patch(
    changes: &[(usize, String, Option<Value>)],
) -> Result<json_patch::Patch, ReconcileError> {
    let mut ops = Vec::new();
    for (index, name, resources) in changes {
        let base = format!("/spec/template/spec/containers/{index}");
        ops.push(json!({"op": "test", "path": format!("{base}/name"), "value": name}));
        match resources {
            Some(value) => {
                ops.push(json!({"op": "add", "path": format!("{base}/resources"), "value": value}))
            }
            None => ops.push(json!({"op": "remove", "path": format!("{base}/resources")})),
        }
    }
    serde_json::from_value(Value::Array(ops)).map_err(|e| ReconcileError::Other(e.to_string()))
}

/// The outcome of one recommendation's reconcile: its new status and the action to log
/// (once per key).
struct Outcome {
    status: WorkloadRecommendationStatus,
    action: Option<(String, ActionRow)>,
}

impl Reconciler {
    /// One full pass. Errors of one object are logged and counted; the pass goes on.
    pub async fn pass(&mut self, now: DateTime<Utc>) -> Result<(), ReconcileError> {
        let mut rows = self.appliance.latest_recommendations().await?;
        // The same run's replicas and HPA rows go into the same recommendations.
        if let Some(run) = rows.first().map(|r| r.run_id.clone()) {
            let batches = self
                .appliance
                .query(&crate::scaling::scaling_rows_sql(&run))
                .await?;
            crate::scaling::merge_scaling(&mut rows, &run, &batches);
        }
        let dismissed: HashSet<String> = match rows.first() {
            Some(row) => self
                .appliance
                .dismissed(&row.run_id)
                .await?
                .into_iter()
                .collect(),
            None => HashSet::new(),
        };
        self.metrics
            .recommendations
            .store(rows.len() as u64, Ordering::Relaxed);
        let rows: Vec<WorkloadRow> = rows
            .into_iter()
            .filter(|r| self.namespaces.is_empty() || self.namespaces.contains(&r.namespace))
            .collect();
        let existing: HashMap<(String, String), WorkloadRecommendation> = self
            .list_recommendations()
            .await?
            .into_iter()
            .map(|w| ((w.namespace().unwrap_or_default(), w.name_any()), w))
            .collect();
        self.memory.apis = None;
        self.dismiss_deleted(&existing).await;
        for row in &rows {
            if dismissed.contains(&row.id()) || self.dismissed.contains(&row.id()) {
                continue;
            }
            let name = recommendation_name(row.kind, &row.name);
            let spec = spec_of(row);
            if let Some(current) = existing.get(&(row.namespace.clone(), name.clone())) {
                let mut theirs = current.spec.clone();
                theirs.approval = None;
                if theirs == spec && current.metadata.deletion_timestamp.is_none() {
                    continue;
                }
                if current.metadata.deletion_timestamp.is_some() {
                    continue;
                }
            }
            let api: Api<WorkloadRecommendation> =
                Api::namespaced(self.client.clone(), &row.namespace);
            let apply = json!({
                "apiVersion": "tally.dev/v1alpha1",
                "kind": "WorkloadRecommendation",
                "metadata": {
                    "name": name,
                    "namespace": row.namespace,
                    "labels": {
                        "app.kubernetes.io/managed-by": "tally-operator",
                        "tally.dev/target-kind": row.kind.as_str(),
                        "tally.dev/target-name": row.name,
                    },
                },
                "spec": spec,
            });
            // No finalizer here: it is added only once there is something to roll back
            // (see `set_rollback_finalizer`), so deleting a namespace or the CRDs never waits for an
            // operator that may be gone.
            match api
                .patch(
                    &name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&apply),
                )
                .await
            {
                Ok(created) => self.remember(&created),
                Err(error) => {
                    self.metrics.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(namespace = %row.namespace, %name, %error, "cannot apply the recommendation");
                }
            }
        }

        // Node groups the newest consolidation plan shrinks become NodeGroupRecommendation
        // objects (cluster-scoped), except those a person deleted for this run; they are
        // drained below when a Policy names their group (crate::drain).
        let plan = match self.appliance.node_groups().await {
            Ok(groups) => {
                let mut dismissed_groups = HashSet::new();
                let runs: HashSet<&str> = groups.iter().map(|g| g.run_id.as_str()).collect();
                for run in runs {
                    dismissed_groups.extend(self.appliance.dismissed(run).await?);
                }
                let groups: Vec<NodeGroupRow> = groups
                    .into_iter()
                    .filter(|g| {
                        let id = crate::drain::node_group_id(&g.run_id, &g.node_group);
                        !dismissed_groups.contains(&id) && !self.dismissed.contains(&id)
                    })
                    .collect();
                for group in &groups {
                    if let Err(error) = self.apply_node_group(group).await {
                        self.metrics.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(node_group = %group.node_group, %error, "cannot apply the node group recommendation");
                    }
                }
                Some(groups)
            }
            Err(error) => {
                self.metrics.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "cannot read the consolidation plan");
                None
            }
        };

        let policies = self.check_policies().await?;
        if let Some(plan) = &plan {
            self.drain_node_groups(plan, &policies, now).await?;
        }
        let mut namespace_labels: HashMap<String, BTreeMap<String, String>> = HashMap::new();
        for wr in self.list_recommendations().await? {
            let ns = wr.namespace().unwrap_or_default();
            let name = wr.name_any();
            self.remember(&wr);
            let needs_labels = policies
                .iter()
                .any(|p| p.valid && p.policy.spec.namespace_selector.is_some());
            if needs_labels && !namespace_labels.contains_key(&ns) {
                let labels = Api::<Namespace>::all(self.client.clone())
                    .get(&ns)
                    .await
                    .map(|n| n.labels().clone())
                    .unwrap_or_default();
                namespace_labels.insert(ns.clone(), labels);
            }
            let empty = BTreeMap::new();
            let labels = namespace_labels.get(&ns).unwrap_or(&empty);
            if let Err(error) = self.reconcile(&wr, &policies, labels, now).await {
                self.metrics.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(namespace = %ns, %name, %error, "reconcile failed; retried next pass");
            }
        }
        Ok(())
    }

    /// Server-side applies the NodeGroupRecommendation of one node group, and marks it
    /// Pending (with why) when it has no status yet.
    async fn apply_node_group(&self, row: &NodeGroupRow) -> Result<(), ReconcileError> {
        let name = node_group_name(&row.node_group);
        let api: Api<NodeGroupRecommendation> = Api::all(self.client.clone());
        let spec = NodeGroupRecommendationSpec {
            node_group: row.node_group.clone(),
            action: NodeGroupAction::Consolidate,
            run_id: row.run_id.clone(),
            current_nodes: row.current_nodes,
            target_nodes: row.target_nodes,
            nodes_to_remove: row.nodes_to_remove.clone(),
            why: row.why.clone(),
            savings_monthly_usd: row.savings_monthly_usd,
            approval: None,
        };
        let apply = json!({
            "apiVersion": "tally.dev/v1alpha1",
            "kind": "NodeGroupRecommendation",
            "metadata": {
                "name": name,
                "labels": {"app.kubernetes.io/managed-by": "tally-operator"},
            },
            "spec": spec,
        });
        let applied = api
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&apply),
            )
            .await?;
        if applied.status.is_none() {
            let status = NodeGroupRecommendationStatus {
                phase: Phase::Pending,
                message: Some(NODE_GROUP_PENDING.to_string()),
                ..Default::default()
            };
            api.patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await?;
        }
        Ok(())
    }

    /// Notes a recommendation as present (with the dismissal to log should it disappear).
    fn remember(&mut self, wr: &WorkloadRecommendation) {
        if wr.metadata.deletion_timestamp.is_some() {
            return;
        }
        let policy = wr.status.as_ref().and_then(|s| s.policy.clone());
        let action = Self::action(
            wr,
            "dismiss",
            "user (deleted the WorkloadRecommendation)".into(),
            policy.as_deref(),
            "deleted",
            "the recommendation was deleted; it is not created again for this analysis run",
        );
        self.memory
            .seen
            .insert((wr.namespace().unwrap_or_default(), wr.name_any()), action);
    }

    /// Recommendations this process saw that are gone now were deleted by a person (those
    /// with a finalizer are handled when their deletion starts): each is dismissed for its
    /// run, logged, and not created again while this process runs (nor after a restart,
    /// since the audit log is read every pass). One deleted while no operator ran is not
    /// known as deleted and comes back.
    async fn dismiss_deleted(
        &mut self,
        existing: &HashMap<(String, String), WorkloadRecommendation>,
    ) {
        let gone: Vec<(String, String)> = self
            .memory
            .seen
            .keys()
            .filter(|key| !existing.contains_key(*key))
            .cloned()
            .collect();
        if gone.is_empty() {
            return;
        }
        let actions: Vec<ActionRow> = gone
            .iter()
            .filter_map(|key| self.memory.seen.remove(key))
            .collect();
        for action in &actions {
            if let Some(id) = &action.recommendation_id {
                self.dismissed.insert(id.clone());
            }
            tracing::info!(namespace = %action.namespace, target = %action.target_name, "recommendation deleted: dismissed for its run");
        }
        match self.appliance.log(&actions).await {
            Ok(()) => self.count(&actions),
            Err(error) => {
                // Kept dismissed in memory; the dismissal is logged again next pass.
                self.metrics.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "cannot log the dismissals; retried next pass");
                for (key, action) in gone.into_iter().zip(actions) {
                    self.memory.seen.insert(key, action);
                }
            }
        }
    }

    /// Adds or removes the `tally.dev/rollback` finalizer (read fresh, patched with a test
    /// of the resource version so no one else's finalizer is lost). A finalizer cannot be
    /// added once the deletion started: that fails, and nothing is changed after it.
    async fn set_rollback_finalizer(
        &self,
        api: &Api<WorkloadRecommendation>,
        name: &str,
        present: bool,
    ) -> Result<(), ReconcileError> {
        let Some(fresh) = api.get_opt(name).await? else {
            return Err(ReconcileError::Other(format!(
                "WorkloadRecommendation {name} is gone"
            )));
        };
        let finalizers = fresh.finalizers();
        let at = finalizers.iter().position(|f| f == FINALIZER);
        let mut ops = vec![
            json!({"op": "test", "path": "/metadata/resourceVersion", "value": fresh.resource_version()}),
        ];
        match (at, present) {
            (None, true) if finalizers.is_empty() => {
                ops.push(json!({"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}))
            }
            (None, true) => {
                ops.push(json!({"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER}))
            }
            (Some(i), false) => {
                ops.push(json!({"op": "remove", "path": format!("/metadata/finalizers/{i}")}))
            }
            _ => return Ok(()),
        }
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops))
            .map_err(|e| ReconcileError::Other(e.to_string()))?;
        api.patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
            .await?;
        Ok(())
    }

    /// Every WorkloadRecommendation of the namespaces this operator serves.
    async fn list_recommendations(&self) -> Result<Vec<WorkloadRecommendation>, ReconcileError> {
        if self.namespaces.is_empty() {
            let all: Api<WorkloadRecommendation> = Api::all(self.client.clone());
            return Ok(all.list(&ListParams::default()).await?.items);
        }
        let mut out = Vec::new();
        for ns in &self.namespaces {
            let api: Api<WorkloadRecommendation> = Api::namespaced(self.client.clone(), ns);
            out.extend(api.list(&ListParams::default()).await?.items);
        }
        Ok(out)
    }

    async fn check_policies(&mut self) -> Result<Vec<Checked>, ReconcileError> {
        let api: Api<Policy> = Api::all(self.client.clone());
        let mut out = Vec::new();
        let (mut valid, mut invalid) = (0u64, 0u64);
        for policy in api.list(&ListParams::default()).await?.items {
            let errors = policy::validate(&policy.spec);
            let status = PolicyStatus {
                valid: errors.is_empty(),
                errors,
                observed_generation: policy.metadata.generation,
            };
            if policy.status.as_ref() != Some(&status) {
                if !status.valid {
                    tracing::warn!(policy = %policy.name_any(), errors = ?status.errors, "invalid policy: it covers nothing");
                }
                let patch = json!({"status": status});
                if let Err(error) = api
                    .patch_status(
                        &policy.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await
                {
                    tracing::warn!(policy = %policy.name_any(), %error, "cannot write the policy's status");
                }
            }
            if status.valid {
                valid += 1;
            } else {
                invalid += 1;
            }
            out.push(Checked {
                name: policy.name_any(),
                valid: status.valid,
                policy,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        self.metrics.policies_valid.store(valid, Ordering::Relaxed);
        self.metrics
            .policies_invalid
            .store(invalid, Ordering::Relaxed);
        Ok(out)
    }

    fn action(
        wr: &WorkloadRecommendation,
        operation: &str,
        actor: String,
        policy: Option<&str>,
        result: &str,
        message: &str,
    ) -> ActionRow {
        ActionRow {
            recommendation_id: Some(format!(
                "{}/{}/{}/{}",
                wr.spec.run_id,
                wr.namespace().unwrap_or_default(),
                wr.spec.target.kind.as_str(),
                wr.spec.target.name
            )),
            operation: operation.into(),
            namespace: wr.namespace().unwrap_or_default(),
            target_kind: wr.spec.target.kind.as_str().into(),
            target_name: wr.spec.target.name.clone(),
            actor,
            policy: policy.map(str::to_string),
            before: None,
            after: None,
            result: result.into(),
            message: Some(message.into()),
        }
    }

    async fn reconcile(
        &mut self,
        wr: &WorkloadRecommendation,
        policies: &[Checked],
        namespace_labels: &BTreeMap<String, String>,
        now: DateTime<Utc>,
    ) -> Result<(), ReconcileError> {
        let ns = wr.namespace().unwrap_or_default();
        let api: Api<WorkloadRecommendation> = Api::namespaced(self.client.clone(), &ns);
        let old = wr.status.clone().unwrap_or_default();

        if wr.metadata.deletion_timestamp.is_some() {
            if !wr.finalizers().iter().any(|f| f == FINALIZER) {
                return Ok(());
            }
            let mut actions = Vec::new();
            if has_previous(&old) {
                actions.push(
                    self.rollback(wr, &old, "user (deleted the WorkloadRecommendation)")
                        .await?,
                );
            }
            actions.push(Self::action(
                wr,
                "dismiss",
                "user (deleted the WorkloadRecommendation)".into(),
                old.policy.as_deref(),
                "deleted",
                "the recommendation was deleted; it is not created again for this analysis run",
            ));
            // Logged before the finalizer goes: the audit log is what keeps it dismissed.
            self.appliance.log(&actions).await?;
            self.count(&actions);
            if let Some(id) = actions.last().and_then(|a| a.recommendation_id.clone()) {
                self.dismissed.insert(id);
            }
            self.memory.seen.remove(&(ns.clone(), wr.name_any()));
            let finalizers: Vec<String> = wr
                .finalizers()
                .iter()
                .filter(|f| *f != FINALIZER)
                .cloned()
                .collect();
            let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": wr.resource_version()}});
            api.patch(
                &wr.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
            return Ok(());
        }

        let outcome = self
            .decide(wr, &old, policies, namespace_labels, now)
            .await?;
        let mut status = outcome.status;
        // A change whose action could not be logged is not decided again on the next pass
        // (the workload has it already): the action is kept and sent again, with the same
        // keys (`Appliance::log`), until it is stored.
        let unlogged = (ns.clone(), wr.name_any());
        let action = match outcome.action {
            Some(action) => {
                self.memory.unlogged.remove(&unlogged);
                Some(action)
            }
            None => self.memory.unlogged.remove(&unlogged),
        };
        if let Some((key, action)) = action
            && old.last_logged.as_deref() != Some(key.as_str())
        {
            match self.appliance.log(std::slice::from_ref(&action)).await {
                Ok(()) => {
                    self.count(std::slice::from_ref(&action));
                    status.last_logged = Some(key);
                }
                Err(error) => {
                    self.metrics.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, "cannot log the action; retried next pass");
                    self.memory.unlogged.insert(unlogged, (key, action));
                }
            }
        } else {
            status.last_logged = old.last_logged.clone();
        }
        if wr.status.as_ref() != Some(&status) {
            self.write_status(&api, wr, &status).await?;
        }
        // The finalizer only while there is something to roll back (added before the first
        // change in `decide`; removed once the previous values are restored).
        let has = wr.finalizers().iter().any(|f| f == FINALIZER);
        if has != has_previous(&status) {
            self.set_rollback_finalizer(&api, &wr.name_any(), has_previous(&status))
                .await?;
        }
        Ok(())
    }

    pub(crate) fn count(&self, actions: &[ActionRow]) {
        for a in actions {
            self.metrics.action(&a.operation, &a.result);
        }
    }

    async fn write_status(
        &self,
        api: &Api<WorkloadRecommendation>,
        wr: &WorkloadRecommendation,
        status: &WorkloadRecommendationStatus,
    ) -> Result<(), ReconcileError> {
        // The whole status replaced, so cleared fields really go.
        let patch: json_patch::Patch = serde_json::from_value(json!([
            {"op": "add", "path": "/status", "value": status}
        ]))
        .map_err(|e| ReconcileError::Other(e.to_string()))?;
        api.patch_status(
            &wr.name_any(),
            &PatchParams::default(),
            &Patch::<()>::Json(patch),
        )
        .await?;
        Ok(())
    }

    /// Decides, and applies or rolls back when the decision says so.
    async fn decide(
        &mut self,
        wr: &WorkloadRecommendation,
        old: &WorkloadRecommendationStatus,
        policies: &[Checked],
        namespace_labels: &BTreeMap<String, String>,
        now: DateTime<Utc>,
    ) -> Result<Outcome, ReconcileError> {
        let ns = wr.namespace().unwrap_or_default();
        let run = wr.spec.run_id.clone();
        let keep = |phase: Phase, message: String, policy: Option<String>| {
            let mut s = old.clone();
            s.phase = phase;
            s.message = Some(message);
            s.policy = policy;
            s
        };

        if wr.spec.approval == Some(Approval::Rejected) {
            if has_previous(old) {
                let action = self
                    .rollback(wr, old, "user (rejected the recommendation)")
                    .await?;
                let status = WorkloadRecommendationStatus {
                    phase: Phase::RolledBack,
                    message: Some(
                        "rejected after it was applied: the previous resources are restored".into(),
                    ),
                    policy: old.policy.clone(),
                    applied_run_id: None,
                    previous: Vec::new(),
                    previous_scaling: None,
                    applied: BTreeMap::new(),
                    last_logged: None,
                };
                return Ok(Outcome {
                    status,
                    action: Some((format!("{run}:rollback"), action)),
                });
            }
            if matches!(old.phase, Phase::RolledBack | Phase::Rejected) {
                return Ok(Outcome {
                    status: old.clone(),
                    action: None,
                });
            }
            let message = "rejected: it is never applied".to_string();
            let action = Self::action(wr, "reject", "user".into(), None, "skipped", &message);
            return Ok(Outcome {
                status: keep(Phase::Rejected, message, None),
                action: Some((format!("{run}:reject"), action)),
            });
        }

        let kind = wr.spec.target.kind;
        let workloads: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &ns, &workload_resource(kind));
        let Some(workload) = workloads.get_opt(&wr.spec.target.name).await? else {
            let message = format!("{} {} does not exist", kind.as_str(), wr.spec.target.name);
            return Ok(Outcome {
                status: keep(Phase::Pending, message, None),
                action: None,
            });
        };

        let subject = Subject {
            namespace: &ns,
            namespace_labels,
            kind,
            name: &wr.spec.target.name,
            labels: workload.labels(),
        };
        let covering: Vec<&Checked> = policies
            .iter()
            .filter(|p| p.valid && policy::covers(&p.policy.spec, &subject))
            .collect();
        let target = format!("{} {}", kind.as_str(), wr.spec.target.name);

        if covering.is_empty() {
            if old.phase == Phase::Applied {
                let message =
                    "applied earlier; no Policy covers the workload now, so it is left as it is"
                        .to_string();
                return Ok(Outcome {
                    status: keep(Phase::Applied, message, None),
                    action: None,
                });
            }
            let message = "no Policy covers this workload: it is never changed".to_string();
            let action = Self::action(
                wr,
                "skip",
                "tally-operator".into(),
                None,
                "skipped",
                &message,
            );
            return Ok(Outcome {
                status: keep(Phase::Pending, message, None),
                action: Some((format!("{run}:uncovered"), action)),
            });
        }
        // Audit-only wins: when any covering policy only audits, nothing is written.
        if let Some(audit) = covering
            .iter()
            .find(|p| p.policy.spec.mode == Mode::AuditOnly)
        {
            let phase = if old.phase == Phase::Applied {
                Phase::Applied
            } else {
                Phase::Pending
            };
            let message = format!(
                "policy {} is audit-only: the recommendation is shown, never applied",
                audit.name
            );
            let action = Self::action(
                wr,
                "audit",
                format!("policy/{}", audit.name),
                Some(&audit.name),
                "skipped",
                &message,
            );
            return Ok(Outcome {
                status: keep(phase, message, Some(audit.name.clone())),
                action: Some((format!("{run}:audit:{}", audit.name), action)),
            });
        }
        // Several auto-apply policies may cover one workload: all of them hold at once. The
        // bounds are their intersection (the highest minimum, the lowest maximum, the smallest
        // step), every one's time window must be open, and any that applies through the
        // webhook defers the change. Policies whose bounds cannot all hold change nothing.
        let names = covering
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join("+");
        let actor = format!("policy/{names} (auto-apply)");

        // Through the webhook the workload is never written; the updater (crate::updater)
        // replaces running pods that differ, every pass, so there is no early return.
        let webhook = covering
            .iter()
            .any(|p| p.policy.spec.apply_method == crate::crd::ApplyMethod::Webhook);
        let applied_now =
            old.phase == Phase::Applied && old.applied_run_id.as_deref() == Some(run.as_str());
        if applied_now && !webhook {
            return Ok(Outcome {
                status: old.clone(),
                action: None,
            });
        }
        if !covering
            .iter()
            .all(|p| policy::in_window(&p.policy.spec.windows, now))
        {
            if applied_now {
                let message = format!(
                    "applied at pod creation by policy {names}; outside its time window the updater evicts no pod"
                );
                return Ok(Outcome {
                    status: keep(Phase::Applied, message, Some(names.clone())),
                    action: None,
                });
            }
            let message = format!("approved by policy {names}; waiting for its time window");
            let action = Self::action(wr, "defer", actor, Some(&names), "deferred", &message);
            return Ok(Outcome {
                status: keep(Phase::Approved, message, Some(names.clone())),
                action: Some((format!("{run}:window:{names}"), action)),
            });
        }
        let bounds = Bounds::all(covering.iter().map(|p| &p.policy.spec));
        if let Some(conflict) = bounds.conflict() {
            let message =
                format!("policies {names} cannot all hold ({conflict}): nothing is changed");
            let action = Self::action(wr, "skip", actor, Some(&names), "skipped", &message);
            return Ok(Outcome {
                status: keep(Phase::Pending, message, Some(names.clone())),
                action: Some((format!("{run}:conflict:{names}"), action)),
            });
        }

        // Inside the window: plan every container the recommendation names.
        let containers = template_containers(&workload);
        let mut changes = Vec::new();
        let mut applied = BTreeMap::new();
        let (mut before, mut after) = (serde_json::Map::new(), serde_json::Map::new());
        for rec in &wr.spec.containers {
            let Some((index, name, resources)) = containers.iter().find(|(_, n, _)| *n == rec.name)
            else {
                continue;
            };
            let current = read_resources(resources.as_ref());
            let planned = policy::plan(&current, &rec.recommended, &bounds);
            let new = write_resources(resources.as_ref(), &planned);
            applied.insert(name.clone(), planned);
            if !same_resources(resources.as_ref(), Some(&new)) {
                before.insert(name.clone(), resources.clone().unwrap_or(Value::Null));
                after.insert(name.clone(), new.clone());
                changes.push((*index, name.clone(), Some(new)));
            }
        }
        let mut status = old.clone();
        status.policy = Some(names.clone());
        if webhook {
            let applies = format!(
                "policy {names} sets these requests at pod creation through the admission webhook (the workload spec is not written)"
            );
            let update = self
                .update_pods(wr, &workload, &applied, &actor, &names, now)
                .await?;
            status.phase = Phase::Applied;
            status.applied_run_id = Some(run.clone());
            status.applied = applied;
            status.message = Some(format!("{applies}; {update}"));
            let action = Self::action(wr, "apply", actor, Some(&names), "applied", &applies);
            return Ok(Outcome {
                status,
                action: Some((format!("{run}:webhook:{names}"), action)),
            });
        }
        // Replicas or HPA settings (crate::scaling), under the same policies and step.
        let (scaling, mut notes) = self
            .plan_scaling(wr, &workload, bounds.max_step_percent)
            .await?;
        // In-place resize is asked for: say whether the cluster offers it; either way the
        // pod template is patched (a rolling update).
        if covering
            .iter()
            .any(|p| p.policy.spec.apply_method == crate::crd::ApplyMethod::InPlaceResize)
            && !changes.is_empty()
        {
            let apis = self.apis().await?;
            notes.push(if apis.pod_resize {
                "in-place resize: this cluster offers pods/resize, but the operator does not resize running pods in place yet, so it patched the pod template".to_string()
            } else {
                "in-place resize: this cluster offers no pods/resize subresource in its core API (Kubernetes 1.33+), so the operator patched the pod template instead".to_string()
            });
        }
        let noted = |message: String| {
            if notes.is_empty() {
                message
            } else {
                format!("{message}; {}", notes.join("; "))
            }
        };
        if changes.is_empty() && scaling.is_none() {
            status.phase = Phase::Applied;
            status.applied_run_id = Some(run.clone());
            status.applied = applied;
            status.message = Some(noted(format!(
                "{target} already has the values policy {} allows",
                names
            )));
            let action = Self::action(
                wr,
                "apply",
                actor,
                Some(&names),
                "unchanged",
                status.message.as_deref().unwrap_or_default(),
            );
            return Ok(Outcome {
                status,
                action: Some((format!("{run}:apply"), action)),
            });
        }
        // The previous values are kept (in the status) before anything changes, and the
        // finalizer added, so a deletion from now on restores them; only the state before
        // the operator's first change, so a rollback restores that.
        let mut keep_previous = false;
        if status.previous.is_empty() {
            status.previous = containers
                .iter()
                .map(|(_, name, resources)| PreviousResources {
                    container: name.clone(),
                    resources_json: resources.as_ref().map(|r| r.to_string()),
                })
                .collect();
            keep_previous = true;
        }
        if let Some(plan) = &scaling
            && status.previous_scaling.is_none()
        {
            status.previous_scaling = Some(plan.previous());
            keep_previous = true;
        }
        let api: Api<WorkloadRecommendation> = Api::namespaced(self.client.clone(), &ns);
        if keep_previous {
            status.message = Some("applying".into());
            self.write_status(&api, wr, &status).await?;
        }
        // Also when the previous values were kept on an earlier pass that failed before
        // the finalizer was added: never change the workload without it.
        if keep_previous || !wr.finalizers().iter().any(|f| f == FINALIZER) {
            self.set_rollback_finalizer(&api, &wr.name_any(), true)
                .await?;
        }
        let mut action = Self::action(wr, "apply", actor, Some(&names), "applied", "");
        if let Some(plan) = &scaling {
            let key = format!("{}/{}", plan.kind, plan.name);
            before.insert(key.clone(), Value::Object(plan.before.clone()));
            after.insert(key, Value::Object(plan.after.clone()));
        }
        action.before = Some(Value::Object(before).to_string());
        action.after = Some(Value::Object(after).to_string());
        let mut done = Vec::new();
        let mut failure = None;
        if !changes.is_empty() {
            let patch = resources_patch(&changes)?;
            match workloads
                .patch(
                    &wr.spec.target.name,
                    &PatchParams::default(),
                    &Patch::<()>::Json(patch),
                )
                .await
            {
                Ok(_) => {
                    self.metrics.patches.fetch_add(1, Ordering::Relaxed);
                    done.push("requests/limits (a rolling update of its pods)".to_string());
                }
                Err(error) => failure = Some(format!("patching {target} failed: {error}")),
            }
        }
        if failure.is_none()
            && let Some(plan) = &scaling
        {
            match self.patch_scaling(&ns, plan, plan.ops.clone()).await {
                Ok(()) => {
                    self.metrics.patches.fetch_add(1, Ordering::Relaxed);
                    done.push(plan.summary.clone());
                }
                Err(error) => {
                    failure = Some(format!(
                        "changing {} {} failed: {error}",
                        plan.kind, plan.name
                    ))
                }
            }
        }
        match failure {
            None => {
                status.phase = Phase::Applied;
                status.applied_run_id = Some(run.clone());
                status.applied = applied;
                status.message = Some(noted(format!(
                    "applied to {target} by policy {}: {}",
                    names,
                    done.join("; ")
                )));
                action.message = status.message.clone();
                Ok(Outcome {
                    status,
                    action: Some((format!("{run}:apply"), action)),
                })
            }
            Some(error) => {
                // Retried next pass; what did change is restored by a rollback.
                status.phase = Phase::Approved;
                status.message = Some(if done.is_empty() {
                    error.clone()
                } else {
                    format!("{error} (applied: {})", done.join("; "))
                });
                action.result = "failed".into();
                action.message = status.message.clone();
                Ok(Outcome {
                    status,
                    action: Some((format!("{run}:failed:{error}"), action)),
                })
            }
        }
    }

    /// What the API server offers, discovered once per pass.
    async fn apis(&mut self) -> Result<crate::scaling::Apis, ReconcileError> {
        if let Some(apis) = self.memory.apis {
            return Ok(apis);
        }
        let apis = crate::scaling::discover(&self.client).await?;
        tracing::debug!(?apis, "API discovered");
        self.memory.apis = Some(apis);
        Ok(apis)
    }

    /// The HPA API and the HPA that targets the workload, if any.
    async fn hpa_of(
        &mut self,
        ns: &str,
        kind: WorkloadKind,
        name: &str,
    ) -> Result<Option<(crate::scaling::HpaApi, DynamicObject)>, ReconcileError> {
        let Some(api) = self.apis().await?.hpa else {
            return Ok(None);
        };
        let hpas: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), ns, &api.resource());
        let list = hpas.list(&ListParams::default()).await?.items;
        Ok(crate::scaling::targeting(&list, kind, name).map(|h| (api, h.clone())))
    }

    /// The replicas or HPA change the recommendation asks for, within the step, and notes on
    /// what is left as it is (see crate::scaling).
    async fn plan_scaling(
        &mut self,
        wr: &WorkloadRecommendation,
        workload: &DynamicObject,
        step: Option<u32>,
    ) -> Result<(Option<crate::scaling::ScalingPlan>, Vec<String>), ReconcileError> {
        let replicas = wr
            .spec
            .replicas
            .as_ref()
            .filter(|r| r.recommended.is_some());
        let hpa_rec = wr.spec.hpa.as_ref();
        if replicas.is_none() && hpa_rec.is_none() {
            return Ok((None, Vec::new()));
        }
        let ns = wr.namespace().unwrap_or_default();
        let kind = wr.spec.target.kind;
        let hpa = self.hpa_of(&ns, kind, &wr.spec.target.name).await?;
        let mut notes = Vec::new();
        match (hpa, hpa_rec) {
            (Some((api, hpa)), Some(rec)) => {
                let (plan, more) = crate::scaling::plan_hpa(&hpa, api, rec, step);
                notes.extend(more);
                Ok((plan, notes))
            }
            (Some((_, hpa)), None) => {
                notes.push(format!(
                    "HPA {} scales {}: its replicas are left to the HPA",
                    hpa.name_any(),
                    wr.spec.target.name
                ));
                Ok((None, notes))
            }
            (None, hpa_rec) => {
                if hpa_rec.is_some() {
                    notes
                        .push("an HPA is suggested; the operator does not create HPAs".to_string());
                }
                let plan =
                    replicas.and_then(|r| crate::scaling::plan_replicas(workload, kind, r, step));
                Ok((plan, notes))
            }
        }
    }

    /// Applies RFC 6902 `ops` to the object a scaling plan (or a kept previous) names.
    async fn patch_scaling(
        &self,
        ns: &str,
        target: &crate::scaling::ScalingPlan,
        ops: Vec<Value>,
    ) -> Result<(), ReconcileError> {
        self.patch_scaling_object(ns, &target.api_version, &target.kind, &target.name, ops)
            .await
    }

    async fn patch_scaling_object(
        &self,
        ns: &str,
        api_version: &str,
        kind: &str,
        name: &str,
        ops: Vec<Value>,
    ) -> Result<(), ReconcileError> {
        let resource = match WorkloadKind::parse(kind) {
            Some(kind) => workload_resource(kind),
            None => crate::scaling::HpaApi::parse(api_version)
                .ok_or_else(|| ReconcileError::Other(format!("unknown HPA API {api_version}")))?
                .resource(),
        };
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), ns, &resource);
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops))
            .map_err(|e| ReconcileError::Other(e.to_string()))?;
        api.patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
            .await?;
        Ok(())
    }

    /// Restores every container's `resources` exactly as kept in the status.
    async fn rollback(
        &mut self,
        wr: &WorkloadRecommendation,
        old: &WorkloadRecommendationStatus,
        actor: &str,
    ) -> Result<ActionRow, ReconcileError> {
        let ns = wr.namespace().unwrap_or_default();
        let kind = wr.spec.target.kind;
        let workloads: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &ns, &workload_resource(kind));
        let mut action = Self::action(
            wr,
            "rollback",
            actor.into(),
            old.policy.as_deref(),
            "rolled-back",
            "",
        );
        let Some(workload) = workloads.get_opt(&wr.spec.target.name).await? else {
            action.result = "skipped".into();
            action.message = Some("the workload no longer exists".into());
            return Ok(action);
        };
        let containers = template_containers(&workload);
        let (mut before, mut after) = (serde_json::Map::new(), serde_json::Map::new());
        let mut changes = Vec::new();
        for previous in &old.previous {
            let Some((index, name, resources)) =
                containers.iter().find(|(_, n, _)| *n == previous.container)
            else {
                continue;
            };
            let restored: Option<Value> = match &previous.resources_json {
                Some(text) => Some(
                    serde_json::from_str(text).map_err(|e| ReconcileError::Other(e.to_string()))?,
                ),
                None => None,
            };
            if resources != &restored {
                before.insert(name.clone(), resources.clone().unwrap_or(Value::Null));
                after.insert(name.clone(), restored.clone().unwrap_or(Value::Null));
                changes.push((*index, name.clone(), restored));
            }
        }
        let mut restored = Vec::new();
        if !changes.is_empty() {
            let patch = resources_patch(&changes)?;
            workloads
                .patch(
                    &wr.spec.target.name,
                    &PatchParams::default(),
                    &Patch::<()>::Json(patch),
                )
                .await?;
            restored.push(format!(
                "the previous resources of {} {}",
                kind.as_str(),
                wr.spec.target.name
            ));
        }
        // The replicas or HPA settings, exactly as kept.
        if let Some(previous) = &old.previous_scaling {
            let spec = if WorkloadKind::parse(&previous.kind).is_some() {
                Some(workload.data["spec"].clone())
            } else {
                let api =
                    crate::scaling::HpaApi::parse(&previous.api_version).ok_or_else(|| {
                        ReconcileError::Other(format!("unknown HPA API {}", previous.api_version))
                    })?;
                let hpas: Api<DynamicObject> =
                    Api::namespaced_with(self.client.clone(), &ns, &api.resource());
                hpas.get_opt(&previous.name)
                    .await?
                    .map(|h| h.data["spec"].clone())
            };
            match spec {
                None => restored.push(format!(
                    "{} {} no longer exists, so its settings are not restored",
                    previous.kind, previous.name
                )),
                Some(spec) => {
                    let ops = crate::scaling::restore_ops(previous, &spec)
                        .map_err(ReconcileError::Other)?;
                    if !ops.is_empty() {
                        let key = format!("{}/{}", previous.kind, previous.name);
                        let fields = |v: &Value| {
                            let kept: serde_json::Map<String, Value> =
                                serde_json::from_str(&previous.spec_json).unwrap_or_default();
                            Value::Object(
                                kept.keys()
                                    .filter_map(|k| v.get(k).map(|x| (k.clone(), x.clone())))
                                    .collect(),
                            )
                        };
                        before.insert(key.clone(), fields(&spec));
                        after.insert(
                            key,
                            serde_json::from_str(&previous.spec_json).unwrap_or_default(),
                        );
                        self.patch_scaling_object(
                            &ns,
                            &previous.api_version,
                            &previous.kind,
                            &previous.name,
                            ops,
                        )
                        .await?;
                        restored.push(format!(
                            "the previous settings of {} {}",
                            previous.kind, previous.name
                        ));
                    }
                }
            }
        }
        action.before = Some(Value::Object(before).to_string());
        action.after = Some(Value::Object(after).to_string());
        if restored.is_empty() {
            action.message = Some("the workload already has its previous values".into());
            return Ok(action);
        }
        self.metrics.rollbacks.fetch_add(1, Ordering::Relaxed);
        action.message = Some(format!("restored {}", restored.join(" and ")));
        Ok(action)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_group_objects_have_valid_names() {
        assert_eq!(node_group_name("general"), "nodegroup-general");
        assert_eq!(
            node_group_name("eks/Compute_Spot"),
            "nodegroup-eks-compute-spot"
        );
        assert_eq!(node_group_name("--x--"), "nodegroup-x");
        assert!(node_group_name(&"g".repeat(400)).len() <= 253);
    }

    #[test]
    fn resources_are_written_in_keeping_other_keys() {
        let old = json!({"requests": {"cpu": "1", "ephemeral-storage": "1Gi"}, "limits": {"memory": "1Gi"}});
        let planned = Resources {
            cpu_request_cores: Some(0.25),
            cpu_limit_cores: None,
            memory_request_bytes: Some(256 << 20),
            memory_limit_bytes: None,
        };
        let new = write_resources(Some(&old), &planned);
        assert_eq!(
            new,
            json!({"requests": {"cpu": "250m", "ephemeral-storage": "1Gi", "memory": "256Mi"}, "limits": {"memory": "1Gi"}})
        );
        assert!(same_resources(
            Some(&json!({"requests": {"cpu": "0.5"}})),
            Some(&json!({"requests": {"cpu": "500m"}}))
        ));
        assert!(!same_resources(Some(&old), Some(&new)));
    }

    #[test]
    fn the_patch_tests_the_container_name_before_replacing() {
        let patch = resources_patch(&[
            (1, "app".into(), Some(json!({"requests": {"cpu": "1"}}))),
            (0, "side".into(), None),
        ])
        .unwrap();
        let value = serde_json::to_value(&patch).unwrap();
        assert_eq!(
            value,
            json!([
                {"op": "test", "path": "/spec/template/spec/containers/1/name", "value": "app"},
                {"op": "add", "path": "/spec/template/spec/containers/1/resources", "value": {"requests": {"cpu": "1"}}},
                {"op": "test", "path": "/spec/template/spec/containers/0/name", "value": "side"},
                {"op": "remove", "path": "/spec/template/spec/containers/0/resources"},
            ])
        );
    }
}
