//! The web UI end to end in a real headless Chromium (Debian `chromium` + `chromium-driver`)
//! against the real `tally demo` binary: sign in with the printed one-time link, open every
//! page, sort and filter the workloads table, open a workload, run SQL (and see an error with
//! its position), download a result as Parquet and read it with pyarrow, and see a policy's
//! validation error next to its field. Screenshots of every page are saved under
//! `$CARGO_TARGET_DIR/ui-screenshots/` (at 1280 px and at a narrow 420 px).
//!
//! Also: sign-in against the real Kubernetes test cluster (TokenReview + SubjectAccessReview)
//! (brought up by tests/run.sh before `cargo test`; never started or stopped here).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tally_e2e::webdriver::{Browser, CONTROL, ENTER, RELEASE};

const PAGES: [(&str, &str); 8] = [
    ("/", "Overview"),
    ("/workloads", "Workloads"),
    ("/nodes", "Nodes"),
    ("/network", "Network"),
    ("/recommendations", "Recommendations and actions"),
    ("/policies", "Policies"),
    ("/sql", "SQL console"),
    ("/settings", "Settings"),
];

struct Demo {
    child: Child,
    url: String,
    sign_in: String,
    _dir: tempfile::TempDir,
}

impl Drop for Demo {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn start_demo() -> Demo {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(tally_e2e::tally_bin())
        .args([
            "demo",
            "--days",
            "2",
            "--nodes",
            "6",
            "--workloads",
            "60",
            "--no-live",
        ])
        .args(["--http-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut url, mut sign_in) = (None, None);
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("Tally demo: UI and SQL API at ") {
            url = Some(rest.trim().to_string());
        }
        if let Some(rest) = line
            .trim()
            .strip_prefix("sign in to the UI (this link works once): ")
        {
            sign_in = Some(rest.trim().to_string());
        }
        // The history is published and analysed: every page has something to show.
        if line.trim_start().starts_with("analysed in ") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Demo {
        child,
        url: url.expect("the demo prints its URL"),
        sign_in: sign_in.expect("the demo prints a one-time sign-in link"),
        _dir: dir,
    }
}

fn screenshots() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("ui-screenshots")
}

fn slug(path: &str) -> String {
    match path.trim_matches('/') {
        "" => "overview".to_string(),
        p => p.replace('/', "-"),
    }
}

/// A basic accessibility check of the current page: a language, one h1, every form control
/// labelled, every chart named, every button with a name, no page-wide horizontal scrolling.
async fn accessibility_problems(browser: &Browser) -> Vec<String> {
    let script = r#"
        const problems = [];
        if (!document.documentElement.lang) problems.push("no lang on <html>");
        if (document.querySelectorAll("h1").length !== 1) problems.push("not exactly one h1");
        for (const el of document.querySelectorAll("input:not([type=hidden]), select, textarea")) {
            const labelled = (el.id && document.querySelector(`label[for="${el.id}"]`)) || el.getAttribute("aria-label");
            if (!labelled) problems.push(`unlabelled ${el.tagName} ${el.name}`);
        }
        for (const svg of document.querySelectorAll("svg")) {
            if (!svg.getAttribute("aria-label") && !svg.querySelector("title")) problems.push("unnamed chart");
        }
        for (const b of document.querySelectorAll("button, a")) {
            if (!b.textContent.trim() && !b.getAttribute("aria-label")) problems.push(`nameless ${b.tagName}`);
        }
        if (document.documentElement.scrollWidth > window.innerWidth + 1)
            problems.push(`page scrolls sideways: ${document.documentElement.scrollWidth} > ${window.innerWidth}`);
        return problems;
    "#;
    browser
        .eval(script, vec![])
        .await
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap_or("").to_string())
        .collect()
}

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_in_chromium_against_the_demo() {
    let demo = start_demo();
    let browser = Browser::start(1280, 900).await.unwrap();
    let shots = screenshots();

    // Not signed in: the sign-in page explains the one-time link.
    browser.goto(&demo.url).await.unwrap();
    browser.wait_for("h1", WAIT).await.unwrap();
    assert!(browser.url().await.unwrap().ends_with("/sign-in"));
    assert!(
        browser
            .text_of("main")
            .await
            .unwrap()
            .contains("one-time sign-in link")
    );
    browser
        .screenshot(&shots.join("sign-in.png"))
        .await
        .unwrap();

    browser.goto(&demo.sign_in).await.unwrap();
    browser
        .wait_for("nav[aria-label=Pages]", WAIT)
        .await
        .unwrap();
    assert_eq!(browser.text_of("h1").await.unwrap(), "Overview");

    // Every page, at 1280 px and at 420 px.
    for (width, suffix) in [(1280, ""), (420, "-narrow")] {
        browser.set_size(width, 900).await.unwrap();
        for (path, title) in PAGES {
            browser.goto(&format!("{}{path}", demo.url)).await.unwrap();
            browser.wait_for("main h1", WAIT).await.unwrap();
            let h1 = browser.text_of("main h1").await.unwrap();
            assert_eq!(h1, title, "{path}");
            // Pages whose data is computed in the background show progress and poll.
            browser
                .wait_until("!document.querySelector('main .progress')", WAIT)
                .await
                .unwrap();
            if path == "/workloads" {
                browser
                    .wait_for("#workload-table table", WAIT)
                    .await
                    .unwrap();
            }
            if path == "/" {
                // The cost cards fill in (polling while the allocation runs) with the cost
                // over time chart.
                browser.wait_for("#overview-costs svg", WAIT).await.unwrap();
                let costs = browser.text_of("#overview-costs").await.unwrap();
                assert!(costs.contains("Cost over time"), "{costs}");
                assert!(costs.contains("Network"), "{costs}");
            }
            let main = browser.text_of("main").await.unwrap();
            assert!(!main.contains("Could not read this"), "{path}: {main}");
            if path == "/network" {
                // The demo's traffic, classified and priced at the catalog provider's rates.
                for class in ["internet_egress", "cross_zone", "same_zone"] {
                    assert!(main.contains(class), "{class}: {main}");
                }
                assert!(main.contains("Egress by domain"), "{main}");
            }
            let problems = accessibility_problems(&browser).await;
            assert!(problems.is_empty(), "{path} at {width} px: {problems:?}");
            browser
                .screenshot_full(&shots.join(format!("{}{suffix}.png", slug(path))))
                .await
                .unwrap();
        }
    }
    browser.set_size(1280, 900).await.unwrap();

    // Times are shown in the browser's zone by tally.js, not left as UTC text.
    browser
        .goto(&format!("{}/workloads", demo.url))
        .await
        .unwrap();
    browser
        .wait_for("#workload-table table", WAIT)
        .await
        .unwrap();
    let shown = browser
        .eval("const t = document.querySelector('main .lead time'); return [t.textContent, t.getAttribute('title') || '']", vec![])
        .await
        .unwrap();
    let (text, iso) = (shown[0].as_str().unwrap(), shown[1].as_str().unwrap());
    assert!(iso.ends_with('Z'), "tally.js formatted the time: {shown}");
    let server_format = text.len() == 20 && text.ends_with(" UTC") && text.as_bytes()[4] == b'-';
    assert!(
        !server_format,
        "shown in the browser's format, not the server's: {text}"
    );

    // Sort by name (A to Z), through htmx: the URL follows, the rows are in order.
    let header = browser
        .wait_for("th a[href*='sort=name&']", WAIT)
        .await
        .unwrap();
    browser.click(&header).await.unwrap();
    browser
        .wait_until("location.search.includes('sort=name&') && document.querySelector('th[aria-sort=ascending]')", WAIT)
        .await
        .unwrap();
    let names = browser
        .eval("return [...document.querySelectorAll('#workload-table tbody tr td:nth-child(2)')].map(td => td.textContent)", vec![])
        .await
        .unwrap();
    let names: Vec<String> = names
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert!(names.len() > 10, "{names:?}");
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    // Clicking again sorts Z to A.
    let header = browser
        .wait_for("th a[href*='sort=name&']", WAIT)
        .await
        .unwrap();
    browser.click(&header).await.unwrap();
    browser
        .wait_until("document.querySelector('th[aria-sort=descending]')", WAIT)
        .await
        .unwrap();

    // Filter by namespace (a select) and search by name (typing).
    let namespace = browser
        .eval(
            "return document.querySelector('#workload-table tbody tr td').textContent",
            vec![],
        )
        .await
        .unwrap();
    let namespace = namespace.as_str().unwrap().to_string();
    browser
        .eval(
            "const s = document.getElementById('namespace'); s.value = arguments[0]; s.dispatchEvent(new Event('change', {bubbles: true}));",
            vec![serde_json::json!(namespace)],
        )
        .await
        .unwrap();
    browser
        .wait_until(
            &format!("location.search.includes('namespace={namespace}')"),
            WAIT,
        )
        .await
        .unwrap();
    browser
        .wait_until(
            &format!("[...document.querySelectorAll('#workload-table tbody tr td:first-child')].every(td => td.textContent === '{namespace}')"),
            WAIT,
        )
        .await
        .unwrap();
    let first = browser
        .eval(
            "return document.querySelector('#workload-table tbody tr td:nth-child(2)').textContent",
            vec![],
        )
        .await
        .unwrap();
    let first = first.as_str().unwrap().to_string();
    let search = browser.wait_for("#q", WAIT).await.unwrap();
    browser.type_into(&search, &first).await.unwrap();
    browser
        .wait_until(
            &format!("location.search.includes('q=') && [...document.querySelectorAll('#workload-table tbody tr td:nth-child(2)')].every(td => td.textContent.includes('{first}'))"),
            WAIT,
        )
        .await
        .unwrap();
    browser
        .screenshot(&shots.join("workloads-filtered.png"))
        .await
        .unwrap();

    // Open the workload.
    let link = browser
        .wait_for("#workload-table tbody tr td:nth-child(2) a", WAIT)
        .await
        .unwrap();
    browser.click(&link).await.unwrap();
    browser.wait_for("main h1 small", WAIT).await.unwrap();
    assert!(
        browser
            .text_of("main h1")
            .await
            .unwrap()
            .starts_with(&first)
    );
    browser.wait_for("main svg", WAIT).await.unwrap();
    let legend = browser.text_of("figcaption.legend").await.unwrap();
    assert!(legend.contains("request"), "{legend}");
    browser
        .screenshot_full(&shots.join("workload.png"))
        .await
        .unwrap();

    // SQL: Ctrl+Enter runs; a result table; a time series is charted.
    browser.goto(&format!("{}/sql", demo.url)).await.unwrap();
    let editor = browser.wait_for("#sql", WAIT).await.unwrap();
    browser.clear(&editor).await.unwrap();
    let query = "SELECT date_trunc('hour', time) AS hour, count(*) AS samples FROM container_usage GROUP BY 1 ORDER BY 1";
    browser
        .type_into(&editor, &format!("{query}{CONTROL}{ENTER}{RELEASE}"))
        .await
        .unwrap();
    browser.wait_for("#result table", WAIT).await.unwrap();
    browser.wait_for("#result svg", WAIT).await.unwrap();
    assert!(
        browser
            .text_of("#history")
            .await
            .unwrap()
            .contains("date_trunc")
    );
    browser
        .screenshot_full(&shots.join("sql-result.png"))
        .await
        .unwrap();

    // Download it as Parquet and read it with pyarrow.
    let parquet = browser
        .wait_for("#download-form button[value=parquet]", WAIT)
        .await
        .unwrap();
    browser.click(&parquet).await.unwrap();
    let file = browser.downloads.join("tally-query.parquet");
    let deadline = std::time::Instant::now() + WAIT;
    while !file.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no download in {}",
            browser.downloads.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rows_on_page = browser
        .eval(
            "return document.querySelectorAll('#result tbody tr').length",
            vec![],
        )
        .await
        .unwrap()
        .as_u64()
        .unwrap();
    let read = Command::new("python3")
        .args([
            "-c",
            "import sys, pyarrow.parquet as pq; t = pq.read_table(sys.argv[1]); print(t.num_rows, ','.join(t.column_names))",
        ])
        .arg(&file)
        .output()
        .expect("python3 with pyarrow (tests/run.sh installs it)");
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    let read = String::from_utf8(read.stdout).unwrap();
    assert_eq!(read.trim(), format!("{rows_on_page} hour,samples"));

    // An error points at its line and column.
    let editor = browser.wait_for("#sql", WAIT).await.unwrap();
    browser.clear(&editor).await.unwrap();
    browser
        .type_into(
            &editor,
            &format!("SELECT\n  no_such_column\nFROM pods{CONTROL}{ENTER}{RELEASE}"),
        )
        .await
        .unwrap();
    browser.wait_for("#result .error", WAIT).await.unwrap();
    let error = browser.text_of("#result .error").await.unwrap();
    assert!(error.contains("line 2, column 3"), "{error}");
    browser
        .screenshot(&shots.join("sql-error.png"))
        .await
        .unwrap();

    // A policy with an invalid value: the error shows next to its field; fixed, it saves.
    browser
        .goto(&format!("{}/policies/new", demo.url))
        .await
        .unwrap();
    let name = browser.wait_for("#name", WAIT).await.unwrap();
    browser.type_into(&name, "nightly-shop").await.unwrap();
    let namespaces = browser.wait_for("#namespaces", WAIT).await.unwrap();
    browser.type_into(&namespaces, "*").await.unwrap();
    let max_cpu = browser.wait_for("#max_cpu_cores", WAIT).await.unwrap();
    browser.clear(&max_cpu).await.unwrap();
    browser.type_into(&max_cpu, "0.01").await.unwrap();
    let submit = browser
        .wait_for("#policy-form button[type=submit]", WAIT)
        .await
        .unwrap();
    browser.click(&submit).await.unwrap();
    browser
        .wait_for("#max_cpu_cores-error", WAIT)
        .await
        .unwrap();
    let error = browser.text_of("#max_cpu_cores-error").await.unwrap();
    assert!(error.contains("must be at least the minimum"), "{error}");
    let next_to = browser
        .eval("const e = document.getElementById('max_cpu_cores-error'); return e.parentElement.contains(document.getElementById('max_cpu_cores')) && document.getElementById('max_cpu_cores').getAttribute('aria-describedby') === e.id", vec![])
        .await
        .unwrap();
    assert_eq!(
        next_to,
        serde_json::json!(true),
        "the error is in the field's block and describes it"
    );
    browser
        .screenshot_full(&shots.join("policy-error.png"))
        .await
        .unwrap();
    let max_cpu = browser.wait_for("#max_cpu_cores", WAIT).await.unwrap();
    browser.clear(&max_cpu).await.unwrap();
    browser.type_into(&max_cpu, "8").await.unwrap();
    let submit = browser
        .wait_for("#policy-form button[type=submit]", WAIT)
        .await
        .unwrap();
    browser.click(&submit).await.unwrap();
    browser.wait_until("location.pathname === '/policies' && document.body.textContent.includes('Saved policy')", WAIT).await.unwrap();
    assert!(
        browser
            .text_of("main table")
            .await
            .unwrap()
            .contains("nightly-shop")
    );
    browser
        .screenshot(&shots.join("policies-saved.png"))
        .await
        .unwrap();

    // Signing out ends the session.
    let sign_out = browser.wait_for("form.signout button", WAIT).await.unwrap();
    browser.click(&sign_out).await.unwrap();
    browser
        .wait_until("location.pathname === '/sign-in'", WAIT)
        .await
        .unwrap();
    browser
        .goto(&format!("{}/workloads", demo.url))
        .await
        .unwrap();
    browser
        .wait_until("location.pathname === '/sign-in'", WAIT)
        .await
        .unwrap();
}

/// The cluster's environment file, when the test cluster is up.
fn cluster_env() -> Option<std::collections::HashMap<String, String>> {
    let text = std::fs::read_to_string("/tmp/tally-cluster/env").ok()?;
    Some(
        text.lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
            .collect(),
    )
}

async fn sign_in_with(
    http: &reqwest::Client,
    url: &str,
    token: &str,
) -> (u16, Option<String>, String) {
    let page = http.get(format!("{url}/sign-in")).send().await.unwrap();
    let cookie = page
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let body = page.text().await.unwrap();
    let csrf = body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let answer = http
        .post(format!("{url}/sign-in"))
        .header("cookie", cookie)
        .form(&[("csrf", csrf.as_str()), ("token", token)])
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    let session = answer
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .filter(|c| c.starts_with("tally_session="))
        .map(|c| c.split(';').next().unwrap().to_string());
    (status, session, answer.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_tokens_sign_in_as_cluster_rbac_allows() {
    // The test command brings the real cluster up before `cargo test`; without it this test
    // fails rather than passing without having checked anything.
    let env = cluster_env().expect(
        "the real test cluster is not up: run `bash tests/cluster/up.sh` (tests/run.sh does)",
    );
    let answer = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&env["TALLY_CA_CERT"]).unwrap()).unwrap(),
        )
        .build()
        .unwrap()
        .get(format!("{}/healthz", env["TALLY_API_SERVER"]))
        .send()
        .await;
    assert!(
        answer.is_ok(),
        "the test cluster's env exists but its API server does not answer: {answer:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("reviewer-token");
    // The admin token reviews (system:masters may create TokenReviews and SARs).
    std::fs::write(&token_file, &env["TALLY_ADMIN_TOKEN"]).unwrap();
    let server = tally_e2e::Server::start(
        &dir.path().join("data"),
        &[
            "--insecure",
            "--kube-api-server",
            &env["TALLY_API_SERVER"],
            "--kube-ca",
            &env["TALLY_CA_CERT"],
            "--kube-token-file",
            token_file.to_str().unwrap(),
        ],
    )
    .unwrap();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    let (status, session, body) =
        sign_in_with(&http, &server.http_url, &env["TALLY_VIEWER_TOKEN"]).await;
    assert_eq!(status, 303, "the viewer signs in: {body}");
    let session = session.expect("a session cookie");
    let page = http
        .get(format!("{}/workloads", server.http_url))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let page = page.text().await.unwrap();
    assert!(
        page.contains(">viewer<") || page.contains("viewer"),
        "the user's name"
    );
    // The built-in view role may not edit policies.
    let form = http
        .get(format!("{}/policies/new", server.http_url))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(form.status().as_u16(), 403);

    let (status, session, body) =
        sign_in_with(&http, &server.http_url, &env["TALLY_NOBODY_TOKEN"]).await;
    assert_eq!(status, 403, "{body}");
    assert!(session.is_none());
    assert!(body.contains("may not view Tally"), "{body}");

    let (status, session, body) = sign_in_with(&http, &server.http_url, "not-a-token").await;
    assert_eq!(status, 401, "{body}");
    assert!(session.is_none());
    assert!(body.contains("did not accept this token"), "{body}");

    let (status, _, _) = sign_in_with(&http, &server.http_url, &env["TALLY_ADMIN_TOKEN"]).await;
    assert_eq!(status, 303, "admin signs in");
}
