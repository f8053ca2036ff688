//! Nothing counted twice (issue 9): a batch whose acknowledgement was lost is sent again with
//! the key it was first sent with, and the real `tally serve` acknowledges it again
//! (`duplicate: true`) without storing its rows a second time, whether the key is still in
//! the write-ahead log after a kill -9 or only in the manifest after a flush to Parquet; and
//! agents streaming through an appliance that is killed again and again end with every batch
//! stored exactly once.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::RecordBatch;
use tally_e2e::{Server, events, sql_rows};
use tally_wire::agent::Credentials;
use tally_wire::link::IngestLink;
use tally_wire::{BatchKey, IngestAck, IngestClient, ProducerId, Table, split_for_flight};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{Rng, rows_per_pod};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A day ago, on the hour: inside every retention.
fn base_ms() -> i64 {
    (now_ms() - 86_400_000) / 3_600_000 * 3_600_000
}

async fn write_keyed(url: &str, key: BatchKey, batch: RecordBatch) -> IngestAck {
    let mut client = IngestClient::connect(url, None).await.unwrap();
    let acks = client
        .write_keyed(Table::Events, vec![(key, batch)])
        .await
        .unwrap();
    assert_eq!(acks.len(), 1, "{acks:?}");
    acks[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_resent_after_kill_minus_nine_is_acknowledged_and_not_stored_again() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // No flush while the test runs: the key can only come back from the write-ahead log.
    let args = ["--insecure", "--flush-interval", "1h"];
    let server = Server::start(&data, &args).unwrap();
    let key = BatchKey {
        producer: ProducerId::random(),
        sequence: 1,
    };
    let batch = events("resent-from-wal", base_ms(), 50);
    let first = write_keyed(&server.flight_url, key, batch.clone()).await;
    assert!(
        !first.duplicate && first.rows == 50 && first.sequence > 0,
        "{first:?}"
    );
    server.kill9();

    // The acknowledgement was "lost": the agent sends the same batch with the same key.
    let server = Server::start(&data, &args).unwrap();
    let again = write_keyed(&server.flight_url, key, batch.clone()).await;
    assert_eq!(
        again,
        IngestAck {
            rows: 50,
            sequence: 0,
            duplicate: true
        }
    );
    assert_eq!(
        rows_per_pod(&server.http_url).await,
        BTreeMap::from([("resent-from-wal".to_string(), 50)])
    );
    let metrics = tally_e2e::prometheus_metrics(&server.http_url).await;
    assert_eq!(metrics["tally_ingest_duplicate_batches_total"], 1.0);
    assert_eq!(metrics["tally_ingest_duplicate_rows_total"], 50.0);
    assert_eq!(metrics["tally_ingest_producers"], 1.0);
    // The producer's next batch is stored.
    let next = BatchKey { sequence: 2, ..key };
    let stored = write_keyed(&server.flight_url, next, events("next", base_ms(), 7)).await;
    assert!(!stored.duplicate, "{stored:?}");
    // The same rows from a client that sends no key are stored again (no deduplication).
    let mut plain = IngestClient::connect(&server.flight_url, None)
        .await
        .unwrap();
    plain.write(Table::Events, vec![batch]).await.unwrap();
    assert_eq!(
        rows_per_pod(&server.http_url).await,
        BTreeMap::from([
            ("resent-from-wal".to_string(), 100),
            ("next".to_string(), 7)
        ])
    );
    assert_eq!(server.terminate().code(), Some(0));
}

/// Whether any write-ahead-log segment under `data` holds the producer id's bytes.
fn wal_mentions(data: &std::path::Path, producer: ProducerId) -> bool {
    let needle = producer.0.to_le_bytes();
    std::fs::read_dir(data.join("wal"))
        .unwrap()
        .flatten()
        .any(|entry| {
            let bytes = std::fs::read(entry.path()).unwrap_or_default();
            bytes.windows(needle.len()).any(|w| w == needle)
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_resent_after_a_flush_and_kill_minus_nine_is_recognised_from_the_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = ["--insecure", "--flush-interval", "100ms"];
    let server = Server::start(&data, &args).unwrap();
    let key = BatchKey {
        producer: ProducerId::random(),
        sequence: 41,
    };
    let batch = events("resent-from-manifest", base_ms(), 30);
    assert!(
        !write_keyed(&server.flight_url, key, batch.clone())
            .await
            .duplicate
    );
    // Wait until a flush put the batch in Parquet, the key in the manifest, and deleted the
    // WAL segment that held both.
    let mut waited = 0;
    loop {
        let manifest = std::fs::read_to_string(data.join("manifest.json")).unwrap_or_default();
        if manifest.contains(&key.producer.to_string()) && !wal_mentions(&data, key.producer) {
            break;
        }
        waited += 1;
        assert!(waited < 600, "no flush published the key within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.kill9();

    let server = Server::start(&data, &args).unwrap();
    assert!(!wal_mentions(&data, key.producer));
    let again = write_keyed(&server.flight_url, key, batch.clone()).await;
    assert!(again.duplicate && again.rows == 30, "{again:?}");
    // An older key of the same producer is a resend too; a newer one is a new batch.
    let older = BatchKey {
        sequence: 40,
        ..key
    };
    assert!(
        write_keyed(&server.flight_url, older, batch.clone())
            .await
            .duplicate
    );
    let newer = BatchKey {
        sequence: 42,
        ..key
    };
    assert!(
        !write_keyed(&server.flight_url, newer, events("newer", base_ms(), 3))
            .await
            .duplicate
    );
    assert_eq!(
        rows_per_pod(&server.http_url).await,
        BTreeMap::from([
            ("newer".to_string(), 3),
            ("resent-from-manifest".to_string(), 30)
        ])
    );
    assert_eq!(server.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_batch_goes_in_parts_each_with_its_key_and_a_resend_stores_none_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--insecure"]).unwrap();
    // About 6 MiB of Arrow buffers: more than one Flight message.
    let batch = events("large", base_ms(), 60_000);
    let parts = split_for_flight(&batch);
    assert!(parts.len() > 1, "{} parts", parts.len());
    let producer = ProducerId::random();
    let keyed: Vec<_> = parts
        .into_iter()
        .enumerate()
        .map(|(i, part)| {
            let key = BatchKey {
                producer,
                sequence: i as u64 + 1,
            };
            (key, part)
        })
        .collect();
    let mut client = IngestClient::connect(&server.flight_url, None)
        .await
        .unwrap();
    let first = client
        .write_keyed(Table::Events, keyed.clone())
        .await
        .unwrap();
    assert_eq!(first.len(), keyed.len(), "one acknowledgement per part");
    assert!(first.iter().all(|a| !a.duplicate));
    assert_eq!(first.iter().map(|a| a.rows).sum::<u64>(), 60_000);
    let again = client
        .write_keyed(Table::Events, keyed.clone())
        .await
        .unwrap();
    assert_eq!(again.len(), keyed.len());
    assert!(again.iter().all(|a| a.duplicate), "{again:?}");
    assert_eq!(
        rows_per_pod(&server.http_url).await,
        BTreeMap::from([("large".to_string(), 60_000)])
    );
    assert_eq!(server.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_metadata_that_is_not_a_batch_key_is_refused_and_nothing_is_stored() {
    use arrow_flight::FlightDescriptor;
    use arrow_flight::flight_service_client::FlightServiceClient;
    use futures::StreamExt;

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--insecure"]).unwrap();
    let channel = tonic::transport::Endpoint::from_shared(server.flight_url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw = FlightServiceClient::new(channel);
    for metadata in [
        &b"not json"[..],
        br#"{"producer":"abc","sequence":1}"#,
        br#"{"sequence":1}"#,
    ] {
        let data = arrow_flight::encode::FlightDataEncoderBuilder::new()
            .with_flight_descriptor(Some(FlightDescriptor::new_path(vec!["events".into()])))
            .build(futures::stream::iter(vec![Ok(events(
                "labelled",
                base_ms(),
                5,
            ))]))
            .map(move |r| {
                let mut data = r.unwrap();
                if !data.data_body.is_empty() {
                    data.app_metadata = metadata.to_vec().into();
                }
                data
            });
        let status = match raw.do_put(data).await {
            Err(status) => status,
            Ok(response) => response
                .into_inner()
                .next()
                .await
                .unwrap()
                .expect_err("refused"),
        };
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
        assert!(status.message().contains("batch key"), "{status}");
    }
    // Nothing of them was stored, and keyed and plain writes still work.
    let key = BatchKey {
        producer: ProducerId::random(),
        sequence: 1,
    };
    assert!(
        !write_keyed(&server.flight_url, key, events("keyed", base_ms(), 2))
            .await
            .duplicate
    );
    assert_eq!(
        rows_per_pod(&server.http_url).await,
        BTreeMap::from([("keyed".to_string(), 2)])
    );
    assert_eq!(server.terminate().code(), Some(0));
}

/// A TCP proxy on a fixed loopback port in front of whichever appliance runs now, as a
/// Kubernetes Service is in front of the appliance's pod; it can also lose every answer from
/// the appliance (`hold`), as a connection that breaks after the request went through does.
struct Proxy {
    url: String,
    target: Arc<Mutex<String>>,
    hold: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start() -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let target = Arc::new(Mutex::new(String::new()));
        let hold = Arc::new(AtomicBool::new(false));
        let task = {
            let target = target.clone();
            let hold = hold.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let upstream = target.lock().unwrap().clone();
                    let hold = hold.clone();
                    tokio::spawn(async move {
                        let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                            return; // Nothing there: the client sees the connection close.
                        };
                        // gRPC writes small frames: without this, Nagle's algorithm and
                        // delayed ACKs hold each one back ~40 ms.
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        let (mut client_read, mut client_write) = client.into_split();
                        let (mut server_read, mut server_write) = server.into_split();
                        let requests = tokio::io::copy(&mut client_read, &mut server_write);
                        let answers = async {
                            let mut buffer = vec![0u8; 64 * 1024];
                            loop {
                                let n = match server_read.read(&mut buffer).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => n,
                                };
                                if hold.load(Ordering::SeqCst) {
                                    continue; // Lost on the way back.
                                }
                                if client_write.write_all(&buffer[..n]).await.is_err() {
                                    return;
                                }
                            }
                        };
                        // Either side gone: both sockets close.
                        tokio::select! {
                            _ = requests => {}
                            _ = answers => {}
                        }
                    });
                }
            })
        };
        Proxy {
            url,
            target,
            hold,
            task,
        }
    }

    fn point_at(&self, flight_url: &str) {
        *self.target.lock().unwrap() = flight_url
            .strip_prefix("http://")
            .expect("an insecure Flight URL")
            .to_string();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What an agent made and saw.
#[derive(Debug, Default)]
struct Delivered {
    /// Batches made, with their rows.
    made: BTreeMap<String, u64>,
    /// Batches acknowledged, with their rows.
    acknowledged: BTreeMap<String, u64>,
    /// Acknowledgements that said `duplicate`: the batch had been stored before its first
    /// acknowledgement was lost.
    duplicates: u64,
    failed_writes: u64,
}

/// Makes batches until `stop`, and streams them through one link as the collector does: the
/// oldest batch is written and removed only once acknowledged; after a failure it is written
/// again (the same batch, so the link sends the same key). Returns once everything it made
/// is acknowledged.
async fn agent(url: String, number: usize, stop: Arc<AtomicBool>) -> Delivered {
    let mut link = IngestLink::new(url, Credentials::Insecure);
    let mut rng = Rng::new(0x1de9 + number as u64);
    let base = base_ms() + number as i64 * 1_000_000_000;
    let mut outbox: VecDeque<(String, RecordBatch)> = VecDeque::new();
    let mut delivered = Delivered::default();
    loop {
        if outbox.is_empty() {
            if stop.load(Ordering::SeqCst) {
                return delivered;
            }
            let n = delivered.made.len();
            let id = format!("a{number}-b{n:06}");
            let rows = rng.range(1, 200) as usize;
            delivered.made.insert(id.clone(), rows as u64);
            outbox.push_back((id.clone(), events(&id, base + n as i64 * 1_000, rows)));
        }
        let (id, batch) = outbox.front().cloned().expect("a batch");
        let rows = batch.num_rows() as u64;
        match link.write(Table::Events, vec![batch]).await {
            Ok(acks) => {
                assert_eq!(acks.iter().map(|a| a.rows).sum::<u64>(), rows, "{acks:?}");
                delivered.duplicates += acks.iter().filter(|a| a.duplicate).count() as u64;
                delivered.acknowledged.insert(id, rows);
                outbox.pop_front();
            }
            Err(_) => {
                delivered.failed_writes += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

const KILLS: usize = 12;
const AGENTS: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agents_streaming_through_kills_and_lost_acknowledgements_store_every_batch_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Flush constantly, so that keys move from the WAL to the manifest while agents resend.
    let args = [
        "--insecure",
        "--flush-interval",
        "100ms",
        "--flush-rows",
        "2000",
        "--maintenance-interval",
        "250ms",
    ];
    let mut rng = Rng::new(0x1de9);
    let proxy = Proxy::start().await;
    let stop = Arc::new(AtomicBool::new(false));
    let agents: Vec<_> = (0..AGENTS)
        .map(|a| tokio::spawn(agent(proxy.url.clone(), a, stop.clone())))
        .collect();

    for round in 0..KILLS {
        let server = Server::start(&data, &args).unwrap_or_else(|e| panic!("round {round}: {e}"));
        proxy.hold.store(false, Ordering::SeqCst);
        proxy.point_at(&server.flight_url);
        tokio::time::sleep(Duration::from_millis(rng.range(200, 700))).await;
        // From here the appliance's answers are lost: what it makes durable now is
        // acknowledged to nobody, and the agents send it again after the kill.
        proxy.hold.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(rng.range(20, 150))).await;
        server.kill9();
    }

    let server = Server::start(&data, &args).unwrap();
    proxy.hold.store(false, Ordering::SeqCst);
    proxy.point_at(&server.flight_url);
    // The agents deliver what they hold and stop.
    stop.store(true, Ordering::SeqCst);
    let mut planned = BTreeMap::new();
    let mut acknowledged = BTreeMap::new();
    let (mut duplicates, mut failed_writes) = (0, 0);
    for agent in agents {
        // A bound, so a stuck agent fails the test instead of hanging it.
        let delivered = tokio::time::timeout(Duration::from_secs(300), agent)
            .await
            .expect("the agents delivered their outboxes within 5 minutes")
            .expect("agent task");
        planned.extend(delivered.made);
        acknowledged.extend(delivered.acknowledged);
        duplicates += delivered.duplicates;
        failed_writes += delivered.failed_writes;
    }
    assert_eq!(acknowledged, planned, "every batch acknowledged in the end");

    // Every batch is there exactly once, with all its rows...
    let present = rows_per_pod(&server.http_url).await;
    let wrong: Vec<_> = planned
        .iter()
        .filter(|(id, rows)| present.get(*id) != Some(rows))
        .map(|(id, rows)| format!("{id}: sent {rows}, stored {:?}", present.get(id)))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} batches stored wrongly, e.g. {:?}",
        wrong.len(),
        planned.len(),
        &wrong[..wrong.len().min(5)]
    );
    assert_eq!(present.len(), planned.len());
    // ...and no row is there twice.
    let twice = sql_rows(
        &server.http_url,
        "SELECT pod, time, count(*) AS n FROM events GROUP BY pod, time HAVING count(*) > 1 LIMIT 5",
    )
    .await;
    assert!(twice.is_empty(), "rows stored twice: {twice:?}");
    let rows: u64 = planned.values().sum();
    let stored = sql_rows(&server.http_url, "SELECT count(*) FROM events").await;
    assert_eq!(stored[0][0].as_u64(), Some(rows));
    // The test saw what it is about: batches made durable whose acknowledgement was lost.
    assert!(
        duplicates > 0,
        "no acknowledgement was lost before a kill: the test did not exercise resends"
    );
    eprintln!(
        "{KILLS} kills with lost acknowledgements: {} batches and {rows} rows from {AGENTS} agents, each stored once; {duplicates} resends acknowledged as duplicates, {failed_writes} failed writes retried",
        planned.len()
    );
    assert_eq!(server.terminate().code(), Some(0));
}
