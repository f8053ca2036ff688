//! The overview: what the cluster costs per month (allocated, idle, by namespace), what the
//! recommendations would save, how efficiently requests are used, usage over time and the
//! top recommendations.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use tally_queries::{Param, analysis, ui};

use crate::chart::{LineChart, Reference, Series, bars};
use crate::data::{self, Rows};
use crate::format;
use crate::layout::{self, card, stat};
use crate::{UiState, Viewer};

/// Unit prices for nodes whose instance type has no price (OpenCost's defaults), passed to
/// `cost_allocation.sql`.
pub const DEFAULT_CPU_CORE_HOUR_USD: f64 = 0.031611;
pub const DEFAULT_MEMORY_GIB_HOUR_USD: f64 = 0.004237;
/// Hours in an average month: window costs are scaled to a month with it.
pub const HOURS_PER_MONTH: f64 = 730.0;

/// Runs the analysis' cost allocation over the window, aggregated by `aggregate`.
pub async fn cost_allocation(state: &UiState, aggregate: &str) -> Result<Rows, data::DataError> {
    let end = (state.now)();
    // Whole hours, as the query wants.
    let end = end
        - chrono::Duration::seconds(end.timestamp().rem_euclid(3600))
        - chrono::Duration::nanoseconds(end.timestamp_subsec_nanos() as i64);
    let mut params: Vec<(&str, Param)> = data::window(end, state.window_days).into();
    params.push(("aggregate", Param::Text(aggregate.to_string())));
    params.push((
        "default_cpu_core_hour_usd",
        Param::Float(DEFAULT_CPU_CORE_HOUR_USD),
    ));
    params.push((
        "default_memory_gib_hour_usd",
        Param::Float(DEFAULT_MEMORY_GIB_HOUR_USD),
    ));
    // The provider of the nodes' instance types prices the network.
    params.push(("provider", Param::Text(String::new())));
    data::run(&state.engine, &analysis::COST_ALLOCATION, &params).await
}

/// The overview's cost allocation by hour and namespace, computed in the background at most
/// once a minute, like the workloads summary (over a large cluster it takes seconds: see
/// benchmarks/RESULTS.md). A new hour, or an empty answer after 5 s, refreshes it sooner.
pub type AllocationCache = crate::background::Background<CachedAllocation>;

/// An allocation with the hour its window ends and when it was computed.
pub struct CachedAllocation {
    end_hour: i64,
    computed: Instant,
    /// How long the query took.
    pub took: Duration,
    /// Its figures, summed once here rather than on every request.
    pub summary: CostSummary,
}

impl crate::background::Computed for CachedAllocation {
    const WHAT: &'static str = "the overview's cost allocation";

    async fn compute(state: &UiState) -> Result<Self, data::DataError> {
        compute_allocation(state).await
    }

    fn fresh(&self, state: &UiState) -> bool {
        self.end_hour == (state.now)().timestamp().div_euclid(3600)
            && self.computed.elapsed() <= crate::background::max_age(self.summary.is_empty())
    }
}

/// Computes the overview's allocation now.
pub async fn compute_allocation(state: &UiState) -> Result<CachedAllocation, data::DataError> {
    let started = Instant::now();
    let end_hour = (state.now)().timestamp().div_euclid(3600);
    // By hour too: the same rows give the totals per namespace and the cost over time.
    let rows = cost_allocation(state, "hour,namespace").await?;
    Ok(CachedAllocation {
        end_hour,
        computed: Instant::now(),
        took: started.elapsed(),
        summary: CostSummary::of(&rows),
    })
}

/// The overview's cost figures over the window (not yet scaled to a month), summed once
/// from the allocation by hour and namespace.
#[derive(Debug, Default)]
pub struct CostSummary {
    /// Hours that have costs: monthly figures scale from these, not from the whole window,
    /// so a cluster with two days of history is not billed as if the other days were free.
    pub hours: usize,
    pub allocated: f64,
    pub idle: f64,
    pub network: f64,
    /// Usage ÷ requests weighted by CPU and memory cost (network left out).
    pub efficiency: Option<f64>,
    /// Cost per namespace, the most expensive first.
    pub by_namespace: Vec<(String, f64)>,
    /// Per hour (ms): what the nodes cost (allocated + idle) and what was allocated.
    pub hourly: Vec<(i64, f64, f64)>,
}

impl CostSummary {
    pub fn of(rows: &Rows) -> CostSummary {
        let mut summary = CostSummary::default();
        let mut by_namespace: std::collections::HashMap<String, f64> = Default::default();
        let mut hourly: std::collections::BTreeMap<i64, (f64, f64)> = Default::default();
        let (mut compute, mut weighted_efficiency) = (0.0, 0.0);
        for r in rows.iter() {
            let cost = r.float("total_cost_usd").unwrap_or(0.0);
            let (hour, name) = split_hour(r.text("name"));
            let idle = name.contains("__idle__");
            if let Some(hour) = hour {
                let entry = hourly.entry(hour).or_default();
                entry.0 += cost;
                if !idle {
                    entry.1 += cost;
                }
            }
            if idle {
                summary.idle += cost;
                continue;
            }
            summary.allocated += cost;
            let network = r.float("network_cost_usd").unwrap_or(0.0);
            summary.network += network;
            // Efficiency is about CPU and memory: weigh it by their cost alone.
            compute += cost - network;
            weighted_efficiency += (cost - network) * r.float("total_efficiency").unwrap_or(0.0);
            *by_namespace.entry(name.to_string()).or_default() += cost;
        }
        summary.hours = hourly.len();
        summary.efficiency = (compute > 0.0).then(|| weighted_efficiency / compute);
        summary.by_namespace = by_namespace.into_iter().collect();
        summary
            .by_namespace
            .sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        summary.hourly = hourly.into_iter().map(|(t, (c, a))| (t, c, a)).collect();
        summary
    }

    fn is_empty(&self) -> bool {
        self.hours == 0 && self.by_namespace.is_empty() && self.idle == 0.0
    }
}

fn costs(state: &UiState, summary: &CostSummary) -> Markup {
    let covered = if summary.hours == 0 {
        state.window_days as f64 * 24.0
    } else {
        summary.hours as f64
    };
    let per_month = HOURS_PER_MONTH / covered;
    let (allocated, idle, network) = (
        summary.allocated * per_month,
        summary.idle * per_month,
        summary.network * per_month,
    );
    let by_namespace: Vec<(String, f64)> = summary
        .by_namespace
        .iter()
        .take(15)
        .map(|(name, cost)| (name.clone(), cost * per_month))
        .collect();
    let efficiency = summary.efficiency;
    let markup = html! {
        div.stats {
            (stat("Cluster cost / month", &format::usd(Some(allocated + idle)), &format!("at the rate of the last {} h with costs (window: {} days)", covered, state.window_days)))
            (stat("Allocated", &format::usd(Some(allocated)), "max(request, usage) × unit price, per container"))
            (stat("Idle", &format::usd(Some(idle)), &format!("{} of node cost nobody requested or used", format::percent((allocated + idle > 0.0).then(|| idle / (allocated + idle))))))
            (stat("Network", &format::usd(Some(network)), "measured flows × their class's rate, in allocated"))
            (stat("Efficiency", &format::percent(efficiency), "usage ÷ requests, weighted by cost"))
        }
        h3 { "Cost per month by namespace" }
        (bars("Cost per month by namespace", &by_namespace, |v| format::usd(Some(v))))
        p.hint { "GPU and storage costs are not included: no GPU or volume prices are stored. Network cost is each flow the node agents measured, at its traffic class's list rate (see the Network page); __network_without_usage__ is traffic of pods that left no usage sample." }
    };
    markup
}

/// Splits an allocation row's name into its hour (milliseconds) and the rest:
/// `2026-01-05T10:00:00Z/shop` → (hour, "shop"). Names without an hour (the rows of pods
/// without usage samples) have none.
fn split_hour(name: &str) -> (Option<i64>, &str) {
    match name.split_once('/') {
        Some((hour, rest)) => match chrono::DateTime::parse_from_rfc3339(hour) {
            Ok(t) => (Some(t.timestamp_millis()), rest),
            Err(_) => (None, name),
        },
        None => match chrono::DateTime::parse_from_rfc3339(name) {
            Ok(t) => (Some(t.timestamp_millis()), ""),
            Err(_) => (None, name),
        },
    }
}

/// Cost per hour over the window: what the nodes cost (allocated + idle) and what was
/// allocated to workloads, from the same allocation as the totals above.
fn cost_chart(summary: &CostSummary) -> Markup {
    LineChart {
        title: "Cluster cost and allocated cost per hour, USD",
        series: vec![
            Series {
                name: "Cluster cost (allocated + idle)".into(),
                points: summary.hourly.iter().map(|(t, c, _)| (*t, *c)).collect(),
                dashed: false,
            },
            Series {
                name: "Allocated to workloads".into(),
                points: summary.hourly.iter().map(|(t, _, a)| (*t, *a)).collect(),
                dashed: true,
            },
        ],
        references: Vec::<Reference>::new(),
        markers: vec![],
        unit: |v| format!("{} /h", format::usd(Some(v))),
    }
    .render()
}

fn usage_chart(rows: &Rows) -> Markup {
    let series = |column: &str| -> Vec<(i64, f64)> {
        rows.iter()
            .filter_map(|r| Some((r.time("time")?.timestamp_millis(), r.float(column)?)))
            .collect()
    };
    LineChart {
        title: "Cluster CPU in use and allocatable, hourly, cores",
        series: vec![
            Series {
                name: "CPU in use".into(),
                points: series("cpu_used_cores"),
                dashed: false,
            },
            Series {
                name: "CPU allocatable".into(),
                points: series("cpu_allocatable_cores"),
                dashed: true,
            },
        ],
        references: Vec::<Reference>::new(),
        markers: vec![],
        unit: |v| format::cores(Some(v)),
    }
    .render()
}

fn top_recommendations(rows: &Rows) -> Markup {
    html! {
        @if rows.is_empty() {
            (layout::empty("No recommendations yet.", "The analysis runs every few minutes once there is enough history; its recommendations show up here."))
        } @else {
            table.data {
                thead { tr { th scope="col" { "Workload" } th scope="col" { "What" } th.n scope="col" { "Saves / month" } th scope="col" { "Status" } } }
                tbody {
                    @for r in rows.iter().take(5) {
                        tr {
                            td {
                                @if r.text("namespace").is_empty() { (r.text("target_kind")) " " (r.text("target_name")) }
                                @else {
                                    a href=(super::workloads::workload_href(r.text("namespace"), r.text("target_kind"), r.text("target_name"))) {
                                        (r.text("namespace")) "/" (r.text("target_name"))
                                    }
                                }
                            }
                            td { (r.text("kind")) }
                            td.n { (format::usd(r.float("savings_monthly_usd"))) }
                            td { span class=(format!("badge s-{}", r.text("status"))) { (r.text("status")) } }
                        }
                    }
                }
            }
            p { a href="/recommendations" { "All recommendations →" } }
        }
    }
}

const COSTS_ID: &str = "overview-costs";

/// The Cost and Cost over time cards, or, while the first allocation is computed, a
/// placeholder that polls `/overview/costs` until it is there.
fn cost_cards(state: &UiState, allocation: Option<&CachedAllocation>) -> Markup {
    let Some(allocation) = allocation else {
        return html! {
            div #(COSTS_ID) hx-get="/overview/costs" hx-trigger="load delay:1s" hx-swap="outerHTML" {
                (card("Cost", html! {
                    @if let Some(error) = state.allocation.last_error() {
                        p.error role="alert" { "Computing the cost allocation failed: " (error) ". Retrying…" }
                    } @else {
                        p.progress role="status" { span.spinner aria-hidden="true" {} "Allocating the cluster's cost over the last " (state.window_days) " days… this part fills in when it is done." }
                    }
                }))
            }
        };
    };
    let summary = &allocation.summary;
    html! {
        div #(COSTS_ID) {
            (card("Cost", if summary.is_empty() {
                layout::empty("No cost yet.", "Costs appear once nodes have reported for a whole hour and prices are known (the shipped catalog or your own on the Settings page).")
            } else {
                costs(state, summary)
            }))
            (card("Cost over time", if summary.is_empty() {
                layout::empty("No cost yet.", "The chart starts once nodes have reported for a whole hour.")
            } else {
                cost_chart(summary)
            }))
        }
    }
}

/// `GET /overview/costs`: the cost cards alone (the overview's placeholder polls it).
pub async fn costs_fragment(State(state): State<UiState>, _viewer: Viewer) -> Response {
    let allocation = state
        .allocation
        .get_within(&state, Duration::from_secs(2))
        .await;
    cost_cards(&state, allocation.as_deref()).into_response()
}

/// `GET /`.
pub async fn page(State(state): State<UiState>, viewer: Viewer) -> Response {
    let window = data::window((state.now)(), state.window_days);
    let (allocation, usage, recommendations) = tokio::join!(
        state.allocation.get_within(&state, Duration::from_secs(2)),
        data::run(&state.engine, &ui::CLUSTER_USAGE_HOURLY, &window),
        data::run(&state.engine, &ui::RECOMMENDATIONS, &[]),
    );
    let savings: Option<f64> = recommendations.as_ref().ok().map(|r| {
        r.iter()
            .filter_map(|r| r.float("savings_monthly_usd"))
            .sum()
    });
    let nodes_now = usage
        .as_ref()
        .ok()
        .and_then(|u| u.iter().last().and_then(|r| r.int("nodes")));
    let content = html! {
        h1 { "Overview" }
        p.lead { "The cluster over the last " (state.window_days) " days." }
        div.stats {
            (stat("Potential savings / month", &format::usd(savings), "what the newest recommendations save together"))
            (stat("Nodes", &nodes_now.map_or("–".to_string(), |n| n.to_string()), "reporting in the last hour"))
        }
        (cost_cards(&state, allocation.as_deref()))
        (card("CPU over time", match &usage {
            Ok(rows) if rows.is_empty() => layout::empty("No node samples yet.", "Nodes appear once the collector reports them."),
            Ok(rows) => usage_chart(rows),
            Err(error) => layout::data_error(error),
        }))
        (card("Top recommendations", match &recommendations {
            Ok(rows) => top_recommendations(rows),
            Err(error) => layout::data_error(error),
        }))
        (layout::sources(&[&analysis::COST_ALLOCATION, &ui::CLUSTER_USAGE_HOURLY, &ui::RECOMMENDATIONS]))
    };
    layout::respond(&viewer, "/", "Overview", content)
}
