//! The lazy sample stream: [`Samples`] walks the sample grid of a window and yields record
//! batches of at most `max_rows` rows per table, holding only one unfinished batch per table.

use std::collections::VecDeque;
use std::fmt::Write as _;

use arrow::record_batch::RecordBatch;
use tally_wire::Table;

use crate::Cluster;
use crate::model::{
    HPA_BUCKET, Presence, RESTART_DELAY, TickCtx, incarnation, is_incarnation_boundary, job_run,
    leak_phase, run_index, spike_kill,
};
use crate::rng::{hash2, push_k8s_suffix, unit_pair};
use crate::rows::{
    ContainerUsageRows, DnsRow, DnsRows, EventRow, EventRows, FlowRows, NodeUsageRows, PodRow,
    PodRows,
};
use crate::topology::{HOUR, Pod, PodKind, Profile, WorkloadKind};

/// The largest batch, whatever the caller asks for.
pub const MAX_BATCH_ROWS: usize = 1 << 22;

/// `ceil(a / b)` for `b > 0`.
#[inline]
pub(crate) fn ceil_div(a: i64, b: i64) -> i64 {
    a.div_euclid(b) + i64::from(a.rem_euclid(b) != 0)
}

/// The iterator returned by [`Cluster::samples`].
///
/// Samples are taken at every multiple of `step_ms` (since the Unix epoch) in `[from, to)`, so
/// windows that meet generate exactly the samples of the window that spans them. Events, pod
/// changes and DNS lookups happen at their own times and belong to the window containing them.
/// Within a sample time, rows follow the cluster's series order; batches may span sample times.
pub struct Samples<'a> {
    c: &'a Cluster,
    from: i64,
    to: i64,
    step: i64,
    step_s: f64,
    window_s: i64,
    max_rows: usize,
    k: i64,
    k_first: i64,
    k_end: i64,
    /// The window holds no sample time but is not empty: one events-only interval.
    pseudo: bool,
    in_tick: bool,
    pos: usize,
    ctx: TickCtx,
    node_cpu: Vec<f64>,
    node_mem: Vec<f64>,
    node_fs: Vec<f64>,
    node_rx: Vec<f64>,
    node_tx: Vec<f64>,
    /// Per pod slot: the instance (incarnation or run) whose name is cached, and the name.
    names: Vec<(i64, String)>,
    /// Per DNS series: the number of its next lookup (empty until the first interval).
    dns_next: Vec<i64>,
    cu: ContainerUsageRows,
    nu: NodeUsageRows,
    flows: FlowRows,
    dns: DnsRows,
    events: EventRows,
    pods: PodRows,
    ready: VecDeque<(Table, RecordBatch)>,
    done: bool,
    scratch: String,
}

impl<'a> Samples<'a> {
    pub(crate) fn new(c: &'a Cluster, from: i64, to: i64, step: i64, max_rows: usize) -> Self {
        assert!(step > 0, "the sample step must be positive");
        // Batches stay well below the 2 GiB a string column's i32 offsets can address.
        let max_rows = max_rows.clamp(1, MAX_BATCH_ROWS);
        let k_first = ceil_div(from, step);
        let k_end = if to > from {
            ceil_div(to, step)
        } else {
            k_first
        };
        let nodes = c.nodes.len();
        // Room for a full batch, but not more than a window can need.
        let ticks = usize::try_from(k_end - k_first).unwrap_or(0).max(1);
        let cap = max_rows
            .min(1 << 16)
            .min(c.series.len().saturating_mul(ticks).max(1));
        Samples {
            c,
            from,
            to,
            step,
            step_s: step as f64 / 1000.0,
            window_s: (step / 1000).max(1),
            max_rows,
            k: k_first,
            k_first,
            k_end,
            pseudo: to > from && k_first >= k_end,
            in_tick: false,
            pos: 0,
            ctx: TickCtx::default(),
            node_cpu: vec![0.0; nodes],
            node_mem: vec![0.0; nodes],
            node_fs: vec![0.0; nodes],
            node_rx: vec![0.0; nodes],
            node_tx: vec![0.0; nodes],
            names: vec![(i64::MIN, String::new()); c.pods.len()],
            dns_next: Vec::new(),
            cu: ContainerUsageRows::new(cap),
            nu: NodeUsageRows::new(cap.min(nodes * 16)),
            flows: FlowRows::new(cap.min(c.flows.len() * 16)),
            dns: DnsRows::new(cap.min(c.dns.len() * 4)),
            events: EventRows::default(),
            pods: PodRows::default(),
            ready: VecDeque::new(),
            done: to <= from,
            scratch: String::new(),
        }
    }

    fn advance(&mut self) {
        if self.pseudo {
            self.pseudo = false;
            self.interval_events(self.from, self.to);
            self.finish_all();
            return;
        }
        if self.k >= self.k_end {
            self.finish_all();
            return;
        }
        let t = self.k * self.step;
        if !self.in_tick {
            self.c.tick_ctx(t, &mut self.ctx);
            for v in [
                &mut self.node_cpu,
                &mut self.node_mem,
                &mut self.node_fs,
                &mut self.node_rx,
                &mut self.node_tx,
            ] {
                v.fill(0.0);
            }
            self.in_tick = true;
            self.pos = 0;
        }
        if self.containers(t) {
            return; // a full batch is ready; continue this tick on the next call
        }
        self.network(t);
        self.node_rows(t);
        let lo = if self.k == self.k_first { self.from } else { t };
        let hi = if self.k + 1 == self.k_end {
            self.to
        } else {
            t + self.step
        };
        self.interval_events(lo, hi);
        self.k += 1;
        self.in_tick = false;
    }

    fn finish_all(&mut self) {
        if self.cu.len() > 0 {
            let b = self.cu.finish();
            self.ready.push_back((Table::ContainerUsage, b));
        }
        if self.nu.len() > 0 {
            let b = self.nu.finish();
            self.ready.push_back((Table::NodeUsage, b));
        }
        if self.flows.len() > 0 {
            let b = self.flows.finish();
            self.ready.push_back((Table::NetworkFlows, b));
        }
        if self.dns.len() > 0 {
            let b = self.dns.finish();
            self.ready.push_back((Table::DnsLookups, b));
        }
        if self.events.len() > 0 {
            let b = self.events.finish();
            self.ready.push_back((Table::Events, b));
        }
        if self.pods.len() > 0 {
            let b = self.pods.finish();
            self.ready.push_back((Table::Pods, b));
        }
        self.done = true;
    }

    /// Container rows of the current tick from `self.pos` on; true if a batch filled up.
    fn containers(&mut self, t: i64) -> bool {
        let c = self.c;
        // Long-running series, once all have started: compute the measured columns row by
        // row, copy the constant ones in bulk.
        if self.pos < c.static_series && t >= c.static_ready_ms {
            let templates = c.templates();
            while self.pos < c.static_series {
                let end = (self.pos + self.max_rows - self.cu.len()).min(c.static_series);
                for s in &c.series[self.pos..end] {
                    let p = Presence {
                        started: s.start_ms,
                        progress: 0.0,
                        instance: 0,
                    };
                    let sample = c.sample(s, p, &self.ctx, self.step_s);
                    self.cu.push_sample(&sample);
                    let node = s.node as usize;
                    self.node_cpu[node] += sample.cpu;
                    self.node_mem[node] += sample.working_set as f64;
                    self.node_fs[node] += sample.ephemeral as f64;
                }
                self.cu.extend_constants(t, templates, self.pos..end);
                self.pos = end;
                if self.cu.len() >= self.max_rows {
                    let b = self.cu.finish();
                    self.ready.push_back((Table::ContainerUsage, b));
                    return true;
                }
            }
        }
        // HPA replicas, job pods (and pods still starting): row by row.
        while self.pos < c.series.len() {
            let s = &c.series[self.pos];
            self.pos += 1;
            let Some(p) = c.presence(s, &self.ctx) else {
                continue;
            };
            let sample = c.sample(s, p, &self.ctx, self.step_s);
            let pi = s.pod as usize;
            let pod = &c.pods[pi];
            let w = &c.workloads[s.workload as usize];
            let spec = &w.containers[s.container as usize];
            let pod_name: &str = if pod.kind == PodKind::Static {
                &pod.name
            } else {
                let cached = &mut self.names[pi];
                if cached.0 != p.instance || cached.1.is_empty() {
                    c.pod_name(pod, p.instance, &mut cached.1);
                    cached.0 = p.instance;
                }
                &cached.1
            };
            let node = s.node as usize;
            self.cu.push_names(
                t,
                [
                    &w.namespace,
                    pod_name,
                    &spec.name,
                    &c.nodes[node].name,
                    w.kind.as_str(),
                    &w.name,
                ],
                spec,
            );
            self.cu.push_sample(&sample);
            self.node_cpu[node] += sample.cpu;
            self.node_mem[node] += sample.working_set as f64;
            self.node_fs[node] += sample.ephemeral as f64;
            if self.cu.len() >= self.max_rows {
                let b = self.cu.finish();
                self.ready.push_back((Table::ContainerUsage, b));
                return true;
            }
        }
        false
    }

    /// Flows in the window ending at `t`: traffic row by row, constant columns copied for
    /// each run of consecutive active flows.
    fn network(&mut self, t: i64) {
        let c = self.c;
        if c.flows.is_empty() {
            return;
        }
        let tpl = c.flow_templates();
        let mut run: Option<usize> = None;
        for (i, f) in c.flows.iter().enumerate() {
            if t < f.start_ms || !f.active_at(t - 1) {
                if let Some(from) = run.take() {
                    self.flows.extend_constants(t, self.window_s, tpl, from..i);
                }
                continue;
            }
            run.get_or_insert(i);
            let load = self.ctx.load[f.workload as usize];
            let (n1, n2) = unit_pair(hash2(f.key, t as u64));
            let tx = (f.tx_rate * load * self.step_s * (0.6 + 0.8 * n1)).max(60.0);
            let rx = (tx * f.rx_ratio * (0.8 + 0.4 * n2)).max(60.0);
            self.flows.push_traffic([
                tx as i64,
                rx as i64,
                (tx / f.tx_packet).ceil() as i64,
                (rx / f.rx_packet).ceil() as i64,
            ]);
            self.node_tx[f.node as usize] += tx;
            self.node_rx[f.node as usize] += rx;
            if let Some(d) = f.dst_node {
                self.node_rx[d as usize] += tx;
                self.node_tx[d as usize] += rx;
            }
            if self.flows.len() >= self.max_rows {
                let from = run.take().unwrap_or(i);
                self.flows
                    .extend_constants(t, self.window_s, tpl, from..i + 1);
                let b = self.flows.finish();
                self.ready.push_back((Table::NetworkFlows, b));
            }
        }
        if let Some(from) = run {
            self.flows
                .extend_constants(t, self.window_s, tpl, from..c.flows.len());
        }
    }

    fn node_rows(&mut self, t: i64) {
        let c = self.c;
        for (i, n) in c.nodes.iter().enumerate() {
            let (cpu, mem) = c.node_overhead(i, t);
            // Traffic the flows do not show: kubelet, image pulls, health checks.
            let (a, b) = unit_pair(hash2(n.key, t as u64 ^ 0x4e7));
            let background = 30_000.0 * self.step_s;
            self.nu.push(
                t,
                n,
                &c.config.region,
                cpu + self.node_cpu[i],
                (mem + self.node_mem[i]) as i64,
                Some((
                    (self.node_rx[i] + background * (0.5 + a)) as i64,
                    (self.node_tx[i] + background * 0.4 * (0.5 + b)) as i64,
                )),
                (n.fs_base + self.node_fs[i]) as i64,
            );
            if self.nu.len() >= self.max_rows {
                let b = self.nu.finish();
                self.ready.push_back((Table::NodeUsage, b));
            }
        }
    }

    /// DNS lookups, events and pod changes with times in `[lo, hi)`.
    fn interval_events(&mut self, lo: i64, hi: i64) {
        self.dns_lookups(lo, hi);
        self.oom_events(lo, hi);
        self.pod_changes(lo, hi);
    }

    fn dns_lookups(&mut self, lo: i64, hi: i64) {
        let c = self.c;
        // (time, DNS series, lookup number), emitted in time order.
        let mut found: Vec<(i64, u32, i64)> = Vec::new();
        if self.dns_next.is_empty() {
            // Intervals come in order from the window's start: find each series' first
            // lookup once, then step.
            self.dns_next = c
                .dns
                .iter()
                .map(|d| ceil_div(lo - d.phase, d.period))
                .collect();
        }
        for (di, (d, next)) in c.dns.iter().zip(&mut self.dns_next).enumerate() {
            loop {
                let t = d.phase + *next * d.period;
                if t >= hi {
                    break;
                }
                let f = &c.flows[d.flow as usize];
                if t >= f.start_ms && f.active_at(t) {
                    found.push((t, di as u32, *next));
                }
                *next += 1;
            }
        }
        found.sort_unstable_by_key(|x| (x.0, x.1));
        for (t, di, k) in found {
            let d = &c.dns[di as usize];
            let f = &c.flows[d.flow as usize];
            let pod = &c.pods[f.pod as usize];
            let w = &c.workloads[f.workload as usize];
            let node = &c.nodes[f.node as usize].name;
            let row = |query_type, answers| DnsRow {
                node,
                client_ip: &pod.ip,
                client_namespace: &w.namespace,
                client_pod: &pod.name,
                query_name: &d.name,
                query_type,
                answers,
                cname_chain: d.cname,
                ttl_seconds: d.ttl,
            };
            let a = &d.a[k.rem_euclid(d.a.len() as i64) as usize];
            let aaaa = d
                .aaaa
                .as_ref()
                .map(|v| v[k.rem_euclid(v.len() as i64) as usize].as_str());
            for (query_type, answers) in [("A", Some(a.as_str())), ("AAAA", aaaa)] {
                let Some(answers) = answers else { continue };
                self.dns.push(t, row(query_type, answers));
                if self.dns.len() >= self.max_rows {
                    let b = self.dns.finish();
                    self.ready.push_back((Table::DnsLookups, b));
                }
            }
        }
    }

    fn oom_events(&mut self, lo: i64, hi: i64) {
        let c = self.c;
        // (time, series, reason, restart count), emitted in time order.
        let mut found: Vec<(i64, u32, &'static str, i64)> = Vec::new();
        for &si in &c.special {
            let s = &c.series[si as usize];
            let pod = &c.pods[s.pod as usize];
            let spec = &c.workloads[s.workload as usize].containers[s.container as usize];
            let u = &spec.usage;
            match spec.profile {
                Profile::MemoryLeak => {
                    let period = u.leak_period_ms;
                    let first = pod.start_ms + leak_phase(s, period);
                    let mut n = ceil_div(lo - first, period).max(0);
                    while first + n * period < hi {
                        found.push((first + n * period, si, "OOMKilled", n + 1));
                        n += 1;
                    }
                    let mut n = ceil_div(lo - RESTART_DELAY - first, period).max(0);
                    while first + n * period + RESTART_DELAY < hi {
                        found.push((first + n * period + RESTART_DELAY, si, "Restarted", n + 1));
                        n += 1;
                    }
                }
                Profile::MemorySpikes => {
                    let first_hour = (lo - RESTART_DELAY).div_euclid(HOUR);
                    let last_hour = (hi - 1).div_euclid(HOUR);
                    for hour in first_hour..=last_hour {
                        let Some(kill) = spike_kill(s, u.oom_per_hour, pod.start_ms, hour) else {
                            continue;
                        };
                        let oom = (lo..hi).contains(&kill);
                        let restart = (lo..hi).contains(&(kill + RESTART_DELAY));
                        if !oom && !restart {
                            continue;
                        }
                        let count = c.spike_restarts(s, pod.start_ms, hour);
                        if oom {
                            found.push((kill, si, "OOMKilled", count));
                        }
                        if restart {
                            found.push((kill + RESTART_DELAY, si, "Restarted", count));
                        }
                    }
                }
                _ => {}
            }
        }
        found.sort_unstable_by_key(|x| (x.0, x.1, x.2));
        for (t, si, reason, restarts) in found {
            let s = &c.series[si as usize];
            let pod = &c.pods[s.pod as usize];
            let w = &c.workloads[s.workload as usize];
            let spec = &w.containers[s.container as usize];
            self.scratch.clear();
            if reason == "OOMKilled" {
                let _ = write!(
                    self.scratch,
                    "Container {} was OOM-killed: its working set reached the memory limit of {}Mi",
                    spec.name,
                    spec.memory_limit_bytes.unwrap_or(0) >> 20
                );
            } else {
                let _ = write!(
                    self.scratch,
                    "Container {} restarted after OOMKilled (restart {restarts})",
                    spec.name
                );
            }
            self.events.push(
                t,
                EventRow {
                    namespace: &w.namespace,
                    pod: &pod.name,
                    container: &spec.name,
                    node: &c.nodes[pod.node].name,
                    kind: w.kind.as_str(),
                    workload: &w.name,
                    reason,
                    message: &self.scratch,
                    memory_limit_bytes: spec.memory_limit_bytes,
                    restart_count: restarts,
                },
            );
            if self.events.len() >= self.max_rows {
                let b = self.events.finish();
                self.ready.push_back((Table::Events, b));
            }
        }
    }

    fn pod_changes(&mut self, lo: i64, hi: i64) {
        let c = self.c;
        let mut found: Vec<PodChange> = Vec::new();
        // Static pods starting (only if the window covers the cluster's bring-up).
        let first = c.static_starts.partition_point(|&(t, _)| t < lo);
        for &(t, pi) in &c.static_starts[first..] {
            if t >= hi {
                break;
            }
            found.push(PodChange {
                t,
                pod: pi,
                instance: 0,
                phase: "Running",
                start: t,
                deleted: false,
            });
        }
        // HPA replicas coming and going at HPA bucket boundaries.
        for &wi in &c.hpa_workloads {
            let w = &c.workloads[wi as usize];
            let mut b = ceil_div(lo, HPA_BUCKET);
            while b * HPA_BUCKET < hi {
                let at = b * HPA_BUCKET;
                let now = c.desired_replicas(w, b);
                let was = c.desired_replicas(w, b - 1);
                let renew = is_incarnation_boundary(at);
                for pi in w.pod_slots() {
                    let pod = &c.pods[pi];
                    if pod.kind != PodKind::Elastic {
                        continue;
                    }
                    let (ran, runs) = (pod.slot < was, pod.slot < now);
                    if ran && (!runs || renew) {
                        found.push(PodChange {
                            t: at,
                            pod: pi as u32,
                            instance: incarnation(at - 1),
                            phase: "Running",
                            start: c.elastic_start(w, pod.slot, b - 1),
                            deleted: true,
                        });
                    }
                    if runs && (!ran || renew) {
                        found.push(PodChange {
                            t: at,
                            pod: pi as u32,
                            instance: incarnation(at),
                            phase: "Running",
                            start: at,
                            deleted: false,
                        });
                    }
                }
                b += 1;
            }
        }
        // Job pods: started, succeeded, deleted.
        for &pi in &c.job_pods {
            let pod = &c.pods[pi as usize];
            let w = &c.workloads[pod.workload];
            let s = w.schedule.expect("job workloads have a schedule");
            for k in run_index(&s, lo - s.period_ms - s.keep_ms)..=run_index(&s, hi) {
                let r = job_run(w, pod.slot, k);
                if r.scheduled < c.config.epoch_ms {
                    continue;
                }
                for (t, phase, deleted) in [
                    (r.start, "Running", false),
                    (r.end, "Succeeded", false),
                    (r.delete, "Succeeded", true),
                ] {
                    if (lo..hi).contains(&t) {
                        found.push(PodChange {
                            t,
                            pod: pi,
                            instance: k,
                            phase,
                            start: r.start,
                            deleted,
                        });
                    }
                }
            }
        }
        found.sort_unstable_by_key(|x| (x.t, x.pod, x.deleted, x.instance, x.phase));
        for ch in found {
            let pod = &c.pods[ch.pod as usize];
            c.pod_name(pod, ch.instance, &mut self.scratch);
            self.pods.push(
                ch.t,
                c.pod_row(pod, &self.scratch, ch.phase, ch.start, ch.deleted),
            );
            if self.pods.len() >= self.max_rows {
                let b = self.pods.finish();
                self.ready.push_back((Table::Pods, b));
            }
        }
    }
}

/// A pod created, finished or deleted in a window.
struct PodChange {
    t: i64,
    pod: u32,
    instance: i64,
    phase: &'static str,
    start: i64,
    deleted: bool,
}

impl Iterator for Samples<'_> {
    type Item = (Table, RecordBatch);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(b) = self.ready.pop_front() {
                return Some(b);
            }
            if self.done {
                return None;
            }
            self.advance();
        }
    }
}

impl Cluster {
    /// The name of a pod slot's pod for an instance (elastic incarnation or job run).
    pub(crate) fn pod_name(&self, pod: &Pod, instance: i64, out: &mut String) {
        out.clear();
        let w = &self.workloads[pod.workload];
        match pod.kind {
            PodKind::Static => out.push_str(&pod.name),
            PodKind::Elastic => {
                out.push_str(&pod.name);
                push_k8s_suffix(out, hash2(pod.key, instance as u64), 5);
            }
            PodKind::Job => {
                out.push_str(&w.name);
                out.push('-');
                if w.kind == WorkloadKind::CronJob {
                    let s = w.schedule.expect("job workloads have a schedule");
                    // CronJob-created Jobs are named after their scheduled minute.
                    let _ = write!(out, "{}-", (instance * s.period_ms + s.offset_ms) / 60_000);
                }
                push_k8s_suffix(out, hash2(pod.key, instance as u64), 5);
            }
        }
    }

    pub(crate) fn pod_row<'a>(
        &'a self,
        pod: &'a Pod,
        name: &'a str,
        phase: &'a str,
        start: i64,
        deleted: bool,
    ) -> PodRow<'a> {
        let w = &self.workloads[pod.workload];
        PodRow {
            namespace: &w.namespace,
            name,
            node: &self.nodes[pod.node].name,
            phase,
            kind: w.kind.as_str(),
            workload: &w.name,
            qos_class: w.qos_class,
            ip: &pod.ip,
            labels: &w.labels,
            start_time: start,
            deleted,
            cpu_request_cores: pod.cpu_request_cores,
            memory_request_bytes: pod.memory_request_bytes,
            scheduling: &pod.scheduling,
        }
    }

    /// Restarts of a spiky container up to and including hour `hour`.
    pub(crate) fn spike_restarts(&self, s: &crate::topology::Series, start: i64, hour: i64) -> i64 {
        let per_hour = self.workloads[s.workload as usize].containers[s.container as usize]
            .usage
            .oom_per_hour;
        (start.div_euclid(HOUR)..=hour)
            .filter(|&h| spike_kill(s, per_hour, start, h).is_some())
            .count() as i64
    }
}
