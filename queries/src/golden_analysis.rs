//! Golden tests of the analysis queries, each on a hand-made fixture whose right answer can be
//! checked by hand. Rows are written as JSON lines (absent columns are NULL) through the real
//! store, so the rollups are derived exactly as in production.
//!
//! Bucket ends used below (the rollup answers the end of the 5 % bucket holding a quantile):
//! CPU 0.001 → 0.01, 0.05 → 0.05526, 0.1 → 0.11027, 0.2 → 0.21579, 0.8 → 0.80064;
//! memory 100 MiB → 105.16 MiB, 200 MiB → 205.79 MiB, 300 MiB → 315.34 MiB.

use arrow::array::RecordBatch;
use chrono::{DateTime, Utc};
use tally_wire::Table;

use crate::analysis::{
    CONSOLIDATION_PODS, COST_ALLOCATION, INSTANCE_PRICES, LATEST_RECOMMENDATIONS, NODE_PRICES,
    OPERATOR_NODE_GROUPS, REPLICAS, RIGHTSIZING,
};
use crate::golden::{check, engine_with};
use crate::{Param, Query};

const MIB: i64 = 1 << 20;
const GIB: i64 = 1 << 30;

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

/// A batch of `table` from JSON lines; absent columns are NULL.
fn rows(table: Table, lines: &[String]) -> (Table, RecordBatch) {
    let mut decoder = arrow::json::ReaderBuilder::new(table.schema())
        .build_decoder()
        .unwrap();
    decoder.decode(lines.join("\n").as_bytes()).unwrap();
    let batch = decoder
        .flush()
        .unwrap_or_else(|e| panic!("{table}: {e}"))
        .unwrap();
    (table, batch)
}

/// A container_usage sample.
#[allow(clippy::too_many_arguments)]
fn sample(
    time: DateTime<Utc>,
    ns: &str,
    pod: &str,
    container: &str,
    node: &str,
    kind: &str,
    workload: &str,
    cpu: f64,
    memory: i64,
) -> String {
    format!(
        r#"{{"time":"{}","namespace":"{ns}","pod":"{pod}","container":"{container}","node":"{node}","workload_kind":"{kind}","workload_name":"{workload}","cpu_cores":{cpu},"memory_working_set_bytes":{memory}}}"#,
        time.to_rfc3339()
    )
}

/// Samples every `every` minutes in [from, from + hours): `f(k)` gives (cpu, memory) of the
/// k-th.
#[allow(clippy::too_many_arguments)]
fn series(
    out: &mut Vec<String>,
    from: &str,
    hours: i64,
    every: i64,
    (ns, pod, container, kind, workload): (&str, &str, &str, &str, &str),
    f: impl Fn(i64) -> (f64, i64),
) {
    let start = at(from);
    for k in 0..hours * 60 / every {
        let (cpu, memory) = f(k);
        out.push(sample(
            start + chrono::Duration::minutes(k * every),
            ns,
            pod,
            container,
            "node-a",
            kind,
            workload,
            cpu,
            memory,
        ));
    }
}

/// The rightsizing fixture: window 2026-01-05 00:00 to 04:00 UTC, full confidence at 8 hours,
/// held back below 0.25, unit prices 0.03 $/core-hour and 0.004 $/GiB-hour, CPU limits keep
/// their ratio, memory limit = request.
///
/// - shop/web/app (Deployment, 2 pods, request 1 core / 1 GiB, limits 2 cores / 1 GiB): every
///   10 min, 0.2 cores and 200 MiB, except each pod's first sample (its startup) at 0.8 cores
///   and 300 MiB. 2 of 48 samples (4 %) are startup, so p50 = p95 = 0.21579 (0.2's bucket)
///   and p99 = 0.80064: CPU request 0.216. The startup peak is not averaged away: memory =
///   300 MiB × 1.15 = 345 MiB (limit too); CPU limit = max(0.216 × 2, min(max 0.8, 2)) =
///   0.8. 4 hours of history: confidence 0.5, "not for automatic apply". Savings:
///   730 × 2 pods × ((1 − 0.216) × 0.03 + (1024 − 345) / 1024 × 0.004) = 38.21.
/// - shop/leaky/app (1 pod, request 0.1 / 256 MiB, limit 256 MiB): 0.05 cores, 250 MiB, and
///   256 MiB at 01:00 when it is OOM-killed (an OOMKilled event at the 256 MiB limit and a
///   Restarted one): memory = max(256 + 100, 256 × 1.2) = 356 MiB, CPU 0.056.
/// - shop/report/report (CronJob, request 1 core / 512 MiB, no limits): one run of 30 min:
///   one hour of history, confidence 0.125 < 0.25: held back, current values kept.
/// - shop/api/app (Deployment with an HPA at 50 %, request 0.5 / 256 MiB): 0.1 cores and
///   100 MiB: CPU = 0.11027 / 0.5 → 0.221 (at that usage the HPA sits at its target), memory
///   100 × 1.15 = 115 MiB.
/// - tools/debug/sh (BestEffort: no requests): 0.001 cores, 10 MiB: the floors, 0.01 cores
///   and 64 MiB; the savings are negative (requests cost money).
fn rightsizing_fixture() -> Vec<(Table, RecordBatch)> {
    let mut usage = Vec::new();
    for pod in ["web-a", "web-b"] {
        series(
            &mut usage,
            "2026-01-05T00:00:00Z",
            4,
            10,
            ("shop", pod, "app", "Deployment", "web"),
            |k| {
                if k == 0 {
                    (0.8, 300 * MIB)
                } else {
                    (0.2, 200 * MIB)
                }
            },
        );
    }
    series(
        &mut usage,
        "2026-01-05T00:00:00Z",
        4,
        10,
        ("shop", "leaky-a", "app", "Deployment", "leaky"),
        |k| (0.05, if k == 6 { 256 * MIB } else { 250 * MIB }),
    );
    for minute in [0, 10, 20] {
        usage.push(sample(
            at("2026-01-05T02:00:00Z") + chrono::Duration::minutes(minute),
            "shop",
            "report-29000-x",
            "report",
            "node-a",
            "CronJob",
            "report",
            0.5,
            100 * MIB,
        ));
    }
    series(
        &mut usage,
        "2026-01-05T00:00:00Z",
        4,
        10,
        ("shop", "api-a", "app", "Deployment", "api"),
        |_| (0.1, 100 * MIB),
    );
    series(
        &mut usage,
        "2026-01-05T00:00:00Z",
        4,
        10,
        ("tools", "debug-a", "sh", "Deployment", "debug"),
        |_| (0.001, 10 * MIB),
    );
    let spec = |ns: &str, kind: &str, name: &str, container: &str, extra: &str| {
        format!(
            r#"{{"time":"2026-01-01T00:00:00Z","namespace":"{ns}","kind":"{kind}","name":"{name}","container":"{container}","deleted":false{extra}}}"#
        )
    };
    let workloads = vec![
        spec(
            "shop",
            "Deployment",
            "web",
            "app",
            &format!(
                r#","replicas":2,"cpu_request_cores":1.0,"cpu_limit_cores":2.0,"memory_request_bytes":{GIB},"memory_limit_bytes":{GIB}"#
            ),
        ),
        spec(
            "shop",
            "Deployment",
            "leaky",
            "app",
            &format!(
                r#","replicas":1,"cpu_request_cores":0.1,"memory_request_bytes":{m},"memory_limit_bytes":{m}"#,
                m = 256 * MIB
            ),
        ),
        spec(
            "shop",
            "CronJob",
            "report",
            "report",
            &format!(
                r#","replicas":1,"cpu_request_cores":1.0,"memory_request_bytes":{}"#,
                512 * MIB
            ),
        ),
        spec(
            "shop",
            "Deployment",
            "api",
            "app",
            &format!(
                r#","replicas":1,"cpu_request_cores":0.5,"memory_request_bytes":{},"hpa_min_replicas":1,"hpa_max_replicas":4,"hpa_target_cpu_utilization":0.5"#,
                256 * MIB
            ),
        ),
        spec("tools", "Deployment", "debug", "sh", r#","replicas":1"#),
    ];
    let event = |time: &str, reason: &str, extra: &str| {
        format!(
            r#"{{"time":"{time}","namespace":"shop","pod":"leaky-a","container":"app","workload_kind":"Deployment","workload_name":"leaky","reason":"{reason}"{extra}}}"#
        )
    };
    let events = vec![
        event(
            "2026-01-05T01:00:00Z",
            "OOMKilled",
            &format!(r#","memory_limit_bytes":{}"#, 256 * MIB),
        ),
        event("2026-01-05T01:00:10Z", "Restarted", r#","restart_count":1"#),
        // Outside the window: not counted.
        event(
            "2026-01-04T01:00:00Z",
            "OOMKilled",
            &format!(r#","memory_limit_bytes":{}"#, 4096 * MIB),
        ),
    ];
    vec![
        rows(Table::ContainerUsage, &usage),
        rows(Table::Workloads, &workloads),
        rows(Table::Events, &events),
    ]
}

pub(crate) fn rightsizing_params() -> Vec<(&'static str, Param)> {
    vec![
        ("window_start", Param::Timestamp(at("2026-01-05T00:00:00Z"))),
        ("window_end", Param::Timestamp(at("2026-01-05T04:00:00Z"))),
        ("cpu_quantile", Param::Float(0.95)),
        ("memory_margin", Param::Float(0.15)),
        ("min_cpu_cores", Param::Float(0.01)),
        ("min_memory_bytes", Param::Int(64 * MIB)),
        ("oom_bump_bytes", Param::Int(100 * MIB)),
        ("oom_bump_factor", Param::Float(1.2)),
        ("confident_hours", Param::Float(8.0)),
        ("hold_below_confidence", Param::Float(0.25)),
        ("cpu_limit_policy", Param::Text("keep_ratio".into())),
        ("memory_limit_policy", Param::Text("equal_request".into())),
        ("cpu_core_hour_usd", Param::Float(0.03)),
        ("memory_gib_hour_usd", Param::Float(0.004)),
    ]
}

#[tokio::test]
async fn rightsizing_matches_its_golden_result() {
    let (_dir, engine) = engine_with(rightsizing_fixture()).await;
    check(
        &[RIGHTSIZING],
        &engine,
        &rightsizing_params(),
        "queries/src/golden_analysis.rs (rightsizing_fixture)",
    )
    .await;
}

/// The replicas fixture: window 2026-01-05 00:00 to 04:00, run `run-1`, headroom 20 %, a new
/// HPA at 70 % when the busiest hour needs twice the pods of the quietest, 0.03 $/core-hour,
/// 0.004 $/GiB-hour. Each pod samples every 30 minutes at its hour's value.
///
/// - shop/api: HPA min 2, max 6, target 50 %; 2 pods at 0.1, 0.4, 0.2, 0.1 cores in hours
///   0–3: demand 0.2, 0.8, 0.4, 0.2. Recommended pod request 0.4 cores, so a pod carries
///   0.2 at the target: min = max(2, 0.2 / 0.2) = 2, max = ⌈0.8 × 1.2 / 0.2⌉ = 5.
/// - shop/web: 4 fixed replicas, PDB maxUnavailable 1; 4 pods at 0.1 cores: demand 0.4 every
///   hour. Pod request 0.15 + 0.05 = 0.2 cores and 256 MiB: ⌈0.4 × 1.2 / 0.2⌉ = 3 replicas
///   (at least 2 for the PDB). Savings 730 × (0.2 × 0.03 + 0.25 × 0.004) = 5.11.
/// - shop/burst: 4 fixed replicas; 4 pods at 0.025, 0.25, 0.025, 0.025: demand 0.1, 1.0,
///   0.1, 0.1. Pod request 0.2, 128 MiB; at 70 %: min = 2 (at least 2 as it runs 2 or more),
///   max = ⌈1.2 / 0.14⌉ = 9 ≥ 2 × 2: an HPA is suggested. It would run 2.32 pods on average
///   (mean 0.325 / 0.14): savings 730 × 0.0065 × (4 − 2.32) = 7.96.
/// - shop/quiet: 1 replica, 0.01 cores, pod request 0.1: 1 replica is right, no row.
fn replicas_fixture() -> Vec<(Table, RecordBatch)> {
    let mut usage = Vec::new();
    let hourly = |usage: &mut Vec<String>, pod: &str, workload: &str, values: [f64; 4]| {
        series(
            usage,
            "2026-01-05T00:00:00Z",
            4,
            30,
            ("shop", pod, "app", "Deployment", workload),
            |k| (values[(k / 2) as usize], 100 * MIB),
        );
    };
    for pod in ["api-a", "api-b"] {
        hourly(&mut usage, pod, "api", [0.1, 0.4, 0.2, 0.1]);
    }
    for pod in ["web-a", "web-b", "web-c", "web-d"] {
        hourly(&mut usage, pod, "web", [0.1; 4]);
    }
    for pod in ["burst-a", "burst-b", "burst-c", "burst-d"] {
        hourly(&mut usage, pod, "burst", [0.025, 0.25, 0.025, 0.025]);
    }
    hourly(&mut usage, "quiet-a", "quiet", [0.01; 4]);
    let spec = |name: &str, container: &str, extra: &str| {
        format!(
            r#"{{"time":"2026-01-01T00:00:00Z","namespace":"shop","kind":"Deployment","name":"{name}","container":"{container}","deleted":false{extra}}}"#
        )
    };
    let workloads = vec![
        spec(
            "api",
            "app",
            r#","replicas":3,"hpa_min_replicas":2,"hpa_max_replicas":6,"hpa_target_cpu_utilization":0.5"#,
        ),
        spec("web", "app", r#","replicas":4,"pdb_max_unavailable":1"#),
        spec("web", "envoy", r#","replicas":4,"pdb_max_unavailable":1"#),
        spec("burst", "app", r#","replicas":4"#),
        spec("quiet", "app", r#","replicas":1"#),
    ];
    let rec = |run: &str, name: &str, container: &str, cpu: f64, memory: i64| {
        let time = if run == "run-0" { "03:00" } else { "04:00" };
        format!(
            r#"{{"time":"2026-01-05T{time}:00Z","run_id":"{run}","kind":"rightsizing","namespace":"shop","target_kind":"Deployment","target_name":"{name}","container":"{container}","recommended_cpu_request_cores":{cpu},"recommended_memory_request_bytes":{memory},"why":"fixture"}}"#
        )
    };
    let recommendations = vec![
        rec("run-1", "api", "app", 0.4, 512 * MIB),
        rec("run-1", "web", "app", 0.15, 192 * MIB),
        rec("run-1", "web", "envoy", 0.05, 64 * MIB),
        rec("run-1", "burst", "app", 0.2, 128 * MIB),
        rec("run-1", "quiet", "app", 0.1, 64 * MIB),
        // Another run's rows are not read.
        rec("run-0", "web", "app", 5.0, 192 * MIB),
    ];
    vec![
        rows(Table::ContainerUsage, &usage),
        rows(Table::Workloads, &workloads),
        rows(Table::Recommendations, &recommendations),
    ]
}

#[tokio::test]
async fn replicas_match_their_golden_result() {
    let (_dir, engine) = engine_with(replicas_fixture()).await;
    let params = [
        ("window_start", Param::Timestamp(at("2026-01-05T00:00:00Z"))),
        ("window_end", Param::Timestamp(at("2026-01-05T04:00:00Z"))),
        ("run_id", Param::Text("run-1".into())),
        ("confident_hours", Param::Float(8.0)),
        ("headroom", Param::Float(0.2)),
        ("hpa_target", Param::Float(0.7)),
        ("swing_for_hpa", Param::Float(2.0)),
        ("cpu_core_hour_usd", Param::Float(0.03)),
        ("memory_gib_hour_usd", Param::Float(0.004)),
    ];
    check(
        &[REPLICAS],
        &engine,
        &params,
        "queries/src/golden_analysis.rs (replicas_fixture)",
    )
    .await;
    // The newest run (run-1, written at 04:00; run-0 at 03:00), rows of every kind.
    check(
        &[LATEST_RECOMMENDATIONS],
        &engine,
        &[
            ("run_id", Param::Text(String::new())),
            ("kind", Param::Text(String::new())),
        ],
        "queries/src/golden_analysis.rs (replicas_fixture)",
    )
    .await;
}

/// The cluster fixture, window 2026-01-05 10:00 to 12:00 UTC; default unit prices 0.031611
/// $/core-hour and 0.004237 $/GiB-hour (OpenCost's).
///
/// Nodes: n1 (m5.xlarge on demand in us-east-1: 4 cores, 16 GiB) reports at 10:00, 10:30,
/// 11:00 and 11:30; n2 (x9.huge, 2 cores, 8 GiB, no price anywhere) at 10:00 and 10:30.
/// Prices: the catalog says 0.192 $/h for m5.xlarge, the user says 0.20 (user wins), a
/// spot price (unused) and a c5.xlarge price from February (not yet in force).
/// n1 costs 0.20 $/h, split in the proportion 4 × 0.031611 : 16 × 0.004237 (0.126444 :
/// 0.067792): 0.0325490 $/core-hour and 0.0043627 $/GiB-hour. n2 costs its default,
/// 2 × 0.031611 + 8 × 0.004237 = 0.097118 $/h.
///
/// Containers: shop/web-1/app on n1 (Deployment web, request 1 core / 1 GiB, team shop)
/// uses 0.5 cores and 2 GiB for both hours: charged 1 core and 2 GiB × 2 h =
/// 2 × 0.032549 + 4 × 0.0043627 = 0.082549. shop/web-2/app on n2 uses 0.25 cores and
/// 512 MiB for hour 10: 1 core and 1 GiB × 1 h at n2's prices (the defaults) = 0.035848.
/// ops/job-1/run on n1 (Job nightly, no requests, team ops) ran at 10:00 only: 1 sample of
/// n1's 2 in that hour = 0.5 h × (2 cores, 1 GiB) = 0.5 × (0.065098 + 0.0043627) = 0.034730.
/// By namespace and team: shop/shop 0.118397, ops/ops 0.034730; idle = 0.4 − 0.082549 −
/// 0.034730 (n1) + 0.097118 − 0.035848 (n2) = 0.343991.
///
/// Pods (newest row in the window): shop/web-1 on n1 (requests from its workload's spec,
/// 1 core / 1 GiB, PDB maxUnavailable 1); data/db-0 on n2 (its own requests, a node
/// selector, a toleration and local storage); ops/job-1 Succeeded and shop/web-old deleted:
/// both gone.
fn cluster_fixture() -> Vec<(Table, RecordBatch)> {
    let node = |time: &str, name: &str, it: &str, cpu: f64, mem: i64, taints: &str| {
        format!(
            r#"{{"time":"{time}","node":"{name}","node_group":"general","zone":"us-east-1a","region":"us-east-1","instance_type":"{it}","capacity_type":"on_demand","cpu_capacity_cores":{cpu},"memory_capacity_bytes":{mem},"cpu_allocatable_cores":{a},"memory_allocatable_bytes":{m},"labels":"{{\"kubernetes.io/hostname\":\"{name}\"}}","taints":"{taints}"}}"#,
            a = cpu - 0.08,
            m = mem - GIB
        )
    };
    let mut nodes = Vec::new();
    for t in ["10:00", "10:30", "11:00", "11:30"] {
        nodes.push(node(
            &format!("2026-01-05T{t}:00Z"),
            "n1",
            "m5.xlarge",
            4.0,
            16 * GIB,
            "[]",
        ));
    }
    for t in ["10:00", "10:30"] {
        nodes.push(node(
            &format!("2026-01-05T{t}:00Z"),
            "n2",
            "x9.huge",
            2.0,
            8 * GIB,
            r#"[{\"key\":\"dedicated\",\"value\":\"gpu\",\"effect\":\"NoSchedule\"}]"#,
        ));
    }
    let price = |time: &str, it: &str, capacity: &str, usd: f64, source: &str| {
        format!(
            r#"{{"time":"{time}","provider":"aws","region":"us-east-1","instance_type":"{it}","capacity_type":"{capacity}","hourly_usd":{usd},"cpu_cores":4.0,"memory_bytes":{},"source":"{source}"}}"#,
            16 * GIB
        )
    };
    let prices = vec![
        price(
            "2026-01-01T00:00:00Z",
            "m5.xlarge",
            "on_demand",
            0.192,
            "catalog",
        ),
        price(
            "2026-01-02T00:00:00Z",
            "m5.xlarge",
            "on_demand",
            0.2,
            "user",
        ),
        price("2026-01-01T00:00:00Z", "m5.xlarge", "spot", 0.08, "catalog"),
        price(
            "2026-02-01T00:00:00Z",
            "c5.xlarge",
            "on_demand",
            0.17,
            "catalog",
        ),
    ];
    let usage = vec![
        sample(
            at("2026-01-05T10:00:00Z"),
            "shop",
            "web-1",
            "app",
            "n1",
            "Deployment",
            "web",
            0.5,
            2 * GIB,
        ),
        sample(
            at("2026-01-05T10:30:00Z"),
            "shop",
            "web-1",
            "app",
            "n1",
            "Deployment",
            "web",
            0.5,
            2 * GIB,
        ),
        sample(
            at("2026-01-05T11:00:00Z"),
            "shop",
            "web-1",
            "app",
            "n1",
            "Deployment",
            "web",
            0.5,
            2 * GIB,
        ),
        sample(
            at("2026-01-05T11:30:00Z"),
            "shop",
            "web-1",
            "app",
            "n1",
            "Deployment",
            "web",
            0.5,
            2 * GIB,
        ),
        sample(
            at("2026-01-05T10:00:00Z"),
            "shop",
            "web-2",
            "app",
            "n2",
            "Deployment",
            "web",
            0.25,
            512 * MIB,
        ),
        sample(
            at("2026-01-05T10:30:00Z"),
            "shop",
            "web-2",
            "app",
            "n2",
            "Deployment",
            "web",
            0.25,
            512 * MIB,
        ),
        sample(
            at("2026-01-05T10:00:00Z"),
            "ops",
            "job-1",
            "run",
            "n1",
            "Job",
            "nightly",
            2.0,
            GIB,
        ),
    ];
    let workloads = vec![
        format!(
            r#"{{"time":"2026-01-01T00:00:00Z","namespace":"shop","kind":"Deployment","name":"web","container":"app","replicas":2,"cpu_request_cores":1.0,"memory_request_bytes":{GIB},"pdb_max_unavailable":1,"labels":"{{\"app\":\"web\",\"team\":\"shop\"}}","deleted":false}}"#
        ),
        r#"{"time":"2026-01-01T00:00:00Z","namespace":"ops","kind":"Job","name":"nightly","container":"run","replicas":1,"labels":"{\"team\":\"ops\"}","deleted":false}"#.to_string(),
    ];
    let pod = |time: &str,
               ns: &str,
               name: &str,
               node: &str,
               phase: &str,
               kind: &str,
               workload: &str,
               deleted: bool,
               extra: &str| {
        format!(
            r#"{{"time":"{time}","namespace":"{ns}","name":"{name}","node":"{node}","phase":"{phase}","workload_kind":"{kind}","workload_name":"{workload}","deleted":{deleted}{extra}}}"#
        )
    };
    let pods = vec![
        pod(
            "2026-01-05T10:00:00Z",
            "shop",
            "web-1",
            "n1",
            "Running",
            "Deployment",
            "web",
            false,
            "",
        ),
        pod(
            "2026-01-05T10:00:00Z",
            "ops",
            "job-1",
            "n1",
            "Running",
            "Job",
            "nightly",
            false,
            "",
        ),
        pod(
            "2026-01-05T10:40:00Z",
            "ops",
            "job-1",
            "n1",
            "Succeeded",
            "Job",
            "nightly",
            false,
            "",
        ),
        pod(
            "2026-01-05T10:00:00Z",
            "shop",
            "web-old",
            "n1",
            "Running",
            "Deployment",
            "web",
            false,
            "",
        ),
        pod(
            "2026-01-05T10:20:00Z",
            "shop",
            "web-old",
            "n1",
            "Running",
            "Deployment",
            "web",
            true,
            "",
        ),
        pod(
            "2026-01-05T10:00:00Z",
            "data",
            "db-0",
            "n2",
            "Running",
            "StatefulSet",
            "db",
            false,
            &format!(
                r#","cpu_request_cores":0.5,"memory_request_bytes":{},"scheduling":"{{\"node_selector\":{{\"disk\":\"ssd\"}},\"tolerations\":[{{\"key\":\"dedicated\",\"operator\":\"Equal\",\"value\":\"gpu\",\"effect\":\"NoSchedule\"}}],\"required_node_affinity\":[],\"local_storage\":true}}""#,
                2 * GIB
            ),
        ),
    ];
    // Traffic, priced at AWS's rates (the provider of n1's m5.xlarge in the catalog):
    // web-1 sends 2 GiB to the internet (0.09 $/GiB out, inbound free): 0.18 $;
    // job-1 moves 1 GiB each way to S3 through NAT (0.045 $/GiB both ways): 0.09 $;
    // ghost, which has no usage sample, sends 1 GiB to a VPC address (0.01 $/GiB): 0.01 $;
    // web-1's flow at 12:00 is outside the window.
    let flow = |time: &str, ns: &str, pod: &str, dst: &str, domain: &str, tx: i64, rx: i64| {
        format!(
            r#"{{"time":"{time}","window_seconds":60,"node":"n1","src_ip":"10.1.0.5","dst_ip":"{dst}","dst_port":443,"protocol":"tcp","src_namespace":"{ns}","src_pod":"{pod}","dst_domain":{domain},"tx_bytes":{tx},"rx_bytes":{rx},"tx_packets":10,"rx_packets":10}}"#
        )
    };
    let flows = vec![
        flow(
            "2026-01-05T10:10:00Z",
            "shop",
            "web-1",
            "93.184.216.34",
            r#""example.com""#,
            2 * GIB,
            GIB,
        ),
        flow(
            "2026-01-05T10:20:00Z",
            "ops",
            "job-1",
            "52.216.1.1",
            r#""s3.us-east-1.amazonaws.com""#,
            GIB,
            GIB,
        ),
        flow(
            "2026-01-05T11:10:00Z",
            "shop",
            "ghost",
            "10.200.0.1",
            "null",
            GIB,
            0,
        ),
        flow(
            "2026-01-05T12:00:00Z",
            "shop",
            "web-1",
            "93.184.216.34",
            r#""example.com""#,
            100 * GIB,
            0,
        ),
    ];
    vec![
        rows(Table::NodeUsage, &nodes),
        rows(Table::Prices, &prices),
        rows(Table::ContainerUsage, &usage),
        rows(Table::Workloads, &workloads),
        rows(Table::Pods, &pods),
        rows(Table::NetworkFlows, &flows),
    ]
}

#[tokio::test]
async fn cluster_queries_match_their_golden_results() {
    let (_dir, engine) = engine_with(cluster_fixture()).await;
    let params = [
        ("window_start", Param::Timestamp(at("2026-01-05T10:00:00Z"))),
        ("window_end", Param::Timestamp(at("2026-01-05T12:00:00Z"))),
        ("at", Param::Timestamp(at("2026-01-05T12:00:00Z"))),
        ("aggregate", Param::Text("namespace,label:team".into())),
        ("default_cpu_core_hour_usd", Param::Float(0.031611)),
        ("default_memory_gib_hour_usd", Param::Float(0.004237)),
        // '': the provider is found from the nodes' instance types.
        ("provider", Param::Text(String::new())),
    ];
    check(
        &[
            COST_ALLOCATION,
            NODE_PRICES,
            CONSOLIDATION_PODS,
            INSTANCE_PRICES,
        ],
        &engine,
        &params,
        "queries/src/golden_analysis.rs (cluster_fixture)",
    )
    .await;
    // The same allocation split by hour and node (the overview's cost over time): each
    // node-hour's idle is its price minus what its containers were charged that hour.
    let mut by_hour = params.to_vec();
    by_hour.retain(|(name, _)| *name != "aggregate");
    by_hour.push(("aggregate", Param::Text("hour,node".into())));
    check(
        &[Query {
            name: "cost_allocation_by_hour",
            ..COST_ALLOCATION
        }],
        &engine,
        &by_hour,
        "queries/src/golden_analysis.rs (cluster_fixture)",
    )
    .await;
}

/// Two consolidation runs. The newest (run-2, 03:00) plans group general 3 → 2 nodes (g-2
/// can go; g-1 and g-3 stay), group memory 2 → 2 (no change: not listed), and group compute
/// 2 → 1 (c-1 can go). c-1 moved to group general at 03:30, after the plan: it is listed
/// under compute, the group the plan was made for. The older run-1 (02:00) planned general
/// 3 → 1 (g-1 and g-3).
fn node_groups_fixture() -> Vec<(Table, RecordBatch)> {
    let rec = |time: &str, run: &str, kind: &str, name: &str, now: i64, after: i64| {
        format!(
            r#"{{"time":"{time}","run_id":"{run}","kind":"consolidation","namespace":"","target_kind":"{kind}","target_name":"{name}","current_replicas":{now},"recommended_replicas":{after},"confidence":1.0,"why":"{name}: {now} → {after}","savings_monthly_usd":{}}}"#,
            (now - after) as f64 * 70.08
        )
    };
    let t2 = "2026-01-05T03:00:00Z";
    let t1 = "2026-01-05T02:00:00Z";
    let recommendations = vec![
        rec(t2, "run-2", "NodeGroup", "general", 3, 2),
        rec(t2, "run-2", "Node", "g-1", 1, 1),
        rec(t2, "run-2", "Node", "g-2", 1, 0),
        rec(t2, "run-2", "Node", "g-3", 1, 1),
        rec(t2, "run-2", "NodeGroup", "memory", 2, 2),
        rec(t2, "run-2", "Node", "m-1", 1, 1),
        rec(t2, "run-2", "NodeGroup", "compute", 2, 1),
        rec(t2, "run-2", "Node", "c-1", 1, 0),
        rec(t1, "run-1", "NodeGroup", "general", 3, 1),
        rec(t1, "run-1", "Node", "g-1", 1, 0),
        rec(t1, "run-1", "Node", "g-3", 1, 0),
    ];
    let node = |time: &str, name: &str, group: &str| {
        format!(
            r#"{{"time":"{time}","node":"{name}","node_group":"{group}","zone":"us-east-1a","region":"us-east-1","instance_type":"m5.xlarge","capacity_type":"on_demand","cpu_capacity_cores":4.0,"memory_capacity_bytes":{GIB},"cpu_allocatable_cores":3.9,"memory_allocatable_bytes":{GIB}}}"#
        )
    };
    let nodes = vec![
        node("2026-01-05T01:30:00Z", "g-1", "general"),
        node("2026-01-05T01:30:00Z", "g-3", "general"),
        node("2026-01-05T02:30:00Z", "g-1", "general"),
        node("2026-01-05T02:30:00Z", "g-2", "general"),
        node("2026-01-05T02:30:00Z", "g-3", "general"),
        node("2026-01-05T02:30:00Z", "m-1", "memory"),
        node("2026-01-05T02:00:00Z", "c-1", "compute"),
        node("2026-01-05T03:30:00Z", "c-1", "general"),
    ];
    vec![
        rows(Table::Recommendations, &recommendations),
        rows(Table::NodeUsage, &nodes),
    ]
}

#[tokio::test]
async fn node_groups_to_shrink_match_their_golden_result() {
    let (_dir, engine) = engine_with(node_groups_fixture()).await;
    // '': the newest run with a plan, run-2.
    check(
        &[OPERATOR_NODE_GROUPS],
        &engine,
        &[("run_id", Param::Text(String::new()))],
        "queries/src/golden_analysis.rs (node_groups_fixture)",
    )
    .await;
    // An older run by name: general 3 → 1 without g-2.
    let sql = OPERATOR_NODE_GROUPS
        .render(&[("run_id", Param::Text("run-1".into()))])
        .unwrap();
    let (_, batches) = engine.collect(&sql).await.unwrap();
    let table = arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string();
    assert!(
        table.contains("| general    | 3             | 1            | g-1,g-3"),
        "{table}"
    );
}
