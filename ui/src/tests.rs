//! Route tests in-process: full pages vs htmx fragments, sign-in and CSRF, and escaping of
//! every user-supplied string (paths, query strings, form values, SQL, stored data).
//!
//! The data: a small simulated cluster (3 nodes, 12 workloads, 3 hours) written through the
//! real store, plus hand-made rows whose names are HTML and script.

use std::sync::Arc;

use arrow::array::{
    BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use http_body_util::BodyExt;
use tally_store::{Store, StoreConfig};
use tally_wire::Table;
use tower::ServiceExt;

use crate::auth::{Auth, Permissions, Session, SignIn};
use crate::{UiState, router};

/// A name that is HTML: it must only ever appear escaped.
const HOSTILE: &str = "<img src=x onerror=alert(1)>";
const HOSTILE_ESCAPED: &str = "&lt;img src=x onerror=alert(1)&gt;";

fn hostile_workload(now_ms: i64) -> RecordBatch {
    let text = |s: &str| Arc::new(StringArray::from(vec![s])) as _;
    RecordBatch::try_new(
        Table::Workloads.schema(),
        vec![
            Arc::new(
                TimestampMillisecondArray::from(vec![now_ms - 3_600_000]).with_timezone("UTC"),
            ),
            text("evil\"ns"),
            text("Deployment"),
            text(HOSTILE),
            text("c<script>"),
            Arc::new(Int64Array::from(vec![Some(2)])),
            Arc::new(Float64Array::from(vec![Some(0.5)])),
            Arc::new(Float64Array::from(vec![Some(1.0)])),
            Arc::new(Int64Array::from(vec![Some(1 << 28)])),
            Arc::new(Int64Array::from(vec![Some(1 << 29)])),
            Arc::new(Int64Array::from(vec![None::<i64>])),
            Arc::new(Int64Array::from(vec![None::<i64>])),
            Arc::new(Float64Array::from(vec![None::<f64>])),
            Arc::new(Int64Array::from(vec![None::<i64>])),
            Arc::new(StringArray::from(vec![None::<&str>])),
            Arc::new(BooleanArray::from(vec![false])),
        ],
    )
    .unwrap()
}

struct Fixture {
    _dir: tempfile::TempDir,
    app: Router,
    state: UiState,
    /// A session cookie with every permission.
    admin: String,
    /// A session cookie that may only view.
    viewer: String,
    admin_csrf: String,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StoreConfig::new(dir.path().join("data"));
    config.background = false;
    let store = Store::open(config).await.unwrap();
    let now_ms = chrono::Utc::now().timestamp_millis();
    let end = now_ms - now_ms.rem_euclid(60_000);
    let cluster = tally_simulator::Cluster::new(tally_simulator::SimConfig {
        nodes: 3,
        workloads: 12,
        namespaces: 7,
        epoch_ms: end - 30 * 86_400_000,
        ..tally_simulator::SimConfig::demo()
    });
    for (table, batch) in cluster.snapshot_batches(end - 3 * 3_600_000) {
        store.write(table, batch).await.unwrap();
    }
    for (table, batch) in cluster.samples(end - 3 * 3_600_000, end, 300_000, 65_536) {
        store.write(table, batch).await.unwrap();
    }
    store
        .write(Table::Workloads, hostile_workload(now_ms))
        .await
        .unwrap();
    store.flush().await.unwrap();
    let engine = tally_query::QueryEngine::new(store.clone(), tally_query::QueryLimits::default());
    let auth = Auth::new(SignIn::OneTimeLink);
    let state = UiState::new(
        engine,
        store,
        auth.clone(),
        Some(dir.path().join("policies.json")),
    );
    let session = |permissions| Session {
        user: "tester".into(),
        permissions,
        csrf: "csrf-token-1".into(),
        expires: chrono::Utc::now().timestamp() + 600,
    };
    let admin = session(Permissions {
        view: true,
        approve: true,
        admin: true,
    });
    let viewer = session(Permissions {
        view: true,
        ..Permissions::default()
    });
    Fixture {
        app: router(state.clone()),
        admin: format!("tally_session={}", auth.seal(&admin)),
        viewer: format!("tally_session={}", auth.seal(&viewer)),
        admin_csrf: admin.csrf,
        state,
        _dir: dir,
    }
}

async fn send(app: &Router, request: Request<Body>) -> (StatusCode, HeaderMap, String) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

fn get(path: &str, cookie: &str, htmx: bool) -> Request<Body> {
    let mut request = Request::get(path).header(header::COOKIE, cookie);
    if htmx {
        request = request.header("HX-Request", "true");
    }
    request.body(Body::empty()).unwrap()
}

fn post(path: &str, cookie: &str, form: &[(&str, &str)], htmx: bool) -> Request<Body> {
    let body: Vec<String> = form
        .iter()
        .map(|(k, v)| format!("{k}={}", crate::format::encode(v)))
        .collect();
    let mut request = Request::post(path)
        .header(header::COOKIE, cookie)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if htmx {
        request = request.header("HX-Request", "true");
    }
    request.body(Body::from(body.join("&"))).unwrap()
}

/// No raw hostile markup anywhere in a body.
fn assert_escaped(body: &str) {
    assert!(!body.contains("<img src=x"), "unescaped HTML in:\n{body}");
    assert!(!body.contains("<script>a"), "unescaped script in:\n{body}");
    assert!(
        !body.contains("c<script>"),
        "unescaped container name in:\n{body}"
    );
}

const PAGES: [&str; 8] = [
    "/",
    "/workloads",
    "/nodes",
    "/network",
    "/recommendations",
    "/policies",
    "/sql",
    "/settings",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_need_a_session_and_answer_documents_or_fragments() {
    let f = fixture().await;
    for path in PAGES {
        let (status, headers, _) = send(&f.app, get(path, "", false)).await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{path}");
        assert_eq!(headers[header::LOCATION], "/sign-in");
        let (status, headers, _) = send(&f.app, get(path, "", true)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(headers["hx-redirect"], "/sign-in");
        // A forged cookie is no session.
        let (status, _, _) = send(&f.app, get(path, "tally_session=e30.AAAA", false)).await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{path}");

        let (status, headers, page) = send(&f.app, get(path, &f.admin, false)).await;
        assert_eq!(status, StatusCode::OK, "{path}: {page}");
        assert!(page.starts_with("<!DOCTYPE html>"), "{path}");
        assert!(page.contains("<nav aria-label=\"Pages\">"), "{path}");
        assert!(
            page.contains(&format!("href=\"{path}\" aria-current=\"page\"")),
            "{path} is marked current"
        );
        assert!(
            headers
                .get_all(header::VARY)
                .iter()
                .any(|v| v == "HX-Request"),
            "{path}"
        );
        assert!(!page.contains("Could not read this"), "{path}: {page}");
        assert_escaped(&page);

        let (status, _, fragment) = send(&f.app, get(path, &f.admin, true)).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(!fragment.contains("<!DOCTYPE"), "{path}: {fragment}");
        assert!(!fragment.contains("<nav aria-label=\"Pages\">"), "{path}");
        assert!(fragment.starts_with("<h1>"), "{path}: {fragment}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_link_signs_in_once() {
    let f = fixture().await;
    let path = f.state.auth.one_time_path().unwrap();
    let (status, headers, _) = send(&f.app, get(&path, "", false)).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let cookie = headers[header::SET_COOKIE].to_str().unwrap();
    assert!(cookie.starts_with("tally_session="), "{cookie}");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap();
    let (status, _, page) = send(&f.app, get("/", session, false)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("demo"), "the user's name is shown");

    let (status, _, page) = send(&f.app, get(&path, "", false)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(page.contains("already used"), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workloads_table_filters_sorts_pages_and_escapes() {
    let f = fixture().await;
    // The first request computes the summary (a full page waits for it).
    let (_, _, page) = send(&f.app, get("/workloads", &f.admin, false)).await;
    assert!(page.contains("id=\"workload-table\""), "{page}");
    assert!(
        page.contains(HOSTILE_ESCAPED),
        "the hostile workload is listed, escaped"
    );
    assert_escaped(&page);

    let table = |query: &str| {
        Request::get(format!("/workloads{query}"))
            .header(header::COOKIE, &f.admin)
            .header("HX-Request", "true")
            .header("HX-Target", "workload-table")
            .body(Body::empty())
            .unwrap()
    };
    let (status, _, fragment) = send(&f.app, table("?sort=name&dir=asc")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        fragment.starts_with("<div id=\"workload-table\">"),
        "{fragment}"
    );
    assert!(fragment.contains("aria-sort=\"ascending\""), "{fragment}");
    let names: Vec<&str> = fragment
        .split("<a href=\"/workloads/")
        .skip(1)
        .map(|s| s.split("\">").nth(1).unwrap().split('<').next().unwrap())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "sorted by name");
    assert!(names.len() >= 12, "{names:?}");

    // Search reflects the query escaped, and filters.
    let (_, _, fragment) = send(&f.app, table("?q=%3Cimg")).await;
    assert!(fragment.contains("of 1"), "{fragment}");
    assert!(fragment.contains(HOSTILE_ESCAPED));
    assert_escaped(&fragment);
    let (_, _, page) = send(
        &f.app,
        get("/workloads?q=%3Cscript%3Ealert(1)", &f.admin, false),
    )
    .await;
    assert!(page.contains("value=\"&lt;script&gt;alert(1)\""), "{page}");
    assert!(!page.contains("<script>alert(1)"));
    let (_, _, fragment) = send(&f.app, table("?namespace=evil%22ns")).await;
    assert!(fragment.contains("of 1"), "{fragment}");
    // The link to the hostile workload is percent-encoded.
    assert!(
        fragment.contains(
            "/workloads/evil%22ns/Deployment/%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E"
        ),
        "{fragment}"
    );

    // Pages.
    let summary = f.state.summary.get(&f.state).await.unwrap();
    let total = summary.workloads.len();
    let (_, _, fragment) = send(&f.app, table("?sort=name&dir=asc&page=2")).await;
    if total > 50 {
        assert!(fragment.contains("Workloads 51–"), "{fragment}");
    } else {
        assert!(
            fragment.contains("Page 2 is past the last page (1)."),
            "{fragment}"
        );
        assert!(
            fragment.contains("href=\"/workloads?sort=name&amp;dir=asc&amp;page=1\""),
            "{fragment}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_page_charts_its_containers_and_escapes_its_names() {
    let f = fixture().await;
    let summary = crate::summary::compute(&f.state).await.unwrap();
    let w = summary
        .workloads
        .iter()
        .find(|w| w.kind == "Deployment" && w.cpu_p95_cores.is_some())
        .expect("a simulated deployment with usage");
    let path = crate::pages::workloads::workload_href(&w.namespace, &w.kind, &w.name);
    let (status, _, page) = send(&f.app, get(&path, &f.admin, false)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("<svg"), "charts: {page}");
    assert!(page.contains("request: "), "request line in the legend");
    assert!(page.contains("window p95"), "percentile lines");

    let path = crate::pages::workloads::workload_href("evil\"ns", "Deployment", HOSTILE);
    let (status, _, page) = send(&f.app, get(&path, &f.admin, false)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains(HOSTILE_ESCAPED), "{page}");
    assert!(page.contains("c&lt;script&gt;"), "{page}");
    assert_escaped(&page);

    let (status, _, page) = send(
        &f.app,
        get("/workloads/none/Deployment/%3Cb%3E", &f.admin, false),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        page.contains("&lt;b&gt;") && !page.contains("<b>"),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_need_the_csrf_token() {
    let f = fixture().await;
    let run = |cookie: &str, csrf: Option<&str>| {
        let mut form = vec![("sql", "SELECT 1 AS one")];
        if let Some(csrf) = csrf {
            form.push(("csrf", csrf));
        }
        post("/sql/run", cookie, &form, true)
    };
    let (status, _, _) = send(&f.app, run(&f.admin, None)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = send(&f.app, run(&f.admin, Some("wrong"))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, body) = send(&f.app, run(&f.admin, Some(&f.admin_csrf))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The header htmx sends works as well.
    let request = Request::post("/sql/run")
        .header(header::COOKIE, &f.admin)
        .header("HX-Request", "true")
        .header("X-CSRF-Token", &f.admin_csrf)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from("sql=SELECT+1"))
        .unwrap();
    let (status, _, _) = send(&f.app, request).await;
    assert_eq!(status, StatusCode::OK);
    for path in [
        "/policies",
        "/sign-out",
        "/sql/download",
        "/workloads/a/Deployment/b/decision",
    ] {
        let (status, _, _) = send(&f.app, post(path, &f.admin, &[("x", "y")], false)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sql_console_shows_results_errors_with_positions_and_escapes() {
    let f = fixture().await;
    let run = |sql: &str| {
        post(
            "/sql/run",
            &f.admin,
            &[("sql", sql), ("csrf", "csrf-token-1")],
            true,
        )
    };
    let (_, _, body) = send(&f.app, run("SELECT '<b>bold</b>' AS \"<i>x</i>\", 2 AS n")).await;
    assert!(body.contains("&lt;b&gt;bold&lt;/b&gt;"), "{body}");
    assert!(body.contains("&lt;i&gt;x&lt;/i&gt;"), "{body}");
    assert!(!body.contains("<b>bold"));
    assert!(body.contains("1 row"), "{body}");
    assert!(
        body.contains("hx-swap-oob"),
        "history refreshed out of band"
    );

    let (_, _, body) = send(&f.app, run("SELECT\n  nope_column\nFROM container_usage")).await;
    assert!(body.contains("role=\"alert\""), "{body}");
    assert!(body.contains("at line 2, column 3"), "{body}");
    assert!(body.contains("^"), "{body}");

    let (_, _, body) = send(&f.app, run("DROP TABLE pods")).await;
    assert!(body.contains("refused"), "{body}");

    // A time series is charted.
    let (_, _, body) = send(
        &f.app,
        run("SELECT date_trunc('hour', time) AS time, sum(cpu_cores) AS cpu FROM container_usage GROUP BY 1 ORDER BY 1"),
    )
    .await;
    assert!(body.contains("<svg"), "{body}");

    // The history keeps what ran, escaped.
    let (_, _, page) = send(&f.app, get("/sql", &f.admin, false)).await;
    assert!(
        page.contains("data-sql=\"SELECT &#39;&lt;b&gt;bold")
            || page.contains("data-sql=\"SELECT '&lt;b&gt;bold"),
        "{page}"
    );
    assert!(page.contains("container_usage_hourly"), "schema browser");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_errors_show_next_to_their_fields() {
    let f = fixture().await;
    let mut form: Vec<(String, String)> = crate::policy::new_form().into_iter().collect();
    let set = |form: &mut Vec<(String, String)>, k: &str, v: &str| {
        form.retain(|(key, _)| key != k);
        form.push((k.to_string(), v.to_string()));
    };
    set(&mut form, "name", "<script>alert(1)</script>");
    set(&mut form, "namespaces", "shop");
    set(&mut form, "min_cpu_cores", "4");
    set(&mut form, "max_cpu_cores", "2");
    set(&mut form, "csrf", &f.admin_csrf);
    let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (status, _, body) = send(&f.app, post("/policies", &f.admin, &pairs, true)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body.starts_with("<form"), "a fragment: {body}");
    assert!(body.contains("id=\"max_cpu_cores-error\""), "{body}");
    assert!(
        body.contains("aria-describedby=\"max_cpu_cores-error\""),
        "{body}"
    );
    assert!(
        body.contains("Maximum CPU must be at least the minimum (4 cores)"),
        "{body}"
    );
    assert!(body.contains("id=\"name-error\""), "{body}");
    assert!(
        body.contains("value=\"&lt;script&gt;alert(1)&lt;/script&gt;\""),
        "{body}"
    );
    assert!(!body.contains("<script>alert"));

    set(&mut form, "name", "shop-nightly");
    set(&mut form, "max_cpu_cores", "8");
    let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (status, headers, _) = send(&f.app, post("/policies", &f.admin, &pairs, false)).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[header::LOCATION], "/policies?saved=shop-nightly");
    let (_, _, page) = send(&f.app, get("/policies", &f.admin, false)).await;
    assert!(page.contains("shop-nightly"), "{page}");

    // Viewers may look but not edit.
    let (status, _, _) = send(&f.app, get("/policies/new", &f.viewer, false)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = send(&f.app, post("/policies", &f.viewer, &pairs, false)).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "the viewer's token is the same, the permission is not"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_go_to_the_audit_log_for_users_who_may_approve() {
    let f = fixture().await;
    let path = "/workloads/shop/Deployment/web/decision";
    let form = [
        ("csrf", "csrf-token-1"),
        ("decision", "approve"),
        ("reason", "<b>ok</b>"),
    ];
    let (status, _, _) = send(&f.app, post(path, &f.viewer, &form, true)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, body) = send(&f.app, post(path, &f.admin, &form, true)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("Approved"), "{body}");
    let rows = crate::data::run(&f.state.engine, &tally_queries::ui::ACTIONS, &[])
        .await
        .unwrap();
    let row = rows.iter().next().expect("one action");
    assert_eq!(row.text("operation"), "approve");
    assert_eq!(row.text("actor"), "tester");
    assert_eq!(row.text("result"), "approved");
    assert_eq!(row.text("message"), "<b>ok</b>");
    let (_, _, page) = send(&f.app, get("/recommendations", &f.admin, false)).await;
    assert!(page.contains("&lt;b&gt;ok&lt;/b&gt;"), "{page}");
    assert_escaped(&page);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assets_are_embedded() {
    let f = fixture().await;
    for (path, needle) in [
        ("/assets/htmx.min.js", "htmx"),
        ("/assets/tally.css", "--accent"),
        ("/assets/tally.js", "Intl.DateTimeFormat"),
    ] {
        let (status, _, body) = send(&f.app, get(path, "", false)).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(body.contains(needle), "{path}");
    }
    let (status, _, page) = send(&f.app, get("/sign-in", "", false)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("one-time sign-in link"), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_charts_cost_over_time_from_the_same_allocation_as_its_totals() {
    let f = fixture().await;
    let (status, _, page) = send(&f.app, get("/", &f.admin, false)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!page.contains("not charted yet"), "{page}");
    let chart = page
        .split("<h2>Cost over time</h2>")
        .nth(1)
        .expect("a Cost over time card");
    let chart = &chart[..chart.find("</section>").unwrap_or(chart.len())];
    assert!(
        chart.contains("<svg") && chart.contains("Cluster cost and allocated cost per hour, USD"),
        "{chart}"
    );
    assert!(chart.contains("Cluster cost (allocated + idle)"), "{chart}");
    assert!(chart.contains("Allocated to workloads"), "{chart}");
    // Hourly points: the fixture has three hours of history, two of them whole.
    let rows = crate::pages::overview::cost_allocation(&f.state, "hour,namespace")
        .await
        .unwrap();
    let hours: std::collections::BTreeSet<&str> = rows
        .iter()
        .filter_map(|r| r.text("name").split_once('/').map(|(h, _)| h))
        .collect();
    assert!(hours.len() >= 2, "{hours:?}");
    // The monthly figure is the hourly cost the chart shows, times the hours of a month: it
    // is scaled from the hours that have costs, not from the whole (mostly empty) window.
    let total: f64 = rows
        .iter()
        .map(|r| r.float("total_cost_usd").unwrap_or(0.0))
        .sum();
    let monthly = crate::format::usd(Some(total * 730.0 / hours.len() as f64));
    assert!(
        page.contains(&format!("{monthly}</")),
        "cluster cost / month {monthly} on the page"
    );
    // The placeholder polls /overview/costs: it answers the cards alone.
    let (status, _, fragment) = send(&f.app, get("/overview/costs", &f.admin, true)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        fragment.starts_with("<div id=\"overview-costs\">")
            && fragment.contains("<h2>Cost over time</h2>"),
        "{fragment}"
    );
    // Namespaces are summed over the hours: each appears once in the bars.
    let by_namespace = page
        .split("Cost per month by namespace")
        .nth(2)
        .unwrap_or("");
    for h in &hours {
        assert!(
            !by_namespace.contains(h),
            "hours do not leak into namespace names"
        );
    }
}

/// One AWS on-demand price per simulated instance type (0.05 $ per vCPU-hour), so the
/// network page can find the provider and price traffic.
fn aws_prices(now_ms: i64) -> RecordBatch {
    let types: Vec<_> = tally_simulator::instance_types().collect();
    let n = types.len();
    let text = |v: Vec<&str>| Arc::new(StringArray::from(v)) as _;
    RecordBatch::try_new(
        Table::Prices.schema(),
        vec![
            Arc::new(
                TimestampMillisecondArray::from(vec![now_ms - 30 * 86_400_000; n])
                    .with_timezone("UTC"),
            ),
            text(vec!["aws"; n]),
            text(vec!["us-east-1"; n]),
            text(types.iter().map(|t| t.name).collect()),
            text(vec!["on_demand"; n]),
            Arc::new(Float64Array::from(
                types
                    .iter()
                    .map(|t| 0.05 * f64::from(t.vcpu))
                    .collect::<Vec<_>>(),
            )),
            Arc::new(Float64Array::from(
                types
                    .iter()
                    .map(|t| Some(f64::from(t.vcpu)))
                    .collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(
                types
                    .iter()
                    .map(|t| Some(i64::from(t.memory_gib) << 30))
                    .collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(vec![Some(0); n])),
            text(vec!["catalog"; n]),
        ],
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_network_page_shows_traffic_and_cost_by_class_and_egress_by_domain() {
    let f = fixture().await;
    // Without prices no provider is known: classes show, at no cost.
    let (status, _, page) = send(&f.app, get("/network", &f.admin, false)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("<h2>Traffic and cost by class</h2>"),
        "{page}"
    );
    assert!(page.contains("<td>internet_egress</td>"), "{page}");
    assert!(!page.contains("Could not read this"), "{page}");

    let now_ms = chrono::Utc::now().timestamp_millis();
    f.state
        .store
        .write(Table::Prices, aws_prices(now_ms))
        .await
        .unwrap();
    // The page keeps its tables for a minute: recompute them with the prices.
    f.state.network.refresh(&f.state).await.unwrap();
    let (_, _, page) = send(&f.app, get("/network", &f.admin, false)).await;
    let classes = page
        .split("<h2>Traffic and cost by class</h2>")
        .nth(1)
        .unwrap();
    let classes = &classes[..classes.find("</section>").unwrap()];
    // Internet egress is billed at AWS's 0.09 $/GiB: its row has a cost above zero.
    let egress_row = classes
        .split("<tr>")
        .find(|row| row.contains("<td>internet_egress</td>"))
        .expect("an internet_egress row");
    let cost = egress_row
        .rsplit("<td class=\"n\">")
        .next()
        .unwrap()
        .trim_end_matches(|c: char| !c.is_ascii_digit());
    let usd: f64 = cost
        .trim_start_matches('$')
        .replace(',', "")
        .parse()
        .unwrap_or_else(|e| panic!("{cost:?}: {e}; {egress_row}"));
    assert!(usd > 0.0, "{egress_row}");
    assert!(page.contains("<h2>Egress by domain</h2>"));
    assert!(page.contains("<h2>Costliest workload pairs</h2>"));
    assert!(page.contains("queries/network_cost_by_class.sql"));
}

/// Counts computations of [`Slow`].
static SLOW_COMPUTATIONS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Page data that takes 1.5 s to compute.
struct Slow(usize);

impl crate::background::Computed for Slow {
    const WHAT: &'static str = "slow test data";

    async fn compute(_state: &crate::UiState) -> Result<Self, crate::data::DataError> {
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        Ok(Slow(
            SLOW_COMPUTATIONS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1,
        ))
    }

    fn fresh(&self, _state: &crate::UiState) -> bool {
        true
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_data_is_computed_once_in_the_background_and_requests_do_not_wait_for_it() {
    let f = fixture().await;
    let cache = crate::background::Background::<Slow>::default();
    // Ten requests at once, each willing to wait 50 ms: all answer "not yet" (the page then
    // shows progress) rather than waiting for the 1.5 s computation, and one starts.
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let (cache, state) = (cache.clone(), f.state.clone());
        requests.spawn(async move {
            cache
                .get_within(&state, std::time::Duration::from_millis(50))
                .await
                .is_none()
        });
    }
    while let Some(not_yet) = requests.join_next().await {
        assert!(not_yet.unwrap());
    }
    // Once it is there, everyone gets the same one.
    let first = cache
        .get_within(&f.state, std::time::Duration::from_secs(5))
        .await
        .expect("computed");
    assert_eq!(first.0, 1);
    assert_eq!(
        SLOW_COMPUTATIONS.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one computation for ten requests"
    );
}
