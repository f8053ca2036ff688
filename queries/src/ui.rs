//! Queries behind the web UI pages and the SQL console examples.
//!
//! Add a query: write `queries/<name>.sql`, declare it here with `crate::query!`, list it in
//! `ALL`, and pin it with a golden test on a hand-made fixture (see `golden_ui.rs`).

use crate::Query;

/// Workloads page: one row per workload (spec now, usage, OOM kills, savings, status).
pub const WORKLOADS: Query = crate::query!("ui_workloads", ["window_start", "window_end"]);
/// Workload page: the newest spec of each container.
pub const WORKLOAD_SPEC: Query = crate::query!(
    "ui_workload_spec",
    ["namespace", "kind", "name", "window_end"]
);
/// Workload page: usage per container and hour (the chart).
pub const WORKLOAD_USAGE_HOURLY: Query = crate::query!(
    "ui_workload_usage_hourly",
    ["namespace", "kind", "name", "window_start", "window_end"]
);
/// Workload page: percentiles per container over the window (the chart's reference lines).
pub const WORKLOAD_PERCENTILES: Query = crate::query!(
    "ui_workload_percentiles",
    ["namespace", "kind", "name", "window_start", "window_end"]
);
/// Workload page: OOM kills, restarts and evictions.
pub const WORKLOAD_EVENTS: Query = crate::query!(
    "ui_workload_events",
    ["namespace", "kind", "name", "window_start", "window_end"]
);
/// Workload page: the history of its recommendations.
pub const WORKLOAD_RECOMMENDATIONS: Query =
    crate::query!("ui_workload_recommendations", ["namespace", "kind", "name"]);
/// Workload page: its audit log.
pub const WORKLOAD_ACTIONS: Query =
    crate::query!("ui_workload_actions", ["namespace", "kind", "name"]);
/// Nodes page (and the overview's capacity): one row per node.
pub const NODES: Query = crate::query!("ui_nodes", ["window_start", "window_end"]);
/// Overview: the cluster's CPU and memory hour by hour.
pub const CLUSTER_USAGE_HOURLY: Query =
    crate::query!("ui_cluster_usage_hourly", ["window_start", "window_end"]);
/// Network page: traffic by destination.
pub const NETWORK_DESTINATIONS: Query =
    crate::query!("ui_network_destinations", ["window_start", "window_end"]);
/// Network page: the hours of the window that have traffic (for monthly figures).
pub const NETWORK_HOURS: Query = crate::query!("ui_network_hours", ["window_start", "window_end"]);
/// Network page: top talkers.
pub const NETWORK_TALKERS: Query =
    crate::query!("ui_network_talkers", ["window_start", "window_end"]);
/// Recommendations page: the newest run with each recommendation's status.
pub const RECOMMENDATIONS: Query = crate::query!("ui_recommendations", []);
/// Recommendations page: the audit log.
pub const ACTIONS: Query = crate::query!("ui_actions", []);
/// Settings page: the price in force per instance type and its source.
pub const PRICES: Query = crate::query!("ui_prices", []);
/// SQL console example: CPU per namespace and hour (a time series).
pub const EXAMPLE_CPU_BY_NAMESPACE_HOURLY: Query = crate::query!(
    "example_cpu_by_namespace_hourly",
    ["window_start", "window_end"]
);
/// SQL console example: OOM-killed workloads.
pub const EXAMPLE_OOM_KILLS: Query =
    crate::query!("example_oom_kills", ["window_start", "window_end"]);
/// SQL console example: bytes per looked-up domain.
pub const EXAMPLE_EGRESS_BY_DOMAIN: Query =
    crate::query!("example_egress_by_domain", ["window_start", "window_end"]);

/// The SQL console's examples, in the order it lists them.
pub const EXAMPLES: &[Query] = &[
    EXAMPLE_CPU_BY_NAMESPACE_HOURLY,
    EXAMPLE_OOM_KILLS,
    EXAMPLE_EGRESS_BY_DOMAIN,
];

pub const ALL: &[Query] = &[
    WORKLOADS,
    WORKLOAD_SPEC,
    WORKLOAD_USAGE_HOURLY,
    WORKLOAD_PERCENTILES,
    WORKLOAD_EVENTS,
    WORKLOAD_RECOMMENDATIONS,
    WORKLOAD_ACTIONS,
    NODES,
    CLUSTER_USAGE_HOURLY,
    NETWORK_DESTINATIONS,
    NETWORK_TALKERS,
    NETWORK_HOURS,
    RECOMMENDATIONS,
    ACTIONS,
    PRICES,
    EXAMPLE_CPU_BY_NAMESPACE_HOURLY,
    EXAMPLE_OOM_KILLS,
    EXAMPLE_EGRESS_BY_DOMAIN,
];
