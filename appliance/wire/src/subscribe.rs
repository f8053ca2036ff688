//! The recommendation stream: the appliance pushes every finished analysis run's
//! `recommendations` rows to subscribers over a gRPC server stream, on its Flight port and
//! under the same mutual TLS as ingest (only certificates signed by the appliance's CA).
//!
//! # Contract
//! - The subscriber calls Flight `DoGet` with the ticket [`subscribe_ticket`]: a protobuf
//!   `google.protobuf.Any` whose `type_url` is [`SUBSCRIBE_TYPE_URL`] and whose `value` is the
//!   JSON `{"subscribe":"recommendations"}` (the same envelope Flight SQL tickets use, so the
//!   appliance's Flight SQL service routes it).
//! - The appliance first sends the newest run's rows (if any run exists), then every new
//!   run's rows as soon as the run is durable (an analysis run finished, or a `DoPut` of
//!   `recommendations` rows with a new `run_id` ended).
//! - A run is: an Arrow schema message, its record batches (every row of the run, every
//!   kind, the `recommendations` schema), then an end marker. Every message of a run carries
//!   [`StreamMetadata`] JSON in its `app_metadata` with the `run_id`; the end marker is a
//!   metadata-only message (empty `data_header` and body) with `end: true` and the row count.
//! - Every ~15 s without a run the appliance sends a heartbeat: a metadata-only message with
//!   `heartbeat: true`, so either side notices a dead connection. A subscriber that hears
//!   nothing for [`HEARTBEAT_TIMEOUT`] should reconnect.
//! - Bounded: the appliance keeps only the newest run id per subscriber; a slow subscriber
//!   skips the runs it was too slow for and gets the newest, never a growing queue.
//! - An appliance without the stream (older versions) answers `Unimplemented` (the Flight
//!   SQL default for an unknown ticket): subscribers then fall back to querying with Flight
//!   SQL. [`SubscribeError::is_unsupported`] says so.
//!
//! [`RecommendationStream`] is a client that reassembles runs from those messages.

use std::time::Duration;

use arrow::array::RecordBatch;
use arrow_flight::decode::{DecodedPayload, FlightDataDecoder};
use arrow_flight::{FlightData, Ticket};
use futures::{StreamExt, TryStreamExt};

use crate::client::{ClientError, ClientTls, IngestClient};

/// The `type_url` of the subscription ticket's `Any` envelope.
pub const SUBSCRIBE_TYPE_URL: &str = "type.googleapis.com/tally.v1.Subscribe";

/// The only topic there is.
pub const RECOMMENDATIONS_TOPIC: &str = "recommendations";

/// How often the appliance sends a heartbeat when no run comes.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(15);

/// How long a subscriber waits for any message before it treats the connection as dead.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(45);

/// The JSON in the ticket's `Any.value`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SubscribeRequest {
    pub subscribe: String,
}

/// The `app_metadata` of every message of the stream.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StreamMetadata {
    /// The analysis run the message belongs to (absent on heartbeats).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// The last message of a run.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub end: bool,
    /// The run's row count (on the end marker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// A heartbeat: no run, the connection is alive.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub heartbeat: bool,
}

impl StreamMetadata {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("stream metadata serialises")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// A metadata-only Flight message carrying this metadata.
    pub fn message(&self) -> FlightData {
        FlightData {
            app_metadata: self.to_bytes().into(),
            ..Default::default()
        }
    }
}

fn varint(mut n: usize, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// `google.protobuf.Any { type_url, value }` in protobuf encoding (fields 1 and 2, both
/// length-delimited); written by hand so the wire crate needs no protobuf dependency.
pub fn any_bytes(type_url: &str, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(type_url.len() + value.len() + 8);
    out.push(0x0a);
    varint(type_url.len(), &mut out);
    out.extend_from_slice(type_url.as_bytes());
    out.push(0x12);
    varint(value.len(), &mut out);
    out.extend_from_slice(value);
    out
}

/// The `DoGet` ticket that subscribes to the recommendation stream.
pub fn subscribe_ticket() -> Ticket {
    let request = SubscribeRequest {
        subscribe: RECOMMENDATIONS_TOPIC.to_string(),
    };
    let value = serde_json::to_vec(&request).expect("request serialises");
    Ticket::new(any_bytes(SUBSCRIBE_TYPE_URL, &value))
}

#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error(transparent)]
    Connect(#[from] ClientError),
    #[error("the appliance refused the subscription: {0}")]
    Refused(tonic::Status),
    #[error("the recommendation stream failed: {0}")]
    Stream(tonic::Status),
    #[error("the recommendation stream sent a message that does not follow the contract: {0}")]
    Protocol(String),
    #[error("no message from the appliance for {0:?} (heartbeats missing): connection dead")]
    Silent(Duration),
}

impl SubscribeError {
    /// The appliance has no recommendation stream (an older version): query instead.
    pub fn is_unsupported(&self) -> bool {
        matches!(self, SubscribeError::Refused(s) if s.code() == tonic::Code::Unimplemented)
    }
}

/// One analysis run received over the stream.
#[derive(Debug, Clone)]
pub struct StreamedRun {
    pub run_id: String,
    /// Every row of the run (all kinds), in the `recommendations` schema.
    pub batches: Vec<RecordBatch>,
    pub rows: usize,
}

/// What the stream delivers.
#[derive(Debug, Clone)]
pub enum StreamEvent {
    Run(StreamedRun),
    Heartbeat,
}

/// A subscription to the appliance's recommendation stream.
pub struct RecommendationStream {
    inner: tonic::Streaming<FlightData>,
    pending: Vec<FlightData>,
    run_id: Option<String>,
    silence: Duration,
}

impl RecommendationStream {
    /// Connects to `url` and subscribes.
    pub async fn open(url: &str, tls: Option<ClientTls>) -> Result<Self, SubscribeError> {
        let client = IngestClient::connect(url, tls).await?;
        Self::subscribe(&client).await
    }

    /// Subscribes over an existing connection.
    pub async fn subscribe(client: &IngestClient) -> Result<Self, SubscribeError> {
        let mut flight = client.flight();
        let inner = flight
            .do_get(subscribe_ticket())
            .await
            .map_err(SubscribeError::Refused)?
            .into_inner();
        Ok(Self {
            inner,
            pending: Vec::new(),
            run_id: None,
            silence: HEARTBEAT_TIMEOUT,
        })
    }

    /// How long [`Self::next`] waits for a message before it gives up on the connection.
    pub fn with_silence_timeout(mut self, silence: Duration) -> Self {
        self.silence = silence;
        self
    }

    /// The next run or heartbeat; `Ok(None)` when the appliance ended the stream (it stops).
    pub async fn next(&mut self) -> Result<Option<StreamEvent>, SubscribeError> {
        loop {
            let message = match tokio::time::timeout(self.silence, self.inner.message()).await {
                Err(_) => return Err(SubscribeError::Silent(self.silence)),
                Ok(Err(status)) => return Err(SubscribeError::Stream(status)),
                Ok(Ok(None)) => return Ok(None),
                Ok(Ok(Some(message))) => message,
            };
            let meta = StreamMetadata::from_bytes(&message.app_metadata)
                .map_err(|e| SubscribeError::Protocol(format!("app_metadata: {e}")))?;
            if meta.heartbeat {
                return Ok(Some(StreamEvent::Heartbeat));
            }
            let Some(run_id) = meta.run_id.clone() else {
                return Err(SubscribeError::Protocol(
                    "a message with neither a run_id nor heartbeat".into(),
                ));
            };
            if self.run_id.as_ref() != Some(&run_id) {
                // A new run starts (a run cut short by a newer one is dropped).
                self.pending.clear();
                self.run_id = Some(run_id.clone());
            }
            if !meta.end {
                self.pending.push(message);
                continue;
            }
            let pending = std::mem::take(&mut self.pending);
            self.run_id = None;
            let batches = decode(pending).await?;
            let rows = batches.iter().map(RecordBatch::num_rows).sum();
            if let Some(expected) = meta.rows
                && expected as usize != rows
            {
                return Err(SubscribeError::Protocol(format!(
                    "run {run_id}: {rows} rows received, the end marker says {expected}"
                )));
            }
            return Ok(Some(StreamEvent::Run(StreamedRun {
                run_id,
                batches,
                rows,
            })));
        }
    }
}

async fn decode(messages: Vec<FlightData>) -> Result<Vec<RecordBatch>, SubscribeError> {
    let stream = futures::stream::iter(messages.into_iter().map(Ok));
    FlightDataDecoder::new(stream)
        .try_filter_map(|m| async move {
            Ok(match m.payload {
                DecodedPayload::RecordBatch(b) => Some(b),
                _ => None,
            })
        })
        .boxed()
        .try_collect()
        .await
        .map_err(|e| SubscribeError::Protocol(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_envelope_is_protobuf() {
        let bytes = any_bytes("t", b"v");
        assert_eq!(bytes, vec![0x0a, 1, b't', 0x12, 1, b'v']);
        // A length over 127 takes two varint bytes.
        let long = "x".repeat(200);
        let bytes = any_bytes(&long, b"");
        assert_eq!(&bytes[..3], &[0x0a, 0xc8, 0x01]);
        assert_eq!(bytes.len(), 3 + 200 + 2);
    }

    #[test]
    fn metadata_round_trips_and_stays_small() {
        let beat = StreamMetadata {
            heartbeat: true,
            ..Default::default()
        };
        assert_eq!(beat.to_bytes(), br#"{"heartbeat":true}"#);
        let end = StreamMetadata {
            run_id: Some("r1".into()),
            end: true,
            rows: Some(3),
            heartbeat: false,
        };
        assert_eq!(StreamMetadata::from_bytes(&end.to_bytes()).unwrap(), end);
        assert!(beat.message().data_header.is_empty());
    }
}
