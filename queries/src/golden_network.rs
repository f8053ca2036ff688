//! Golden tests of the network queries, and the traffic classification checked case by case.
//!
//! The fixture (window 2026-01-05 10:00 to 11:00 UTC, provider aws): pod shop/web-1
//! (10.1.0.1, Deployment web, on node-a in us-east-1a) sends to one destination per case:
//! - pods: db-0 on its own node (same_zone), cache-0 on node-b in us-east-1b (cross_zone),
//!   api-0 on node-c in eu-west-1 (cross_region), x-0 on node-d without zone labels
//!   (in_cluster); 10.0.0.12, the address two hostNetwork pods of node-b share (a node,
//!   cross_zone);
//! - outside the cluster, by domain and address: every pattern of network_class_rules.sql,
//!   the private ranges, IPv6, public addresses with and without a domain, and look-alikes
//!   that must not match (172.32.x, 100.128.x, a domain that only contains amazonaws.com);
//! - the flow to db-0 has two windows (10:00 and 10:30) that add up; a row at 11:00 is outside
//!   the window.
//!
//! Each flow's bytes are distinct (case number × 1 MiB TX, case number × 1 KiB RX), so a
//! result row shows which case it came from.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
    new_null_array,
};
use chrono::{DateTime, Utc};
use tally_wire::Table;

use crate::Param;
use crate::golden::{check, engine_with};
use crate::network::{self, ALL};

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

/// A batch of `table` from the named columns; every other (nullable) column is null, so the
/// fixture survives columns appended to the wire schema.
fn batch(table: Table, rows: usize, columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
    let schema = table.schema();
    let arrays = schema
        .fields()
        .iter()
        .map(|field| {
            columns
                .iter()
                .find(|(name, _)| name == field.name())
                .map(|(_, array)| array.clone())
                .unwrap_or_else(|| new_null_array(field.data_type(), rows))
        })
        .collect();
    RecordBatch::try_new(schema, arrays).unwrap()
}

fn times(values: &[&str]) -> ArrayRef {
    Arc::new(
        TimestampMillisecondArray::from_iter_values(
            values.iter().map(|t| at(t).timestamp_millis()),
        )
        .with_timezone("UTC"),
    )
}

fn text(values: &[&str]) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(values.iter().copied()))
}

fn text_opt(values: &[Option<&str>]) -> ArrayRef {
    Arc::new(StringArray::from_iter(values.iter().copied()))
}

fn ints(values: &[i64]) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(values.iter().copied()))
}

fn nodes() -> RecordBatch {
    let t = "2026-01-05T09:00:00Z";
    batch(
        Table::NodeUsage,
        4,
        vec![
            ("time", times(&[t, t, t, t])),
            ("node", text(&["node-a", "node-b", "node-c", "node-d"])),
            (
                "zone",
                text_opt(&[
                    Some("us-east-1a"),
                    Some("us-east-1b"),
                    Some("eu-west-1a"),
                    None,
                ]),
            ),
            (
                "region",
                text_opt(&[
                    Some("us-east-1"),
                    Some("us-east-1"),
                    Some("eu-west-1"),
                    None,
                ]),
            ),
        ],
    )
}

fn pods() -> RecordBatch {
    // (name, node, ip, workload kind, workload name, deleted)
    let pods = [
        ("web-1", "node-a", "10.1.0.1", "Deployment", "web", false),
        ("db-0", "node-a", "10.1.0.2", "StatefulSet", "db", false),
        (
            "cache-0",
            "node-b",
            "10.1.0.3",
            "StatefulSet",
            "cache",
            false,
        ),
        ("api-0", "node-c", "10.1.0.4", "Deployment", "api", false),
        ("x-0", "node-d", "10.1.0.5", "Deployment", "x", false),
        (
            "kube-proxy-b",
            "node-b",
            "10.0.0.12",
            "DaemonSet",
            "kube-proxy",
            false,
        ),
        ("cni-b", "node-b", "10.0.0.12", "DaemonSet", "cni", false),
    ];
    let n = pods.len();
    let t = "2026-01-05T09:00:00Z";
    batch(
        Table::Pods,
        n,
        vec![
            ("time", times(&vec![t; n])),
            ("namespace", text(&vec!["shop"; n])),
            ("name", text(&pods.map(|p| p.0))),
            ("node", text(&pods.map(|p| p.1))),
            ("phase", text(&vec!["Running"; n])),
            ("workload_kind", text(&pods.map(|p| p.3))),
            ("workload_name", text(&pods.map(|p| p.4))),
            ("ip", text_opt(&pods.map(|p| Some(p.2)))),
            (
                "deleted",
                Arc::new(BooleanArray::from(pods.map(|p| p.5).to_vec())),
            ),
        ],
    )
}

/// (destination address, domain, expected class, expected rule): one flow each, in case order.
const CASES: &[(&str, Option<&str>, &str, &str)] = &[
    ("10.1.0.2", None, "same_zone", "cluster"),
    ("10.1.0.3", None, "cross_zone", "cluster"),
    ("10.1.0.4", None, "cross_region", "cluster"),
    ("10.1.0.5", None, "in_cluster", "cluster"),
    ("10.0.0.12", None, "cross_zone", "cluster"),
    (
        "10.96.0.20",
        Some("checkout.shop.svc.cluster.local"),
        "in_cluster",
        "k8s_service",
    ),
    ("169.254.169.254", None, "cloud_api", "imds"),
    ("fd00:ec2::254", None, "cloud_api", "imds_ipv6"),
    (
        "10.2.0.10",
        Some("vpce-0a1b2c-d3e4f5.vpce-svc-0123456789abcdef.us-east-1.vpce.amazonaws.com"),
        "private_link",
        "aws_vpce",
    ),
    (
        "10.2.0.11",
        Some("shopdata.privatelink.blob.azure.com"),
        "private_link",
        "azure_privatelink",
    ),
    (
        "10.2.0.12",
        Some("0123abcd.gr7.us-east-1.eks.amazonaws.com"),
        "k8s_control_plane",
        "eks",
    ),
    (
        "20.1.2.3",
        Some("shop-dns-1a2b.hcp.eastus.azmk8s.io"),
        "k8s_control_plane",
        "aks",
    ),
    (
        "34.1.2.3",
        Some("cluster-1.gke.googleapis.com"),
        "k8s_control_plane",
        "gke",
    ),
    (
        "10.2.0.13",
        Some("internal-orders-123456.us-east-1.elb.amazonaws.com"),
        "load_balancer",
        "aws_internal_elb",
    ),
    (
        "52.216.1.2",
        Some("s3.us-east-1.amazonaws.com"),
        "cloud_api",
        "aws_api",
    ),
    (
        "142.250.1.2",
        Some("storage.googleapis.com"),
        "cloud_api",
        "gcp_api",
    ),
    (
        "20.1.2.4",
        Some("shop-secrets.vault.azure.net"),
        "cloud_api",
        "azure_key_vault",
    ),
    ("10.200.0.1", None, "private_network", "rfc1918_10"),
    ("172.20.1.1", None, "private_network", "rfc1918_172"),
    ("192.168.7.1", None, "private_network", "rfc1918_192"),
    ("100.64.0.1", None, "private_network", "cgnat"),
    ("fd12:3456::1", None, "private_network", "ipv6_ula"),
    (
        "93.184.216.34",
        Some("example.com"),
        "internet_egress",
        "public_address",
    ),
    ("2001:db8::1", None, "internet_egress", "public_address"),
    ("172.32.0.1", None, "internet_egress", "public_address"),
    ("100.128.0.1", None, "internet_egress", "public_address"),
    (
        "198.51.100.9",
        Some("vpce-1.amazonaws.com.example.org"),
        "internet_egress",
        "public_address",
    ),
];

const MIB: i64 = 1 << 20;

fn flows() -> RecordBatch {
    // (time, case index)
    let mut rows: Vec<(&str, usize)> = (0..CASES.len())
        .map(|i| ("2026-01-05T10:00:00Z", i))
        .collect();
    rows.push(("2026-01-05T10:30:00Z", 0));
    rows.push(("2026-01-05T11:00:00Z", 0)); // outside the window
    let n = rows.len();
    let case = |i: usize| CASES[rows[i].1];
    let number = |i: usize| rows[i].1 as i64 + 1;
    batch(
        Table::NetworkFlows,
        n,
        vec![
            ("time", times(&rows.iter().map(|r| r.0).collect::<Vec<_>>())),
            ("window_seconds", ints(&vec![60; n])),
            ("node", text(&vec!["node-a"; n])),
            ("src_ip", text(&vec!["10.1.0.1"; n])),
            (
                "dst_ip",
                text(&(0..n).map(|i| case(i).0).collect::<Vec<_>>()),
            ),
            ("dst_port", ints(&vec![443; n])),
            ("protocol", text(&vec!["tcp"; n])),
            ("src_namespace", text_opt(&vec![Some("shop"); n])),
            ("src_pod", text_opt(&vec![Some("web-1"); n])),
            (
                "dst_domain",
                text_opt(&(0..n).map(|i| case(i).1).collect::<Vec<_>>()),
            ),
            (
                "tx_bytes",
                ints(&(0..n).map(|i| number(i) * MIB).collect::<Vec<_>>()),
            ),
            (
                "rx_bytes",
                ints(&(0..n).map(|i| number(i) * 1024).collect::<Vec<_>>()),
            ),
            ("tx_packets", ints(&(0..n).map(number).collect::<Vec<_>>())),
            ("rx_packets", ints(&(0..n).map(number).collect::<Vec<_>>())),
        ],
    )
}

fn params() -> Vec<(&'static str, Param)> {
    vec![
        ("window_start", Param::Timestamp(at("2026-01-05T10:00:00Z"))),
        ("window_end", Param::Timestamp(at("2026-01-05T11:00:00Z"))),
        ("provider", Param::Text("aws".into())),
    ]
}

async fn engine() -> (tempfile::TempDir, tally_query::QueryEngine) {
    engine_with(vec![
        (Table::NodeUsage, nodes()),
        (Table::Pods, pods()),
        (Table::NetworkFlows, flows()),
    ])
    .await
}

#[tokio::test]
async fn network_queries_match_their_golden_results() {
    let (_dir, engine) = engine().await;
    check(ALL, &engine, &params(), "queries/src/golden_network.rs").await;
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> &'a StringArray {
    batch
        .column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"))
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap_or_else(|| panic!("{name} is not text"))
}

#[tokio::test]
async fn every_destination_gets_its_class_case_by_case() {
    let (_dir, engine) = engine().await;
    let sql = network::NETWORK_FLOWS_CLASSIFIED.render(&params()).unwrap();
    let (_, batches) = engine.collect(&sql).await.unwrap();
    let mut seen = std::collections::BTreeMap::new();
    for batch in &batches {
        let (ip, class, rule) = (
            column(batch, "dst_ip"),
            column(batch, "class"),
            column(batch, "rule"),
        );
        let tx = batch
            .column_by_name("tx_bytes")
            .unwrap()
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        for row in 0..batch.num_rows() {
            seen.insert(
                ip.value(row).to_string(),
                (
                    class.value(row).to_string(),
                    rule.value(row).to_string(),
                    tx.value(row),
                ),
            );
        }
    }
    let mut failures = Vec::new();
    for (i, (ip, domain, class, rule)) in CASES.iter().enumerate() {
        let want_tx = if i == 0 {
            2 * MIB
        } else {
            (i as i64 + 1) * MIB
        };
        match seen.get(*ip) {
            Some((c, r, tx)) if c == class && r == rule && *tx == want_tx => {}
            other => failures.push(format!(
                "{ip} ({domain:?}): expected {class} by {rule} with {want_tx} B, got {other:?}"
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(seen.len(), CASES.len());
}

#[tokio::test]
async fn every_class_has_a_rate_for_every_provider() {
    let (_dir, engine) = engine().await;
    let sql = format!(
        "WITH class_rules AS ({}), rates AS ({}), \
         classes AS (SELECT DISTINCT class FROM class_rules UNION SELECT * FROM (VALUES \
         ('same_zone'), ('cross_zone'), ('cross_region'), ('in_cluster'), ('internet_egress')) AS c(class)), \
         providers AS (SELECT * FROM (VALUES ('aws'), ('gcp'), ('azure')) AS p(provider)) \
         SELECT p.provider || '/' || c.class AS missing FROM classes c CROSS JOIN providers p \
         LEFT JOIN rates r ON r.class = c.class AND r.provider = p.provider \
         WHERE r.class IS NULL ORDER BY 1",
        network::NETWORK_CLASS_RULES.sql,
        network::NETWORK_RATES.sql
    );
    let (_, batches) = engine.collect(&sql).await.unwrap();
    let missing: Vec<String> = batches
        .iter()
        .flat_map(|b| {
            let c = column(b, "missing");
            (0..b.num_rows())
                .map(|i| c.value(i).to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(missing.is_empty(), "classes without a rate: {missing:?}");
}
