//! Node consolidation: simulate moving the pods of each under-used node onto the other nodes,
//! as the scheduler would place them (requests, taints and tolerations, node selectors,
//! required node affinity), with what blocks a drain (local storage, a PDB that allows no
//! disruption, a pod without a controller). DaemonSet pods stay: they go with their node.
//!
//! Deterministic: nodes are tried from the least used (ties by name), pods from the largest,
//! and each pod goes to the fitting node that is left fullest (best fit; ties by name). A node
//! that receives pods is kept in this run. Bin-packing is why this is Rust and not SQL.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

/// A node as consolidation sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeInfo {
    pub name: String,
    pub group: String,
    pub instance_type: String,
    pub capacity_type: String,
    pub region: String,
    pub cpu_capacity: f64,
    pub memory_capacity: i64,
    pub cpu_allocatable: f64,
    pub memory_allocatable: i64,
    pub hourly_usd: f64,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
}

/// A node taint.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Taint {
    pub key: String,
    #[serde(default)]
    pub value: Option<String>,
    pub effect: String,
}

/// A pod toleration, as in the pod spec.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct Toleration {
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub operator: Option<String>,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub effect: Option<String>,
}

/// One requirement of a node selector term (`matchExpressions` item).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Requirement {
    pub key: String,
    pub operator: String,
    #[serde(default)]
    pub values: Vec<String>,
}

/// A node selector term of required node affinity; the pod fits a node that matches any term.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSelectorTerm {
    #[serde(default)]
    pub match_expressions: Vec<Requirement>,
    #[serde(default)]
    pub match_fields: Vec<Requirement>,
}

/// What constrains where a pod may run (the pods table's `scheduling` JSON).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct Scheduling {
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default)]
    pub tolerations: Vec<Toleration>,
    #[serde(default)]
    pub required_node_affinity: Vec<NodeSelectorTerm>,
    #[serde(default)]
    pub local_storage: bool,
}

/// A running pod as consolidation sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub workload_kind: String,
    pub workload_name: String,
    pub cpu_request: f64,
    pub memory_request: i64,
    pub pdb_max_unavailable: Option<i64>,
    /// `Err` holds why the scheduling JSON could not be read (the pod then blocks its node).
    pub scheduling: Result<Scheduling, String>,
}

impl PodInfo {
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Parses the `scheduling` column (NULL means unconstrained).
pub fn parse_scheduling(json: Option<&str>) -> Result<Scheduling, String> {
    match json {
        None | Some("") => Ok(Scheduling::default()),
        Some(text) => serde_json::from_str(text)
            .map_err(|e| format!("its scheduling constraints cannot be read ({e})")),
    }
}

/// Parses node labels (a JSON object; NULL is none).
pub fn parse_labels(json: Option<&str>) -> BTreeMap<String, String> {
    json.and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or_default()
}

/// Parses node taints (a JSON array of {key, value, effect}; NULL is none).
pub fn parse_taints(json: Option<&str>) -> Vec<Taint> {
    json.and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or_default()
}

/// Settings of the simulation.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ConsolidationConfig {
    /// A node is a candidate when its requests use less than this share of its allocatable
    /// CPU and of its memory (the cluster-autoscaler's default is 0.5).
    pub utilization_threshold: f64,
}

impl Default for ConsolidationConfig {
    fn default() -> Self {
        ConsolidationConfig {
            utilization_threshold: 0.5,
        }
    }
}

/// What the simulation decided for one node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeDecision {
    pub node: String,
    pub group: String,
    pub instance_type: String,
    pub hourly_usd: f64,
    pub removable: bool,
    /// Why it can go (where its pods move) or why not.
    pub why: String,
}

/// The outcome: a decision per node (in node name order) and the moves of removable nodes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    pub nodes: Vec<NodeDecision>,
    /// (pod, from node, to node)
    pub moves: Vec<(String, String, String)>,
}

impl Plan {
    /// Per node group: (nodes now, nodes after, monthly savings, removable node names).
    pub fn groups(&self) -> BTreeMap<String, (usize, usize, f64, Vec<String>)> {
        let mut out: BTreeMap<String, (usize, usize, f64, Vec<String>)> = BTreeMap::new();
        for d in &self.nodes {
            let g = out.entry(d.group.clone()).or_default();
            g.0 += 1;
            if d.removable {
                g.2 += d.hourly_usd * crate::HOURS_PER_MONTH;
                g.3.push(d.node.clone());
            } else {
                g.1 += 1;
            }
        }
        out
    }
}

fn tolerates(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| {
        let effect_ok = t
            .effect
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == taint.effect);
        let key_ok = match t.key.as_deref() {
            None | Some("") => t.operator.as_deref() == Some("Exists"),
            Some(k) => k == taint.key,
        };
        let value_ok = match t.operator.as_deref() {
            Some("Exists") => true,
            _ => t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        };
        effect_ok && key_ok && value_ok
    })
}

fn requirement_matches(r: &Requirement, labels: &BTreeMap<String, String>) -> bool {
    let value = labels.get(&r.key);
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| r.values.contains(v)),
        "NotIn" => value.is_none_or(|v| !r.values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                r.values.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// Why `pod` cannot run on `node` by its constraints (capacity aside), or None if it may.
fn constraint_violation(s: &Scheduling, node: &NodeInfo) -> Option<&'static str> {
    if s.node_selector
        .iter()
        .any(|(k, v)| node.labels.get(k) != Some(v))
    {
        return Some("node selector");
    }
    if node
        .taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .any(|t| !tolerates(&s.tolerations, t))
    {
        return Some("taints");
    }
    if !s.required_node_affinity.is_empty() {
        let mut fields = BTreeMap::new();
        fields.insert("metadata.name".to_string(), node.name.clone());
        let any = s.required_node_affinity.iter().any(|term| {
            term.match_expressions
                .iter()
                .all(|r| requirement_matches(r, &node.labels))
                && term
                    .match_fields
                    .iter()
                    .all(|r| requirement_matches(r, &fields))
                && !(term.match_expressions.is_empty() && term.match_fields.is_empty())
        });
        if !any {
            return Some("node affinity");
        }
    }
    None
}

const MIB: f64 = 1_048_576.0;

/// Simulates consolidation of `nodes` running `pods`.
pub fn plan(nodes: &[NodeInfo], pods: &[PodInfo], config: &ConsolidationConfig) -> Plan {
    let mut by_node: BTreeMap<&str, Vec<&PodInfo>> = BTreeMap::new();
    for p in pods {
        by_node.entry(p.node.as_str()).or_default().push(p);
    }
    // Requests in use per node.
    let mut used: Vec<(f64, i64)> = nodes
        .iter()
        .map(|n| {
            by_node.get(n.name.as_str()).map_or((0.0, 0), |ps| {
                (
                    ps.iter().map(|p| p.cpu_request).sum(),
                    ps.iter().map(|p| p.memory_request).sum(),
                )
            })
        })
        .collect();
    let share = |i: usize, used: &[(f64, i64)]| {
        let n = &nodes[i];
        (
            used[i].0 / n.cpu_allocatable.max(1e-9),
            used[i].1 as f64 / (n.memory_allocatable.max(1) as f64),
        )
    };
    let mut order: Vec<usize> = (0..nodes.len()).collect();
    order.sort_by(|&a, &b| {
        let (ca, ma) = share(a, &used);
        let (cb, mb) = share(b, &used);
        ca.max(ma)
            .total_cmp(&cb.max(mb))
            .then_with(|| nodes[a].name.cmp(&nodes[b].name))
    });

    let mut removed: BTreeSet<usize> = BTreeSet::new();
    let mut receivers: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    let mut decisions: BTreeMap<usize, (bool, String)> = BTreeMap::new();
    let mut moves = Vec::new();

    for &i in &order {
        let node = &nodes[i];
        if let Some(from) = receivers.get(&i) {
            let from: Vec<&str> = from.iter().map(String::as_str).collect();
            decisions.insert(
                i,
                (
                    false,
                    format!("kept: it receives pods from {}", from.join(", ")),
                ),
            );
            continue;
        }
        let (cpu_share, mem_share) = share(i, &used);
        if cpu_share >= config.utilization_threshold || mem_share >= config.utilization_threshold {
            decisions.insert(
                i,
                (
                    false,
                    format!(
                        "busy: requests use {:.0} % of its CPU and {:.0} % of its memory (consolidation considers nodes under {:.0} %)",
                        100.0 * cpu_share,
                        100.0 * mem_share,
                        100.0 * config.utilization_threshold
                    ),
                ),
            );
            continue;
        }
        let on_node: Vec<&PodInfo> = by_node.get(node.name.as_str()).cloned().unwrap_or_default();
        let mut movable: Vec<&PodInfo> = on_node
            .iter()
            .copied()
            .filter(|p| p.workload_kind != "DaemonSet")
            .collect();
        let daemons = on_node.len() - movable.len();
        // What blocks a drain outright.
        let blocker = movable.iter().find_map(|p| {
            if let Err(e) = &p.scheduling {
                return Some(format!("pod {} blocks it: {e}", p.id()));
            }
            if p.scheduling.as_ref().is_ok_and(|s| s.local_storage) {
                return Some(format!(
                    "pod {} uses local storage (emptyDir or hostPath) that a move would lose",
                    p.id()
                ));
            }
            if p.workload_kind.is_empty() || p.workload_kind == "Pod" {
                return Some(format!(
                    "pod {} has no controller to recreate it elsewhere",
                    p.id()
                ));
            }
            if p.pdb_max_unavailable == Some(0) {
                return Some(format!(
                    "pod {}: the PodDisruptionBudget of {} {} allows no disruption",
                    p.id(),
                    p.workload_kind,
                    p.workload_name
                ));
            }
            None
        });
        if let Some(why) = blocker {
            decisions.insert(i, (false, why));
            continue;
        }
        movable.sort_by(|a, b| {
            b.cpu_request
                .total_cmp(&a.cpu_request)
                .then(b.memory_request.cmp(&a.memory_request))
                .then_with(|| a.id().cmp(&b.id()))
        });
        let mut trial = used.clone();
        let mut placed: Vec<(String, usize)> = Vec::new();
        let mut failure = None;
        for p in &movable {
            let s = p.scheduling.as_ref().expect("checked above");
            let mut best: Option<(f64, usize)> = None;
            let mut rejected: BTreeMap<&'static str, usize> = BTreeMap::new();
            for (j, other) in nodes.iter().enumerate() {
                if j == i || removed.contains(&j) {
                    continue;
                }
                if let Some(why) = constraint_violation(s, other) {
                    *rejected.entry(why).or_default() += 1;
                    continue;
                }
                let cpu_left = other.cpu_allocatable - trial[j].0 - p.cpu_request;
                let mem_left = other.memory_allocatable - trial[j].1 - p.memory_request;
                if cpu_left < -1e-9 || mem_left < 0 {
                    *rejected.entry("room").or_default() += 1;
                    continue;
                }
                let score = cpu_left / other.cpu_allocatable.max(1e-9)
                    + mem_left as f64 / other.memory_allocatable.max(1) as f64;
                if best.is_none_or(|(b, _)| score < b - 1e-12) {
                    best = Some((score, j));
                }
            }
            match best {
                Some((_, j)) => {
                    trial[j].0 += p.cpu_request;
                    trial[j].1 += p.memory_request;
                    placed.push((p.id(), j));
                }
                None => {
                    let reasons: Vec<String> = rejected
                        .iter()
                        .map(|(why, n)| match *why {
                            "room" => format!("{n} without room"),
                            other => format!("{n} excluded by its {other}"),
                        })
                        .collect();
                    failure = Some(format!(
                        "pod {} ({:.3} cores, {:.0} MiB) fits on no other node ({})",
                        p.id(),
                        p.cpu_request,
                        p.memory_request as f64 / MIB,
                        if reasons.is_empty() {
                            "there is no other node".to_string()
                        } else {
                            reasons.join(", ")
                        }
                    ));
                    break;
                }
            }
        }
        if let Some(why) = failure {
            decisions.insert(i, (false, why));
            continue;
        }
        used = trial;
        used[i] = (0.0, 0);
        removed.insert(i);
        let mut targets: BTreeSet<&str> = BTreeSet::new();
        for (pod, j) in &placed {
            receivers.entry(*j).or_default().insert(node.name.clone());
            targets.insert(nodes[*j].name.as_str());
            moves.push((pod.clone(), node.name.clone(), nodes[*j].name.clone()));
        }
        let why = if placed.is_empty() {
            format!(
                "can go: nothing to move ({daemons} DaemonSet pod(s) go with it); saves {:.2} $/month",
                node.hourly_usd * crate::HOURS_PER_MONTH
            )
        } else {
            format!(
                "can go: its {} pod(s) fit on {} ({daemons} DaemonSet pod(s) go with it); saves {:.2} $/month",
                placed.len(),
                targets.into_iter().collect::<Vec<_>>().join(", "),
                node.hourly_usd * crate::HOURS_PER_MONTH
            )
        };
        decisions.insert(i, (true, why));
    }
    let mut out = Plan {
        nodes: decisions
            .into_iter()
            .map(|(i, (removable, why))| NodeDecision {
                node: nodes[i].name.clone(),
                group: nodes[i].group.clone(),
                instance_type: nodes[i].instance_type.clone(),
                hourly_usd: nodes[i].hourly_usd,
                removable,
                why,
            })
            .collect(),
        moves,
    };
    out.nodes.sort_by(|a, b| a.node.cmp(&b.node));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: i64 = 1 << 30;

    fn node(name: &str, cpu: f64, mem_gib: i64) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            group: "general".into(),
            instance_type: "m5.xlarge".into(),
            capacity_type: "on_demand".into(),
            region: "us-east-1".into(),
            cpu_capacity: cpu,
            memory_capacity: mem_gib * GIB,
            cpu_allocatable: cpu,
            memory_allocatable: mem_gib * GIB,
            hourly_usd: 0.2,
            labels: BTreeMap::from([("kubernetes.io/hostname".into(), name.into())]),
            taints: vec![],
        }
    }

    fn pod(name: &str, node: &str, cpu: f64, mem_gib: f64) -> PodInfo {
        PodInfo {
            namespace: "shop".into(),
            name: name.into(),
            node: node.into(),
            workload_kind: "Deployment".into(),
            workload_name: name.split('-').next().unwrap().into(),
            cpu_request: cpu,
            memory_request: (mem_gib * GIB as f64) as i64,
            pdb_max_unavailable: None,
            scheduling: Ok(Scheduling::default()),
        }
    }

    fn decision<'a>(plan: &'a Plan, node: &str) -> &'a NodeDecision {
        plan.nodes.iter().find(|d| d.node == node).unwrap()
    }

    /// a: 3 of 4 cores requested (busy); b: 1 core; c: 0.5 cores. c is tried first and its pod
    /// goes to a (best fit: a is left fullest). Then b: its 1 core does not fit in a's last
    /// 0.5 and c is gone, so b stays; a stays because it receives c's pod.
    #[test]
    fn packs_the_least_used_node_onto_the_fullest_that_fits() {
        let nodes = [node("a", 4.0, 16), node("b", 4.0, 16), node("c", 4.0, 16)];
        let pods = [
            pod("big-1", "a", 3.0, 4.0),
            pod("mid-1", "b", 1.0, 1.0),
            pod("small-1", "c", 0.5, 1.0),
        ];
        let plan = plan(&nodes, &pods, &ConsolidationConfig::default());
        let c = decision(&plan, "c");
        assert!(c.removable, "{}", c.why);
        assert!(c.why.contains("fit on a"), "{}", c.why);
        let b = decision(&plan, "b");
        assert!(!b.removable);
        assert!(
            b.why.contains("kept: it receives") || b.why.contains("fits on no other node"),
            "{}",
            b.why
        );
        assert!(
            decision(&plan, "a")
                .why
                .starts_with("kept: it receives pods from c"),
            "{}",
            decision(&plan, "a").why
        );
        assert_eq!(
            plan.moves,
            vec![("shop/small-1".into(), "c".into(), "a".into())]
        );
        let groups = plan.groups();
        let (now, after, savings, gone) = &groups["general"];
        assert_eq!((*now, *after), (3, 2));
        assert!((savings - 0.2 * 730.0).abs() < 1e-9);
        assert_eq!(gone, &vec!["c".to_string()]);
    }

    #[test]
    fn taints_selectors_affinity_and_capacity_are_respected() {
        let mut gpu = node("gpu", 8.0, 32);
        gpu.taints = vec![Taint {
            key: "nvidia.com/gpu".into(),
            value: Some("true".into()),
            effect: "NoSchedule".into(),
        }];
        let mut ssd = node("ssd", 8.0, 32);
        ssd.labels.insert("disk".into(), "ssd".into());
        let light = node("light", 4.0, 16);
        let nodes = [gpu, ssd, light];
        // The light node's pod needs an HDD node by affinity: only "light" itself has none of
        // the disk label... it selects disk NotIn [ssd] and may not tolerate the GPU taint.
        let mut p = pod("app-1", "light", 0.5, 1.0);
        p.scheduling = Ok(Scheduling {
            required_node_affinity: vec![NodeSelectorTerm {
                match_expressions: vec![Requirement {
                    key: "disk".into(),
                    operator: "NotIn".into(),
                    values: vec!["ssd".into()],
                }],
                match_fields: vec![],
            }],
            ..Scheduling::default()
        });
        let big = pod("fill-1", "ssd", 4.5, 20.0);
        let gpu_pod = pod("train-1", "gpu", 4.5, 20.0);
        let plan1 = plan(
            &nodes,
            &[p.clone(), big.clone(), gpu_pod.clone()],
            &ConsolidationConfig::default(),
        );
        let light = decision(&plan1, "light");
        assert!(!light.removable);
        assert_eq!(
            light.why,
            "pod shop/app-1 (0.500 cores, 1024 MiB) fits on no other node (1 excluded by its node affinity, 1 excluded by its taints)"
        );
        // Tolerating the taint, it moves to the GPU node.
        let mut tolerant = p.clone();
        if let Ok(s) = &mut tolerant.scheduling {
            s.tolerations = vec![Toleration {
                key: Some("nvidia.com/gpu".into()),
                operator: Some("Exists".into()),
                value: None,
                effect: Some("NoSchedule".into()),
            }];
        }
        let plan2 = plan(
            &nodes,
            &[tolerant, big, gpu_pod],
            &ConsolidationConfig::default(),
        );
        assert!(
            decision(&plan2, "light").removable,
            "{}",
            decision(&plan2, "light").why
        );
        assert_eq!(plan2.moves[0].2, "gpu");
    }

    #[test]
    fn local_storage_pdbs_bare_pods_and_daemonsets() {
        let nodes = [
            node("a", 4.0, 16),
            node("b", 4.0, 16),
            node("c", 4.0, 16),
            node("d", 4.0, 16),
            node("e", 8.0, 32),
        ];
        let mut cache = pod("cache-0", "a", 0.2, 0.5);
        cache.scheduling = Ok(Scheduling {
            local_storage: true,
            ..Scheduling::default()
        });
        let mut strict = pod("db-0", "b", 0.2, 0.5);
        strict.pdb_max_unavailable = Some(0);
        let mut bare = pod("debug", "c", 0.2, 0.5);
        bare.workload_kind = String::new();
        let mut ds = pod("proxy-d", "d", 0.1, 0.1);
        ds.workload_kind = "DaemonSet".into();
        let mut broken = pod("odd-1", "e", 0.1, 0.1);
        broken.scheduling = parse_scheduling(Some("{not json"));
        let plan = plan(
            &nodes,
            &[cache, strict, bare, ds, broken],
            &ConsolidationConfig::default(),
        );
        assert!(decision(&plan, "a").why.contains("local storage"));
        assert!(decision(&plan, "b").why.contains("allows no disruption"));
        assert!(decision(&plan, "c").why.contains("no controller"));
        let d = decision(&plan, "d");
        assert!(
            d.removable && d.why.contains("nothing to move (1 DaemonSet pod(s)"),
            "{}",
            d.why
        );
        assert!(
            decision(&plan, "e").why.contains("cannot be read"),
            "{}",
            decision(&plan, "e").why
        );
    }

    #[test]
    fn the_result_does_not_depend_on_input_order() {
        let nodes = vec![
            node("a", 4.0, 16),
            node("b", 4.0, 16),
            node("c", 4.0, 16),
            node("d", 4.0, 16),
        ];
        let pods = vec![
            pod("w-1", "a", 0.5, 1.0),
            pod("w-2", "b", 0.4, 1.0),
            pod("w-3", "c", 1.5, 2.0),
            pod("w-4", "d", 0.3, 0.5),
        ];
        let one = plan(&nodes, &pods, &ConsolidationConfig::default());
        let mut rn = nodes.clone();
        rn.reverse();
        let mut rp = pods.clone();
        rp.reverse();
        assert_eq!(one, plan(&rn, &rp, &ConsolidationConfig::default()));
        assert!(one.nodes.iter().filter(|d| d.removable).count() >= 2);
    }

    #[test]
    fn tolerations_follow_kubernetes_matching() {
        let taint = Taint {
            key: "k".into(),
            value: Some("v".into()),
            effect: "NoSchedule".into(),
        };
        let t = |key: Option<&str>, op: Option<&str>, value: Option<&str>, effect: Option<&str>| {
            Toleration {
                key: key.map(Into::into),
                operator: op.map(Into::into),
                value: value.map(Into::into),
                effect: effect.map(Into::into),
            }
        };
        assert!(tolerates(
            &[t(Some("k"), Some("Equal"), Some("v"), None)],
            &taint
        ));
        assert!(!tolerates(
            &[t(Some("k"), Some("Equal"), Some("w"), None)],
            &taint
        ));
        assert!(tolerates(
            &[t(Some("k"), Some("Exists"), None, Some("NoSchedule"))],
            &taint
        ));
        assert!(!tolerates(
            &[t(Some("k"), Some("Exists"), None, Some("NoExecute"))],
            &taint
        ));
        assert!(tolerates(&[t(None, Some("Exists"), None, None)], &taint));
        assert!(!tolerates(&[], &taint));
    }
}
