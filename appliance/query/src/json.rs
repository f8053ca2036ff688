//! Query answers as JSON for the HTTP API: the columns with their names and types, the rows
//! as arrays in column order, and whether rows were left out.
//!
//! Values: integers and floats are JSON numbers (a non-finite float is the string `"NaN"`,
//! `"Infinity"` or `"-Infinity"`), booleans are booleans, nulls are `null`, timestamps are
//! RFC 3339 strings in UTC (`2024-05-01T12:00:00Z`, with as many fraction digits as needed;
//! a timestamp without time zone is read as UTC), lists are arrays, structs are objects,
//! maps are objects keyed by the key's text; everything else (decimals, dates, durations,
//! intervals, binary) is the string Arrow displays for it.

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{
    DataType, Float16Type, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type,
    Schema, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow::error::ArrowError;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};

use crate::QueryError;

/// One column of a JSON answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JsonColumn {
    pub name: String,
    /// The Arrow type as Arrow displays it (`Int64`, `Utf8`, `Timestamp(ms, "UTC")`, …).
    #[serde(rename = "type")]
    pub data_type: String,
    pub nullable: bool,
}

/// A query answer as JSON: `{"columns": [...], "rows": [[...], ...], "row_count": n,
/// "truncated": false}`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct JsonResult {
    pub columns: Vec<JsonColumn>,
    /// At most the row limit; each row holds one value per column, in column order.
    pub rows: Vec<Vec<Value>>,
    /// `rows.len()`.
    pub row_count: usize,
    /// True when the query had more rows than the limit.
    pub truncated: bool,
}

/// Renders collected batches (at most `max_rows` rows).
pub fn batches_to_json(
    schema: &Schema,
    batches: &[RecordBatch],
    max_rows: usize,
) -> Result<JsonResult, QueryError> {
    let mut writer = JsonWriter::new(schema, max_rows);
    for batch in batches {
        if !writer.push(batch)? {
            break;
        }
    }
    Ok(writer.finish())
}

/// Collects rows up to a limit.
pub(crate) struct JsonWriter {
    columns: Vec<JsonColumn>,
    rows: Vec<Vec<Value>>,
    max_rows: usize,
    truncated: bool,
}

impl JsonWriter {
    pub(crate) fn new(schema: &Schema, max_rows: usize) -> Self {
        let columns = schema
            .fields()
            .iter()
            .map(|f| JsonColumn {
                name: f.name().clone(),
                data_type: f.data_type().to_string(),
                nullable: f.is_nullable(),
            })
            .collect();
        Self {
            columns,
            rows: Vec::new(),
            max_rows,
            truncated: false,
        }
    }

    /// Adds a batch's rows; false once the limit is reached and more rows were seen.
    pub(crate) fn push(&mut self, batch: &RecordBatch) -> Result<bool, QueryError> {
        let room = self.max_rows - self.rows.len();
        let take = batch.num_rows().min(room);
        if batch.num_rows() > room {
            self.truncated = true;
        }
        if take > 0 {
            let mut rows: Vec<Vec<Value>> = (0..take)
                .map(|_| Vec::with_capacity(batch.num_columns()))
                .collect();
            for column in batch.columns() {
                let values = render(&column.slice(0, take))
                    .map_err(|e| QueryError::Internal(format!("rendering JSON: {e}")))?;
                for (row, value) in rows.iter_mut().zip(values) {
                    row.push(value);
                }
            }
            self.rows.extend(rows);
        }
        Ok(!self.truncated)
    }

    pub(crate) fn finish(self) -> JsonResult {
        JsonResult {
            columns: self.columns,
            row_count: self.rows.len(),
            rows: self.rows,
            truncated: self.truncated,
        }
    }
}

/// Every value of `array` as JSON.
pub fn render(array: &ArrayRef) -> Result<Vec<Value>, ArrowError> {
    if let DataType::Dictionary(_, value_type) = array.data_type() {
        let plain = arrow::compute::cast(array, value_type)?;
        return render(&plain);
    }
    let nulls = array.logical_nulls();
    let is_null = |i: usize| nulls.as_ref().is_some_and(|n| n.is_null(i));
    let len = array.len();
    let values: Vec<Value> = match array.data_type() {
        DataType::Null => vec![Value::Null; len],
        DataType::Boolean => {
            let a = array.as_boolean();
            (0..len)
                .map(|i| {
                    if is_null(i) {
                        Value::Null
                    } else {
                        Value::Bool(a.value(i))
                    }
                })
                .collect()
        }
        DataType::Int8 => numbers(array.as_primitive::<Int8Type>(), &is_null, Value::from),
        DataType::Int16 => numbers(array.as_primitive::<Int16Type>(), &is_null, Value::from),
        DataType::Int32 => numbers(array.as_primitive::<Int32Type>(), &is_null, Value::from),
        DataType::Int64 => numbers(array.as_primitive::<Int64Type>(), &is_null, Value::from),
        DataType::UInt8 => numbers(array.as_primitive::<UInt8Type>(), &is_null, Value::from),
        DataType::UInt16 => numbers(array.as_primitive::<UInt16Type>(), &is_null, Value::from),
        DataType::UInt32 => numbers(array.as_primitive::<UInt32Type>(), &is_null, Value::from),
        DataType::UInt64 => numbers(array.as_primitive::<UInt64Type>(), &is_null, Value::from),
        DataType::Float16 => numbers(array.as_primitive::<Float16Type>(), &is_null, |v| {
            float(v.to_f64())
        }),
        DataType::Float32 => numbers(array.as_primitive::<Float32Type>(), &is_null, |v| {
            float(f64::from(v))
        }),
        DataType::Float64 => numbers(array.as_primitive::<Float64Type>(), &is_null, float),
        DataType::Utf8 => strings(len, &is_null, |i| array.as_string::<i32>().value(i)),
        DataType::LargeUtf8 => strings(len, &is_null, |i| array.as_string::<i64>().value(i)),
        DataType::Utf8View => strings(len, &is_null, |i| array.as_string_view().value(i)),
        DataType::Timestamp(unit, _) => {
            let formatter = ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default())?;
            let at = |i: usize| -> Option<DateTime<Utc>> {
                match unit {
                    TimeUnit::Second => DateTime::from_timestamp(
                        array.as_primitive::<TimestampSecondType>().value(i),
                        0,
                    ),
                    TimeUnit::Millisecond => DateTime::from_timestamp_millis(
                        array.as_primitive::<TimestampMillisecondType>().value(i),
                    ),
                    TimeUnit::Microsecond => DateTime::from_timestamp_micros(
                        array.as_primitive::<TimestampMicrosecondType>().value(i),
                    ),
                    TimeUnit::Nanosecond => Some(DateTime::from_timestamp_nanos(
                        array.as_primitive::<TimestampNanosecondType>().value(i),
                    )),
                }
            };
            (0..len)
                .map(|i| {
                    if is_null(i) {
                        Value::Null
                    } else {
                        match at(i) {
                            Some(t) => {
                                Value::String(t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
                            }
                            None => Value::String(formatter.value(i).to_string()),
                        }
                    }
                })
                .collect()
        }
        DataType::List(_) => {
            let a = array.as_list::<i32>();
            nested(len, &is_null, |i| Ok(Value::Array(render(&a.value(i))?)))?
        }
        DataType::LargeList(_) => {
            let a = array.as_list::<i64>();
            nested(len, &is_null, |i| Ok(Value::Array(render(&a.value(i))?)))?
        }
        DataType::FixedSizeList(..) => {
            let a = array.as_fixed_size_list();
            nested(len, &is_null, |i| Ok(Value::Array(render(&a.value(i))?)))?
        }
        DataType::Struct(fields) => {
            let a = array.as_struct();
            let columns: Vec<Vec<Value>> =
                a.columns().iter().map(render).collect::<Result<_, _>>()?;
            let mut columns: Vec<std::vec::IntoIter<Value>> =
                columns.into_iter().map(Vec::into_iter).collect();
            (0..len)
                .map(|i| {
                    let mut object = Map::new();
                    for (field, values) in fields.iter().zip(columns.iter_mut()) {
                        object.insert(field.name().clone(), values.next().unwrap_or(Value::Null));
                    }
                    if is_null(i) {
                        Value::Null
                    } else {
                        Value::Object(object)
                    }
                })
                .collect()
        }
        DataType::Map(..) => {
            let a = array.as_map();
            nested(len, &is_null, |i| {
                let entries = a.value(i);
                let keys = entries.column(0);
                let key_text = ArrayFormatter::try_new(keys.as_ref(), &FormatOptions::default())?;
                let values = render(entries.column(1))?;
                let mut object = Map::new();
                for (k, v) in values.into_iter().enumerate() {
                    object.insert(key_text.value(k).to_string(), v);
                }
                Ok(Value::Object(object))
            })?
        }
        _ => {
            let formatter = ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default())?;
            (0..len)
                .map(|i| {
                    if is_null(i) {
                        Value::Null
                    } else {
                        Value::String(formatter.value(i).to_string())
                    }
                })
                .collect()
        }
    };
    Ok(values)
}

fn numbers<T, F>(
    array: &arrow::array::PrimitiveArray<T>,
    is_null: &dyn Fn(usize) -> bool,
    to_json: F,
) -> Vec<Value>
where
    T: arrow::datatypes::ArrowPrimitiveType,
    F: Fn(T::Native) -> Value,
{
    (0..array.len())
        .map(|i| {
            if is_null(i) {
                Value::Null
            } else {
                to_json(array.value(i))
            }
        })
        .collect()
}

fn strings<'a>(
    len: usize,
    is_null: &dyn Fn(usize) -> bool,
    value: impl Fn(usize) -> &'a str,
) -> Vec<Value> {
    (0..len)
        .map(|i| {
            if is_null(i) {
                Value::Null
            } else {
                Value::String(value(i).to_string())
            }
        })
        .collect()
}

fn nested(
    len: usize,
    is_null: &dyn Fn(usize) -> bool,
    value: impl Fn(usize) -> Result<Value, ArrowError>,
) -> Result<Vec<Value>, ArrowError> {
    (0..len)
        .map(|i| {
            if is_null(i) {
                Ok(Value::Null)
            } else {
                value(i)
            }
        })
        .collect()
}

fn float(v: f64) -> Value {
    match serde_json::Number::from_f64(v) {
        Some(n) => Value::Number(n),
        None if v.is_nan() => Value::String("NaN".into()),
        None if v > 0.0 => Value::String("Infinity".into()),
        None => Value::String("-Infinity".into()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{
        BooleanArray, DictionaryArray, Float64Array, Int64Array, ListArray, StringArray,
        StructArray, TimestampMillisecondArray, TimestampNanosecondArray,
    };
    use arrow::datatypes::{Field, Int32Type};
    use serde_json::json;

    use super::*;

    #[test]
    fn renders_scalars() {
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                "t",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                true,
            ),
            Field::new("n", DataType::Int64, true),
            Field::new("f", DataType::Float64, true),
            Field::new("s", DataType::Utf8, true),
            Field::new("b", DataType::Boolean, true),
            Field::new("ns", DataType::Timestamp(TimeUnit::Nanosecond, None), true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(
                    TimestampMillisecondArray::from(vec![
                        Some(1_714_564_800_000),
                        Some(1_714_564_800_250),
                        None,
                    ])
                    .with_timezone("UTC"),
                ),
                Arc::new(Int64Array::from(vec![Some(1), None, Some(-3)])),
                Arc::new(Float64Array::from(vec![Some(0.25), Some(f64::NAN), None])),
                Arc::new(StringArray::from(vec![Some("a"), None, Some("c")])),
                Arc::new(BooleanArray::from(vec![Some(true), Some(false), None])),
                Arc::new(TimestampNanosecondArray::from(vec![Some(1), None, None])),
            ],
        )
        .unwrap();
        let result = batches_to_json(&schema, &[batch], 10).unwrap();
        assert!(!result.truncated);
        assert_eq!(result.row_count, 3);
        assert_eq!(
            result.columns[1],
            JsonColumn {
                name: "n".into(),
                data_type: "Int64".into(),
                nullable: true
            }
        );
        assert_eq!(
            result.rows,
            vec![
                vec![
                    json!("2024-05-01T12:00:00Z"),
                    json!(1),
                    json!(0.25),
                    json!("a"),
                    json!(true),
                    json!("1970-01-01T00:00:00.000000001Z")
                ],
                vec![
                    json!("2024-05-01T12:00:00.250Z"),
                    json!(null),
                    json!("NaN"),
                    json!(null),
                    json!(false),
                    json!(null)
                ],
                vec![
                    json!(null),
                    json!(-3),
                    json!(null),
                    json!("c"),
                    json!(null),
                    json!(null)
                ],
            ]
        );
    }

    #[test]
    fn renders_nested_and_dictionary_values() {
        let list = ListArray::from_iter_primitive::<Int64Type, _, _>(vec![
            Some(vec![Some(1), None]),
            None,
        ]);
        let strukt = StructArray::from(vec![(
            Arc::new(Field::new("x", DataType::Int64, true)),
            Arc::new(Int64Array::from(vec![Some(7), None])) as ArrayRef,
        )]);
        let dict: DictionaryArray<Int32Type> = vec![Some("p"), None].into_iter().collect();
        assert_eq!(
            render(&(Arc::new(list) as ArrayRef)).unwrap(),
            vec![json!([1, null]), json!(null)]
        );
        assert_eq!(
            render(&(Arc::new(strukt) as ArrayRef)).unwrap(),
            vec![json!({"x": 7}), json!({"x": null})]
        );
        assert_eq!(
            render(&(Arc::new(dict) as ArrayRef)).unwrap(),
            vec![json!("p"), json!(null)]
        );
    }

    #[test]
    fn stops_at_the_row_limit() {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let batch = |from: i64| {
            RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(Int64Array::from_iter_values(from..from + 3))],
            )
            .unwrap()
        };
        let result = batches_to_json(&schema, &[batch(0), batch(3)], 4).unwrap();
        assert!(result.truncated);
        assert_eq!(
            result.rows,
            vec![
                vec![json!(0)],
                vec![json!(1)],
                vec![json!(2)],
                vec![json!(3)]
            ]
        );
        let exact = batches_to_json(&schema, &[batch(0)], 3).unwrap();
        assert!(!exact.truncated);
        assert_eq!(exact.row_count, 3);
    }
}
