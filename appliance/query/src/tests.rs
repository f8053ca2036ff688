//! The engine against a real store in a temporary directory.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    ArrayRef, AsArray, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use arrow::datatypes::Int64Type;
use arrow::ipc::reader::StreamReader;
use futures::StreamExt;
use serde_json::json;
use tally_store::{Store, StoreConfig};
use tally_wire::Table;

use super::*;

/// 2024-05-01T12:00:00Z
const T0: i64 = 1_714_564_800_000;

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<Store>,
}

async fn store_with_events() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StoreConfig::new(dir.path());
    config.background = false;
    let store = Store::open(config).await.unwrap();
    let schema = Table::Events.schema();
    let text = |values: &[&str]| Arc::new(StringArray::from(values.to_vec())) as ArrayRef;
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(
                TimestampMillisecondArray::from(vec![T0, T0 + 60_000, T0 + 120_250])
                    .with_timezone("UTC"),
            ),
            text(&["shop", "shop", "billing"]),
            text(&["web-1", "web-2", "api-1"]),
            Arc::new(StringArray::from(vec![Some("app"), None, Some("api")])),
            Arc::new(StringArray::from(vec![
                Some("node-a"),
                Some("node-b"),
                None,
            ])),
            text(&["Deployment", "Deployment", "StatefulSet"]),
            text(&["web", "web", "api"]),
            text(&["OOMKilled", "Restarted", "OOMKilled"]),
            Arc::new(StringArray::from(vec![None, Some("back-off"), None])),
            Arc::new(Int64Array::from(vec![Some(256 << 20), None, Some(1 << 30)])),
            Arc::new(Int64Array::from(vec![Some(1), Some(4), None])),
        ],
    )
    .unwrap();
    store.write(Table::Events, batch).await.unwrap();
    Fixture { _dir: dir, store }
}

fn limits() -> QueryLimits {
    QueryLimits {
        memory_bytes: 64 << 20,
        timeout: Duration::from_secs(60),
        max_json_rows: 1_000,
        target_partitions: 2,
    }
}

fn engine(fixture: &Fixture, limits: QueryLimits) -> QueryEngine {
    QueryEngine::new(fixture.store.clone(), limits)
}

async fn assert_answers_select_1(engine: &QueryEngine) {
    let (_, batches) = engine
        .collect("SELECT 1 AS one")
        .await
        .expect("SELECT 1 still works");
    assert_eq!(batches[0].column(0).as_primitive::<Int64Type>().value(0), 1);
}

fn column_strings(batches: &[RecordBatch], name: &str) -> Vec<String> {
    let mut out = Vec::new();
    for batch in batches {
        let column = arrow::compute::cast(
            batch.column_by_name(name).unwrap(),
            &arrow::datatypes::DataType::Utf8,
        )
        .unwrap();
        out.extend(
            column
                .as_string::<i32>()
                .iter()
                .map(|v| v.unwrap_or("").to_string()),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selects_from_a_table() {
    let fixture = store_with_events().await;
    let engine = engine(&fixture, limits());
    let (schema, batches) = engine
        .collect("SELECT pod, restart_count FROM events WHERE reason = 'OOMKilled' ORDER BY pod")
        .await
        .unwrap();
    assert_eq!(schema.field(0).name(), "pod");
    assert_eq!(column_strings(&batches, "pod"), ["api-1", "web-1"]);

    let (_, batches) = engine
        .collect(
            "SELECT namespace, count(*) AS n FROM events GROUP BY namespace ORDER BY namespace",
        )
        .await
        .unwrap();
    assert_eq!(column_strings(&batches, "namespace"), ["billing", "shop"]);
    assert_eq!(column_strings(&batches, "n"), ["1", "2"]);

    // WITH, VALUES and the store's own functions are there too.
    engine
        .collect("WITH x AS (SELECT * FROM events) SELECT count(*) FROM x")
        .await
        .unwrap();
    engine.collect("VALUES (1, 'a'), (2, 'b')").await.unwrap();
    let schema = engine
        .schema("SELECT pod, count(*) AS n FROM events GROUP BY pod")
        .await
        .unwrap();
    assert_eq!(schema.field(1).name(), "n");
    assert_eq!(
        engine.schema("DROP TABLE events").await.unwrap_err().kind(),
        "refused"
    );
    let (_, batches) = engine
        .collect("SELECT cpu_quantile(cpu_histogram, 0.9) AS p90 FROM container_usage_hourly")
        .await
        .unwrap();
    assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renders_json_and_arrow_ipc() {
    let fixture = store_with_events().await;
    let engine = engine(&fixture, limits());
    let result = engine
        .json("SELECT time, pod, container, memory_limit_bytes, 0.5 AS half FROM events ORDER BY time")
        .await
        .unwrap();
    assert_eq!(result.columns[0].name, "time");
    assert!(
        result.columns[0].data_type.starts_with("Timestamp"),
        "{:?}",
        result.columns[0]
    );
    assert!(!result.truncated);
    assert_eq!(result.row_count, 3);
    assert_eq!(
        result.rows[0],
        vec![
            json!("2024-05-01T12:00:00Z"),
            json!("web-1"),
            json!("app"),
            json!(256 << 20),
            json!(0.5)
        ]
    );
    assert_eq!(result.rows[1][2], json!(null));
    assert_eq!(result.rows[2][0], json!("2024-05-01T12:02:00.250Z"));

    let small = QueryEngine::new(
        fixture.store.clone(),
        QueryLimits {
            max_json_rows: 2,
            ..limits()
        },
    );
    let result = small
        .json("SELECT * FROM generate_series(1, 1000000000)")
        .await
        .unwrap();
    assert!(result.truncated);
    assert_eq!(result.rows, vec![vec![json!(1)], vec![json!(2)]]);

    let bytes = engine
        .execute("SELECT pod FROM events ORDER BY pod")
        .await
        .unwrap()
        .into_ipc_bytes()
        .await
        .unwrap();
    let reader = StreamReader::try_new(std::io::Cursor::new(bytes), None).unwrap();
    assert_eq!(reader.schema().field(0).name(), "pod");
    let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>().unwrap();
    assert_eq!(column_strings(&batches, "pod"), ["api-1", "web-1", "web-2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shows_and_describes_tally_tables() {
    let fixture = store_with_events().await;
    let engine = engine(&fixture, limits());
    let (_, batches) = engine.collect("SHOW TABLES").await.unwrap();
    let tables = column_strings(&batches, "table_name");
    for table in Table::ALL {
        assert!(
            tables.contains(&table.name().to_string()),
            "{table} missing from {tables:?}"
        );
    }

    let (_, batches) = engine.collect("DESCRIBE events").await.unwrap();
    let columns = column_strings(&batches, "column_name");
    let expected: Vec<String> = Table::Events
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(columns, expected);

    let (_, batches) = engine.collect("SHOW COLUMNS FROM events").await.unwrap();
    assert_eq!(
        column_strings(&batches, "column_name").len(),
        expected.len()
    );

    let (_, batches) = engine
        .collect("EXPLAIN SELECT count(*) FROM events")
        .await
        .unwrap();
    assert!(
        column_strings(&batches, "plan_type")
            .iter()
            .any(|p| p == "physical_plan")
    );
    let (_, batches) = engine
        .collect("EXPLAIN ANALYZE SELECT count(*) FROM events")
        .await
        .unwrap();
    assert!(!batches.is_empty());

    let catalog = engine.catalog();
    assert_eq!(catalog.len(), Table::ALL.len());
    let events = catalog.iter().find(|t| t.name == "events").unwrap();
    assert!(!events.description.is_empty());
    assert_eq!(events.columns[0].name, "time");
    assert!(events.columns[0].data_type.starts_with("Timestamp"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_everything_but_reading() {
    let fixture = store_with_events().await;
    let engine = engine(&fixture, limits());
    for (sql, kind) in [
        ("INSERT INTO events SELECT * FROM events", "INSERT"),
        ("UPDATE events SET reason = 'x'", "UPDATE"),
        ("DELETE FROM events", "DELETE"),
        (
            "MERGE INTO events USING pods ON true WHEN MATCHED THEN DELETE",
            "MERGE",
        ),
        ("CREATE TABLE t AS SELECT 1", "CREATE TABLE"),
        ("CREATE VIEW v AS SELECT 1", "CREATE VIEW"),
        (
            "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'",
            "CREATE EXTERNAL TABLE",
        ),
        ("DROP TABLE events", "DROP TABLE"),
        ("ALTER TABLE events RENAME TO e", "ALTER TABLE"),
        ("TRUNCATE events", "TRUNCATE"),
        ("COPY events TO '/tmp/tally-events.csv'", "COPY TO"),
        ("COPY events FROM '/etc/passwd'", "COPY FROM"),
        ("SET datafusion.execution.target_partitions = 1", "SET"),
        ("RESET datafusion.execution.target_partitions", "RESET"),
        ("PREPARE p(int) AS SELECT $1", "PREPARE"),
        ("EXECUTE p(1)", "EXECUTE"),
        ("select 1; drop table x", "more than one statement"),
        ("SELECT * FROM '/etc/passwd'", "file access"),
        ("SELECT * FROM 'file:///etc/passwd'", "file access"),
        ("SELECT * INTO copy_of_events FROM events", "SELECT INTO"),
    ] {
        match engine.execute(sql).await {
            Err(e @ QueryError::Refused { .. }) => {
                let QueryError::Refused { statement_kind, .. } = &e else {
                    unreachable!()
                };
                assert_eq!(statement_kind, kind, "{sql}: {e}");
                assert_eq!(e.kind(), "refused");
                assert!(e.is_client_error());
                assert!(e.to_string().contains(kind), "{sql}: {e}");
            }
            other => panic!("{sql}: expected a refusal, got {other:?}"),
        }
    }
    // Nothing was written or created.
    let (_, batches) = engine
        .collect("SELECT count(*) AS n FROM events")
        .await
        .unwrap();
    assert_eq!(column_strings(&batches, "n"), ["3"]);
    assert!(engine.collect("SELECT * FROM t").await.is_err());
    assert!(!std::path::Path::new("/tmp/tally-events.csv").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expressions_nest_at_most_the_bound_and_deeper_ones_are_refused_before_planning() {
    let fixture = store_with_events().await;
    let engine = engine(&fixture, limits());
    let max = crate::guard::MAX_EXPRESSION_DEPTH;
    // A flat sum nests once per term (plus the SELECT item itself): at the bound it answers.
    let terms = max - 1;
    let within = format!("SELECT 1{} AS n", " + 1".repeat(terms - 1));
    let (_, batches) = engine.collect(&within).await.unwrap();
    assert_eq!(column_strings(&batches, "n"), [terms.to_string()]);
    for sql in [
        format!("SELECT 1{}", " + 1".repeat(max + 1)),
        format!(
            "SELECT count(*) FROM events WHERE {}",
            vec!["reason = 'x'"; max + 2].join(" OR ")
        ),
    ] {
        match engine.execute(&sql).await {
            Err(e @ QueryError::Refused { .. }) => {
                assert!(
                    e.to_string()
                        .contains(&format!("nested more than {max} levels deep")),
                    "{e}"
                );
                assert!(e.is_client_error());
            }
            other => panic!("{}…: expected a refusal, got {other:?}", &sql[..40]),
        }
    }
    // Nested calls and parentheses recurse in the parser, whose own limit stops them first.
    let calls = format!("SELECT {}1{}", "abs(".repeat(max + 1), ")".repeat(max + 1));
    let error = engine.execute(&calls).await.unwrap_err();
    assert!(error.to_string().contains("nests too deeply"), "{error}");
    // The engine still answers.
    assert_answers_select_1(&engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_table_function_reads_files() {
    let fixture = store_with_events().await;
    let engine = engine(&fixture, limits());
    for function in [
        "read_parquet",
        "read_csv",
        "read_json",
        "read_avro",
        "read_arrow",
        "parquet_metadata",
    ] {
        let sql = format!("SELECT * FROM {function}('/etc/passwd')");
        let error = engine.execute(&sql).await.unwrap_err();
        assert_eq!(error.kind(), "refused", "{sql}: {error}");
    }
    // Only these table functions exist, and none of them touches files.
    let ctx = engine.session().unwrap();
    let mut names: Vec<String> = ctx.state().table_functions().keys().cloned().collect();
    names.sort();
    assert_eq!(names, ["generate_series", "range"]);
    engine
        .collect("SELECT * FROM generate_series(1, 3)")
        .await
        .unwrap();
    engine.collect("SELECT * FROM range(3)").await.unwrap();
}

/// The guard aside, the session itself can neither read files nor define tables, and
/// `verify` refuses plans that write or define.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_is_a_second_line_of_defence() {
    let fixture = store_with_events().await;
    let engine = engine(&fixture, limits());
    let ctx = engine.session().unwrap();
    assert!(ctx.sql("SELECT * FROM '/etc/passwd'").await.is_err());
    assert!(ctx.sql("SELECT * FROM 'file:///etc/passwd'").await.is_err());
    assert!(
        ctx.sql("CREATE EXTERNAL TABLE p STORED AS CSV LOCATION '/etc/passwd'")
            .await
            .is_err()
    );
    // No local file system behind any URL, and nowhere to spill.
    let runtime = ctx.runtime_env();
    assert!(
        runtime
            .object_store(datafusion::execution::object_store::ObjectStoreUrl::local_filesystem())
            .is_err()
    );
    assert!(!runtime.disk_manager.tmp_files_enabled());
    let state = ctx.state();
    for sql in [
        "CREATE TABLE t AS SELECT 1",
        "INSERT INTO events SELECT * FROM events",
        "SET datafusion.execution.batch_size = 1",
        "COPY events TO '/tmp/x.csv'",
        "CREATE VIEW v AS SELECT 1",
    ] {
        let plan = state.create_logical_plan(sql).await.unwrap();
        let error = verify(&plan).unwrap_err();
        assert_eq!(error.kind(), "refused", "{sql}: {error}");
    }
    verify(
        &state
            .create_logical_plan("SELECT * FROM events")
            .await
            .unwrap(),
    )
    .unwrap();
    verify(&state.create_logical_plan("SHOW TABLES").await.unwrap()).unwrap();
    verify(&state.create_logical_plan("DESCRIBE events").await.unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_point_at_the_sql() {
    let fixture = store_with_events().await;
    let engine = engine(&fixture, limits());
    let error = engine
        .execute("SELECT pod,\n  FROM events\n WHERE")
        .await
        .unwrap_err();
    assert_eq!(error.kind(), "syntax", "{error}");
    let position = error.position().expect("a syntax error has a position");
    assert!(position.line >= 2, "{position:?} for {error}");

    let error = engine.execute("SELECT nope FROM events").await.unwrap_err();
    assert_eq!(error.kind(), "plan", "{error}");
    assert!(error.is_client_error());

    let error = engine
        .execute("SELECT * FROM no_such_table")
        .await
        .unwrap_err();
    assert_eq!(error.kind(), "plan", "{error}");
    assert!(error.to_string().contains("no_such_table"), "{error}");

    let error = engine.collect("SELECT 1 / 0").await.unwrap_err();
    assert_eq!(error.kind(), "execution", "{error}");
    assert!(error.is_client_error());
    assert_answers_select_1(&engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runaway_query_times_out() {
    let fixture = store_with_events().await;
    let timeout = Duration::from_secs(1);
    let engine = engine(
        &fixture,
        QueryLimits {
            timeout,
            ..limits()
        },
    );
    for sql in [
        "SELECT count(*) FROM generate_series(1, 100000) a, generate_series(1, 100000) b",
        "SELECT count(*) FROM (VALUES (1),(2),(3),(4),(5),(6),(7),(8),(9),(10)) a, \
         (VALUES (1),(2),(3),(4),(5),(6),(7),(8),(9),(10)) b, (VALUES (1),(2),(3),(4),(5),(6),(7),(8),(9),(10)) c, \
         (VALUES (1),(2),(3),(4),(5),(6),(7),(8),(9),(10)) d, (VALUES (1),(2),(3),(4),(5),(6),(7),(8),(9),(10)) e, \
         generate_series(1, 100000000) f",
    ] {
        let error = engine.collect(sql).await.unwrap_err();
        assert!(
            matches!(error, QueryError::Timeout(t) if t == timeout),
            "{sql}: {error:?}"
        );
        assert_eq!(error.kind(), "timeout");
        assert_answers_select_1(&engine).await;
    }
    // A stream that is read slowly ends with the timeout too.
    let mut stream = engine
        .execute("SELECT * FROM generate_series(1, 1000000000)")
        .await
        .unwrap();
    let mut saw_timeout = false;
    while let Some(item) = stream.next().await {
        if let Err(error) = item {
            assert!(matches!(error, QueryError::Timeout(_)), "{error:?}");
            saw_timeout = true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(saw_timeout);
    assert_answers_select_1(&engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_bomb_runs_out_of_memory_not_disk() {
    let fixture = store_with_events().await;
    let engine = engine(
        &fixture,
        QueryLimits {
            memory_bytes: 16 << 20,
            timeout: Duration::from_secs(300),
            ..limits()
        },
    );
    for sql in [
        "SELECT array_agg(value) FROM generate_series(1, 50000000)",
        "SELECT value FROM generate_series(1, 50000000) ORDER BY value DESC",
        "SELECT value % 10000000 AS k, count(*) FROM generate_series(1, 50000000) GROUP BY k",
    ] {
        let error = engine.collect(sql).await.unwrap_err();
        assert!(
            matches!(error, QueryError::ResourcesExhausted(_)),
            "{sql}: {error:?}"
        );
        assert_eq!(error.kind(), "resources_exhausted");
        assert!(error.is_client_error());
        assert_answers_select_1(&engine).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_that_amplify_their_input_are_bounded() {
    let fixture = store_with_events().await;
    // 16 MiB over 2 partitions: a call may build at most 4 MiB.
    let engine = engine(
        &fixture,
        QueryLimits {
            memory_bytes: 16 << 20,
            ..limits()
        },
    );
    // Each of these would build about 100 MB (harmless if the bound failed, but refused).
    for sql in [
        "SELECT length(repeat('x', 100000000))",
        "SELECT length(repeat(pod, 20000000)) FROM events",
        "SELECT length(lpad('x', 100000000))",
        "SELECT length(rpad(pod, 30000000, '-')) FROM events",
        "SELECT cardinality(array_repeat(1, 15000000))",
        "SELECT cardinality(array_resize([1], 10000000))",
        "SELECT cardinality(range(1, 15000000))",
        "SELECT cardinality(generate_series(1, 15000000))",
        "SELECT cardinality(range(TIMESTAMP '2000-01-01', TIMESTAMP '2024-01-01', INTERVAL '1 minute'))",
        "SELECT cardinality(generate_series(value, value + 15000000)) FROM generate_series(1, 3)",
    ] {
        let error = engine.collect(sql).await.unwrap_err();
        assert!(
            matches!(error, QueryError::ResourcesExhausted(_)),
            "{sql}: {error:?}"
        );
    }
    // Ordinary use is untouched.
    for (sql, expected) in [
        ("SELECT repeat('ab', 3) AS v", "ababab"),
        ("SELECT lpad('7', 3, '0') AS v", "007"),
        (
            "SELECT rpad(pod, 6, '.') AS v FROM events ORDER BY pod LIMIT 1",
            "api-1.",
        ),
        ("SELECT range(1, 4) AS v", "[1, 2, 3]"),
        ("SELECT generate_series(1, 3) AS v", "[1, 2, 3]"),
        ("SELECT array_repeat(7, 2) AS v", "[7, 7]"),
        ("SELECT array_resize([1], 2, 0) AS v", "[1, 0]"),
        (
            "SELECT cardinality(range(DATE '2024-01-01', DATE '2024-02-01', INTERVAL '1 day')) AS v",
            "31",
        ),
    ] {
        let (_, batches) = engine
            .collect(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let value = arrow::util::display::ArrayFormatter::try_new(
            batches[0].column(0).as_ref(),
            &Default::default(),
        )
        .unwrap()
        .value(0)
        .to_string();
        assert_eq!(value, expected, "{sql}");
    }
}
