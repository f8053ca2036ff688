//! Recommendations and actions: what the newest analysis run recommends with each one's
//! status (pending, approved, applied, rolled back, …), and the audit log.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::Response;
use maud::{Markup, html};
use tally_queries::ui;

use crate::data::{self, Rows};
use crate::format;
use crate::layout::{self, card, stat};
use crate::{UiState, Viewer};

fn recommendations(rows: &Rows) -> Markup {
    let mut by_status: BTreeMap<&str, (usize, f64)> = BTreeMap::new();
    for r in rows.iter() {
        let entry = by_status.entry(r.text("status")).or_default();
        entry.0 += 1;
        entry.1 += r.float("savings_monthly_usd").unwrap_or(0.0);
    }
    html! {
        div.stats {
            @for (status, (n, usd)) in &by_status {
                (stat(status, &n.to_string(), &format!("{} / month", format::usd(Some(*usd)))))
            }
        }
        div.scroll {
            table.data {
                thead { tr {
                    th scope="col" { "Target" } th scope="col" { "What" } th scope="col" { "Container" }
                    th.n scope="col" { "CPU request" } th.n scope="col" { "Memory request" } th.n scope="col" { "Replicas" }
                    th.n scope="col" { "Confidence" } th.n scope="col" { "Saves / month" } th scope="col" { "Why" } th scope="col" { "Status" }
                } }
                tbody {
                    @for r in rows.iter() {
                        tr {
                            td {
                                @if r.text("target_kind") == "NodeGroup" || r.text("namespace").is_empty() {
                                    (r.text("target_kind")) " " code { (r.text("target_name")) }
                                } @else {
                                    a href=(super::workloads::workload_href(r.text("namespace"), r.text("target_kind"), r.text("target_name"))) { (r.text("namespace")) "/" (r.text("target_name")) }
                                }
                            }
                            td { (r.text("kind")) }
                            td { (r.opt_text("container").unwrap_or("")) }
                            td.n { (format::cores(r.float("current_cpu_request_cores"))) " → " (format::cores(r.float("recommended_cpu_request_cores"))) }
                            td.n { (format::bytes(r.float("current_memory_request_bytes"))) " → " (format::bytes(r.float("recommended_memory_request_bytes"))) }
                            td.n { @if let (Some(a), Some(b)) = (r.int("current_replicas"), r.int("recommended_replicas")) { (a) " → " (b) } }
                            td.n { (format::percent(r.float("confidence"))) }
                            td.n { (format::usd(r.float("savings_monthly_usd"))) }
                            td { (r.text("why")) }
                            td { span class=(format!("badge s-{}", r.text("status"))) { (r.text("status")) } }
                        }
                    }
                }
            }
        }
    }
}

fn audit(rows: &Rows) -> Markup {
    html! {
        div.scroll {
            table.data {
                thead { tr { th scope="col" { "When" } th scope="col" { "Operation" } th scope="col" { "Target" } th scope="col" { "By" } th scope="col" { "Policy" } th scope="col" { "Result" } th scope="col" { "Message" } } }
                tbody {
                    @for r in rows.iter() {
                        tr {
                            td { @if let Some(t) = r.time("time") { (format::time(t)) } }
                            td { (r.text("operation")) }
                            td { (r.text("namespace")) "/" (r.text("target_name")) " " small { (r.text("target_kind")) } }
                            td { (r.text("actor")) }
                            td { (r.opt_text("policy").unwrap_or("")) }
                            td { span class=(format!("badge s-{}", r.text("result"))) { (r.text("result")) } }
                            td { (r.opt_text("message").unwrap_or("")) }
                        }
                    }
                }
            }
        }
    }
}

/// `GET /recommendations`.
pub async fn page(State(state): State<UiState>, viewer: Viewer) -> Response {
    let (recs, actions) = tokio::join!(
        data::run(&state.engine, &ui::RECOMMENDATIONS, &[]),
        data::run(&state.engine, &ui::ACTIONS, &[]),
    );
    let content = html! {
        h1 { "Recommendations and actions" }
        (card("Newest recommendations", match &recs {
            Ok(rows) if rows.is_empty() => layout::empty("No recommendations yet.", "The analysis writes them once there is enough history; they show up here with their status."),
            Ok(rows) => recommendations(rows),
            Err(error) => layout::data_error(error),
        }))
        (card("Audit log", match &actions {
            Ok(rows) if rows.is_empty() => layout::empty("Nothing happened yet.", "Approvals, rejections and every change the operator makes or refuses are logged here."),
            Ok(rows) => audit(rows),
            Err(error) => layout::data_error(error),
        }))
        (layout::sources(&[&ui::RECOMMENDATIONS, &ui::ACTIONS]))
    };
    layout::respond(&viewer, "/recommendations", "Recommendations", content)
}
