//! Usage from each node's kubelet: `/stats/summary` (CPU, working-set and RSS memory,
//! network, filesystems) and `/metrics/cadvisor` (CPU throttling), turned into
//! `container_usage` and `node_usage` rows.
//!
//! CPU is the increase of the cumulative `usageCoreNanoSeconds` between two samples divided
//! by the time between them (the kubelet's own `usageNanoCores` when there is no earlier
//! sample or the counter went back, i.e. the container restarted). Throttling is the increase
//! of cadvisor's `container_cpu_cfs_throttled_seconds_total` per interval; a counter that goes
//! back counts from zero. Missing fields become nulls, never zeros.

use std::collections::HashMap;

use serde::Deserialize;

use crate::inventory::{ContainerInfo, NodeInfo};

/// The parts of the kubelet's `/stats/summary` the collector reads.
#[derive(Debug, Default, Deserialize)]
pub struct Summary {
    #[serde(default)]
    pub node: NodeStats,
    #[serde(default)]
    pub pods: Vec<PodStats>,
}

/// Node-level statistics.
#[derive(Debug, Default, Deserialize)]
pub struct NodeStats {
    pub cpu: Option<CpuStats>,
    pub memory: Option<MemoryStats>,
    pub network: Option<NetworkStats>,
    pub fs: Option<FsStats>,
}

/// A pod's statistics.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStats {
    pub pod_ref: PodRef,
    #[serde(default)]
    pub containers: Vec<ContainerStats>,
}

/// Which pod.
#[derive(Debug, Default, Deserialize)]
pub struct PodRef {
    pub name: String,
    pub namespace: String,
}

/// A container's statistics.
#[derive(Debug, Default, Deserialize)]
pub struct ContainerStats {
    pub name: String,
    pub cpu: Option<CpuStats>,
    pub memory: Option<MemoryStats>,
    pub rootfs: Option<FsStats>,
    pub logs: Option<FsStats>,
}

/// CPU counters.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CpuStats {
    pub time: Option<String>,
    pub usage_nano_cores: Option<u64>,
    pub usage_core_nano_seconds: Option<u64>,
}

/// Memory gauges.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStats {
    pub working_set_bytes: Option<u64>,
    pub rss_bytes: Option<u64>,
}

/// Network counters (all interfaces).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkStats {
    pub rx_bytes: Option<u64>,
    pub tx_bytes: Option<u64>,
    #[serde(default)]
    pub interfaces: Vec<InterfaceStats>,
}

/// One interface's counters.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InterfaceStats {
    pub rx_bytes: Option<u64>,
    pub tx_bytes: Option<u64>,
}

/// Filesystem usage.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FsStats {
    pub used_bytes: Option<u64>,
}

/// `container_cpu_cfs_throttled_seconds_total` per (namespace, pod, container) from a
/// cadvisor Prometheus text page.
pub fn parse_throttling(text: &str) -> HashMap<(String, String, String), f64> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("container_cpu_cfs_throttled_seconds_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once('}') else {
            continue;
        };
        let labels = parse_labels(labels);
        let Some(value) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
        let container = get("container");
        if container.is_empty() || container == "POD" {
            continue;
        }
        out.insert((get("namespace"), get("pod"), container), value);
    }
    out
}

/// Parses `a="x",b="y\"z"` (Prometheus label syntax).
pub fn parse_labels(text: &str) -> HashMap<String, String> {
    let mut labels = HashMap::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if name.is_empty() {
            break;
        }
        if chars.next() != Some('"') {
            break;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.insert(name.trim().to_string(), value);
    }
    labels
}

/// A row of `container_usage`.
#[derive(Debug, Clone)]
pub struct ContainerUsageRow {
    pub time_ms: i64,
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub node: String,
    pub info: ContainerInfo,
    pub cpu_cores: Option<f64>,
    pub memory_working_set_bytes: Option<i64>,
    pub memory_rss_bytes: Option<i64>,
    pub cpu_throttled_seconds: Option<f64>,
    pub gpu_utilization: Option<f64>,
    pub gpu_memory_bytes: Option<i64>,
    pub ephemeral_storage_bytes: Option<i64>,
}

/// A row of `node_usage`.
#[derive(Debug, Clone)]
pub struct NodeUsageRow {
    pub time_ms: i64,
    pub info: NodeInfo,
    pub cpu_cores: Option<f64>,
    pub memory_working_set_bytes: Option<i64>,
    pub network_rx_bytes: Option<i64>,
    pub network_tx_bytes: Option<i64>,
    pub filesystem_used_bytes: Option<i64>,
}

/// The cumulative counters of the previous sample, to turn them into rates and deltas.
#[derive(Debug, Default)]
pub struct Counters {
    cpu: HashMap<String, (u64, i64)>,
    throttled: HashMap<String, f64>,
    network: HashMap<String, (u64, u64)>,
    seen: HashMap<String, u64>,
    round: u64,
}

fn parse_time_ms(text: &Option<String>) -> Option<i64> {
    let text = text.as_deref()?;
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_millis())
}

impl Counters {
    /// Starts a scrape round; counters not touched for a few rounds are forgotten.
    pub fn begin_round(&mut self) {
        self.round += 1;
        let round = self.round;
        let stale: Vec<String> = self
            .seen
            .iter()
            .filter(|(_, r)| round - **r > 3)
            .map(|(k, _)| k.clone())
            .collect();
        for key in stale {
            self.seen.remove(&key);
            self.cpu.remove(&key);
            self.throttled.remove(&key);
            self.network.remove(&key);
        }
    }

    /// Cores used since the previous sample of `key`.
    pub fn cpu_cores(&mut self, key: &str, cpu: &Option<CpuStats>) -> Option<f64> {
        let cpu = cpu.as_ref()?;
        self.seen.insert(key.to_string(), self.round);
        let instant = cpu.usage_nano_cores.map(|n| n as f64 / 1e9);
        let (Some(total), Some(time)) = (cpu.usage_core_nano_seconds, parse_time_ms(&cpu.time))
        else {
            return instant;
        };
        let previous = self.cpu.insert(key.to_string(), (total, time));
        match previous {
            Some((old_total, old_time)) if total >= old_total && time > old_time => {
                Some((total - old_total) as f64 / 1e9 / ((time - old_time) as f64 / 1e3))
            }
            // Same kubelet sample as last time: its own rate is as good as it gets.
            _ => instant,
        }
    }

    /// Throttled seconds since the previous sample of `key`.
    pub fn throttled(&mut self, key: &str, total: Option<f64>) -> Option<f64> {
        let total = total?;
        self.seen.insert(key.to_string(), self.round);
        match self.throttled.insert(key.to_string(), total) {
            Some(old) if total >= old => Some(total - old),
            Some(_) => Some(total),
            None => None,
        }
    }

    /// Bytes received and sent since the previous sample of a node.
    pub fn network(
        &mut self,
        key: &str,
        rx: Option<u64>,
        tx: Option<u64>,
    ) -> (Option<i64>, Option<i64>) {
        let (Some(rx), Some(tx)) = (rx, tx) else {
            return (None, None);
        };
        self.seen.insert(key.to_string(), self.round);
        match self.network.insert(key.to_string(), (rx, tx)) {
            Some((old_rx, old_tx)) => {
                let delta = |new: u64, old: u64| {
                    if new >= old { new - old } else { new }
                };
                (
                    Some(delta(rx, old_rx) as i64),
                    Some(delta(tx, old_tx) as i64),
                )
            }
            None => (None, None),
        }
    }
}

/// Sums a node's network counters over its interfaces (or takes the default interface's).
pub fn network_totals(network: &Option<NetworkStats>) -> (Option<u64>, Option<u64>) {
    let Some(n) = network else {
        return (None, None);
    };
    if n.interfaces.is_empty() {
        return (n.rx_bytes, n.tx_bytes);
    }
    let sum = |f: fn(&InterfaceStats) -> Option<u64>| {
        n.interfaces
            .iter()
            .map(f)
            .try_fold(0u64, |acc, v| v.map(|v| acc + v))
    };
    (sum(|i| i.rx_bytes), sum(|i| i.tx_bytes))
}

fn to_i64(v: Option<u64>) -> Option<i64> {
    v.map(|v| v as i64)
}

/// Turns one node's summary and throttling counters into rows.
pub fn container_rows(
    node: &str,
    time_ms: i64,
    summary: &Summary,
    throttling: &HashMap<(String, String, String), f64>,
    counters: &mut Counters,
    lookup: impl Fn(&str, &str, &str) -> Option<ContainerInfo>,
) -> Vec<ContainerUsageRow> {
    let mut rows = Vec::new();
    for pod in &summary.pods {
        for c in &pod.containers {
            let id = (
                pod.pod_ref.namespace.clone(),
                pod.pod_ref.name.clone(),
                c.name.clone(),
            );
            let key = format!("{}/{}/{}", id.0, id.1, id.2);
            let info = lookup(&id.0, &id.1, &id.2).unwrap_or_else(|| ContainerInfo {
                workload_kind: "Pod".into(),
                workload_name: id.1.clone(),
                ..ContainerInfo::default()
            });
            let ephemeral = match (
                c.rootfs.as_ref().and_then(|f| f.used_bytes),
                c.logs.as_ref().and_then(|f| f.used_bytes),
            ) {
                (None, None) => None,
                (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
            };
            rows.push(ContainerUsageRow {
                time_ms,
                cpu_cores: counters.cpu_cores(&key, &c.cpu),
                memory_working_set_bytes: to_i64(
                    c.memory.as_ref().and_then(|m| m.working_set_bytes),
                ),
                memory_rss_bytes: to_i64(c.memory.as_ref().and_then(|m| m.rss_bytes)),
                cpu_throttled_seconds: counters.throttled(&key, throttling.get(&id).copied()),
                gpu_utilization: None,
                gpu_memory_bytes: None,
                ephemeral_storage_bytes: to_i64(ephemeral),
                namespace: id.0,
                pod: id.1,
                container: id.2,
                node: node.to_string(),
                info,
            });
        }
    }
    rows
}

/// A node row: usage from the summary when the node was scraped, capacity always.
pub fn node_row(
    info: NodeInfo,
    time_ms: i64,
    summary: Option<&Summary>,
    counters: &mut Counters,
) -> NodeUsageRow {
    let mut row = NodeUsageRow {
        time_ms,
        cpu_cores: None,
        memory_working_set_bytes: None,
        network_rx_bytes: None,
        network_tx_bytes: None,
        filesystem_used_bytes: None,
        info,
    };
    if let Some(summary) = summary {
        let key = format!("node/{}", row.info.name);
        let stats = &summary.node;
        row.cpu_cores = counters.cpu_cores(&key, &stats.cpu);
        row.memory_working_set_bytes =
            to_i64(stats.memory.as_ref().and_then(|m| m.working_set_bytes));
        let (rx, tx) = network_totals(&stats.network);
        (row.network_rx_bytes, row.network_tx_bytes) = counters.network(&key, rx, tx);
        row.filesystem_used_bytes = to_i64(stats.fs.as_ref().and_then(|f| f.used_bytes));
    }
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    const CADVISOR: &str = r#"# HELP container_cpu_cfs_throttled_seconds_total Total time duration the container has been throttled.
# TYPE container_cpu_cfs_throttled_seconds_total counter
container_cpu_cfs_throttled_seconds_total{container="",id="/kubepods/burstable/pod1",image="",name="",namespace="shop",pod="web-1"} 9.5 1700000000000
container_cpu_cfs_throttled_seconds_total{container="app",id="/kubepods/burstable/pod1/abc",image="tally.local/busybox:1.35",name="abc",namespace="shop",pod="web-1"} 4.25 1700000000000
container_cpu_cfs_throttled_seconds_total{container="POD",id="/x",image="pause",name="p",namespace="shop",pod="web-1"} 0 1700000000000
container_memory_working_set_bytes{container="app",namespace="shop",pod="web-1"} 1234
"#;

    #[test]
    fn throttling_is_read_per_container_without_pod_level_series() {
        let t = parse_throttling(CADVISOR);
        assert_eq!(t.len(), 1, "{t:?}");
        assert_eq!(t[&("shop".into(), "web-1".into(), "app".into())], 4.25);
    }

    #[test]
    fn labels_with_escapes_parse() {
        let labels = parse_labels(r#"a="x",b="say \"hi\"",c="""#);
        assert_eq!(labels["a"], "x");
        assert_eq!(labels["b"], "say \"hi\"");
        assert_eq!(labels["c"], "");
    }

    fn cpu(total: u64, time: &str, instant: u64) -> Option<CpuStats> {
        Some(CpuStats {
            time: Some(time.into()),
            usage_nano_cores: Some(instant),
            usage_core_nano_seconds: Some(total),
        })
    }

    #[test]
    fn cpu_is_the_counter_increase_over_time_and_survives_resets() {
        let mut c = Counters::default();
        c.begin_round();
        // First sample: the kubelet's own rate.
        assert_eq!(
            c.cpu_cores(
                "k",
                &cpu(10_000_000_000, "2026-01-01T00:00:00Z", 300_000_000)
            ),
            Some(0.3)
        );
        // 15 s later, 7.5 core-seconds more: half a core.
        assert_eq!(
            c.cpu_cores("k", &cpu(17_500_000_000, "2026-01-01T00:00:15Z", 1)),
            Some(0.5)
        );
        // The container restarted: the counter went back; fall back to the instant rate.
        assert_eq!(
            c.cpu_cores(
                "k",
                &cpu(1_000_000_000, "2026-01-01T00:00:30Z", 250_000_000)
            ),
            Some(0.25)
        );
        // Missing fields are nulls, not zeros.
        assert_eq!(c.cpu_cores("k", &None), None);
        assert_eq!(
            c.cpu_cores(
                "j",
                &Some(CpuStats {
                    time: None,
                    usage_nano_cores: None,
                    usage_core_nano_seconds: Some(5)
                })
            ),
            None
        );
    }

    #[test]
    fn throttling_and_network_are_deltas_and_reset_aware() {
        let mut c = Counters::default();
        c.begin_round();
        assert_eq!(c.throttled("k", Some(4.0)), None);
        assert_eq!(c.throttled("k", Some(6.5)), Some(2.5));
        assert_eq!(c.throttled("k", Some(1.0)), Some(1.0));
        assert_eq!(c.throttled("k", None), None);
        assert_eq!(c.network("n", Some(100), Some(10)), (None, None));
        assert_eq!(c.network("n", Some(250), Some(30)), (Some(150), Some(20)));
        assert_eq!(c.network("n", Some(5), Some(40)), (Some(5), Some(10)));
    }

    #[test]
    fn stale_counters_are_forgotten() {
        let mut c = Counters::default();
        c.begin_round();
        c.throttled("gone", Some(1.0));
        for _ in 0..5 {
            c.begin_round();
        }
        assert_eq!(
            c.throttled("gone", Some(2.0)),
            None,
            "a forgotten counter starts over"
        );
    }

    #[test]
    fn a_real_summary_shape_becomes_rows() {
        let summary: Summary = serde_json::from_value(serde_json::json!({
            "node": {"nodeName": "n1", "cpu": {"time": "2026-01-01T00:00:00Z", "usageNanoCores": 500000000, "usageCoreNanoSeconds": 1},
                     "memory": {"workingSetBytes": 1000}, "network": {"rxBytes": 5, "txBytes": 6, "interfaces": [{"name": "eth0", "rxBytes": 5, "txBytes": 6}]},
                     "fs": {"usedBytes": 77}},
            "pods": [{"podRef": {"name": "web-1", "namespace": "shop", "uid": "u"},
                      "containers": [{"name": "app", "cpu": {"time": "2026-01-01T00:00:00Z", "usageNanoCores": 250000000},
                                      "memory": {"workingSetBytes": 2048, "rssBytes": 1024},
                                      "rootfs": {"usedBytes": 10}, "logs": {"usedBytes": 5}},
                                     {"name": "sidecar"}]}]
        }))
        .unwrap();
        let mut counters = Counters::default();
        counters.begin_round();
        let throttling = parse_throttling(CADVISOR);
        let rows = container_rows("n1", 42, &summary, &throttling, &mut counters, |_, _, _| {
            None
        });
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].cpu_cores, Some(0.25));
        assert_eq!(rows[0].memory_working_set_bytes, Some(2048));
        assert_eq!(rows[0].memory_rss_bytes, Some(1024));
        assert_eq!(rows[0].ephemeral_storage_bytes, Some(15));
        assert_eq!(rows[0].info.workload_kind, "Pod");
        assert_eq!(rows[1].cpu_cores, None);
        assert_eq!(rows[1].memory_working_set_bytes, None);
        let node = node_row(
            NodeInfo {
                name: "n1".into(),
                ..NodeInfo::default()
            },
            42,
            Some(&summary),
            &mut counters,
        );
        assert_eq!(node.cpu_cores, Some(0.5));
        assert_eq!(node.memory_working_set_bytes, Some(1000));
        assert_eq!(node.filesystem_used_bytes, Some(77));
        let unscraped = node_row(
            NodeInfo {
                name: "fake".into(),
                ..NodeInfo::default()
            },
            42,
            None,
            &mut counters,
        );
        assert_eq!(unscraped.cpu_cores, None);
    }
}
