//! `tally demo`: the appliance on localhost, fed by a simulated cluster through the real
//! ingest path (Arrow Flight on loopback), never straight into the store.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use indicatif::{ProgressBar, ProgressStyle};
use tally_simulator::{Cluster, SimConfig};
use tally_wire::{IngestClient, Table};

use crate::cli::DemoArgs;
use crate::{Appliance, local_options, shutdown_signal};

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot create the demo's data directory: {0}")]
    DataDir(std::io::Error),
    #[error(transparent)]
    Appliance(#[from] crate::ApplianceError),
    #[error("the simulated agents cannot reach the appliance: {0}")]
    Client(#[from] tally_wire::ClientError),
    #[error("the appliance refused simulated data: {0}")]
    Write(#[from] tally_wire::WriteError),
    #[error("cannot publish the backfilled history: {0}")]
    Flush(tally_store::StoreError),
    #[error(transparent)]
    Analysis(#[from] tally_analysis::AnalysisError),
}

/// Sends batches in `DoPut` calls of up to 32 batches per table.
pub async fn send(
    client: &mut IngestClient,
    batches: impl IntoIterator<Item = (Table, RecordBatch)>,
) -> Result<u64, DemoError> {
    let mut by_table: BTreeMap<Table, Vec<RecordBatch>> = BTreeMap::new();
    let mut rows = 0;
    for (table, batch) in batches {
        rows += batch.num_rows() as u64;
        let pending = by_table.entry(table).or_default();
        pending.push(batch);
        if pending.len() >= 32 {
            client.write(table, std::mem::take(pending)).await?;
        }
    }
    for (table, pending) in by_table {
        if !pending.is_empty() {
            client.write(table, pending).await?;
        }
    }
    Ok(rows)
}

pub async fn run(args: DemoArgs) -> Result<(), DemoError> {
    let (data_dir, _temporary) = match &args.data_dir {
        Some(dir) => (dir.clone(), None),
        None => {
            let dir = tempfile_dir().map_err(DemoError::DataDir)?;
            (dir.clone(), Some(RemoveOnDrop(dir)))
        }
    };
    let mut options = local_options(&data_dir);
    options.http_listen = args.http_listen;
    options.flight_listen = args.flight_listen;
    // From here on SIGINT/SIGTERM stop the demo cleanly (flushing what was acknowledged),
    // also in the middle of the backfill.
    let stop = shutdown_signal();
    tokio::pin!(stop);
    let appliance = Appliance::start(options).await?;
    println!("Tally demo: UI and SQL API at {}", appliance.http_url());
    if let Some(path) = appliance.ui.auth.one_time_path() {
        println!(
            "  sign in to the UI (this link works once): {}{path}",
            appliance.http_url()
        );
    }
    println!(
        "  data in {} (insecure Flight ingest on {})",
        data_dir.display(),
        appliance.flight_url()
    );
    println!(
        "  try: tally sql --url {} \"SELECT namespace, count(*) FROM container_usage GROUP BY 1 ORDER BY 2 DESC\"",
        appliance.http_url()
    );

    let config = SimConfig {
        seed: args.seed,
        nodes: args.nodes,
        workloads: args.workloads,
        ..SimConfig::demo()
    };
    let cluster = Cluster::new(config);
    let mut client = IngestClient::connect(&appliance.flight_url(), None).await?;
    let step_ms = args.history_step.as_millis().max(1) as i64;
    let now_ms = chrono::Utc::now().timestamp_millis();
    let end_ms = now_ms - now_ms.rem_euclid(step_ms);
    let backfill = backfill(&appliance, &cluster, &mut client, &args, end_ms);
    tokio::select! {
        done = backfill => done?,
        _ = &mut stop => {
            println!("  stopping: flushing buffered rows");
            appliance.shutdown().await?;
            return Ok(());
        }
    }

    if args.exit_after_backfill {
        appliance.shutdown().await?;
        return Ok(());
    }
    if args.no_live {
        println!("  not streaming live (--no-live); press Ctrl-C to stop");
        stop.await;
        appliance.shutdown().await?;
        return Ok(());
    }
    println!(
        "  streaming live every {:?}; press Ctrl-C to stop",
        args.live_step
    );
    let live_ms = args.live_step.as_millis().max(1) as i64;
    let mut last = end_ms;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(Duration::from_millis(live_ms as u64)) => {}
        }
        let now = chrono::Utc::now().timestamp_millis();
        let to = now - now.rem_euclid(live_ms);
        if to > last {
            let batches: Vec<_> = cluster.samples(last, to, live_ms, 65_536).collect();
            send(&mut client, batches).await?;
            last = to;
        }
    }
    println!("  stopping: flushing buffered rows");
    appliance.shutdown().await?;
    Ok(())
}

fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("tally-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Backfills `args.days` of history up to `end_ms` through the ingest path (with a progress
/// bar), publishes it, and runs the analyses over it.
async fn backfill(
    appliance: &Appliance,
    cluster: &Cluster,
    client: &mut IngestClient,
    args: &DemoArgs,
    end_ms: i64,
) -> Result<(), DemoError> {
    let step_ms = args.history_step.as_millis().max(1) as i64;

    let start_ms = end_ms - i64::from(args.days) * 86_400_000;
    send(client, cluster.snapshot_batches(start_ms)).await?;

    let hours = (end_ms - start_ms) / 3_600_000;
    let progress = ProgressBar::new(hours as u64).with_style(
        ProgressStyle::with_template("  backfilling {bar:40} {pos}/{len} hours of history, {msg}")
            .expect("template"),
    );
    let started = Instant::now();
    let mut rows = 0u64;
    let mut from = start_ms;
    while from < end_ms {
        let to = (from + 6 * 3_600_000).min(end_ms);
        let batches: Vec<_> = cluster.samples(from, to, step_ms, 65_536).collect();
        rows += send(client, batches).await?;
        progress.set_position(((to - start_ms) / 3_600_000) as u64);
        progress.set_message(format!(
            "{rows} rows, {:.0} rows/s",
            rows as f64 / started.elapsed().as_secs_f64().max(1e-3)
        ));
        from = to;
    }
    progress.finish();
    send(client, cluster.snapshot_batches(end_ms)).await?;
    println!(
        "  loaded {} day{} of history for {} containers: {rows} rows in {:.1} s",
        args.days,
        if args.days == 1 { "" } else { "s" },
        cluster.container_count(),
        started.elapsed().as_secs_f64()
    );
    // Publish the history as Parquet with its hourly rollups now, so the analysis and the
    // UI's charts (which read rollups) see all of it at once rather than after the next
    // periodic flush.
    appliance.store.flush().await.map_err(DemoError::Flush)?;
    // Recommendations for the history just loaded, so the UI has them at once.
    appliance.analyzer.seed_catalog().await?;
    let analysed = chrono::DateTime::from_timestamp_millis(end_ms).unwrap_or_else(chrono::Utc::now);
    let summary = appliance.analyzer.run(analysed).await?;
    println!(
        "  analysed in {:.1} s: {} recommendations, {} node(s) can go, savings per month: {}",
        summary.seconds,
        summary.recommendations.values().sum::<usize>(),
        summary.nodes_removable,
        summary
            .savings_monthly_usd
            .iter()
            .map(|(kind, usd)| format!("{kind} ${usd:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}
