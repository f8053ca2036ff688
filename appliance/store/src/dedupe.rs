//! The batch keys the store has made durable, so a batch sent again after a lost
//! acknowledgement is acknowledged again without being stored twice (see `tally_wire::key`).
//!
//! Per producer the store keeps the highest sequence number it made durable and when it last
//! saw a batch from it. A key at or below that number is a resend. The keys travel with the
//! data: each keyed WAL record carries its key (so a replay after a crash restores them), and
//! every flush writes the whole table into the manifest before the WAL segments it covers are
//! deleted (so a resend after a flush to Parquet and a restart is still recognised).
//!
//! Memory is bounded: a producer idle for longer than the window (`StoreConfig::dedupe_window`,
//! a day by default) is forgotten, and beyond `StoreConfig::max_producers` the longest idle
//! ones are forgotten first. A resend from a forgotten producer is stored again.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tally_wire::{BatchKey, ProducerId};

/// A key as the WAL and the manifest keep it: with the time (ms since the epoch) the store
/// last saw the producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KeyStamp {
    pub producer: ProducerId,
    pub sequence: u64,
    pub seen_ms: i64,
}

impl KeyStamp {
    pub fn new(key: BatchKey, seen_ms: i64) -> Self {
        Self {
            producer: key.producer,
            sequence: key.sequence,
            seen_ms,
        }
    }

    /// Fixed 32 bytes for the WAL: producer, sequence, time (little endian).
    pub const BYTES: usize = 16 + 8 + 8;

    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.producer.0.to_le_bytes());
        out.extend_from_slice(&self.sequence.to_le_bytes());
        out.extend_from_slice(&self.seen_ms.to_le_bytes());
    }

    pub fn read_from(bytes: &[u8]) -> Option<Self> {
        let bytes = bytes.get(..Self::BYTES)?;
        Some(Self {
            producer: ProducerId(u128::from_le_bytes(bytes[..16].try_into().ok()?)),
            sequence: u64::from_le_bytes(bytes[16..24].try_into().ok()?),
            seen_ms: i64::from_le_bytes(bytes[24..32].try_into().ok()?),
        })
    }
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    sequence: u64,
    seen_ms: i64,
}

/// The producers the store remembers.
#[derive(Debug)]
pub(crate) struct Producers {
    seen: HashMap<ProducerId, Seen>,
    window_ms: i64,
    max: usize,
}

impl Producers {
    pub fn new(window: Duration, max: usize) -> Self {
        Self {
            seen: HashMap::new(),
            window_ms: i64::try_from(window.as_millis()).unwrap_or(i64::MAX),
            max: max.max(1),
        }
    }

    /// Whether the batch with this key was made durable before.
    pub fn is_duplicate(&self, key: &BatchKey) -> bool {
        self.seen
            .get(&key.producer)
            .is_some_and(|s| key.sequence <= s.sequence)
    }

    /// Remembers a durable key (or a resend, which only refreshes when the producer was seen).
    pub fn record(&mut self, stamp: KeyStamp) {
        let seen = self.seen.entry(stamp.producer).or_insert(Seen {
            sequence: stamp.sequence,
            seen_ms: stamp.seen_ms,
        });
        seen.sequence = seen.sequence.max(stamp.sequence);
        seen.seen_ms = seen.seen_ms.max(stamp.seen_ms);
        // Forget in bulk, so a flood of new producers does not sort on every batch.
        if self.seen.len() > self.max + self.max / 16 {
            self.forget_beyond_max();
        }
    }

    /// Forgets producers idle for longer than the window, then the longest idle ones beyond
    /// the maximum. Returns how many were forgotten.
    pub fn expire(&mut self, now_ms: i64) -> usize {
        let before = self.seen.len();
        let cutoff = now_ms.saturating_sub(self.window_ms);
        self.seen.retain(|_, s| s.seen_ms >= cutoff);
        if self.seen.len() > self.max {
            self.forget_beyond_max();
        }
        before - self.seen.len()
    }

    fn forget_beyond_max(&mut self) {
        let mut times: Vec<i64> = self.seen.values().map(|s| s.seen_ms).collect();
        let excess = times.len().saturating_sub(self.max);
        if excess == 0 {
            return;
        }
        // The newest `max` stay (ties at the cut may leave a few more out).
        let (_, &mut cut, _) = times.select_nth_unstable(excess);
        self.seen.retain(|_, s| s.seen_ms >= cut);
        if self.seen.len() > self.max {
            let mut left = self.seen.len() - self.max;
            self.seen.retain(|_, s| {
                if left > 0 && s.seen_ms == cut {
                    left -= 1;
                    false
                } else {
                    true
                }
            });
        }
    }

    /// Every producer remembered, in a stable order (for the manifest).
    pub fn stamps(&self) -> Vec<KeyStamp> {
        let mut out: Vec<KeyStamp> = self
            .seen
            .iter()
            .map(|(producer, s)| KeyStamp {
                producer: *producer,
                sequence: s.sequence,
                seen_ms: s.seen_ms,
            })
            .collect();
        out.sort_by_key(|s| s.producer);
        out
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(producer: u128, sequence: u64) -> BatchKey {
        BatchKey {
            producer: ProducerId(producer),
            sequence,
        }
    }

    #[test]
    fn a_key_at_or_below_the_highest_durable_one_is_a_resend() {
        let mut p = Producers::new(Duration::from_secs(60), 10);
        assert!(!p.is_duplicate(&key(1, 1)));
        p.record(KeyStamp::new(key(1, 1), 0));
        p.record(KeyStamp::new(key(1, 3), 0));
        // A replayed older record does not lower the highest.
        p.record(KeyStamp::new(key(1, 2), 0));
        assert!(p.is_duplicate(&key(1, 1)));
        assert!(p.is_duplicate(&key(1, 3)));
        assert!(!p.is_duplicate(&key(1, 4)));
        // Another producer's numbers are its own.
        assert!(!p.is_duplicate(&key(2, 1)));
    }

    #[test]
    fn idle_producers_are_forgotten_after_the_window_and_the_longest_idle_beyond_the_maximum() {
        let mut p = Producers::new(Duration::from_secs(60), 3);
        p.record(KeyStamp::new(key(1, 5), 1_000));
        p.record(KeyStamp::new(key(2, 5), 30_000));
        // Idle exactly the window: kept; longer: forgotten.
        assert_eq!(p.expire(61_000), 0);
        assert_eq!(p.expire(61_001), 1);
        assert!(!p.is_duplicate(&key(1, 5)), "idle over 60 s: forgotten");
        assert!(p.is_duplicate(&key(2, 5)));

        for producer in 3..=6 {
            p.record(KeyStamp::new(key(producer, 1), 40_000 + producer as i64));
        }
        // Over the maximum (3, and no slack at that size): the longest idle are forgotten.
        assert_eq!(p.len(), 3);
        assert_eq!(p.expire(50_000), 0);
        // The newest three stay: 4, 5 and 6; 2 (seen at 30 s) and 3 go.
        let kept: Vec<u128> = p.stamps().iter().map(|s| s.producer.0).collect();
        assert_eq!(kept, vec![4, 5, 6]);
    }

    #[test]
    fn a_flood_of_producers_stays_bounded() {
        let mut p = Producers::new(Duration::from_secs(86_400), 1_000);
        for i in 0..100_000u128 {
            p.record(KeyStamp::new(key(i, 1), i as i64));
            assert!(p.len() <= 1_000 + 1_000 / 16 + 1);
        }
        // The most recent producer is remembered.
        assert!(p.is_duplicate(&key(99_999, 1)));
    }

    #[test]
    fn stamps_round_trip_through_the_wal_encoding() {
        let stamp = KeyStamp {
            producer: ProducerId(u128::MAX - 7),
            sequence: 1 << 40,
            seen_ms: 1_767_225_600_000,
        };
        let mut bytes = Vec::new();
        stamp.write_to(&mut bytes);
        assert_eq!(bytes.len(), KeyStamp::BYTES);
        assert_eq!(KeyStamp::read_from(&bytes), Some(stamp));
        assert_eq!(KeyStamp::read_from(&bytes[..31]), None);
    }
}
