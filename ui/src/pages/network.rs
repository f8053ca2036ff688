//! Network: raw traffic by destination and the top talkers. Classification (same-zone,
//! cross-zone, egress, private link, …) and per-class cost arrive with network monitoring's
//! queries; until then the page says so and shows only what is measured.

use axum::extract::State;
use axum::response::Response;
use maud::{Markup, html};
use tally_queries::ui;

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

/// `GET /network`.
pub async fn page(State(state): State<UiState>, viewer: Viewer) -> Response {
    let window = data::window((state.now)(), state.window_days);
    let (destinations_rows, talkers_rows) = tokio::join!(
        data::run(&state.engine, &ui::NETWORK_DESTINATIONS, &window),
        data::run(&state.engine, &ui::NETWORK_TALKERS, &window),
    );
    let content = html! {
        h1 { "Network" }
        p.lead { "Traffic the node agents measured over the last " (state.window_days) " days." }
        (layout::not_yet("Traffic classes and network cost:", "classification (same-zone, cross-zone, internet egress, private link, control plane, cloud APIs) and per-GiB cost arrive with network monitoring. Below is raw traffic by destination."))
        (card("Traffic by destination", match &destinations_rows {
            Ok(rows) if rows.is_empty() => layout::empty("No traffic measured yet.", "Flows appear once the netmon agent runs on the nodes (the network_flows table)."),
            Ok(rows) => destinations(rows),
            Err(error) => layout::data_error(error),
        }))
        (card("Top talkers", match &talkers_rows {
            Ok(rows) if rows.is_empty() => layout::empty("No traffic measured yet.", "Flows appear once the netmon agent runs on the nodes."),
            Ok(rows) => talkers(rows),
            Err(error) => layout::data_error(error),
        }))
        (layout::sources(&[&ui::NETWORK_DESTINATIONS, &ui::NETWORK_TALKERS]))
    };
    layout::respond(&viewer, "/network", "Network", content)
}
