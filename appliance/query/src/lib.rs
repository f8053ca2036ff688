//! Tally's read-only SQL surface, shared by the HTTP SQL API, `tally sql`, the Flight SQL
//! endpoint, the web SQL console and the export endpoint.
//!
//! A statement goes through, in order:
//! 1. the allow-list ([`guard`]): DataFusion's parser, exactly one statement, only queries,
//!    `EXPLAIN [ANALYZE]` of a query, `SHOW TABLES`, `SHOW COLUMNS` and `DESCRIBE`, no file
//!    paths as tables, no table function besides `generate_series` and `range`;
//! 2. planning in a fresh `SessionContext` with Tally's tables, then DataFusion's own
//!    `SQLOptions::verify_plan` with DDL, DML and statements disallowed;
//! 3. execution as a stream, under one memory pool shared by every running query (no disk
//!    manager: what does not fit fails with [`QueryError::ResourcesExhausted`] instead of
//!    spilling) and one deadline for planning and streaming together
//!    ([`QueryError::Timeout`]).
//!
//! Answers are streams of Arrow batches ([`QueryStream`]), which render to JSON rows
//! ([`QueryStream::into_json`], [`batches_to_json`]) or to Arrow IPC stream bytes
//! ([`QueryStream::into_ipc`]).

mod bounded;
mod error;
mod guard;
mod json;
mod stream;

use std::collections::{BTreeSet, HashMap};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{GreedyMemoryPool, MemoryPool, TrackConsumersPool};
use datafusion::execution::object_store::{
    DefaultObjectStoreRegistry, ObjectStoreRegistry, ObjectStoreUrl,
};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::{ExecutionPlan, execute_stream};
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use tally_store::Store;
use tally_wire::Table;
use tokio::time::Instant;

pub use error::{Position, QueryError};
pub use json::{JsonColumn, JsonResult, batches_to_json};
pub use stream::QueryStream;

/// The longest statement the engine plans. DataFusion's planner and optimizer recurse once per
/// term of a flat expression (`1 + 1 + … + 1`): 2,000 terms overflowed a 2 MiB worker stack
/// and aborted the appliance. With this limit and the 32 MiB worker stacks of the `tally`
/// binary, the hostile-input tests' longest statements are refused or answered.
pub const MAX_STATEMENT_BYTES: usize = 32 * 1024;

/// What one engine allows its queries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryLimits {
    /// The memory that all running queries of the engine share (hash tables, sorts,
    /// aggregates, buffered batches). Nothing spills to disk: a query that needs more fails.
    pub memory_bytes: usize,
    /// How long one query may take, planning and reading its answer together.
    pub timeout: Duration,
    /// At most this many rows in a JSON answer (the rest is cut, with `truncated: true`).
    pub max_json_rows: usize,
    /// How many partitions a query runs in parallel.
    pub target_partitions: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 512 * 1024 * 1024,
            timeout: Duration::from_secs(30),
            max_json_rows: 10_000,
            target_partitions: std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
        }
    }
}

/// A table for the schema browser.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TableInfo {
    pub name: String,
    pub description: String,
    pub columns: Vec<ColumnInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ColumnInfo {
    pub name: String,
    /// The Arrow type as Arrow displays it.
    #[serde(rename = "type")]
    pub data_type: String,
    pub nullable: bool,
}

/// Runs read-only SQL over a store. Cheap to clone.
#[derive(Clone)]
pub struct QueryEngine {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<Store>,
    limits: QueryLimits,
    runtime: Arc<RuntimeEnv>,
}

impl std::fmt::Debug for QueryEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryEngine")
            .field("limits", &self.inner.limits)
            .finish_non_exhaustive()
    }
}

impl QueryEngine {
    pub fn new(store: Arc<Store>, limits: QueryLimits) -> Self {
        let pool: Arc<dyn MemoryPool> = Arc::new(TrackConsumersPool::new(
            GreedyMemoryPool::new(limits.memory_bytes),
            NonZeroUsize::new(3).expect("3 > 0"),
        ));
        // No `file://` store: the only object store is the one the store registers.
        let registry = DefaultObjectStoreRegistry::new();
        let _ = registry.deregister_store(ObjectStoreUrl::local_filesystem().as_ref());
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(pool)
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
            )
            .with_object_store_registry(Arc::new(registry))
            .build_arc()
            .expect("a runtime without a disk manager always builds");
        Self {
            inner: Arc::new(Inner {
                store,
                limits,
                runtime,
            }),
        }
    }

    pub fn limits(&self) -> &QueryLimits {
        &self.inner.limits
    }

    /// Checks and plans one statement and starts it; read the answer from the stream. The
    /// deadline covers planning and reading together.
    pub async fn execute(&self, sql: &str) -> Result<QueryStream, QueryError> {
        let timeout = self.inner.limits.timeout;
        let deadline = Instant::now() + timeout;
        let (plan, task) = self.plan_until(sql, deadline).await?;
        let stream = execute_stream(plan, task).map_err(QueryError::from_datafusion)?;
        Ok(QueryStream::new(stream, deadline, timeout))
    }

    /// Checks and plans one statement without running it, and answers the schema of its
    /// result (for Flight SQL's `GetFlightInfo` and the console's column headers).
    pub async fn schema(&self, sql: &str) -> Result<SchemaRef, QueryError> {
        let deadline = Instant::now() + self.inner.limits.timeout;
        let (plan, _) = self.plan_until(sql, deadline).await?;
        Ok(plan.schema())
    }

    /// Plans as its own task so that the deadline holds even while planning is busy.
    async fn plan_until(
        &self,
        sql: &str,
        deadline: Instant,
    ) -> Result<(Arc<dyn ExecutionPlan>, Arc<TaskContext>), QueryError> {
        if sql.len() > MAX_STATEMENT_BYTES {
            return Err(QueryError::Refused {
                statement_kind: format!("a statement of {} bytes", sql.len()),
                reason: format!(
                    "statements are limited to {} KiB (planning a very long expression recurses once per term)",
                    MAX_STATEMENT_BYTES / 1024
                ),
            });
        }
        let engine = self.clone();
        let sql = sql.to_owned();
        let planning = tokio::spawn(async move { engine.plan(&sql).await });
        let abort = planning.abort_handle();
        match tokio::time::timeout_at(deadline, planning).await {
            Err(_elapsed) => {
                abort.abort();
                Err(QueryError::Timeout(self.inner.limits.timeout))
            }
            Ok(Err(join_error)) => Err(QueryError::Internal(format!(
                "planning failed: {join_error}"
            ))),
            Ok(Ok(planned)) => planned,
        }
    }

    /// Runs a statement and reads its whole answer.
    pub async fn collect(&self, sql: &str) -> Result<(SchemaRef, Vec<RecordBatch>), QueryError> {
        let stream = self.execute(sql).await?;
        let schema = stream.schema();
        Ok((schema, stream.collect().await?))
    }

    /// Runs a statement and renders at most [`QueryLimits::max_json_rows`] rows as JSON; the
    /// query stops once the limit is passed.
    pub async fn json(&self, sql: &str) -> Result<JsonResult, QueryError> {
        self.execute(sql)
            .await?
            .into_json(self.inner.limits.max_json_rows)
            .await
    }

    /// Tally's tables, what a row means and their columns, for the schema browser.
    pub fn catalog(&self) -> Vec<TableInfo> {
        Table::ALL
            .iter()
            .map(|table| TableInfo {
                name: table.name().to_string(),
                description: table.def().description.to_string(),
                columns: table
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| ColumnInfo {
                        name: f.name().clone(),
                        data_type: f.data_type().to_string(),
                        nullable: f.is_nullable(),
                    })
                    .collect(),
            })
            .collect()
    }

    /// A fresh session: Tally's tables and functions, `information_schema` (for `SHOW`), the
    /// engine's memory pool, no table factories (no `CREATE EXTERNAL TABLE`) and no URL
    /// tables.
    fn session(&self) -> Result<SessionContext, QueryError> {
        let config = SessionConfig::new()
            .with_information_schema(true)
            .with_target_partitions(self.inner.limits.target_partitions.max(1))
            .set_bool("datafusion.sql_parser.collect_spans", true);
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(self.inner.runtime.clone())
            .with_default_features()
            .with_table_factories(HashMap::new())
            .build();
        let ctx = SessionContext::new_with_state(state);
        self.inner
            .store
            .register(&ctx)
            .map_err(|e| QueryError::Internal(format!("registering Tally's tables: {e}")))?;
        bounded::register(&ctx, self.per_call_bytes());
        Ok(ctx)
    }

    /// What one call of an amplifying scalar function (`repeat`, `lpad`, `range`, …) may
    /// build: those allocations are outside the memory pool, so each partition gets a share.
    fn per_call_bytes(&self) -> usize {
        let limits = &self.inner.limits;
        (limits.memory_bytes / (2 * limits.target_partitions.max(1))).max(1 << 20)
    }

    async fn plan(
        &self,
        sql: &str,
    ) -> Result<(Arc<dyn ExecutionPlan>, Arc<TaskContext>), QueryError> {
        let ctx = self.session()?;
        let state = ctx.state();
        let table_functions: BTreeSet<String> = state.table_functions().keys().cloned().collect();
        let recursion_limit = state.config().options().sql_parser.recursion_limit.get();
        let statement = guard::parse_and_check(sql, recursion_limit, &table_functions)?;
        let logical = state
            .statement_to_plan(statement)
            .await
            .map_err(QueryError::from_datafusion)?;
        verify(&logical)?;
        let physical = state
            .create_physical_plan(&logical)
            .await
            .map_err(QueryError::from_datafusion)?;
        Ok((physical, ctx.task_ctx()))
    }
}

/// The second line of defence: DataFusion's own check that a plan neither defines, writes
/// nor changes the session.
fn verify(plan: &LogicalPlan) -> Result<(), QueryError> {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(plan)
        .map_err(|e| {
            let message = match e.find_root() {
                DataFusionError::Plan(m) => m.clone(),
                other => other.message().into_owned(),
            };
            // "DDL not supported: CreateMemoryTable" → kind "CreateMemoryTable"
            let kind = message
                .split_once(": ")
                .map_or("statement", |(_, kind)| kind)
                .to_string();
            QueryError::refused(kind, format!("{message}; Tally's SQL is read-only"))
        })
}

#[cfg(test)]
mod tests;
