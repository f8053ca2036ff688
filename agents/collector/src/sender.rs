//! Delivery to the appliance: a bounded in-memory outbox and the task that drains it.
//!
//! Every batch the collector makes goes into the outbox first. The sender writes the oldest
//! batch with Flight `DoPut` and removes it only once the appliance acknowledged it (it is
//! then durable in the appliance's WAL), so while the appliance is unreachable batches wait
//! and are all delivered, in order, when it returns. The outbox holds at most
//! `--buffer-bytes`; beyond that the oldest batches are dropped and their rows counted
//! (`tally_collector_rows_dropped_total`). A batch whose acknowledgement was lost is sent
//! again: delivery is at least once.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::RecordBatch;
use tally_wire::Table;
use tally_wire::link::{IngestLink, LinkError};
use tokio::sync::{Notify, watch};

use crate::health::Metrics;

struct Pending {
    seq: u64,
    table: Table,
    batch: RecordBatch,
    bytes: usize,
}

#[derive(Default)]
struct Queue {
    batches: VecDeque<Pending>,
    bytes: usize,
    next_seq: u64,
}

/// The bounded queue between the collector and the appliance.
pub struct Outbox {
    queue: Mutex<Queue>,
    notify: Notify,
    bound_bytes: usize,
    metrics: Arc<Metrics>,
}

impl Outbox {
    /// An outbox that holds at most `bound_bytes` of batches.
    pub fn new(bound_bytes: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            queue: Mutex::new(Queue::default()),
            notify: Notify::new(),
            bound_bytes,
            metrics,
        }
    }

    /// Queues a batch, dropping the oldest ones if the bound would be exceeded.
    pub fn push(&self, table: Table, batch: RecordBatch) {
        if batch.num_rows() == 0 {
            return;
        }
        let bytes = batch.get_array_memory_size();
        let mut queue = self.queue.lock().unwrap();
        while queue.bytes + bytes > self.bound_bytes {
            let Some(oldest) = queue.batches.pop_front() else {
                break;
            };
            queue.bytes -= oldest.bytes;
            self.dropped(oldest.batch.num_rows());
        }
        if bytes > self.bound_bytes {
            // A single batch larger than the whole buffer cannot be kept.
            self.dropped(batch.num_rows());
        } else {
            let seq = queue.next_seq;
            queue.next_seq += 1;
            queue.bytes += bytes;
            queue.batches.push_back(Pending {
                seq,
                table,
                batch,
                bytes,
            });
        }
        self.gauges(&queue);
        drop(queue);
        self.notify.notify_one();
    }

    fn dropped(&self, rows: usize) {
        self.metrics
            .rows_dropped
            .fetch_add(rows as u64, Ordering::Relaxed);
        self.metrics.batches_dropped.fetch_add(1, Ordering::Relaxed);
    }

    fn gauges(&self, queue: &Queue) {
        self.metrics
            .buffer_bytes
            .store(queue.bytes as u64, Ordering::Relaxed);
        self.metrics
            .buffer_batches
            .store(queue.batches.len() as u64, Ordering::Relaxed);
    }

    fn front(&self) -> Option<(u64, Table, RecordBatch)> {
        let queue = self.queue.lock().unwrap();
        queue
            .batches
            .front()
            .map(|p| (p.seq, p.table, p.batch.clone()))
    }

    /// Removes the batch `seq` once it was acknowledged (unless it was dropped meanwhile).
    fn acknowledged(&self, seq: u64) {
        let mut queue = self.queue.lock().unwrap();
        if queue.batches.front().is_some_and(|p| p.seq == seq) {
            let done = queue.batches.pop_front().expect("front");
            queue.bytes -= done.bytes;
        }
        self.gauges(&queue);
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queue.lock().unwrap().batches.is_empty()
    }

    /// Bytes waiting.
    pub fn bytes(&self) -> usize {
        self.queue.lock().unwrap().bytes
    }
}

pub use tally_wire::agent::Credentials;

/// Drains the outbox into the appliance at `appliance_url` until `stop` turns true and the
/// outbox is empty (the caller bounds how long that may take). The client certificate is
/// renewed by [`IngestLink`] (at 2/3 of its life, see `tally_wire::link`).
pub async fn deliver(
    outbox: Arc<Outbox>,
    appliance_url: String,
    credentials: Credentials,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut link = IngestLink::new(appliance_url, credentials);
    let mut backoff = Duration::from_millis(200);
    let pause = |backoff: &mut Duration| {
        let wait = *backoff;
        *backoff = (*backoff * 2).min(Duration::from_secs(5));
        tokio::time::sleep(wait)
    };
    loop {
        if *stop.borrow() && outbox.is_empty() {
            return;
        }
        // A certificate first (and a new one at 2/3 of its life), then a connection.
        let connected = link.connect().await.map(|_| ());
        certificate_metrics(&link, &metrics);
        match connected {
            Ok(()) => {}
            Err(LinkError::Certificate(error)) => {
                tracing::warn!(%error, "cannot get a client certificate");
                pause(&mut backoff).await;
                continue;
            }
            Err(error) => {
                metrics.send_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "appliance unreachable; batches wait in the buffer");
                pause(&mut backoff).await;
                continue;
            }
        }
        let Some((seq, table, batch)) = outbox.front() else {
            tokio::select! {
                _ = outbox.notify.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.changed() => {}
            }
            continue;
        };
        let rows = batch.num_rows();
        match link.write(table, vec![batch]).await {
            Ok(_) => {
                outbox.acknowledged(seq);
                metrics.sent(table.name(), rows);
                backoff = Duration::from_millis(200);
            }
            Err(error) => {
                certificate_metrics(&link, &metrics);
                metrics.send_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, %table, "write failed; retrying");
                pause(&mut backoff).await;
            }
        }
    }
}

/// The bootstrap's failures and the current certificate's expiry, as metrics.
fn certificate_metrics(link: &IngestLink, metrics: &Metrics) {
    metrics
        .bootstrap_errors
        .store(link.tls().failures(), Ordering::Relaxed);
    if let Some(certificate) = link.tls().certificate() {
        metrics
            .certificate_expiry_ms
            .store(certificate.not_after_ms, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};

    fn batch(rows: usize) -> RecordBatch {
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)])),
            vec![Arc::new(Int64Array::from_iter_values(0..rows as i64))],
        )
        .unwrap()
    }

    #[test]
    fn beyond_the_bound_the_oldest_batches_are_dropped_and_counted() {
        let metrics = Arc::new(Metrics::default());
        let one = batch(100).get_array_memory_size();
        let outbox = Outbox::new(one * 3, metrics.clone());
        for _ in 0..5 {
            outbox.push(Table::Events, batch(100));
        }
        assert_eq!(outbox.bytes(), one * 3);
        assert_eq!(metrics.rows_dropped.load(Ordering::Relaxed), 200);
        assert_eq!(metrics.buffer_batches.load(Ordering::Relaxed), 3);
        // The survivors are the newest three, oldest first.
        let (seq, _, _) = outbox.front().unwrap();
        assert_eq!(seq, 2);
        outbox.acknowledged(seq);
        assert_eq!(outbox.front().unwrap().0, 3);
        // Acknowledging a batch that was dropped meanwhile removes nothing else.
        outbox.acknowledged(0);
        assert_eq!(outbox.front().unwrap().0, 3);
    }

    #[test]
    fn a_batch_larger_than_the_whole_buffer_is_dropped_not_kept() {
        let metrics = Arc::new(Metrics::default());
        let outbox = Outbox::new(16, metrics.clone());
        outbox.push(Table::Events, batch(1000));
        assert!(outbox.is_empty());
        assert_eq!(metrics.rows_dropped.load(Ordering::Relaxed), 1000);
    }
}
