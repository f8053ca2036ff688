//! The workloads table: every workload with requests against p95 usage, savings and status;
//! search, filters, sorting and pages through htmx (the table alone is swapped).

use std::collections::{BTreeSet, HashMap};

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};

use crate::format::{self, encode, query_string};
use crate::layout;
use crate::summary::{Filter, SortKey, Summary, Workload, select};
use crate::{UiState, Viewer};

/// The table's id: htmx requests that target it get only the table.
pub const TABLE_ID: &str = "workload-table";

/// Reads a filter from the query string; unknown values fall back to the defaults.
pub fn parse_filter(query: &HashMap<String, String>) -> Filter {
    let text = |k: &str| {
        query
            .get(k)
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let default = Filter::default();
    Filter {
        search: text("q").unwrap_or_default(),
        namespace: text("namespace"),
        kind: text("kind"),
        status: text("status"),
        sort: text("sort")
            .and_then(|s| SortKey::parse(&s))
            .unwrap_or(default.sort),
        descending: text("dir").map_or(default.descending, |d| d != "asc"),
        page: text("page")
            .and_then(|p| p.parse::<usize>().ok())
            .map_or(0, |p| p.saturating_sub(1)),
        per_page: default.per_page,
    }
}

fn link(filter: &Filter, sort: SortKey, descending: bool, page: usize) -> String {
    let page = (page + 1).to_string();
    format!(
        "/workloads{}",
        query_string(&[
            ("q", &filter.search),
            ("namespace", filter.namespace.as_deref().unwrap_or("")),
            ("kind", filter.kind.as_deref().unwrap_or("")),
            ("status", filter.status.as_deref().unwrap_or("")),
            ("sort", sort.id()),
            ("dir", if descending { "desc" } else { "asc" }),
            ("page", &page),
        ])
    )
}

/// The link to a workload's page.
pub fn workload_href(namespace: &str, kind: &str, name: &str) -> String {
    format!(
        "/workloads/{}/{}/{}",
        encode(namespace),
        encode(kind),
        encode(name)
    )
}

fn header(filter: &Filter, key: SortKey, label: &str, numeric: bool) -> Markup {
    let active = filter.sort == key;
    // Numbers sort largest first on the first click, text A to Z.
    let descending = if active { !filter.descending } else { numeric };
    let href = link(filter, key, descending, 0);
    let sort = match (active, filter.descending) {
        (false, _) => "none",
        (true, true) => "descending",
        (true, false) => "ascending",
    };
    html! {
        th scope="col" aria-sort=(sort) class=[numeric.then_some("n")] {
            a href=(href) hx-get=(href) hx-target=(format!("#{TABLE_ID}")) hx-swap="outerHTML" hx-push-url="true" {
                (label)
                @if active { span aria-hidden="true" { @if filter.descending { " ▼" } @else { " ▲" } } }
            }
        }
    }
}

fn status_badge(status: &str) -> Markup {
    html! { span class=(format!("badge s-{}", status.replace(|c: char| !c.is_ascii_alphanumeric(), "-"))) { (status) } }
}

fn ratio(usage: Option<f64>, request: Option<f64>) -> Markup {
    match (usage, request) {
        (Some(u), Some(r)) if r > 0.0 => {
            let class = if u / r < 0.5 {
                "low"
            } else if u / r > 1.0 {
                "over"
            } else {
                "ok"
            };
            html! { span.ratio.(class) { (format!("{:.0} %", u / r * 100.0)) } }
        }
        _ => html! {},
    }
}

fn row(w: &Workload) -> Markup {
    html! {
        tr {
            td { (w.namespace) }
            td { a href=(workload_href(&w.namespace, &w.kind, &w.name)) { (w.name) } }
            td { (w.kind) }
            td.n {
                @if let Some(r) = w.replicas { (r) }
                @if let Some((min, max)) = w.hpa { br; small { "HPA " (min) "–" (max) } }
            }
            td.n { (format::cores(w.cpu_request_cores)) }
            td.n { (format::cores(w.cpu_p95_cores)) " " (ratio(w.cpu_p95_cores, w.cpu_request_cores)) }
            td.n { (format::bytes(w.memory_request_bytes)) }
            td.n { (format::bytes(w.memory_max_bytes)) " " (ratio(w.memory_max_bytes, w.memory_request_bytes)) }
            td.n { @if w.oom_kills > 0 { span.badge.s-oom { (w.oom_kills) } } @else { "0" } }
            td.n { (format::usd(w.savings_monthly_usd)) }
            td { (status_badge(&w.status)) }
        }
    }
}

/// The table with its paging: what htmx swaps.
pub fn table(summary: &Summary, filter: &Filter) -> Markup {
    let (rows, total) = select(&summary.workloads, filter);
    let pages = total.div_ceil(filter.per_page).max(1);
    let first = filter.page * filter.per_page;
    html! {
        div #(TABLE_ID) {
            // The sort lives with the table; these join the filter form (form="filters").
            input type="hidden" form="filters" name="sort" value=(filter.sort.id());
            input type="hidden" form="filters" name="dir" value=(if filter.descending { "desc" } else { "asc" });
            p.count aria-live="polite" {
                @if total == 0 { "No workload matches." }
                @else if rows.is_empty() { "Page " (filter.page + 1) " is past the last page (" (pages) ")." }
                @else { "Workloads " (format::count((first + 1) as u64)) "–" (format::count((first + rows.len()) as u64)) " of " (format::count(total as u64)) }
                @if total < summary.workloads.len() { " (" (format::count(summary.workloads.len() as u64)) " in all)" }
            }
            @if total == 0 && summary.workloads.is_empty() {
                (layout::empty("No workloads yet.", "Tally lists workloads once the collector has sent their specs (the workloads table). Check that the collector runs and can reach the appliance."))
            } @else {
                div.scroll {
                    table.data {
                        caption.visually-hidden { "Workloads; per replica: requests and p95 usage over the last days" }
                        thead {
                            tr {
                                (header(filter, SortKey::Namespace, "Namespace", false))
                                (header(filter, SortKey::Name, "Workload", false))
                                (header(filter, SortKey::Kind, "Kind", false))
                                (header(filter, SortKey::Replicas, "Replicas", true))
                                (header(filter, SortKey::CpuRequest, "CPU request", true))
                                (header(filter, SortKey::CpuP95, "CPU p95", true))
                                (header(filter, SortKey::MemoryRequest, "Memory request", true))
                                (header(filter, SortKey::MemoryMax, "Memory peak", true))
                                th.n scope="col" { "OOM kills" }
                                (header(filter, SortKey::Savings, "Savings / month", true))
                                (header(filter, SortKey::Status, "Status", false))
                            }
                        }
                        tbody { @for w in &rows { (row(w)) } }
                    }
                }
                nav.pager aria-label="Pages of workloads" {
                    @if filter.page > 0 {
                        @let href = link(filter, filter.sort, filter.descending, (filter.page - 1).min(pages - 1));
                        a rel="prev" href=(href) hx-get=(href) hx-target=(format!("#{TABLE_ID}")) hx-swap="outerHTML" hx-push-url="true" { "← Previous" }
                    }
                    @if !rows.is_empty() { span { "Page " (filter.page + 1) " of " (pages) } }
                    @if filter.page + 1 < pages {
                        @let href = link(filter, filter.sort, filter.descending, filter.page + 1);
                        a rel="next" href=(href) hx-get=(href) hx-target=(format!("#{TABLE_ID}")) hx-swap="outerHTML" hx-push-url="true" { "Next →" }
                    }
                }
            }
        }
    }
}

fn select_box(id: &str, label: &str, options: &BTreeSet<&str>, chosen: Option<&str>) -> Markup {
    html! {
        div.field.inline {
            label for=(id) { (label) }
            select #(id) name=(id) {
                option value="" { "all" }
                @for o in options {
                    option value=(o) selected[chosen == Some(*o)] { (o) }
                }
            }
        }
    }
}

fn filters(summary: &Summary, filter: &Filter) -> Markup {
    let namespaces: BTreeSet<&str> = summary
        .workloads
        .iter()
        .map(|w| w.namespace.as_str())
        .collect();
    let kinds: BTreeSet<&str> = summary.workloads.iter().map(|w| w.kind.as_str()).collect();
    let statuses: BTreeSet<&str> = summary
        .workloads
        .iter()
        .map(|w| w.status.as_str())
        .collect();
    html! {
        form #filters.filters role="search" action="/workloads" method="get"
            hx-get="/workloads" hx-target=(format!("#{TABLE_ID}")) hx-swap="outerHTML" hx-push-url="true"
            hx-trigger="input changed delay:300ms from:#q, change from:select, submit" {
            div.field.inline {
                label for="q" { "Search" }
                input #q type="search" name="q" value=(filter.search) placeholder="name or namespace" autocomplete="off";
            }
            (select_box("namespace", "Namespace", &namespaces, filter.namespace.as_deref()))
            (select_box("kind", "Kind", &kinds, filter.kind.as_deref()))
            (select_box("status", "Status", &statuses, filter.status.as_deref()))
            noscript { button type="submit" { "Filter" } }
        }
    }
}

/// Shown while the first summary is computed: polls until it is there.
fn progress(error: Option<String>) -> Markup {
    html! {
        div #(TABLE_ID) hx-get="/workloads" hx-trigger="load delay:1s" hx-swap="outerHTML" hx-include="#filters" {
            @if let Some(error) = error {
                p.error role="alert" { "Reading the workloads failed: " (error) ". Retrying…" }
            } @else {
                p.progress role="status" { span.spinner aria-hidden="true" {} "Summarising every workload over the last days… this page fills in when it is done." }
            }
        }
    }
}

/// `GET /workloads`: the page, or only the table for htmx requests that target it.
pub async fn page(
    State(state): State<UiState>,
    viewer: Viewer,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let filter = parse_filter(&query);
    let summary = state
        .summary
        .get_within(&state, std::time::Duration::from_secs(2))
        .await;
    let wants_table = viewer.htmx
        && headers
            .get("hx-target")
            .is_some_and(|t| t.as_bytes() == TABLE_ID.as_bytes());
    let Some(summary) = summary else {
        let progress = progress(state.summary.last_error());
        if wants_table {
            return progress.into_response();
        }
        return layout::respond(
            &viewer,
            "/workloads",
            "Workloads",
            html! { h1 { "Workloads" } (progress) },
        );
    };
    if wants_table {
        return table(&summary, &filter).into_response();
    }
    let content = html! {
        h1 { "Workloads" }
        p.lead {
            "Every workload with its requests per replica against its usage over the last "
            (state.window_days) " days (CPU p95 and peak memory, merged over its pods), OOM kills, "
            "what the newest recommendation saves per month and where it stands. As of "
            (format::time(summary.window_end)) "."
        }
        (layout::not_yet("Cost per workload:", "shown on the overview by namespace; per-workload cost columns arrive with the cost allocation view."))
        (filters(&summary, &filter))
        (table(&summary, &filter))
        (layout::sources(&[&tally_queries::ui::WORKLOADS]))
    };
    layout::respond(&viewer, "/workloads", "Workloads", content)
}
