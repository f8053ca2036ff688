//! The identity a sender gives each batch, so a batch sent twice is stored once.
//!
//! An agent keeps a batch until its [`IngestAck`](crate::IngestAck) arrives. When the appliance
//! made the batch durable but the acknowledgement was lost (the appliance was killed, the
//! connection reset), the agent sends the batch again. With a [`BatchKey`] in the
//! `app_metadata` of the batch's Flight message (JSON, [`BatchKey::to_bytes`]) the appliance
//! recognises the resend: it acknowledges it again (`duplicate: true`) without storing the
//! rows a second time.
//!
//! The contract for a sender:
//! - a [`ProducerId`] is chosen at random once per process (or per link) and never reused;
//! - its sequence numbers increase with every new batch, in the order the batches are sent;
//! - a batch sent again carries the key it was first sent with, and a new batch is never sent
//!   with an old key: the appliance keeps, per producer, the highest sequence it made durable
//!   and takes any key at or below it for a resend;
//! - a key names exactly one record-batch message of the `DoPut` (senders split large batches
//!   themselves and give each part its own sequence number).
//!
//! Writes without a key (any Flight client that sends no `app_metadata`) are stored as before,
//! with no deduplication. The appliance forgets a producer after a day without batches from it
//! (`StoreConfig::dedupe_window`), so a resend is recognised within a day of the producer's
//! last batch.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Who sent a batch: 128 random bits, chosen once per agent process, written as 32 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProducerId(pub u128);

impl ProducerId {
    /// A new random producer id (UUID v4 randomness: 122 random bits).
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4().as_u128())
    }
}

impl fmt::Display for ProducerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for ProducerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProducerId({self})")
    }
}

/// A producer id that is not 32 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("producer id `{0}` is not 32 hexadecimal digits")]
pub struct BadProducerId(pub String);

impl FromStr for ProducerId {
    type Err = BadProducerId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BadProducerId(s.chars().take(64).collect()));
        }
        u128::from_str_radix(s, 16)
            .map(Self)
            .map_err(|_| BadProducerId(s.to_string()))
    }
}

impl Serialize for ProducerId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ProducerId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The identity of one batch: its producer and its place in that producer's sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchKey {
    pub producer: ProducerId,
    pub sequence: u64,
}

impl BatchKey {
    /// The `app_metadata` of the batch's Flight message: `{"producer":"<32 hex>","sequence":N}`.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("BatchKey serialises")
    }

    /// Reads a key from a message's `app_metadata`; `Ok(None)` when there is none (a client
    /// that does not ask for deduplication).
    pub fn from_app_metadata(bytes: &[u8]) -> Result<Option<Self>, serde_json::Error> {
        if bytes.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(bytes).map(Some)
    }
}

/// Hands out the keys of one producer, in order.
#[derive(Debug)]
pub struct KeySource {
    producer: ProducerId,
    next: u64,
}

impl KeySource {
    /// A new random producer whose first sequence number is 1.
    pub fn new() -> Self {
        Self::with_producer(ProducerId::random())
    }

    pub fn with_producer(producer: ProducerId) -> Self {
        Self { producer, next: 1 }
    }

    pub fn producer(&self) -> ProducerId {
        self.producer
    }

    /// The key of the next new batch.
    pub fn next_key(&mut self) -> BatchKey {
        let key = BatchKey {
            producer: self.producer,
            sequence: self.next,
        };
        self.next += 1;
        key
    }
}

impl Default for KeySource {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_as_json_with_the_producer_in_hex() {
        let key = BatchKey {
            producer: ProducerId(0x0123_4567_89ab_cdef_0011_2233_4455_6677),
            sequence: 42,
        };
        let bytes = key.to_bytes();
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap(),
            r#"{"producer":"0123456789abcdef0011223344556677","sequence":42}"#
        );
        assert_eq!(BatchKey::from_app_metadata(&bytes).unwrap(), Some(key));
        assert_eq!(BatchKey::from_app_metadata(b"").unwrap(), None);
    }

    #[test]
    fn malformed_keys_are_refused() {
        for bad in [
            &br#"{"producer":"xyz","sequence":1}"#[..],
            br#"{"producer":"0123456789abcdef0011223344556677"}"#,
            br#"{"producer":"0123456789abcdef0011223344556677","sequence":-1}"#,
            br#"{"producer":"+123456789abcdef0011223344556677","sequence":1}"#,
            br#"{"producer":"0123456789abcdef0011223344556677","sequence":1,"x":0}"#,
            b"not json",
        ] {
            assert!(
                BatchKey::from_app_metadata(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_source_numbers_its_batches_from_one_under_one_random_producer() {
        let mut a = KeySource::new();
        let b = KeySource::new();
        assert_ne!(a.producer(), b.producer());
        let first = a.next_key();
        let second = a.next_key();
        assert_eq!((first.sequence, second.sequence), (1, 2));
        assert_eq!(first.producer, second.producer);
    }
}
