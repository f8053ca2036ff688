//! A client that writes batches to the appliance with Arrow Flight `DoPut`.
//!
//! Any Flight client can do the same: open `DoPut` with a path descriptor naming the table,
//! send the batches, and read one `PutResult` per batch whose `app_metadata` is an
//! [`IngestAck`] (JSON). A batch is durable once its acknowledgement arrives.
//!
//! [`IngestClient::write_keyed`] also puts a [`BatchKey`] in the `app_metadata` of every
//! record-batch message, so that a batch sent again after a lost acknowledgement is stored
//! once (see [`crate::key`]); [`IngestClient::write`] sends none (no deduplication).

use std::collections::VecDeque;

use arrow::array::RecordBatch;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::{FlightData, FlightDescriptor};
use futures::{Stream, StreamExt, TryStreamExt};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::{BatchKey, IngestAck, Table};

/// The largest part [`split_for_flight`] makes, by Arrow buffer size: the Flight encoder's
/// own target for one message (2 MiB).
pub const FLIGHT_PART_BYTES: usize = 2 * 1024 * 1024;

/// Splits a batch into consecutive row ranges of at most [`FLIGHT_PART_BYTES`] each (by the
/// size of its Arrow buffers), the way the Flight encoder splits a large batch into several
/// messages. The split depends only on the batch, so the same batch always gives the same
/// parts; a keyed sender gives each part its own key. No rows, no parts.
pub fn split_for_flight(batch: &RecordBatch) -> Vec<RecordBatch> {
    let size: usize = batch
        .columns()
        .iter()
        .map(|c| c.get_buffer_memory_size())
        .sum();
    let rows = batch.num_rows();
    let parts = size.div_ceil(FLIGHT_PART_BYTES).max(1);
    let per_part = (rows / parts).max(1);
    (0..rows)
        .step_by(per_part)
        .map(|offset| batch.slice(offset, per_part.min(rows - offset)))
        .collect()
}

/// Whether a Flight message carries a record batch (not a schema or a dictionary).
fn is_record_batch(data: &FlightData) -> bool {
    arrow::ipc::root_as_message(&data.data_header)
        .is_ok_and(|m| m.header_type() == arrow::ipc::MessageHeader::RecordBatch)
}

/// Client certificate, key and the CA that signed the appliance's certificate (PEM).
#[derive(Debug, Clone)]
pub struct ClientTls {
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// The name in the appliance's certificate (default: the URL's host).
    pub domain: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid appliance address {url}: {reason}")]
    Address { url: String, reason: String },
    #[error("cannot connect to the appliance at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("the appliance refused the write: {0}")]
    Refused(tonic::Status),
    #[error("encoding the batch failed: {0}")]
    Encode(String),
    #[error("the appliance sent an acknowledgement that is not valid JSON: {0}")]
    BadAck(String),
}

/// What a write achieved before it failed: the acknowledgements received so far (those
/// batches are durable) and the reason the rest were not.
#[derive(Debug, thiserror::Error)]
#[error("{source} ({} of the batches were acknowledged before)", acknowledged.len())]
pub struct WriteError {
    pub acknowledged: Vec<IngestAck>,
    #[source]
    pub source: ClientError,
}

#[derive(Debug, Clone)]
pub struct IngestClient {
    inner: FlightServiceClient<Channel>,
}

impl IngestClient {
    /// Connects to `url` (`http://host:port` without TLS, `https://host:port` with).
    pub async fn connect(url: &str, tls: Option<ClientTls>) -> Result<Self, ClientError> {
        let address = |reason: String| ClientError::Address {
            url: url.to_string(),
            reason,
        };
        let mut endpoint =
            Endpoint::from_shared(url.to_string()).map_err(|e| address(e.to_string()))?;
        if let Some(tls) = tls {
            let mut config = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(tls.ca_pem))
                .identity(Identity::from_pem(tls.cert_pem, tls.key_pem));
            if let Some(domain) = tls.domain {
                config = config.domain_name(domain);
            }
            endpoint = endpoint
                .tls_config(config)
                .map_err(|e| address(e.to_string()))?;
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|source| ClientError::Connect {
                url: url.to_string(),
                source,
            })?;
        Ok(Self {
            inner: FlightServiceClient::new(channel)
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(256 << 20),
        })
    }

    /// The Flight client of this connection (the recommendation stream subscribes on it).
    pub(crate) fn flight(&self) -> FlightServiceClient<Channel> {
        self.inner.clone()
    }

    /// Writes batches to `table` in one `DoPut` and returns one acknowledgement per Flight
    /// message (one per batch, or several for a batch over 2 MiB, which the encoder splits).
    /// No key is sent: a batch sent again is stored again.
    pub async fn write(
        &mut self,
        table: Table,
        batches: Vec<RecordBatch>,
    ) -> Result<Vec<IngestAck>, WriteError> {
        let data = FlightDataEncoderBuilder::new()
            .with_flight_descriptor(Some(descriptor(table)))
            .build(futures::stream::iter(
                batches.into_iter().map(Ok::<_, FlightError>),
            ))
            .map(|r| r.expect("encoding record batches of a known schema"));
        self.put(data).await
    }

    /// Writes batches to `table` in one `DoPut`, each as exactly one Flight message whose
    /// `app_metadata` is its key, and returns one acknowledgement per batch with rows (a
    /// `duplicate` one for a key the appliance had already made durable). Batches are not
    /// split here, so one key names one message: split large batches first
    /// ([`split_for_flight`]) and give every part its own key. Batches without rows send
    /// nothing.
    pub async fn write_keyed(
        &mut self,
        table: Table,
        batches: Vec<(BatchKey, RecordBatch)>,
    ) -> Result<Vec<IngestAck>, WriteError> {
        let (keys, batches): (VecDeque<_>, Vec<_>) = batches
            .into_iter()
            .filter(|(_, b)| b.num_rows() > 0)
            .map(|(k, b)| (bytes::Bytes::from(k.to_bytes()), Ok::<_, FlightError>(b)))
            .unzip();
        let mut keys = keys;
        let data = FlightDataEncoderBuilder::new()
            .with_flight_descriptor(Some(descriptor(table)))
            // One message per batch, so that the keys line up with the messages.
            .with_max_flight_data_size(usize::MAX)
            .build(futures::stream::iter(batches))
            .map(move |r| {
                let mut data = r.expect("encoding record batches of a known schema");
                if is_record_batch(&data)
                    && let Some(key) = keys.pop_front()
                {
                    data.app_metadata = key;
                }
                data
            });
        self.put(data).await
    }

    async fn put(
        &mut self,
        data: impl Stream<Item = FlightData> + Send + 'static,
    ) -> Result<Vec<IngestAck>, WriteError> {
        let mut acknowledged = Vec::new();
        let fail = |acknowledged: Vec<IngestAck>, source| WriteError {
            acknowledged,
            source,
        };
        let response = match self.inner.do_put(data).await {
            Ok(r) => r,
            Err(status) => return Err(fail(acknowledged, ClientError::Refused(status))),
        };
        let mut results = response.into_inner();
        loop {
            match results.try_next().await {
                Ok(Some(result)) => match IngestAck::from_bytes(&result.app_metadata) {
                    Ok(ack) => acknowledged.push(ack),
                    Err(e) => return Err(fail(acknowledged, ClientError::BadAck(e.to_string()))),
                },
                Ok(None) => break,
                Err(status) => return Err(fail(acknowledged, ClientError::Refused(status))),
            }
        }
        Ok(acknowledged)
    }
}

fn descriptor(table: Table) -> FlightDescriptor {
    FlightDescriptor::new_path(vec![table.name().to_string()])
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    fn batch(rows: usize, text: usize) -> RecordBatch {
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("n", DataType::Int64, false),
                Field::new("s", DataType::Utf8, false),
            ])),
            vec![
                Arc::new(Int64Array::from_iter_values(0..rows as i64)),
                Arc::new(StringArray::from_iter_values(
                    (0..rows).map(|_| "x".repeat(text)),
                )),
            ],
        )
        .unwrap()
    }

    #[test]
    fn small_batches_stay_whole_and_large_ones_split_the_same_way_every_time() {
        let small = batch(1000, 10);
        let parts = split_for_flight(&small);
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0], small);
        assert!(split_for_flight(&batch(0, 10)).is_empty());

        // About 10 MiB of strings (up to twice that in allocated buffers, which is what the
        // encoder counts too): several parts, together every row once, in order.
        let large = batch(10_000, 1000);
        let parts = split_for_flight(&large);
        assert!((5..=11).contains(&parts.len()), "{} parts", parts.len());
        let rows: Vec<i64> = parts
            .iter()
            .flat_map(|p| {
                p.column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect();
        assert_eq!(rows, (0..10_000).collect::<Vec<_>>());
        let again = split_for_flight(&large);
        assert_eq!(
            again.iter().map(|p| p.num_rows()).collect::<Vec<_>>(),
            parts.iter().map(|p| p.num_rows()).collect::<Vec<_>>()
        );
    }
}
