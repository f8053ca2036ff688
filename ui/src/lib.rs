//! Tally's web UI: maud pages, htmx fragments and SVG charts over the read-only query engine;
//! htmx and CSS vendored and embedded, so it works air-gapped.
//!
//! Every page is one [`layout::page`] around small component functions; a request that htmx
//! makes (`HX-Request: true`) gets only the part it swaps. Every number on a page comes from
//! a query file in `queries/` (named in the page's footnotes). Users sign in with a
//! Kubernetes token (TokenReview + SubjectAccessReview) or, in the demo, a one-time link; see
//! [`auth`].

pub mod auth;
pub mod background;
pub mod chart;
pub mod data;
pub mod format;
pub mod layout;
pub mod pages;
pub mod policy;
pub mod summary;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use tally_query::QueryEngine;
use tally_store::Store;

pub use auth::{Auth, KubernetesAuth, Permissions, Session, SignIn};

/// Streams a query's answer as a download: `(sql, format)` where format is `parquet` or
/// `csv`. The appliance's export endpoint provides it, so the UI and `/api/v1/export` encode
/// exactly the same way.
pub type ExportFn =
    Arc<dyn Fn(String, String) -> Pin<Box<dyn Future<Output = Response> + Send>> + Send + Sync>;

/// Everything the UI needs. Cheap to clone.
#[derive(Clone)]
pub struct UiState {
    pub engine: QueryEngine,
    /// Where approvals and rejections are written (the `actions` audit log).
    pub store: Arc<Store>,
    pub auth: Auth,
    pub export: Option<ExportFn>,
    /// The window pages summarise, in days up to now.
    pub window_days: i64,
    pub(crate) summary: summary::SummaryCache,
    /// The overview's cost allocation, refreshed in the background once a minute.
    pub(crate) allocation: pages::overview::AllocationCache,
    /// The nodes page's rows and the network page's tables, refreshed the same way.
    pub(crate) nodes: pages::nodes::NodesCache,
    pub(crate) network: pages::network::NetworkCache,
    pub(crate) policies: policy::PolicyStore,
    pub(crate) history: Arc<Mutex<HashMap<String, VecDeque<String>>>>,
    /// The clock (fixed in tests).
    pub now: fn() -> DateTime<Utc>,
}

impl UiState {
    /// The UI over `engine`; policies are kept in `policies_file` when given (else only in
    /// memory).
    pub fn new(
        engine: QueryEngine,
        store: Arc<Store>,
        auth: Auth,
        policies_file: Option<PathBuf>,
    ) -> UiState {
        UiState {
            engine,
            store,
            auth,
            export: None,
            window_days: 7,
            summary: summary::SummaryCache::default(),
            allocation: Default::default(),
            nodes: Default::default(),
            network: Default::default(),
            policies: policy::PolicyStore::open(policies_file),
            history: Arc::default(),
            now: Utc::now,
        }
    }

    /// Uses `summary` for the workloads table until it is a minute old (benchmarks measure
    /// rendering apart from the summary query).
    pub async fn set_summary(&self, summary: summary::Summary) {
        self.summary.set(summary).await;
    }

    /// Computes what the overview, nodes and network pages keep, now, and answers how long
    /// each took (benchmarks measure rendering apart from these queries).
    pub async fn warm_pages(
        &self,
    ) -> Result<Vec<(&'static str, std::time::Duration)>, data::DataError> {
        Ok(vec![
            (
                "overview cost allocation",
                self.allocation.refresh(self).await?,
            ),
            ("nodes", self.nodes.refresh(self).await?),
            ("network", self.network.refresh(self).await?),
        ])
    }

    /// With the appliance's export encoder for SQL console downloads.
    pub fn with_export(mut self, export: ExportFn) -> UiState {
        self.export = Some(export);
        self
    }
}

/// Every UI route: the pages, their htmx fragments, sign-in, and the embedded assets.
pub fn router(state: UiState) -> Router {
    Router::new()
        .route("/", get(pages::overview::page))
        .route("/overview/costs", get(pages::overview::costs_fragment))
        .route("/workloads", get(pages::workloads::page))
        .route(
            "/workloads/{namespace}/{kind}/{name}",
            get(pages::workload::page),
        )
        .route(
            "/workloads/{namespace}/{kind}/{name}/decision",
            post(pages::workload::decide),
        )
        .route("/nodes", get(pages::nodes::page))
        .route("/network", get(pages::network::page))
        .route("/recommendations", get(pages::recommendations::page))
        .route(
            "/policies",
            get(pages::policies::page).post(pages::policies::save),
        )
        .route("/policies/new", get(pages::policies::new_form))
        .route("/policies/{name}", get(pages::policies::edit_form))
        .route("/sql", get(pages::sql::page))
        .route("/sql/run", post(pages::sql::run))
        .route("/sql/download", post(pages::sql::download))
        .route("/settings", get(pages::settings::page))
        .route(
            "/sign-in",
            get(pages::sign_in::page).post(pages::sign_in::with_token),
        )
        .route("/sign-in/link", get(pages::sign_in::with_link))
        .route("/sign-out", post(pages::sign_in::sign_out))
        .route("/assets/htmx.min.js", get(htmx))
        .route("/assets/tally.css", get(css))
        .route("/assets/tally.js", get(js))
        .layer(axum::middleware::map_response(vary_on_htmx))
        .with_state(state)
}

/// Responses differ for htmx and full-page requests: caches must keep them apart.
async fn vary_on_htmx(mut response: Response) -> Response {
    response
        .headers_mut()
        .append(header::VARY, HeaderValue::from_static("HX-Request"));
    response
}

const HTMX: &str = include_str!("../assets/htmx.min.js");
const CSS: &str = include_str!("../assets/tally.css");
const JS: &str = include_str!("../assets/tally.js");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

async fn htmx() -> Response {
    asset("text/javascript; charset=utf-8", HTMX)
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

/// The signed-in user of a request and whether htmx made it. Requests without a valid
/// session are sent to the sign-in page (htmx ones with `HX-Redirect`).
pub struct Viewer {
    pub session: Session,
    /// `HX-Request: true`: answer with a fragment, not a whole page.
    pub htmx: bool,
}

/// Whether htmx made the request.
pub fn is_htmx(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get("hx-request")
        .is_some_and(|v| v.as_bytes() == b"true")
}

impl FromRequestParts<UiState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &UiState) -> Result<Self, Response> {
        let htmx = is_htmx(&parts.headers);
        let session = auth::cookie(&parts.headers, auth::SESSION_COOKIE)
            .and_then(|c| state.auth.open(c))
            .filter(|s| s.permissions.view);
        match session {
            Some(session) => Ok(Viewer { session, htmx }),
            None if htmx => Err((
                StatusCode::UNAUTHORIZED,
                [("HX-Redirect", "/sign-in")],
                "sign in first",
            )
                .into_response()),
            None => Err(Redirect::to("/sign-in").into_response()),
        }
    }
}

impl Viewer {
    /// Checks the CSRF token a form or htmx request sent back.
    pub fn check_csrf(
        &self,
        headers: &axum::http::HeaderMap,
        form_token: Option<&str>,
    ) -> Result<(), Box<Response>> {
        let sent =
            form_token.or_else(|| headers.get(auth::CSRF_HEADER).and_then(|v| v.to_str().ok()));
        match sent {
            Some(token)
                if auth::constant_time_eq(token.as_bytes(), self.session.csrf.as_bytes()) =>
            {
                Ok(())
            }
            _ => Err(Box::new(
                (
                    StatusCode::FORBIDDEN,
                    "the form's CSRF token is missing or stale: reload the page and try again",
                )
                    .into_response(),
            )),
        }
    }
}

#[cfg(test)]
mod tests;
