//! An agent's live link to the appliance: the client certificate it presents (renewed at two
//! thirds of its life when it came from the bootstrap endpoint) and the Flight ingest client
//! made with it. The collector, the operator and netmon all keep their certificates this way.
//!
//! Renewal happens when the agent next needs the appliance (no background task): every call
//! of [`AgentTls::current`] first checks whether the certificate is due. A failed renewal
//! keeps the current certificate while it is still valid and is tried again after a tenth of
//! the validity left (1 s to 5 min), so a slow or failing bootstrap endpoint does not hold up
//! every write; once the certificate has expired the call fails, so the agent waits and
//! retries as for an unreachable appliance.
//!
//! Every batch written through a link carries a [`BatchKey`] (a producer id chosen at random
//! when the link is made, and a sequence number per batch, see [`crate::key`]). A batch that
//! was not acknowledged keeps its key: when the agent writes the same batch again (a clone of
//! the same `RecordBatch`, as an outbox that keeps a batch until it is acknowledged does), the
//! same key goes with it, so the appliance stores it once even if it had made it durable before
//! the acknowledgement was lost.

use crate::agent::Credentials;
use crate::bootstrap::{BootstrapError, IssuedCertificate, request_certificate};
use crate::{
    BatchKey, ClientError, ClientTls, IngestAck, IngestClient, KeySource, ProducerId, Table,
    WriteError, split_for_flight,
};

use arrow::array::RecordBatch;
use std::path::PathBuf;
use std::sync::Arc;

/// Why no certificate could be presented.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("cannot read the ServiceAccount token {path}: {source}")]
    Token {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
}

/// The TLS identity an agent presents, from its [`Credentials`].
#[derive(Debug)]
pub struct AgentTls {
    credentials: Credentials,
    certificate: Option<IssuedCertificate>,
    /// When to ask for the next certificate (Unix ms).
    renew_at_ms: i64,
    failures: u64,
}

/// What [`AgentTls::current`] answers.
#[derive(Debug, Clone)]
pub struct CurrentTls {
    /// The identity to connect with (`None` without TLS).
    pub tls: Option<ClientTls>,
    /// A new certificate arrived in this call: connections made with the previous one should
    /// be dropped and made again.
    pub renewed: bool,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl AgentTls {
    pub fn new(credentials: Credentials) -> Self {
        Self {
            credentials,
            certificate: None,
            renew_at_ms: 0,
            failures: 0,
        }
    }

    /// The certificate from the bootstrap endpoint, if one is held.
    pub fn certificate(&self) -> Option<&IssuedCertificate> {
        self.certificate.as_ref()
    }

    /// When the held certificate is due for renewal (Unix ms; `None` without one). A
    /// long-lived connection (the recommendation stream) reconnects then, so that it does
    /// not outlive its certificate.
    pub fn renew_at_ms(&self) -> Option<i64> {
        self.certificate.as_ref().map(|_| self.renew_at_ms)
    }

    /// How many requests to the bootstrap endpoint failed so far (including renewals that
    /// failed while the previous certificate was still valid).
    pub fn failures(&self) -> u64 {
        self.failures
    }

    /// The identity to connect with now; with the bootstrap, asks for a new certificate first
    /// when none is held or the current one is two thirds through its life.
    pub async fn current(&mut self) -> Result<CurrentTls, CertificateError> {
        self.current_at(now_ms).await
    }

    async fn current_at(&mut self, now: impl Fn() -> i64) -> Result<CurrentTls, CertificateError> {
        let (url, ca_pem, token_file) = match &self.credentials {
            Credentials::Insecure => {
                return Ok(CurrentTls {
                    tls: None,
                    renewed: false,
                });
            }
            Credentials::Static(tls) => {
                return Ok(CurrentTls {
                    tls: Some(tls.clone()),
                    renewed: false,
                });
            }
            Credentials::Bootstrap {
                url,
                ca_pem,
                token_file,
            } => (url, ca_pem, token_file),
        };
        let due = self
            .certificate
            .as_ref()
            .is_none_or(|c| now() >= self.renew_at_ms || now() >= c.not_after_ms);
        let mut renewed = false;
        if due {
            // The token is read at every renewal: projected tokens rotate.
            let issued = match tokio::fs::read_to_string(token_file).await {
                Ok(token) => request_certificate(url, ca_pem, &token)
                    .await
                    .map_err(CertificateError::from),
                Err(source) => Err(CertificateError::Token {
                    path: token_file.clone(),
                    source,
                }),
            };
            match issued {
                Ok(issued) => {
                    tracing::info!(
                        identity = %issued.identity,
                        not_after_ms = issued.not_after_ms,
                        "received a client certificate"
                    );
                    self.renew_at_ms = renew_at_ms(&issued, now());
                    self.certificate = Some(issued);
                    renewed = true;
                }
                Err(error) => {
                    self.failures += 1;
                    let left_ms = match &self.certificate {
                        Some(c) if now() < c.not_after_ms => c.not_after_ms - now(),
                        _ => {
                            self.certificate = None;
                            return Err(error);
                        }
                    };
                    self.renew_at_ms = now() + (left_ms / 10).clamp(1_000, 300_000);
                    tracing::warn!(%error, retry_in_ms = self.renew_at_ms - now(), "cannot renew the client certificate yet; the current one is still valid");
                }
            }
        }
        Ok(CurrentTls {
            tls: self.certificate.as_ref().map(|c| c.tls.clone()),
            renewed,
        })
    }
}

/// When to renew a certificate received at `received_ms`: two thirds into its validity
/// ([`IssuedCertificate::renew_at_ms`]), but counted from when it arrived if that is later.
/// The appliance dates certificates back five minutes for clock skew, so with a short
/// `--agent-cert-ttl` two thirds of the whole validity can lie before the certificate even
/// arrived, and every use would ask for a new one.
fn renew_at_ms(issued: &IssuedCertificate, received_ms: i64) -> i64 {
    let from_arrival = received_ms + (issued.not_after_ms - received_ms).max(0) * 2 / 3;
    issued.renew_at_ms().max(from_arrival)
}

/// Why a write through an [`IngestLink`] failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot get a client certificate: {0}")]
    Certificate(#[from] CertificateError),
    #[error(transparent)]
    Connect(ClientError),
    #[error(transparent)]
    Write(WriteError),
}

/// A Flight ingest client to the appliance that renews its certificate and reconnects when
/// needed: after a renewal, after a failed write, or after [`IngestLink::reset`].
#[derive(Debug)]
pub struct IngestLink {
    url: String,
    tls: AgentTls,
    client: Option<IngestClient>,
    keys: KeySource,
    /// The batches of the last write that were not acknowledged, with the keys they went with.
    unacknowledged: Vec<Keyed>,
}

/// A batch as it was sent: its parts (one Flight message each) and their keys.
#[derive(Debug, Clone)]
struct Keyed {
    table: Table,
    batch: RecordBatch,
    parts: Vec<(BatchKey, RecordBatch)>,
}

/// The same batch: a clone sharing every array (not merely equal rows, which two different
/// batches may have).
fn same_batch(a: &RecordBatch, b: &RecordBatch) -> bool {
    a.num_rows() == b.num_rows()
        && a.num_columns() == b.num_columns()
        && a.columns()
            .iter()
            .zip(b.columns())
            .all(|(x, y)| Arc::ptr_eq(x, y))
}

impl IngestLink {
    /// A link to the appliance's Flight URL `url`; nothing is connected until it is used.
    pub fn new(url: String, credentials: Credentials) -> Self {
        Self {
            url,
            tls: AgentTls::new(credentials),
            client: None,
            keys: KeySource::new(),
            unacknowledged: Vec::new(),
        }
    }

    /// The certificate state (for metrics).
    pub fn tls(&self) -> &AgentTls {
        &self.tls
    }

    /// The producer id this link's batches carry.
    pub fn producer(&self) -> ProducerId {
        self.keys.producer()
    }

    /// Drops the connection, so the next use reconnects.
    pub fn reset(&mut self) {
        self.client = None;
    }

    /// A connected client, renewing the certificate first when it is due.
    pub async fn connect(&mut self) -> Result<&mut IngestClient, LinkError> {
        let current = match self.tls.current().await {
            Ok(current) => current,
            Err(error) => {
                // No valid certificate: the connection made with the expired one goes too.
                self.client = None;
                return Err(error.into());
            }
        };
        if current.renewed {
            self.client = None;
        }
        if self.client.is_none() {
            let client = IngestClient::connect(&self.url, current.tls)
                .await
                .map_err(LinkError::Connect)?;
            self.client = Some(client);
        }
        Ok(self.client.as_mut().expect("connected"))
    }

    /// Gives each batch its key: the one it was sent with last time if it is a batch of the
    /// previous write that was not acknowledged, a new one otherwise. Keys must rise in the
    /// order batches are sent (the appliance takes a key at or below the highest it stored for
    /// a resend), so an old key is only reused before any new one and in its old order;
    /// otherwise the batch gets a new key (it may then be stored twice, never lost).
    fn keyed(&mut self, table: Table, batches: Vec<RecordBatch>) -> Vec<Keyed> {
        let previous = std::mem::take(&mut self.unacknowledged);
        let mut out: Vec<Keyed> = Vec::with_capacity(batches.len());
        let mut last = 0u64;
        let mut fresh = false;
        for batch in batches {
            if batch.num_rows() == 0 {
                continue;
            }
            let again = previous.iter().find(|k| {
                !fresh
                    && k.table == table
                    && same_batch(&k.batch, &batch)
                    && k.parts.first().is_some_and(|(key, _)| key.sequence > last)
            });
            let keyed = match again {
                Some(again) => again.clone(),
                None => {
                    fresh = true;
                    let parts = split_for_flight(&batch)
                        .into_iter()
                        .map(|part| (self.keys.next_key(), part))
                        .collect();
                    Keyed {
                        table,
                        batch,
                        parts,
                    }
                }
            };
            last = keyed.parts.last().map_or(last, |(key, _)| key.sequence);
            out.push(keyed);
        }
        out
    }

    /// Writes batches to `table` in one `DoPut`, each with its key (see the module
    /// documentation), and returns one acknowledgement per part (batches over 2 MiB go in
    /// several parts). A batch that is not acknowledged keeps its key for the next write of
    /// the same batch. After a failure the connection is dropped, so the next write
    /// reconnects.
    pub async fn write(
        &mut self,
        table: Table,
        batches: Vec<RecordBatch>,
    ) -> Result<Vec<IngestAck>, LinkError> {
        let keyed = self.keyed(table, batches);
        let client = match self.connect().await {
            Ok(client) => client,
            Err(error) => {
                self.unacknowledged = keyed;
                return Err(error);
            }
        };
        let parts: Vec<(BatchKey, RecordBatch)> =
            keyed.iter().flat_map(|k| k.parts.iter().cloned()).collect();
        let total = parts.len();
        let (acknowledged, result) = match client.write_keyed(table, parts).await {
            Ok(acks) => (acks.len(), Ok(acks)),
            Err(error) => {
                self.client = None;
                (error.acknowledged.len(), Err(LinkError::Write(error)))
            }
        };
        if acknowledged < total {
            // Keep the batches with a part beyond the acknowledged ones, keys and all.
            let mut end = 0;
            self.unacknowledged = keyed
                .into_iter()
                .filter(|k| {
                    end += k.parts.len();
                    end > acknowledged
                })
                .collect();
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI64, Ordering};

    fn tls(name: &str) -> ClientTls {
        ClientTls {
            ca_pem: b"ca".to_vec(),
            cert_pem: name.as_bytes().to_vec(),
            key_pem: b"key".to_vec(),
            domain: None,
        }
    }

    /// A bootstrap URL where nothing listens: every request fails (connection refused).
    fn unreachable_bootstrap(token_file: PathBuf) -> Credentials {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap().pem();
        Credentials::Bootstrap {
            url: format!("https://127.0.0.1:{port}"),
            ca_pem: ca.into_bytes(),
            token_file,
        }
    }

    #[tokio::test]
    async fn files_and_no_tls_are_presented_as_they_are() {
        let mut none = AgentTls::new(Credentials::Insecure);
        let current = none.current().await.unwrap();
        assert!(current.tls.is_none() && !current.renewed);
        let mut files = AgentTls::new(Credentials::Static(tls("static")));
        let current = files.current().await.unwrap();
        assert_eq!(current.tls.unwrap().cert_pem, b"static");
        assert!(!current.renewed);
        assert_eq!(files.failures(), 0);
    }

    #[tokio::test]
    async fn a_failed_renewal_keeps_a_valid_certificate_and_an_expired_one_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "t").unwrap();
        let mut agent = AgentTls::new(unreachable_bootstrap(token_file.clone()));
        // A certificate valid from 1,000 to 31,000 ms: due for renewal at 21,000.
        let issued = IssuedCertificate {
            tls: tls("issued"),
            not_before_ms: 1_000,
            not_after_ms: 31_000,
            identity: "system:serviceaccount:t:agent".into(),
        };
        agent.renew_at_ms = renew_at_ms(&issued, 1_000);
        assert_eq!(agent.renew_at_ms, 21_000);
        agent.certificate = Some(issued);
        let clock = Arc::new(AtomicI64::new(20_000));
        let now = || clock.load(Ordering::Relaxed);

        // Not due: no request is made.
        let current = agent.current_at(now).await.unwrap();
        assert_eq!(current.tls.unwrap().cert_pem, b"issued");
        assert_eq!(agent.failures(), 0);

        // Due, the endpoint unreachable, still valid: the old certificate is kept.
        clock.store(21_000, Ordering::Relaxed);
        let current = agent.current_at(now).await.unwrap();
        assert_eq!(current.tls.unwrap().cert_pem, b"issued");
        assert!(!current.renewed);
        assert_eq!(agent.failures(), 1);
        // Tried again after a tenth of the 10 s left, not at every use.
        clock.store(21_900, Ordering::Relaxed);
        agent.current_at(now).await.unwrap();
        assert_eq!(agent.failures(), 1);

        // An unreadable token is a failed renewal like any other.
        std::fs::remove_file(&token_file).unwrap();
        clock.store(22_000, Ordering::Relaxed);
        let current = agent.current_at(now).await.unwrap();
        assert!(current.tls.is_some());
        assert_eq!(agent.failures(), 2);

        // Half a second left: the next try would be after the end (31,500)...
        clock.store(30_500, Ordering::Relaxed);
        assert!(agent.current_at(now).await.is_ok());
        assert_eq!(agent.failures(), 3);
        // ...but an expired certificate is never presented: the call fails and it is gone.
        clock.store(31_000, Ordering::Relaxed);
        let err = agent.current_at(now).await.unwrap_err();
        assert!(matches!(err, CertificateError::Token { .. }), "{err}");
        assert!(err.to_string().contains("ServiceAccount token"), "{err}");
        assert!(agent.certificate().is_none());
        std::fs::write(&token_file, "t").unwrap();
        let err = agent.current_at(now).await.unwrap_err();
        assert!(
            matches!(
                err,
                CertificateError::Bootstrap(BootstrapError::Unreachable { .. })
            ),
            "{err}"
        );
        assert_eq!(agent.failures(), 5);
    }

    #[test]
    fn renewal_counts_from_arrival_when_the_certificate_was_dated_back() {
        // Dated back 300 s for clock skew, valid 12 s from its arrival at 1,000,000 ms.
        let issued = IssuedCertificate {
            tls: tls("issued"),
            not_before_ms: 700_000,
            not_after_ms: 1_012_000,
            identity: "x".into(),
        };
        assert!(
            issued.renew_at_ms() < 1_000_000,
            "already due by the validity alone"
        );
        assert_eq!(renew_at_ms(&issued, 1_000_000), 1_008_000);
        // A day's certificate received five minutes into its validity: 100 s after two
        // thirds of the validity (57,600,000), still long before it ends.
        let day = IssuedCertificate {
            not_before_ms: 0,
            not_after_ms: 86_400_000,
            ..issued
        };
        assert_eq!(renew_at_ms(&day, 300_000), 57_700_000);
    }

    fn numbers(rows: i64) -> RecordBatch {
        use arrow::array::Int64Array;
        use arrow::datatypes::{DataType, Field, Schema};
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)])),
            vec![Arc::new(Int64Array::from_iter_values(0..rows))],
        )
        .unwrap()
    }

    fn sequences(keyed: &[Keyed]) -> Vec<u64> {
        keyed
            .iter()
            .flat_map(|k| k.parts.iter().map(|(key, _)| key.sequence))
            .collect()
    }

    #[test]
    fn a_batch_sent_again_keeps_its_key_and_new_batches_get_new_ones() {
        let mut link = IngestLink::new("http://127.0.0.1:1".into(), Credentials::Insecure);
        let (a, b, c) = (numbers(3), numbers(4), numbers(5));
        let first = link.keyed(Table::Events, vec![a.clone(), numbers(0), b.clone()]);
        assert_eq!(
            sequences(&first),
            vec![1, 2],
            "no key for a batch without rows"
        );
        assert!(
            first
                .iter()
                .all(|k| k.parts[0].0.producer == link.producer())
        );

        // Neither was acknowledged: the same batches (clones) go again with the same keys,
        // then a new one.
        link.unacknowledged = first;
        let again = link.keyed(Table::Events, vec![a.clone(), b.clone(), c.clone()]);
        assert_eq!(sequences(&again), vec![1, 2, 3]);

        // Equal rows are not the same batch: a new batch with a's rows gets a new key.
        link.unacknowledged = again.clone();
        let lookalike = numbers(3);
        assert_eq!(lookalike, a);
        assert_eq!(
            sequences(&link.keyed(Table::Events, vec![lookalike])),
            vec![4]
        );
        // ...and the batches that were not written again are forgotten.
        assert!(link.unacknowledged.is_empty());

        // Keys must rise in the order sent: b before a would send 2 after 3 (the appliance
        // would take a for a resend), so a gets a new key; so does anything after a new key.
        link.unacknowledged = again.clone();
        assert_eq!(
            sequences(&link.keyed(Table::Events, vec![b.clone(), a.clone()])),
            vec![2, 5]
        );
        link.unacknowledged = again;
        assert_eq!(
            sequences(&link.keyed(Table::Events, vec![numbers(1), c.clone()])),
            vec![6, 7]
        );
        // The same batch for another table is another batch.
        link.unacknowledged = link.keyed(Table::Events, vec![c.clone()]);
        assert_eq!(sequences(&link.keyed(Table::Pods, vec![c])), vec![9]);
    }

    #[tokio::test]
    async fn batches_not_delivered_keep_their_keys_for_the_next_write() {
        // Nothing listens: the write fails before any batch is acknowledged.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut link = IngestLink::new(format!("http://127.0.0.1:{port}"), Credentials::Insecure);
        let batch = numbers(10);
        let err = link
            .write(Table::Events, vec![batch.clone()])
            .await
            .unwrap_err();
        assert!(matches!(err, LinkError::Connect(_)), "{err}");
        assert_eq!(sequences(&link.unacknowledged), vec![1]);
        let err = link.write(Table::Events, vec![batch]).await.unwrap_err();
        assert!(matches!(err, LinkError::Connect(_)), "{err}");
        assert_eq!(sequences(&link.unacknowledged), vec![1]);
    }

    #[tokio::test]
    async fn a_link_without_a_certificate_fails_before_connecting() {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "t").unwrap();
        let mut link = IngestLink::new(
            "https://127.0.0.1:1".into(),
            unreachable_bootstrap(token_file),
        );
        let err = link.connect().await.unwrap_err();
        assert!(matches!(err, LinkError::Certificate(_)), "{err}");
        assert_eq!(link.tls().failures(), 1);
    }
}
