//! Hourly rollups of `container_usage` into `container_usage_hourly`: per container and hour,
//! the sample count, sum, min and max of CPU and memory, and a log-bucket histogram of each
//! ([`crate::histogram`]). They are derived whenever raw rows are flushed, so one container
//! and hour may have several partial rows until compaction merges them; every query
//! aggregates anyway (`sum(samples)`, `max(cpu_max)`, `cpu_quantile(cpu_histogram, 0.95)`).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int64Array, ListArray, RecordBatch, StringArray,
    StructArray, TimestampMillisecondArray, UInt16Array, UInt32Array,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Float64Type, Int64Type, UInt16Type, UInt32Type};
use tally_wire::{Table, histogram_type};

use crate::StoreError;
use crate::histogram::{CPU, Histogram, MEMORY};
use crate::persist::{hour_of, times};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key<'a> {
    namespace: &'a str,
    pod: &'a str,
    container: &'a str,
    hour_ms: i64,
}

#[derive(Debug, Clone)]
struct Acc<'a> {
    node: &'a str,
    workload_kind: &'a str,
    workload_name: &'a str,
    samples: i64,
    cpu_sum: f64,
    cpu_min: f64,
    cpu_max: f64,
    cpu: Histogram,
    memory_sum: f64,
    memory_min: i64,
    memory_max: i64,
    memory: Histogram,
}

impl<'a> Acc<'a> {
    fn new(node: &'a str, workload_kind: &'a str, workload_name: &'a str) -> Self {
        Self {
            node,
            workload_kind,
            workload_name,
            samples: 0,
            cpu_sum: 0.0,
            cpu_min: f64::INFINITY,
            cpu_max: f64::NEG_INFINITY,
            cpu: Histogram::new(),
            memory_sum: 0.0,
            memory_min: i64::MAX,
            memory_max: i64::MIN,
            memory: Histogram::new(),
        }
    }

    fn merge(&mut self, other: Acc<'a>) {
        self.samples += other.samples;
        self.cpu_sum += other.cpu_sum;
        self.cpu_min = self.cpu_min.min(other.cpu_min);
        self.cpu_max = self.cpu_max.max(other.cpu_max);
        self.cpu.merge(&other.cpu);
        self.memory_sum += other.memory_sum;
        self.memory_min = self.memory_min.min(other.memory_min);
        self.memory_max = self.memory_max.max(other.memory_max);
        self.memory.merge(&other.memory);
        self.node = other.node;
    }
}

fn strings<'a>(batch: &'a RecordBatch, name: &str) -> &'a StringArray {
    batch
        .column_by_name(name)
        .expect("column")
        .as_string::<i32>()
}

/// Rolls raw `container_usage` batches up into `container_usage_hourly` rows.
pub fn from_raw(batches: &[RecordBatch]) -> Result<Option<RecordBatch>, StoreError> {
    let mut groups: BTreeMap<Key, Acc> = BTreeMap::new();
    for batch in batches {
        let t = times(batch);
        let (ns, pod, container) = (
            strings(batch, "namespace"),
            strings(batch, "pod"),
            strings(batch, "container"),
        );
        let (node, kind, name) = (
            strings(batch, "node"),
            strings(batch, "workload_kind"),
            strings(batch, "workload_name"),
        );
        let cpu = batch
            .column_by_name("cpu_cores")
            .unwrap()
            .as_primitive::<Float64Type>();
        let memory = batch
            .column_by_name("memory_working_set_bytes")
            .unwrap()
            .as_primitive::<Int64Type>();
        for row in 0..batch.num_rows() {
            let key = Key {
                namespace: ns.value(row),
                pod: pod.value(row),
                container: container.value(row),
                hour_ms: hour_of(t.value(row)),
            };
            let acc = groups
                .entry(key)
                .or_insert_with(|| Acc::new(node.value(row), kind.value(row), name.value(row)));
            acc.samples += 1;
            if cpu.is_valid(row) {
                let v = cpu.value(row);
                acc.cpu_sum += v;
                acc.cpu_min = acc.cpu_min.min(v);
                acc.cpu_max = acc.cpu_max.max(v);
                acc.cpu.add(&CPU, v);
            }
            if memory.is_valid(row) {
                let v = memory.value(row);
                acc.memory_sum += v as f64;
                acc.memory_min = acc.memory_min.min(v);
                acc.memory_max = acc.memory_max.max(v);
                acc.memory.add(&MEMORY, v as f64);
            }
        }
    }
    build(groups)
}

/// Merges partial rollup rows of the same container and hour (compaction).
pub fn merge(batches: &[RecordBatch]) -> Result<Option<RecordBatch>, StoreError> {
    let mut groups: BTreeMap<Key, Acc> = BTreeMap::new();
    for batch in batches {
        let t = times(batch);
        let (ns, pod, container) = (
            strings(batch, "namespace"),
            strings(batch, "pod"),
            strings(batch, "container"),
        );
        let (node, kind, name) = (
            strings(batch, "node"),
            strings(batch, "workload_kind"),
            strings(batch, "workload_name"),
        );
        let f = |n: &str| {
            batch
                .column_by_name(n)
                .unwrap()
                .as_primitive::<Float64Type>()
                .clone()
        };
        let i = |n: &str| {
            batch
                .column_by_name(n)
                .unwrap()
                .as_primitive::<Int64Type>()
                .clone()
        };
        let (samples, cpu_sum, cpu_min, cpu_max) =
            (i("samples"), f("cpu_sum"), f("cpu_min"), f("cpu_max"));
        let (memory_sum, memory_min, memory_max) =
            (f("memory_sum"), i("memory_min"), i("memory_max"));
        let cpu_h = read_histograms(batch.column_by_name("cpu_histogram").unwrap());
        let memory_h = read_histograms(batch.column_by_name("memory_histogram").unwrap());
        for (row, (cpu, memory)) in cpu_h.into_iter().zip(memory_h).enumerate() {
            let part = Acc {
                node: node.value(row),
                workload_kind: kind.value(row),
                workload_name: name.value(row),
                samples: samples.value(row),
                cpu_sum: cpu_sum.value(row),
                cpu_min: cpu_min.value(row),
                cpu_max: cpu_max.value(row),
                cpu,
                memory_sum: memory_sum.value(row),
                memory_min: memory_min.value(row),
                memory_max: memory_max.value(row),
                memory,
            };
            let key = Key {
                namespace: ns.value(row),
                pod: pod.value(row),
                container: container.value(row),
                hour_ms: t.value(row),
            };
            match groups.get_mut(&key) {
                Some(acc) => acc.merge(part),
                None => {
                    groups.insert(key, part);
                }
            }
        }
    }
    build(groups)
}

/// Decodes a histogram column into one [`Histogram`] per row.
pub fn read_histograms(column: &ArrayRef) -> Vec<Histogram> {
    let list = column.as_list::<i32>();
    let entries = list.values().as_struct();
    let buckets = entries.column(0).as_primitive::<UInt16Type>();
    let counts = entries.column(1).as_primitive::<UInt32Type>();
    let offsets = list.value_offsets();
    (0..list.len())
        .map(|row| {
            let mut h = Histogram::new();
            if list.is_valid(row) {
                for i in offsets[row] as usize..offsets[row + 1] as usize {
                    h.add_count(buckets.value(i), u64::from(counts.value(i)));
                }
            }
            h
        })
        .collect()
}

/// Encodes histograms as the rollup's `List<Struct<bucket, count>>` column.
pub fn histogram_column<'a>(histograms: impl Iterator<Item = &'a Histogram>) -> ArrayRef {
    let mut offsets = vec![0i32];
    let mut buckets = Vec::new();
    let mut counts = Vec::new();
    for h in histograms {
        for (bucket, count) in h.entries() {
            buckets.push(bucket);
            counts.push(u32::try_from(count).unwrap_or(u32::MAX));
        }
        offsets.push(buckets.len() as i32);
    }
    let DataType::List(item) = histogram_type() else {
        unreachable!()
    };
    let DataType::Struct(fields) = item.data_type().clone() else {
        unreachable!()
    };
    let entries = StructArray::new(
        fields,
        vec![
            Arc::new(UInt16Array::from(buckets)),
            Arc::new(UInt32Array::from(counts)),
        ],
        None,
    );
    Arc::new(ListArray::new(
        item,
        OffsetBuffer::new(offsets.into()),
        Arc::new(entries),
        None,
    ))
}

fn text<'a>(values: impl Iterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(values))
}

fn build(groups: BTreeMap<Key<'_>, Acc<'_>>) -> Result<Option<RecordBatch>, StoreError> {
    if groups.is_empty() {
        return Ok(None);
    }
    let fin = |v: f64| if v.is_finite() { v } else { 0.0 };
    let fin_i = |v: i64| if v == i64::MAX || v == i64::MIN { 0 } else { v };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(
            TimestampMillisecondArray::from_iter_values(groups.keys().map(|k| k.hour_ms))
                .with_timezone("UTC"),
        ),
        text(groups.keys().map(|k| k.namespace)),
        text(groups.keys().map(|k| k.pod)),
        text(groups.keys().map(|k| k.container)),
        text(groups.values().map(|a| a.node)),
        text(groups.values().map(|a| a.workload_kind)),
        text(groups.values().map(|a| a.workload_name)),
        Arc::new(Int64Array::from_iter_values(
            groups.values().map(|a| a.samples),
        )),
        Arc::new(Float64Array::from_iter_values(
            groups.values().map(|a| a.cpu_sum),
        )),
        Arc::new(Float64Array::from_iter_values(
            groups.values().map(|a| fin(a.cpu_min)),
        )),
        Arc::new(Float64Array::from_iter_values(
            groups.values().map(|a| fin(a.cpu_max)),
        )),
        histogram_column(groups.values().map(|a| &a.cpu)),
        Arc::new(Float64Array::from_iter_values(
            groups.values().map(|a| a.memory_sum),
        )),
        Arc::new(Int64Array::from_iter_values(
            groups.values().map(|a| fin_i(a.memory_min)),
        )),
        Arc::new(Int64Array::from_iter_values(
            groups.values().map(|a| fin_i(a.memory_max)),
        )),
        histogram_column(groups.values().map(|a| &a.memory)),
    ];
    Ok(Some(RecordBatch::try_new(
        Table::ContainerUsageHourly.schema(),
        columns,
    )?))
}
