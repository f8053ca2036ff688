//! Nodes: utilisation per node and node group (requests and usage against allocatable) and
//! the consolidation plan with its reasons.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Query, State};
use axum::response::Response;
use maud::{Markup, html};
use tally_queries::ui;

use crate::chart::gauge;
use crate::data::{self, Row, Rows};
use crate::format;
use crate::layout::{self, card};
use crate::{UiState, Viewer};

#[derive(Default)]
struct Group {
    nodes: usize,
    cpu_allocatable: f64,
    cpu_requested: f64,
    cpu_used: f64,
    memory_allocatable: f64,
    memory_requested: f64,
    memory_used: f64,
}

fn groups(rows: &Rows) -> Markup {
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    for r in rows.iter() {
        let g = groups
            .entry(r.opt_text("node_group").unwrap_or("(none)").to_string())
            .or_default();
        g.nodes += 1;
        g.cpu_allocatable += r.float("cpu_allocatable_cores").unwrap_or(0.0);
        g.cpu_requested += r.float("cpu_request_cores").unwrap_or(0.0);
        g.cpu_used += r.float("cpu_mean_cores").unwrap_or(0.0);
        g.memory_allocatable += r.float("memory_allocatable_bytes").unwrap_or(0.0);
        g.memory_requested += r.float("memory_request_bytes").unwrap_or(0.0);
        g.memory_used += r.float("memory_mean_bytes").unwrap_or(0.0);
    }
    html! {
        table.data {
            thead { tr {
                th scope="col" { "Node group" } th.n scope="col" { "Nodes" }
                th.n scope="col" { "CPU allocatable" } th scope="col" { "CPU requested" } th scope="col" { "CPU used (mean)" }
                th.n scope="col" { "Memory allocatable" } th scope="col" { "Memory requested" } th scope="col" { "Memory used (mean)" }
            } }
            tbody {
                @for (name, g) in &groups {
                    tr {
                        td { (name) }
                        td.n { (g.nodes) }
                        td.n { (format::cores(Some(g.cpu_allocatable))) }
                        td { (gauge(g.cpu_requested, g.cpu_allocatable)) }
                        td { (gauge(g.cpu_used, g.cpu_allocatable)) }
                        td.n { (format::bytes(Some(g.memory_allocatable))) }
                        td { (gauge(g.memory_requested, g.memory_allocatable)) }
                        td { (gauge(g.memory_used, g.memory_allocatable)) }
                    }
                }
            }
        }
    }
}

fn nodes<'a>(rows: impl Iterator<Item = Row<'a>>) -> Markup {
    html! {
        div.scroll {
            table.data {
                thead { tr {
                    th scope="col" { "Node" } th scope="col" { "Group" } th scope="col" { "Zone" }
                    th scope="col" { "Type" } th scope="col" { "Capacity" } th.n scope="col" { "Pods" }
                    th scope="col" { "CPU requested" } th scope="col" { "CPU used (mean / peak)" }
                    th scope="col" { "Memory requested" } th scope="col" { "Memory used (mean)" }
                } }
                tbody {
                    @for r in rows {
                        @let cpu = r.float("cpu_allocatable_cores").unwrap_or(0.0);
                        @let memory = r.float("memory_allocatable_bytes").unwrap_or(0.0);
                        tr {
                            td { code { (r.text("node")) } }
                            td { (r.opt_text("node_group").unwrap_or("")) }
                            td { (r.opt_text("zone").unwrap_or("")) }
                            td { (r.opt_text("instance_type").unwrap_or("")) }
                            td { (r.opt_text("capacity_type").unwrap_or("")) }
                            td.n { (r.int("pods").unwrap_or(0)) }
                            td { (gauge(r.float("cpu_request_cores").unwrap_or(0.0), cpu)) }
                            td { (gauge(r.float("cpu_mean_cores").unwrap_or(0.0), cpu)) " / " (format::cores(r.float("cpu_max_cores"))) }
                            td { (gauge(r.float("memory_request_bytes").unwrap_or(0.0), memory)) }
                            td { (gauge(r.float("memory_mean_bytes").unwrap_or(0.0), memory)) }
                        }
                    }
                }
            }
        }
    }
}

fn consolidation(recs: &Rows) -> Markup {
    let plan: Vec<_> = recs
        .iter()
        .filter(|r| r.text("kind") == "consolidation")
        .collect();
    html! {
        @if plan.is_empty() {
            (layout::empty("No consolidation plan yet.", "The analysis simulates moving the pods of under-used nodes onto the others (requests, taints, affinity, PDBs) and explains what it would do, or why it would do nothing. Its newest plan shows here once it has run."))
        } @else {
            table.data {
                thead { tr { th scope="col" { "Target" } th.n scope="col" { "Nodes now → after" } th.n scope="col" { "Saves / month" } th scope="col" { "Why, and what cannot go" } th scope="col" { "Status" } } }
                tbody {
                    @for r in &plan {
                        tr {
                            td { (r.text("target_kind")) " " code { (r.text("target_name")) } }
                            td.n { @if let (Some(a), Some(b)) = (r.int("current_replicas"), r.int("recommended_replicas")) { (a) " → " (b) } }
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

/// Nodes per page of the table (the groups above it cover every node).
pub const NODES_PER_PAGE: usize = 100;

/// The nodes page's rows (`queries/ui_nodes.sql` over the window), computed in the
/// background: at 2,500 nodes the query takes a few hundred milliseconds.
pub struct NodeRows {
    rows: Rows,
    computed: std::time::Instant,
}

/// The kept node rows.
pub type NodesCache = crate::background::Background<NodeRows>;

impl crate::background::Computed for NodeRows {
    const WHAT: &'static str = "the nodes page";

    async fn compute(state: &UiState) -> Result<Self, data::DataError> {
        let window = data::window((state.now)(), state.window_days);
        Ok(NodeRows {
            rows: data::run(&state.engine, &ui::NODES, &window).await?,
            computed: std::time::Instant::now(),
        })
    }

    fn fresh(&self, _state: &UiState) -> bool {
        self.computed.elapsed() <= crate::background::max_age(self.rows.is_empty())
    }
}

/// Links to the other pages of the node table.
fn pager(page: usize, pages: usize) -> Markup {
    html! {
        nav.pager aria-label="Node table pages" {
            @if page > 1 { a href=(format!("/nodes?page={}", page - 1)) { "← Previous" } }
            " Page " (page) " of " (pages) " "
            @if page < pages { a href=(format!("/nodes?page={}", page + 1)) { "Next →" } }
        }
    }
}

/// `GET /nodes?page=N`.
pub async fn page(
    State(state): State<UiState>,
    viewer: Viewer,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let (rows, recs) = tokio::join!(
        state
            .nodes
            .get_within(&state, std::time::Duration::from_secs(2)),
        data::run(&state.engine, &ui::RECOMMENDATIONS, &[]),
    );
    let content = html! {
        h1 { "Nodes" }
        p.lead { "Requests of the pods running now and usage over the last " (state.window_days) " days, against what each node can allocate." }
        @match &rows {
            None => {
                div hx-get=(format!("/nodes?page={}", query.get("page").and_then(|p| p.parse::<usize>().ok()).unwrap_or(1))) hx-trigger="load delay:1s" hx-target="#main" hx-swap="innerHTML" {
                    @if let Some(error) = state.nodes.last_error() {
                        p.error role="alert" { "Reading the nodes failed: " (error) ". Retrying…" }
                    } @else {
                        p.progress role="status" { span.spinner aria-hidden="true" {} "Reading every node's usage over the last days… this page fills in when it is done." }
                    }
                }
            }
            Some(kept) if kept.rows.is_empty() => (layout::empty("No nodes yet.", "Nodes appear once the collector reports them (the node_usage table).")),
            Some(kept) => {
                @let all = &kept.rows;
                @let pages = all.len().div_ceil(NODES_PER_PAGE).max(1);
                @let page = query.get("page").and_then(|p| p.parse::<usize>().ok()).unwrap_or(1).clamp(1, pages);
                (card("Node groups", groups(all)))
                (card("Consolidation plan", match &recs { Ok(recs) => consolidation(recs), Err(e) => layout::data_error(e) }))
                (card(&format!("{} nodes", all.len()), html! {
                    @if pages > 1 { (pager(page, pages)) }
                    (nodes(all.iter().skip((page - 1) * NODES_PER_PAGE).take(NODES_PER_PAGE)))
                    @if pages > 1 { (pager(page, pages)) }
                }))
            }
        }
        (layout::sources(&[&ui::NODES, &ui::RECOMMENDATIONS]))
    };
    layout::respond(&viewer, "/nodes", "Nodes", content)
}
