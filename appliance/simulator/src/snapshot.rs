//! Spec and inventory snapshots: what the collector's informers would report at one instant.

use arrow::record_batch::RecordBatch;

use crate::Cluster;
use crate::model::{HPA_BUCKET, TickCtx, incarnation, job_run, run_index};
use crate::rows::{NodeUsageRows, PodRows, WorkloadRow, WorkloadRows};
use crate::topology::{PodKind, WorkloadKind};

impl Cluster {
    /// The replicas a workload has at `at`: the HPA's current count, the node count of a
    /// DaemonSet, the parallelism of a job.
    pub fn replicas_at(&self, workload: usize, at_ms: i64) -> u32 {
        let w = &self.workloads[workload];
        match w.kind {
            WorkloadKind::DaemonSet => self.nodes.len() as u32,
            _ if w.hpa.is_some() => self.desired_replicas(w, at_ms.div_euclid(HPA_BUCKET)),
            _ => w.replicas,
        }
    }

    pub(crate) fn workloads_batch(&self, at: i64) -> RecordBatch {
        let mut rows = WorkloadRows::default();
        for (i, w) in self.workloads.iter().enumerate() {
            let replicas = i64::from(self.replicas_at(i, at));
            for c in &w.containers {
                rows.push(
                    at,
                    WorkloadRow {
                        namespace: &w.namespace,
                        kind: w.kind.as_str(),
                        name: &w.name,
                        container: c,
                        replicas,
                        hpa: w.hpa.map(|h| {
                            (
                                i64::from(h.min_replicas),
                                i64::from(h.max_replicas),
                                h.target_cpu_utilization,
                            )
                        }),
                        pdb_max_unavailable: w.pdb_max_unavailable.map(i64::from),
                        labels: &w.labels,
                    },
                );
            }
        }
        rows.finish()
    }

    pub(crate) fn pods_batch(&self, at: i64) -> RecordBatch {
        let mut rows = PodRows::default();
        let mut name = String::new();
        for pod in &self.pods {
            let w = &self.workloads[pod.workload];
            match pod.kind {
                PodKind::Static => {
                    if at >= pod.start_ms {
                        rows.push(
                            at,
                            self.pod_row(pod, &pod.name, "Running", pod.start_ms, false),
                        );
                    }
                }
                PodKind::Elastic => {
                    let bucket = at.div_euclid(HPA_BUCKET);
                    if self.elastic_active(w, pod.slot, bucket) {
                        let start = self.elastic_start(w, pod.slot, bucket);
                        self.pod_name(pod, incarnation(at), &mut name);
                        rows.push(at, self.pod_row(pod, &name, "Running", start, false));
                    }
                }
                PodKind::Job => {
                    let s = w.schedule.expect("job workloads have a schedule");
                    for k in run_index(&s, at - s.period_ms - s.keep_ms)..=run_index(&s, at) {
                        let r = job_run(w, pod.slot, k);
                        if r.scheduled < self.config.epoch_ms || at < r.start || at >= r.delete {
                            continue;
                        }
                        let phase = if at < r.end { "Running" } else { "Succeeded" };
                        self.pod_name(pod, k, &mut name);
                        rows.push(at, self.pod_row(pod, &name, phase, r.start, false));
                    }
                }
            }
        }
        rows.finish()
    }

    /// Node rows at `at`: metadata, capacity, allocatable, and CPU/memory/filesystem usage
    /// computed exactly as the sample stream does (network is left null: it is per window).
    pub(crate) fn nodes_batch(&self, at: i64) -> RecordBatch {
        let mut ctx = TickCtx::default();
        self.tick_ctx(at, &mut ctx);
        let n = self.nodes.len();
        let (mut cpu, mut mem, mut fs) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        for s in &self.series {
            if let Some(p) = self.presence(s, &ctx) {
                let sample = self.sample(s, p, &ctx, 0.0);
                let node = s.node as usize;
                cpu[node] += sample.cpu;
                mem[node] += sample.working_set as f64;
                fs[node] += sample.ephemeral as f64;
            }
        }
        let mut rows = NodeUsageRows::new(self.nodes.len());
        for (i, node) in self.nodes.iter().enumerate() {
            let (oc, om) = self.node_overhead(i, at);
            rows.push(
                at,
                node,
                &self.config.region,
                oc + cpu[i],
                (om + mem[i]) as i64,
                None,
                (node.fs_base + fs[i]) as i64,
            );
        }
        rows.finish()
    }

    /// How many containers run at `at` (the container_usage rows of a sample at `at`).
    pub fn running_containers(&self, at_ms: i64) -> usize {
        let mut ctx = TickCtx::default();
        self.tick_ctx(at_ms, &mut ctx);
        self.series
            .iter()
            .filter(|s| self.presence(s, &ctx).is_some())
            .count()
    }
}
