use serde::{Deserialize, Serialize};

/// What the appliance answers for every batch it has made durable, carried as JSON in
/// the `app_metadata` of a Flight `PutResult`. A batch is acknowledged only once its rows are
/// in the write-ahead log on disk (fsync), so an acknowledged row survives a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestAck {
    /// Rows of the acknowledged batch.
    pub rows: u64,
    /// The write-ahead-log sequence number the batch was stored under.
    pub sequence: u64,
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
        };
        assert_eq!(IngestAck::from_bytes(&ack.to_bytes()).unwrap(), ack);
        assert_eq!(
            String::from_utf8(ack.to_bytes()).unwrap(),
            r#"{"rows":12,"sequence":7}"#
        );
    }
}
