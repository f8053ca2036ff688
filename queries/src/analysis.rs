//! Rightsizing, replicas, node consolidation, instance types and cost allocation.
//!
//! Add a query: write `queries/<name>.sql`, declare it here with `crate::query!`, list it in
//! `ALL`, and pin it with a golden test on a hand-made fixture (see `golden_analysis.rs`).

use crate::Query;

/// Recommended requests and limits per workload container (kind `rightsizing`).
pub const RIGHTSIZING: Query = crate::query!(
    "rightsizing",
    [
        "window_start",
        "window_end",
        "cpu_quantile",
        "memory_margin",
        "min_cpu_cores",
        "min_memory_bytes",
        "oom_bump_bytes",
        "oom_bump_factor",
        "confident_hours",
        "hold_below_confidence",
        "cpu_limit_policy",
        "memory_limit_policy",
        "cpu_core_hour_usd",
        "memory_gib_hour_usd"
    ]
);

/// HPA minimum/maximum and replicas per Deployment (kinds `hpa` and `replicas`), made with
/// the rightsizing rows of the same run.
pub const REPLICAS: Query = crate::query!(
    "replicas",
    [
        "window_start",
        "window_end",
        "run_id",
        "confident_hours",
        "headroom",
        "hpa_target",
        "swing_for_hpa",
        "cpu_core_hour_usd",
        "memory_gib_hour_usd"
    ]
);

/// Every node with its price and CPU/memory unit prices.
pub const NODE_PRICES: Query = crate::query!(
    "node_prices",
    [
        "window_start",
        "window_end",
        "default_cpu_core_hour_usd",
        "default_memory_gib_hour_usd"
    ]
);

/// The running pods with their requests, PDB and scheduling constraints (consolidation's input).
pub const CONSOLIDATION_PODS: Query =
    crate::query!("consolidation_pods", ["window_start", "window_end"]);

/// The effective price of every instance type (user rows override the catalog).
pub const INSTANCE_PRICES: Query = crate::query!("instance_prices", ["at"]);

/// Cost allocation (OpenCost's model), aggregated by `$aggregate`. Columns: name,
/// cpu_cores, cpu_core_request_hours, cpu_core_usage_hours, cpu_core_hours, cpu_cost_usd,
/// ram_byte_request_hours, ram_byte_usage_hours, ram_byte_hours, ram_cost_usd, gpu_cost_usd,
/// pv_cost_usd, network_cost_usd, network_transfer_bytes, network_receive_bytes,
/// total_cost_usd, cpu_efficiency, ram_efficiency, total_efficiency, first_hour, last_hour.
/// Its network cost comes from network_classified.sql, so `$provider` is a parameter too.
pub const COST_ALLOCATION: Query = crate::network::network_view!(
    "cost_allocation",
    [
        "aggregate",
        "default_cpu_core_hour_usd",
        "default_memory_gib_hour_usd"
    ]
);

/// The rows of one analysis run (the newest when `$run_id` is ''), of one kind or all ('').
pub const LATEST_RECOMMENDATIONS: Query =
    crate::query!("latest_recommendations", ["run_id", "kind"]);

/// The node groups the newest (or `$run_id`'s) consolidation plan would shrink, with the
/// nodes that can go: what the operator turns into NodeGroupRecommendation objects.
pub const OPERATOR_NODE_GROUPS: Query = crate::query!("operator_node_groups", ["run_id"]);

pub const ALL: &[Query] = &[
    RIGHTSIZING,
    REPLICAS,
    NODE_PRICES,
    CONSOLIDATION_PODS,
    INSTANCE_PRICES,
    COST_ALLOCATION,
    LATEST_RECOMMENDATIONS,
    OPERATOR_NODE_GROUPS,
];
