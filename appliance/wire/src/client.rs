//! A client that writes batches to the appliance with Arrow Flight `DoPut`.
//!
//! Any Flight client can do the same: open `DoPut` with a path descriptor naming the table,
//! send the batches, and read one `PutResult` per batch whose `app_metadata` is an
//! [`IngestAck`] (JSON). A batch is durable once its acknowledgement arrives.

use arrow::array::RecordBatch;
use arrow_flight::FlightDescriptor;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use futures::{StreamExt, TryStreamExt};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::{IngestAck, Table};

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

    /// Writes batches to `table` in one `DoPut` and returns one acknowledgement per batch.
    pub async fn write(
        &mut self,
        table: Table,
        batches: Vec<RecordBatch>,
    ) -> Result<Vec<IngestAck>, WriteError> {
        let expected = batches.iter().filter(|b| b.num_rows() > 0).count();
        let data = FlightDataEncoderBuilder::new()
            .with_flight_descriptor(Some(FlightDescriptor::new_path(vec![
                table.name().to_string(),
            ])))
            .build(futures::stream::iter(
                batches.into_iter().map(Ok::<_, FlightError>),
            ))
            .map(|r| r.expect("encoding record batches of a known schema"));
        let mut acknowledged = Vec::with_capacity(expected);
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
