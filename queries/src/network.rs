//! Network traffic: destination resolution, traffic classes and cost.
//!
//! Two tables that users read and extend live as SQL files: `network_class_rules.sql` (which
//! domain or address pattern is which traffic class) and `network_rates.sql` (the per-GiB
//! rate of each class per provider, with its date). `network_classified.sql` resolves and
//! classifies the flows of a window; each view below is that shared first half followed by its
//! own SELECT, assembled at compile time by [`network_view!`], so a view's file reads on its own
//! and the logic exists once.
//!
//! Add a query: write `queries/<name>.sql`, declare it here, list it in `ALL`, and pin it with
//! a golden test in `golden_network.rs`.

use crate::Query;

/// Declares a network view: `WITH class_rules AS (..), rates AS (..), <network_classified>`
/// followed by `queries/<name>.sql`, with its parameters beyond the window and provider
/// (cost_allocation.sql is one too: it adds its own CTEs after these).
macro_rules! network_view {
    ($name:literal) => {
        network_view!($name, [])
    };
    ($name:literal, [$($param:literal),*]) => {
        Query {
            name: $name,
            sql: concat!(
                "WITH class_rules AS (\n",
                include_str!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/network_class_rules.sql"
                )),
                "\n),\nrates AS (\n",
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/network_rates.sql")),
                "\n),\n",
                include_str!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/network_classified.sql"
                )),
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/", $name, ".sql")),
            ),
            params: &["window_start", "window_end", "provider" $(, $param)*],
        }
    };
}
pub(crate) use network_view;

/// The traffic class rules, one row per rule (the lowest matching priority wins).
pub const NETWORK_CLASS_RULES: Query = crate::query!("network_class_rules", []);
/// The per-GiB rates of each traffic class per provider, with their date and source.
pub const NETWORK_RATES: Query = crate::query!("network_rates", []);
/// Every flow of a window, resolved, classified and priced.
pub const NETWORK_FLOWS_CLASSIFIED: Query = network_view!("network_flows_classified");
/// Bytes and cost by traffic class.
pub const NETWORK_COST_BY_CLASS: Query = network_view!("network_cost_by_class");
/// Bytes and cost by source workload and destination workload (or domain).
pub const NETWORK_COST_BY_WORKLOAD_PAIR: Query = network_view!("network_cost_by_workload_pair");
/// Traffic leaving the cluster by destination domain.
pub const NETWORK_EGRESS_BY_DOMAIN: Query = network_view!("network_egress_by_domain");

/// Bytes sent and received by source namespace and destination domain, every flow, unpriced.
pub const NETWORK_BYTES_BY_NAMESPACE_DOMAIN: Query = crate::query!(
    "network_bytes_by_namespace_domain",
    ["window_start", "window_end"]
);

/// Every network query.
pub const ALL: &[Query] = &[
    NETWORK_CLASS_RULES,
    NETWORK_RATES,
    NETWORK_FLOWS_CLASSIFIED,
    NETWORK_COST_BY_CLASS,
    NETWORK_COST_BY_WORKLOAD_PAIR,
    NETWORK_EGRESS_BY_DOMAIN,
    NETWORK_BYTES_BY_NAMESPACE_DOMAIN,
];
