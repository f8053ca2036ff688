//! The SQL surface over real sockets: the HTTP API, `tally sql`, and Flight SQL all answer
//! queries and refuse everything that is not read-only, under the same rules.

use std::time::Duration;

use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::TryStreamExt;
use tally_appliance::{Appliance, local_options};
use tally_e2e::events;
use tally_wire::{IngestClient, Table};

async fn start() -> (tempfile::TempDir, Appliance) {
    let dir = tempfile::tempdir().unwrap();
    let mut options = local_options(dir.path().join("data"));
    options.query.timeout = Duration::from_secs(2);
    options.query.memory_bytes = 32 << 20;
    let appliance = Appliance::start(options).await.unwrap();
    let mut client = IngestClient::connect(&appliance.flight_url(), None)
        .await
        .unwrap();
    client
        .write(
            Table::Events,
            vec![events("a", 1_000, 4), events("b", 2_000, 6)],
        )
        .await
        .unwrap();
    (dir, appliance)
}

async fn post(appliance: &Appliance, sql: &str) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/sql", appliance.http_url()))
        .json(&serde_json::json!({ "sql": sql }))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn the_http_api_answers_queries_and_refuses_everything_else() {
    let (_dir, appliance) = start().await;
    let (status, answer) = post(
        &appliance,
        "SELECT pod, count(*) AS n FROM events GROUP BY pod ORDER BY pod",
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["rows"], serde_json::json!([["a", 4], ["b", 6]]));

    for refused in [
        "DROP TABLE events",
        "INSERT INTO events SELECT * FROM events",
        "DELETE FROM events",
        "CREATE TABLE t AS SELECT 1",
        "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'",
        "COPY events TO '/tmp/tally-stolen.parquet'",
        "SET datafusion.execution.batch_size = 1",
        "SELECT 1; DROP TABLE events",
        "SELECT * FROM '/etc/passwd'",
    ] {
        let (status, answer) = post(&appliance, refused).await;
        assert!(matches!(status, 400 | 403), "{refused}: {status} {answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{refused}: {answer}"
        );
    }
    assert!(!std::path::Path::new("/tmp/tally-stolen.parquet").exists());

    let (status, answer) = post(&appliance, "SELECT pod FROM events WHERE\n  pod = ").await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]["line"].as_u64().is_some(),
        "syntax errors carry a position: {answer}"
    );

    // A cross-join bomb stops at the timeout; a memory bomb at the memory limit. (The bomb
    // sums a product: a bare count(*) is answered from the inputs' exact row counts.)
    let (status, answer) = post(
        &appliance,
        "SELECT sum(a.value * b.value) FROM generate_series(1, 100000) a, generate_series(1, 100000) b",
    )
    .await;
    assert_eq!(status, 422, "{answer}");
    let (status, answer) = post(
        &appliance,
        "SELECT value, count(*) FROM generate_series(1, 20000000) GROUP BY value ORDER BY 2 DESC",
    )
    .await;
    assert_eq!(status, 422, "{answer}");

    // … and the appliance keeps answering.
    let (status, answer) = post(&appliance, "SELECT count(*) FROM events").await;
    assert_eq!(
        (status, answer["rows"][0][0].clone()),
        (200, serde_json::json!(10))
    );
    appliance.shutdown().await.unwrap();
}

#[tokio::test]
async fn flight_sql_clients_query_under_the_same_rules() {
    let (_dir, appliance) = start().await;
    let channel = tonic::transport::Endpoint::from_shared(appliance.flight_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = FlightSqlServiceClient::new(channel);
    let info = client
        .execute(
            "SELECT pod, count(*) AS n FROM events GROUP BY pod ORDER BY pod".into(),
            None,
        )
        .await
        .unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let batches: Vec<_> = client
        .do_get(ticket)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let text = arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string();
    assert!(
        text.contains("| a   | 4 |") && text.contains("| b   | 6 |"),
        "{text}"
    );

    let err = client
        .execute("DROP TABLE events".into(), None)
        .await
        .unwrap_err();
    assert!(err.to_string().to_lowercase().contains("drop"), "{err}");

    let tables = client
        .get_tables(arrow_flight::sql::CommandGetTables::default())
        .await
        .unwrap();
    let ticket = tables.endpoint[0].ticket.clone().unwrap();
    let batches: Vec<_> = client
        .do_get(ticket)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let text = arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string();
    assert!(
        text.contains("container_usage") && text.contains("network_flows"),
        "{text}"
    );
    appliance.shutdown().await.unwrap();
}

/// Runs `tally sql --url URL QUERY`.
async fn tally_sql(url: String, query: &'static str) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(tally_e2e::tally_bin())
            .args(["sql", "--url", &url, query])
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn tally_sql_prints_a_table() {
    let (_dir, appliance) = start().await;
    let output = tally_sql(
        appliance.http_url(),
        "SELECT pod, count(*) AS n FROM events GROUP BY pod ORDER BY pod",
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("| a   | 4 |"), "{stdout}");

    let output = tally_sql(appliance.http_url(), "DROP TABLE events").await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.starts_with("error: 403"), "{stderr}");
    appliance.shutdown().await.unwrap();
}
