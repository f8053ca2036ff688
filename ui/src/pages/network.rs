//! Network: traffic and cost by class (same-zone, cross-zone, cross-region, internet egress,
//! private link, control plane, cloud APIs, …), egress by domain, the costliest workload
//! pairs, and raw traffic by destination and by talker. Classes and rates come from
//! queries/network_class_rules.sql and queries/network_rates.sql, for the provider of the
//! nodes' instance types.

use axum::extract::State;
use axum::response::Response;
use maud::{Markup, html};
use tally_queries::{Param, network, ui};

use crate::chart::bars;
use crate::data::{self, Rows};
use crate::format;
use crate::layout::{self, card};
use crate::{UiState, Viewer};

fn destinations(rows: &Rows) -> Markup {
    let top: Vec<(String, f64)> = rows
        .iter()
        .take(12)
        .map(|r| {
            (
                format!(
                    "{}:{}",
                    r.text("destination"),
                    r.int("dst_port").unwrap_or(0)
                ),
                r.float("total_bytes").unwrap_or(0.0),
            )
        })
        .collect();
    html! {
        (bars("Bytes by destination", &top, |v| format::bytes(Some(v))))
        div.scroll {
            table.data {
                thead { tr { th scope="col" { "Destination" } th.n scope="col" { "Port" } th scope="col" { "Protocol" } th.n scope="col" { "Sources" } th.n scope="col" { "Sent" } th.n scope="col" { "Received" } } }
                tbody {
                    @for r in rows.iter() {
                        tr {
                            td { code { (r.text("destination")) } }
                            td.n { (r.int("dst_port").unwrap_or(0)) }
                            td { (r.text("protocol")) }
                            td.n { (r.int("sources").unwrap_or(0)) }
                            td.n { (format::bytes(r.float("tx_bytes"))) }
                            td.n { (format::bytes(r.float("rx_bytes"))) }
                        }
                    }
                }
            }
        }
    }
}

fn talkers(rows: &Rows) -> Markup {
    html! {
        table.data {
            thead { tr { th scope="col" { "Namespace" } th scope="col" { "Pod" } th.n scope="col" { "Destinations" } th.n scope="col" { "Sent" } th.n scope="col" { "Received" } } }
            tbody {
                @for r in rows.iter() {
                    tr {
                        td { (r.text("namespace")) }
                        td { code { (r.text("pod")) } }
                        td.n { (r.int("destinations").unwrap_or(0)) }
                        td.n { (format::bytes(r.float("tx_bytes"))) }
                        td.n { (format::bytes(r.float("rx_bytes"))) }
                    }
                }
            }
        }
    }
}

/// Scales a cost over the hours of the window that have traffic to a month.
fn monthly(hours: i64, usd: Option<f64>) -> Option<f64> {
    usd.map(|v| v * super::overview::HOURS_PER_MONTH / hours.max(1) as f64)
}

fn classes(hours: i64, rows: &Rows) -> Markup {
    let bars_data: Vec<(String, f64)> = rows
        .iter()
        .map(|r| {
            (
                r.text("class").to_string(),
                monthly(hours, r.float("cost_usd")).unwrap_or(0.0),
            )
        })
        .collect();
    html! {
        (bars("Network cost per month by traffic class", &bars_data, |v| format::usd(Some(v))))
        table.data {
            thead { tr { th scope="col" { "Class" } th.n scope="col" { "Flows" } th.n scope="col" { "Sent" } th.n scope="col" { "Received" } th.n scope="col" { "Cost / month" } } }
            tbody {
                @for r in rows.iter() {
                    tr {
                        td { (r.text("class")) }
                        td.n { (r.int("flows").unwrap_or(0)) }
                        td.n { (format::bytes(r.float("tx_bytes"))) }
                        td.n { (format::bytes(r.float("rx_bytes"))) }
                        td.n { (format::usd(monthly(hours, r.float("cost_usd")))) }
                    }
                }
            }
        }
    }
}

fn egress(hours: i64, rows: &Rows) -> Markup {
    html! {
        div.scroll {
            table.data {
                thead { tr { th scope="col" { "Domain or address" } th scope="col" { "Class" } th.n scope="col" { "Client pods" } th.n scope="col" { "Sent" } th.n scope="col" { "Received" } th.n scope="col" { "Cost / month" } } }
                tbody {
                    @for r in rows.iter().take(50) {
                        tr {
                            td { code { (r.text("destination")) } }
                            td { (r.text("class")) }
                            td.n { (r.int("client_pods").unwrap_or(0)) }
                            td.n { (format::bytes(r.float("tx_bytes"))) }
                            td.n { (format::bytes(r.float("rx_bytes"))) }
                            td.n { (format::usd(monthly(hours, r.float("cost_usd")))) }
                        }
                    }
                }
            }
        }
    }
}

fn pairs(hours: i64, rows: &Rows) -> Markup {
    html! {
        div.scroll {
            table.data {
                thead { tr { th scope="col" { "From" } th scope="col" { "To" } th scope="col" { "Class" } th.n scope="col" { "Sent" } th.n scope="col" { "Received" } th.n scope="col" { "Cost / month" } } }
                tbody {
                    @for r in rows.iter().take(25) {
                        tr {
                            td { (r.text("src_namespace")) "/" (r.text("src_workload")) }
                            td {
                                @if !r.text("dst_namespace").is_empty() { (r.text("dst_namespace")) "/" }
                                (r.text("dst_workload"))
                            }
                            td { (r.text("class")) }
                            td.n { (format::bytes(r.float("tx_bytes"))) }
                            td.n { (format::bytes(r.float("rx_bytes"))) }
                            td.n { (format::usd(monthly(hours, r.float("cost_usd")))) }
                        }
                    }
                }
            }
        }
    }
}

/// The network page's tables over the window, computed in the background: classifying
/// and pricing every flow of a large cluster takes most of a second.
pub struct NetworkTables {
    classes: Rows,
    egress: Rows,
    pairs: Rows,
    destinations: Rows,
    talkers: Rows,
    /// Hours of the window with traffic, which monthly figures scale from.
    hours: i64,
    computed: std::time::Instant,
}

/// The kept network tables.
pub type NetworkCache = crate::background::Background<NetworkTables>;

impl crate::background::Computed for NetworkTables {
    const WHAT: &'static str = "the network page";

    async fn compute(state: &UiState) -> Result<Self, data::DataError> {
        let window = data::window((state.now)(), state.window_days);
        // '': the provider whose catalog holds the nodes' instance types.
        let mut priced: Vec<(&str, Param)> = window.to_vec();
        priced.push(("provider", Param::Text(String::new())));
        let (classes, egress, pairs, destinations, talkers, hours) = tokio::join!(
            data::run(&state.engine, &network::NETWORK_COST_BY_CLASS, &priced),
            data::run(&state.engine, &network::NETWORK_EGRESS_BY_DOMAIN, &priced),
            data::run(
                &state.engine,
                &network::NETWORK_COST_BY_WORKLOAD_PAIR,
                &priced
            ),
            data::run(&state.engine, &ui::NETWORK_DESTINATIONS, &window),
            data::run(&state.engine, &ui::NETWORK_TALKERS, &window),
            data::run(&state.engine, &ui::NETWORK_HOURS, &window),
        );
        Ok(NetworkTables {
            classes: classes?,
            egress: egress?,
            pairs: pairs?,
            destinations: destinations?,
            talkers: talkers?,
            hours: hours?
                .iter()
                .next()
                .and_then(|r| r.int("hours"))
                .unwrap_or(0),
            computed: std::time::Instant::now(),
        })
    }

    fn fresh(&self, _state: &UiState) -> bool {
        self.computed.elapsed() <= crate::background::max_age(self.destinations.is_empty())
    }
}

/// `GET /network`.
pub async fn page(State(state): State<UiState>, viewer: Viewer) -> Response {
    let tables = state
        .network
        .get_within(&state, std::time::Duration::from_secs(2))
        .await;
    let content = html! {
        h1 { "Network" }
        p.lead { "Traffic the node agents measured over the last " (state.window_days) " days." }
        @match &tables {
            None => {
                div hx-get="/network" hx-trigger="load delay:1s" hx-target="#main" hx-swap="innerHTML" {
                    @if let Some(error) = state.network.last_error() {
                        p.error role="alert" { "Reading the traffic failed: " (error) ". Retrying…" }
                    } @else {
                        p.progress role="status" { span.spinner aria-hidden="true" {} "Classifying and pricing the window's traffic… this page fills in when it is done." }
                    }
                }
            }
            Some(t) => {
                (card("Traffic and cost by class", if t.classes.is_empty() {
                    layout::empty("No traffic measured yet.", "Flows appear once the netmon agent runs on the nodes (the network_flows table).")
                } else {
                    html! {
                        (classes(t.hours, &t.classes))
                        p.hint { "Each flow is priced at its class's list rate per GiB (queries/network_rates.sql) for the provider of the nodes' instance types; a cluster whose instance types are in no catalog shows its classes at no cost. Costs per month are the window's costs scaled to 730 hours from the hours that have traffic." }
                    }
                }))
                (card("Egress by domain", if t.egress.is_empty() {
                    layout::empty("No traffic leaves the cluster.", "Destinations outside the cluster appear here, named by the DNS answers the agents saw.")
                } else {
                    egress(t.hours, &t.egress)
                }))
                (card("Costliest workload pairs", if t.pairs.is_empty() {
                    layout::empty("No traffic measured yet.", "Flows appear once the netmon agent runs on the nodes.")
                } else {
                    pairs(t.hours, &t.pairs)
                }))
                (card("Traffic by destination", if t.destinations.is_empty() {
                    layout::empty("No traffic measured yet.", "Flows appear once the netmon agent runs on the nodes (the network_flows table).")
                } else {
                    destinations(&t.destinations)
                }))
                (card("Top talkers", if t.talkers.is_empty() {
                    layout::empty("No traffic measured yet.", "Flows appear once the netmon agent runs on the nodes.")
                } else {
                    talkers(&t.talkers)
                }))
            }
        }
        (layout::sources(&[&network::NETWORK_COST_BY_CLASS, &network::NETWORK_EGRESS_BY_DOMAIN, &network::NETWORK_COST_BY_WORKLOAD_PAIR, &ui::NETWORK_DESTINATIONS, &ui::NETWORK_TALKERS, &ui::NETWORK_HOURS]))
    };
    layout::respond(&viewer, "/network", "Network", content)
}
