//! SQL functions over the rollups' histograms:
//! `cpu_quantile(cpu_histogram, q)` and `memory_quantile(memory_histogram, q)` merge the
//! histograms of every row in the group and answer the end of the bucket holding the `q`
//! quantile (see [`crate::histogram`]).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Float64Array};
use arrow::datatypes::{DataType, Field, FieldRef, Float64Type, UInt16Type, UInt32Type};
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, EmitTo, GroupsAccumulator, Signature, Volatility,
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

    fn groups_accumulator_supported(&self, _: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(&self, _: AccumulatorArgs) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(QuantileGroups {
            options: self.options(),
            histograms: Vec::new(),
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

/// The vectorised form DataFusion uses for GROUP BY: one histogram per group, rows added
/// straight from the list arrays (no per-row allocation, no per-group slicing).
#[derive(Debug)]
struct QuantileGroups {
    options: HistogramOptions,
    histograms: Vec<Histogram>,
    q: Option<f64>,
}

impl QuantileGroups {
    fn absorb(
        &mut self,
        histograms: &ArrayRef,
        q: &ArrayRef,
        groups: &[usize],
        filter: Option<&BooleanArray>,
        total_groups: usize,
    ) -> Result<()> {
        if self.histograms.len() < total_groups {
            self.histograms.resize_with(total_groups, Histogram::new);
        }
        if self.q.is_none()
            && let Some(v) = q.as_primitive::<Float64Type>().iter().flatten().next()
        {
            if !(0.0..=1.0).contains(&v) {
                return exec_err!("quantile must be between 0 and 1, got {v}");
            }
            self.q = Some(v);
        }
        let list = histograms.as_list::<i32>();
        let entries = list.values().as_struct();
        let buckets = entries.column(0).as_primitive::<UInt16Type>();
        let counts = entries.column(1).as_primitive::<UInt32Type>();
        let offsets = list.value_offsets();
        for (row, &group) in groups.iter().enumerate() {
            if list.is_null(row) || filter.is_some_and(|f| f.is_null(row) || !f.value(row)) {
                continue;
            }
            let histogram = &mut self.histograms[group];
            for i in offsets[row] as usize..offsets[row + 1] as usize {
                histogram.add_count(buckets.value(i), u64::from(counts.value(i)));
            }
        }
        Ok(())
    }
}

impl GroupsAccumulator for QuantileGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        groups: &[usize],
        filter: Option<&BooleanArray>,
        total_groups: usize,
    ) -> Result<()> {
        self.absorb(&values[0], &values[1], groups, filter, total_groups)
    }

    fn merge_batch(
        &mut self,
        states: &[ArrayRef],
        groups: &[usize],
        total_groups: usize,
    ) -> Result<()> {
        self.absorb(&states[0], &states[1], groups, None, total_groups)
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let histograms = emit_to.take_needed(&mut self.histograms);
        let q = self.q;
        let options = self.options;
        Ok(Arc::new(Float64Array::from_iter(
            histograms
                .iter()
                .map(|h| q.and_then(|q| h.quantile(&options, q))),
        )))
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let histograms = emit_to.take_needed(&mut self.histograms);
        let q = Float64Array::from(vec![self.q; histograms.len()]);
        Ok(vec![histogram_column(histograms.iter()), Arc::new(q)])
    }

    /// Each input row as its own state (a row's histogram is already a valid state);
    /// filtered-out rows become empty histograms.
    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let histograms = match filter {
            None => values[0].clone(),
            Some(filter) => {
                let kept = arrow::compute::kernels::zip::zip(
                    &arrow::compute::prep_null_mask_filter(filter),
                    &values[0],
                    &arrow::array::new_null_array(values[0].data_type(), values[0].len()),
                )?;
                Arc::new(kept)
            }
        };
        Ok(vec![histograms, values[1].clone()])
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self)
            + self
                .histograms
                .iter()
                .map(|h| 48 + h.entries().count() * 24)
                .sum::<usize>()
    }
}

/// Registers Tally's SQL functions.
pub fn register(ctx: &SessionContext) {
    for resource in [Resource::Cpu, Resource::Memory] {
        ctx.register_udaf(AggregateUDF::from(HistogramQuantile::new(resource)));
    }
}
