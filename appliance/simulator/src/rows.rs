//! Column builders for each table, finished into record batches with the wire schema.

use std::mem::take;
use std::sync::Arc;

use std::ops::Range;

use arrow::array::{
    ArrayRef, ArrowPrimitiveType, BooleanBuilder, Float64Array, Float64Builder, Int64Array,
    Int64Builder, PrimitiveArray, StringArray, StringBuilder, TimestampMillisecondArray,
    TimestampMillisecondBuilder,
};
use arrow::buffer::{Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::ArrowNativeType;
use arrow::datatypes::{Float64Type, Int64Type};
use arrow::record_batch::RecordBatch;
use tally_wire::Table;

use crate::model::Sample;
use crate::topology::{ContainerSpec, Node};

/// A string builder for `rows` values of about `bytes` bytes each.
fn sb(rows: usize, bytes: usize) -> StringBuilder {
    StringBuilder::with_capacity(rows, rows * bytes)
}

fn ts(v: Vec<i64>) -> ArrayRef {
    Arc::new(TimestampMillisecondArray::from(v).with_timezone("UTC"))
}

fn string(b: &mut StringBuilder) -> ArrayRef {
    Arc::new(b.finish())
}

fn f64s(b: &mut Float64Builder) -> ArrayRef {
    Arc::new(b.finish())
}

fn i64s(b: &mut Int64Builder) -> ArrayRef {
    Arc::new(b.finish())
}

pub(crate) fn batch(table: Table, columns: Vec<ArrayRef>) -> RecordBatch {
    RecordBatch::try_new(table.schema(), columns)
        .unwrap_or_else(|e| panic!("simulated {table} batch does not match its schema: {e}"))
}

/// A Utf8 column built from plain vectors.
#[derive(Debug, Default)]
pub(crate) struct StrCol {
    offsets: Vec<i32>,
    values: Vec<u8>,
}

impl StrCol {
    fn with_capacity(rows: usize, bytes: usize) -> Self {
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0);
        StrCol {
            offsets,
            values: Vec::with_capacity(rows * bytes),
        }
    }

    #[inline]
    fn push(&mut self, s: &str) {
        self.values.extend_from_slice(s.as_bytes());
        self.offsets.push(self.values.len() as i32);
    }

    /// Appends the template's values `range` with one copy.
    fn extend(&mut self, t: &StrTemplate, range: Range<usize>) {
        if range.is_empty() {
            return;
        }
        let from = if range.start == 0 {
            0
        } else {
            t.ends[range.start - 1]
        };
        let to = t.ends[range.end - 1];
        let base = self.values.len() as i64 - i64::from(from);
        self.values
            .extend_from_slice(&t.values[from as usize..to as usize]);
        self.offsets
            .extend(t.ends[range].iter().map(|&e| (i64::from(e) + base) as i32));
    }

    fn finish(self) -> ArrayRef {
        // The values are whole `&str`s laid end to end, so the offsets are monotonic and on
        // character boundaries; `new` still checks both.
        Arc::new(StringArray::new(
            OffsetBuffer::new(ScalarBuffer::from(self.offsets)),
            Buffer::from_vec(self.values),
            None,
        ))
    }
}

/// The values of one string column for a run of series, laid end to end.
#[derive(Debug, Default)]
pub(crate) struct StrTemplate {
    values: Vec<u8>,
    ends: Vec<u32>,
}

impl StrTemplate {
    fn push(&mut self, s: &str) {
        self.values.extend_from_slice(s.as_bytes());
        self.ends
            .push(u32::try_from(self.values.len()).expect("template under 4 GiB"));
    }
}

/// A nullable primitive column built from plain vectors.
#[derive(Debug, Default)]
pub(crate) struct OptCol<T> {
    values: Vec<T>,
    valid: Vec<bool>,
}

impl<T: ArrowNativeType + Default> OptCol<T> {
    fn with_capacity(rows: usize) -> Self {
        OptCol {
            values: Vec::with_capacity(rows),
            valid: Vec::with_capacity(rows),
        }
    }

    #[inline]
    fn push(&mut self, v: Option<T>) {
        self.values.push(v.unwrap_or_default());
        self.valid.push(v.is_some());
    }

    fn extend(&mut self, t: &OptCol<T>, range: Range<usize>) {
        self.values.extend_from_slice(&t.values[range.clone()]);
        self.valid.extend_from_slice(&t.valid[range]);
    }

    fn finish<P: ArrowPrimitiveType<Native = T>>(self) -> ArrayRef {
        let nulls = (!self.valid.iter().all(|v| *v)).then(|| NullBuffer::from(self.valid));
        Arc::new(PrimitiveArray::<P>::new(
            ScalarBuffer::from(self.values),
            nulls,
        ))
    }
}

/// The constant columns of the long-running series (in series order): they are the same at
/// every sample time, so the hot loop copies them in bulk instead of row by row.
#[derive(Debug, Default)]
pub(crate) struct Templates {
    strings: [StrTemplate; 6],
    cpu_request: OptCol<f64>,
    cpu_limit: OptCol<f64>,
    mem_request: OptCol<i64>,
    mem_limit: OptCol<i64>,
}

impl Templates {
    /// `rows`: for each series, its six names (namespace, pod, container, node, workload kind,
    /// workload name) and its container spec.
    pub(crate) fn build<'a>(rows: impl Iterator<Item = ([&'a str; 6], &'a ContainerSpec)>) -> Self {
        let mut t = Templates::default();
        for (names, spec) in rows {
            for (col, name) in t.strings.iter_mut().zip(names) {
                col.push(name);
            }
            t.cpu_request.push(spec.cpu_request_cores);
            t.cpu_limit.push(spec.cpu_limit_cores);
            t.mem_request.push(spec.memory_request_bytes);
            t.mem_limit.push(spec.memory_limit_bytes);
        }
        t
    }
}

/// `container_usage`, built from plain vectors: this is the hot path.
pub(crate) struct ContainerUsageRows {
    cap: usize,
    time: Vec<i64>,
    /// namespace, pod, container, node, workload kind, workload name
    strings: [StrCol; 6],
    cpu: Vec<f64>,
    working_set: Vec<i64>,
    rss: Vec<i64>,
    throttled: Vec<f64>,
    cpu_request: OptCol<f64>,
    cpu_limit: OptCol<f64>,
    mem_request: OptCol<i64>,
    mem_limit: OptCol<i64>,
    ephemeral: Vec<i64>,
}

impl ContainerUsageRows {
    pub(crate) fn new(cap: usize) -> Self {
        ContainerUsageRows {
            cap,
            time: Vec::with_capacity(cap),
            strings: [16, 40, 16, 28, 12, 24].map(|bytes| StrCol::with_capacity(cap, bytes)),
            cpu: Vec::with_capacity(cap),
            working_set: Vec::with_capacity(cap),
            rss: Vec::with_capacity(cap),
            throttled: Vec::with_capacity(cap),
            cpu_request: OptCol::with_capacity(cap),
            cpu_limit: OptCol::with_capacity(cap),
            mem_request: OptCol::with_capacity(cap),
            mem_limit: OptCol::with_capacity(cap),
            ephemeral: Vec::with_capacity(cap),
        }
    }

    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.cpu.len()
    }

    /// The measured columns of one row; the constant ones come from [`Self::push_names`] or
    /// [`Self::extend_constants`].
    #[inline]
    pub(crate) fn push_sample(&mut self, s: &Sample) {
        self.cpu.push(s.cpu);
        self.working_set.push(s.working_set);
        self.rss.push(s.rss);
        self.throttled.push(s.throttled);
        self.ephemeral.push(s.ephemeral);
    }

    /// The constant columns of one row.
    #[inline]
    pub(crate) fn push_names(&mut self, t: i64, names: [&str; 6], spec: &ContainerSpec) {
        self.time.push(t);
        for (col, name) in self.strings.iter_mut().zip(names) {
            col.push(name);
        }
        self.cpu_request.push(spec.cpu_request_cores);
        self.cpu_limit.push(spec.cpu_limit_cores);
        self.mem_request.push(spec.memory_request_bytes);
        self.mem_limit.push(spec.memory_limit_bytes);
    }

    /// The constant columns of the template's series `range`, all at time `t`.
    pub(crate) fn extend_constants(&mut self, t: i64, tpl: &Templates, range: Range<usize>) {
        self.time
            .extend(std::iter::repeat_n(t, range.end - range.start));
        for (col, template) in self.strings.iter_mut().zip(&tpl.strings) {
            col.extend(template, range.clone());
        }
        self.cpu_request.extend(&tpl.cpu_request, range.clone());
        self.cpu_limit.extend(&tpl.cpu_limit, range.clone());
        self.mem_request.extend(&tpl.mem_request, range.clone());
        self.mem_limit.extend(&tpl.mem_limit, range);
    }

    /// The batch so far; the columns start again with room for a full batch.
    pub(crate) fn finish(&mut self) -> RecordBatch {
        let old = std::mem::replace(self, ContainerUsageRows::new(self.cap));
        let n = old.len();
        debug_assert_eq!(old.time.len(), n);
        let [namespace, pod, container, node, kind, workload] = old.strings;
        let columns: Vec<ArrayRef> = vec![
            ts(old.time),
            namespace.finish(),
            pod.finish(),
            container.finish(),
            node.finish(),
            kind.finish(),
            workload.finish(),
            Arc::new(Float64Array::from(old.cpu)),
            Arc::new(Int64Array::from(old.working_set)),
            Arc::new(Int64Array::from(old.rss)),
            Arc::new(Float64Array::from(old.throttled)),
            old.cpu_request.finish::<Float64Type>(),
            old.cpu_limit.finish::<Float64Type>(),
            old.mem_request.finish::<Int64Type>(),
            old.mem_limit.finish::<Int64Type>(),
            Arc::new(Float64Array::new_null(n)),
            Arc::new(Int64Array::new_null(n)),
            Arc::new(Int64Array::from(old.ephemeral)),
        ];
        batch(Table::ContainerUsage, columns)
    }
}

pub(crate) struct NodeUsageRows {
    cap: usize,
    time: Vec<i64>,
    node: StringBuilder,
    node_group: StringBuilder,
    zone: StringBuilder,
    region: StringBuilder,
    instance_type: StringBuilder,
    capacity_type: StringBuilder,
    cpu: Float64Builder,
    memory: Int64Builder,
    cpu_capacity: Float64Builder,
    memory_capacity: Int64Builder,
    cpu_allocatable: Float64Builder,
    memory_allocatable: Int64Builder,
    rx: Int64Builder,
    tx: Int64Builder,
    fs: Int64Builder,
    labels: StringBuilder,
    taints: StringBuilder,
}

impl NodeUsageRows {
    pub(crate) fn new(cap: usize) -> Self {
        NodeUsageRows {
            cap,
            time: Vec::with_capacity(cap),
            node: sb(cap, 28),
            node_group: sb(cap, 8),
            zone: sb(cap, 11),
            region: sb(cap, 10),
            instance_type: sb(cap, 11),
            capacity_type: sb(cap, 9),
            cpu: Float64Builder::with_capacity(cap),
            memory: Int64Builder::with_capacity(cap),
            cpu_capacity: Float64Builder::with_capacity(cap),
            memory_capacity: Int64Builder::with_capacity(cap),
            cpu_allocatable: Float64Builder::with_capacity(cap),
            memory_allocatable: Int64Builder::with_capacity(cap),
            rx: Int64Builder::with_capacity(cap),
            tx: Int64Builder::with_capacity(cap),
            fs: Int64Builder::with_capacity(cap),
            labels: sb(cap, 300),
            taints: sb(cap, 2),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.time.len()
    }

    /// `network`: (rx, tx) bytes in the window, if known.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn push(
        &mut self,
        t: i64,
        n: &Node,
        region: &str,
        cpu: f64,
        memory: i64,
        network: Option<(i64, i64)>,
        fs: i64,
    ) {
        self.time.push(t);
        self.node.append_value(&n.name);
        self.node_group.append_value(n.node_group);
        self.zone.append_value(&n.zone);
        self.region.append_value(region);
        self.instance_type.append_value(n.instance_type.name);
        self.capacity_type.append_value(n.capacity_type);
        self.cpu.append_value(cpu);
        self.memory.append_value(memory);
        self.cpu_capacity.append_value(n.cpu_capacity_cores);
        self.memory_capacity.append_value(n.memory_capacity_bytes);
        self.cpu_allocatable.append_value(n.cpu_allocatable_cores);
        self.memory_allocatable
            .append_value(n.memory_allocatable_bytes);
        self.rx.append_option(network.map(|x| x.0));
        self.tx.append_option(network.map(|x| x.1));
        self.fs.append_value(fs);
        self.labels.append_value(&n.labels);
        self.taints.append_value(&n.taints);
    }

    pub(crate) fn finish(&mut self) -> RecordBatch {
        let mut old = std::mem::replace(self, NodeUsageRows::new(self.cap));
        batch(
            Table::NodeUsage,
            vec![
                ts(take(&mut old.time)),
                string(&mut old.node),
                string(&mut old.node_group),
                string(&mut old.zone),
                string(&mut old.region),
                string(&mut old.instance_type),
                string(&mut old.capacity_type),
                f64s(&mut old.cpu),
                i64s(&mut old.memory),
                f64s(&mut old.cpu_capacity),
                i64s(&mut old.memory_capacity),
                f64s(&mut old.cpu_allocatable),
                i64s(&mut old.memory_allocatable),
                i64s(&mut old.rx),
                i64s(&mut old.tx),
                i64s(&mut old.fs),
                string(&mut old.labels),
                string(&mut old.taints),
            ],
        )
    }
}

/// One row of `workloads`.
pub(crate) struct WorkloadRow<'a> {
    pub namespace: &'a str,
    pub kind: &'a str,
    pub name: &'a str,
    pub container: &'a ContainerSpec,
    pub replicas: i64,
    pub hpa: Option<(i64, i64, f64)>,
    pub pdb_max_unavailable: Option<i64>,
    pub labels: &'a str,
}

#[derive(Default)]
pub(crate) struct WorkloadRows {
    time: Vec<i64>,
    namespace: StringBuilder,
    kind: StringBuilder,
    name: StringBuilder,
    container: StringBuilder,
    replicas: Int64Builder,
    cpu_request: Float64Builder,
    cpu_limit: Float64Builder,
    mem_request: Int64Builder,
    mem_limit: Int64Builder,
    hpa_min: Int64Builder,
    hpa_max: Int64Builder,
    hpa_target: Float64Builder,
    pdb: Int64Builder,
    labels: StringBuilder,
    deleted: BooleanBuilder,
}

impl WorkloadRows {
    pub(crate) fn push(&mut self, t: i64, r: WorkloadRow<'_>) {
        self.time.push(t);
        self.namespace.append_value(r.namespace);
        self.kind.append_value(r.kind);
        self.name.append_value(r.name);
        self.container.append_value(&r.container.name);
        self.replicas.append_value(r.replicas);
        self.cpu_request
            .append_option(r.container.cpu_request_cores);
        self.cpu_limit.append_option(r.container.cpu_limit_cores);
        self.mem_request
            .append_option(r.container.memory_request_bytes);
        self.mem_limit.append_option(r.container.memory_limit_bytes);
        self.hpa_min.append_option(r.hpa.map(|h| h.0));
        self.hpa_max.append_option(r.hpa.map(|h| h.1));
        self.hpa_target.append_option(r.hpa.map(|h| h.2));
        self.pdb.append_option(r.pdb_max_unavailable);
        self.labels.append_value(r.labels);
        self.deleted.append_value(false);
    }

    pub(crate) fn finish(&mut self) -> RecordBatch {
        batch(
            Table::Workloads,
            vec![
                ts(take(&mut self.time)),
                string(&mut self.namespace),
                string(&mut self.kind),
                string(&mut self.name),
                string(&mut self.container),
                i64s(&mut self.replicas),
                f64s(&mut self.cpu_request),
                f64s(&mut self.cpu_limit),
                i64s(&mut self.mem_request),
                i64s(&mut self.mem_limit),
                i64s(&mut self.hpa_min),
                i64s(&mut self.hpa_max),
                f64s(&mut self.hpa_target),
                i64s(&mut self.pdb),
                string(&mut self.labels),
                Arc::new(self.deleted.finish()),
            ],
        )
    }
}

/// One row of `pods`.
pub(crate) struct PodRow<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub node: &'a str,
    pub phase: &'a str,
    pub kind: &'a str,
    pub workload: &'a str,
    pub qos_class: &'a str,
    pub ip: &'a str,
    pub labels: &'a str,
    pub start_time: i64,
    pub deleted: bool,
    pub cpu_request_cores: f64,
    pub memory_request_bytes: i64,
    pub scheduling: &'a str,
}

pub(crate) struct PodRows {
    time: Vec<i64>,
    namespace: StringBuilder,
    name: StringBuilder,
    node: StringBuilder,
    phase: StringBuilder,
    kind: StringBuilder,
    workload: StringBuilder,
    qos: StringBuilder,
    ip: StringBuilder,
    labels: StringBuilder,
    start: TimestampMillisecondBuilder,
    deleted: BooleanBuilder,
    cpu_request: Float64Builder,
    memory_request: Int64Builder,
    scheduling: StringBuilder,
}

impl Default for PodRows {
    fn default() -> Self {
        PodRows {
            time: Vec::new(),
            namespace: StringBuilder::new(),
            name: StringBuilder::new(),
            node: StringBuilder::new(),
            phase: StringBuilder::new(),
            kind: StringBuilder::new(),
            workload: StringBuilder::new(),
            qos: StringBuilder::new(),
            ip: StringBuilder::new(),
            labels: StringBuilder::new(),
            start: TimestampMillisecondBuilder::new().with_timezone("UTC"),
            deleted: BooleanBuilder::new(),
            cpu_request: Float64Builder::new(),
            memory_request: Int64Builder::new(),
            scheduling: StringBuilder::new(),
        }
    }
}

impl PodRows {
    pub(crate) fn len(&self) -> usize {
        self.time.len()
    }

    pub(crate) fn push(&mut self, t: i64, r: PodRow<'_>) {
        self.time.push(t);
        self.namespace.append_value(r.namespace);
        self.name.append_value(r.name);
        self.node.append_value(r.node);
        self.phase.append_value(r.phase);
        self.kind.append_value(r.kind);
        self.workload.append_value(r.workload);
        self.qos.append_value(r.qos_class);
        self.ip.append_value(r.ip);
        self.labels.append_value(r.labels);
        self.start.append_value(r.start_time);
        self.deleted.append_value(r.deleted);
        self.cpu_request.append_value(r.cpu_request_cores);
        self.memory_request.append_value(r.memory_request_bytes);
        self.scheduling.append_value(r.scheduling);
    }

    pub(crate) fn finish(&mut self) -> RecordBatch {
        batch(
            Table::Pods,
            vec![
                ts(take(&mut self.time)),
                string(&mut self.namespace),
                string(&mut self.name),
                string(&mut self.node),
                string(&mut self.phase),
                string(&mut self.kind),
                string(&mut self.workload),
                string(&mut self.qos),
                string(&mut self.ip),
                string(&mut self.labels),
                Arc::new(self.start.finish()),
                Arc::new(self.deleted.finish()),
                f64s(&mut self.cpu_request),
                i64s(&mut self.memory_request),
                string(&mut self.scheduling),
            ],
        )
    }
}

/// One row of `events`.
pub(crate) struct EventRow<'a> {
    pub namespace: &'a str,
    pub pod: &'a str,
    pub container: &'a str,
    pub node: &'a str,
    pub kind: &'a str,
    pub workload: &'a str,
    pub reason: &'a str,
    pub message: &'a str,
    pub memory_limit_bytes: Option<i64>,
    pub restart_count: i64,
}

#[derive(Default)]
pub(crate) struct EventRows {
    time: Vec<i64>,
    namespace: StringBuilder,
    pod: StringBuilder,
    container: StringBuilder,
    node: StringBuilder,
    kind: StringBuilder,
    workload: StringBuilder,
    reason: StringBuilder,
    message: StringBuilder,
    memory_limit: Int64Builder,
    restarts: Int64Builder,
}

impl EventRows {
    pub(crate) fn len(&self) -> usize {
        self.time.len()
    }

    pub(crate) fn push(&mut self, t: i64, r: EventRow<'_>) {
        self.time.push(t);
        self.namespace.append_value(r.namespace);
        self.pod.append_value(r.pod);
        self.container.append_value(r.container);
        self.node.append_value(r.node);
        self.kind.append_value(r.kind);
        self.workload.append_value(r.workload);
        self.reason.append_value(r.reason);
        self.message.append_value(r.message);
        self.memory_limit.append_option(r.memory_limit_bytes);
        self.restarts.append_value(r.restart_count);
    }

    pub(crate) fn finish(&mut self) -> RecordBatch {
        batch(
            Table::Events,
            vec![
                ts(take(&mut self.time)),
                string(&mut self.namespace),
                string(&mut self.pod),
                string(&mut self.container),
                string(&mut self.node),
                string(&mut self.kind),
                string(&mut self.workload),
                string(&mut self.reason),
                string(&mut self.message),
                i64s(&mut self.memory_limit),
                i64s(&mut self.restarts),
            ],
        )
    }
}

/// The constant columns of every flow series (in flow order).
#[derive(Debug, Default)]
pub(crate) struct FlowTemplates {
    /// node, src_ip, dst_ip, protocol, src_namespace, src_pod
    strings: [StrTemplate; 6],
    dst_port: Vec<i64>,
    dst_domain: StrTemplate,
    dst_domain_valid: Vec<bool>,
}

impl FlowTemplates {
    /// `rows`: for each flow, its six names, destination port and destination name.
    pub(crate) fn build<'a>(
        rows: impl Iterator<Item = ([&'a str; 6], i64, Option<&'a str>)>,
    ) -> Self {
        let mut t = FlowTemplates::default();
        for (names, port, domain) in rows {
            for (col, name) in t.strings.iter_mut().zip(names) {
                col.push(name);
            }
            t.dst_port.push(port);
            t.dst_domain.push(domain.unwrap_or(""));
            t.dst_domain_valid.push(domain.is_some());
        }
        t
    }
}

/// `network_flows`: measured columns row by row, constant ones copied in runs.
pub(crate) struct FlowRows {
    cap: usize,
    time: Vec<i64>,
    window: Vec<i64>,
    strings: [StrCol; 6],
    dst_port: Vec<i64>,
    dst_domain: StrCol,
    dst_domain_valid: Vec<bool>,
    tx: Vec<i64>,
    rx: Vec<i64>,
    tx_packets: Vec<i64>,
    rx_packets: Vec<i64>,
}

impl FlowRows {
    pub(crate) fn new(cap: usize) -> Self {
        FlowRows {
            cap,
            time: Vec::with_capacity(cap),
            window: Vec::with_capacity(cap),
            strings: [28, 12, 12, 3, 16, 40].map(|bytes| StrCol::with_capacity(cap, bytes)),
            dst_port: Vec::with_capacity(cap),
            dst_domain: StrCol::with_capacity(cap, 40),
            dst_domain_valid: Vec::with_capacity(cap),
            tx: Vec::with_capacity(cap),
            rx: Vec::with_capacity(cap),
            tx_packets: Vec::with_capacity(cap),
            rx_packets: Vec::with_capacity(cap),
        }
    }

    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.tx.len()
    }

    /// Bytes and packets (tx, rx, tx packets, rx packets) of one row.
    #[inline]
    pub(crate) fn push_traffic(&mut self, traffic: [i64; 4]) {
        self.tx.push(traffic[0]);
        self.rx.push(traffic[1]);
        self.tx_packets.push(traffic[2]);
        self.rx_packets.push(traffic[3]);
    }

    /// The constant columns of the flows `range`, for the window of `window_seconds` ending
    /// at `t`.
    pub(crate) fn extend_constants(
        &mut self,
        t: i64,
        window_seconds: i64,
        tpl: &FlowTemplates,
        range: Range<usize>,
    ) {
        let n = range.end - range.start;
        self.time.extend(std::iter::repeat_n(t, n));
        self.window.extend(std::iter::repeat_n(window_seconds, n));
        for (col, template) in self.strings.iter_mut().zip(&tpl.strings) {
            col.extend(template, range.clone());
        }
        self.dst_port
            .extend_from_slice(&tpl.dst_port[range.clone()]);
        self.dst_domain.extend(&tpl.dst_domain, range.clone());
        self.dst_domain_valid
            .extend_from_slice(&tpl.dst_domain_valid[range]);
    }

    pub(crate) fn finish(&mut self) -> RecordBatch {
        let old = std::mem::replace(self, FlowRows::new(self.cap));
        let ints = |v: Vec<i64>| -> ArrayRef { Arc::new(Int64Array::from(v)) };
        let [node, src_ip, dst_ip, protocol, src_namespace, src_pod] = old.strings;
        let domain_nulls = NullBuffer::from(old.dst_domain_valid);
        let dst_domain = old.dst_domain.finish();
        let dst_domain = dst_domain
            .to_data()
            .into_builder()
            .nulls(Some(domain_nulls))
            .build()
            .expect("null buffer has one bit per row");
        batch(
            Table::NetworkFlows,
            vec![
                ts(old.time),
                ints(old.window),
                node.finish(),
                src_ip.finish(),
                dst_ip.finish(),
                ints(old.dst_port),
                protocol.finish(),
                src_namespace.finish(),
                src_pod.finish(),
                arrow::array::make_array(dst_domain),
                ints(old.tx),
                ints(old.rx),
                ints(old.tx_packets),
                ints(old.rx_packets),
            ],
        )
    }
}

/// One row of `dns_lookups`.
pub(crate) struct DnsRow<'a> {
    pub node: &'a str,
    pub client_ip: &'a str,
    pub client_namespace: &'a str,
    pub client_pod: &'a str,
    pub query_name: &'a str,
    pub query_type: &'a str,
    pub answers: &'a str,
    pub cname_chain: Option<&'a str>,
    pub ttl_seconds: i64,
}

pub(crate) struct DnsRows {
    cap: usize,
    time: Vec<i64>,
    node: StringBuilder,
    client_ip: StringBuilder,
    client_namespace: StringBuilder,
    client_pod: StringBuilder,
    query_name: StringBuilder,
    query_type: StringBuilder,
    answers: StringBuilder,
    cname_chain: StringBuilder,
    ttl: Int64Builder,
}

impl DnsRows {
    pub(crate) fn new(cap: usize) -> Self {
        DnsRows {
            cap,
            time: Vec::with_capacity(cap),
            node: sb(cap, 28),
            client_ip: sb(cap, 12),
            client_namespace: sb(cap, 16),
            client_pod: sb(cap, 40),
            query_name: sb(cap, 40),
            query_type: sb(cap, 4),
            answers: sb(cap, 30),
            cname_chain: sb(cap, 20),
            ttl: Int64Builder::with_capacity(cap),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.time.len()
    }

    pub(crate) fn push(&mut self, t: i64, r: DnsRow<'_>) {
        self.time.push(t);
        self.node.append_value(r.node);
        self.client_ip.append_value(r.client_ip);
        self.client_namespace.append_value(r.client_namespace);
        self.client_pod.append_value(r.client_pod);
        self.query_name.append_value(r.query_name);
        self.query_type.append_value(r.query_type);
        self.answers.append_value(r.answers);
        self.cname_chain.append_option(r.cname_chain);
        self.ttl.append_value(r.ttl_seconds);
    }

    pub(crate) fn finish(&mut self) -> RecordBatch {
        let mut old = std::mem::replace(self, DnsRows::new(self.cap));
        batch(
            Table::DnsLookups,
            vec![
                ts(take(&mut old.time)),
                string(&mut old.node),
                string(&mut old.client_ip),
                string(&mut old.client_namespace),
                string(&mut old.client_pod),
                string(&mut old.query_name),
                string(&mut old.query_type),
                string(&mut old.answers),
                string(&mut old.cname_chain),
                i64s(&mut old.ttl),
            ],
        )
    }
}
