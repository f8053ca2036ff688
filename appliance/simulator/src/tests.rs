//! Whole-cluster tests: schemas, determinism, window splitting, and the properties the demo
//! and the analyses rely on.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::LazyLock;

use arrow::array::{
    Array, AsArray, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
};
use arrow::compute::concat_batches;
use arrow::datatypes::TimestampMillisecondType;
use tally_wire::{Table, validate_schema};

use crate::model::{leak_phase, leak_state, spike_kill};
use crate::topology::{DAY, HOUR, MINUTE, system_workload_count};
use crate::{Cluster, FlowKind, PodKind, Profile, SimConfig, WorkloadKind};

/// 2026-03-02T00:00:00Z, a Monday, well after the default epoch.
const T0: i64 = 1_772_409_600_000;

static DEMO: LazyLock<Cluster> = LazyLock::new(|| Cluster::new(SimConfig::demo()));

fn small(seed: u64) -> Cluster {
    Cluster::new(SimConfig {
        seed,
        nodes: 8,
        workloads: 80,
        namespaces: 10,
        ..SimConfig::demo()
    })
}

/// All batches of a window, concatenated per table.
fn collect(
    c: &Cluster,
    from: i64,
    to: i64,
    step: i64,
    max_rows: usize,
) -> BTreeMap<Table, RecordBatch> {
    let mut parts: BTreeMap<Table, Vec<RecordBatch>> = BTreeMap::new();
    for (table, batch) in c.samples(from, to, step, max_rows) {
        assert!(
            batch.num_rows() <= max_rows,
            "{table}: {}",
            batch.num_rows()
        );
        assert!(batch.num_rows() > 0, "{table}: empty batch");
        parts.entry(table).or_default().push(batch);
    }
    parts
        .into_iter()
        .map(|(t, bs)| (t, concat_batches(&t.schema(), &bs).unwrap()))
        .collect()
}

fn strings<'a>(b: &'a RecordBatch, name: &str) -> &'a StringArray {
    b.column_by_name(name).unwrap().as_string::<i32>()
}

fn floats<'a>(b: &'a RecordBatch, name: &str) -> &'a Float64Array {
    b.column_by_name(name).unwrap().as_primitive()
}

fn ints<'a>(b: &'a RecordBatch, name: &str) -> &'a Int64Array {
    b.column_by_name(name).unwrap().as_primitive()
}

fn times(b: &RecordBatch) -> Vec<i64> {
    b.column_by_name("time")
        .unwrap()
        .as_primitive::<TimestampMillisecondType>()
        .values()
        .to_vec()
}

fn check_schema(table: Table, batch: &RecordBatch) {
    validate_schema(table, &batch.schema()).unwrap_or_else(|e| panic!("{table}: {e}"));
    RecordBatch::try_new(table.schema(), batch.columns().to_vec())
        .unwrap_or_else(|e| panic!("{table}: {e}"));
}

#[test]
fn every_batch_matches_its_table_schema() {
    let c = &*DEMO;
    let mut seen = HashSet::new();
    for (table, batch) in c.snapshot_batches(T0) {
        check_schema(table, &batch);
        assert!(batch.num_rows() > 0, "{table}");
        seen.insert(table);
    }
    // Six hours at five minutes, then a day at an hour: every sampled table appears.
    for (table, batch) in c
        .samples(T0, T0 + 6 * HOUR, 5 * MINUTE, 5_000)
        .chain(c.samples(T0 + 6 * HOUR, T0 + 30 * HOUR, HOUR, 5_000))
    {
        check_schema(table, &batch);
        seen.insert(table);
    }
    for table in [
        Table::ContainerUsage,
        Table::NodeUsage,
        Table::Workloads,
        Table::Pods,
        Table::Events,
        Table::NetworkFlows,
        Table::DnsLookups,
    ] {
        assert!(seen.contains(&table), "no {table} batch");
    }
}

#[test]
fn same_seed_same_data_different_seed_different_data() {
    let (a, b, other) = (small(1), small(1), small(2));
    let window = |c: &Cluster| collect(c, T0, T0 + 2 * HOUR, MINUTE, 1_000);
    let (wa, wb, wo) = (window(&a), window(&b), window(&other));
    assert_eq!(wa, wb);
    assert_eq!(a.snapshot_batches(T0), b.snapshot_batches(T0));
    assert_ne!(wa[&Table::ContainerUsage], wo[&Table::ContainerUsage]);
    assert_ne!(a.snapshot_batches(T0), other.snapshot_batches(T0));
}

#[test]
fn a_window_is_its_two_halves() {
    let c = small(3);
    let step = 30_000;
    // Around 03:00 UTC (elastic pods renewed) and across a job-heavy hour; a split point
    // that is not on the sample grid.
    let (a, b, z) = (T0 + 2 * HOUR + 7_000, T0 + 3 * HOUR + 12_345, T0 + 5 * HOUR);
    let whole = collect(&c, a, z, step, 777);
    let first = collect(&c, a, b, step, 777);
    let second = collect(&c, b, z, step, 777);
    assert!(
        whole.contains_key(&Table::Pods),
        "no pod changes in the window"
    );
    for (table, batch) in &whole {
        let parts: Vec<RecordBatch> = [first.get(table), second.get(table)]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        let joined = concat_batches(&table.schema(), &parts).unwrap();
        assert_eq!(batch, &joined, "{table}");
    }
    // Windows can also be generated in any order, by independent calls.
    assert_eq!(collect(&c, b, z, step, 777), second);
}

#[test]
fn usage_rows_are_running_containers_times_sample_times() {
    // Without churn: exactly containers × sample times.
    let c = Cluster::new(SimConfig {
        churn: false,
        ..SimConfig::demo()
    });
    let step = 60_000;
    let ticks = 30;
    let rows: usize = c
        .samples(T0, T0 + ticks * step, step, 8_192)
        .filter(|(t, _)| *t == Table::ContainerUsage)
        .map(|(_, b)| b.num_rows())
        .sum();
    assert_eq!(rows, c.container_count() * ticks as usize);

    // With churn: the containers running at each sample time, at least the long-running ones.
    let c = &*DEMO;
    let (from, to) = (T0 + 14 * HOUR, T0 + 15 * HOUR);
    let usage = collect(c, from, to, step, 8_192)
        .remove(&Table::ContainerUsage)
        .unwrap();
    let mut per_tick: BTreeMap<i64, usize> = BTreeMap::new();
    for t in times(&usage) {
        *per_tick.entry(t).or_default() += 1;
    }
    assert_eq!(per_tick.len(), 60);
    for (t, n) in per_tick {
        assert_eq!(n, c.running_containers(t), "at {t}");
        assert!(n >= c.container_count());
        assert!(n <= c.max_container_count());
    }
}

#[test]
fn empty_and_tiny_windows() {
    let c = small(4);
    assert_eq!(c.samples(T0, T0, 1_000, 10).count(), 0);
    assert_eq!(c.samples(T0 + 5, T0, 1_000, 10).count(), 0);
    // A window between two sample times has no samples.
    assert!(
        c.samples(T0 + 1, T0 + 59_000, 60_000, 10)
            .all(|(t, _)| !matches!(t, Table::ContainerUsage | Table::NodeUsage))
    );
}

#[test]
fn demo_cluster_has_the_advertised_shape() {
    let c = &*DEMO;
    assert_eq!(c.nodes().len(), 50);
    let zones: HashSet<&str> = c.nodes().iter().map(|n| n.zone.as_str()).collect();
    assert_eq!(zones.len(), 3);
    let groups: HashSet<&str> = c.nodes().iter().map(|n| n.node_group).collect();
    assert_eq!(groups.len(), 3);
    let capacity: HashSet<&str> = c.nodes().iter().map(|n| n.capacity_type).collect();
    assert_eq!(capacity, HashSet::from(["on_demand", "spot"]));
    assert!(c.nodes().iter().any(|n| n.lightly_used));
    for n in c.nodes() {
        assert!(n.cpu_allocatable_cores < n.cpu_capacity_cores);
        assert!(n.memory_allocatable_bytes < n.memory_capacity_bytes);
    }

    assert_eq!(c.workloads().len(), 600);
    assert!(system_workload_count() > 15);
    assert_eq!(c.namespaces().len(), 20);
    let mut kinds: HashMap<WorkloadKind, usize> = HashMap::new();
    for w in c.workloads() {
        *kinds.entry(w.kind).or_default() += 1;
        assert!((1..=3).contains(&w.containers.len()), "{}", w.name);
        let labels: serde_json::Value = serde_json::from_str(&w.labels).unwrap();
        assert!(labels.is_object());
    }
    for kind in WorkloadKind::ALL {
        assert!(kinds.get(&kind).copied().unwrap_or(0) > 0, "no {kind:?}");
    }
    assert!(kinds[&WorkloadKind::Deployment] > 300);
    let hpas = c.workloads().iter().filter(|w| w.hpa.is_some()).count();
    let pdbs = c
        .workloads()
        .iter()
        .filter(|w| w.pdb_max_unavailable.is_some())
        .count();
    assert!(hpas > 30 && pdbs > 30, "{hpas} HPAs, {pdbs} PDBs");
    let profiles: HashSet<Profile> = c
        .workloads()
        .iter()
        .flat_map(|w| w.containers.iter().map(|c| c.profile))
        .collect();
    assert_eq!(profiles.len(), 7, "{profiles:?}");
    let qos: HashSet<&str> = c.workloads().iter().map(|w| w.qos_class).collect();
    assert_eq!(qos.len(), 3, "{qos:?}");
}

#[test]
fn daemonsets_run_one_pod_per_node() {
    let c = &*DEMO;
    for w in c
        .workloads()
        .iter()
        .filter(|w| w.kind == WorkloadKind::DaemonSet)
    {
        let nodes: Vec<usize> = w.pod_slots().map(|p| c.pods()[p].node).collect();
        assert_eq!(nodes.len(), c.nodes().len(), "{}", w.name);
        assert_eq!(nodes.iter().collect::<HashSet<_>>().len(), c.nodes().len());
    }
    // And the pods snapshot agrees.
    let pods = &c.snapshot_batches(T0)[1].1;
    let (kind, node) = (strings(pods, "workload_kind"), strings(pods, "node"));
    let name = strings(pods, "workload_name");
    let mut per: HashMap<&str, HashSet<&str>> = HashMap::new();
    for i in 0..pods.num_rows() {
        if kind.value(i) == "DaemonSet" {
            per.entry(name.value(i)).or_default().insert(node.value(i));
        }
    }
    assert!(!per.is_empty());
    assert!(per.values().all(|n| n.len() == c.nodes().len()));
}

#[test]
fn pod_ips_are_unique_and_nodes_are_not_overcommitted() {
    let c = &*DEMO;
    let ips: HashSet<&str> = c.pods().iter().map(|p| p.ip.as_str()).collect();
    assert_eq!(ips.len(), c.pods().len());
    for n in c.nodes() {
        assert!(
            n.cpu_requested_cores <= n.cpu_allocatable_cores,
            "{} requests {} of {} cores",
            n.name,
            n.cpu_requested_cores,
            n.cpu_allocatable_cores
        );
        assert!(
            n.memory_requested_bytes <= n.memory_allocatable_bytes,
            "{}",
            n.name
        );
    }
    let light: Vec<f64> = c
        .nodes()
        .iter()
        .filter(|n| n.lightly_used)
        .map(|n| n.cpu_requested_cores / n.cpu_allocatable_cores)
        .collect();
    assert!(light.iter().all(|f| *f < 0.35), "{light:?}");
}

/// Per container series: CPU samples and the request.
fn cpu_by_series(usage: &RecordBatch) -> HashMap<(String, String), (Vec<f64>, Option<f64>)> {
    let (pod, container) = (strings(usage, "pod"), strings(usage, "container"));
    let (cpu, request) = (
        floats(usage, "cpu_cores"),
        floats(usage, "cpu_request_cores"),
    );
    let mut out: HashMap<(String, String), (Vec<f64>, Option<f64>)> = HashMap::new();
    for i in 0..usage.num_rows() {
        let e = out
            .entry((pod.value(i).to_string(), container.value(i).to_string()))
            .or_insert_with(|| (Vec::new(), (!request.is_null(i)).then(|| request.value(i))));
        e.0.push(cpu.value(i));
    }
    out
}

fn p95(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[(v.len() as f64 * 0.95) as usize - 1]
}

#[test]
fn some_workloads_are_over_and_some_under_provisioned() {
    let c = &*DEMO;
    // Two weekdays at 20 minutes.
    let usage = collect(c, T0, T0 + 2 * DAY, 20 * MINUTE, 1 << 16)
        .remove(&Table::ContainerUsage)
        .unwrap();
    let series = cpu_by_series(&usage);
    let (mut over, mut under, mut with_request) = (0, 0, 0);
    for (samples, request) in series.into_values() {
        let (mut samples, Some(request)) = (samples, request) else {
            continue;
        };
        if samples.len() < 100 {
            continue; // job pods and HPA replicas
        }
        with_request += 1;
        let p = p95(&mut samples);
        if p < request / 3.0 {
            over += 1;
        }
        if p >= request {
            under += 1;
        }
    }
    let over_share = over as f64 / with_request as f64;
    assert!(
        over_share > 0.3,
        "{over} of {with_request} over-provisioned"
    );
    assert!(
        under > 30,
        "{under} of {with_request} at or above their request"
    );

    let throttled = floats(&usage, "cpu_throttled_seconds");
    let limit = floats(&usage, "cpu_limit_cores");
    let cpu = floats(&usage, "cpu_cores");
    let mut n_throttled = 0;
    for i in 0..usage.num_rows() {
        let t = throttled.value(i);
        assert!((0.0..=20.0 * 60.0).contains(&t));
        if t > 0.0 {
            n_throttled += 1;
            // Throttled containers run at their limit.
            assert!(!limit.is_null(i) && cpu.value(i) == limit.value(i));
        }
        if !limit.is_null(i) {
            assert!(cpu.value(i) <= limit.value(i));
        }
    }
    assert!(n_throttled > 100, "{n_throttled} throttled samples");
}

#[test]
fn oom_kills_happen_within_two_weeks() {
    let c = &*DEMO;
    // Events do not depend on the step: sample daily to keep the test fast.
    let events = collect(c, T0, T0 + 14 * DAY, DAY, 1 << 16)
        .remove(&Table::Events)
        .expect("events within 14 days");
    let reason = strings(&events, "reason");
    let limit = ints(&events, "memory_limit_bytes");
    let restarts = ints(&events, "restart_count");
    let pod = strings(&events, "pod");
    let t = times(&events);
    let ooms = (0..events.num_rows())
        .filter(|&i| reason.value(i) == "OOMKilled")
        .count();
    let restarted = (0..events.num_rows())
        .filter(|&i| reason.value(i) == "Restarted")
        .count();
    assert!(ooms >= 20, "{ooms} OOM kills");
    assert!(
        restarted.abs_diff(ooms) <= 40,
        "{restarted} restarts, {ooms} kills"
    );
    // Restart counts climb per container, and every OOM kill names its limit.
    let mut last: HashMap<&str, (i64, i64)> = HashMap::new();
    for (i, &ti) in t.iter().enumerate() {
        assert!(!limit.is_null(i) && limit.value(i) > 0);
        if reason.value(i) == "OOMKilled" {
            if let Some((pt, pc)) = last.get(pod.value(i)) {
                assert!(ti > *pt && restarts.value(i) == pc + 1, "{}", pod.value(i));
            }
            last.insert(pod.value(i), (ti, restarts.value(i)));
        }
    }
    assert!(
        last.values().any(|(_, n)| *n > 3),
        "restart counts stay low"
    );
    // Events are in time order.
    assert!(t.windows(2).all(|w| w[0] <= w[1]));
}

#[test]
fn memory_stays_under_the_limit_and_drops_after_an_oom_kill() {
    let c = &*DEMO;
    let mut checked_kills = 0;
    for &si in &c.special {
        let s = &c.series[si as usize];
        let spec = &c.workloads[s.workload as usize].containers[s.container as usize];
        let limit = spec
            .memory_limit_bytes
            .expect("OOM-killed containers have a limit");
        let pod = &c.pods[s.pod as usize];
        let u = &spec.usage;
        // The kills in the first week, by the same functions the event stream uses.
        let kills: Vec<i64> = match spec.profile {
            Profile::MemoryLeak => {
                let phase = leak_phase(s, u.leak_period_ms);
                let (_, _, before) = leak_state(pod.start_ms, phase, u.leak_period_ms, T0);
                (before..)
                    .map(|n| pod.start_ms + phase + n * u.leak_period_ms)
                    .take_while(|&k| k < T0 + 7 * DAY)
                    .filter(|&k| k >= T0)
                    .collect()
            }
            _ => (T0 / HOUR..(T0 + 7 * DAY) / HOUR)
                .filter_map(|h| spike_kill(s, u.oom_per_hour, pod.start_ms, h))
                .collect(),
        };
        let mut ctx = crate::model::TickCtx::default();
        let mut ws_at = |t: i64| {
            c.tick_ctx(t, &mut ctx);
            let p = c.presence(s, &ctx).unwrap();
            c.sample(s, p, &ctx, 30.0).working_set
        };
        for &k in kills.iter().take(3) {
            let before = ws_at(k - 1_000);
            let after = ws_at(k + 30_000);
            assert!(before as f64 >= 0.97 * limit as f64, "{before} of {limit}");
            assert!(before <= limit);
            assert!((after as f64) < 0.8 * limit as f64, "{after} of {limit}");
            checked_kills += 1;
        }
    }
    assert!(checked_kills > 10);

    // And in the sample stream, nothing exceeds its limit.
    let usage = collect(c, T0, T0 + 12 * HOUR, 2 * MINUTE, 1 << 16)
        .remove(&Table::ContainerUsage)
        .unwrap();
    let ws = ints(&usage, "memory_working_set_bytes");
    let rss = ints(&usage, "memory_rss_bytes");
    let limit = ints(&usage, "memory_limit_bytes");
    for i in 0..usage.num_rows() {
        assert!(ws.value(i) > 0 && rss.value(i) <= ws.value(i));
        if !limit.is_null(i) {
            assert!(ws.value(i) <= limit.value(i));
        }
    }
}

#[test]
fn hpa_replicas_follow_the_daily_load() {
    let c = &*DEMO;
    let night = T0 + 3 * HOUR;
    let afternoon = T0 + 15 * HOUR;
    let mut scaled = 0;
    for (i, w) in c.workloads().iter().enumerate() {
        let Some(h) = w.hpa else { continue };
        let (n, a) = (c.replicas_at(i, night), c.replicas_at(i, afternoon));
        assert!((h.min_replicas..=h.max_replicas).contains(&n));
        assert!((h.min_replicas..=h.max_replicas).contains(&a));
        if a > n {
            scaled += 1;
        }
    }
    assert!(scaled > 10, "{scaled} HPAs scaled out in the afternoon");
    assert!(c.running_containers(afternoon) > c.running_containers(night));
}

#[test]
fn job_pods_come_and_go() {
    let c = &*DEMO;
    let changes = collect(c, T0, T0 + DAY, HOUR, 1 << 16)
        .remove(&Table::Pods)
        .unwrap();
    let (kind, phase) = (
        strings(&changes, "workload_kind"),
        strings(&changes, "phase"),
    );
    let deleted: &BooleanArray = changes.column_by_name("deleted").unwrap().as_boolean();
    let name = strings(&changes, "name");
    let mut lifecycle: HashMap<&str, Vec<(&str, bool)>> = HashMap::new();
    for i in 0..changes.num_rows() {
        if kind.value(i) == "CronJob" {
            lifecycle
                .entry(name.value(i))
                .or_default()
                .push((phase.value(i), deleted.value(i)));
        }
    }
    let complete = lifecycle
        .values()
        .filter(|l| {
            l.as_slice()
                == [
                    ("Running", false),
                    ("Succeeded", false),
                    ("Succeeded", true),
                ]
        })
        .count();
    assert!(complete > 50, "{complete} complete CronJob pod lifecycles");
    // HPA replicas come and go too.
    assert!((0..changes.num_rows()).any(|i| kind.value(i) == "Deployment" && deleted.value(i)));

    // A CronJob pod's container shows up in usage only while it runs.
    let usage = collect(c, T0, T0 + 3 * HOUR, MINUTE, 1 << 16)
        .remove(&Table::ContainerUsage)
        .unwrap();
    let kinds = strings(&usage, "workload_kind");
    let per_minute: BTreeMap<i64, usize> =
        times(&usage)
            .into_iter()
            .enumerate()
            .fold(BTreeMap::new(), |mut m, (i, t)| {
                if kinds.value(i) == "CronJob" {
                    *m.entry(t).or_default() += 1;
                }
                m
            });
    let counts: HashSet<usize> = per_minute.values().copied().collect();
    assert!(
        counts.len() > 3,
        "CronJob containers per minute: {counts:?}"
    );

    // The snapshot lists job pods that are running or have succeeded recently.
    let pods = &c.snapshot_batches(T0 + 10 * HOUR)[1].1;
    let phases: HashSet<&str> = (0..pods.num_rows())
        .filter(|&i| strings(pods, "workload_kind").value(i) == "CronJob")
        .map(|i| strings(pods, "phase").value(i))
        .collect();
    assert!(phases.contains("Succeeded"), "{phases:?}");
}

#[test]
fn network_covers_every_kind_of_destination() {
    let c = &*DEMO;
    let kinds: HashSet<FlowKind> = c.flow_kinds().collect();
    for k in [
        FlowKind::SameZone,
        FlowKind::CrossZone,
        FlowKind::Service,
        FlowKind::ClusterDns,
        FlowKind::Internet,
        FlowKind::CloudApi,
        FlowKind::PrivateLink,
        FlowKind::Database,
        FlowKind::LoadBalancer,
        FlowKind::ControlPlane,
        FlowKind::Imds,
        FlowKind::UpstreamDns,
    ] {
        assert!(kinds.contains(&k), "no {k:?} flow");
    }
    let window = collect(c, T0 + 12 * HOUR, T0 + 13 * HOUR, MINUTE, 1 << 16);
    let flows = &window[&Table::NetworkFlows];
    let dst = strings(flows, "dst_ip");
    let domain = strings(flows, "dst_domain");
    let window_s = ints(flows, "window_seconds");
    assert!((0..flows.num_rows()).all(|i| window_s.value(i) == 60));
    assert!((0..flows.num_rows()).any(|i| dst.value(i).starts_with("10.96.")));
    assert!((0..flows.num_rows()).any(|i| dst.value(i) == "169.254.169.254"));
    assert!(
        (0..flows.num_rows()).any(|i| dst.value(i).starts_with("203.0.113.") && !domain.is_null(i))
    );
    let tx = ints(flows, "tx_bytes");
    let packets = ints(flows, "tx_packets");
    assert!((0..flows.num_rows()).all(|i| tx.value(i) > 0 && packets.value(i) > 0));

    let dns = &window[&Table::DnsLookups];
    let qtype = strings(dns, "query_type");
    let cname = strings(dns, "cname_chain");
    let answers = strings(dns, "answers");
    let types: HashSet<&str> = (0..dns.num_rows()).map(|i| qtype.value(i)).collect();
    assert_eq!(types, HashSet::from(["A", "AAAA"]));
    assert!((0..dns.num_rows()).any(|i| !cname.is_null(i)));
    assert!(
        (0..dns.num_rows())
            .any(|i| qtype.value(i) == "AAAA" && answers.value(i).contains("2001:db8:"))
    );
    // Every looked-up name with an answer is a flow destination name.
    let names: HashSet<&str> = (0..flows.num_rows())
        .filter(|&i| !domain.is_null(i))
        .map(|i| domain.value(i))
        .collect();
    let queried = strings(dns, "query_name");
    let known = (0..dns.num_rows())
        .filter(|&i| names.contains(queried.value(i)))
        .count();
    assert!(known * 10 > dns.num_rows() * 9);
}

#[test]
fn traffic_and_usage_follow_the_day() {
    let c = &*DEMO;
    let total = |t: i64| -> (f64, i64) {
        let w = collect(c, t, t + 10 * MINUTE, 5 * MINUTE, 1 << 16);
        let cpu = floats(&w[&Table::ContainerUsage], "cpu_cores");
        let tx = ints(&w[&Table::NetworkFlows], "tx_bytes");
        (cpu.values().iter().sum(), tx.values().iter().sum())
    };
    let (night_cpu, night_tx) = total(T0 + 3 * HOUR);
    let (day_cpu, day_tx) = total(T0 + 15 * HOUR);
    assert!(day_cpu > 1.3 * night_cpu, "{day_cpu} vs {night_cpu}");
    assert!(
        day_tx as f64 > 1.3 * night_tx as f64,
        "{day_tx} vs {night_tx}"
    );
    // Weekends are quieter (T0 + 5 days is a Saturday).
    let (sat_cpu, _) = total(T0 + 5 * DAY + 15 * HOUR);
    assert!(sat_cpu < day_cpu, "{sat_cpu} vs {day_cpu}");
}

#[test]
fn node_usage_is_the_sum_of_its_containers_plus_overhead() {
    let c = &*DEMO;
    let w = collect(c, T0 + 9 * HOUR, T0 + 9 * HOUR + 1, 60_000, 1 << 16);
    let (usage, nodes) = (&w[&Table::ContainerUsage], &w[&Table::NodeUsage]);
    let mut sums: HashMap<&str, f64> = HashMap::new();
    let (node, cpu) = (strings(usage, "node"), floats(usage, "cpu_cores"));
    for i in 0..usage.num_rows() {
        *sums.entry(node.value(i)).or_default() += cpu.value(i);
    }
    let (name, ncpu) = (strings(nodes, "node"), floats(nodes, "cpu_cores"));
    let cap = floats(nodes, "cpu_capacity_cores");
    let mut light_util = Vec::new();
    for i in 0..nodes.num_rows() {
        let overhead = ncpu.value(i) - sums[name.value(i)];
        assert!(
            overhead > 0.0 && overhead < 0.5,
            "{}: {overhead}",
            name.value(i)
        );
        let n = c.nodes().iter().find(|n| n.name == name.value(i)).unwrap();
        assert_eq!(n.cpu_capacity_cores, cap.value(i));
        if n.lightly_used {
            light_util.push(ncpu.value(i) / cap.value(i));
        }
    }
    assert_eq!(nodes.num_rows(), 50);
    assert!(light_util.iter().all(|u| *u < 0.2), "{light_util:?}");
    // The snapshot's node rows carry the same usage as a sample at the same time.
    let snap = &c.snapshot_batches(T0 + 9 * HOUR)[2].1;
    assert_eq!(floats(snap, "cpu_cores"), ncpu);
    assert_eq!(
        strings(snap, "instance_type"),
        strings(nodes, "instance_type")
    );
}

#[test]
fn workloads_snapshot_has_one_row_per_container() {
    let c = &*DEMO;
    let snap = c.snapshot_batches(T0);
    let workloads = &snap[0].1;
    let expected: usize = c.workloads().iter().map(|w| w.containers.len()).sum();
    assert_eq!(workloads.num_rows(), expected);
    let deleted: &BooleanArray = workloads.column_by_name("deleted").unwrap().as_boolean();
    assert_eq!(deleted.true_count(), 0);
    let target = floats(workloads, "hpa_target_cpu_utilization");
    assert!((0..target.len()).any(|i| !target.is_null(i) && target.value(i) < 1.0));
    let pods = &snap[1].1;
    let running = (0..pods.num_rows())
        .filter(|&i| strings(pods, "phase").value(i) == "Running")
        .count();
    let static_pods = c
        .pods()
        .iter()
        .filter(|p| p.kind == PodKind::Static)
        .count();
    assert!(running >= static_pods);
    let ips: HashSet<&str> = (0..pods.num_rows())
        .map(|i| strings(pods, "ip").value(i))
        .collect();
    assert!(ips.iter().all(|ip| ip.starts_with("10.")));
}

#[test]
fn benchmark_config_hits_its_container_target() {
    let c = Cluster::new(SimConfig::benchmark(30_000));
    let n = c.container_count();
    assert!((30_000..30_100).contains(&n), "{n}");
    assert!(c.nodes().len() >= 500);
    assert!(
        c.nodes()
            .iter()
            .all(|n| n.cpu_requested_cores <= n.cpu_allocatable_cores)
    );
}

#[test]
#[ignore = "prints the demo and benchmark clusters' numbers"]
fn print_demo_summary() {
    summarize(&DEMO, true);
    summarize(&Cluster::new(SimConfig::benchmark(30_000)), false);
}

fn summarize(c: &Cluster, rows_per_day: bool) {
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for w in c.workloads() {
        *kinds.entry(w.kind.as_str()).or_default() += 1;
    }
    let mut profiles: BTreeMap<String, usize> = BTreeMap::new();
    for w in c.workloads() {
        *profiles
            .entry(format!("{:?}", w.containers[0].profile))
            .or_default() += 1;
    }
    let requested: f64 = c.nodes().iter().map(|n| n.cpu_requested_cores).sum();
    let allocatable: f64 = c.nodes().iter().map(|n| n.cpu_allocatable_cores).sum();
    let mem_req: i64 = c.nodes().iter().map(|n| n.memory_requested_bytes).sum();
    let mem_alloc: i64 = c.nodes().iter().map(|n| n.memory_allocatable_bytes).sum();
    println!(
        "nodes {} (light {}), workloads {kinds:?}, profiles {profiles:?}",
        c.nodes().len(),
        c.nodes().iter().filter(|n| n.lightly_used).count()
    );
    println!(
        "pods {} (static {}), containers {} (max {}), flows {}, dns series {}",
        c.pods().len(),
        c.pods()
            .iter()
            .filter(|p| p.kind == PodKind::Static)
            .count(),
        c.container_count(),
        c.max_container_count(),
        c.flow_count(),
        c.dns.len()
    );
    println!(
        "cpu requested {requested:.0} of {allocatable:.0} allocatable; memory {} of {} GiB",
        mem_req >> 30,
        mem_alloc >> 30
    );
    let light: Vec<String> = c
        .nodes()
        .iter()
        .filter(|n| n.lightly_used)
        .map(|n| format!("{:.2}", n.cpu_requested_cores / n.cpu_allocatable_cores))
        .collect();
    println!("lightly used nodes' requested share: {}", light.join(" "));
    let kinds = c.flow_kinds().fold(BTreeMap::new(), |mut m, k| {
        *m.entry(format!("{k:?}")).or_insert(0) += 1;
        m
    });
    println!("flow kinds {kinds:?}");
    if rows_per_day {
        let w = collect(c, T0, T0 + DAY, 5 * MINUTE, 1 << 20);
        for (t, b) in &w {
            println!("{t}: {} rows per day at 5 min", b.num_rows());
        }
    }
}
