//! Scalar functions whose output can be far bigger than their input (`repeat('x', 2e9)`,
//! `lpad`, `rpad`, `array_repeat`, `array_resize`, `range`, `generate_series`). DataFusion's
//! memory pool does not see what a scalar function allocates, so these are replaced by a
//! wrapper that estimates the output from the arguments before calling the function and
//! refuses, with `ResourcesExhausted`, a call that would produce more than a set number of
//! bytes. Everything else is delegated to the original function.

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{
    DataType, FieldRef, IntervalDayTimeType, IntervalMonthDayNanoType, IntervalUnit,
    IntervalYearMonthType, TimeUnit,
};
use datafusion::common::config::ConfigOptions;
use datafusion::common::{Result, resources_err};
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature,
};
use datafusion::prelude::SessionContext;

/// How a function's output grows with its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Growth {
    /// `repeat(text, n)`: length of text × n.
    Repeat,
    /// `lpad(text, n[, fill])`, `rpad(…)`: n characters (up to 4 bytes each).
    Pad,
    /// `array_repeat(element, n)`: n elements.
    ArrayRepeat,
    /// `array_resize(array, n[, fill])`: n elements.
    ArrayResize,
    /// `range(stop)`, `range(start, stop[, step])`, same for `generate_series`.
    Series,
}

const FUNCTIONS: &[(&str, Growth)] = &[
    ("repeat", Growth::Repeat),
    ("lpad", Growth::Pad),
    ("rpad", Growth::Pad),
    ("array_repeat", Growth::ArrayRepeat),
    ("array_resize", Growth::ArrayResize),
    ("range", Growth::Series),
    ("generate_series", Growth::Series),
];

/// Replaces the session's amplifying functions with bounded ones.
pub(crate) fn register(ctx: &SessionContext, max_bytes: usize) {
    let state = ctx.state();
    for (name, growth) in FUNCTIONS {
        if let Some(inner) = state.scalar_functions().get(*name) {
            ctx.register_udf(ScalarUDF::new_from_impl(Bounded {
                inner: inner.as_ref().clone(),
                growth: *growth,
                max_bytes,
            }));
        }
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Bounded {
    inner: ScalarUDF,
    growth: Growth,
    max_bytes: usize,
}

impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        self.inner.simplify(args, info)
    }

    fn with_updated_config(&self, config: &ConfigOptions) -> Option<ScalarUDF> {
        let inner = self.inner.inner().with_updated_config(config)?;
        Some(ScalarUDF::new_from_impl(Bounded {
            inner,
            growth: self.growth,
            max_bytes: self.max_bytes,
        }))
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let estimate = self.estimate(&args.args, args.number_rows)?;
        if estimate > self.max_bytes as f64 {
            return resources_err!(
                "{}() would build about {} MiB at once, over the limit of {} MiB per call",
                self.inner.name(),
                (estimate / (1 << 20) as f64).ceil(),
                self.max_bytes >> 20
            );
        }
        self.inner.invoke_with_args(args)
    }
}

impl Bounded {
    /// The bytes the call would produce, roughly (never less than the truth by much).
    fn estimate(&self, args: &[ColumnarValue], number_rows: usize) -> Result<f64> {
        let all_scalar = args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let rows = if all_scalar { 1 } else { number_rows };
        let arg = |i: usize| args.get(i);
        let total = match self.growth {
            Growth::Repeat => {
                let (Some(text), Some(n)) = (arg(0), arg(1)) else {
                    return Ok(0.0);
                };
                let lengths = Per::lengths(text)?;
                let n = Per::numbers(n)?;
                (0..rows).map(|r| lengths.get(r) * n.get(r).max(0.0)).sum()
            }
            Growth::Pad => {
                let Some(n) = arg(1) else { return Ok(0.0) };
                let n = Per::numbers(n)?;
                (0..rows).map(|r| 4.0 * n.get(r).max(0.0)).sum()
            }
            Growth::ArrayRepeat => {
                let (Some(element), Some(n)) = (arg(0), arg(1)) else {
                    return Ok(0.0);
                };
                let element_bytes = match element {
                    ColumnarValue::Scalar(s) => s.size() as f64,
                    ColumnarValue::Array(a) => {
                        a.get_array_memory_size() as f64 / a.len().max(1) as f64
                    }
                }
                .max(8.0);
                let n = Per::numbers(n)?;
                (0..rows).map(|r| element_bytes * n.get(r).max(0.0)).sum()
            }
            Growth::ArrayResize => {
                let Some(n) = arg(1) else { return Ok(0.0) };
                let n = Per::numbers(n)?;
                (0..rows).map(|r| 16.0 * n.get(r).max(0.0)).sum()
            }
            Growth::Series => match args.len() {
                1 => {
                    let stop = Per::numbers(&args[0])?;
                    (0..rows).map(|r| 8.0 * stop.get(r).abs()).sum()
                }
                2 | 3 => {
                    let start = Per::numbers(&args[0])?;
                    let stop = Per::numbers(&args[1])?;
                    let step = match args.get(2) {
                        Some(step) => Per::numbers(step)?,
                        None => Per::Scalar(1.0),
                    };
                    (0..rows)
                        .map(|r| {
                            let step = step.get(r).abs();
                            if step == 0.0 {
                                0.0
                            } else {
                                8.0 * ((stop.get(r) - start.get(r)).abs() / step + 1.0)
                            }
                        })
                        .sum()
                }
                _ => 0.0,
            },
        };
        Ok(total)
    }
}

/// One number per row (a scalar stands for every row); null and unknown are 0.
enum Per {
    Scalar(f64),
    Array(Vec<f64>),
}

impl Per {
    fn get(&self, row: usize) -> f64 {
        match self {
            Per::Scalar(v) => *v,
            Per::Array(values) => values.get(row).copied().unwrap_or(0.0),
        }
    }

    fn from_value(value: &ColumnarValue, f: impl Fn(&ArrayRef) -> Result<Vec<f64>>) -> Result<Per> {
        Ok(match value {
            ColumnarValue::Scalar(s) => {
                Per::Scalar(f(&s.to_array_of_size(1)?)?.first().copied().unwrap_or(0.0))
            }
            ColumnarValue::Array(a) => Per::Array(f(a)?),
        })
    }

    /// Byte lengths of text (or list lengths).
    fn lengths(value: &ColumnarValue) -> Result<Per> {
        Per::from_value(value, |a| {
            if a.data_type().is_null() {
                return Ok(vec![0.0; a.len()]);
            }
            match arrow::compute::kernels::length::length(a.as_ref()) {
                Ok(lengths) => as_floats(&lengths),
                // Unknown types count as big as their buffers.
                Err(_) => Ok(vec![a.get_array_memory_size() as f64; a.len()]),
            }
        })
    }

    /// Numbers; dates, timestamps and intervals in nanoseconds.
    fn numbers(value: &ColumnarValue) -> Result<Per> {
        Per::from_value(value, as_floats)
    }
}

const DAY_NS: f64 = 86_400e9;

fn as_floats(a: &ArrayRef) -> Result<Vec<f64>> {
    let scale = |values: Vec<f64>, factor: f64| values.into_iter().map(|v| v * factor).collect();
    let via_int64 = |a: &ArrayRef| -> Result<Vec<f64>> {
        let ints = arrow::compute::cast(a, &DataType::Int64)?;
        Ok(ints
            .as_primitive::<arrow::datatypes::Int64Type>()
            .iter()
            .map(|v| v.unwrap_or(0) as f64)
            .collect())
    };
    Ok(match a.data_type() {
        DataType::Date32 => scale(via_int64(a)?, DAY_NS),
        DataType::Date64 => scale(via_int64(a)?, 1e6),
        DataType::Timestamp(unit, _) => {
            let factor = match unit {
                TimeUnit::Second => 1e9,
                TimeUnit::Millisecond => 1e6,
                TimeUnit::Microsecond => 1e3,
                TimeUnit::Nanosecond => 1.0,
            };
            scale(via_int64(a)?, factor)
        }
        DataType::Interval(IntervalUnit::MonthDayNano) => a
            .as_primitive::<IntervalMonthDayNanoType>()
            .iter()
            .map(|v| {
                v.map_or(0.0, |v| {
                    v.months as f64 * 30.0 * DAY_NS + v.days as f64 * DAY_NS + v.nanoseconds as f64
                })
            })
            .collect(),
        DataType::Interval(IntervalUnit::DayTime) => a
            .as_primitive::<IntervalDayTimeType>()
            .iter()
            .map(|v| {
                v.map_or(0.0, |v| {
                    v.days as f64 * DAY_NS + v.milliseconds as f64 * 1e6
                })
            })
            .collect(),
        DataType::Interval(IntervalUnit::YearMonth) => a
            .as_primitive::<IntervalYearMonthType>()
            .iter()
            .map(|v| v.map_or(0.0, |months| months as f64 * 30.0 * DAY_NS))
            .collect(),
        _ => match arrow::compute::cast(a, &DataType::Float64) {
            Ok(floats) => floats
                .as_primitive::<arrow::datatypes::Float64Type>()
                .iter()
                .map(|v| v.filter(|v| v.is_finite()).unwrap_or(0.0))
                .collect(),
            Err(_) => vec![0.0; a.len()],
        },
    })
}
