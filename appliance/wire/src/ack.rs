use serde::{Deserialize, Serialize};

/// What the appliance answers for every batch it has made durable, carried as JSON in
/// the `app_metadata` of a Flight `PutResult`. A batch is acknowledged only once its rows are
/// in the write-ahead log on disk (fsync), so an acknowledged row survives a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestAck {
    /// Rows of the acknowledged batch.
    pub rows: u64,
    /// The write-ahead-log sequence number the batch was stored under (0 for a duplicate:
    /// it was stored earlier, under a number the appliance no longer needs to know).
    pub sequence: u64,
    /// The batch carried a [`BatchKey`](crate::BatchKey) the appliance had already made
    /// durable: it is acknowledged again and its rows were not stored a second time. Absent
    /// (false) otherwise, so acknowledgements read the same for agents that predate it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

impl IngestAck {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("IngestAck serialises")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_round_trips_as_json() {
        let ack = IngestAck {
            rows: 12,
            sequence: 7,
            duplicate: false,
        };
        assert_eq!(IngestAck::from_bytes(&ack.to_bytes()).unwrap(), ack);
        assert_eq!(
            String::from_utf8(ack.to_bytes()).unwrap(),
            r#"{"rows":12,"sequence":7}"#
        );
    }

    #[test]
    fn a_duplicate_says_so_and_older_readers_still_parse_it() {
        let ack = IngestAck {
            rows: 12,
            sequence: 0,
            duplicate: true,
        };
        let json = String::from_utf8(ack.to_bytes()).unwrap();
        assert_eq!(json, r#"{"rows":12,"sequence":0,"duplicate":true}"#);
        assert_eq!(IngestAck::from_bytes(json.as_bytes()).unwrap(), ack);

        // What an agent built before the field existed reads from it.
        #[derive(Deserialize)]
        struct OldAck {
            rows: u64,
            sequence: u64,
        }
        let old: OldAck = serde_json::from_str(&json).unwrap();
        assert_eq!((old.rows, old.sequence), (12, 0));
    }
}
