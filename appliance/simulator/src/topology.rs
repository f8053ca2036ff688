//! The generated cluster: nodes, workloads, pod slots and container series, built once from a
//! [`SimConfig`] with a seeded stream, then read-only.

use std::collections::HashSet;
use std::ops::Range;

use crate::SimConfig;
use crate::catalog::{
    self, CRON_ROLES, GIB, InstanceType, JOB_ROLES, MAIN_CONTAINER_NAMES, MIB, NODE_GROUPS,
    SERVICE_ROLES, SIDECARS, STATEFUL_ROLES, SYSTEM_NAMESPACES, TEAMS,
};
use crate::rng::{Rng, hash2, push_k8s_suffix};

pub(crate) const MINUTE: i64 = 60_000;
pub(crate) const HOUR: i64 = 60 * MINUTE;
pub(crate) const DAY: i64 = 24 * HOUR;

/// The top-level owner of a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
    Job,
    CronJob,
}

impl WorkloadKind {
    pub const ALL: [WorkloadKind; 5] = [
        WorkloadKind::Deployment,
        WorkloadKind::StatefulSet,
        WorkloadKind::DaemonSet,
        WorkloadKind::Job,
        WorkloadKind::CronJob,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
            WorkloadKind::Job => "Job",
            WorkloadKind::CronJob => "CronJob",
        }
    }

    pub fn is_batch(self) -> bool {
        matches!(self, WorkloadKind::Job | WorkloadKind::CronJob)
    }
}

/// How a container's requests relate to what it really uses: the ground truth the analysis
/// should rediscover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Profile {
    /// Requests 4–10× the p95 CPU usage and 2.5–6× the peak memory.
    OverProvisioned,
    /// Requests a little above p95 / peak.
    RightSized,
    /// p95 CPU above the request and CPU throttled at the limit; memory above its request.
    UnderProvisioned,
    /// Working set climbs linearly to the memory limit, is OOM-killed, restarts, repeats.
    MemoryLeak,
    /// Occasional memory spikes to the limit that get the container OOM-killed.
    MemorySpikes,
    /// No requests or limits at all.
    BestEffort,
    /// A Job or CronJob container: busy while it runs, gone in between.
    Batch,
}

/// A HorizontalPodAutoscaler on CPU utilisation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hpa {
    pub min_replicas: u32,
    pub max_replicas: u32,
    /// Target CPU utilisation of the request, as a fraction (`0.7` is 70 %).
    pub target_cpu_utilization: f64,
}

/// When the pods of a Job or CronJob run: run `k` is scheduled at `k × period + offset` (ms
/// since the Unix epoch), lasts about `duration`, and its pod is deleted `keep` after it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobSchedule {
    pub period_ms: i64,
    pub offset_ms: i64,
    pub duration_ms: i64,
    pub keep_ms: i64,
}

/// One container of a workload's pod template.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub name: String,
    pub cpu_request_cores: Option<f64>,
    pub cpu_limit_cores: Option<f64>,
    pub memory_request_bytes: Option<i64>,
    pub memory_limit_bytes: Option<i64>,
    pub profile: Profile,
    pub(crate) usage: Usage,
}

/// The hidden usage model of a container (per replica, at load factor 1).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Usage {
    pub cpu_base: f64,
    pub cpu_noise: f64,
    pub startup_cpu: f64,
    pub startup_ms: i64,
    pub mem_base: f64,
    pub mem_amp: f64,
    pub mem_noise: f64,
    pub rss_ratio: f64,
    pub eph_base: f64,
    /// Memory leak: time from a (re)start to the OOM kill.
    pub leak_period_ms: i64,
    /// Memory spikes: probability of an OOM kill in any hour.
    pub oom_per_hour: f64,
}

/// How a workload's load moves over time.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LoadShape {
    pub amp: f64,
    pub peak_hour: f64,
    /// cos and sin of the peak hour's angle on the day's circle.
    pub peak_cos: f64,
    pub peak_sin: f64,
    pub weekend: f64,
    pub slow_noise: f64,
    pub spike_prob: f64,
    pub spike_mag: f64,
}

/// A top-level workload (Deployment, StatefulSet, DaemonSet, Job or CronJob).
#[derive(Debug, Clone)]
pub struct Workload {
    pub namespace: String,
    pub kind: WorkloadKind,
    pub name: String,
    /// The labels as a JSON object, e.g. `{"app":"checkout","team":"payments"}`.
    pub labels: String,
    /// Fixed replicas, the HPA minimum, the node count for a DaemonSet, the parallelism of a
    /// Job or CronJob.
    pub replicas: u32,
    pub hpa: Option<Hpa>,
    pub pdb_max_unavailable: Option<u32>,
    pub schedule: Option<JobSchedule>,
    pub containers: Vec<ContainerSpec>,
    pub qos_class: &'static str,
    /// The node group its pods prefer (node affinity), if any.
    pub node_group: Option<&'static str>,
    /// The Service in front of it: ClusterIP and port.
    pub service: Option<(String, i64)>,
    pub(crate) key: u64,
    pub(crate) load: LoadShape,
    pub(crate) pods: Range<usize>,
    pub(crate) template_hash: String,
}

impl Workload {
    /// The indices (into [`crate::Cluster::pods`]) of this workload's pod slots.
    pub fn pod_slots(&self) -> Range<usize> {
        self.pods.clone()
    }

    pub fn service_domain(&self) -> String {
        format!("{}.{}.svc.cluster.local", self.name, self.namespace)
    }
}

/// A node of the cluster.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub ip: String,
    pub zone: String,
    pub node_group: &'static str,
    pub instance_type: &'static InstanceType,
    /// `on_demand` or `spot`.
    pub capacity_type: &'static str,
    pub cpu_capacity_cores: f64,
    pub memory_capacity_bytes: i64,
    pub cpu_allocatable_cores: f64,
    pub memory_allocatable_bytes: i64,
    pub max_pods: u32,
    /// Scheduled to stay lightly used, so consolidation has something to find.
    pub lightly_used: bool,
    /// Requests of every pod slot placed on it (including HPA headroom and job pods).
    pub cpu_requested_cores: f64,
    pub memory_requested_bytes: i64,
    /// Its labels as a JSON object (hostname, instance type, zone, region, node group,
    /// capacity type, arch, os), as the collector reports them.
    pub labels: String,
    /// Its taints as a JSON array of {key, value, effect}: spot nodes of the `compute` group
    /// carry `spot=true:NoSchedule`, the others none.
    pub taints: String,
    pub(crate) zone_index: usize,
    pub(crate) overhead_cpu: f64,
    pub(crate) overhead_mem: f64,
    pub(crate) fs_base: f64,
    pub(crate) key: u64,
}

/// What kind of pod slot this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PodKind {
    /// Runs all the time (after the cluster's epoch).
    Static,
    /// An HPA replica above the minimum: runs while the HPA wants it; a new pod (new name)
    /// each day it comes up.
    Elastic,
    /// The pod of a Job or CronJob run: a new pod each run.
    Job,
}

/// A pod slot: a fixed place (node, IP) where a static pod runs, or where the changing pods
/// of an HPA replica or a job run.
#[derive(Debug, Clone)]
pub struct Pod {
    pub workload: usize,
    pub slot: u32,
    pub node: usize,
    pub ip: String,
    pub kind: PodKind,
    /// The full name of a static pod; the name prefix of an elastic one; empty for job pods.
    pub(crate) name: String,
    pub(crate) start_ms: i64,
    pub(crate) key: u64,
    /// What the scheduler reserves for it: the sum of its containers' requests.
    pub cpu_request_cores: f64,
    pub memory_request_bytes: i64,
    /// The pods table's scheduling JSON: a node selector on its node group when it runs in the
    /// group its workload asks for, a toleration when it runs on a tainted node, local storage
    /// for caches and Prometheus.
    pub scheduling: String,
}

impl Pod {
    /// The name of a static pod (the others change over time).
    pub fn static_name(&self) -> Option<&str> {
        (self.kind == PodKind::Static).then_some(self.name.as_str())
    }

    /// When a static pod started.
    pub fn static_start_ms(&self) -> Option<i64> {
        (self.kind == PodKind::Static).then_some(self.start_ms)
    }
}

/// One container of one pod slot: a container_usage series, with everything the per-sample
/// computation needs flattened in (the hot loop reads nothing else for ordinary containers).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Series {
    pub pod: u32,
    pub workload: u32,
    pub container: u16,
    pub node: u32,
    pub kind: PodKind,
    pub profile: Profile,
    pub key: u64,
    /// When the pod slot's static pod started.
    pub start_ms: i64,
    /// Mean CPU at load 1, with this replica's imbalance.
    pub cpu_base: f64,
    pub cpu_noise: f64,
    pub startup_cpu: f64,
    pub startup_ms: i64,
    /// The CPU limit, or infinity.
    pub cpu_limit: f64,
    /// Mean working set at load 1, with this replica's imbalance.
    pub mem_base: f64,
    pub mem_amp: f64,
    pub mem_noise: f64,
    pub rss_ratio: f64,
    pub eph_base: f64,
    /// The memory limit, or infinity.
    pub mem_limit: f64,
    /// The HPA's minimum replicas, 0 without an HPA.
    pub hpa_min: f64,
}

pub(crate) struct Topology {
    pub nodes: Vec<Node>,
    pub namespaces: Vec<String>,
    pub workloads: Vec<Workload>,
    pub pods: Vec<Pod>,
    pub series: Vec<Series>,
}

const CPU_STEPS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0,
];
const MEM_STEPS_MI: &[i64] = &[
    16, 32, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192, 12288,
    16384, 24576, 32768,
];

/// The smallest "nice" CPU quantity at or above `x`.
pub(crate) fn nice_cpu(x: f64) -> f64 {
    CPU_STEPS
        .iter()
        .copied()
        .find(|&s| s >= x - 1e-9)
        .unwrap_or_else(|| x.ceil())
}

/// The smallest "nice" memory quantity at or above `x`.
pub(crate) fn nice_mem(x: f64) -> i64 {
    MEM_STEPS_MI
        .iter()
        .map(|&m| m * MIB)
        .find(|&s| s as f64 >= x)
        .unwrap_or_else(|| ((x / GIB as f64).ceil() as i64) * GIB)
}

/// The p95 of demand relative to `cpu_base` for a load shape and white noise: used to turn a
/// wanted p95 into a base.
fn p95_factor(load: &LoadShape, cpu_noise: f64) -> f64 {
    (1.0 + 0.95 * load.amp) * (1.0 + 0.6 * load.slow_noise) * (1.0 + 0.8 * cpu_noise)
}

/// The peak working set relative to `mem_base`.
fn mem_peak_factor(u: &Usage) -> f64 {
    1.0 + u.mem_amp + u.mem_noise
}

struct Resources {
    cpu_request: Option<f64>,
    cpu_limit: Option<f64>,
    mem_request: Option<i64>,
    mem_limit: Option<i64>,
}

/// Builds the hidden usage so that p95 CPU is `cpu_p95` and peak memory is `mem_peak`.
fn usage_for(rng: &mut Rng, load: &LoadShape, cpu_p95: f64, mem_peak: f64, jvm: bool) -> Usage {
    let cpu_noise = rng.range(0.05, 0.25);
    let mut u = Usage {
        cpu_noise,
        startup_ms: rng.int(60, 240) * 1000,
        mem_amp: rng.range(0.0, 0.12),
        mem_noise: rng.range(0.01, 0.04),
        rss_ratio: rng.range(0.72, 0.95),
        eph_base: rng.log_range(4.0, 400.0) * MIB as f64,
        ..Usage::default()
    };
    u.cpu_base = cpu_p95 / p95_factor(load, cpu_noise);
    u.startup_cpu = if jvm {
        rng.range(0.5, 2.0)
    } else {
        u.cpu_base * rng.range(0.5, 3.0)
    };
    u.mem_base = mem_peak / mem_peak_factor(&u);
    u
}

fn load_shape(rng: &mut Rng, namespace: &str, kind: WorkloadKind) -> LoadShape {
    let user_facing = matches!(
        namespace.split('-').next().unwrap_or(""),
        "payments"
            | "checkout"
            | "search"
            | "catalog"
            | "recommendations"
            | "auth"
            | "notifications"
            | "frontend"
            | "shipping"
            | "inventory"
            | "ingress"
    ) || namespace.starts_with("ml-serving");
    let nightly = namespace.starts_with("data-pipeline") || namespace.starts_with("analytics");
    let system = SYSTEM_NAMESPACES.contains(&namespace);
    let mut shape = LoadShape {
        amp: if user_facing {
            rng.range(0.3, 0.7)
        } else if system {
            rng.range(0.05, 0.25)
        } else {
            rng.range(0.1, 0.45)
        },
        peak_hour: if nightly && rng.chance(0.5) {
            rng.range(1.0, 5.0)
        } else {
            rng.range(13.5, 17.0)
        },
        weekend: if user_facing {
            rng.range(0.55, 0.9)
        } else {
            rng.range(0.75, 1.0)
        },
        slow_noise: rng.range(0.04, 0.18),
        spike_prob: rng.range(0.0005, 0.004),
        spike_mag: rng.range(0.8, 2.5),
        ..LoadShape::default()
    };
    let (sin, cos) = (std::f64::consts::TAU * shape.peak_hour / 24.0).sin_cos();
    (shape.peak_cos, shape.peak_sin) = (cos, sin);
    if kind.is_batch() {
        shape.amp = 0.0;
        shape.weekend = 1.0;
        shape.spike_prob = 0.0;
    }
    shape
}

fn qos_class(containers: &[ContainerSpec]) -> &'static str {
    let none = containers.iter().all(|c| {
        c.cpu_request_cores.is_none()
            && c.cpu_limit_cores.is_none()
            && c.memory_request_bytes.is_none()
            && c.memory_limit_bytes.is_none()
    });
    if none {
        return "BestEffort";
    }
    let guaranteed = containers.iter().all(|c| {
        c.cpu_limit_cores.is_some()
            && c.memory_limit_bytes.is_some()
            && c.cpu_request_cores
                .is_none_or(|r| Some(r) == c.cpu_limit_cores)
            && c.memory_request_bytes
                .is_none_or(|r| Some(r) == c.memory_limit_bytes)
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

fn labels_json(pairs: &[(&str, &str)]) -> String {
    let map: serde_json::Map<String, serde_json::Value> = pairs
        .iter()
        .map(|(k, v)| {
            (
                (*k).to_string(),
                serde_json::Value::String((*v).to_string()),
            )
        })
        .collect();
    serde_json::Value::Object(map).to_string()
}

/// A container with fixed requests/limits and an observed p95 CPU / peak memory, for the
/// platform's own workloads.
#[allow(clippy::too_many_arguments)]
fn fixed_container(
    rng: &mut Rng,
    load: &LoadShape,
    name: &str,
    cpu_request: Option<f64>,
    cpu_limit: Option<f64>,
    mem_request_mi: Option<i64>,
    mem_limit_mi: Option<i64>,
    cpu_p95: f64,
    mem_peak_mi: f64,
) -> ContainerSpec {
    let jitter = rng.range(0.7, 1.3);
    let mem_peak = (mem_peak_mi * MIB as f64 * jitter).min(
        mem_limit_mi
            .map(|l| l as f64 * MIB as f64 / 1.3)
            .unwrap_or(f64::MAX),
    );
    let usage = usage_for(rng, load, cpu_p95 * jitter, mem_peak, false);
    let profile = match cpu_request {
        None => Profile::BestEffort,
        Some(r) if r >= 3.0 * cpu_p95 * jitter => Profile::OverProvisioned,
        Some(r) if r < cpu_p95 * jitter => Profile::UnderProvisioned,
        Some(_) => Profile::RightSized,
    };
    ContainerSpec {
        name: name.to_string(),
        cpu_request_cores: cpu_request,
        cpu_limit_cores: cpu_limit,
        memory_request_bytes: mem_request_mi.map(|m| m * MIB),
        memory_limit_bytes: mem_limit_mi.map(|m| m * MIB),
        profile,
        usage,
    }
}

/// A container spec for the platform's own workloads: name, cpu req, cpu lim, mem req Mi,
/// mem lim Mi, p95 cpu, peak mem Mi.
type SysContainer = (
    &'static str,
    Option<f64>,
    Option<f64>,
    Option<i64>,
    Option<i64>,
    f64,
    f64,
);

struct SysWorkload {
    namespace: &'static str,
    kind: WorkloadKind,
    name: &'static str,
    replicas: u32,
    hpa: Option<Hpa>,
    pdb: Option<u32>,
    containers: &'static [SysContainer],
}

const fn sys(
    namespace: &'static str,
    kind: WorkloadKind,
    name: &'static str,
    replicas: u32,
    containers: &'static [SysContainer],
) -> SysWorkload {
    SysWorkload {
        namespace,
        kind,
        name,
        replicas,
        hpa: None,
        pdb: None,
        containers,
    }
}

use WorkloadKind::{CronJob, DaemonSet, Deployment, Job, StatefulSet};

const SYSTEM_WORKLOADS: &[SysWorkload] = &[
    SysWorkload {
        pdb: Some(1),
        ..sys(
            "kube-system",
            Deployment,
            "coredns",
            2,
            &[("coredns", Some(0.1), None, Some(70), Some(170), 0.012, 28.0)],
        )
    },
    sys(
        "kube-system",
        DaemonSet,
        "aws-node",
        1,
        &[
            ("aws-node", Some(0.025), None, None, None, 0.006, 48.0),
            (
                "aws-eks-nodeagent",
                Some(0.025),
                None,
                None,
                None,
                0.002,
                30.0,
            ),
        ],
    ),
    sys(
        "kube-system",
        DaemonSet,
        "kube-proxy",
        1,
        &[("kube-proxy", Some(0.1), None, None, None, 0.004, 26.0)],
    ),
    sys(
        "kube-system",
        DaemonSet,
        "ebs-csi-node",
        1,
        &[
            (
                "ebs-plugin",
                Some(0.01),
                None,
                Some(40),
                Some(256),
                0.001,
                22.0,
            ),
            (
                "node-driver-registrar",
                Some(0.01),
                None,
                Some(40),
                Some(256),
                0.0005,
                9.0,
            ),
            (
                "liveness-probe",
                Some(0.01),
                None,
                Some(40),
                Some(256),
                0.0005,
                11.0,
            ),
        ],
    ),
    sys(
        "kube-system",
        Deployment,
        "ebs-csi-controller",
        2,
        &[
            (
                "ebs-plugin",
                Some(0.01),
                None,
                Some(40),
                Some(256),
                0.002,
                30.0,
            ),
            (
                "csi-provisioner",
                Some(0.01),
                None,
                Some(40),
                Some(256),
                0.002,
                25.0,
            ),
            (
                "csi-attacher",
                Some(0.01),
                None,
                Some(40),
                Some(256),
                0.001,
                20.0,
            ),
        ],
    ),
    sys(
        "kube-system",
        Deployment,
        "metrics-server",
        1,
        &[(
            "metrics-server",
            Some(0.1),
            None,
            Some(200),
            None,
            0.006,
            35.0,
        )],
    ),
    sys(
        "kube-system",
        Deployment,
        "cluster-autoscaler",
        1,
        &[(
            "cluster-autoscaler",
            Some(0.1),
            Some(0.1),
            Some(600),
            Some(600),
            0.03,
            310.0,
        )],
    ),
    sys(
        "monitoring",
        StatefulSet,
        "prometheus",
        2,
        &[
            (
                "prometheus",
                Some(1.0),
                None,
                Some(4096),
                Some(8192),
                0.45,
                3600.0,
            ),
            (
                "config-reloader",
                Some(0.01),
                Some(0.1),
                Some(25),
                Some(50),
                0.001,
                12.0,
            ),
        ],
    ),
    sys(
        "monitoring",
        StatefulSet,
        "alertmanager",
        3,
        &[
            (
                "alertmanager",
                Some(0.1),
                None,
                Some(128),
                Some(256),
                0.003,
                32.0,
            ),
            (
                "config-reloader",
                Some(0.01),
                Some(0.1),
                Some(25),
                Some(50),
                0.001,
                12.0,
            ),
        ],
    ),
    sys(
        "monitoring",
        Deployment,
        "grafana",
        1,
        &[(
            "grafana",
            Some(0.25),
            None,
            Some(256),
            Some(512),
            0.015,
            130.0,
        )],
    ),
    sys(
        "monitoring",
        Deployment,
        "kube-state-metrics",
        1,
        &[(
            "kube-state-metrics",
            Some(0.1),
            None,
            Some(190),
            Some(250),
            0.015,
            70.0,
        )],
    ),
    sys(
        "monitoring",
        DaemonSet,
        "node-exporter",
        1,
        &[
            (
                "node-exporter",
                Some(0.1),
                None,
                Some(180),
                Some(180),
                0.012,
                22.0,
            ),
            (
                "kube-rbac-proxy",
                Some(0.01),
                None,
                Some(20),
                Some(40),
                0.001,
                14.0,
            ),
        ],
    ),
    sys(
        "logging",
        DaemonSet,
        "fluent-bit",
        1,
        &[(
            "fluent-bit",
            Some(0.1),
            None,
            Some(128),
            Some(512),
            0.035,
            70.0,
        )],
    ),
    SysWorkload {
        pdb: Some(1),
        ..sys(
            "logging",
            StatefulSet,
            "loki",
            3,
            &[("loki", Some(0.5), None, Some(1024), Some(2048), 0.12, 650.0)],
        )
    },
    SysWorkload {
        hpa: Some(Hpa {
            min_replicas: 3,
            max_replicas: 10,
            target_cpu_utilization: 0.7,
        }),
        pdb: Some(1),
        ..sys(
            "ingress-nginx",
            Deployment,
            "ingress-nginx-controller",
            3,
            &[("controller", Some(0.1), None, Some(90), None, 0.07, 140.0)],
        )
    },
    sys(
        "cert-manager",
        Deployment,
        "cert-manager",
        1,
        &[(
            "cert-manager",
            Some(0.01),
            None,
            Some(32),
            None,
            0.002,
            40.0,
        )],
    ),
    sys(
        "cert-manager",
        Deployment,
        "cert-manager-webhook",
        1,
        &[(
            "cert-manager-webhook",
            Some(0.01),
            None,
            Some(32),
            None,
            0.001,
            18.0,
        )],
    ),
    sys(
        "cert-manager",
        Deployment,
        "cert-manager-cainjector",
        1,
        &[(
            "cert-manager-cainjector",
            Some(0.01),
            None,
            Some(32),
            None,
            0.001,
            30.0,
        )],
    ),
    sys(
        "tally",
        StatefulSet,
        "tally-appliance",
        1,
        &[(
            "appliance",
            Some(1.0),
            None,
            Some(2048),
            Some(4096),
            0.35,
            1300.0,
        )],
    ),
    sys(
        "tally",
        Deployment,
        "tally-collector",
        1,
        &[(
            "collector",
            Some(0.1),
            None,
            Some(256),
            Some(512),
            0.04,
            120.0,
        )],
    ),
    sys(
        "tally",
        DaemonSet,
        "tally-netmon",
        1,
        &[("netmon", Some(0.05), None, Some(64), Some(256), 0.01, 45.0)],
    ),
];

/// The number of the platform's own workloads (always generated).
#[cfg(test)]
pub(crate) fn system_workload_count() -> usize {
    SYSTEM_WORKLOADS.len()
}

struct Builder<'a> {
    config: &'a SimConfig,
    rng: Rng,
    names: HashSet<(usize, String)>,
}

pub(crate) fn build(config: &SimConfig) -> Topology {
    assert!(config.nodes > 0, "a cluster needs at least one node");
    assert!(
        !config.zones.is_empty(),
        "a cluster needs at least one zone"
    );
    let mut root = Rng::new(config.seed);
    let mut node_rng = root.fork(1);
    let workload_rng = root.fork(2);
    let mut sched_rng = root.fork(3);

    let mut nodes = build_nodes(config, &mut node_rng);
    let namespaces = build_namespaces(config.namespaces);

    let mut b = Builder {
        config,
        rng: workload_rng,
        names: HashSet::new(),
    };
    let mut workloads = Vec::new();
    for sw in SYSTEM_WORKLOADS {
        let ns = namespaces.iter().position(|n| n == sw.namespace).unwrap();
        workloads.push(b.system_workload(sw, ns, &namespaces, nodes.len() as u32));
    }
    // Team workloads, until the count (or the container target) is reached.
    let team_ns: Vec<usize> = (SYSTEM_NAMESPACES.len()..namespaces.len()).collect();
    let ns_weights: Vec<(usize, f64)> = team_ns
        .iter()
        .map(|&i| (i, b.rng.range(0.4, 2.0)))
        .collect();
    let mut containers: usize = workloads.iter().map(static_containers).sum();
    loop {
        let done = match config.target_containers {
            Some(target) => containers >= target,
            None => workloads.len() >= config.workloads,
        };
        if done || ns_weights.is_empty() {
            break;
        }
        let ns = *b.rng.weighted(&ns_weights);
        let w = b.team_workload(ns, &namespaces);
        containers += static_containers(&w);
        workloads.push(w);
    }

    // Services in front of every serving workload.
    let mut svc = 0usize;
    for w in &mut workloads {
        if matches!(w.kind, Deployment | StatefulSet) {
            let ip = format!("10.96.{}.{}", 1 + svc / 250, 2 + svc % 250);
            let port = service_port(w);
            w.service = Some((ip, port));
            svc += 1;
        }
    }

    let (pods, series) = place_pods(config, &mut nodes, &mut workloads, &mut sched_rng);
    Topology {
        nodes,
        namespaces,
        workloads,
        pods,
        series,
    }
}

fn service_port(w: &Workload) -> i64 {
    let main = w.containers[0].name.as_str();
    match main {
        "postgres" => 5432,
        "redis" => 6379,
        "kafka" => 9092,
        "elasticsearch" => 9200,
        "zookeeper" => 2181,
        "mongod" => 27017,
        "coredns" => 53,
        "prometheus" => 9090,
        "loki" => 3100,
        "appliance" => 8815,
        _ if w.name.ends_with("-grpc") => 9090,
        _ if w.key.is_multiple_of(3) => 80,
        _ => 8080,
    }
}

fn static_containers(w: &Workload) -> usize {
    match w.kind {
        Deployment | StatefulSet | DaemonSet => w.replicas as usize * w.containers.len(),
        Job | CronJob => 0,
    }
}

fn build_namespaces(count: usize) -> Vec<String> {
    let teams = count.saturating_sub(SYSTEM_NAMESPACES.len()).max(1);
    let mut out: Vec<String> = SYSTEM_NAMESPACES.iter().map(|s| s.to_string()).collect();
    for i in 0..teams {
        let base = TEAMS[i % TEAMS.len()].0;
        let round = i / TEAMS.len();
        out.push(if round == 0 {
            base.to_string()
        } else {
            format!("{base}-{}", round + 1)
        });
    }
    out
}

fn team_of(namespace: &str) -> &'static (&'static str, &'static str, &'static [&'static str]) {
    let base = namespace
        .rsplit_once('-')
        .filter(|(_, n)| n.parse::<u32>().is_ok())
        .map_or(namespace, |(b, _)| b);
    TEAMS
        .iter()
        .find(|t| t.0 == base)
        .expect("team namespaces come from TEAMS")
}

fn build_nodes(config: &SimConfig, rng: &mut Rng) -> Vec<Node> {
    let n = config.nodes;
    let zones = config.zones.len();
    let mut counts: Vec<usize> = NODE_GROUPS
        .iter()
        .map(|g| (g.share * n as f64).round() as usize)
        .collect();
    if n >= NODE_GROUPS.len() {
        for c in counts.iter_mut().skip(1) {
            *c = (*c).max(1);
        }
    } else {
        counts.iter_mut().skip(1).for_each(|c| *c = 0);
    }
    let others: usize = counts[1..].iter().sum();
    counts[0] = n.saturating_sub(others);

    let suffix = if config.region == "us-east-1" {
        ".ec2.internal".to_string()
    } else {
        format!(".{}.compute.internal", config.region)
    };
    let mut per_zone = vec![0usize; zones];
    let mut nodes = Vec::with_capacity(n);
    for (gi, (group, &count)) in NODE_GROUPS.iter().zip(&counts).enumerate() {
        for j in 0..count {
            let zone = (j + gi) % zones;
            let it: &'static InstanceType = &group.types[weighted_index(rng, group.types)].0;
            let spot = rng.chance(group.spot_share);
            let k = per_zone[zone];
            per_zone[zone] += 1;
            // The zone's node subnet: 10.0.(zone × 64 + 1 …).x
            let c = zone * 64 + 1 + k / 250;
            let d = 4 + k % 250;
            let ip = format!("10.0.{c}.{d}");
            let name = format!("ip-10-0-{c}-{d}{suffix}");
            let scale = (f64::from(it.vcpu) / 4.0).powf(0.4);
            nodes.push(Node {
                name: name.clone(),
                ip,
                zone: config.zones[zone].clone(),
                node_group: group.name,
                instance_type: it,
                capacity_type: if spot { "spot" } else { "on_demand" },
                cpu_capacity_cores: f64::from(it.vcpu),
                memory_capacity_bytes: i64::from(it.memory_gib) * GIB,
                cpu_allocatable_cores: catalog::allocatable_cpu(it.vcpu),
                memory_allocatable_bytes: catalog::allocatable_memory(it.memory_gib, it.max_pods),
                max_pods: it.max_pods,
                lightly_used: false,
                cpu_requested_cores: 0.0,
                memory_requested_bytes: 0,
                labels: labels_json(&[
                    ("kubernetes.io/hostname", &name),
                    ("kubernetes.io/arch", "amd64"),
                    ("kubernetes.io/os", "linux"),
                    ("node.kubernetes.io/instance-type", it.name),
                    ("topology.kubernetes.io/region", &config.region),
                    ("topology.kubernetes.io/zone", &config.zones[zone]),
                    ("eks.amazonaws.com/nodegroup", group.name),
                    (
                        "eks.amazonaws.com/capacityType",
                        if spot { "SPOT" } else { "ON_DEMAND" },
                    ),
                ]),
                taints: if spot && group.name == "compute" {
                    r#"[{"key":"spot","value":"true","effect":"NoSchedule"}]"#.to_string()
                } else {
                    "[]".to_string()
                },
                zone_index: zone,
                overhead_cpu: rng.range(0.06, 0.16) * scale,
                overhead_mem: rng.range(0.5, 0.9) * GIB as f64 * scale,
                fs_base: rng.range(6.0, 18.0) * GIB as f64,
                key: rng.next_u64(),
            });
        }
    }
    // About one node in eight stays lightly used.
    let light = if n >= 4 { (n / 8).max(1) } else { 0 };
    let mut marked = 0;
    while marked < light {
        let i = rng.below(n);
        if !nodes[i].lightly_used {
            nodes[i].lightly_used = true;
            marked += 1;
        }
    }
    nodes
}

fn weighted_index<T>(rng: &mut Rng, xs: &[(T, f64)]) -> usize {
    let idx: Vec<(usize, f64)> = xs.iter().enumerate().map(|(i, (_, w))| (i, *w)).collect();
    *rng.weighted(&idx)
}

impl Builder<'_> {
    fn unique_name(&mut self, ns: usize, base: String) -> String {
        if self.names.insert((ns, base.clone())) {
            return base;
        }
        for i in 2.. {
            let candidate = format!("{base}-{i}");
            if self.names.insert((ns, candidate.clone())) {
                return candidate;
            }
        }
        unreachable!()
    }

    fn system_workload(
        &mut self,
        sw: &SysWorkload,
        ns: usize,
        namespaces: &[String],
        node_count: u32,
    ) -> Workload {
        let rng = &mut self.rng;
        let load = load_shape(rng, sw.namespace, sw.kind);
        let containers: Vec<ContainerSpec> = sw
            .containers
            .iter()
            .map(|&(name, cr, cl, mr, ml, cpu, mem)| {
                fixed_container(rng, &load, name, cr, cl, mr, ml, cpu, mem)
            })
            .collect();
        let name = sw.name.to_string();
        self.names.insert((ns, name.clone()));
        let labels = labels_json(&[
            ("app.kubernetes.io/name", sw.name),
            ("app.kubernetes.io/part-of", &namespaces[ns]),
        ]);
        let mut w = Workload {
            namespace: namespaces[ns].clone(),
            kind: sw.kind,
            name,
            labels,
            replicas: if sw.kind == DaemonSet {
                node_count
            } else {
                sw.replicas
            },
            hpa: sw.hpa,
            pdb_max_unavailable: sw.pdb,
            schedule: None,
            qos_class: qos_class(&containers),
            containers,
            node_group: None,
            service: None,
            key: self.rng.next_u64(),
            load,
            pods: 0..0,
            template_hash: String::new(),
        };
        if let Some(hpa) = w.hpa {
            let c = &mut w.containers[0];
            let per_pod = c.cpu_request_cores.unwrap_or(0.1)
                * hpa.target_cpu_utilization
                * self.rng.range(0.6, 1.1);
            c.usage.cpu_base = per_pod;
        }
        finish_template_hash(&mut w);
        w
    }

    fn team_workload(&mut self, ns: usize, namespaces: &[String]) -> Workload {
        let namespace = namespaces[ns].clone();
        let (_, team, nouns) = *team_of(&namespace);
        let churn = self.config.churn;
        let kinds: &[(WorkloadKind, f64)] = if churn {
            &[
                (Deployment, 0.74),
                (StatefulSet, 0.10),
                (CronJob, 0.11),
                (Job, 0.05),
            ]
        } else {
            &[(Deployment, 0.88), (StatefulSet, 0.12)]
        };
        let kind = *self.rng.weighted(kinds);
        let rng = &mut self.rng;
        let noun = *rng.pick(nouns);
        let (base_name, main_name, stateful_image) = match kind {
            Deployment => {
                let name = if rng.chance(0.7) {
                    format!("{noun}-{}", rng.pick(SERVICE_ROLES))
                } else {
                    noun.to_string()
                };
                let main = if rng.chance(0.5) {
                    name.clone()
                } else {
                    rng.pick(MAIN_CONTAINER_NAMES).to_string()
                };
                (name, main, None)
            }
            StatefulSet => {
                let (role, image) = *rng.pick(STATEFUL_ROLES);
                (format!("{noun}-{role}"), image.to_string(), Some(image))
            }
            CronJob => {
                let name = format!("{noun}-{}", rng.pick(CRON_ROLES));
                (name.clone(), name, None)
            }
            Job => {
                let role = *rng.pick(JOB_ROLES);
                let name = if namespace.starts_with("ml-") || role == "train" {
                    format!("train-{noun}")
                } else {
                    format!("{noun}-{role}")
                };
                (name.clone(), name, None)
            }
            DaemonSet => unreachable!("team workloads are never DaemonSets"),
        };
        let name = self.unique_name(ns, base_name);
        let rng = &mut self.rng;
        let load = load_shape(rng, &namespace, kind);

        let replicas: u32 = match kind {
            Deployment => *rng.weighted(&[
                (1, 0.30),
                (2, 0.32),
                (3, 0.20),
                (4, 0.07),
                (5, 0.04),
                (6, 0.03),
                (8, 0.02),
                (10, 0.02),
            ]),
            StatefulSet => *rng.weighted(&[(1, 0.35), (3, 0.55), (5, 0.10)]),
            Job => *rng.weighted(&[(1, 0.8), (2, 0.15), (4, 0.05)]),
            _ => 1,
        };
        let hpa = (kind == Deployment && replicas >= 2 && rng.chance(0.3)).then(|| {
            let factor = *rng.pick(&[2u32, 2, 2, 3]);
            Hpa {
                min_replicas: replicas,
                max_replicas: (replicas * factor).clamp(replicas + 1, 10.max(replicas + 1)),
                target_cpu_utilization: *rng.pick(&[0.5, 0.6, 0.7, 0.7, 0.75, 0.8]),
            }
        });
        let pdb = (matches!(kind, Deployment | StatefulSet) && replicas >= 2 && rng.chance(0.4))
            .then_some(if replicas >= 8 { 2 } else { 1 });

        let node_group = {
            let base = namespace.split('-').next().unwrap_or("");
            if kind == StatefulSet
                && matches!(
                    stateful_image,
                    Some("redis" | "elasticsearch" | "postgres" | "mongod")
                )
                || name.contains("cache")
            {
                Some("memory")
            } else if (matches!(base, "search" | "recommendations") || namespace.starts_with("ml-"))
                && rng.chance(0.75)
            {
                Some("compute")
            } else if rng.chance(0.5) {
                Some("general")
            } else {
                None
            }
        };

        let mut containers = Vec::new();
        let profile = if kind.is_batch() {
            Profile::Batch
        } else if hpa.is_some() {
            *rng.weighted(&[(Profile::OverProvisioned, 0.4), (Profile::RightSized, 0.6)])
        } else {
            *rng.weighted(&[
                (Profile::OverProvisioned, 0.44),
                (Profile::RightSized, 0.30),
                (Profile::UnderProvisioned, 0.15),
                (Profile::MemoryLeak, 0.03),
                (Profile::MemorySpikes, 0.03),
                (Profile::BestEffort, 0.05),
            ])
        };
        let jvm = rng.chance(0.3);
        containers.push(main_container(rng, &load, main_name, profile, kind, jvm));
        let sidecars = if kind.is_batch() {
            usize::from(rng.chance(0.15))
        } else {
            *rng.weighted(&[(0usize, 0.6), (1, 0.3), (2, 0.1)])
        };
        let mut used: Vec<&str> = Vec::new();
        while used.len() < sidecars {
            let (sc, _, _) = *rng.pick(SIDECARS);
            if !used.contains(&sc) && sc != containers[0].name {
                used.push(sc);
            }
        }
        for sc in used {
            let &(sc_name, cpu_req, mem_req) = SIDECARS.iter().find(|s| s.0 == sc).unwrap();
            containers.push(sidecar(
                rng,
                &load,
                sc_name,
                cpu_req,
                mem_req,
                profile == Profile::BestEffort,
            ));
        }

        if let Some(h) = hpa {
            // Per-pod CPU demand at the minimum replicas and load 1: around the target, so the
            // HPA scales out at the daily peak.
            let c = &mut containers[0];
            let request = c.cpu_request_cores.unwrap_or(0.1);
            c.usage.cpu_base = request * h.target_cpu_utilization * rng.range(0.55, 1.25);
        }

        let mut labels: Vec<(&str, &str)> = vec![("app", &name), ("team", team)];
        let tier = match kind {
            StatefulSet => "data",
            Job | CronJob => "batch",
            _ if namespace.starts_with("frontend") => "frontend",
            _ => "backend",
        };
        labels.push(("tier", tier));
        let labels = labels_json(&labels);

        let schedule = match kind {
            CronJob => {
                let period = *rng.weighted(&[
                    (15 * MINUTE, 0.12),
                    (30 * MINUTE, 0.10),
                    (HOUR, 0.43),
                    (6 * HOUR, 0.15),
                    (DAY, 0.20),
                ]);
                let duration =
                    ((period as f64 * rng.range(0.04, 0.3)) as i64).clamp(MINUTE, 50 * MINUTE);
                Some(JobSchedule {
                    period_ms: period,
                    offset_ms: rng.below((period / MINUTE) as usize) as i64 * MINUTE,
                    duration_ms: duration,
                    keep_ms: 3 * period,
                })
            }
            Job => {
                let period = *rng.weighted(&[(DAY, 0.6), (2 * DAY, 0.25), (3 * DAY, 0.15)]);
                Some(JobSchedule {
                    period_ms: period,
                    offset_ms: rng.below((period / MINUTE) as usize) as i64 * MINUTE,
                    duration_ms: rng.int(30, 360) * MINUTE,
                    keep_ms: HOUR,
                })
            }
            _ => None,
        };

        let mut w = Workload {
            namespace,
            kind,
            name,
            labels,
            replicas,
            hpa,
            pdb_max_unavailable: pdb,
            schedule,
            qos_class: qos_class(&containers),
            containers,
            node_group,
            service: None,
            key: self.rng.next_u64(),
            load,
            pods: 0..0,
            template_hash: String::new(),
        };
        finish_template_hash(&mut w);
        w
    }
}

fn finish_template_hash(w: &mut Workload) {
    let mut s = String::new();
    // Ten characters like a pod-template-hash (`7d9f8b6c5x`).
    push_k8s_suffix(&mut s, hash2(w.key, 0x7e3a_1a7e), 10);
    w.template_hash = s;
}

/// Values with their weights.
type Choices<T> = &'static [(T, f64)];

fn main_container(
    rng: &mut Rng,
    load: &LoadShape,
    name: String,
    profile: Profile,
    kind: WorkloadKind,
    jvm: bool,
) -> ContainerSpec {
    let (cpu_choices, mem_choices): (Choices<f64>, Choices<i64>) = match kind {
        Job | CronJob => (
            &[
                (0.25, 0.35),
                (0.5, 0.3),
                (1.0, 0.22),
                (2.0, 0.1),
                (4.0, 0.03),
            ],
            &[
                (256, 0.2),
                (512, 0.25),
                (1024, 0.25),
                (2048, 0.2),
                (4096, 0.1),
            ],
        ),
        StatefulSet => (
            &[
                (0.1, 0.3),
                (0.25, 0.3),
                (0.5, 0.25),
                (1.0, 0.13),
                (2.0, 0.02),
            ],
            &[
                (256, 0.15),
                (512, 0.25),
                (1024, 0.3),
                (2048, 0.2),
                (4096, 0.1),
            ],
        ),
        _ => (
            &[
                (0.05, 0.2),
                (0.1, 0.32),
                (0.2, 0.2),
                (0.25, 0.12),
                (0.5, 0.11),
                (1.0, 0.04),
                (2.0, 0.01),
            ],
            &[
                (64, 0.08),
                (128, 0.2),
                (256, 0.3),
                (512, 0.22),
                (1024, 0.13),
                (2048, 0.05),
                (4096, 0.02),
            ],
        ),
    };
    let cpu_req = *rng.weighted(cpu_choices);
    let mem_req = *rng.weighted(mem_choices) * MIB;
    let mem_req_f = mem_req as f64;

    let (cpu_p95, mut mem_peak) = match profile {
        Profile::OverProvisioned => (
            cpu_req / rng.range(4.0, 10.0),
            mem_req_f / rng.range(2.5, 6.0),
        ),
        Profile::RightSized => (
            cpu_req / rng.range(1.15, 1.6),
            mem_req_f / rng.range(1.1, 1.4),
        ),
        Profile::UnderProvisioned => (
            cpu_req * rng.range(1.1, 1.8),
            mem_req_f * rng.range(1.0, 1.3),
        ),
        Profile::MemoryLeak | Profile::MemorySpikes => (
            cpu_req / rng.range(1.3, 3.0),
            mem_req_f / rng.range(1.6, 2.5),
        ),
        Profile::BestEffort => (
            rng.log_range(0.005, 0.3),
            rng.log_range(32.0, 512.0) * MIB as f64,
        ),
        Profile::Batch => (
            cpu_req * rng.range(0.3, 1.1),
            mem_req_f * rng.range(0.4, 0.95),
        ),
    };

    let mut res = Resources {
        cpu_request: Some(cpu_req),
        cpu_limit: None,
        mem_request: Some(mem_req),
        mem_limit: None,
    };
    match profile {
        Profile::BestEffort => {
            res.cpu_request = None;
            res.mem_request = None;
        }
        Profile::UnderProvisioned => {
            res.cpu_limit = Some(nice_cpu(cpu_req * rng.range(1.0, 1.25)));
            res.mem_limit = Some(nice_mem((mem_req_f * 1.5).max(mem_peak * 1.35)));
        }
        Profile::MemoryLeak | Profile::MemorySpikes => {
            res.cpu_limit = rng.chance(0.5).then(|| nice_cpu(cpu_req * 2.0));
            res.mem_limit = Some(if rng.chance(0.6) {
                mem_req
            } else {
                nice_mem(mem_req_f * 1.5)
            });
        }
        Profile::OverProvisioned | Profile::RightSized | Profile::Batch => {
            res.cpu_limit = *rng.weighted(&[
                (None, 0.4),
                (Some(cpu_req), 0.2),
                (Some(nice_cpu(cpu_req * 2.0)), 0.3),
                (Some(nice_cpu(cpu_req * 4.0)), 0.1),
            ]);
            res.mem_limit = *rng.weighted(&[
                (Some(mem_req), 0.5),
                (Some(nice_mem(mem_req_f * 1.5)), 0.25),
                (Some(nice_mem(mem_req_f * 2.0)), 0.15),
                (None, 0.1),
            ]);
        }
    }
    if let Some(limit) = res.mem_limit
        && !matches!(profile, Profile::MemoryLeak | Profile::MemorySpikes)
    {
        // Ordinary containers stay clear of their memory limit.
        mem_peak = mem_peak.min(limit as f64 / 1.3);
    }

    let mut usage = usage_for(rng, load, cpu_p95, mem_peak, jvm);
    match profile {
        Profile::MemoryLeak => {
            let limit = res.mem_limit.unwrap() as f64;
            usage.mem_amp = 0.0;
            usage.mem_base = limit * rng.range(0.3, 0.5);
            usage.leak_period_ms = rng.int(6 * 60, 72 * 60) * MINUTE;
        }
        Profile::MemorySpikes => {
            usage.oom_per_hour = rng.range(1.0 / 72.0, 1.0 / 24.0);
        }
        _ => {}
    }
    ContainerSpec {
        name,
        cpu_request_cores: res.cpu_request,
        cpu_limit_cores: res.cpu_limit,
        memory_request_bytes: res.mem_request,
        memory_limit_bytes: res.mem_limit,
        profile,
        usage,
    }
}

fn sidecar(
    rng: &mut Rng,
    load: &LoadShape,
    name: &str,
    cpu_req: f64,
    mem_req: i64,
    best_effort: bool,
) -> ContainerSpec {
    let ratio = rng.range(2.0, 10.0);
    let cpu_p95 = cpu_req / ratio;
    let mem_peak = mem_req as f64 / rng.range(1.3, 3.0);
    let usage = usage_for(rng, load, cpu_p95, mem_peak, false);
    if best_effort {
        return ContainerSpec {
            name: name.to_string(),
            cpu_request_cores: None,
            cpu_limit_cores: None,
            memory_request_bytes: None,
            memory_limit_bytes: None,
            profile: Profile::BestEffort,
            usage,
        };
    }
    ContainerSpec {
        name: name.to_string(),
        cpu_request_cores: Some(cpu_req),
        cpu_limit_cores: rng.chance(0.5).then(|| nice_cpu(cpu_req * 2.0)),
        memory_request_bytes: Some(mem_req),
        memory_limit_bytes: Some(nice_mem(mem_req as f64 * 2.0)),
        profile: if ratio >= 3.0 {
            Profile::OverProvisioned
        } else {
            Profile::RightSized
        },
        usage,
    }
}

/// The scheduling JSON of a pod of `w` placed on `node`.
fn pod_scheduling(w: &Workload, node: &Node) -> String {
    let mut s = serde_json::json!({
        "node_selector": {},
        "tolerations": [],
        "required_node_affinity": [],
        "local_storage": w.name.contains("cache")
            || w.name == "prometheus"
            || w.containers.iter().any(|c| c.name == "prometheus"),
    });
    if w.node_group == Some(node.node_group) {
        s["node_selector"]["eks.amazonaws.com/nodegroup"] = node.node_group.into();
    }
    if w.kind == DaemonSet || node.taints != "[]" {
        // DaemonSets tolerate everything, as the platform's do; pods on a tainted node
        // tolerate its taint.
        s["tolerations"] = if w.kind == DaemonSet {
            serde_json::json!([{ "operator": "Exists" }])
        } else {
            serde_json::json!([{ "key": "spot", "operator": "Equal", "value": "true", "effect": "NoSchedule" }])
        };
    }
    s.to_string()
}

/// The pod CIDR of node `i` is `10.(128 + i / 256).(i % 256).0/24`.
fn pod_ip(node: usize, nth: u32) -> String {
    format!(
        "10.{}.{}.{}",
        128 + (node / 256) % 128,
        node % 256,
        2 + (nth.saturating_sub(1)) % 252
    )
}

struct Scheduler {
    target: Vec<f64>,
    pods_on: Vec<u32>,
    /// Nodes by group and zone, by group, by zone, and all.
    by_group_zone: Vec<Vec<Vec<usize>>>,
    by_group: Vec<Vec<usize>>,
    by_zone: Vec<Vec<usize>>,
    all: Vec<usize>,
}

impl Scheduler {
    fn new(nodes: &[Node], zones: usize, rng: &mut Rng) -> Self {
        let groups = NODE_GROUPS.len();
        let mut by_group_zone = vec![vec![Vec::new(); zones]; groups];
        let mut by_group = vec![Vec::new(); groups];
        let mut by_zone = vec![Vec::new(); zones];
        for (i, n) in nodes.iter().enumerate() {
            let g = NODE_GROUPS
                .iter()
                .position(|d| d.name == n.node_group)
                .unwrap();
            by_group_zone[g][n.zone_index].push(i);
            by_group[g].push(i);
            by_zone[n.zone_index].push(i);
        }
        Scheduler {
            target: nodes
                .iter()
                .map(|n| {
                    if n.lightly_used {
                        rng.range(0.12, 0.3)
                    } else {
                        rng.range(0.82, 0.92)
                    }
                })
                .collect(),
            pods_on: vec![0; nodes.len()],
            by_group_zone,
            by_group,
            by_zone,
            all: (0..nodes.len()).collect(),
        }
    }

    /// Like kube-scheduler: look at a sample of feasible nodes, score them, take the best.
    /// Here the score is how full the node is relative to its fill target, so nodes fill
    /// evenly and the lightly-used ones stay light.
    fn choose(
        &self,
        nodes: &[Node],
        rng: &mut Rng,
        group: Option<&str>,
        zone: usize,
        cpu: f64,
        mem: i64,
    ) -> usize {
        let g = group.and_then(|name| NODE_GROUPS.iter().position(|d| d.name == name));
        let tiers: Vec<&[usize]> = match g {
            Some(g) => vec![
                &self.by_group_zone[g][zone],
                &self.by_group[g],
                &self.by_zone[zone],
                &self.all,
            ],
            None => vec![&self.by_zone[zone], &self.all],
        };
        let score = |i: usize, target: f64| -> Option<f64> {
            let n = &nodes[i];
            if self.pods_on[i] >= n.max_pods {
                return None;
            }
            let c = (n.cpu_requested_cores + cpu) / n.cpu_allocatable_cores;
            let m = (n.memory_requested_bytes + mem) as f64 / n.memory_allocatable_bytes as f64;
            (c <= target && m <= target).then(|| c.max(m) / target)
        };
        // First every node up to its fill target; then the ordinary nodes up to their
        // allocatable (lightly-used nodes stay light); then any node up to its allocatable.
        for pass in 0..3 {
            for list in &tiers {
                if list.is_empty() {
                    continue;
                }
                let start = rng.below(list.len());
                let sample = list.len().min(48);
                let mut best: Option<(f64, usize)> = None;
                for k in 0..sample {
                    let i = list[(start + k) % list.len()];
                    let target = match pass {
                        0 => self.target[i],
                        1 if nodes[i].lightly_used => self.target[i],
                        _ => 1.0,
                    };
                    if let Some(s) = score(i, target)
                        && best.is_none_or(|(b, _)| s < b)
                    {
                        best = Some((s, i));
                    }
                }
                if let Some((_, i)) = best {
                    return i;
                }
            }
        }
        // The cluster is full: overcommit the emptiest node.
        (0..nodes.len())
            .min_by(|&a, &b| {
                let fa = nodes[a].cpu_requested_cores / nodes[a].cpu_allocatable_cores;
                let fb = nodes[b].cpu_requested_cores / nodes[b].cpu_allocatable_cores;
                fa.total_cmp(&fb)
            })
            .unwrap()
    }
}

fn place_pods(
    config: &SimConfig,
    nodes: &mut [Node],
    workloads: &mut [Workload],
    rng: &mut Rng,
) -> (Vec<Pod>, Vec<Series>) {
    let zones = config.zones.len();
    let mut sched = Scheduler::new(nodes, zones, rng);
    let mut pods: Vec<Pod> = Vec::new();
    let mut series: Vec<Series> = Vec::new();
    for (wi, w) in workloads.iter_mut().enumerate() {
        let cpu: f64 = w
            .containers
            .iter()
            .filter_map(|c| c.cpu_request_cores)
            .sum();
        let mem: i64 = w
            .containers
            .iter()
            .filter_map(|c| c.memory_request_bytes)
            .sum();
        let mut slots: Vec<(u32, PodKind, Option<usize>)> = Vec::new();
        match w.kind {
            DaemonSet => {
                slots.extend((0..nodes.len()).map(|i| (i as u32, PodKind::Static, Some(i))))
            }
            Deployment | StatefulSet => {
                slots.extend((0..w.replicas).map(|s| (s, PodKind::Static, None)));
                if let Some(h) = w.hpa {
                    slots.extend(
                        (h.min_replicas..h.max_replicas).map(|s| (s, PodKind::Elastic, None)),
                    );
                }
            }
            Job | CronJob => slots.extend((0..w.replicas).map(|s| (s, PodKind::Job, None))),
        }
        let first = pods.len();
        for (slot, kind, fixed) in slots {
            let key = hash2(w.key, u64::from(slot) + 1);
            let zone = ((w.key >> 7) as usize + slot as usize) % zones;
            let node =
                fixed.unwrap_or_else(|| sched.choose(nodes, rng, w.node_group, zone, cpu, mem));
            nodes[node].cpu_requested_cores += cpu;
            nodes[node].memory_requested_bytes += mem;
            sched.pods_on[node] += 1;
            let ip = pod_ip(node, sched.pods_on[node]);
            let mut name = String::with_capacity(w.name.len() + 18);
            name.push_str(&w.name);
            name.push('-');
            match (w.kind, kind) {
                (StatefulSet, _) => name.push_str(&slot.to_string()),
                (DaemonSet, _) => push_k8s_suffix(&mut name, key, 5),
                (Deployment, PodKind::Static) => {
                    name.push_str(&w.template_hash);
                    name.push('-');
                    push_k8s_suffix(&mut name, key, 5);
                }
                (Deployment, _) => {
                    name.push_str(&w.template_hash);
                    name.push('-');
                }
                _ => name.clear(),
            }
            let start_ms = config.epoch_ms
                + (rng.range(0.0, 6.0) * HOUR as f64) as i64
                + i64::from(slot) * 30_000;
            let pod_index = pods.len() as u32;
            let scheduling = pod_scheduling(w, &nodes[node]);
            pods.push(Pod {
                workload: wi,
                slot,
                node,
                ip,
                kind,
                name,
                start_ms,
                key,
                cpu_request_cores: cpu,
                memory_request_bytes: mem,
                scheduling,
            });
            for (ci, spec) in w.containers.iter().enumerate() {
                let skey = hash2(key, ci as u64 + 1);
                let (a, b) = crate::rng::unit_pair(hash2(skey, 0x5ca1e));
                let (cpu_scale, mem_scale) = (0.85 + 0.3 * a, 0.93 + 0.1 * b);
                let u = &spec.usage;
                series.push(Series {
                    pod: pod_index,
                    workload: wi as u32,
                    container: ci as u16,
                    node: node as u32,
                    kind,
                    profile: spec.profile,
                    key: skey,
                    start_ms,
                    cpu_base: u.cpu_base * cpu_scale,
                    cpu_noise: u.cpu_noise,
                    startup_cpu: u.startup_cpu,
                    startup_ms: u.startup_ms,
                    cpu_limit: spec.cpu_limit_cores.unwrap_or(f64::INFINITY),
                    mem_base: u.mem_base * mem_scale,
                    mem_amp: u.mem_amp,
                    mem_noise: u.mem_noise,
                    rss_ratio: u.rss_ratio,
                    eph_base: u.eph_base,
                    mem_limit: spec.memory_limit_bytes.map_or(f64::INFINITY, |l| l as f64),
                    hpa_min: w.hpa.map_or(0.0, |h| f64::from(h.min_replicas)),
                });
            }
        }
        w.pods = first..pods.len();
    }
    (pods, series)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_quantities_round_up() {
        assert_eq!(nice_cpu(0.09), 0.1);
        assert_eq!(nice_cpu(0.1), 0.1);
        assert_eq!(nice_cpu(9.2), 10.0);
        assert_eq!(nice_mem(100.0 * MIB as f64), 128 * MIB);
        assert_eq!(nice_mem(40.0 * GIB as f64), 40 * GIB);
    }

    #[test]
    fn namespaces_are_unique_and_team_named() {
        let ns = build_namespaces(40);
        assert_eq!(ns.len(), 40);
        let set: HashSet<&String> = ns.iter().collect();
        assert_eq!(set.len(), 40);
        assert!(ns.contains(&"payments-2".to_string()));
        for n in &ns[SYSTEM_NAMESPACES.len()..] {
            team_of(n);
        }
    }
}
