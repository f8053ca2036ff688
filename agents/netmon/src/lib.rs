//! The node network agent (`tally-agent netmon`, a DaemonSet with hostNetwork): counts the
//! bytes and packets of every flow from a local pod, traces DNS answers, and sends both to the
//! appliance every minute as Arrow batches of `network_flows` and `dns_lookups`.
//!
//! The pieces, each in its own module:
//! - [`ct`]: conntrack mode (default), the kernel's connection table over netlink;
//! - [`bpf`]: eBPF mode and DNS capture, cgroup_skb programs from `ebpf/` loaded with aya;
//! - [`flows`]: reset-aware delta accounting with bounded memory;
//! - [`dns`]: the DNS response parser; [`domains`]: IP → domain with a TTL;
//! - [`pods`]: IP → local pod, fed by a kube watcher on this node's pods;
//! - [`output`]: the Arrow batches.
//!
//! Classification and pricing happen in the appliance, which sees the whole cluster
//! (`queries/network_*.sql`).
//!
//! The batches reach the appliance like every agent's: the connection flags are
//! `tally_wire::agent::ApplianceArgs` (in a DaemonSet, the pod's ServiceAccount token buys a
//! client certificate at the appliance's bootstrap endpoint) and `tally_wire::link` renews
//! the certificate and reconnects. Batches that cannot be sent wait for the next flush,
//! bounded by rows.

pub mod bpf;
pub mod ct;
pub mod ctdump;
pub mod dns;
pub mod domains;
pub mod flows;
pub mod output;
pub mod pods;

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, mpsc};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use tally_wire::Table;
use tally_wire::agent::{ApplianceArgs, CredentialsError};
use tally_wire::link::IngestLink;

use crate::bpf::{BpfFeatures, BpfPrograms};
use crate::domains::DomainMap;
use crate::flows::{FlowTable, Limits};
use crate::output::{DnsRow, FlowRow};
use crate::pods::PodIndex;

/// Why the agent cannot run.
#[derive(Debug, thiserror::Error)]
pub enum NetmonError {
    #[error("conntrack: {0}")]
    Conntrack(String),
    #[error("eBPF: {0}")]
    Bpf(String),
    #[error("network namespace: {0}")]
    Netns(String),
    #[error("Kubernetes: {0}")]
    Kubernetes(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error("building a batch: {0}")]
    Batch(#[from] arrow::error::ArrowError),
}

/// How flows are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// The kernel's conntrack table over netlink (needs CAP_NET_ADMIN in the host network
    /// namespace).
    Conntrack,
    /// cgroup_skb eBPF programs on the cgroup v2 hierarchy (needs CAP_BPF or root); falls back
    /// to conntrack when the programs cannot load.
    Ebpf,
}

/// `tally-agent netmon`: the node network agent.
#[derive(Debug, Clone, clap::Args)]
pub struct NetmonArgs {
    /// How to reach the appliance: the same flags as every agent (`--appliance`,
    /// `--bootstrap-url` with `--appliance-ca` and `--token-file`, or `--tls-cert` and
    /// `--tls-key`, or `--insecure`).
    #[command(flatten)]
    pub connection: ApplianceArgs,

    /// This node's name: written in every row, and the pods watched are the ones scheduled
    /// here (set it from the downward API, `spec.nodeName`).
    #[arg(long, env = "NODE_NAME")]
    pub node: String,

    /// How flows are counted.
    #[arg(long, value_enum, default_value = "conntrack")]
    pub mode: Mode,

    /// How often the counters are read.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub poll_interval: Duration,

    /// How often the traffic since the last flush is sent to the appliance.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub flush_interval: Duration,

    /// eBPF mode: a flow whose counters have not moved for this long is deleted from the
    /// kernel map (conntrack entries expire by themselves).
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// How long a DNS answer names an address in `network_flows.dst_domain`, from the last
    /// answer that named it.
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    pub domain_ttl: Duration,

    /// Flows kept per flush window; traffic of further flows in the window is dropped and
    /// counted in the log (bounds memory whatever the traffic).
    #[arg(long, default_value_t = 50_000)]
    pub max_flows: usize,

    /// Counter entries (connections, eBPF keys) remembered between polls.
    #[arg(long, default_value_t = 262_144)]
    pub max_entries: usize,

    /// DNS lookups kept per flush window (identical lookups count once).
    #[arg(long, default_value_t = 10_000)]
    pub max_dns_lookups: usize,

    /// Addresses remembered with their domain.
    #[arg(long, default_value_t = 65_536)]
    pub max_domains: usize,

    /// The cgroup v2 directory the eBPF programs attach to (default: the root of the cgroup2
    /// mount found in /proc/mounts, which covers every pod).
    #[arg(long)]
    pub cgroup: Option<PathBuf>,

    /// Do not trace DNS (no `dns_lookups`, no `dst_domain`).
    #[arg(long)]
    pub no_dns: bool,

    /// Do not watch pods: report every flow and lookup, without pod names (outside a cluster).
    #[arg(long)]
    pub no_kubernetes: bool,

    /// Read conntrack in the network namespace at this path (`/var/run/netns/NAME` or
    /// `/proc/PID/ns/net`) instead of the agent's own.
    #[arg(long)]
    pub netns: Option<PathBuf>,
}

/// Parses `500ms`, `5s`, `2m`, `1h` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 500ms, 5s, 2m or 1h"))?;
    let duration = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => {
            return Err(format!(
                "`{text}`: unknown unit `{unit}` (use ms, s, m or h)"
            ));
        }
    };
    if duration.is_zero() {
        return Err(format!("`{text}`: the duration must be positive"));
    }
    Ok(duration)
}

/// What the counting and DNS threads share with the flusher.
struct Shared {
    flows: Mutex<FlowTable>,
    dns: Mutex<DnsState>,
    pods: Option<Arc<RwLock<PodIndex>>>,
    stop: AtomicBool,
}

struct DnsState {
    domains: DomainMap,
    rows: Vec<DnsRow>,
    seen: HashSet<(IpAddr, String, String, String)>,
    max_rows: usize,
    dropped: usize,
    rejected: usize,
}

impl Shared {
    fn pod_of(&self, ip: &IpAddr) -> Option<Option<pods::PodRef>> {
        match &self.pods {
            None => Some(None),
            Some(index) => index
                .read()
                .expect("pod index lock")
                .lookup(ip)
                .cloned()
                .map(Some),
        }
    }

    /// Parses one captured DNS response into a lookup and the domain map.
    fn record_dns(&self, client: IpAddr, message: &[u8], now_ms: i64) {
        let parsed = dns::parse_response(message);
        let mut state = self.dns.lock().expect("dns lock");
        let response = match parsed {
            Ok(r) => r,
            Err(e) => {
                state.rejected += 1;
                tracing::debug!("DNS response to {client} rejected: {e}");
                return;
            }
        };
        if response.addresses.is_empty() {
            return;
        }
        let now = Instant::now();
        for ip in &response.addresses {
            state.domains.learn(*ip, &response.query_name, now);
        }
        let Some(client_pod) = self.pod_of(&client) else {
            return; // not a local pod's lookup
        };
        let answers = response
            .addresses
            .iter()
            .map(IpAddr::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let identity = (
            client,
            response.query_name.clone(),
            response.query_type.clone(),
            answers,
        );
        if state.seen.contains(&identity) {
            return;
        }
        if state.rows.len() >= state.max_rows {
            state.dropped += 1;
            return;
        }
        state.seen.insert(identity);
        state.rows.push(DnsRow {
            time_ms: now_ms,
            client_ip: client,
            client_pod,
            query_name: response.query_name,
            query_type: response.query_type,
            answers: response.addresses,
            cname_chain: response.cname_chain,
            ttl_seconds: response.ttl_seconds,
        });
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Sleeps `total` in small steps, returning early (false) when asked to stop.
fn sleep_unless_stopped(shared: &Shared, total: Duration) -> bool {
    let until = Instant::now() + total;
    while Instant::now() < until {
        if shared.stop.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep((until - Instant::now()).min(Duration::from_millis(50)));
    }
    !shared.stop.load(Ordering::Relaxed)
}

/// The conntrack thread: enters the namespace, turns accounting on, polls until stopped
/// (one last poll after the stop, so the final flush has everything).
fn conntrack_thread(
    shared: Arc<Shared>,
    netns: Option<PathBuf>,
    poll: Duration,
    ready: mpsc::Sender<Result<(), NetmonError>>,
) {
    let setup = || -> Result<ct::ConntrackReader, NetmonError> {
        if let Some(path) = &netns {
            ct::enter_netns(path)?;
        }
        match ct::enable_accounting() {
            Ok(true) => tracing::warn!(
                "nf_conntrack_acct was off: turned it on (connections older than now have no byte counters)"
            ),
            Ok(false) => {}
            Err(e) => tracing::warn!("cannot turn on conntrack accounting: {e}"),
        }
        match ct::enable_timestamps() {
            Ok(true) => tracing::info!("nf_conntrack_timestamp was off: turned it on"),
            Ok(false) => {}
            Err(e) => tracing::warn!("cannot turn on conntrack timestamps: {e}"),
        }
        ct::ConntrackReader::open()
    };
    let reader = match setup() {
        Ok(reader) => {
            let _ = ready.send(Ok(()));
            reader
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    loop {
        let running = sleep_unless_stopped(&shared, poll);
        // Streamed into the table as the dump arrives (no copy of the whole table).
        let polled = reader.dump().and_then(|dump| {
            let mut flows = shared.flows.lock().expect("flows lock");
            flows.try_poll(dump)
        });
        match polled {
            Ok(stats) => {
                if stats.dropped > 0 {
                    tracing::warn!(
                        "{} conntrack readings dropped: --max-entries or --max-flows reached",
                        stats.dropped
                    );
                }
            }
            Err(e) => tracing::warn!("{e}"),
        }
        if !running {
            return;
        }
    }
}

/// The eBPF thread: owns the programs; reads flow counters every poll (eBPF mode) and
/// drains DNS responses every 100 ms.
fn bpf_thread(
    shared: Arc<Shared>,
    cgroup: PathBuf,
    features: BpfFeatures,
    poll: Duration,
    ready: mpsc::Sender<Result<(), NetmonError>>,
) {
    let mut programs = match BpfPrograms::attach(&cgroup, features) {
        Ok(p) => p,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let mut ring = if features.trace_dns {
        match programs.take_dns() {
            Ok(ring) => Some(ring),
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        }
    } else {
        None
    };
    let _ = ready.send(Ok(()));
    let mut next_poll = Instant::now() + poll;
    loop {
        let running = sleep_unless_stopped(&shared, Duration::from_millis(100));
        if let Some(ring) = &mut ring {
            let time = now_ms();
            for event in ring.drain() {
                shared.record_dns(event.client, &event.message, time);
            }
        }
        if features.count_flows && (Instant::now() >= next_poll || !running) {
            next_poll = Instant::now() + poll;
            match programs.read_flows() {
                Ok(readings) => {
                    let mut table = shared.flows.lock().expect("flows lock");
                    let stats = table.poll(readings);
                    let idle = table.take_idle();
                    drop(table);
                    if stats.dropped > 0 {
                        tracing::warn!(
                            "{} eBPF flow readings dropped: limits reached",
                            stats.dropped
                        );
                    }
                    if let Err(e) = programs.forget(&idle) {
                        tracing::warn!("{e}");
                    }
                }
                Err(e) => tracing::warn!("{e}"),
            }
        }
        if !running {
            return;
        }
    }
}

/// Batches that could not be sent yet, oldest first, bounded by rows.
struct Backlog {
    batches: VecDeque<(Table, RecordBatch)>,
    rows: usize,
    max_rows: usize,
}

impl Backlog {
    fn push(&mut self, table: Table, batch: RecordBatch) {
        if batch.num_rows() == 0 {
            return;
        }
        self.rows += batch.num_rows();
        self.batches.push_back((table, batch));
        while self.rows > self.max_rows {
            let Some((table, old)) = self.batches.pop_front() else {
                break;
            };
            self.rows -= old.num_rows();
            tracing::warn!(
                "the appliance is unreachable: dropped {} old rows of {table}",
                old.num_rows()
            );
        }
    }
}

/// Where the batches go.
#[derive(Debug, Clone)]
pub enum Sink {
    /// The appliance at `--appliance`, over Flight `DoPut`, with the client certificate
    /// the connection flags say (renewed at two thirds of its life when bootstrapped).
    Appliance,
    /// A channel, instead of the appliance: for tests and benchmarks that read what the
    /// agent would send.
    Channel(tokio::sync::mpsc::UnboundedSender<(Table, RecordBatch)>),
}

/// Sends the backlog in order; stops at the first failure (kept for the next flush).
async fn send(link: Option<&mut IngestLink>, sink: &Sink, backlog: &mut Backlog) {
    let Some(link) = link else {
        if let Sink::Channel(channel) = sink {
            for (table, batch) in backlog.batches.drain(..) {
                let _ = channel.send((table, batch));
            }
        }
        backlog.rows = 0;
        return;
    };
    while let Some((table, batch)) = backlog.batches.front().cloned() {
        match link.write(table, vec![batch]).await {
            Ok(_) => {
                let (_, sent) = backlog.batches.pop_front().expect("front");
                backlog.rows -= sent.num_rows();
            }
            Err(e) => {
                tracing::warn!("sending {table} to the appliance failed (will retry): {e}");
                return;
            }
        }
    }
}

/// Turns the window's totals into batches: enrich, keep local pods' flows, add domains.
fn take_window(
    shared: &Shared,
    node: &str,
    window: Duration,
) -> Result<Vec<(Table, RecordBatch)>, NetmonError> {
    let flows = shared.flows.lock().expect("flows lock").flush();
    let (dns_rows, domains_snapshot) = {
        let mut state = shared.dns.lock().expect("dns lock");
        let now = Instant::now();
        state.domains.expire(now);
        state.seen.clear();
        if state.dropped > 0 || state.rejected > 0 {
            tracing::info!(
                "DNS: {} lookups over --max-dns-lookups dropped, {} malformed responses rejected",
                state.dropped,
                state.rejected
            );
            state.dropped = 0;
            state.rejected = 0;
        }
        let domains: Vec<Option<String>> = flows
            .iter()
            .map(|(key, _)| state.domains.lookup(&key.dst, now).map(str::to_string))
            .collect();
        (std::mem::take(&mut state.rows), domains)
    };
    let mut rows = Vec::with_capacity(flows.len());
    let mut not_local = 0usize;
    for ((key, counters), dst_domain) in flows.into_iter().zip(domains_snapshot) {
        match shared.pod_of(&key.src) {
            Some(src_pod) => rows.push(FlowRow {
                key,
                counters,
                src_pod,
                dst_domain,
            }),
            None => not_local += 1,
        }
    }
    tracing::debug!(
        "window: {} flows reported, {not_local} not from a local pod",
        rows.len()
    );
    let end = now_ms();
    let window_seconds = window.as_secs_f64().round().max(1.0) as i64;
    let mut batches = Vec::new();
    if !rows.is_empty() {
        batches.push((
            Table::NetworkFlows,
            output::flows_batch(&rows, node, end, window_seconds)?,
        ));
    }
    if !dns_rows.is_empty() {
        batches.push((Table::DnsLookups, output::dns_batch(&dns_rows, node)?));
    }
    Ok(batches)
}

/// Runs the agent until Ctrl-C or SIGTERM, then flushes what it has and returns.
pub async fn run(args: NetmonArgs) -> Result<(), NetmonError> {
    run_until(args, Sink::Appliance, async {
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}

/// Runs the agent until `shutdown` completes, then does a last poll and flush.
pub async fn run_until(
    args: NetmonArgs,
    sink: Sink,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NetmonError> {
    if args.poll_interval > args.flush_interval {
        return Err(NetmonError::Config(format!(
            "--poll-interval ({:?}) must not be longer than --flush-interval ({:?})",
            args.poll_interval, args.flush_interval
        )));
    }
    // The flags are checked (and the CA and certificate files read) before anything starts.
    let mut link = match &sink {
        Sink::Appliance => Some(IngestLink::new(
            args.connection.appliance.clone(),
            args.connection.credentials()?,
        )),
        Sink::Channel(_) => None,
    };
    let pods = if args.no_kubernetes {
        None
    } else {
        let client = kube::Client::try_default().await.map_err(|e| {
            NetmonError::Kubernetes(format!(
                "connecting to the API server: {e} (use --no-kubernetes outside a cluster)"
            ))
        })?;
        let index = Arc::new(RwLock::new(PodIndex::default()));
        tokio::spawn(pods::watch_local_pods(
            client,
            args.node.clone(),
            index.clone(),
        ));
        Some(index)
    };
    let idle = match args.mode {
        Mode::Conntrack => u64::MAX,
        Mode::Ebpf => Limits::new(1, 1, args.poll_interval, args.idle_timeout).idle_polls,
    };
    let limits = Limits {
        max_entries: args.max_entries,
        max_flows: args.max_flows,
        idle_polls: idle,
    };
    let shared = Arc::new(Shared {
        flows: Mutex::new(FlowTable::new(limits)),
        dns: Mutex::new(DnsState {
            domains: DomainMap::new(args.domain_ttl, args.max_domains),
            rows: Vec::new(),
            seen: HashSet::new(),
            max_rows: args.max_dns_lookups,
            dropped: 0,
            rejected: 0,
        }),
        pods,
        stop: AtomicBool::new(false),
    });

    let cgroup = match &args.cgroup {
        Some(path) => Some(path.clone()),
        None if args.mode == Mode::Ebpf || !args.no_dns => match bpf::cgroup2_mount() {
            Ok(path) => Some(path),
            Err(e) => {
                tracing::warn!("{e}");
                None
            }
        },
        None => None,
    };
    let mut threads = Vec::new();
    let spawn_bpf = |features: BpfFeatures| -> Result<std::thread::JoinHandle<()>, NetmonError> {
        let cgroup = cgroup
            .clone()
            .ok_or_else(|| NetmonError::Bpf("no cgroup v2 directory to attach to".into()))?;
        let (tx, rx) = mpsc::channel();
        let shared = shared.clone();
        let poll = args.poll_interval;
        let cg = cgroup.clone();
        let handle = std::thread::Builder::new()
            .name("netmon-bpf".into())
            .spawn(move || bpf_thread(shared, cg, features, poll, tx))
            .map_err(|e| NetmonError::Bpf(format!("starting a thread: {e}")))?;
        match rx.recv() {
            Ok(Ok(())) => {
                tracing::info!(
                    "eBPF programs attached to {} (flows: {}, DNS: {})",
                    cgroup.display(),
                    features.count_flows,
                    features.trace_dns
                );
                Ok(handle)
            }
            Ok(Err(e)) => {
                let _ = handle.join();
                Err(e)
            }
            Err(_) => Err(NetmonError::Bpf("the eBPF thread ended early".into())),
        }
    };
    let mut counting_with_bpf = false;
    if args.mode == Mode::Ebpf {
        match spawn_bpf(BpfFeatures {
            count_flows: true,
            trace_dns: !args.no_dns,
        }) {
            Ok(handle) => {
                threads.push(handle);
                counting_with_bpf = true;
            }
            Err(e) => tracing::warn!("eBPF mode cannot start ({e}); falling back to conntrack"),
        }
        // A fresh map starts empty: every key it gains is new traffic.
        if counting_with_bpf {
            *shared.flows.lock().expect("flows lock") = FlowTable::without_baseline(limits);
        }
    }
    if !counting_with_bpf {
        if !args.no_dns && args.mode == Mode::Conntrack {
            match spawn_bpf(BpfFeatures {
                count_flows: false,
                trace_dns: true,
            }) {
                Ok(handle) => threads.push(handle),
                Err(e) => tracing::warn!("DNS tracing is off: {e}"),
            }
        }
        let (tx, rx) = mpsc::channel();
        let shared2 = shared.clone();
        let netns = args.netns.clone();
        let poll = args.poll_interval;
        let handle = std::thread::Builder::new()
            .name("netmon-conntrack".into())
            .spawn(move || conntrack_thread(shared2, netns, poll, tx))
            .map_err(|e| NetmonError::Conntrack(format!("starting a thread: {e}")))?;
        match rx.recv() {
            Ok(Ok(())) => tracing::info!(
                "counting flows from conntrack every {:?}",
                args.poll_interval
            ),
            Ok(Err(e)) => {
                shared.stop.store(true, Ordering::Relaxed);
                let _ = handle.join();
                for t in threads {
                    let _ = t.join();
                }
                return Err(e);
            }
            Err(_) => {
                return Err(NetmonError::Conntrack(
                    "the conntrack thread ended early".into(),
                ));
            }
        }
        threads.push(handle);
    }

    let mut backlog = Backlog {
        batches: VecDeque::new(),
        rows: 0,
        max_rows: args.max_flows.saturating_mul(4).max(10_000),
    };
    let mut ticker = tokio::time::interval(args.flush_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut window_start = Instant::now();
    tokio::pin!(shutdown);
    loop {
        let stopping = tokio::select! {
            _ = ticker.tick() => false,
            _ = &mut shutdown => true,
        };
        if stopping {
            shared.stop.store(true, Ordering::Relaxed);
            let threads = std::mem::take(&mut threads);
            let joined = tokio::task::spawn_blocking(move || {
                for t in threads {
                    let _ = t.join();
                }
            });
            let _ = joined.await;
        }
        let window = window_start.elapsed();
        window_start = Instant::now();
        for (table, batch) in take_window(&shared, &args.node, window)? {
            backlog.push(table, batch);
        }
        send(link.as_mut(), &sink, &mut backlog).await;
        if stopping {
            if backlog.rows > 0 {
                tracing::warn!(
                    "stopping with {} rows the appliance did not take",
                    backlog.rows
                );
            }
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_refuse_nonsense() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("0s").unwrap_err().contains("positive"));
        assert!(
            parse_duration("5 parsecs")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(
            parse_duration("soon")
                .unwrap_err()
                .contains("not a duration")
        );
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: NetmonArgs,
    }

    #[test]
    fn every_flag_is_documented() {
        use clap::CommandFactory;
        for arg in Cli::command().get_arguments() {
            assert!(arg.get_help().is_some(), "--{} has no help", arg.get_id());
        }
    }

    #[test]
    fn the_connection_flags_are_every_agents() {
        use clap::Parser;
        use tally_wire::agent::Credentials;
        let cli = Cli::try_parse_from([
            "netmon",
            "--appliance",
            "https://tally-appliance.tally.svc:50051",
            "--bootstrap-url",
            "https://tally-appliance.tally.svc:8443",
            "--appliance-ca",
            "/etc/tally/ca/ca.crt",
            "--node",
            "n1",
        ])
        .unwrap();
        let c = &cli.args.connection;
        assert_eq!(
            c.bootstrap_url.as_deref(),
            Some("https://tally-appliance.tally.svc:8443")
        );
        assert_eq!(
            c.token_file,
            PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token"),
            "the ServiceAccount token of the pod by default"
        );
        assert_eq!(cli.args.node, "n1");
        let cli = Cli::try_parse_from([
            "netmon",
            "--appliance",
            "http://127.0.0.1:1",
            "--insecure",
            "--node",
            "n1",
        ])
        .unwrap();
        assert!(matches!(
            cli.args.connection.credentials().unwrap(),
            Credentials::Insecure
        ));
        // TLS without a way to get a certificate is refused with the flags to use.
        let cli =
            Cli::try_parse_from(["netmon", "--appliance", "https://x:1", "--node", "n1"]).unwrap();
        let err = cli.args.connection.credentials().unwrap_err().to_string();
        assert!(err.contains("--bootstrap-url"), "{err}");
        // The old flags are gone, not silently ignored.
        let err = Cli::try_parse_from([
            "netmon",
            "--appliance",
            "https://x:1",
            "--tls-ca",
            "ca.pem",
            "--node",
            "n1",
        ])
        .err()
        .expect("--tls-ca is refused")
        .to_string();
        assert!(err.contains("--tls-ca"), "{err}");
    }

    #[test]
    fn dns_lookups_feed_the_domain_map_and_dedupe() {
        let shared = Shared {
            flows: Mutex::new(FlowTable::new(Limits::new(
                10,
                10,
                Duration::from_secs(1),
                Duration::from_secs(1),
            ))),
            dns: Mutex::new(DnsState {
                domains: DomainMap::new(Duration::from_secs(120), 10),
                rows: Vec::new(),
                seen: HashSet::new(),
                max_rows: 10,
                dropped: 0,
                rejected: 0,
            }),
            pods: None,
            stop: AtomicBool::new(false),
        };
        let client: IpAddr = "10.0.0.2".parse().unwrap();
        let answer: IpAddr = "198.51.100.1".parse().unwrap();
        let message = dns::build::response(
            1,
            "api.example.com",
            1,
            &[dns::build::Answer::Address("api.example.com", answer)],
            60,
        );
        shared.record_dns(client, &message, 1000);
        shared.record_dns(client, &message, 2000);
        shared.record_dns(client, &message[..5], 3000);
        let state = shared.dns.lock().unwrap();
        assert_eq!(
            state.rows.len(),
            1,
            "the same lookup twice in a window counts once"
        );
        assert_eq!(state.rejected, 1);
        assert_eq!(
            state.domains.lookup(&answer, Instant::now()),
            Some("api.example.com")
        );
    }
}
