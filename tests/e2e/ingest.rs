//! Ingest through Arrow Flight: good batches are acknowledged and visible at once; a wrong
//! schema, an unknown table, an oversized batch, nulls where none are allowed and garbage
//! bytes each get a clear gRPC status, and the appliance keeps serving everyone else.

use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::{FlightData, FlightDescriptor};
use futures::StreamExt;
use tally_appliance::{Appliance, local_options};
use tally_e2e::events;
use tally_wire::{ClientError, IngestClient, Table};
use tonic::Code;

async fn start(max_message_bytes: usize) -> (tempfile::TempDir, Appliance) {
    let dir = tempfile::tempdir().unwrap();
    let mut options = local_options(dir.path().join("data"));
    options.max_message_bytes = max_message_bytes;
    options.store.max_batch_rows = 20_000;
    (dir, Appliance::start(options).await.unwrap())
}

async fn raw_client(appliance: &Appliance) -> FlightServiceClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(appliance.flight_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    FlightServiceClient::new(channel)
}

/// Sends one batch as one Flight message (the default encoder would cut it into 2 MB
/// pieces) and returns the refusal.
async fn put_unsplit(appliance: &Appliance, batch: RecordBatch) -> tonic::Status {
    let data = arrow_flight::encode::FlightDataEncoderBuilder::new()
        .with_max_flight_data_size(usize::MAX)
        .with_flight_descriptor(Some(FlightDescriptor::new_path(vec!["events".into()])))
        .build(futures::stream::iter(vec![Ok(batch)]))
        .map(|r| r.unwrap());
    match raw_client(appliance).await.do_put(data).await {
        Err(status) => status,
        Ok(response) => response
            .into_inner()
            .next()
            .await
            .unwrap()
            .expect_err("refused"),
    }
}

fn refusal(result: Result<Vec<tally_wire::IngestAck>, tally_wire::WriteError>) -> tonic::Status {
    match result.expect_err("the write should be refused").source {
        ClientError::Refused(status) => status,
        other => panic!("expected a gRPC status, got {other}"),
    }
}

async fn still_serves(appliance: &Appliance, id: &str) {
    let mut client = IngestClient::connect(&appliance.flight_url(), None)
        .await
        .unwrap();
    let acks = client
        .write(Table::Events, vec![events(id, 1_000, 3)])
        .await
        .unwrap();
    assert_eq!(acks.len(), 1);
    let answer = tally_e2e::sql(
        &appliance.http_url(),
        &format!("SELECT count(*) AS n FROM events WHERE pod = '{id}'"),
    )
    .await
    .unwrap();
    assert_eq!(answer["rows"][0][0], 3, "{answer}");
}

#[tokio::test]
async fn acknowledged_rows_are_visible_at_once() {
    let (_dir, appliance) = start(64 << 20).await;
    let mut client = IngestClient::connect(&appliance.flight_url(), None)
        .await
        .unwrap();
    let acks = client
        .write(Table::Events, vec![events("a", 0, 5), events("b", 10, 7)])
        .await
        .unwrap();
    assert_eq!(acks.iter().map(|a| a.rows).collect::<Vec<_>>(), vec![5, 7]);
    assert!(acks[1].sequence > acks[0].sequence);
    // No flush has happened: the rows come from the hot buffer.
    assert_eq!(appliance.store.stats().flushes, 0);
    let answer = tally_e2e::sql(
        &appliance.http_url(),
        "SELECT pod, count(*) FROM events GROUP BY pod ORDER BY pod",
    )
    .await
    .unwrap();
    assert_eq!(answer["rows"], serde_json::json!([["a", 5], ["b", 7]]));
    // … and from Parquet after a flush, exactly once.
    appliance.store.flush().await.unwrap();
    let answer = tally_e2e::sql(&appliance.http_url(), "SELECT count(*) FROM events")
        .await
        .unwrap();
    assert_eq!(answer["rows"][0][0], 12);
    appliance.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_batches_are_refused_clearly_and_nothing_else_is_lost() {
    let (_dir, appliance) = start(4 << 20).await;
    let mut client = IngestClient::connect(&appliance.flight_url(), None)
        .await
        .unwrap();

    // A batch written to a table that does not exist.
    let mut raw = raw_client(&appliance).await;
    let data = arrow_flight::encode::FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(FlightDescriptor::new_path(vec![
            "no_such_table".into(),
        ])))
        .build(futures::stream::iter(vec![Ok(events("x", 0, 1))]))
        .map(|r| r.unwrap());
    let status = match raw.do_put(data).await {
        Err(status) => status,
        Ok(response) => response.into_inner().next().await.unwrap().unwrap_err(),
    };
    assert_eq!(status.code(), Code::NotFound, "{status}");
    assert!(
        status.message().contains("unknown table `no_such_table`"),
        "{status}"
    );

    // The right table, the wrong schema: the message names the column.
    let wrong = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new(
                "time",
                DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, Some("UTC".into())),
                false,
            ),
            Field::new("namespace", DataType::Int64, false),
        ])),
        vec![
            Arc::new(TimestampMillisecondArray::from(vec![1]).with_timezone("UTC")),
            Arc::new(Int64Array::from(vec![1])),
        ],
    )
    .unwrap();
    let status = refusal(client.write(Table::Events, vec![wrong]).await);
    assert_eq!(status.code(), Code::InvalidArgument, "{status}");
    assert!(
        status
            .message()
            .contains("column `namespace` of table `events` must be Utf8, got Int64"),
        "{status}"
    );

    // Nulls in a column that allows none.
    let mut columns = events("n", 0, 2).columns().to_vec();
    columns[1] = Arc::new(StringArray::from(vec![Some("ns"), None]));
    let nullable = Arc::new(Schema::new(
        Table::Events
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    ));
    let with_null = RecordBatch::try_new(nullable, columns).unwrap();
    let status = refusal(client.write(Table::Events, vec![with_null]).await);
    assert_eq!(status.code(), Code::InvalidArgument, "{status}");
    assert!(status.message().contains("namespace"), "{status}");

    // A derived table cannot be written.
    let status = refusal(
        client
            .write(Table::ContainerUsageHourly, vec![events("h", 0, 1)])
            .await,
    );
    assert_eq!(status.code(), Code::InvalidArgument, "{status}");

    // More rows than a batch may hold (20,000 here).
    let status = put_unsplit(&appliance, events("big", 0, 20_001)).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status}");
    assert!(
        status.message().contains("over the limit of 20000 rows"),
        "{status}"
    );

    // A message over the size limit (4 MiB here).
    let status = put_unsplit(&appliance, events(&"x".repeat(400), 0, 15_000)).await;
    assert_eq!(status.code(), Code::OutOfRange, "{status}");
    assert!(
        status.message().contains("message length too large"),
        "{status}"
    );

    // Garbage where Arrow IPC should be.
    let mut raw = raw_client(&appliance).await;
    let garbage = FlightData {
        flight_descriptor: Some(FlightDescriptor::new_path(vec!["events".into()])),
        data_header: vec![0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8].into(),
        data_body: vec![0xff; 64].into(),
        app_metadata: Default::default(),
    };
    let status = match raw.do_put(futures::stream::iter(vec![garbage])).await {
        Err(status) => status,
        Ok(response) => response.into_inner().next().await.unwrap().unwrap_err(),
    };
    assert_eq!(status.code(), Code::InvalidArgument, "{status}");
    assert!(status.message().contains("malformed Arrow IPC"), "{status}");

    // Nothing of the refused batches was stored, and the appliance keeps serving.
    let answer = tally_e2e::sql(&appliance.http_url(), "SELECT count(*) FROM events")
        .await
        .unwrap();
    assert_eq!(answer["rows"][0][0], 0, "{answer}");
    still_serves(&appliance, "after").await;
    appliance.shutdown().await.unwrap();
}
