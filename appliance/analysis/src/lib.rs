//! Tally's analyses: rightsizing, replicas and HPAs, node consolidation, instance types and
//! cost allocation, run over the store with the queries in `queries/`.
//!
//! One run ([`Analyzer::run`]) reads the stored history through the read-only SQL engine,
//! runs the SQL analyses (`rightsizing.sql`, then `replicas.sql` over the rightsizing rows it
//! has just written), simulates node consolidation and picks instance types in Rust (where
//! SQL is the wrong tool), and appends everything to the `recommendations` table under one
//! `run_id`, so the history of every recommendation is kept. [`spawn_periodic`] repeats it;
//! [`http::router`] serves it (`/allocation` in OpenCost's shape, `/api/v1/recommendations`,
//! `POST /api/v1/analysis/run`).

pub mod catalog;
pub mod consolidation;
pub mod http;
pub mod instance_types;
mod rows;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int64Type};
use chrono::{DateTime, Utc};
use serde::Serialize;
use tally_queries::{Param, Query, analysis};
use tally_query::{QueryEngine, QueryError};
use tally_store::{Store, StoreError};
use tally_wire::Table;

pub use rows::Recommendation;

/// Hours in an average month (365 × 24 / 12), for monthly figures.
pub const HOURS_PER_MONTH: f64 = 730.0;

const MIB: i64 = 1 << 20;

/// Why an analysis failed.
#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    #[error("analysis query `{query}` failed: {source}")]
    Query {
        query: &'static str,
        #[source]
        source: QueryError,
    },
    #[error("analysis query `{query}`: {why}")]
    Render { query: &'static str, why: String },
    #[error("cannot store the analysis results: {0}")]
    Store(#[from] StoreError),
    #[error("pricing catalog line {line}: {why}")]
    Catalog { line: usize, why: String },
    #[error("line {line}, column {column}: {why}")]
    PriceFile {
        line: usize,
        column: String,
        why: String,
    },
    #[error("analysis query `{query}` answered an unexpected shape: {why}")]
    Shape { query: &'static str, why: String },
}

/// How limits are recommended for CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CpuLimitPolicy {
    /// Keep the current limit/request ratio (and never below the highest usage seen).
    KeepRatio,
    /// Limit = request.
    EqualRequest,
    /// No CPU limit.
    Remove,
}

/// How limits are recommended for memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MemoryLimitPolicy {
    /// Limit = request (no memory overcommit: the safest against OOM kills of neighbours).
    EqualRequest,
    /// Keep the current limit/request ratio.
    KeepRatio,
}

/// Every knob of an analysis run; the defaults follow the VPA recommender and KRR.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnalysisConfig {
    /// How much history rightsizing and replicas learn from.
    pub window: Duration,
    /// The recent past that describes what runs now (nodes, pods) for consolidation.
    pub inventory_window: Duration,
    pub cpu_quantile: f64,
    pub memory_margin: f64,
    pub min_cpu_cores: f64,
    pub min_memory_bytes: i64,
    pub oom_bump_bytes: i64,
    pub oom_bump_factor: f64,
    pub confident_hours: f64,
    pub hold_below_confidence: f64,
    pub cpu_limit_policy: CpuLimitPolicy,
    pub memory_limit_policy: MemoryLimitPolicy,
    /// Spare capacity for replicas and instance types.
    pub headroom: f64,
    /// Target CPU utilisation of a suggested new HPA.
    pub hpa_target: f64,
    pub swing_for_hpa: f64,
    pub default_cpu_core_hour_usd: f64,
    pub default_memory_gib_hour_usd: f64,
    /// Whose network rates price traffic ('aws', 'gcp', 'azure'); empty: the provider whose
    /// catalog holds the nodes' instance types (queries/network_classified.sql).
    pub cloud_provider: String,
    pub consolidation: consolidation::ConsolidationConfig,
}

impl Default for AnalysisConfig {
    fn default() -> Self {
        AnalysisConfig {
            window: Duration::from_secs(14 * 86_400),
            inventory_window: Duration::from_secs(3_600),
            cpu_quantile: 0.95,
            memory_margin: 0.15,
            min_cpu_cores: 0.01,
            min_memory_bytes: 64 * MIB,
            oom_bump_bytes: 100 * MIB,
            oom_bump_factor: 1.2,
            confident_hours: 168.0,
            hold_below_confidence: 0.25,
            cpu_limit_policy: CpuLimitPolicy::KeepRatio,
            memory_limit_policy: MemoryLimitPolicy::EqualRequest,
            headroom: 0.2,
            hpa_target: 0.7,
            swing_for_hpa: 2.0,
            // OpenCost's defaults.
            default_cpu_core_hour_usd: 0.031611,
            cloud_provider: String::new(),
            default_memory_gib_hour_usd: 0.004237,
            consolidation: consolidation::ConsolidationConfig::default(),
        }
    }
}

/// What one run did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunSummary {
    pub run_id: String,
    /// The end of the analysed window (the run's "now"), RFC 3339.
    pub at: String,
    pub seconds: f64,
    /// Rows written per kind.
    pub recommendations: BTreeMap<String, usize>,
    /// Monthly savings per kind (rows with positive savings).
    pub savings_monthly_usd: BTreeMap<String, f64>,
    pub nodes_removable: usize,
}

/// Runs analyses over one store; cheap to share (`Arc`). Runs are serialised.
pub struct Analyzer {
    store: Arc<Store>,
    engine: QueryEngine,
    config: AnalysisConfig,
    running: tokio::sync::Mutex<()>,
    last: std::sync::Mutex<Option<RunSummary>>,
    /// The id of the newest finished run, for the appliance's recommendation stream.
    runs: tokio::sync::watch::Sender<Option<String>>,
}

impl Analyzer {
    pub fn new(store: Arc<Store>, engine: QueryEngine, config: AnalysisConfig) -> Self {
        Analyzer {
            store,
            engine,
            config,
            running: tokio::sync::Mutex::new(()),
            last: std::sync::Mutex::new(None),
            runs: tokio::sync::watch::channel(None).0,
        }
    }

    /// Announce every finished run's id on `runs` (the appliance's recommendation stream
    /// shares one channel between the analyses and `DoPut`s of recommendation rows).
    pub fn with_run_notifier(mut self, runs: tokio::sync::watch::Sender<Option<String>>) -> Self {
        self.runs = runs;
        self
    }

    /// The ids of finished runs, newest only (a slow reader skips to the newest).
    pub fn runs(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.runs.subscribe()
    }

    pub fn config(&self) -> &AnalysisConfig {
        &self.config
    }

    pub fn engine(&self) -> &QueryEngine {
        &self.engine
    }

    /// The last run's summary, if any.
    pub fn last_run(&self) -> Option<RunSummary> {
        self.last.lock().expect("not poisoned").clone()
    }

    /// Writes the shipped catalog into `prices` unless it is there already (same date).
    /// Returns the rows written.
    pub async fn seed_catalog(&self) -> Result<usize, AnalysisError> {
        let catalog = catalog::Catalog::shipped();
        let sql = format!(
            "SELECT count(*) FROM prices WHERE source = 'catalog' AND time = TIMESTAMP '{}'",
            catalog.taken.to_rfc3339()
        );
        let (_, batches) =
            self.engine
                .collect(&sql)
                .await
                .map_err(|source| AnalysisError::Query {
                    query: "catalog check",
                    source,
                })?;
        let have = batches
            .first()
            .map(|b| b.column(0).as_primitive::<Int64Type>().value(0))
            .unwrap_or(0);
        if have > 0 {
            return Ok(0);
        }
        let batch = catalog.batch();
        let n = batch.num_rows();
        self.store.write(Table::Prices, batch).await?;
        Ok(n)
    }

    /// Writes the user's price overrides (`tally serve --prices FILE`, parsed by
    /// [`catalog::Catalog::parse_overrides`]) into `prices` with source `user`, in force from
    /// `at` (the appliance's start). Idempotent across restarts: a row is written only when
    /// the newest user row for its region, instance type and capacity type (at or before `at`)
    /// differs from it, so an unchanged file writes nothing and a changed price takes effect
    /// from the start that brought it (the older rows stay as the price history). Returns the
    /// rows written.
    pub async fn load_price_overrides(
        &self,
        prices: &[catalog::CatalogPrice],
        at: DateTime<Utc>,
    ) -> Result<usize, AnalysisError> {
        if prices.is_empty() {
            return Ok(0);
        }
        let sql = format!(
            "SELECT provider, region, instance_type, capacity_type, hourly_usd, cpu_cores, \
               memory_bytes, gpu_count \
             FROM (SELECT *, row_number() OVER ( \
                 PARTITION BY region, instance_type, capacity_type ORDER BY time DESC) AS pick \
               FROM prices WHERE source = 'user' AND time <= TIMESTAMP '{}') \
             WHERE pick = 1",
            at.to_rfc3339()
        );
        let (_, batches) =
            self.engine
                .collect(&sql)
                .await
                .map_err(|source| AnalysisError::Query {
                    query: "price overrides check",
                    source,
                })?;
        let mut current = Vec::new();
        for b in &batches {
            let text = |k: usize| b.column(k).as_string::<i32>().clone();
            let (provider, region, instance_type, capacity_type) =
                (text(0), text(1), text(2), text(3));
            let hourly = b.column(4).as_primitive::<Float64Type>();
            let cpu = b.column(5).as_primitive::<Float64Type>();
            let memory = b.column(6).as_primitive::<Int64Type>();
            let gpus = b.column(7).as_primitive::<Int64Type>();
            for i in 0..b.num_rows() {
                current.push(catalog::CatalogPrice {
                    provider: provider.value(i).to_string(),
                    region: region.value(i).to_string(),
                    instance_type: instance_type.value(i).to_string(),
                    capacity_type: capacity_type.value(i).to_string(),
                    hourly_usd: hourly.value(i),
                    cpu_cores: cpu.value(i),
                    memory_bytes: memory.value(i),
                    gpu_count: gpus.value(i),
                });
            }
        }
        let changed: Vec<catalog::CatalogPrice> = prices
            .iter()
            .filter(|p| !current.contains(p))
            .cloned()
            .collect();
        if changed.is_empty() {
            return Ok(0);
        }
        let n = changed.len();
        self.store
            .write(Table::Prices, catalog::batch_of(&changed, at, "user"))
            .await?;
        Ok(n)
    }

    async fn query(
        &self,
        query: Query,
        params: &[(&str, Param)],
    ) -> Result<Vec<RecordBatch>, AnalysisError> {
        let values: Vec<(&str, Param)> = params
            .iter()
            .filter(|(n, _)| query.params.contains(n))
            .cloned()
            .collect();
        let sql = query.render(&values).map_err(|e| AnalysisError::Render {
            query: query.name,
            why: e.to_string(),
        })?;
        let (_, batches) =
            self.engine
                .collect(&sql)
                .await
                .map_err(|source| AnalysisError::Query {
                    query: query.name,
                    source,
                })?;
        Ok(batches)
    }

    /// One analysis run over the window ending at `now`: writes its rows to
    /// `recommendations` and answers what it did.
    pub async fn run(&self, now: DateTime<Utc>) -> Result<RunSummary, AnalysisError> {
        let _one_at_a_time = self.running.lock().await;
        let started = Instant::now();
        let c = &self.config;
        let run_id = format!(
            "{}-{}",
            now.format("%Y%m%dT%H%M%SZ"),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let window_start = now - chrono::Duration::from_std(c.window).expect("window fits");
        let inventory_start =
            now - chrono::Duration::from_std(c.inventory_window).expect("window fits");
        let mut params: Vec<(&str, Param)> = vec![
            ("window_start", Param::Timestamp(window_start)),
            ("window_end", Param::Timestamp(now)),
            ("at", Param::Timestamp(now)),
            ("run_id", Param::Text(run_id.clone())),
            ("cpu_quantile", Param::Float(c.cpu_quantile)),
            ("memory_margin", Param::Float(c.memory_margin)),
            ("min_cpu_cores", Param::Float(c.min_cpu_cores)),
            ("min_memory_bytes", Param::Int(c.min_memory_bytes)),
            ("oom_bump_bytes", Param::Int(c.oom_bump_bytes)),
            ("oom_bump_factor", Param::Float(c.oom_bump_factor)),
            ("confident_hours", Param::Float(c.confident_hours)),
            (
                "hold_below_confidence",
                Param::Float(c.hold_below_confidence),
            ),
            (
                "cpu_limit_policy",
                Param::Text(policy_name(&c.cpu_limit_policy)),
            ),
            (
                "memory_limit_policy",
                Param::Text(policy_name(&c.memory_limit_policy)),
            ),
            ("headroom", Param::Float(c.headroom)),
            ("hpa_target", Param::Float(c.hpa_target)),
            ("swing_for_hpa", Param::Float(c.swing_for_hpa)),
            (
                "default_cpu_core_hour_usd",
                Param::Float(c.default_cpu_core_hour_usd),
            ),
            (
                "default_memory_gib_hour_usd",
                Param::Float(c.default_memory_gib_hour_usd),
            ),
        ];

        // Nodes now, with their prices; the cluster's average unit prices price the savings.
        let inventory = [
            ("window_start", Param::Timestamp(inventory_start)),
            ("window_end", Param::Timestamp(now)),
            (
                "default_cpu_core_hour_usd",
                Param::Float(c.default_cpu_core_hour_usd),
            ),
            (
                "default_memory_gib_hour_usd",
                Param::Float(c.default_memory_gib_hour_usd),
            ),
        ];
        let nodes = rows::nodes(&self.query(analysis::NODE_PRICES, &inventory).await?)?;
        let (cpu_price, memory_price) = average_unit_prices(&nodes, c);
        params.push(("cpu_core_hour_usd", Param::Float(cpu_price)));
        params.push(("memory_gib_hour_usd", Param::Float(memory_price)));

        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        let mut savings: BTreeMap<String, f64> = BTreeMap::new();
        let mut tally = |batch: &RecordBatch| {
            let kinds = batch
                .column_by_name("kind")
                .map(|k| k.as_string::<i32>().clone());
            let usd = batch
                .column_by_name("savings_monthly_usd")
                .map(|s| s.as_primitive::<Float64Type>().clone());
            let targets = batch
                .column_by_name("target_kind")
                .map(|k| k.as_string::<i32>().clone());
            if let Some(kinds) = kinds {
                for i in 0..batch.num_rows() {
                    let kind = kinds.value(i).to_string();
                    *counts.entry(kind.clone()).or_default() += 1;
                    // A removable node's savings are in its group's row too.
                    let node_row = targets.as_ref().is_some_and(|t| t.value(i) == "Node");
                    if let Some(usd) = &usd
                        && !node_row
                        && usd.is_valid(i)
                        && usd.value(i) > 0.0
                    {
                        *savings.entry(kind).or_default() += usd.value(i);
                    }
                }
            }
        };

        // Rightsizing first: replicas reads its rows back.
        let rightsizing = self.query(analysis::RIGHTSIZING, &params).await?;
        let rightsizing = rows::to_recommendations(&rightsizing, &run_id, now)?;
        let mut per_pod: BTreeMap<(String, String, String), (f64, i64)> = BTreeMap::new();
        for batch in &rightsizing {
            tally(batch);
            rows::add_pod_requests(batch, &mut per_pod);
            self.store
                .write(Table::Recommendations, batch.clone())
                .await?;
        }
        let replicas = self.query(analysis::REPLICAS, &params).await?;
        for batch in rows::to_recommendations(&replicas, &run_id, now)? {
            tally(&batch);
            self.store.write(Table::Recommendations, batch).await?;
        }

        // Consolidation and instance types: simulated in Rust.
        // Pods are written when they change, so their newest row may be old: read the
        // whole window (a deleted or finished pod's newest row says so).
        let pod_rows = self.query(analysis::CONSOLIDATION_PODS, &params).await?;
        let pods = rows::pods(&pod_rows)?;
        let plan = consolidation::plan(&nodes, &pods, &c.consolidation);
        let prices = rows::priced_types(&self.query(analysis::INSTANCE_PRICES, &params).await?)?;
        let mut extra = rows::consolidation_rows(&plan, &nodes);
        for demand in rows::group_demands(&nodes, &pods, &per_pod) {
            if let Some(s) = instance_types::suggest(&demand, &prices, c.headroom) {
                let saves = (demand.current_hourly_usd - s.hourly_usd) * HOURS_PER_MONTH;
                if saves > 0.0 {
                    extra.push(rows::instance_type_row(&demand, &s, saves));
                }
            }
        }
        if !extra.is_empty() {
            let batch = rows::batch_of(&extra, &run_id, now)?;
            tally(&batch);
            self.store.write(Table::Recommendations, batch).await?;
        }

        let summary = RunSummary {
            run_id,
            at: now.to_rfc3339(),
            seconds: started.elapsed().as_secs_f64(),
            recommendations: counts,
            savings_monthly_usd: savings
                .into_iter()
                .map(|(k, v)| (k, (v * 100.0).round() / 100.0))
                .collect(),
            nodes_removable: plan.nodes.iter().filter(|d| d.removable).count(),
        };
        tracing::info!(
            run_id = %summary.run_id,
            seconds = summary.seconds,
            recommendations = ?summary.recommendations,
            "analysis run finished"
        );
        *self.last.lock().expect("not poisoned") = Some(summary.clone());
        // Every row of the run is durable: tell the stream's subscribers.
        self.runs.send_replace(Some(summary.run_id.clone()));
        Ok(summary)
    }
}

fn policy_name(policy: &impl Serialize) -> String {
    serde_json::to_value(policy)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .expect("policies serialise as strings")
}

/// The cluster's average CPU and memory unit prices, weighted by capacity; the defaults
/// when there are no nodes.
fn average_unit_prices(nodes: &[consolidation::NodeInfo], c: &AnalysisConfig) -> (f64, f64) {
    if nodes.is_empty() {
        return (c.default_cpu_core_hour_usd, c.default_memory_gib_hour_usd);
    }
    // Node prices split as OpenCost does: proportional to the default unit prices.
    let (mut cpu_usd, mut cpu, mut mem_usd, mut mem) = (0.0, 0.0, 0.0, 0.0);
    for n in nodes {
        let cw = n.cpu_capacity * c.default_cpu_core_hour_usd;
        let mw = n.memory_capacity as f64 / (1u64 << 30) as f64 * c.default_memory_gib_hour_usd;
        if cw + mw <= 0.0 {
            continue;
        }
        cpu_usd += n.hourly_usd * cw / (cw + mw);
        mem_usd += n.hourly_usd * mw / (cw + mw);
        cpu += n.cpu_capacity;
        mem += n.memory_capacity as f64 / (1u64 << 30) as f64;
    }
    if cpu <= 0.0 || mem <= 0.0 {
        return (c.default_cpu_core_hour_usd, c.default_memory_gib_hour_usd);
    }
    (cpu_usd / cpu, mem_usd / mem)
}

/// Runs `analyzer` every `every`, the first time after one interval; seeds the catalog first.
pub fn spawn_periodic(analyzer: Arc<Analyzer>, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(error) = analyzer.seed_catalog().await {
            tracing::error!(%error, "cannot seed the pricing catalog");
        }
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(error) = analyzer.run(Utc::now()).await {
                tracing::error!(%error, "analysis run failed");
            }
        }
    })
}

#[cfg(test)]
mod tests;
