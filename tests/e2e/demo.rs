//! `tally demo` end to end: the real binary backfills a (small) simulated cluster through
//! the real ingest path and answers SQL about it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_backfills_a_simulated_cluster_and_answers_sql() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(tally_e2e::tally_bin())
        .args([
            "demo",
            "--days",
            "2",
            "--nodes",
            "6",
            "--workloads",
            "40",
            "--no-live",
        ])
        .args(["--http-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut url = None;
    let mut loaded = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("Tally demo: UI and SQL API at ") {
            url = Some(rest.trim().to_string());
        }
        if line.trim_start().starts_with("loaded ") {
            loaded = Some(line);
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let url = url.expect("the demo prints its URL");
    assert!(loaded.is_some(), "the demo finished its backfill");

    for (table, at_least) in [
        ("container_usage", 1_000),
        ("node_usage", 100),
        ("workloads", 40),
        ("pods", 40),
        ("network_flows", 10),
        ("dns_lookups", 1),
    ] {
        let answer = tally_e2e::sql(&url, &format!("SELECT count(*) FROM {table}"))
            .await
            .unwrap();
        let n = answer["rows"][0][0].as_u64().unwrap();
        assert!(n >= at_least, "{table}: {n} rows");
    }
    // The UI asks for the sign-in link first; the table catalog needs none.
    let page = reqwest::get(format!("{url}/api/v1/tables"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("container_usage"), "{page}");

    unsafe { libc_kill(child.id() as i32) };
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "the demo exits cleanly on SIGTERM: {status}"
    );
}

unsafe fn libc_kill(pid: i32) {
    unsafe { libc::kill(pid, libc::SIGTERM) };
}
