//! A deterministic simulated Kubernetes cluster that produces Tally's tables as Arrow record
//! batches, for `tally demo` (a history backfill, then live streaming) and the benchmarks.
//!
//! ```
//! use tally_simulator::{Cluster, SimConfig};
//!
//! let cluster = Cluster::new(SimConfig::demo());
//! let now = 1_767_225_600_000; // 2026-01-01T00:00:00Z
//! for (table, batch) in cluster.snapshot_batches(now) {
//!     assert!(batch.num_rows() > 0, "{table}");
//! }
//! let rows: usize = cluster
//!     .samples(now, now + 60_000, 30_000, 8192)
//!     .map(|(_, batch)| batch.num_rows())
//!     .sum();
//! assert!(rows > 2 * cluster.container_count());
//! ```
//!
//! # Determinism
//! The topology is built once from the seed. Every time-dependent value (usage, HPA replicas,
//! job runs, OOM kills, flows, DNS lookups) is a pure function of (seed, series, timestamp),
//! computed with stateless hashing: any window can be generated independently and in any order,
//! the same window always gives the same rows, and `[a, c)` gives exactly the rows of `[a, b)`
//! followed by those of `[b, c)`. Sample times are the multiples of `step_ms` since the Unix
//! epoch. Nothing here reads the clock.
//!
//! # What is in the cluster
//! Nodes of common AWS instance types (real vCPU and memory, EKS allocatable) in node groups
//! `general`, `compute` and `memory`, on-demand and spot, spread over the zones, some kept
//! lightly used. The platform's own workloads (CoreDNS, kube-proxy, aws-node, EBS CSI,
//! Prometheus, Loki, fluent-bit, ingress-nginx, cert-manager, Tally) and team workloads in
//! team namespaces: Deployments (some with HPAs and PDBs), StatefulSets, DaemonSets, hourly
//! and daily CronJobs and recurring Jobs, 1–3 containers per pod. Usage follows a daily cycle
//! (trough at night UTC), is lower at weekends, noisy, with rare spikes and a CPU peak after
//! each container start. The ground truth is in [`Profile`]: many workloads are
//! over-provisioned, some under-provisioned (throttled at their CPU limit), some leak memory
//! or spike and get OOM-killed (an `OOMKilled` and a `Restarted` event each time).
//!
//! All IP addresses are private (RFC 1918), link-local or documentation (RFC 5737, RFC 3849)
//! addresses: the data is simulated and nothing is sent anywhere.

mod catalog;
mod model;
mod network;
mod rng;
mod rows;
mod samples;
mod snapshot;
mod topology;

#[cfg(test)]
mod tests;

use std::sync::OnceLock;

use arrow::record_batch::RecordBatch;
use tally_wire::Table;

pub use catalog::{InstanceType, instance_types};
pub use network::FlowKind;
pub use samples::{MAX_BATCH_ROWS, Samples};
pub use topology::{
    ContainerSpec, Hpa, JobSchedule, Node, Pod, PodKind, Profile, Workload, WorkloadKind,
};

use network::{DnsSeries, Flow};
use topology::{PodKind as Kind, Series};

/// What to simulate.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Everything (topology and samples) is a function of this seed.
    pub seed: u64,
    pub nodes: usize,
    pub zones: Vec<String>,
    pub region: String,
    /// Workloads in total, the platform's own ~21 included. Ignored when
    /// `target_containers` is set.
    pub workloads: usize,
    /// Instead of a workload count: add workloads until this many containers run
    /// (HPA minimum replicas; Job and CronJob pods not counted).
    pub target_containers: Option<usize>,
    /// Namespaces in total: six platform ones and team ones (`payments`, `search`, …,
    /// then `payments-2`, …).
    pub namespaces: usize,
    /// When the cluster came up (ms since the Unix epoch): long-running pods start in the
    /// six hours after it; there are no samples of a pod before it starts, no job runs and
    /// no HPA scale-outs before it. Windows are usually well after it.
    pub epoch_ms: i64,
    /// HPAs scale with the load and Jobs/CronJobs run. Without churn every container runs all
    /// the time, so a window has exactly `container_count() × sample times` usage rows.
    pub churn: bool,
    /// Average network flow series per long-running pod (0 turns network data off).
    pub flows_per_pod: f64,
}

/// 2025-01-01T00:00:00Z.
const DEFAULT_EPOCH_MS: i64 = 1_735_689_600_000;

impl SimConfig {
    /// The demo cluster: 50 nodes in 3 zones of `us-east-1`, 600 workloads in 20 namespaces.
    pub fn demo() -> Self {
        SimConfig {
            seed: 42,
            nodes: 50,
            zones: vec![
                "us-east-1a".to_string(),
                "us-east-1b".to_string(),
                "us-east-1c".to_string(),
            ],
            region: "us-east-1".to_string(),
            workloads: 600,
            target_containers: None,
            namespaces: 20,
            epoch_ms: DEFAULT_EPOCH_MS,
            churn: true,
            flows_per_pod: 1.5,
        }
    }

    /// A cluster of about `containers` long-running containers, with nodes and namespaces
    /// scaled to match: one node per ~48 containers (as in the demo) and one team namespace
    /// per ~1,500 containers.
    pub fn benchmark(containers: usize) -> Self {
        SimConfig {
            seed: 7,
            nodes: containers.div_ceil(48).max(3),
            target_containers: Some(containers),
            workloads: 0,
            namespaces: (containers / 1_500 + 6).max(20),
            ..SimConfig::demo()
        }
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig::demo()
    }
}

/// The generated cluster: topology plus the pure functions of time that animate it.
#[derive(Debug)]
pub struct Cluster {
    pub(crate) config: SimConfig,
    pub(crate) nodes: Vec<Node>,
    pub(crate) namespaces: Vec<String>,
    pub(crate) workloads: Vec<Workload>,
    pub(crate) pods: Vec<Pod>,
    pub(crate) series: Vec<Series>,
    pub(crate) flows: Vec<Flow>,
    pub(crate) dns: Vec<DnsSeries>,
    /// Series that get OOM-killed (leaking or spiking memory).
    pub(crate) special: Vec<u32>,
    pub(crate) hpa_workloads: Vec<u32>,
    pub(crate) job_pods: Vec<u32>,
    /// Static pods by start time.
    pub(crate) static_starts: Vec<(i64, u32)>,
    /// The series of static pods come first: this many.
    pub(crate) static_series: usize,
    /// From this time on every static pod runs.
    pub(crate) static_ready_ms: i64,
    /// The constant columns of the static series and of the flows, built on first use.
    pub(crate) templates: OnceLock<rows::Templates>,
    pub(crate) flow_templates: OnceLock<rows::FlowTemplates>,
}

impl Cluster {
    /// Builds the topology.
    ///
    /// # Panics
    /// If the configuration has no nodes or no zones.
    pub fn new(config: SimConfig) -> Self {
        let mut topo = topology::build(&config);
        // Long-running series first: their constant columns are copied in bulk.
        topo.series.sort_by_key(|s| s.kind != Kind::Static);
        let static_series = topo
            .series
            .iter()
            .take_while(|s| s.kind == Kind::Static)
            .count();
        let static_ready_ms = topo.series[..static_series]
            .iter()
            .map(|s| s.start_ms)
            .max()
            .unwrap_or(i64::MIN);
        let mut net_rng = rng::Rng::new(config.seed ^ 0x6e65_7477_6f72_6b00);
        let net = network::build(
            &config,
            &topo.namespaces,
            &topo.nodes,
            &topo.workloads,
            &topo.pods,
            &mut net_rng,
        );
        let special = topo
            .series
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                let c = &topo.workloads[s.workload as usize].containers[s.container as usize];
                matches!(c.profile, Profile::MemoryLeak | Profile::MemorySpikes)
                    && topo.pods[s.pod as usize].kind == Kind::Static
            })
            .map(|(i, _)| i as u32)
            .collect();
        let hpa_workloads = topo
            .workloads
            .iter()
            .enumerate()
            .filter(|(_, w)| w.hpa.is_some())
            .map(|(i, _)| i as u32)
            .collect();
        let job_pods = topo
            .pods
            .iter()
            .enumerate()
            .filter(|(_, p)| p.kind == Kind::Job)
            .map(|(i, _)| i as u32)
            .collect();
        let mut static_starts: Vec<(i64, u32)> = topo
            .pods
            .iter()
            .enumerate()
            .filter(|(_, p)| p.kind == Kind::Static)
            .map(|(i, p)| (p.start_ms, i as u32))
            .collect();
        static_starts.sort_unstable();
        Cluster {
            config,
            nodes: topo.nodes,
            namespaces: topo.namespaces,
            workloads: topo.workloads,
            pods: topo.pods,
            series: topo.series,
            flows: net.flows,
            dns: net.dns,
            special,
            hpa_workloads,
            job_pods,
            static_starts,
            static_series,
            static_ready_ms,
            templates: OnceLock::new(),
            flow_templates: OnceLock::new(),
        }
    }

    pub(crate) fn flow_templates(&self) -> &rows::FlowTemplates {
        self.flow_templates.get_or_init(|| {
            rows::FlowTemplates::build(self.flows.iter().map(|f| {
                let pod = &self.pods[f.pod as usize];
                let names = [
                    self.nodes[f.node as usize].name.as_str(),
                    pod.ip.as_str(),
                    f.dst_ip.as_str(),
                    f.protocol,
                    self.workloads[f.workload as usize].namespace.as_str(),
                    pod.name.as_str(),
                ];
                (names, f.dst_port, f.dst_domain.as_deref())
            }))
        })
    }

    pub(crate) fn templates(&self) -> &rows::Templates {
        self.templates.get_or_init(|| {
            rows::Templates::build(self.series[..self.static_series].iter().map(|s| {
                let w = &self.workloads[s.workload as usize];
                let spec = &w.containers[s.container as usize];
                let names = [
                    w.namespace.as_str(),
                    self.pods[s.pod as usize].name.as_str(),
                    spec.name.as_str(),
                    self.nodes[s.node as usize].name.as_str(),
                    w.kind.as_str(),
                    w.name.as_str(),
                ];
                (names, spec)
            }))
        })
    }

    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    pub fn workloads(&self) -> &[Workload] {
        &self.workloads
    }

    /// Every pod slot: static pods, HPA replicas above the minimum, job pods.
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// Containers of the long-running pods (DaemonSets, and Deployments and StatefulSets at
    /// their fixed or minimum replicas): the container_usage rows of every sample time, to
    /// which HPA scale-outs and running jobs add a few.
    pub fn container_count(&self) -> usize {
        self.series
            .iter()
            .filter(|s| self.pods[s.pod as usize].kind == Kind::Static)
            .count()
    }

    /// Containers of every pod slot, including HPA maximum replicas and job pods: the most
    /// container_usage rows one sample time can have.
    pub fn max_container_count(&self) -> usize {
        self.series.len()
    }

    /// Network flow series (rows per sample time when all are active).
    pub fn flow_count(&self) -> usize {
        self.flows.len()
    }

    /// The kind of each network flow series, for checking the mix.
    pub fn flow_kinds(&self) -> impl Iterator<Item = FlowKind> + '_ {
        self.flows.iter().map(|f| f.kind)
    }

    /// Spec and inventory snapshots at `at_ms`: `workloads` (one row per container of each
    /// workload, replicas as at `at_ms`), `pods` (every pod that exists at `at_ms`, job pods
    /// `Running` or `Succeeded`) and `node_usage` (every node with its zone, region, instance
    /// type, capacity type, capacity and allocatable, and its usage at `at_ms`; network
    /// columns null).
    pub fn snapshot_batches(&self, at_ms: i64) -> Vec<(Table, RecordBatch)> {
        vec![
            (Table::Workloads, self.workloads_batch(at_ms)),
            (Table::Pods, self.pods_batch(at_ms)),
            (Table::NodeUsage, self.nodes_batch(at_ms)),
        ]
    }

    /// Everything that happens in `[from_ms, to_ms)`, sampled every `step_ms`:
    /// `container_usage` and `node_usage` at every multiple of `step_ms`, `network_flows` for
    /// the window ending at each sample time (`window_seconds` = the step), `dns_lookups`,
    /// `events` (OOM kills and restarts) and `pods` changes (HPA replicas and job pods coming
    /// and going) at the times they happen.
    ///
    /// Lazy: yields batches of at most `max_rows` rows and holds at most one unfinished batch
    /// per table, so callers can stream a billion rows in bounded memory.
    ///
    /// # Panics
    /// If `step_ms` is not positive.
    pub fn samples(&self, from_ms: i64, to_ms: i64, step_ms: i64, max_rows: usize) -> Samples<'_> {
        Samples::new(self, from_ms, to_ms, step_ms, max_rows)
    }
}
