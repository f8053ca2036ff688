//! Golden tests of the web UI's queries (`ui.rs`) on one small hand-made cluster.
//!
//! The fixture (window 2026-01-05 10:00 to 12:00 UTC), with the answers a reader can check:
//! - `workloads`: shop/Deployment/web has containers `app` (1 core, 512 MiB request) and
//!   `sidecar` (0.1 cores, 64 MiB); its replicas went from 3 (09:00) to 2 (10:30), so the page
//!   shows 2 replicas and 1.1 cores / 576 MiB per replica. shop/StatefulSet/db (`postgres`,
//!   2 cores, 4 GiB, 1 replica) has a snapshot at 12:30 with 5 replicas: after the window, so
//!   still 1. old/Deployment/gone was deleted at 10:15: it is not listed.
//! - `container_usage`: web-1/app 30 samples at 0.2 cores and 200 MiB from 10:00, web-2/app
//!   30 samples at 0.4 cores and 300 MiB from 11:00, web-1/sidecar 30 at 0.01 cores and
//!   20 MiB, db-0/postgres 60 at 1.0 cores and 3 GiB from 10:00. The p95 CPU of web's `app`
//!   merged over both pods is 0.4 (rollup: the end of its 5 % bucket, 0.414), plus the
//!   sidecar's (0.01, whose bucket ends at 0.0205: the rollup's smallest), so web's p95 is
//!   0.435 cores; its peak memory 300 + 20 MiB.
//! - `events`: web-2/app OOMKilled and Restarted at 11:10 (in the window); db-0 OOMKilled at
//!   09:00 (before it: not counted).
//! - `node_usage`: node-a (general, m5.large) at 1.0, 1.2, 0.8, 0.6 cores: mean 0.9, max 1.2;
//!   node-b (compute, c5.xlarge, spot) at 2.0 and 3.0 cores.
//! - `pods`: web-1 and job-x (Succeeded: not counted) on node-a, web-3 on node-a deleted at
//!   10:40 (not counted), web-2 and db-0 on node-b: node-a requests 1.1 cores for 1 pod,
//!   node-b 3.1 cores for 2.
//! - `network_flows`: web-1 to api.stripe.com:443 twice (2,000 + 2,000 bytes sent), web-1 to
//!   10.0.0.5:5432 (1,000 sent, 5,000 received), db-0 to 10.0.0.9:443 (100/100), and one
//!   flow at 09:00 outside the window.
//! - `recommendations`: run r1 (08:00) saved 10 $ for web; run r2 (11:00), the newest, saves
//!   20.5 $ for web/app, 5 $ for db, 50 $ for node group `general`.
//! - `actions`: db `applied` at 11:30; web `rejected` at 12:30 (after the window: web is still
//!   `pending` on the workloads page, `rejected` on the recommendations page, which has no
//!   window).
//! - `prices`: m5.large on-demand from the catalog (0.096 $/h) and a user override (0.08 $/h)
//!   at the same time: the user's wins; c5.xlarge spot 0.07 $/h, then 0.065 $/h a day later.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use arrow::datatypes::DataType;
use chrono::{DateTime, Duration, Utc};
use tally_wire::Table;

use crate::golden::{check, engine_with};
use crate::{Param, ui};

const MIB: i64 = 1 << 20;

/// One cell of a fixture row.
#[derive(Clone)]
enum V {
    T(DateTime<Utc>),
    S(&'static str),
    F(f64),
    I(i64),
    B(bool),
    N,
}

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

/// A batch of `table` from rows given by column name; columns not named are null (or
/// false for booleans).
fn batch(table: Table, rows: Vec<Vec<(&str, V)>>) -> (Table, RecordBatch) {
    let schema = table.schema();
    let cell = |row: &Vec<(&str, V)>, name: &str| {
        row.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or(V::N)
    };
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|field| {
            let name = field.name();
            let values: Vec<V> = rows.iter().map(|row| cell(row, name)).collect();
            match field.data_type() {
                DataType::Timestamp(..) => Arc::new(
                    TimestampMillisecondArray::from(
                        values
                            .iter()
                            .map(|v| match v {
                                V::T(t) => Some(t.timestamp_millis()),
                                _ => None,
                            })
                            .collect::<Vec<_>>(),
                    )
                    .with_timezone("UTC"),
                ) as ArrayRef,
                DataType::Utf8 => Arc::new(StringArray::from(
                    values
                        .iter()
                        .map(|v| match v {
                            V::S(s) => Some(*s),
                            _ => None,
                        })
                        .collect::<Vec<_>>(),
                )),
                DataType::Float64 => Arc::new(Float64Array::from(
                    values
                        .iter()
                        .map(|v| match v {
                            V::F(f) => Some(*f),
                            _ => None,
                        })
                        .collect::<Vec<_>>(),
                )),
                DataType::Int64 => Arc::new(Int64Array::from(
                    values
                        .iter()
                        .map(|v| match v {
                            V::I(i) => Some(*i),
                            _ => None,
                        })
                        .collect::<Vec<_>>(),
                )),
                DataType::Boolean => Arc::new(BooleanArray::from(
                    values
                        .iter()
                        .map(|v| matches!(v, V::B(true)))
                        .collect::<Vec<_>>(),
                )),
                other => panic!("fixture cannot build {other} for {table}.{name}"),
            }
        })
        .collect();
    (table, RecordBatch::try_new(schema, columns).unwrap())
}

#[allow(clippy::too_many_arguments)] // one column each: fixtures read like a table
fn spec(
    time: &str,
    ns: &'static str,
    kind: &'static str,
    name: &'static str,
    container: &'static str,
    replicas: i64,
    cpu: f64,
    memory_mib: i64,
    deleted: bool,
) -> Vec<(&'static str, V)> {
    vec![
        ("time", V::T(at(time))),
        ("namespace", V::S(ns)),
        ("kind", V::S(kind)),
        ("name", V::S(name)),
        ("container", V::S(container)),
        ("replicas", V::I(replicas)),
        ("cpu_request_cores", V::F(cpu)),
        ("cpu_limit_cores", V::F(cpu * 2.0)),
        ("memory_request_bytes", V::I(memory_mib * MIB)),
        ("memory_limit_bytes", V::I(memory_mib * 2 * MIB)),
        ("deleted", V::B(deleted)),
    ]
}

#[allow(clippy::too_many_arguments)]
fn usage(
    from: &str,
    n: i64,
    ns: &'static str,
    pod: &'static str,
    container: &'static str,
    node: &'static str,
    kind: &'static str,
    workload: &'static str,
    cpu: f64,
    memory_mib: i64,
) -> Vec<Vec<(&'static str, V)>> {
    (0..n)
        .map(|k| {
            vec![
                ("time", V::T(at(from) + Duration::minutes(k))),
                ("namespace", V::S(ns)),
                ("pod", V::S(pod)),
                ("container", V::S(container)),
                ("node", V::S(node)),
                ("workload_kind", V::S(kind)),
                ("workload_name", V::S(workload)),
                ("cpu_cores", V::F(cpu)),
                ("memory_working_set_bytes", V::I(memory_mib * MIB)),
            ]
        })
        .collect()
}

fn event(
    time: &str,
    pod: &'static str,
    workload: (&'static str, &'static str),
    reason: &'static str,
) -> Vec<(&'static str, V)> {
    vec![
        ("time", V::T(at(time))),
        ("namespace", V::S("shop")),
        ("pod", V::S(pod)),
        (
            "container",
            V::S(if workload.1 == "db" {
                "postgres"
            } else {
                "app"
            }),
        ),
        ("workload_kind", V::S(workload.0)),
        ("workload_name", V::S(workload.1)),
        ("reason", V::S(reason)),
        ("memory_limit_bytes", V::I(1024 * MIB)),
        ("restart_count", V::I(1)),
    ]
}

#[allow(clippy::too_many_arguments)]
fn node(
    time: &str,
    name: &'static str,
    group: &'static str,
    zone: &'static str,
    instance: &'static str,
    capacity: &'static str,
    cpu: f64,
    alloc: f64,
) -> Vec<(&'static str, V)> {
    vec![
        ("time", V::T(at(time))),
        ("node", V::S(name)),
        ("node_group", V::S(group)),
        ("zone", V::S(zone)),
        ("region", V::S("us-east-1")),
        ("instance_type", V::S(instance)),
        ("capacity_type", V::S(capacity)),
        ("cpu_cores", V::F(cpu)),
        ("memory_working_set_bytes", V::I(2048 * MIB)),
        ("cpu_capacity_cores", V::F(alloc + 0.07)),
        ("memory_capacity_bytes", V::I(8192 * MIB)),
        ("cpu_allocatable_cores", V::F(alloc)),
        ("memory_allocatable_bytes", V::I(7168 * MIB)),
    ]
}

#[allow(clippy::too_many_arguments)]
fn pod(
    time: &str,
    name: &'static str,
    node: &'static str,
    phase: &'static str,
    workload: (&'static str, &'static str),
    cpu: f64,
    memory_mib: i64,
    deleted: bool,
) -> Vec<(&'static str, V)> {
    vec![
        ("time", V::T(at(time))),
        ("namespace", V::S("shop")),
        ("name", V::S(name)),
        ("node", V::S(node)),
        ("phase", V::S(phase)),
        ("workload_kind", V::S(workload.0)),
        ("workload_name", V::S(workload.1)),
        ("deleted", V::B(deleted)),
        ("cpu_request_cores", V::F(cpu)),
        ("memory_request_bytes", V::I(memory_mib * MIB)),
    ]
}

#[allow(clippy::too_many_arguments)] // one column each: fixtures read like a table
fn flow(
    time: &str,
    pod: &'static str,
    src_ip: &'static str,
    dst_ip: &'static str,
    port: i64,
    domain: Option<&'static str>,
    tx: i64,
    rx: i64,
) -> Vec<(&'static str, V)> {
    vec![
        ("time", V::T(at(time))),
        ("window_seconds", V::I(60)),
        ("node", V::S("node-a")),
        ("src_ip", V::S(src_ip)),
        ("dst_ip", V::S(dst_ip)),
        ("dst_port", V::I(port)),
        ("protocol", V::S("tcp")),
        ("src_namespace", V::S("shop")),
        ("src_pod", V::S(pod)),
        ("dst_domain", domain.map_or(V::N, V::S)),
        ("tx_bytes", V::I(tx)),
        ("rx_bytes", V::I(rx)),
        ("tx_packets", V::I(tx / 100)),
        ("rx_packets", V::I(rx / 100)),
    ]
}

#[allow(clippy::too_many_arguments)]
fn recommendation(
    time: &str,
    run: &'static str,
    kind: &'static str,
    ns: &'static str,
    target: (&'static str, &'static str),
    container: Option<&'static str>,
    why: &'static str,
    savings: f64,
) -> Vec<(&'static str, V)> {
    vec![
        ("time", V::T(at(time))),
        ("run_id", V::S(run)),
        ("kind", V::S(kind)),
        ("namespace", V::S(ns)),
        ("target_kind", V::S(target.0)),
        ("target_name", V::S(target.1)),
        ("container", container.map_or(V::N, V::S)),
        ("current_cpu_request_cores", V::F(1.0)),
        ("recommended_cpu_request_cores", V::F(0.5)),
        ("confidence", V::F(0.9)),
        ("why", V::S(why)),
        ("savings_monthly_usd", V::F(savings)),
    ]
}

fn action(
    time: &str,
    id: &'static str,
    target: (&'static str, &'static str),
    result: &'static str,
) -> Vec<(&'static str, V)> {
    vec![
        ("time", V::T(at(time))),
        ("action_id", V::S(id)),
        ("operation", V::S("patch_resources")),
        ("namespace", V::S("shop")),
        ("target_kind", V::S(target.0)),
        ("target_name", V::S(target.1)),
        ("actor", V::S("operator")),
        ("result", V::S(result)),
    ]
}

fn price(
    time: &str,
    instance: &'static str,
    capacity: &'static str,
    hourly: f64,
    source: &'static str,
) -> Vec<(&'static str, V)> {
    vec![
        ("time", V::T(at(time))),
        ("provider", V::S("aws")),
        ("region", V::S("us-east-1")),
        ("instance_type", V::S(instance)),
        ("capacity_type", V::S(capacity)),
        ("hourly_usd", V::F(hourly)),
        ("cpu_cores", V::F(2.0)),
        ("memory_bytes", V::I(8192 * MIB)),
        ("gpu_count", V::I(0)),
        ("source", V::S(source)),
    ]
}

fn fixture() -> Vec<(Table, RecordBatch)> {
    const WEB: (&str, &str) = ("Deployment", "web");
    const DB: (&str, &str) = ("StatefulSet", "db");
    let mut samples = Vec::new();
    samples.extend(usage(
        "2026-01-05T10:00:00Z",
        30,
        "shop",
        "web-1",
        "app",
        "node-a",
        WEB.0,
        WEB.1,
        0.2,
        200,
    ));
    samples.extend(usage(
        "2026-01-05T11:00:00Z",
        30,
        "shop",
        "web-2",
        "app",
        "node-b",
        WEB.0,
        WEB.1,
        0.4,
        300,
    ));
    samples.extend(usage(
        "2026-01-05T10:00:00Z",
        30,
        "shop",
        "web-1",
        "sidecar",
        "node-a",
        WEB.0,
        WEB.1,
        0.01,
        20,
    ));
    samples.extend(usage(
        "2026-01-05T10:00:00Z",
        60,
        "shop",
        "db-0",
        "postgres",
        "node-b",
        DB.0,
        DB.1,
        1.0,
        3072,
    ));
    samples.extend(usage(
        "2026-01-05T11:00:00Z",
        60,
        "shop",
        "db-0",
        "postgres",
        "node-b",
        DB.0,
        DB.1,
        1.0,
        3072,
    ));
    vec![
        batch(
            Table::Workloads,
            vec![
                spec(
                    "2026-01-05T09:00:00Z",
                    "shop",
                    "Deployment",
                    "web",
                    "app",
                    3,
                    1.0,
                    512,
                    false,
                ),
                spec(
                    "2026-01-05T09:00:00Z",
                    "shop",
                    "Deployment",
                    "web",
                    "sidecar",
                    3,
                    0.1,
                    64,
                    false,
                ),
                spec(
                    "2026-01-05T10:30:00Z",
                    "shop",
                    "Deployment",
                    "web",
                    "app",
                    2,
                    1.0,
                    512,
                    false,
                ),
                spec(
                    "2026-01-05T10:30:00Z",
                    "shop",
                    "Deployment",
                    "web",
                    "sidecar",
                    2,
                    0.1,
                    64,
                    false,
                ),
                spec(
                    "2026-01-05T09:00:00Z",
                    "shop",
                    "StatefulSet",
                    "db",
                    "postgres",
                    1,
                    2.0,
                    4096,
                    false,
                ),
                spec(
                    "2026-01-05T12:30:00Z",
                    "shop",
                    "StatefulSet",
                    "db",
                    "postgres",
                    5,
                    2.0,
                    4096,
                    false,
                ),
                spec(
                    "2026-01-05T09:00:00Z",
                    "old",
                    "Deployment",
                    "gone",
                    "app",
                    1,
                    0.5,
                    128,
                    false,
                ),
                spec(
                    "2026-01-05T10:15:00Z",
                    "old",
                    "Deployment",
                    "gone",
                    "app",
                    1,
                    0.5,
                    128,
                    true,
                ),
            ],
        ),
        batch(Table::ContainerUsage, samples),
        batch(
            Table::Events,
            vec![
                event("2026-01-05T11:10:00Z", "web-2", WEB, "OOMKilled"),
                event("2026-01-05T11:10:00Z", "web-2", WEB, "Restarted"),
                event("2026-01-05T09:00:00Z", "db-0", DB, "OOMKilled"),
            ],
        ),
        batch(
            Table::NodeUsage,
            vec![
                node(
                    "2026-01-05T10:00:00Z",
                    "node-a",
                    "general",
                    "us-east-1a",
                    "m5.large",
                    "on_demand",
                    1.0,
                    1.93,
                ),
                node(
                    "2026-01-05T10:30:00Z",
                    "node-a",
                    "general",
                    "us-east-1a",
                    "m5.large",
                    "on_demand",
                    1.2,
                    1.93,
                ),
                node(
                    "2026-01-05T11:00:00Z",
                    "node-a",
                    "general",
                    "us-east-1a",
                    "m5.large",
                    "on_demand",
                    0.8,
                    1.93,
                ),
                node(
                    "2026-01-05T11:30:00Z",
                    "node-a",
                    "general",
                    "us-east-1a",
                    "m5.large",
                    "on_demand",
                    0.6,
                    1.93,
                ),
                node(
                    "2026-01-05T10:00:00Z",
                    "node-b",
                    "compute",
                    "us-east-1b",
                    "c5.xlarge",
                    "spot",
                    2.0,
                    3.92,
                ),
                node(
                    "2026-01-05T11:00:00Z",
                    "node-b",
                    "compute",
                    "us-east-1b",
                    "c5.xlarge",
                    "spot",
                    3.0,
                    3.92,
                ),
            ],
        ),
        batch(
            Table::Pods,
            vec![
                pod(
                    "2026-01-05T09:00:00Z",
                    "web-1",
                    "node-a",
                    "Running",
                    WEB,
                    1.1,
                    576,
                    false,
                ),
                pod(
                    "2026-01-05T09:00:00Z",
                    "web-2",
                    "node-b",
                    "Running",
                    WEB,
                    1.1,
                    576,
                    false,
                ),
                pod(
                    "2026-01-05T09:00:00Z",
                    "web-3",
                    "node-a",
                    "Running",
                    WEB,
                    1.1,
                    576,
                    false,
                ),
                pod(
                    "2026-01-05T10:40:00Z",
                    "web-3",
                    "node-a",
                    "Running",
                    WEB,
                    1.1,
                    576,
                    true,
                ),
                pod(
                    "2026-01-05T09:00:00Z",
                    "db-0",
                    "node-b",
                    "Running",
                    DB,
                    2.0,
                    4096,
                    false,
                ),
                pod(
                    "2026-01-05T09:00:00Z",
                    "job-x",
                    "node-a",
                    "Succeeded",
                    ("Job", "job"),
                    0.5,
                    128,
                    false,
                ),
            ],
        ),
        batch(
            Table::NetworkFlows,
            vec![
                flow(
                    "2026-01-05T10:01:00Z",
                    "web-1",
                    "10.1.0.1",
                    "203.0.113.10",
                    443,
                    Some("api.stripe.com"),
                    2000,
                    500,
                ),
                flow(
                    "2026-01-05T10:02:00Z",
                    "web-1",
                    "10.1.0.1",
                    "203.0.113.10",
                    443,
                    Some("api.stripe.com"),
                    2000,
                    500,
                ),
                flow(
                    "2026-01-05T10:01:00Z",
                    "web-1",
                    "10.1.0.1",
                    "10.0.0.5",
                    5432,
                    None,
                    1000,
                    5000,
                ),
                flow(
                    "2026-01-05T11:01:00Z",
                    "db-0",
                    "10.1.0.2",
                    "10.0.0.9",
                    443,
                    None,
                    100,
                    100,
                ),
                flow(
                    "2026-01-05T09:01:00Z",
                    "db-0",
                    "10.1.0.2",
                    "10.0.0.9",
                    443,
                    None,
                    99_999,
                    99_999,
                ),
            ],
        ),
        batch(
            Table::Recommendations,
            vec![
                recommendation(
                    "2026-01-05T08:00:00Z",
                    "r1",
                    "rightsizing",
                    "shop",
                    WEB,
                    Some("app"),
                    "old run",
                    10.0,
                ),
                recommendation(
                    "2026-01-05T11:00:00Z",
                    "r2",
                    "rightsizing",
                    "shop",
                    WEB,
                    Some("app"),
                    "p95 0.4 cores of 1 requested",
                    20.5,
                ),
                recommendation(
                    "2026-01-05T11:00:00Z",
                    "r2",
                    "rightsizing",
                    "shop",
                    DB,
                    Some("postgres"),
                    "p95 1 core of 2 requested",
                    5.0,
                ),
                recommendation(
                    "2026-01-05T11:00:00Z",
                    "r2",
                    "consolidation",
                    "",
                    ("NodeGroup", "general"),
                    None,
                    "node-a's pods fit on node-b",
                    50.0,
                ),
            ],
        ),
        batch(
            Table::Actions,
            vec![
                action("2026-01-05T11:30:00Z", "a1", DB, "applied"),
                action("2026-01-05T12:30:00Z", "a2", WEB, "rejected"),
            ],
        ),
        batch(
            Table::Prices,
            vec![
                price(
                    "2026-01-01T00:00:00Z",
                    "m5.large",
                    "on_demand",
                    0.096,
                    "catalog",
                ),
                price(
                    "2026-01-01T00:00:00Z",
                    "m5.large",
                    "on_demand",
                    0.08,
                    "user",
                ),
                price("2026-01-01T00:00:00Z", "c5.xlarge", "spot", 0.07, "catalog"),
                price(
                    "2026-01-04T00:00:00Z",
                    "c5.xlarge",
                    "spot",
                    0.065,
                    "catalog",
                ),
            ],
        ),
    ]
}

#[tokio::test]
async fn ui_queries_match_their_golden_results() {
    let (_dir, engine) = engine_with(fixture()).await;
    let params = [
        ("window_start", Param::Timestamp(at("2026-01-05T10:00:00Z"))),
        ("window_end", Param::Timestamp(at("2026-01-05T12:00:00Z"))),
        ("namespace", Param::Text("shop".into())),
        ("kind", Param::Text("Deployment".into())),
        ("name", Param::Text("web".into())),
    ];
    check(ui::ALL, &engine, &params, "queries/src/golden_ui.rs").await;
}
