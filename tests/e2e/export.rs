//! Exports read by real DuckDB and pyarrow: the row count and values match the SQL answer.

use std::process::Command;

use tally_appliance::{Appliance, local_options};
use tally_e2e::events;
use tally_wire::{IngestClient, Table};

fn python(script: &str, args: &[&str]) -> String {
    let output = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 (the test command installs duckdb and pyarrow)");
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_and_csv_exports_read_in_duckdb_and_pyarrow() {
    let dir = tempfile::tempdir().unwrap();
    let appliance = Appliance::start(local_options(dir.path().join("data")))
        .await
        .unwrap();
    let mut client = IngestClient::connect(&appliance.flight_url(), None)
        .await
        .unwrap();
    let day = 86_400_000;
    let batches: Vec<_> = (0..30)
        .map(|i| events(&format!("p{i}"), i64::from(i) * day / 10, 100 + i as usize))
        .collect();
    client.write(Table::Events, batches).await.unwrap();
    // Half in Parquet, half still in the hot buffer: the export must not care.
    appliance.store.flush().await.unwrap();
    client
        .write(Table::Events, vec![events("late", 5 * day, 50)])
        .await
        .unwrap();

    let expected = tally_e2e::sql(
        &appliance.http_url(),
        "SELECT count(*), sum(restart_count) FROM events WHERE time >= TIMESTAMP '1970-01-01T12:00:00Z' AND time < TIMESTAMP '1970-01-03T00:00:00Z'",
    )
    .await
    .unwrap();
    let (count, sum) = (
        expected["rows"][0][0].as_u64().unwrap(),
        expected["rows"][0][1].as_u64().unwrap(),
    );
    assert!(count > 0);

    let http = reqwest::Client::new();
    let parquet_path = dir.path().join("export.parquet");
    let response = http
        .get(format!(
            "{}/api/v1/export?table=events&from=1970-01-01T12:00:00Z&to=1970-01-03T00:00:00Z&format=parquet",
            appliance.http_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    std::fs::write(&parquet_path, response.bytes().await.unwrap()).unwrap();
    let path = parquet_path.to_str().unwrap();

    let duck = python(
        "import duckdb,sys; print(*duckdb.sql(f\"SELECT count(*), sum(restart_count) FROM read_parquet('{sys.argv[1]}')\").fetchone())",
        &[path],
    );
    assert_eq!(duck, format!("{count} {sum}"));
    let arrow = python(
        "import pyarrow.parquet as pq,pyarrow.compute as pc,sys; t=pq.read_table(sys.argv[1]); print(t.num_rows, pc.sum(t['restart_count']).as_py(), t.schema.field('time').type)",
        &[path],
    );
    assert_eq!(arrow, format!("{count} {sum} timestamp[ms, tz=UTC]"));

    // Any query's result, as CSV.
    let response = http
        .post(format!("{}/api/v1/export", appliance.http_url()))
        .json(&serde_json::json!({"sql": "SELECT pod, count(*) AS n FROM events GROUP BY pod ORDER BY pod", "format": "csv"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let csv_path = dir.path().join("export.csv");
    std::fs::write(&csv_path, response.bytes().await.unwrap()).unwrap();
    let duck = python(
        "import duckdb,sys; print(*duckdb.sql(f\"SELECT count(*), sum(n) FROM read_csv('{sys.argv[1]}')\").fetchone())",
        &[csv_path.to_str().unwrap()],
    );
    let total: usize = (0..30).map(|i| 100 + i).sum::<usize>() + 50;
    assert_eq!(duck, format!("31 {total}"));

    // A refused query exports nothing.
    let response = http
        .post(format!("{}/api/v1/export", appliance.http_url()))
        .json(&serde_json::json!({"sql": "DROP TABLE events"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    appliance.shutdown().await.unwrap();
}
