//! One workload: per container, usage over time against request and limit with the
//! p50/p95/p99 lines and OOM markers; its recommendation with the why, the history of
//! recommendations and actions, and approve/reject buttons for users who may approve.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{RecordBatch, StringArray, TimestampMillisecondArray};
use axum::Form;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use tally_queries::{Param, ui};
use tally_wire::Table;

use crate::chart::{LineChart, Reference, Series};
use crate::data::{self, Rows};
use crate::format;
use crate::layout;
use crate::{UiState, Viewer};

fn params(namespace: &str, kind: &str, name: &str, state: &UiState) -> Vec<(&'static str, Param)> {
    let end = (state.now)();
    let mut params: Vec<(&'static str, Param)> = vec![
        ("namespace", Param::Text(namespace.to_string())),
        ("kind", Param::Text(kind.to_string())),
        ("name", Param::Text(name.to_string())),
    ];
    params.extend(data::window(end, state.window_days));
    params
}

fn pick<'a>(
    all: &'a [(&'static str, Param)],
    query: &tally_queries::Query,
) -> Vec<(&'a str, Param)> {
    all.iter()
        .filter(|(n, _)| query.params.contains(n))
        .map(|(n, v)| (*n, v.clone()))
        .collect()
}

async fn read(
    state: &UiState,
    query: &tally_queries::Query,
    all: &[(&'static str, Param)],
) -> Result<Rows, data::DataError> {
    data::run(&state.engine, query, &pick(all, query)).await
}

fn container_chart(
    container: &str,
    hourly: &Rows,
    percentiles: &Rows,
    spec: &Rows,
    events: &Rows,
) -> Markup {
    let points = |column: &str| -> Vec<(i64, f64)> {
        hourly
            .iter()
            .filter(|r| r.text("container") == container)
            .filter_map(|r| Some((r.time("time")?.timestamp_millis(), r.float(column)?)))
            .collect()
    };
    let mut cpu_refs = Vec::new();
    let mut memory_refs = Vec::new();
    if let Some(s) = spec.iter().find(|r| r.text("container") == container) {
        if let Some(v) = s.float("cpu_request_cores") {
            cpu_refs.push(Reference {
                name: "request".into(),
                value: v,
                colour: "#000000",
            });
        }
        if let Some(v) = s.float("cpu_limit_cores") {
            cpu_refs.push(Reference {
                name: "limit".into(),
                value: v,
                colour: "#B00020",
            });
        }
        if let Some(v) = s.float("memory_request_bytes") {
            memory_refs.push(Reference {
                name: "request".into(),
                value: v,
                colour: "#000000",
            });
        }
        if let Some(v) = s.float("memory_limit_bytes") {
            memory_refs.push(Reference {
                name: "limit".into(),
                value: v,
                colour: "#B00020",
            });
        }
    }
    if let Some(p) = percentiles
        .iter()
        .find(|r| r.text("container") == container)
    {
        for (label, column, colour) in [
            ("window p50", "cpu_p50_cores", "#009E73"),
            ("window p95", "cpu_p95_cores", "#E69F00"),
            ("window p99", "cpu_p99_cores", "#CC79A7"),
        ] {
            if let Some(v) = p.float(column) {
                cpu_refs.push(Reference {
                    name: label.into(),
                    value: v,
                    colour,
                });
            }
        }
        for (label, column, colour) in [
            ("window p50", "memory_p50_bytes", "#009E73"),
            ("window p95", "memory_p95_bytes", "#E69F00"),
            ("window p99", "memory_p99_bytes", "#CC79A7"),
        ] {
            if let Some(v) = p.float(column) {
                memory_refs.push(Reference {
                    name: label.into(),
                    value: v,
                    colour,
                });
            }
        }
    }
    let ooms: Vec<(i64, String)> = events
        .iter()
        .filter(|r| r.text("reason") == "OOMKilled" && r.text("container") == container)
        .filter_map(|r| {
            let t = r.time("time")?;
            Some((
                t.timestamp_millis(),
                format!(
                    "{} OOM-killed at {}",
                    r.text("pod"),
                    t.format("%Y-%m-%d %H:%M UTC")
                ),
            ))
        })
        .collect();
    let cpu_title = format!("CPU of container {container}, hourly, cores");
    let memory_title = format!("Memory of container {container}, hourly peak working set");
    html! {
        section.card {
            h2 { "Container " code { (container) } }
            div.charts {
                div {
                    h3 { "CPU (cores)" }
                    (LineChart {
                        title: &cpu_title,
                        series: vec![
                            Series { name: "hourly p95".into(), points: points("cpu_p95_cores"), dashed: false },
                            Series { name: "hourly mean".into(), points: points("cpu_mean_cores"), dashed: true },
                        ],
                        references: cpu_refs,
                        markers: vec![],
                        unit: |v| format::cores(Some(v)),
                    }.render())
                }
                div {
                    h3 { "Memory (working set)" }
                    (LineChart {
                        title: &memory_title,
                        series: vec![Series { name: "hourly peak".into(), points: points("memory_max_bytes"), dashed: false }],
                        references: memory_refs,
                        markers: ooms,
                        unit: |v| format::bytes(Some(v)),
                    }.render())
                }
            }
        }
    }
}

fn spec_table(spec: &Rows) -> Markup {
    html! {
        table.data {
            thead { tr {
                th scope="col" { "Container" } th.n scope="col" { "Replicas" }
                th.n scope="col" { "CPU request" } th.n scope="col" { "CPU limit" }
                th.n scope="col" { "Memory request" } th.n scope="col" { "Memory limit" }
                th scope="col" { "HPA" } th scope="col" { "Since" }
            } }
            tbody {
                @for r in spec.iter() {
                    tr {
                        td { code { (r.text("container")) } }
                        td.n { @if let Some(v) = r.int("replicas") { (v) } }
                        td.n { (format::cores(r.float("cpu_request_cores"))) }
                        td.n { (format::cores(r.float("cpu_limit_cores"))) }
                        td.n { (format::bytes(r.float("memory_request_bytes"))) }
                        td.n { (format::bytes(r.float("memory_limit_bytes"))) }
                        td {
                            @if let (Some(min), Some(max)) = (r.int("hpa_min_replicas"), r.int("hpa_max_replicas")) {
                                (min) "–" (max)
                                @if let Some(t) = r.float("hpa_target_cpu_utilization") { " at " (format::percent(Some(t))) " CPU" }
                            } @else { "none" }
                        }
                        td { @if let Some(t) = r.time("since") { (format::time(t)) } }
                    }
                }
            }
        }
    }
}

fn recommendation(recs: &Rows, viewer: &Viewer, href: &str, notice: Option<&str>) -> Markup {
    let newest_run = recs.iter().next().map(|r| r.text("run_id").to_string());
    let current: Vec<_> = recs
        .iter()
        .filter(|r| Some(r.text("run_id")) == newest_run.as_deref())
        .collect();
    html! {
        section.card #recommendation {
            h2 { "Recommendation" }
            @if let Some(notice) = notice { p.notice role="status" { (notice) } }
            @if current.is_empty() {
                (layout::empty("No recommendation for this workload yet.", "The analysis recommends once it has enough history; check back after its next run."))
            } @else {
                table.data {
                    thead { tr {
                        th scope="col" { "What" } th scope="col" { "Container" }
                        th.n scope="col" { "CPU request" } th.n scope="col" { "Memory request" }
                        th.n scope="col" { "Replicas" } th.n scope="col" { "Confidence" }
                        th.n scope="col" { "Saves / month" } th scope="col" { "Why" }
                    } }
                    tbody {
                        @for r in &current {
                            tr {
                                td { (r.text("kind")) }
                                td { @if let Some(c) = r.opt_text("container") { code { (c) } } }
                                td.n { (format::cores(r.float("current_cpu_request_cores"))) " → " strong { (format::cores(r.float("recommended_cpu_request_cores"))) } }
                                td.n { (format::bytes(r.float("current_memory_request_bytes"))) " → " strong { (format::bytes(r.float("recommended_memory_request_bytes"))) } }
                                td.n { @if let (Some(a), Some(b)) = (r.int("current_replicas"), r.int("recommended_replicas")) { (a) " → " strong { (b) } } }
                                td.n { (format::percent(r.float("confidence"))) }
                                td.n { (format::usd(r.float("savings_monthly_usd"))) }
                                td { (r.text("why")) }
                            }
                        }
                    }
                }
                @if viewer.session.permissions.approve {
                    form.decision method="post" action=(format!("{href}/decision"))
                        hx-post=(format!("{href}/decision")) hx-target="#recommendation" hx-swap="outerHTML" {
                        input type="hidden" name="csrf" value=(viewer.session.csrf);
                        input type="hidden" name="run_id" value=[newest_run.as_deref()];
                        div.field {
                            label for="reason" { "Note for the audit log (optional)" }
                            input #reason type="text" name="reason" maxlength="200";
                        }
                        button type="submit" name="decision" value="approve" { "Approve" }
                        " "
                        button.secondary type="submit" name="decision" value="reject" { "Reject" }
                        p.hint { "Your decision goes to the audit log as " code { (viewer.session.user) } ". The operator applies approved recommendations once it runs in the cluster." }
                    }
                } @else {
                    p.hint { "You may view this recommendation; approving needs " code { "update workloadrecommendations.tally.dev" } " in cluster RBAC." }
                }
            }
        }
    }
}

fn history(recs: &Rows, actions: &Rows) -> Markup {
    html! {
        section.card {
            h2 { "History" }
            h3 { "Recommendations" }
            @if recs.is_empty() { p.empty { "None yet." } } @else {
                table.data {
                    thead { tr { th scope="col" { "When" } th scope="col" { "Run" } th scope="col" { "What" } th scope="col" { "Container" } th.n scope="col" { "Saves / month" } th scope="col" { "Why" } } }
                    tbody { @for r in recs.iter() {
                        tr {
                            td { @if let Some(t) = r.time("time") { (format::time(t)) } }
                            td { code { (r.text("run_id")) } }
                            td { (r.text("kind")) }
                            td { (r.opt_text("container").unwrap_or("")) }
                            td.n { (format::usd(r.float("savings_monthly_usd"))) }
                            td { (r.text("why")) }
                        }
                    } }
                }
            }
            h3 { "Actions and decisions" }
            @if actions.is_empty() { p.empty { "Nothing was approved, rejected or applied yet." } } @else {
                table.data {
                    thead { tr { th scope="col" { "When" } th scope="col" { "Operation" } th scope="col" { "By" } th scope="col" { "Policy" } th scope="col" { "Result" } th scope="col" { "Message" } } }
                    tbody { @for r in actions.iter() {
                        tr {
                            td { @if let Some(t) = r.time("time") { (format::time(t)) } }
                            td { (r.text("operation")) }
                            td { (r.text("actor")) }
                            td { (r.opt_text("policy").unwrap_or("")) }
                            td { span class=(format!("badge s-{}", r.text("result"))) { (r.text("result")) } }
                            td { (r.opt_text("message").unwrap_or("")) }
                        }
                    } }
                }
            }
        }
    }
}

/// `GET /workloads/{namespace}/{kind}/{name}`.
pub async fn page(
    State(state): State<UiState>,
    viewer: Viewer,
    Path((namespace, kind, name)): Path<(String, String, String)>,
) -> Response {
    let all = params(&namespace, &kind, &name, &state);
    let (spec, hourly, percentiles, events, recs, actions) = tokio::join!(
        read(&state, &ui::WORKLOAD_SPEC, &all),
        read(&state, &ui::WORKLOAD_USAGE_HOURLY, &all),
        read(&state, &ui::WORKLOAD_PERCENTILES, &all),
        read(&state, &ui::WORKLOAD_EVENTS, &all),
        read(&state, &ui::WORKLOAD_RECOMMENDATIONS, &all),
        read(&state, &ui::WORKLOAD_ACTIONS, &all),
    );
    let title = format!("{namespace}/{name}");
    let (spec, hourly, percentiles, events, recs, actions) =
        match (spec, hourly, percentiles, events, recs, actions) {
            (Ok(a), Ok(b), Ok(c), Ok(d), Ok(e), Ok(f)) => (a, b, c, d, e, f),
            (a, b, c, d, e, f) => {
                let error = [a.err(), b.err(), c.err(), d.err(), e.err(), f.err()]
                    .into_iter()
                    .flatten()
                    .next()
                    .expect("one failed");
                return layout::respond(&viewer, "/workloads", &title, layout::data_error(&error));
            }
        };
    if spec.is_empty() && hourly.is_empty() {
        let content = html! {
            h1 { (title) }
            (layout::empty(&format!("Tally knows no {kind} called {name} in namespace {namespace}."), "It may have been deleted, or the collector has not sent it yet. Find workloads on the Workloads page."))
        };
        let mut response = layout::respond(&viewer, "/workloads", &title, content);
        *response.status_mut() = StatusCode::NOT_FOUND;
        return response;
    }
    let mut containers: Vec<String> = spec
        .iter()
        .map(|r| r.text("container").to_string())
        .collect();
    for r in hourly.iter() {
        if !containers.iter().any(|c| c == r.text("container")) {
            containers.push(r.text("container").to_string());
        }
    }
    let href = super::workloads::workload_href(&namespace, &kind, &name);
    let oom_count = events
        .iter()
        .filter(|r| r.text("reason") == "OOMKilled")
        .count();
    let content = html! {
        nav.crumbs aria-label="Breadcrumb" { a href="/workloads" { "Workloads" } " / " (namespace) " / " (kind) }
        h1 { (name) " " small { (kind) " in " (namespace) } }
        p.lead { "Usage over the last " (state.window_days) " days, hour by hour, merged over the workload's pods. " (oom_count) " OOM kill" @if oom_count != 1 { "s" } " in that time." }
        (recommendation(&recs, &viewer, &href, None))
        section.card { h2 { "Spec now" } (spec_table(&spec)) }
        @for c in &containers { (container_chart(c, &hourly, &percentiles, &spec, &events)) }
        (history(&recs, &actions))
        (layout::sources(&[&ui::WORKLOAD_SPEC, &ui::WORKLOAD_USAGE_HOURLY, &ui::WORKLOAD_PERCENTILES, &ui::WORKLOAD_EVENTS, &ui::WORKLOAD_RECOMMENDATIONS, &ui::WORKLOAD_ACTIONS]))
    };
    layout::respond(&viewer, "/workloads", &title, content)
}

/// The audit-log row of a decision.
/// `target` is the workload's (namespace, kind, name).
fn decision_row(
    viewer: &Viewer,
    (namespace, kind, name): (&str, &str, &str),
    approve: bool,
    run_id: Option<&str>,
    reason: &str,
    action_id: &str,
    now_ms: i64,
) -> RecordBatch {
    let text = |s: &str| Arc::new(StringArray::from(vec![s])) as _;
    let opt = |s: Option<&str>| Arc::new(StringArray::from(vec![s])) as _;
    RecordBatch::try_new(
        Table::Actions.schema(),
        vec![
            Arc::new(TimestampMillisecondArray::from(vec![now_ms]).with_timezone("UTC")),
            text(action_id),
            opt(run_id),
            text(if approve { "approve" } else { "reject" }),
            text(namespace),
            text(kind),
            text(name),
            text(&viewer.session.user),
            opt(None),
            opt(None),
            opt(None),
            text(if approve { "approved" } else { "rejected" }),
            opt((!reason.is_empty()).then_some(reason)),
        ],
    )
    .expect("the actions schema")
}

/// `POST /workloads/{namespace}/{kind}/{name}/decision`: approve or reject the newest
/// recommendation; written to the `actions` audit log.
pub async fn decide(
    State(state): State<UiState>,
    viewer: Viewer,
    headers: HeaderMap,
    Path((namespace, kind, name)): Path<(String, String, String)>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Err(refused) = viewer.check_csrf(&headers, form.get("csrf").map(String::as_str)) {
        return *refused;
    }
    if !viewer.session.permissions.approve {
        return (
            StatusCode::FORBIDDEN,
            "approving needs `update workloadrecommendations.tally.dev` in cluster RBAC",
        )
            .into_response();
    }
    let approve = match form.get("decision").map(String::as_str) {
        Some("approve") => true,
        Some("reject") => false,
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                "decision must be approve or reject",
            )
                .into_response();
        }
    };
    let reason: String = form
        .get("reason")
        .map(|s| s.trim().chars().take(200).collect())
        .unwrap_or_default();
    let run_id = form
        .get("run_id")
        .map(String::as_str)
        .filter(|s| !s.is_empty());
    let action_id = format!("ui-{}", state.auth.random());
    let now_ms = (state.now)().timestamp_millis();
    let batch = decision_row(
        &viewer,
        (&namespace, &kind, &name),
        approve,
        run_id,
        &reason,
        &action_id,
        now_ms,
    );
    if let Err(error) = state.store.write(Table::Actions, batch).await {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("could not record the decision: {error}"),
        )
            .into_response();
    }
    tracing::info!(user = %viewer.session.user, %namespace, %kind, %name, approve, "recommendation decision");
    let href = super::workloads::workload_href(&namespace, &kind, &name);
    let all = params(&namespace, &kind, &name, &state);
    let notice = if approve {
        "Approved: recorded in the audit log."
    } else {
        "Rejected: recorded in the audit log."
    };
    if viewer.htmx {
        return match read(&state, &ui::WORKLOAD_RECOMMENDATIONS, &all).await {
            Ok(recs) => recommendation(&recs, &viewer, &href, Some(notice)).into_response(),
            Err(error) => layout::data_error(&error).into_response(),
        };
    }
    axum::response::Redirect::to(&href).into_response()
}
