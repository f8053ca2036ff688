//! The SQL console: an editor (Ctrl/⌘+Enter runs), results as a table (and a chart when they
//! are a time series), errors with their position, the schema browser, the user's saved
//! history, example queries, and download of the result as Parquet or CSV. Read-only: it
//! runs through the same engine as the SQL API.

use std::collections::{BTreeMap, HashMap};

use axum::Form;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde_json::Value;
use tally_query::{JsonResult, QueryError};

use crate::chart::{LineChart, Series};
use crate::data;
use crate::format;
use crate::layout::{self, card};
use crate::{UiState, Viewer};

/// Rows shown in the page (the download has them all).
pub const SHOWN_ROWS: usize = 500;
/// Queries kept per user.
pub const HISTORY: usize = 20;

fn cell(value: &Value) -> Markup {
    match value {
        Value::Null => html! { span.null { "NULL" } },
        Value::String(s) => match format::parse_time(s) {
            Some(t) if s.len() >= 20 && s.as_bytes()[10] == b'T' => format::time(t),
            _ => html! { (s) },
        },
        Value::Number(n) => html! { (n.to_string()) },
        other => html! { (other.to_string()) },
    }
}

fn is_numeric(data_type: &str) -> bool {
    data_type.starts_with("Int")
        || data_type.starts_with("UInt")
        || data_type.starts_with("Float")
        || data_type.starts_with("Decimal")
}

/// A chart when the answer is a time series: a timestamp column, numeric columns, and at
/// most one text column naming the series (up to 7 series).
fn time_series(answer: &JsonResult) -> Option<Markup> {
    let time = answer
        .columns
        .iter()
        .position(|c| c.data_type.starts_with("Timestamp"))?;
    let numeric: Vec<usize> = (0..answer.columns.len())
        .filter(|&i| is_numeric(&answer.columns[i].data_type))
        .collect();
    let text: Vec<usize> = (0..answer.columns.len())
        .filter(|&i| answer.columns[i].data_type.contains("Utf8"))
        .collect();
    if numeric.is_empty() || text.len() > 1 || answer.rows.len() < 2 {
        return None;
    }
    let mut series: BTreeMap<String, Vec<(i64, f64)>> = BTreeMap::new();
    for row in &answer.rows {
        let t = row[time]
            .as_str()
            .and_then(format::parse_time)?
            .timestamp_millis();
        let group = text
            .first()
            .map(|&i| row[i].as_str().unwrap_or("NULL").to_string());
        for &n in &numeric {
            let Some(v) = row[n].as_f64() else { continue };
            let name = match (&group, numeric.len()) {
                (Some(g), 1) => g.clone(),
                (Some(g), _) => format!("{g} {}", answer.columns[n].name),
                (None, _) => answer.columns[n].name.clone(),
            };
            series.entry(name).or_default().push((t, v));
        }
    }
    if series.len() > 7 {
        return Some(
            html! { p.hint { "A time series of " (series.len()) " lines: too many to chart (at most 7); filter or group further." } },
        );
    }
    let unit: fn(f64) -> String = |v| {
        if v.abs() >= 1e5 {
            format!("{v:.2e}")
        } else {
            format!("{}", (v * 1000.0).round() / 1000.0)
        }
    };
    Some(
        LineChart {
            title: "The result as a time series",
            series: series
                .into_iter()
                .map(|(name, mut points)| {
                    points.sort_by_key(|p| p.0);
                    Series {
                        name,
                        points,
                        dashed: false,
                    }
                })
                .collect(),
            references: vec![],
            markers: vec![],
            unit,
        }
        .render(),
    )
}

/// A successful answer.
pub fn result(answer: &JsonResult, took: std::time::Duration) -> Markup {
    html! {
        div #result {
            p.count role="status" {
                (format::count(answer.row_count as u64)) " row" @if answer.row_count != 1 { "s" }
                @if answer.truncated { " (the query has more; download it for all)" }
                " in " (format!("{:.0} ms", took.as_secs_f64() * 1000.0))
                @if answer.row_count > SHOWN_ROWS { "; the first " (SHOWN_ROWS) " are shown" }
            }
            @if let Some(chart) = time_series(answer) { (chart) }
            @if answer.row_count == 0 { p.empty { "The query answered no rows." } } @else {
                div.scroll {
                    table.data.result {
                        thead { tr { @for c in &answer.columns { th scope="col" title=(c.data_type) { (c.name) } } } }
                        tbody {
                            @for row in answer.rows.iter().take(SHOWN_ROWS) {
                                tr { @for (i, v) in row.iter().enumerate() {
                                    td class=[is_numeric(&answer.columns[i].data_type).then_some("n")] { (cell(v)) }
                                } }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// An error, pointing at its line and column when known.
pub fn error(sql: &str, error: &QueryError) -> Markup {
    let position = error.position();
    html! {
        div #result {
            div.error role="alert" {
                p { strong { (error.kind()) } @if let Some(p) = position { " at line " (p.line) ", column " (p.column) } ": " (error.to_string()) }
                @if let Some(p) = position {
                    @if let Some(line) = sql.lines().nth(p.line.saturating_sub(1) as usize) {
                        pre.caret { (line) "\n" (" ".repeat(p.column.saturating_sub(1) as usize)) "^" }
                    }
                }
            }
        }
    }
}

fn examples(state: &UiState) -> Vec<(String, String)> {
    let window = data::window((state.now)(), 1);
    tally_queries::ui::EXAMPLES
        .iter()
        .filter_map(|q| {
            let sql = q.render(&window).ok()?;
            // The file's leading comment is the example's title.
            let title = q
                .sql
                .lines()
                .next()
                .unwrap_or(q.name)
                .trim_start_matches("-- ")
                .trim_start_matches("Example for the SQL console: ")
                .to_string();
            Some((title, sql))
        })
        .collect()
}

fn schema(state: &UiState) -> Markup {
    html! {
        @for table in state.engine.catalog() {
            details {
                summary { code { (table.name) } }
                p.hint { (table.description) }
                ul.columns {
                    @for c in &table.columns {
                        li { button.insert type="button" data-insert=(c.name) title="Insert into the editor" { code { (c.name) } } " " small { (c.data_type) @if c.nullable { ", nullable" } } }
                    }
                }
            }
        }
    }
}

fn history(state: &UiState, user: &str) -> Markup {
    let queries: Vec<String> = state
        .history
        .lock()
        .expect("lock")
        .get(user)
        .map(|h| h.iter().cloned().collect())
        .unwrap_or_default();
    html! {
        div #history {
            @if queries.is_empty() { p.empty { "Queries you run are kept here." } } @else {
                ol.history {
                    @for q in queries.iter().rev() {
                        li { button.load type="button" data-sql=(q) { code { (q.chars().take(120).collect::<String>()) } } }
                    }
                }
            }
        }
    }
}

/// `GET /sql`.
pub async fn page(State(state): State<UiState>, viewer: Viewer) -> Response {
    let examples = examples(&state);
    let content = html! {
        h1 { "SQL console" }
        p.lead { "Read-only SQL over every table (DataFusion). " kbd { "Ctrl" } "+" kbd { "Enter" } " runs the query." }
        div.console {
            div.editor {
                form #sql-form hx-post="/sql/run" hx-target="#result" hx-swap="outerHTML"
                    hx-trigger="submit, keydown[(ctrlKey||metaKey)&&key=='Enter'] from:#sql" hx-indicator="#running" {
                    input type="hidden" name="csrf" value=(viewer.session.csrf);
                    label for="sql" { "Query" }
                    textarea #sql name="sql" rows="8" spellcheck="false" autocomplete="off" {
                        "SELECT namespace, count(*) AS containers\nFROM container_usage\nGROUP BY namespace\nORDER BY containers DESC"
                    }
                    div.actions {
                        button type="submit" { "Run" }
                        span #running.htmx-indicator role="status" { span.spinner aria-hidden="true" {} "Running…" }
                    }
                }
                form #download-form method="post" action="/sql/download" {
                    input type="hidden" name="csrf" value=(viewer.session.csrf);
                    input #download-sql type="hidden" name="sql";
                    "Download the result as "
                    button.secondary type="submit" name="format" value="parquet" { "Parquet" }
                    " "
                    button.secondary type="submit" name="format" value="csv" { "CSV" }
                }
                div #result { p.empty { "Run a query to see its result here." } }
            }
            aside.side {
                (card("Examples", html! {
                    ul.examples { @for (title, sql) in &examples {
                        li { button.load type="button" data-sql=(sql) { (title) } }
                    } }
                }))
                (card("History", history(&state, &viewer.session.user)))
                (card("Tables", schema(&state)))
            }
        }
    };
    layout::respond(&viewer, "/sql", "SQL", content)
}

fn remember(state: &UiState, user: &str, sql: &str) {
    let mut history = state.history.lock().expect("lock");
    let mine = history.entry(user.to_string()).or_default();
    mine.retain(|q| q != sql);
    mine.push_back(sql.to_string());
    while mine.len() > HISTORY {
        mine.pop_front();
    }
}

/// `POST /sql/run`: the result (or error) fragment, plus the refreshed history out of band.
pub async fn run(
    State(state): State<UiState>,
    viewer: Viewer,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Err(refused) = viewer.check_csrf(&headers, form.get("csrf").map(String::as_str)) {
        return *refused;
    }
    let sql = form.get("sql").map(|s| s.trim()).unwrap_or("");
    if sql.is_empty() {
        return html! { div #result { p.error role="alert" { "Write a query first." } } }
            .into_response();
    }
    let started = std::time::Instant::now();
    let answer = state.engine.json(sql).await;
    let body = match &answer {
        Ok(answer) => {
            remember(&state, &viewer.session.user, sql);
            result(answer, started.elapsed())
        }
        Err(e) => error(sql, e),
    };
    let history = history(&state, &viewer.session.user);
    html! {
        (body)
        div #history hx-swap-oob="true" { (history) }
    }
    .into_response()
}

/// `POST /sql/download` with `sql` and `format` (parquet or csv): the whole result.
pub async fn download(
    State(state): State<UiState>,
    viewer: Viewer,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Err(refused) = viewer.check_csrf(&headers, form.get("csrf").map(String::as_str)) {
        return *refused;
    }
    let sql = form
        .get("sql")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let format = form
        .get("format")
        .cloned()
        .unwrap_or_else(|| "parquet".into());
    if sql.is_empty() {
        return (StatusCode::BAD_REQUEST, "write a query first").into_response();
    }
    if format != "parquet" && format != "csv" {
        return (StatusCode::BAD_REQUEST, "format must be parquet or csv").into_response();
    }
    match &state.export {
        Some(export) => export(sql, format).await,
        None => (
            StatusCode::NOT_IMPLEMENTED,
            "this appliance has no export encoder",
        )
            .into_response(),
    }
}
