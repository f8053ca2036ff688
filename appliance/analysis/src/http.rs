//! The analysis HTTP API, merged into the appliance's router:
//!
//! - `GET /allocation?window=7d&aggregate=namespace` — cost allocation in OpenCost's answer
//!   shape (`{"code": 200, "status": "success", "data": [{"<name>": {allocation}}]}`), so
//!   OpenCost and Kubecost dashboards and scripts can read Tally. `window`: a duration (`30m`,
//!   `12h`, `7d`, `2w`), `today`, `yesterday`, or two RFC 3339 times or Unix seconds separated
//!   by a comma; widened to whole hours. `aggregate`: comma-separated `cluster`, `node`,
//!   `namespace`, `controllerKind`, `controller` (or `workload`), `pod`, `container` and one
//!   `label:<key>`. `includeIdle=false` leaves out the `__idle__` rows.
//! - `GET /api/v1/recommendations?run_id=&kind=` — the newest run's recommendations (or the
//!   given run's), optionally of one kind, as `{columns, rows, row_count, truncated}`.
//! - `POST /api/v1/analysis/run[?at=RFC3339]` — runs the analysis now (or as of `at`) and
//!   answers its summary.

use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type};
use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Duration, DurationRound, TimeZone, Utc};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tally_queries::{Param, analysis};

use crate::Analyzer;

/// The routes above, over `analyzer`.
pub fn router(analyzer: Arc<Analyzer>) -> Router {
    Router::new()
        .route("/allocation", get(allocation))
        .route("/api/v1/recommendations", get(recommendations))
        .route("/api/v1/analysis/run", post(run_now))
        .with_state(analyzer)
}

/// What the network cost column means until network monitoring prices traffic.
pub const NETWORK_NOTE: &str = "gpuCost and pvCost are 0: no GPU or volume prices are stored yet, and they are never estimated. networkCost prices each flow netmon measured at its traffic class's list rate (queries/network_rates.sql) for the provider of the nodes' instance types; traffic of pods without usage samples is in __network_without_usage__";

fn error(status: StatusCode, kind: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({ "code": status.as_u16(), "error": { "kind": kind, "message": message.into() } })),
    )
        .into_response()
}

fn bad_request(message: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// Parses an OpenCost `window` at `now` into [start, end), widened to whole hours.
pub fn parse_window(
    text: &str,
    now: DateTime<Utc>,
) -> Result<(DateTime<Utc>, DateTime<Utc>), String> {
    let text = text.trim();
    let hour = Duration::hours(1);
    let floor = |t: DateTime<Utc>| t.duration_trunc(hour).expect("hours truncate");
    let ceil = |t: DateTime<Utc>| {
        let f = floor(t);
        if f == t { t } else { f + hour }
    };
    let day_start = floor(now) - Duration::hours(i64::from(chrono::Timelike::hour(&now)));
    let (start, end) = match text {
        "" => return Err("window is required, e.g. window=7d".into()),
        "today" => (day_start, ceil(now)),
        "yesterday" => (day_start - Duration::days(1), day_start),
        _ if text.contains(',') => {
            let (a, b) = text.split_once(',').expect("has a comma");
            let point = |s: &str| -> Result<DateTime<Utc>, String> {
                let s = s.trim();
                if let Ok(secs) = s.parse::<i64>() {
                    return Utc
                        .timestamp_opt(secs, 0)
                        .single()
                        .ok_or_else(|| format!("`{s}` is not a Unix time"));
                }
                DateTime::parse_from_rfc3339(s)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|e| format!("`{s}` is neither RFC 3339 nor Unix seconds: {e}"))
            };
            (floor(point(a)?), ceil(point(b)?))
        }
        _ => {
            let split = text
                .find(|c: char| !c.is_ascii_digit())
                .ok_or_else(|| format!("window `{text}` needs a unit: m, h, d or w"))?;
            let (n, unit) = text.split_at(split);
            let n: i64 = n
                .parse()
                .map_err(|_| format!("window `{text}` should look like 7d, 24h or 30m"))?;
            let length = match unit {
                "m" => Duration::minutes(n),
                "h" => Duration::hours(n),
                "d" => Duration::days(n),
                "w" => Duration::weeks(n),
                other => {
                    return Err(format!(
                        "unknown window unit `{other}` in `{text}`: use m, h, d, w, today, yesterday, or start,end"
                    ));
                }
            };
            (floor(now - length), ceil(now))
        }
    };
    if end <= start {
        return Err(format!(
            "window `{text}` is empty: its end is not after its start"
        ));
    }
    if end - start > Duration::days(366) {
        return Err(format!("window `{text}` is longer than a year"));
    }
    Ok((start, end))
}

/// The aggregation fields in the order the query joins them into a name.
const FIELDS: [&str; 7] = [
    "cluster",
    "node",
    "namespace",
    "controllerKind",
    "controller",
    "pod",
    "container",
];

/// Validates `aggregate` and answers the normalised list (`workload` is `controller`).
pub fn parse_aggregate(text: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    let mut labels = 0;
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let part = if part == "workload" {
            "controller"
        } else {
            part
        };
        if let Some(key) = part.strip_prefix("label:") {
            if key.is_empty() || key.contains(['"', '\\']) {
                return Err(format!("`{part}` needs a label key, like label:team"));
            }
            labels += 1;
        } else if !FIELDS.contains(&part) {
            return Err(format!(
                "cannot aggregate by `{part}`: use cluster, node, namespace, controllerKind, controller, workload, pod, container or label:<key>"
            ));
        }
        if !out.iter().any(|p| p == part) {
            out.push(part.to_string());
        }
    }
    if labels > 1 {
        return Err("aggregate by at most one label".into());
    }
    if out.is_empty() {
        out.push("cluster".into());
    }
    Ok(out)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AllocationParams {
    window: Option<String>,
    aggregate: Option<String>,
    include_idle: Option<bool>,
    share_idle: Option<bool>,
}

fn floats(batch: &RecordBatch, name: &str) -> Vec<Option<f64>> {
    let Some(c) = batch.column_by_name(name) else {
        return vec![None; batch.num_rows()];
    };
    let c = cast(c, &DataType::Float64).expect("numbers cast to f64");
    let f = c.as_primitive::<Float64Type>();
    (0..f.len())
        .map(|i| f.is_valid(i).then(|| f.value(i)))
        .collect()
}

async fn allocation(
    State(analyzer): State<Arc<Analyzer>>,
    Query(params): Query<AllocationParams>,
) -> Response {
    let (start, end) = match parse_window(params.window.as_deref().unwrap_or(""), Utc::now()) {
        Ok(w) => w,
        Err(e) => return bad_request(e),
    };
    let aggregate = match parse_aggregate(params.aggregate.as_deref().unwrap_or("cluster")) {
        Ok(a) => a,
        Err(e) => return bad_request(e),
    };
    if params.share_idle == Some(true) {
        return bad_request("shareIdle is not supported: idle cost is reported as __idle__ rows");
    }
    match allocation_json(
        &analyzer,
        start,
        end,
        &aggregate,
        params.include_idle.unwrap_or(true),
    )
    .await
    {
        Ok(body) => Json(body).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "analysis", e.to_string()),
    }
}

/// The OpenCost-shaped allocation answer for [start, end) by `aggregate`.
pub async fn allocation_json(
    analyzer: &Analyzer,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    aggregate: &[String],
    include_idle: bool,
) -> Result<Value, crate::AnalysisError> {
    let c = analyzer.config();
    let batches = analyzer
        .query(
            analysis::COST_ALLOCATION,
            &[
                ("window_start", Param::Timestamp(start)),
                ("window_end", Param::Timestamp(end)),
                ("aggregate", Param::Text(aggregate.join(","))),
                (
                    "default_cpu_core_hour_usd",
                    Param::Float(c.default_cpu_core_hour_usd),
                ),
                (
                    "default_memory_gib_hour_usd",
                    Param::Float(c.default_memory_gib_hour_usd),
                ),
                ("provider", Param::Text(c.cloud_provider.clone())),
            ],
        )
        .await?;
    let hours = (end - start).num_seconds() as f64 / 3600.0;
    let window = json!({ "start": start.to_rfc3339(), "end": end.to_rfc3339() });
    let mut set = Map::new();
    for b in &batches {
        let name = cast(
            b.column_by_name("name").expect("name column"),
            &DataType::Utf8,
        )
        .expect("names are text");
        let name = name.as_string::<i32>();
        let get = |col: &str| floats(b, col);
        let (cpu_cores, cpu_req_h, cpu_use_h, cpu_h, cpu_cost) = (
            get("cpu_cores"),
            get("cpu_core_request_hours"),
            get("cpu_core_usage_hours"),
            get("cpu_core_hours"),
            get("cpu_cost_usd"),
        );
        let (ram_req_h, ram_use_h, ram_h, ram_cost) = (
            get("ram_byte_request_hours"),
            get("ram_byte_usage_hours"),
            get("ram_byte_hours"),
            get("ram_cost_usd"),
        );
        let (net_cost, net_tx, net_rx) = (
            get("network_cost_usd"),
            get("network_transfer_bytes"),
            get("network_receive_bytes"),
        );
        let (total, cpu_eff, ram_eff, total_eff) = (
            get("total_cost_usd"),
            get("cpu_efficiency"),
            get("ram_efficiency"),
            get("total_efficiency"),
        );
        for i in 0..b.num_rows() {
            let n = name.value(i).to_string();
            let idle = n == "__idle__" || n.ends_with("/__idle__");
            if idle && !include_idle {
                continue;
            }
            let mut properties = Map::new();
            if !idle && n != "__network_without_usage__" {
                let mut parts = n.splitn(FIELDS.len() + 1, '/');
                for field in FIELDS.iter().filter(|f| aggregate.iter().any(|a| a == *f)) {
                    if let Some(v) = parts.next() {
                        properties.insert((*field).to_string(), json!(v));
                    }
                }
                if let Some(label) = aggregate.iter().find_map(|a| a.strip_prefix("label:"))
                    && let Some(v) = parts.next()
                {
                    properties.insert("labels".into(), json!({ label: v }));
                }
            } else if let Some(node) = n.strip_suffix("/__idle__") {
                properties.insert("node".into(), json!(node));
            }
            let z = |v: Option<f64>| v.unwrap_or(0.0);
            let avg = |v: Option<f64>| z(v) / hours;
            set.insert(
                n.clone(),
                json!({
                    "name": n,
                    "properties": properties,
                    "window": window,
                    "start": start.to_rfc3339(),
                    "end": end.to_rfc3339(),
                    "minutes": hours * 60.0,
                    "cpuCores": z(cpu_cores[i]),
                    "cpuCoreRequestAverage": avg(cpu_req_h[i]),
                    "cpuCoreUsageAverage": avg(cpu_use_h[i]),
                    "cpuCoreHours": z(cpu_h[i]),
                    "cpuCost": z(cpu_cost[i]),
                    "cpuCostAdjustment": 0.0,
                    "cpuEfficiency": z(cpu_eff[i]),
                    "gpuCount": 0.0,
                    "gpuHours": 0.0,
                    "gpuCost": 0.0,
                    "gpuCostAdjustment": 0.0,
                    "networkTransferBytes": z(net_tx[i]),
                    "networkReceiveBytes": z(net_rx[i]),
                    "networkCost": z(net_cost[i]),
                    "networkCostAdjustment": 0.0,
                    "loadBalancerCost": 0.0,
                    "pvBytes": 0.0,
                    "pvByteHours": 0.0,
                    "pvCost": 0.0,
                    "pvCostAdjustment": 0.0,
                    "ramBytes": avg(ram_h[i]),
                    "ramByteRequestAverage": avg(ram_req_h[i]),
                    "ramByteUsageAverage": avg(ram_use_h[i]),
                    "ramByteHours": z(ram_h[i]),
                    "ramCost": z(ram_cost[i]),
                    "ramCostAdjustment": 0.0,
                    "ramEfficiency": z(ram_eff[i]),
                    "sharedCost": 0.0,
                    "externalCost": 0.0,
                    "totalCost": z(total[i]),
                    "totalEfficiency": z(total_eff[i]),
                }),
            );
        }
    }
    Ok(json!({
        "code": 200,
        "status": "success",
        "data": [set],
        "warning": NETWORK_NOTE,
    }))
}

#[derive(Debug, Deserialize)]
struct RecommendationParams {
    run_id: Option<String>,
    kind: Option<String>,
}

async fn recommendations(
    State(analyzer): State<Arc<Analyzer>>,
    Query(params): Query<RecommendationParams>,
) -> Response {
    let kind = params.kind.unwrap_or_default();
    if ![
        "",
        "rightsizing",
        "replicas",
        "hpa",
        "consolidation",
        "instance_type",
    ]
    .contains(&kind.as_str())
    {
        return bad_request(format!(
            "unknown kind `{kind}`: use rightsizing, replicas, hpa, consolidation or instance_type"
        ));
    }
    let sql = analysis::LATEST_RECOMMENDATIONS.render(&[
        ("run_id", Param::Text(params.run_id.unwrap_or_default())),
        ("kind", Param::Text(kind)),
    ]);
    let sql = match sql {
        Ok(s) => s,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "analysis", e.to_string()),
    };
    match analyzer.engine().json(&sql).await {
        Ok(result) => Json(result).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "query", e.to_string()),
    }
}

#[derive(Debug, Deserialize)]
struct RunParams {
    /// Analyse as of this time (RFC 3339) instead of now, e.g. for replayed history.
    at: Option<String>,
}

async fn run_now(
    State(analyzer): State<Arc<Analyzer>>,
    Query(params): Query<RunParams>,
) -> Response {
    let at = match params.at.as_deref() {
        None | Some("") => Utc::now(),
        Some(text) => match DateTime::parse_from_rfc3339(text) {
            Ok(t) => t.with_timezone(&Utc),
            Err(e) => return bad_request(format!("`at` must be an RFC 3339 time: {e}")),
        },
    };
    let seeded = analyzer.seed_catalog().await;
    if let Err(e) = seeded {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "analysis", e.to_string());
    }
    match analyzer.run(at).await {
        Ok(summary) => Json(summary).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "analysis", e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn windows_parse_like_opencost_and_widen_to_hours() {
        let now = at("2026-01-05T10:20:00Z");
        assert_eq!(
            parse_window("7d", now).unwrap(),
            (at("2025-12-29T10:00:00Z"), at("2026-01-05T11:00:00Z"))
        );
        assert_eq!(
            parse_window("today", now).unwrap(),
            (at("2026-01-05T00:00:00Z"), at("2026-01-05T11:00:00Z"))
        );
        assert_eq!(
            parse_window("yesterday", now).unwrap(),
            (at("2026-01-04T00:00:00Z"), at("2026-01-05T00:00:00Z"))
        );
        assert_eq!(
            parse_window("2026-01-01T00:30:00Z,2026-01-02T00:00:00Z", now).unwrap(),
            (at("2026-01-01T00:00:00Z"), at("2026-01-02T00:00:00Z"))
        );
        assert_eq!(
            parse_window("1767225600,1767229200", now).unwrap(),
            (at("2026-01-01T00:00:00Z"), at("2026-01-01T01:00:00Z"))
        );
        assert!(
            parse_window("7y", now)
                .unwrap_err()
                .contains("unknown window unit")
        );
        assert!(parse_window("", now).unwrap_err().contains("required"));
        assert!(
            parse_window("2026-01-02T00:00:00Z,2026-01-01T00:00:00Z", now)
                .unwrap_err()
                .contains("empty")
        );
    }

    #[test]
    fn aggregates_are_checked_and_normalised() {
        assert_eq!(
            parse_aggregate("namespace, workload").unwrap(),
            vec!["namespace", "controller"]
        );
        assert_eq!(parse_aggregate("").unwrap(), vec!["cluster"]);
        assert!(
            parse_aggregate("service")
                .unwrap_err()
                .contains("cannot aggregate by `service`")
        );
        assert!(
            parse_aggregate("label:a,label:b")
                .unwrap_err()
                .contains("at most one label")
        );
        assert!(
            parse_aggregate("label:")
                .unwrap_err()
                .contains("needs a label key")
        );
    }
}
