//! One DataFusion `TableProvider` per table: the hot buffer (rows acknowledged but not yet
//! flushed) united with the table's published Parquet files, both pruned by any time range
//! in the query's filters. SQL never knows where a row lives.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::{DFSchema, Result, ScalarValue};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::logical_expr::utils::{conjunction, split_conjunction};
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::union::UnionExec;
use tally_wire::{TIME_COLUMN, Table};

use crate::store::Shared;

#[derive(Debug)]
pub(crate) struct StoreTable {
    pub table: Table,
    pub shared: Arc<Shared>,
}

#[async_trait]
impl TableProvider for StoreTable {
    fn schema(&self) -> SchemaRef {
        self.table.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let schema = self.table.schema();
        let range = TimeRange::from_filters(filters);
        let (files, hot) = self.shared.snapshot(self.table, range);
        let partitions = state.config().target_partitions().max(1);
        let mut inputs: Vec<Arc<dyn ExecutionPlan>> = Vec::new();

        if !files.is_empty() {
            let mut source = ParquetSource::new(schema.clone()).with_enable_page_index(true);
            if let Some(filter) = conjunction(filters.to_vec()) {
                let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
                source = source.with_predicate(state.create_physical_expr(filter, &df_schema)?);
            }
            let mut groups = vec![Vec::new(); partitions.min(files.len())];
            for (i, file) in files.into_iter().enumerate() {
                let n = groups.len();
                groups[i % n].push(PartitionedFile::new(file.path, file.bytes));
            }
            let config = FileScanConfigBuilder::new(self.shared.url.clone(), Arc::new(source))
                .with_file_groups(groups.into_iter().map(FileGroup::new).collect())
                .with_projection_indices(projection.cloned())?
                .with_limit(limit)
                .build();
            inputs.push(DataSourceExec::from_data_source(config));
        }
        if !hot.is_empty() || inputs.is_empty() {
            let mut parts = vec![Vec::new(); partitions.min(hot.len()).max(1)];
            for (i, batch) in hot.into_iter().enumerate() {
                let n = parts.len();
                parts[i % n].push(batch);
            }
            inputs.push(MemorySourceConfig::try_new_exec(
                &parts,
                schema,
                projection.cloned(),
            )?);
        }
        UnionExec::try_new(inputs)
    }
}

/// An inclusive time range in milliseconds, widened to whole milliseconds so pruning never
/// drops a row the exact filter would keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimeRange {
    pub from_ms: i64,
    pub to_ms: i64,
}

impl TimeRange {
    pub const ALL: TimeRange = TimeRange {
        from_ms: i64::MIN,
        to_ms: i64::MAX,
    };

    pub fn overlaps(&self, min_ms: i64, max_ms: i64) -> bool {
        min_ms <= self.to_ms && max_ms >= self.from_ms
    }

    pub fn from_filters(filters: &[Expr]) -> Self {
        let mut range = TimeRange::ALL;
        for filter in filters {
            for expr in split_conjunction(filter) {
                range.narrow(expr);
            }
        }
        range
    }

    fn narrow(&mut self, expr: &Expr) {
        match expr {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                if is_time(left) {
                    if let Some(v) = literal_ms(right) {
                        self.apply(*op, v);
                    }
                } else if is_time(right)
                    && let (Some(v), Some(op)) = (literal_ms(left), op.swap())
                {
                    self.apply(op, v);
                }
            }
            Expr::Between(Between {
                expr,
                negated: false,
                low,
                high,
            }) if is_time(expr) => {
                if let Some(v) = literal_ms(low) {
                    self.apply(Operator::GtEq, v);
                }
                if let Some(v) = literal_ms(high) {
                    self.apply(Operator::LtEq, v);
                }
            }
            _ => {}
        }
    }

    fn apply(&mut self, op: Operator, (floor, ceil): (i64, i64)) {
        match op {
            Operator::Gt | Operator::GtEq => self.from_ms = self.from_ms.max(floor),
            Operator::Lt | Operator::LtEq => self.to_ms = self.to_ms.min(ceil),
            Operator::Eq => {
                self.from_ms = self.from_ms.max(floor);
                self.to_ms = self.to_ms.min(ceil);
            }
            _ => {}
        }
    }
}

fn is_time(expr: &Expr) -> bool {
    matches!(expr, Expr::Column(c) if c.name == TIME_COLUMN)
}

/// A timestamp literal as (floor, ceil) milliseconds.
fn literal_ms(expr: &Expr) -> Option<(i64, i64)> {
    let Expr::Literal(value, _) = expr else {
        return None;
    };
    let (v, per_ms) = match value {
        ScalarValue::TimestampSecond(Some(v), _) => return Some((v * 1000, v * 1000)),
        ScalarValue::TimestampMillisecond(Some(v), _) => return Some((*v, *v)),
        ScalarValue::TimestampMicrosecond(Some(v), _) => (*v, 1_000),
        ScalarValue::TimestampNanosecond(Some(v), _) => (*v, 1_000_000),
        _ => return None,
    };
    Some((v.div_euclid(per_ms), (v + per_ms - 1).div_euclid(per_ms)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::{col, lit};

    fn ts(ms: i64) -> Expr {
        lit(ScalarValue::TimestampMillisecond(
            Some(ms),
            Some("UTC".into()),
        ))
    }

    #[test]
    fn time_filters_narrow_the_range_and_others_are_ignored() {
        let filters = vec![
            col("time")
                .gt_eq(ts(1000))
                .and(col("namespace").eq(lit("a"))),
            col("time").lt(ts(5000)),
        ];
        assert_eq!(
            TimeRange::from_filters(&filters),
            TimeRange {
                from_ms: 1000,
                to_ms: 5000
            }
        );
        let reversed = vec![ts(2000).lt(col("time"))];
        assert_eq!(TimeRange::from_filters(&reversed).from_ms, 2000);
        let between = vec![col("time").between(ts(10), ts(20))];
        assert_eq!(
            TimeRange::from_filters(&between),
            TimeRange {
                from_ms: 10,
                to_ms: 20
            }
        );
        let ns = vec![col("time").lt(lit(ScalarValue::TimestampNanosecond(Some(1_500_001), None)))];
        assert_eq!(TimeRange::from_filters(&ns).to_ms, 2);
        let or = vec![col("time").gt(ts(5)).or(col("time").lt(ts(1)))];
        assert_eq!(TimeRange::from_filters(&or), TimeRange::ALL);
        assert!(
            TimeRange {
                from_ms: 10,
                to_ms: 20
            }
            .overlaps(20, 30)
        );
        assert!(
            !TimeRange {
                from_ms: 10,
                to_ms: 20
            }
            .overlaps(21, 30)
        );
    }
}
