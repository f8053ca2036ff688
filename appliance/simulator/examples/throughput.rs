//! How fast the simulator generates rows, on one core.
//!
//! ```text
//! cargo run --release -p tally-simulator --example throughput
//! ```

use std::time::Instant;

use tally_simulator::{Cluster, SimConfig};
use tally_wire::Table;

/// 2026-03-02T00:00:00Z.
const FROM: i64 = 1_772_409_600_000;
const STEP: i64 = 30_000;
const ROWS: usize = 10_000_000;

fn run(label: &str, config: SimConfig) {
    let built = Instant::now();
    let cluster = Cluster::new(config);
    let build_time = built.elapsed();
    let ticks = (ROWS / cluster.container_count()) as i64 + 1;
    let started = Instant::now();
    let (mut usage, mut other) = (0usize, 0usize);
    for (table, batch) in cluster.samples(FROM, FROM + ticks * STEP, STEP, 65_536) {
        if table == Table::ContainerUsage {
            usage += batch.num_rows();
        } else {
            other += batch.num_rows();
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{label}: {} containers (built in {:.0} ms), {ticks} samples at 30 s: \
         {usage} container_usage rows + {other} other rows in {secs:.2} s = \
         {:.2} M container_usage rows/s ({:.2} M rows/s in all)",
        cluster.container_count(),
        build_time.as_secs_f64() * 1e3,
        usage as f64 / secs / 1e6,
        (usage + other) as f64 / secs / 1e6,
    );
}

fn main() {
    run(
        "container and node usage only",
        SimConfig {
            flows_per_pod: 0.0,
            ..SimConfig::benchmark(30_000)
        },
    );
    run("every table", SimConfig::benchmark(30_000));
}
