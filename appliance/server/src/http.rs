//! The HTTP server: the web UI (`tally_ui`), the SQL API, Parquet/CSV export, the table
//! catalog, health and Prometheus metrics.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use tally_query::{QueryEngine, QueryError};
use tally_store::Store;
use tally_wire::Table;

use crate::export::{self, ExportFormat};

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<Store>,
    pub engine: QueryEngine,
    pub flight_addr: SocketAddr,
    pub tls: bool,
    /// The web UI, served at `/` and its pages.
    pub ui: tally_ui::UiState,
}

pub fn router(state: AppState) -> Router {
    let ui = tally_ui::router(state.ui.clone().with_export(ui_export(state.clone())));
    Router::new()
        .route("/api/v1/sql", post(sql))
        .route("/api/v1/tables", get(tables))
        .route("/api/v1/export", get(export_table).post(export_query))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .with_state(state)
        .merge(ui)
}

/// The SQL console's downloads, encoded exactly as `POST /api/v1/export` encodes them.
fn ui_export(state: AppState) -> tally_ui::ExportFn {
    std::sync::Arc::new(move |sql: String, format: String| {
        let state = state.clone();
        Box::pin(async move {
            let format = match format.as_str() {
                "csv" => ExportFormat::Csv,
                _ => ExportFormat::Parquet,
            };
            match stream_export(&state, &sql, format, "query").await {
                Ok(response) => response,
                Err(error) => error.into_response(),
            }
        })
    })
}

const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// A JSON error body: `{"error": {"kind", "message", "line", "column"}}`.
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    position: Option<(u64, u64)>,
}

impl ApiError {
    fn bad_request(kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind,
            message: message.into(),
            position: None,
        }
    }
}

impl From<QueryError> for ApiError {
    fn from(error: QueryError) -> Self {
        let status = match &error {
            QueryError::Refused { .. } => StatusCode::FORBIDDEN,
            QueryError::ResourcesExhausted(_) | QueryError::Timeout(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            e if e.is_client_error() => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self {
            status,
            kind: error.kind(),
            position: error.position().map(|p| (p.line, p.column)),
            message: error.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = serde_json::json!({ "kind": self.kind, "message": self.message });
        if let Some((line, column)) = self.position {
            error["line"] = line.into();
            error["column"] = column.into();
        }
        (self.status, Json(serde_json::json!({ "error": error }))).into_response()
    }
}

#[derive(Debug, Deserialize)]
pub struct SqlRequest {
    pub sql: String,
}

/// `POST /api/v1/sql` with `{"sql": "..."}`: JSON rows by default, an Arrow IPC stream when
/// the request accepts `application/vnd.apache.arrow.stream`.
async fn sql(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let request: SqlRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "bad_request",
            format!("expected a JSON body like {{\"sql\": \"SELECT 1\"}}: {e}"),
        )
    })?;
    let wants_arrow = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains(ARROW_STREAM));
    if wants_arrow {
        let result = state.engine.execute(&request.sql).await?;
        let body = Body::from_stream(result.into_ipc());
        return Ok(([(header::CONTENT_TYPE, ARROW_STREAM)], body).into_response());
    }
    let answer = state.engine.json(&request.sql).await?;
    Ok(Json(answer).into_response())
}

async fn tables(State(state): State<AppState>) -> Response {
    Json(state.engine.catalog()).into_response()
}

#[derive(Debug, Deserialize)]
pub struct ExportTableParams {
    pub table: String,
    pub from: Option<String>,
    pub to: Option<String>,
    pub format: Option<ExportFormat>,
}

fn parse_time(name: &str, value: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            ApiError::bad_request(
                "bad_request",
                format!("`{name}` must be an RFC 3339 time like 2026-01-31T00:00:00Z: {e}"),
            )
        })
}

/// `GET /api/v1/export?table=…&from=…&to=…&format=parquet|csv`: rows with from ≤ time < to.
async fn export_table(
    State(state): State<AppState>,
    Query(params): Query<ExportTableParams>,
) -> Result<Response, ApiError> {
    let table: Table = params
        .table
        .parse()
        .map_err(|e: tally_wire::UnknownTable| {
            ApiError::bad_request("unknown_table", e.to_string())
        })?;
    let mut conditions = Vec::new();
    if let Some(from) = &params.from {
        let from = parse_time("from", from)?;
        conditions.push(format!(
            "time >= TIMESTAMP '{}'",
            from.format("%Y-%m-%dT%H:%M:%S%.3fZ")
        ));
    }
    if let Some(to) = &params.to {
        let to = parse_time("to", to)?;
        conditions.push(format!(
            "time < TIMESTAMP '{}'",
            to.format("%Y-%m-%dT%H:%M:%S%.3fZ")
        ));
    }
    let mut sql = format!("SELECT * FROM {}", table.name());
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    stream_export(
        &state,
        &sql,
        params.format.unwrap_or(ExportFormat::Parquet),
        table.name(),
    )
    .await
}

#[derive(Debug, Deserialize)]
pub struct ExportQueryRequest {
    pub sql: String,
    pub format: Option<ExportFormat>,
}

/// `POST /api/v1/export` with `{"sql": "...", "format": "parquet"|"csv"}`.
async fn export_query(
    State(state): State<AppState>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let request: ExportQueryRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "bad_request",
            format!(
                "expected a JSON body like {{\"sql\": \"SELECT …\", \"format\": \"parquet\"}}: {e}"
            ),
        )
    })?;
    stream_export(
        &state,
        &request.sql,
        request.format.unwrap_or(ExportFormat::Parquet),
        "query",
    )
    .await
}

async fn stream_export(
    state: &AppState,
    sql: &str,
    format: ExportFormat,
    name: &str,
) -> Result<Response, ApiError> {
    let result = state.engine.execute(sql).await?;
    let schema = result.schema();
    let body = Body::from_stream(export::encode(format, schema, result));
    let disposition = format!(
        "attachment; filename=\"tally-{name}.{}\"",
        format.extension()
    );
    Ok((
        [
            (header::CONTENT_TYPE, format.content_type().to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response())
}

async fn metrics(State(state): State<AppState>) -> Response {
    let stats = state.store.stats();
    let mut out = String::new();
    let mut metric = |name: &str, help: &str, kind: &str, value: u64| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        ));
    };
    metric(
        "tally_ingest_rows_total",
        "Rows acknowledged (durable in the write-ahead log).",
        "counter",
        stats.acknowledged_rows,
    );
    metric(
        "tally_ingest_batches_total",
        "Batches acknowledged.",
        "counter",
        stats.acknowledged_batches,
    );
    metric(
        "tally_wal_bytes_total",
        "Bytes appended to the write-ahead log.",
        "counter",
        stats.wal_bytes,
    );
    metric(
        "tally_hot_rows",
        "Rows buffered in memory, not yet in Parquet.",
        "gauge",
        stats.hot_rows,
    );
    metric(
        "tally_flushes_total",
        "Flushes of the hot buffer to Parquet.",
        "counter",
        stats.flushes,
    );
    metric(
        "tally_compactions_total",
        "Partitions compacted.",
        "counter",
        stats.compactions,
    );
    metric(
        "tally_parquet_files",
        "Published Parquet files.",
        "gauge",
        stats.files,
    );
    metric(
        "tally_parquet_bytes",
        "Bytes of published Parquet files.",
        "gauge",
        stats.parquet_bytes,
    );
    metric(
        "tally_replayed_rows",
        "Rows restored from the write-ahead log at start.",
        "gauge",
        stats.replayed_rows,
    );
    metric(
        "tally_ingest_duplicate_batches_total",
        "Batches sent again with a batch key already durable: acknowledged, not stored again.",
        "counter",
        stats.duplicate_batches,
    );
    metric(
        "tally_ingest_duplicate_rows_total",
        "Rows of those batches.",
        "counter",
        stats.duplicate_rows,
    );
    metric(
        "tally_ingest_producers",
        "Producers whose batch keys are remembered (idle ones are forgotten after a day).",
        "gauge",
        stats.producers,
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
