//! SQL functions over the rollups' histograms:
//! `cpu_quantile(cpu_histogram, q)` and `memory_quantile(memory_histogram, q)` merge the
//! histograms of every row in the group and answer the end of the bucket holding the `q`
//! quantile (see [`crate::histogram`]).

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray};
use arrow::datatypes::{DataType, Field, FieldRef, Float64Type};
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;
use tally_wire::histogram_type;

use crate::histogram::{CPU, Histogram, HistogramOptions, MEMORY};
use crate::rollup::{histogram_column, read_histograms};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Resource {
    Cpu,
    Memory,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct HistogramQuantile {
    resource: Resource,
    signature: Signature,
}

impl HistogramQuantile {
    fn new(resource: Resource) -> Self {
        Self {
            resource,
            signature: Signature::exact(
                vec![histogram_type(), DataType::Float64],
                Volatility::Immutable,
            ),
        }
    }

    fn options(&self) -> HistogramOptions {
        match self.resource {
            Resource::Cpu => CPU,
            Resource::Memory => MEMORY,
        }
    }
}

impl AggregateUDFImpl for HistogramQuantile {
    fn name(&self) -> &str {
        match self.resource {
            Resource::Cpu => "cpu_quantile",
            Resource::Memory => "memory_quantile",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn accumulator(&self, _: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(QuantileAccumulator {
            options: self.options(),
            histogram: Histogram::new(),
            q: None,
        }))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![
            Arc::new(Field::new(
                format!("{}_histogram", args.name),
                histogram_type(),
                true,
            )),
            Arc::new(Field::new(
                format!("{}_q", args.name),
                DataType::Float64,
                true,
            )),
        ])
    }
}

#[derive(Debug)]
struct QuantileAccumulator {
    options: HistogramOptions,
    histogram: Histogram,
    q: Option<f64>,
}

impl QuantileAccumulator {
    fn absorb(&mut self, histograms: &ArrayRef, q: &ArrayRef) -> Result<()> {
        for h in read_histograms(histograms) {
            self.histogram.merge(&h);
        }
        let q = q.as_primitive::<Float64Type>();
        if self.q.is_none()
            && let Some(v) = q.iter().flatten().next()
        {
            if !(0.0..=1.0).contains(&v) {
                return exec_err!("quantile must be between 0 and 1, got {v}");
            }
            self.q = Some(v);
        }
        Ok(())
    }
}

impl Accumulator for QuantileAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.absorb(&values[0], &values[1])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.absorb(&states[0], &states[1])
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let column = histogram_column(std::iter::once(&self.histogram));
        Ok(vec![
            ScalarValue::List(Arc::new(column.as_list::<i32>().clone())),
            ScalarValue::Float64(self.q),
        ])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Float64(
            self.q
                .and_then(|q| self.histogram.quantile(&self.options, q)),
        ))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.histogram.entries().count() * 24
    }
}

/// Registers Tally's SQL functions.
pub fn register(ctx: &SessionContext) {
    for resource in [Resource::Cpu, Resource::Memory] {
        ctx.register_udaf(AggregateUDF::from(HistogramQuantile::new(resource)));
    }
}
