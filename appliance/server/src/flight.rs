//! The appliance's Arrow Flight endpoint, one port for two jobs:
//! - ingest: `DoPut` with a path descriptor naming the table; one `PutResult` per batch once
//!   it is durable, carrying an [`tally_wire::IngestAck`]. A record-batch message may carry a
//!   [`tally_wire::BatchKey`] (JSON) in its `app_metadata`: a batch whose key is durable
//!   already is acknowledged again (`duplicate: true`) and not stored twice. Messages without
//!   `app_metadata` are stored as they come (no deduplication);
//! - Flight SQL: statement queries under the same read-only rules as the HTTP SQL API, so
//!   ADBC/JDBC clients and tools such as DBeaver can query Tally.

use std::pin::Pin;
use std::sync::Arc;

use arrow_flight::decode::{DecodedPayload, FlightDataDecoder};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_descriptor::DescriptorType;
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    Any, CommandGetTables, CommandStatementQuery, ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{FlightDescriptor, FlightEndpoint, FlightInfo, PutResult, Ticket};
use futures::{FutureExt, Stream, StreamExt, TryStreamExt};
use prost::Message;
use tally_query::{QueryEngine, QueryError};
use tally_store::{Store, StoreError};
use tally_wire::{BatchKey, Table};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[derive(Clone)]
pub struct ApplianceFlight {
    store: Arc<Store>,
    engine: QueryEngine,
}

impl ApplianceFlight {
    pub fn new(store: Arc<Store>, engine: QueryEngine) -> Self {
        Self { store, engine }
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
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut written = 0usize;
            let mut had_schema = false;
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
                            match BatchKey::from_app_metadata(&message.inner.app_metadata) {
                                Ok(key) => store
                                    .write_keyed(table, batch, key)
                                    .await
                                    .map(|ack| PutResult {
                                        app_metadata: ack.to_bytes().into(),
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

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
