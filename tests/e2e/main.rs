//! End-to-end tests against real parts: the real `tally` binary and sockets, mutual TLS with
//! real certificates, kill -9, a real full (tmpfs) disk, DuckDB and pyarrow reading exports.

mod agents;
mod collector;
mod demo;
mod disk;
mod durability;
mod export;
mod helm;
mod hostile;
mod idempotent;
mod ingest;
mod netmon;
mod operator;
mod operator_apply;
mod operator_drain;
mod operator_stream;
mod operator_webhook;
mod prices;
mod sql_api;
mod tls;
mod ui;

/// A small deterministic random number generator (SplitMix64), so a failing run repeats.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.next_u64() % (high - low)
    }
}

/// Rows per `pod` of the `events` table, as the SQL API answers them.
pub async fn rows_per_pod(http_url: &str) -> std::collections::BTreeMap<String, u64> {
    let answer = tally_e2e::sql(
        http_url,
        "SELECT pod, count(*) AS n FROM events GROUP BY pod",
    )
    .await
    .expect("count query");
    answer["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|row| {
            (
                row[0].as_str().expect("pod").to_string(),
                row[1].as_u64().expect("count"),
            )
        })
        .collect()
}
