//! The appliance's Arrow Flight endpoint, one port for two jobs:
//! - ingest: `DoPut` with a path descriptor naming the table; one `PutResult` per batch once
//!   it is durable, carrying an [`tally_wire::IngestAck`]. A record-batch message may carry a
//!   [`tally_wire::BatchKey`] (JSON) in its `app_metadata`: a batch whose key is durable
//!   already is acknowledged again (`duplicate: true`) and not stored twice. Messages without
//!   `app_metadata` are stored as they come (no deduplication);
//! - Flight SQL: statement queries under the same read-only rules as the HTTP SQL API, so
//!   ADBC/JDBC clients and tools such as DBeaver can query Tally;
//! - the recommendation stream (a gRPC server stream, for the operator): `DoGet` with the
//!   ticket [`tally_wire::subscribe::subscribe_ticket`] (an `Any` of type
//!   [`tally_wire::subscribe::SUBSCRIBE_TYPE_URL`] holding `{"subscribe":"recommendations"}`)
//!   first sends the newest analysis run's `recommendations` rows (if any), then every new
//!   run's rows as soon as the run is durable: an analysis run finished, or a `DoPut` to
//!   `recommendations` ended whose rows name a new `run_id`. Each run is a schema message,
//!   its batches and a metadata-only end marker, all with `app_metadata`
//!   [`tally_wire::subscribe::StreamMetadata`] naming the run id; every 15 s without a run a
//!   metadata-only heartbeat is sent so dead connections are noticed. Per subscriber only
//!   the newest run id is kept (a `watch` channel), so a slow subscriber skips to the newest
//!   run and never holds a growing queue. The stream ends when the appliance stops. The
//!   port's mutual TLS applies: only holders of a certificate of the appliance's CA (agents)
//!   can subscribe. Other unknown tickets answer `Unimplemented`, as before.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch};

use arrow_flight::decode::{DecodedPayload, FlightDataDecoder};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_descriptor::DescriptorType;
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    Any, CommandGetTables, CommandStatementQuery, ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, PutResult, Ticket};
use futures::{FutureExt, Stream, StreamExt, TryStreamExt};
use prost::Message;
use tally_query::{QueryEngine, QueryError};
use tally_store::{Store, StoreError};
use tally_wire::subscribe::{
    HEARTBEAT_INTERVAL, RECOMMENDATIONS_TOPIC, SUBSCRIBE_TYPE_URL, StreamMetadata, SubscribeRequest,
};
use tally_wire::{BatchKey, Table};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[derive(Clone)]
pub struct ApplianceFlight {
    store: Arc<Store>,
    engine: QueryEngine,
    /// The newest finished analysis run (the recommendation stream follows it).
    runs: watch::Sender<Option<String>>,
    /// Set when the appliance stops: open streams end.
    stop: watch::Receiver<bool>,
    heartbeat: Duration,
}

impl ApplianceFlight {
    pub fn new(store: Arc<Store>, engine: QueryEngine) -> Self {
        Self {
            store,
            engine,
            runs: watch::channel(None).0,
            stop: watch::channel(false).1,
            heartbeat: HEARTBEAT_INTERVAL,
        }
    }

    /// Runs announced on `runs` (the analyzer's) reach the stream's subscribers, and
    /// `DoPut`s of recommendation rows announce theirs there too.
    pub fn with_runs(mut self, runs: watch::Sender<Option<String>>) -> Self {
        self.runs = runs;
        self
    }

    /// Open streams end when `stop` turns true (the servers' graceful shutdown waits for them).
    pub fn with_stop(mut self, stop: watch::Receiver<bool>) -> Self {
        self.stop = stop;
        self
    }

    /// How often an idle stream sends a heartbeat (15 s by default).
    pub fn with_heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every;
        self
    }
}

/// The newest run id in `recommendations`, if any.
async fn newest_run(engine: &QueryEngine) -> Result<Option<String>, Status> {
    let (_, batches) = engine
        .collect("SELECT run_id FROM recommendations ORDER BY time DESC LIMIT 1")
        .await
        .map_err(query_status)?;
    Ok(batches.iter().find(|b| b.num_rows() > 0).and_then(|b| {
        let col = b.column(0).as_string_opt::<i32>()?;
        col.is_valid(0).then(|| col.value(0).to_string())
    }))
}

/// Sends every row of `run_id`: schema, batches, end marker. `Err` when the subscriber left.
async fn send_run(
    engine: &QueryEngine,
    tx: &mpsc::Sender<Result<FlightData, Status>>,
    run_id: &str,
) -> Result<(), ()> {
    let sql = format!(
        "SELECT * FROM recommendations WHERE run_id = '{}' ORDER BY kind, namespace, target_kind, target_name, container",
        run_id.replace('\'', "''")
    );
    let (schema, batches) = match engine.collect(&sql).await {
        Ok(found) => found,
        Err(error) => {
            tracing::warn!(run_id, %error, "cannot read a run for the recommendation stream");
            let _ = tx.send(Err(query_status(error))).await;
            return Err(());
        }
    };
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let meta = StreamMetadata {
        run_id: Some(run_id.to_string()),
        ..Default::default()
    };
    let app_metadata: bytes::Bytes = meta.to_bytes().into();
    let mut messages =
        FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(futures::stream::iter(
                batches.into_iter().map(Ok::<_, FlightError>),
            ));
    while let Some(message) = messages.next().await {
        let message = message
            .map(|mut m| {
                m.app_metadata = app_metadata.clone();
                m
            })
            .map_err(|e| Status::internal(e.to_string()));
        let failed = message.is_err();
        if tx.send(message).await.is_err() || failed {
            return Err(());
        }
    }
    let end = StreamMetadata {
        end: true,
        rows: Some(rows as u64),
        ..meta
    };
    tx.send(Ok(end.message())).await.map_err(|_| ())?;
    tracing::debug!(run_id, rows, "run sent to a subscriber");
    Ok(())
}

/// The subscription's task: the newest run, then each new one, heartbeats between.
async fn follow_runs(
    engine: QueryEngine,
    mut runs: watch::Receiver<Option<String>>,
    mut stop: watch::Receiver<bool>,
    heartbeat: Duration,
    tx: mpsc::Sender<Result<FlightData, Status>>,
) {
    // Mark what is announced now as seen before reading the newest run, so a run that
    // finishes in between is announced again rather than missed.
    runs.borrow_and_update();
    let mut sent = match newest_run(&engine).await {
        Ok(Some(run_id)) => {
            if send_run(&engine, &tx, &run_id).await.is_err() {
                return;
            }
            Some(run_id)
        }
        Ok(None) => None,
        Err(status) => {
            let _ = tx.send(Err(status)).await;
            return;
        }
    };
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = runs.changed() => {
                if changed.is_err() {
                    return;
                }
                let newest = runs.borrow_and_update().clone();
                if let Some(run_id) = newest
                    && sent.as_ref() != Some(&run_id)
                {
                    if send_run(&engine, &tx, &run_id).await.is_err() {
                        return;
                    }
                    sent = Some(run_id);
                    beat.reset();
                }
            }
            _ = beat.tick() => {
                let message = StreamMetadata { heartbeat: true, ..Default::default() }.message();
                if tx.send(Ok(message)).await.is_err() {
                    return;
                }
            }
            // A stop channel whose sender is gone (none was given) never stops the stream.
            _ = async {
                if stop.wait_for(|s| *s).await.is_err() {
                    std::future::pending::<()>().await;
                }
            } => return,
            _ = tx.closed() => return,
        }
    }
}

/// How a store refusal reaches a Flight client.
pub fn store_status(error: StoreError) -> Status {
    let message = error.to_string();
    match error {
        StoreError::Schema(_) | StoreError::InvalidBatch { .. } => {
            Status::invalid_argument(message)
        }
        StoreError::NoSpace { .. } | StoreError::Overloaded { .. } => {
            Status::resource_exhausted(message)
        }
        StoreError::Closed
        | StoreError::Unwritable { .. }
        | StoreError::Poisoned(_)
        | StoreError::CorruptWal { .. }
        | StoreError::CorruptManifest { .. } => Status::unavailable(message),
        _ => Status::internal(message),
    }
}

pub fn query_status(error: QueryError) -> Status {
    let message = error.to_string();
    match error {
        QueryError::Refused { .. } => Status::permission_denied(message),
        QueryError::ResourcesExhausted(_) => Status::resource_exhausted(message),
        QueryError::Timeout(_) => Status::deadline_exceeded(message),
        e if e.is_client_error() => Status::invalid_argument(message),
        _ => Status::internal(message),
    }
}

/// The `run_id` of a recommendations batch's last row.
fn last_run_id(batch: &RecordBatch) -> Option<String> {
    let col = batch.column_by_name("run_id")?.as_string_opt::<i32>()?;
    let last = batch.num_rows().checked_sub(1)?;
    col.is_valid(last).then(|| col.value(last).to_string())
}

fn ingest_table(descriptor: Option<&FlightDescriptor>, command: &Any) -> Result<Table, Status> {
    let Some(descriptor) = descriptor else {
        return Err(Status::invalid_argument(
            "DoPut needs a flight descriptor naming the table as its path, e.g. [\"container_usage\"]",
        ));
    };
    if descriptor.r#type() == DescriptorType::Cmd {
        return Err(Status::invalid_argument(format!(
            "unsupported Flight SQL command in DoPut: `{}`; to write rows, use a path descriptor naming the table",
            command.type_url
        )));
    }
    match descriptor.path.as_slice() {
        [name] => name
            .parse::<Table>()
            .map_err(|e| Status::not_found(e.to_string())),
        other => Err(Status::invalid_argument(format!(
            "the descriptor path must be exactly one table name, got {other:?}"
        ))),
    }
}

#[tonic::async_trait]
impl FlightSqlService for ApplianceFlight {
    type FlightService = ApplianceFlight;

    async fn do_put_fallback(
        &self,
        request: Request<PeekableFlightDataStream>,
        message: Any,
    ) -> Result<Response<BoxStream<PutResult>>, Status> {
        let mut stream = request.into_inner();
        let descriptor = match stream.peek().await {
            Some(Ok(first)) => first.flight_descriptor.clone(),
            Some(Err(status)) => return Err(status.clone()),
            None => return Err(Status::invalid_argument("empty DoPut stream")),
        };
        let table = ingest_table(descriptor.as_ref(), &message)?;
        // `into_peekable` keeps the peeked first message (the schema); `into_inner` drops it.
        let flights = stream
            .into_peekable()
            .map_err(|status| FlightError::Tonic(Box::new(status)));
        let mut messages = FlightDataDecoder::new(flights);
        let store = self.store.clone();
        let runs = self.runs.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut written = 0usize;
            let mut had_schema = false;
            // The newest run id written to `recommendations` by this DoPut: announced to
            // the recommendation stream once the upload ends (all its rows durable).
            let mut new_run: Option<String> = None;
            loop {
                // Arrow's IPC decoder panics on some malformed input (slice asserts,
                // `unimplemented!` for unknown types) instead of returning an error: catch it,
                // so the client gets a clear refusal rather than a stream that ends without one.
                let next = match std::panic::AssertUnwindSafe(messages.next())
                    .catch_unwind()
                    .await
                {
                    Ok(Some(next)) => next,
                    Ok(None) => {
                        // An upload that held no record batch (a schema alone, or messages
                        // that carry none) stores nothing: say so with an acknowledgement of
                        // 0 rows rather than end the stream without any answer.
                        if written == 0 {
                            let ack = tally_wire::IngestAck {
                                rows: 0,
                                sequence: 0,
                                duplicate: false,
                            };
                            let _ = tx
                                .send(Ok(PutResult {
                                    app_metadata: ack.to_bytes().into(),
                                }))
                                .await;
                        }
                        break;
                    }
                    Err(panic) => {
                        let reason = panic
                            .downcast_ref::<String>()
                            .map(String::as_str)
                            .or_else(|| panic.downcast_ref::<&str>().copied())
                            .unwrap_or("the decoder gave up");
                        tracing::warn!(%table, reason, "malformed Arrow IPC data refused");
                        let _ = tx
                            .send(Err(Status::invalid_argument(format!(
                                "malformed Arrow IPC data for table `{table}`: {reason}"
                            ))))
                            .await;
                        break;
                    }
                };
                let result = match next {
                    Ok(message) => match message.payload {
                        DecodedPayload::Schema(_) if had_schema => {
                            Err(Status::invalid_argument(format!(
                                "malformed Arrow IPC data for table `{table}`: more than one schema message in one DoPut"
                            )))
                        }
                        DecodedPayload::Schema(_) => {
                            had_schema = true;
                            continue;
                        }
                        DecodedPayload::None => continue,
                        DecodedPayload::RecordBatch(batch) => {
                            let run_id = (table == Table::Recommendations)
                                .then(|| last_run_id(&batch))
                                .flatten();
                            match BatchKey::from_app_metadata(&message.inner.app_metadata) {
                                Ok(key) => store
                                    .write_keyed(table, batch, key)
                                    .await
                                    .map(|ack| {
                                        // A resent batch (stored already) announced
                                        // its run when it was first stored.
                                        if run_id.is_some() && !ack.duplicate {
                                            new_run = run_id;
                                        }
                                        PutResult {
                                            app_metadata: ack.to_bytes().into(),
                                        }
                                    })
                                    .map_err(|e| {
                                        tracing::warn!(%table, error = %e, "write refused");
                                        store_status(e)
                                    }),
                                Err(e) => Err(Status::invalid_argument(format!(
                                    "the app_metadata of a record batch for table `{table}` is not a batch key \
                                     ({{\"producer\":\"<32 hex digits>\",\"sequence\":N}}) nor empty: {e}"
                                ))),
                            }
                        }
                    },
                    Err(FlightError::Tonic(status)) => Err(*status),
                    Err(e) => Err(Status::invalid_argument(format!(
                        "malformed Arrow IPC data for table `{table}`: {e}"
                    ))),
                };
                let failed = result.is_err();
                written += 1;
                if tx.send(result).await.is_err() || failed {
                    break;
                }
            }
            if let Some(run_id) = new_run {
                runs.send_if_modified(|newest| {
                    let changed = newest.as_ref() != Some(&run_id);
                    if changed {
                        tracing::info!(
                            run_id,
                            "recommendation rows written: run announced to subscribers"
                        );
                        *newest = Some(run_id);
                    }
                    changed
                });
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = self
            .engine
            .schema(&query.query)
            .await
            .map_err(query_status)?;
        let ticket = TicketStatementQuery {
            statement_handle: query.query.into_bytes().into(),
        };
        let endpoint =
            FlightEndpoint::new().with_ticket(Ticket::new(ticket.as_any().encode_to_vec()));
        let info = FlightInfo::new()
            .try_with_schema(&schema)
            .map_err(|e| Status::internal(e.to_string()))?
            .with_endpoint(endpoint)
            .with_descriptor(request.into_inner());
        Ok(Response::new(info))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        _request: Request<Ticket>,
    ) -> Result<Response<BoxStream<arrow_flight::FlightData>>, Status> {
        let sql = String::from_utf8(ticket.statement_handle.to_vec())
            .map_err(|_| Status::invalid_argument("statement handle is not UTF-8"))?;
        let result = self.engine.execute(&sql).await.map_err(query_status)?;
        let schema = result.schema();
        let batches = result.map_err(|e| FlightError::ExternalError(Box::new(e)));
        let stream = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(batches)
            .map_err(|e| match e {
                FlightError::ExternalError(inner) => match inner.downcast::<QueryError>() {
                    Ok(q) => query_status(*q),
                    Err(other) => Status::internal(other.to_string()),
                },
                other => Status::internal(other.to_string()),
            });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let endpoint =
            FlightEndpoint::new().with_ticket(Ticket::new(query.as_any().encode_to_vec()));
        let info = FlightInfo::new()
            .try_with_schema(&query.into_builder().schema())
            .map_err(|e| Status::internal(e.to_string()))?
            .with_endpoint(endpoint)
            .with_descriptor(request.into_inner());
        Ok(Response::new(info))
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        _request: Request<Ticket>,
    ) -> Result<Response<BoxStream<arrow_flight::FlightData>>, Status> {
        let mut builder = query.into_builder();
        for table in Table::ALL {
            builder
                .append("tally", "public", table.name(), "TABLE", &table.schema())
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        let schema = builder.schema();
        let batch = builder.build();
        let stream = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(futures::stream::once(async { batch }))
            .map_err(|e| Status::internal(e.to_string()));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn do_get_fallback(
        &self,
        _request: Request<Ticket>,
        message: Any,
    ) -> Result<Response<BoxStream<FlightData>>, Status> {
        if message.type_url != SUBSCRIBE_TYPE_URL {
            return Err(Status::unimplemented(format!(
                "unknown DoGet ticket `{}`: use a Flight SQL ticket, or `{SUBSCRIBE_TYPE_URL}` for the recommendation stream",
                message.type_url
            )));
        }
        let request: SubscribeRequest = serde_json::from_slice(&message.value).map_err(|e| {
            Status::invalid_argument(format!(
                "the subscription ticket's value is not {{\"subscribe\":\"{RECOMMENDATIONS_TOPIC}\"}}: {e}"
            ))
        })?;
        if request.subscribe != RECOMMENDATIONS_TOPIC {
            return Err(Status::invalid_argument(format!(
                "unknown topic `{}`: the only one is `{RECOMMENDATIONS_TOPIC}`",
                request.subscribe
            )));
        }
        // Small: a subscriber that reads slowly holds the task at `send`, and the watch
        // channel meanwhile keeps only the newest run.
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(follow_runs(
            self.engine.clone(),
            self.runs.subscribe(),
            self.stop.clone(),
            self.heartbeat,
            tx,
        ));
        tracing::info!("a subscriber follows the recommendation stream");
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use arrow::array::{
        ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
        new_null_array,
    };
    use arrow::datatypes::DataType;
    use arrow_flight::FlightData;
    use arrow_flight::flight_service_server::FlightServiceServer;
    use tally_query::{QueryEngine, QueryLimits};
    use tally_store::{Store, StoreConfig};
    use tally_wire::subscribe::{
        RecommendationStream, StreamEvent, StreamMetadata, SubscribeError, any_bytes,
    };
    use tally_wire::{IngestClient, Table};
    use tokio::sync::{mpsc, watch};
    use tokio_stream::wrappers::TcpListenerStream;

    use super::{ApplianceFlight, follow_runs};

    /// `n` rightsizing rows of `run_id` in the wire schema (optional columns null).
    fn run_rows(run_id: &str, n: usize) -> RecordBatch {
        let schema = Table::Recommendations.schema();
        let columns = schema
            .fields()
            .iter()
            .map(|f| -> ArrayRef {
                match (f.name().as_str(), f.data_type()) {
                    ("time", _) => Arc::new(
                        TimestampMillisecondArray::from(vec![
                            chrono::Utc::now().timestamp_millis();
                            n
                        ])
                        .with_timezone("UTC"),
                    ),
                    ("run_id", _) => Arc::new(StringArray::from(vec![run_id; n])),
                    ("kind", _) => Arc::new(StringArray::from(vec!["rightsizing"; n])),
                    ("target_name", _) => Arc::new(StringArray::from_iter_values(
                        (0..n).map(|i| format!("web-{i}")),
                    )),
                    (_, DataType::Utf8) if !f.is_nullable() => {
                        Arc::new(StringArray::from(vec!["x"; n]))
                    }
                    (_, DataType::Float64) if !f.is_nullable() => {
                        Arc::new(Float64Array::from(vec![1.0; n]))
                    }
                    (_, DataType::Int64) if !f.is_nullable() => {
                        Arc::new(Int64Array::from(vec![1; n]))
                    }
                    (_, t) => new_null_array(t, n),
                }
            })
            .collect();
        RecordBatch::try_new(schema, columns).expect("a recommendations batch")
    }

    struct Served {
        url: String,
        store: Arc<Store>,
        engine: QueryEngine,
        stop: watch::Sender<bool>,
        _dir: tempfile::TempDir,
    }

    /// The Flight service on loopback (no TLS: the stream's mutual TLS is the port's, tested
    /// end to end) with a short heartbeat.
    async fn serve(heartbeat: Duration) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(StoreConfig::new(dir.path())).await.unwrap();
        let engine = QueryEngine::new(store.clone(), QueryLimits::default());
        let (stop, stop_rx) = watch::channel(false);
        let service = ApplianceFlight::new(store.clone(), engine.clone())
            .with_stop(stop_rx)
            .with_heartbeat(heartbeat);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(FlightServiceServer::new(service))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        Served {
            url,
            store,
            engine,
            stop,
            _dir: dir,
        }
    }

    async fn next_run(stream: &mut RecommendationStream) -> (String, usize) {
        loop {
            match stream
                .next()
                .await
                .expect("stream alive")
                .expect("not ended")
            {
                StreamEvent::Run(run) => {
                    let ids = run.batches[0].column_by_name("run_id").unwrap();
                    let ids = arrow::array::AsArray::as_string::<i32>(ids);
                    assert!(ids.iter().all(|id| id == Some(run.run_id.as_str())));
                    return (run.run_id, run.rows);
                }
                StreamEvent::Heartbeat => continue,
            }
        }
    }

    #[tokio::test]
    async fn subscribers_get_the_newest_run_then_every_new_one_and_heartbeats() {
        let served = serve(Duration::from_millis(200)).await;
        let mut writer = IngestClient::connect(&served.url, None).await.unwrap();

        // No run yet: the first thing a subscriber hears is a heartbeat.
        let mut first = RecommendationStream::open(&served.url, None).await.unwrap();
        assert!(matches!(
            first.next().await.unwrap(),
            Some(StreamEvent::Heartbeat)
        ));

        // A DoPut of a new run's rows reaches the subscriber, whole.
        let key = tally_wire::BatchKey {
            producer: tally_wire::ProducerId::random(),
            sequence: 1,
        };
        writer
            .write_keyed(Table::Recommendations, vec![(key, run_rows("r1", 3))])
            .await
            .unwrap();
        assert_eq!(next_run(&mut first).await, ("r1".to_string(), 3));
        writer
            .write(Table::Recommendations, vec![run_rows("r2", 2)])
            .await
            .unwrap();
        assert_eq!(next_run(&mut first).await, ("r2".to_string(), 2));

        // A new subscriber starts with the newest run.
        let mut second = RecommendationStream::open(&served.url, None).await.unwrap();
        assert_eq!(next_run(&mut second).await, ("r2".to_string(), 2));

        // A resend of r1's batch (its key is durable already) is no new run: announced
        // nothing, the subscriber only hears heartbeats.
        let acks = writer
            .write_keyed(Table::Recommendations, vec![(key, run_rows("r1", 3))])
            .await
            .unwrap();
        assert!(acks[0].duplicate, "{acks:?}");
        let beat = tokio::time::timeout(Duration::from_secs(5), second.next())
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(beat, Some(StreamEvent::Heartbeat)), "{beat:?}");

        // The appliance stopping ends the stream (the operator then reconnects).
        served.stop.send(true).unwrap();
        loop {
            match second.next().await.unwrap() {
                Some(StreamEvent::Heartbeat) => continue,
                Some(StreamEvent::Run(run)) => panic!("unexpected run {}", run.run_id),
                None => break,
            }
        }
        served.store.close().await.unwrap();
    }

    #[tokio::test]
    async fn an_unknown_ticket_is_unimplemented_as_on_an_older_appliance() {
        let served = serve(Duration::from_secs(15)).await;
        let channel = tonic::transport::Endpoint::from_shared(served.url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = arrow_flight::flight_service_client::FlightServiceClient::new(channel);
        let ticket = arrow_flight::Ticket::new(any_bytes("type.googleapis.com/other.Thing", b""));
        let status = client.do_get(ticket).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unimplemented, "{status}");
        assert!(
            SubscribeError::Refused(status).is_unsupported(),
            "the operator would fall back to polling"
        );
        // A known envelope with another topic is a client error, not "unsupported".
        let ticket = arrow_flight::Ticket::new(any_bytes(
            tally_wire::subscribe::SUBSCRIBE_TYPE_URL,
            br#"{"subscribe":"prices"}"#,
        ));
        let status = client.do_get(ticket).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
        served.store.close().await.unwrap();
    }

    #[tokio::test]
    async fn a_finished_analysis_run_is_pushed_to_subscribers() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(StoreConfig::new(dir.path())).await.unwrap();
        let engine = QueryEngine::new(store.clone(), QueryLimits::default());
        let (runs, _) = watch::channel(None::<String>);
        let analyzer = tally_analysis::Analyzer::new(
            store.clone(),
            engine.clone(),
            tally_analysis::AnalysisConfig::default(),
        )
        .with_run_notifier(runs.clone());
        let service = ApplianceFlight::new(store.clone(), engine).with_runs(runs);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(FlightServiceServer::new(service))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        let mut stream = RecommendationStream::open(&url, None).await.unwrap();
        // An empty store: the run finds nothing to recommend, and still finishes.
        let summary = analyzer.run(chrono::Utc::now()).await.unwrap();
        let event = stream.next().await.unwrap().unwrap();
        let StreamEvent::Run(run) = event else {
            panic!("{event:?}");
        };
        assert_eq!(run.run_id, summary.run_id);
        assert_eq!(
            run.rows,
            summary.recommendations.values().sum::<usize>(),
            "{summary:?}"
        );
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn a_stream_that_goes_silent_is_given_up_by_the_client() {
        // Heartbeats an hour apart: to a client expecting one within 300 ms, the
        // connection looks dead (as one that vanished without a reset would).
        let served = serve(Duration::from_secs(3600)).await;
        let mut stream = RecommendationStream::open(&served.url, None)
            .await
            .unwrap()
            .with_silence_timeout(Duration::from_millis(300));
        let error = stream.next().await.unwrap_err();
        assert!(matches!(error, SubscribeError::Silent(_)), "{error}");
        assert!(!error.is_unsupported());
        served.store.close().await.unwrap();
    }

    /// The end markers' run ids among `messages`.
    fn ends(messages: &[FlightData]) -> Vec<String> {
        messages
            .iter()
            .filter_map(|m| StreamMetadata::from_bytes(&m.app_metadata).ok())
            .filter(|m| m.end)
            .filter_map(|m| m.run_id)
            .collect()
    }

    #[tokio::test]
    async fn a_slow_subscriber_skips_to_the_newest_run() {
        let served = serve(Duration::from_secs(3600)).await;
        served
            .store
            .write(Table::Recommendations, run_rows("r1", 1))
            .await
            .unwrap();
        let (runs, _) = watch::channel(None::<String>);
        let (_stop, stop_rx) = watch::channel(false);
        // Room for one message: the task blocks while sending r1 until the test reads.
        let (tx, mut rx) = mpsc::channel(1);
        tokio::spawn(follow_runs(
            served.engine.clone(),
            runs.subscribe(),
            stop_rx,
            Duration::from_secs(3600),
            tx,
        ));
        let schema_of_r1 = rx.recv().await.unwrap().unwrap();
        // Three more runs finish while the subscriber reads nothing.
        for id in ["r2", "r3", "r4"] {
            served
                .store
                .write(Table::Recommendations, run_rows(id, 1))
                .await
                .unwrap();
            runs.send_replace(Some(id.to_string()));
        }
        let mut got = vec![schema_of_r1];
        while ends(&got) != ["r1", "r4"] {
            let next = tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await
                .expect("the newest run arrives")
                .unwrap()
                .unwrap();
            got.push(next);
            assert!(ends(&got).len() <= 2, "{:?}", ends(&got));
        }
        // Nothing else is queued: r2 and r3 were skipped.
        assert!(rx.try_recv().is_err());
        drop(served.stop);
        served.store.close().await.unwrap();
    }
}
