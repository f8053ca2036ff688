//! Settings: the prices Tally uses and where each comes from.

use axum::extract::State;
use axum::response::Response;
use maud::html;
use tally_queries::ui;

use crate::data;
use crate::format;
use crate::layout::{self, card};
use crate::{UiState, Viewer};

/// `GET /settings`.
pub async fn page(State(state): State<UiState>, viewer: Viewer) -> Response {
    let prices = data::run(&state.engine, &ui::PRICES, &[]).await;
    let content = html! {
        h1 { "Settings" }
        (card("Prices", match &prices {
            Ok(rows) if rows.is_empty() => layout::empty(
                "No prices are stored yet.",
                "Tally seeds the prices table from the catalog shipped in the image; add your own (negotiated or reserved) prices as rows with source `user`, which win over the catalog. Until then costs use default unit prices per core-hour and GiB-hour.",
            ),
            Ok(rows) => html! {
                p { "The price in force for each instance type. A row with source " code { "user" } " overrides the shipped catalog." }
                div.scroll {
                    table.data {
                        thead { tr {
                            th scope="col" { "Provider" } th scope="col" { "Region" } th scope="col" { "Instance type" } th scope="col" { "Capacity" }
                            th.n scope="col" { "Per hour" } th.n scope="col" { "Per month" } th.n scope="col" { "CPU" } th.n scope="col" { "Memory" } th scope="col" { "Source" } th scope="col" { "Since" }
                        } }
                        tbody {
                            @for r in rows.iter() {
                                tr {
                                    td { (r.text("provider")) } td { (r.text("region")) } td { code { (r.text("instance_type")) } } td { (r.text("capacity_type")) }
                                    td.n { (r.float("hourly_usd").map_or("–".to_string(), |v| format!("${v:.4}"))) }
                                    td.n { (format::usd(r.float("hourly_usd").map(|v| v * super::overview::HOURS_PER_MONTH))) }
                                    td.n { (format::cores(r.float("cpu_cores"))) }
                                    td.n { (format::bytes(r.float("memory_bytes"))) }
                                    td { span class=(format!("badge s-{}", r.text("source"))) { (r.text("source")) } }
                                    td { @if let Some(t) = r.time("since") { (format::time(t)) } }
                                }
                            }
                        }
                    }
                }
            },
            Err(error) => layout::data_error(error),
        }))
        (card("Defaults", html! {
            p { "Nodes whose instance type has no price are charged " (format!("${:.6}", super::overview::DEFAULT_CPU_CORE_HOUR_USD)) " per core-hour and " (format!("${:.6}", super::overview::DEFAULT_MEMORY_GIB_HOUR_USD)) " per GiB-hour (OpenCost's defaults)." }
            p { "Pages summarise the last " (state.window_days) " days." }
        }))
        (layout::sources(&[&ui::PRICES]))
    };
    layout::respond(&viewer, "/settings", "Settings", content)
}
