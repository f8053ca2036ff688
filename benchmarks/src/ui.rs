//! `tally-bench ui`: server render time per page of the web UI at 30,000 workloads: each
//! page requested in-process through the UI's router (session cookie, queries, maud), p50
//! and p99 over repeated requests; plus the workload summary's refresh time (the query
//! behind the workloads table, run in the background once a minute).

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, header};
use http_body_util::BodyExt;
use tally_simulator::{Cluster, SimConfig};
use tally_store::{Store, StoreConfig};
use tally_ui::{Auth, Permissions, Session, SignIn, UiState};
use tower::ServiceExt;

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// Loads `hours` of a simulated cluster of `workloads` workloads into a fresh store, then
/// requests every page `repeat` times.
pub async fn ui(workloads: usize, hours: i64, repeat: usize) -> (String, String) {
    let dir = std::env::temp_dir().join(format!("tally-bench-ui-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = StoreConfig::new(dir.join("data"));
    config.background = false;
    config.max_batch_rows = 1 << 20;
    let store = Store::open(config).await.expect("open store");
    let cluster = Cluster::new(SimConfig {
        workloads,
        // The demo's proportions: 50 nodes and 20 namespaces for 600 workloads.
        nodes: (workloads / 12).max(3),
        namespaces: (workloads / 1_000 + 20).max(20),
        ..SimConfig::demo()
    });
    let now = chrono::Utc::now().timestamp_millis();
    let end = now - now.rem_euclid(300_000);
    let start = end - hours * 3_600_000;
    let load_started = Instant::now();
    let mut rows = 0usize;
    for (table, batch) in cluster.snapshot_batches(start) {
        store.write(table, batch).await.expect("write");
    }
    for (table, batch) in cluster.samples(start, end, 300_000, 65_536) {
        rows += batch.num_rows();
        store.write(table, batch).await.expect("write");
    }
    store.flush().await.expect("flush");
    let load = load_started.elapsed();
    eprintln!("  ui: loaded {rows} rows in {:.1} s", load.as_secs_f64());

    let engine = tally_query::QueryEngine::new(store.clone(), tally_query::QueryLimits::default());
    let auth = Auth::new(SignIn::OneTimeLink);
    let session = Session {
        user: "bench".into(),
        permissions: Permissions {
            view: true,
            approve: true,
            admin: true,
        },
        csrf: "bench".into(),
        expires: chrono::Utc::now().timestamp() + 86_400,
    };
    let cookie = format!("tally_session={}", auth.seal(&session));
    let state = UiState::new(engine, store.clone(), auth, None);

    let summary_started = Instant::now();
    let summary = tally_ui::summary::compute(&state).await.expect("summary");
    let summary_time = summary_started.elapsed();
    let listed = summary.workloads.len();
    let some = summary
        .workloads
        .iter()
        .find(|w| w.kind == "Deployment")
        .map(|w| tally_ui::pages::workloads::workload_href(&w.namespace, &w.kind, &w.name))
        .unwrap_or_else(|| "/workloads/none/Deployment/none".into());
    let search = summary
        .workloads
        .get(listed / 2)
        .map(|w| w.name.chars().take(6).collect::<String>())
        .unwrap_or_default();
    state.set_summary(summary).await;
    let warmed = state.warm_pages().await.expect("page data");
    let app = tally_ui::router(state);

    let pages: Vec<(String, String, bool)> = vec![
        ("overview".into(), "/".into(), false),
        (
            "workloads (page 1, by savings)".into(),
            "/workloads".into(),
            false,
        ),
        (
            "workloads table: sort by name, page 200".into(),
            "/workloads?sort=name&dir=asc&page=200".into(),
            true,
        ),
        (
            format!("workloads table: search `{search}`"),
            format!("/workloads?q={search}"),
            true,
        ),
        ("workload detail".into(), some, false),
        ("nodes".into(), "/nodes".into(), false),
        ("network".into(), "/network".into(), false),
        ("recommendations".into(), "/recommendations".into(), false),
        ("policies".into(), "/policies".into(), false),
        ("SQL console".into(), "/sql".into(), false),
        ("settings".into(), "/settings".into(), false),
    ];
    let mut lines = Vec::new();
    for (name, path, table_only) in &pages {
        let mut times = Vec::with_capacity(repeat);
        let mut bytes = 0;
        let mut status = 0;
        for _ in 0..repeat {
            let mut request = Request::get(path).header(header::COOKIE, &cookie);
            if *table_only {
                request = request
                    .header("HX-Request", "true")
                    .header("HX-Target", "workload-table");
            }
            let started = Instant::now();
            let response = app
                .clone()
                .oneshot(request.body(Body::empty()).expect("request"))
                .await
                .expect("response");
            status = response.status().as_u16();
            let body = response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            times.push(started.elapsed());
            bytes = body.len();
        }
        times.sort();
        eprintln!("  ui: {name}: p50 {} ms", ms(percentile(&times, 0.5)));
        lines.push(format!(
            "| {name} | `{path}` | {status} | {} | {} | {} | {:.0} |",
            ms(percentile(&times, 0.5)),
            ms(percentile(&times, 0.99)),
            ms(*times.last().unwrap_or(&Duration::ZERO)),
            bytes as f64 / 1024.0
        ));
    }
    store.close().await.expect("close");
    let _ = std::fs::remove_dir_all(&dir);
    let body = format!(
        "A simulated cluster of {listed} workloads ({workloads} asked, {} containers, {} nodes), {hours} h of \
         history at 5 min ({rows} rows, loaded in {:.1} s) in a fresh store. Each page requested {repeat} times \
         in-process through the UI's router (session check, its queries through the read-only engine, maud \
         rendering); the time is until the whole body is read. The workloads table pages, sorts and searches \
         the in-memory summary; the summary itself (`queries/ui_workloads.sql` over the window, refreshed in \
         the background once a minute) took {} ms. The overview's cost allocation (`queries/cost_allocation.sql` \
         by hour and namespace), the nodes page's rows and the network page's five tables are kept the same \
         way (a page shows progress and polls while its first answer is computed); computing them took {}. \
         No recommendations or prices are loaded: the analysis \
         runs in its own benchmark.\n\n\
         | page | path | status | p50 ms | p99 ms | max ms | KiB |\n|---|---|---|---|---|---|---|\n{}",
        cluster.container_count(),
        (workloads / 12).max(3),
        load.as_secs_f64(),
        ms(summary_time),
        warmed
            .iter()
            .map(|(what, took)| format!("{} ms ({what})", ms(*took)))
            .collect::<Vec<_>>()
            .join(", "),
        lines.join("\n")
    );
    ("ui".into(), body)
}
