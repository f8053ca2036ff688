//! Instance types: for each node group, the cheapest instance type from the price list (the
//! shipped catalog, or the user's overrides) whose nodes hold the group's recommended
//! requests with headroom, in the group's region and capacity type (on demand or spot).
//!
//! A node of a type is assumed to offer its vCPUs minus 6 % and its memory minus 10 % to pods
//! (what kubelet, system reservations and eviction thresholds typically keep), minus what
//! the group's DaemonSets request on every node. The largest pod must fit on one node, and a
//! group of two or more nodes keeps at least two (one node down must not take it down).
//! One type per group; mixes of types are not searched.

use std::collections::BTreeMap;

/// A priced instance type (from `instance_prices.sql`).
#[derive(Debug, Clone, PartialEq)]
pub struct PricedType {
    pub provider: String,
    pub region: String,
    pub instance_type: String,
    pub capacity_type: String,
    pub hourly_usd: f64,
    pub cpu_cores: f64,
    pub memory_bytes: i64,
}

/// What one node group needs and has now.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupDemand {
    pub group: String,
    pub region: String,
    pub capacity_type: String,
    /// Instance types now, with their node counts.
    pub current_types: BTreeMap<String, usize>,
    pub current_nodes: usize,
    pub current_hourly_usd: f64,
    /// Recommended requests of the group's pods, DaemonSets excluded.
    pub cpu_cores: f64,
    pub memory_bytes: i64,
    /// The largest single pod.
    pub largest_cpu_cores: f64,
    pub largest_memory_bytes: i64,
    /// What DaemonSets request on each node.
    pub daemonset_cpu_cores: f64,
    pub daemonset_memory_bytes: i64,
}

/// The suggestion for one group.
#[derive(Debug, Clone, PartialEq)]
pub struct Suggestion {
    pub group: String,
    pub instance_type: String,
    pub nodes: usize,
    pub hourly_usd: f64,
    pub why: String,
}

/// What a node of `t` offers to pods.
fn usable(t: &PricedType) -> (f64, f64) {
    (t.cpu_cores * 0.94, t.memory_bytes as f64 * 0.90)
}

const GIB: f64 = 1_073_741_824.0;

/// The cheapest type for `demand` with `headroom` (0.2 = 20 % spare), or None when no priced
/// type in its region and capacity type can hold its largest pod.
pub fn suggest(demand: &GroupDemand, prices: &[PricedType], headroom: f64) -> Option<Suggestion> {
    let need_cpu = demand.cpu_cores * (1.0 + headroom);
    let need_mem = demand.memory_bytes as f64 * (1.0 + headroom);
    let min_nodes = demand.current_nodes.clamp(1, 2);
    let mut options: Vec<(f64, &PricedType, usize)> = prices
        .iter()
        .filter(|t| t.region == demand.region && t.capacity_type == demand.capacity_type)
        .filter_map(|t| {
            let (cpu, mem) = usable(t);
            let cpu = cpu - demand.daemonset_cpu_cores;
            let mem = mem - demand.daemonset_memory_bytes as f64;
            if cpu < demand.largest_cpu_cores || mem < demand.largest_memory_bytes as f64 {
                return None;
            }
            let n = ((need_cpu / cpu).ceil().max((need_mem / mem).ceil()) as usize).max(min_nodes);
            Some((n as f64 * t.hourly_usd, t, n))
        })
        .collect();
    options.sort_by(|a, b| {
        a.0.total_cmp(&b.0)
            .then_with(|| a.1.instance_type.cmp(&b.1.instance_type))
    });
    let (cost, best, n) = options.first()?;
    let runner_up = options
        .iter()
        .find(|o| o.1.instance_type != best.instance_type)
        .map(|(c, t, n)| {
            format!(
                "; next best {n} × {} at {:.2} $/month",
                t.instance_type,
                c * crate::HOURS_PER_MONTH
            )
        })
        .unwrap_or_default();
    let now: Vec<String> = demand
        .current_types
        .iter()
        .map(|(t, n)| format!("{n} × {t}"))
        .collect();
    Some(Suggestion {
        group: demand.group.clone(),
        instance_type: best.instance_type.clone(),
        nodes: *n,
        hourly_usd: *cost,
        why: format!(
            "The group's pods request (as recommended) {:.2} cores and {:.1} GiB; with {:.0} % headroom and {:.2} cores / {:.1} GiB of DaemonSets per node, {n} × {} ({} {}) fit for {:.2} $/month instead of {} for {:.2} $/month{runner_up}",
            demand.cpu_cores,
            demand.memory_bytes as f64 / GIB,
            headroom * 100.0,
            demand.daemonset_cpu_cores,
            demand.daemonset_memory_bytes as f64 / GIB,
            best.instance_type,
            demand.region,
            demand.capacity_type,
            cost * crate::HOURS_PER_MONTH,
            now.join(" + "),
            demand.current_hourly_usd * crate::HOURS_PER_MONTH,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: i64 = 1 << 30;

    fn priced(name: &str, cpu: f64, mem_gib: i64, usd: f64) -> PricedType {
        PricedType {
            provider: "aws".into(),
            region: "us-east-1".into(),
            instance_type: name.into(),
            capacity_type: "on_demand".into(),
            hourly_usd: usd,
            cpu_cores: cpu,
            memory_bytes: mem_gib * GIB,
        }
    }

    fn demand(cpu: f64, mem_gib: i64) -> GroupDemand {
        GroupDemand {
            group: "general".into(),
            region: "us-east-1".into(),
            capacity_type: "on_demand".into(),
            current_types: BTreeMap::from([("m5.4xlarge".into(), 4)]),
            current_nodes: 4,
            current_hourly_usd: 4.0 * 0.768,
            cpu_cores: cpu,
            memory_bytes: mem_gib * GIB,
            largest_cpu_cores: 1.0,
            largest_memory_bytes: 2 * GIB,
            daemonset_cpu_cores: 0.2,
            daemonset_memory_bytes: GIB / 2,
        }
    }

    /// 10 cores and 20 GiB + 20 % = 12 cores, 24 GiB.
    /// m5.xlarge offers 3.76 − 0.2 = 3.56 cores, 14.4 − 0.5 = 13.9 GiB: ⌈12 / 3.56⌉ = 4 nodes
    /// for 0.768 $/h. c5.2xlarge: 7.52 − 0.2 = 7.32 cores, 14.4 − 0.5 = 13.9 GiB: 2 nodes for
    /// 0.68 $/h: the cheapest. r5.large cannot hold the 2 GiB... it can (14.4 GiB) but only
    /// 1.68 cores: 8 nodes for 1.008 $/h. A us-west-2 type is not considered.
    #[test]
    fn the_cheapest_type_that_holds_the_requests_with_headroom_wins() {
        let mut west = priced("c5.4xlarge", 16.0, 32, 0.01);
        west.region = "us-west-2".into();
        let prices = [
            priced("m5.xlarge", 4.0, 16, 0.192),
            priced("c5.2xlarge", 8.0, 16, 0.34),
            priced("r5.large", 2.0, 16, 0.126),
            west,
        ];
        let s = suggest(&demand(10.0, 20), &prices, 0.2).unwrap();
        assert_eq!((s.instance_type.as_str(), s.nodes), ("c5.2xlarge", 2));
        assert!((s.hourly_usd - 0.68).abs() < 1e-9);
        assert!(s.why.contains("instead of 4 × m5.4xlarge"), "{}", s.why);
        assert!(s.why.contains("next best 4 × m5.xlarge"), "{}", s.why);
    }

    #[test]
    fn the_largest_pod_must_fit_and_two_nodes_stay() {
        let prices = [
            priced("t.small", 1.0, 2, 0.01),
            priced("m5.xlarge", 4.0, 16, 0.192),
        ];
        let s = suggest(&demand(0.5, 1), &prices, 0.2).unwrap();
        assert_eq!((s.instance_type.as_str(), s.nodes), ("m5.xlarge", 2));
        assert!(suggest(&demand(0.5, 1), &prices[..1], 0.2).is_none());
    }
}
