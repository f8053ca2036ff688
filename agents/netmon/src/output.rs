//! The Arrow batches the agent sends: `network_flows` and `dns_lookups`, built column by
//! column against the wire crate's schemas.

use std::net::IpAddr;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::error::ArrowError;
use tally_wire::Table;

use crate::flows::{Counters, FlowKey, protocol_name};
use crate::pods::PodRef;

/// One row of `network_flows`.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowRow {
    pub key: FlowKey,
    pub counters: Counters,
    pub src_pod: Option<PodRef>,
    pub dst_domain: Option<String>,
}

/// One row of `dns_lookups`.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsRow {
    pub time_ms: i64,
    pub client_ip: IpAddr,
    pub client_pod: Option<PodRef>,
    pub query_name: String,
    pub query_type: String,
    pub answers: Vec<IpAddr>,
    pub cname_chain: Vec<String>,
    pub ttl_seconds: u32,
}

fn time_column(values: impl Iterator<Item = i64>) -> ArrayRef {
    Arc::new(TimestampMillisecondArray::from_iter_values(values).with_timezone("UTC"))
}

fn text<'a>(values: impl Iterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(values))
}

fn text_opt<'a>(values: impl Iterator<Item = Option<&'a str>>) -> ArrayRef {
    Arc::new(StringArray::from_iter(values))
}

fn int(values: impl Iterator<Item = i64>) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(values))
}

/// Counters are u64 in the kernel; the wire type is Int64 (no flow moves 8 EiB in a minute).
fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The `network_flows` batch of one window ending at `end_ms`, `window_seconds` long.
pub fn flows_batch(
    rows: &[FlowRow],
    node: &str,
    end_ms: i64,
    window_seconds: i64,
) -> Result<RecordBatch, ArrowError> {
    let n = rows.len();
    let src: Vec<String> = rows.iter().map(|r| r.key.src.to_string()).collect();
    let dst: Vec<String> = rows.iter().map(|r| r.key.dst.to_string()).collect();
    let proto: Vec<String> = rows.iter().map(|r| protocol_name(r.key.protocol)).collect();
    RecordBatch::try_new(
        Table::NetworkFlows.schema(),
        vec![
            time_column(std::iter::repeat_n(end_ms, n)),
            int(std::iter::repeat_n(window_seconds, n)),
            text(std::iter::repeat_n(node, n)),
            text(src.iter().map(String::as_str)),
            text(dst.iter().map(String::as_str)),
            int(rows.iter().map(|r| r.key.dst_port as i64)),
            text(proto.iter().map(String::as_str)),
            text_opt(
                rows.iter()
                    .map(|r| r.src_pod.as_ref().map(|p| p.namespace.as_str())),
            ),
            text_opt(
                rows.iter()
                    .map(|r| r.src_pod.as_ref().map(|p| p.name.as_str())),
            ),
            text_opt(rows.iter().map(|r| r.dst_domain.as_deref())),
            int(rows.iter().map(|r| clamp(r.counters.tx_bytes))),
            int(rows.iter().map(|r| clamp(r.counters.rx_bytes))),
            int(rows.iter().map(|r| clamp(r.counters.tx_packets))),
            int(rows.iter().map(|r| clamp(r.counters.rx_packets))),
        ],
    )
}

/// The `dns_lookups` batch of the lookups seen in one window.
pub fn dns_batch(rows: &[DnsRow], node: &str) -> Result<RecordBatch, ArrowError> {
    let n = rows.len();
    let client: Vec<String> = rows.iter().map(|r| r.client_ip.to_string()).collect();
    let answers: Vec<String> = rows
        .iter()
        .map(|r| {
            r.answers
                .iter()
                .map(IpAddr::to_string)
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    let chains: Vec<Option<String>> = rows
        .iter()
        .map(|r| (!r.cname_chain.is_empty()).then(|| r.cname_chain.join(",")))
        .collect();
    RecordBatch::try_new(
        Table::DnsLookups.schema(),
        vec![
            time_column(rows.iter().map(|r| r.time_ms)),
            text(std::iter::repeat_n(node, n)),
            text(client.iter().map(String::as_str)),
            text_opt(
                rows.iter()
                    .map(|r| r.client_pod.as_ref().map(|p| p.namespace.as_str())),
            ),
            text_opt(
                rows.iter()
                    .map(|r| r.client_pod.as_ref().map(|p| p.name.as_str())),
            ),
            text(rows.iter().map(|r| r.query_name.as_str())),
            text(rows.iter().map(|r| r.query_type.as_str())),
            text(answers.iter().map(String::as_str)),
            text_opt(chains.iter().map(Option::as_deref)),
            Arc::new(Int64Array::from_iter(
                rows.iter().map(|r| Some(r.ttl_seconds as i64)),
            )),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_match_the_wire_schemas() {
        let flow = FlowRow {
            key: FlowKey {
                src: "fd00::1".parse().unwrap(),
                dst: "2001:db8::2".parse().unwrap(),
                dst_port: 443,
                protocol: 6,
            },
            counters: Counters {
                tx_bytes: 10,
                tx_packets: 1,
                rx_bytes: 20,
                rx_packets: 2,
            },
            src_pod: Some(PodRef {
                namespace: "shop".into(),
                name: "web-1".into(),
            }),
            dst_domain: Some("api.example.com".into()),
        };
        let batch = flows_batch(&[flow.clone(), flow], "node-a", 60_000, 60).unwrap();
        tally_wire::validate_schema(Table::NetworkFlows, &batch.schema()).unwrap();
        assert_eq!(batch.num_rows(), 2);
        let column = |name: &str| -> String {
            let array = batch.column_by_name(name).unwrap();
            arrow::util::display::array_value_to_string(array, 1).unwrap()
        };
        assert_eq!(column("dst_ip"), "2001:db8::2");
        assert_eq!(column("dst_port"), "443");
        assert_eq!(column("protocol"), "tcp");
        assert_eq!(column("src_namespace"), "shop");
        assert_eq!(column("rx_packets"), "2");

        let dns = DnsRow {
            time_ms: 1,
            client_ip: "10.0.0.1".parse().unwrap(),
            client_pod: None,
            query_name: "a.example".into(),
            query_type: "A".into(),
            answers: vec!["192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap()],
            cname_chain: vec![],
            ttl_seconds: 30,
        };
        let batch = dns_batch(&[dns], "node-a").unwrap();
        tally_wire::validate_schema(Table::DnsLookups, &batch.schema()).unwrap();
        let answers = batch.column_by_name("answers").unwrap();
        assert_eq!(
            arrow::util::display::array_value_to_string(answers, 0).unwrap(),
            "192.0.2.1,192.0.2.2"
        );
    }
}
