//! The collector agent: watches workloads, pods, nodes and events with kube informers, scrapes kubelet usage, and sends Arrow batches to the appliance.
//!
//! `tally-agent collector` runs as one Deployment per cluster:
//! - informers (list + watch, resumed with backoff) for pods, Deployments, ReplicaSets,
//!   StatefulSets, DaemonSets, Jobs, CronJobs, HPAs, nodes, PVCs, PVs, namespaces and events,
//!   holding only the fields Tally stores ([`objects`]); CronJob and HPA versions are
//!   discovered (`batch/v1` → `v1beta1`, `autoscaling/v2` → `v2beta2` → `v1`);
//! - changes become `pods`, `workloads` and `events` rows ([`inventory`]);
//! - every `--scrape-interval`, each Ready node's kubelet `/stats/summary` and
//!   `/metrics/cadvisor` are read through the API server's node proxy with bounded
//!   concurrency and become `container_usage` and `node_usage` rows ([`usage`]), with GPU
//!   usage from DCGM exporters when configured ([`dcgm`]);
//! - batches wait in a bounded outbox and are written with Flight `DoPut` over mutual TLS,
//!   with a client certificate obtained from the appliance with the ServiceAccount token
//!   ([`sender`]);
//! - `/healthz`, `/readyz` and `/metrics` on `--listen` ([`health`]).
//!
//! It never reads Secrets, ConfigMaps, environment variable values or anything inside
//! containers; its ClusterRole is `agents/collector/rbac.yaml`.

pub mod batches;
pub mod dcgm;
pub mod health;
pub mod inventory;
pub mod objects;
pub mod sender;
pub mod usage;

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::Request;
use futures::StreamExt;
use kube::core::ApiResource;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event as WatchEvent};
use kube::{Api, Client};
use serde::de::DeserializeOwned;
use tally_wire::Table;
use tokio::sync::watch;

use crate::health::Metrics;
use crate::inventory::{Inventory, Key, Kind, Object};
use crate::sender::{Credentials, Outbox};

/// Flags of `tally-agent collector`.
#[derive(Debug, Clone, clap::Args)]
pub struct CollectorArgs {
    /// How to reach the appliance.
    #[command(flatten)]
    pub connection: tally_wire::agent::ApplianceArgs,
    /// A kubeconfig file (default: in-cluster configuration, or $KUBECONFIG).
    #[arg(long, env = "TALLY_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// How often every node's kubelet is scraped for usage (e.g. 15s).
    #[arg(long, env = "TALLY_SCRAPE_INTERVAL", default_value = "15s", value_parser = parse_duration)]
    pub scrape_interval: Duration,
    /// How many nodes are scraped at the same time.
    #[arg(long, env = "TALLY_SCRAPE_CONCURRENCY", default_value_t = 8)]
    pub scrape_concurrency: usize,
    /// How long one node's scrape may take before it counts as a scrape error.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub scrape_timeout: Duration,
    /// How often changes of pods, workloads and events are sent (e.g. 1s).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub flush_interval: Duration,
    /// How often the state of every pod and workload is sent again in full, so any time
    /// window of the tables holds a complete snapshot.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub snapshot_interval: Duration,
    /// Memory for batches waiting while the appliance is unreachable (bytes; suffixes KiB,
    /// MiB, GiB); beyond it the oldest batches are dropped and counted.
    #[arg(long, env = "TALLY_BUFFER_BYTES", default_value = "64MiB", value_parser = parse_bytes)]
    pub buffer_bytes: usize,
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, env = "TALLY_COLLECTOR_LISTEN", default_value = "0.0.0.0:9090")]
    pub listen: SocketAddr,
    /// A DCGM exporter's metrics URL (repeatable); `file://PATH` reads a recorded page.
    #[arg(
        long = "dcgm-endpoint",
        env = "TALLY_DCGM_ENDPOINTS",
        value_delimiter = ','
    )]
    pub dcgm_endpoints: Vec<String>,
    /// How long to keep trying to deliver buffered batches after SIGTERM.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
}

/// Why the collector could not run.
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    #[error(transparent)]
    Credentials(#[from] tally_wire::agent::CredentialsError),
    #[error("cannot configure the Kubernetes client: {0}")]
    KubeConfig(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Parses `500ms`, `10s`, `5m`, `2h`, `1d` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| {
        format!("`{text}` is not a duration: use a number with ms, s, m, h or d, like 15s")
    })?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86_400.0,
        other => {
            return Err(format!(
                "unknown duration unit `{other}` in `{text}`: use ms, s, m, h or d"
            ));
        }
    };
    if seconds <= 0.0 {
        return Err(format!("`{text}` must be longer than zero"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Parses `64MiB`, `1GiB`, `512KiB` or a number of bytes.
pub fn parse_bytes(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: usize = number.parse().map_err(|_| {
        format!("`{text}` is not a size: use a number with KiB, MiB or GiB, like 64MiB")
    })?;
    let factor = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{text}`: use KiB, MiB or GiB"
            ));
        }
    };
    Ok(value * factor)
}

fn credentials(args: &CollectorArgs) -> Result<Credentials, CollectorError> {
    Ok(args.connection.credentials()?)
}

async fn kube_client(args: &CollectorArgs) -> Result<Client, CollectorError> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| CollectorError::KubeConfig(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|e| CollectorError::KubeConfig(e.to_string()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| CollectorError::KubeConfig(e.to_string()))?,
    };
    Client::try_from(config).map_err(|e| CollectorError::KubeConfig(e.to_string()))
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The first of `versions` of `group` that serves `plural`, or `None`.
async fn discover(
    client: &Client,
    group: &str,
    versions: &[&str],
    kind: &str,
    plural: &str,
) -> Option<ApiResource> {
    for version in versions {
        let api_version = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        let served = if group.is_empty() {
            client.list_core_api_resources(version).await
        } else {
            client.list_api_group_resources(&api_version).await
        };
        if let Ok(list) = served
            && list.resources.iter().any(|r| r.name == plural)
        {
            return Some(ApiResource {
                group: group.into(),
                version: version.to_string(),
                api_version,
                kind: kind.into(),
                plural: plural.into(),
            });
        }
    }
    None
}

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: if group.is_empty() {
            version.into()
        } else {
            format!("{group}/{version}")
        },
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// One informer: list + watch `resource`, feeding the inventory; a relist deletes what
/// disappeared meanwhile.
fn spawn_informer<K>(
    client: Client,
    resource: ApiResource,
    kind: Kind,
    wrap: fn(K) -> Object,
    inventory: Arc<Mutex<Inventory>>,
    metrics: Arc<Metrics>,
) where
    K: kube::Resource<DynamicType = ApiResource>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + 'static,
{
    metrics.expect(kind.name());
    tokio::spawn(async move {
        let api: Api<K> = Api::all_with(client, &resource);
        let mut events = watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        let mut listed: Option<HashSet<Key>> = None;
        while let Some(event) = events.next().await {
            match event {
                Ok(WatchEvent::Init) => listed = Some(HashSet::new()),
                Ok(WatchEvent::InitApply(object)) => {
                    let object = wrap(object);
                    if let Some(listed) = listed.as_mut() {
                        listed.insert(object.key());
                    }
                    inventory.lock().unwrap().upsert(object, now_ms());
                }
                Ok(WatchEvent::InitDone) => {
                    let listed = listed.take().unwrap_or_default();
                    let mut inventory = inventory.lock().unwrap();
                    for key in inventory.keys(kind) {
                        if !listed.contains(&key) {
                            inventory.delete(kind, &key, now_ms());
                        }
                    }
                    drop(inventory);
                    metrics.synced(kind.name());
                    tracing::info!(kind = kind.name(), api_version = %resource.api_version, "informer synced");
                }
                Ok(WatchEvent::Apply(object)) => {
                    inventory.lock().unwrap().upsert(wrap(object), now_ms());
                }
                Ok(WatchEvent::Delete(object)) => {
                    let object = wrap(object);
                    inventory
                        .lock()
                        .unwrap()
                        .delete(object.kind(), &object.key(), now_ms());
                }
                Err(error) => {
                    metrics.watch_error(kind.name());
                    tracing::warn!(kind = kind.name(), %error, "watch failed; retrying");
                }
            }
        }
    });
}

async fn start_informers(
    client: &Client,
    inventory: &Arc<Mutex<Inventory>>,
    metrics: &Arc<Metrics>,
) {
    let spawn_workload = |resource: ApiResource, kind: &'static str| {
        let wrap: fn(objects::Workload) -> Object = match kind {
            "Deployment" => |w| Object::Workload("Deployment", w),
            "ReplicaSet" => |w| Object::Workload("ReplicaSet", w),
            "StatefulSet" => |w| Object::Workload("StatefulSet", w),
            "DaemonSet" => |w| Object::Workload("DaemonSet", w),
            "Job" => |w| Object::Workload("Job", w),
            _ => |w| Object::Workload("CronJob", w),
        };
        spawn_informer(
            client.clone(),
            resource,
            Kind::Workload(kind),
            wrap,
            inventory.clone(),
            metrics.clone(),
        );
    };
    for (kind, plural) in [
        ("Deployment", "deployments"),
        ("ReplicaSet", "replicasets"),
        ("StatefulSet", "statefulsets"),
        ("DaemonSet", "daemonsets"),
    ] {
        spawn_workload(resource("apps", "v1", kind, plural), kind);
    }
    spawn_workload(resource("batch", "v1", "Job", "jobs"), "Job");
    match discover(client, "batch", &["v1", "v1beta1"], "CronJob", "cronjobs").await {
        Some(cronjobs) => spawn_workload(cronjobs, "CronJob"),
        None => tracing::warn!("the API server serves no CronJobs (batch/v1, batch/v1beta1)"),
    }
    match discover(
        client,
        "autoscaling",
        &["v2", "v2beta2", "v1"],
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
    )
    .await
    {
        Some(hpas) => spawn_informer(
            client.clone(),
            hpas,
            Kind::Hpa,
            Object::Hpa,
            inventory.clone(),
            metrics.clone(),
        ),
        None => tracing::warn!("the API server serves no HorizontalPodAutoscalers"),
    }
    spawn_informer(
        client.clone(),
        resource("", "v1", "Pod", "pods"),
        Kind::Pod,
        Object::Pod,
        inventory.clone(),
        metrics.clone(),
    );
    spawn_informer(
        client.clone(),
        resource("", "v1", "Node", "nodes"),
        Kind::Node,
        Object::Node,
        inventory.clone(),
        metrics.clone(),
    );
    spawn_informer(
        client.clone(),
        resource("", "v1", "Event", "events"),
        Kind::Event,
        Object::Event,
        inventory.clone(),
        metrics.clone(),
    );
    spawn_informer(
        client.clone(),
        resource("", "v1", "Namespace", "namespaces"),
        Kind::Other("Namespace"),
        |o| Object::Other("Namespace", o),
        inventory.clone(),
        metrics.clone(),
    );
    spawn_informer(
        client.clone(),
        resource("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
        Kind::Other("PersistentVolumeClaim"),
        |o| Object::Other("PersistentVolumeClaim", o),
        inventory.clone(),
        metrics.clone(),
    );
    spawn_informer(
        client.clone(),
        resource("", "v1", "PersistentVolume", "persistentvolumes"),
        Kind::Other("PersistentVolume"),
        |o| Object::Other("PersistentVolume", o),
        inventory.clone(),
        metrics.clone(),
    );
}

/// What one node's kubelet answered.
struct Scrape {
    node: String,
    summary: Result<usage::Summary, &'static str>,
    throttling: HashMap<(String, String, String), f64>,
}

async fn scrape_node(client: Client, node: String, timeout: Duration) -> Scrape {
    let get = |path: String| {
        let client = client.clone();
        async move {
            let request = Request::get(path).body(Vec::new()).expect("request");
            tokio::time::timeout(timeout, client.request_text(request)).await
        }
    };
    let (summary, cadvisor) = tokio::join!(
        get(format!("/api/v1/nodes/{node}/proxy/stats/summary")),
        get(format!("/api/v1/nodes/{node}/proxy/metrics/cadvisor")),
    );
    let summary = match summary {
        Err(_) => Err("timeout"),
        Ok(Err(error)) => {
            tracing::debug!(%node, %error, "stats/summary failed");
            Err("summary")
        }
        Ok(Ok(text)) => serde_json::from_str(&text).map_err(|_| "summary_format"),
    };
    let throttling = match cadvisor {
        Ok(Ok(text)) => usage::parse_throttling(&text),
        _ => HashMap::new(),
    };
    Scrape {
        node,
        summary,
        throttling,
    }
}

async fn scrape_loop(
    client: Client,
    args: CollectorArgs,
    inventory: Arc<Mutex<Inventory>>,
    outbox: Arc<Outbox>,
    metrics: Arc<Metrics>,
) {
    let http = reqwest::Client::builder()
        .timeout(args.scrape_timeout)
        .build()
        .expect("http client");
    let mut counters = usage::Counters::default();
    let mut ticker = tokio::time::interval(args.scrape_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let nodes = inventory.lock().unwrap().nodes();
        if nodes.is_empty() {
            continue;
        }
        let time_ms = now_ms();
        let ready: Vec<String> = nodes
            .iter()
            .filter(|n| n.ready)
            .map(|n| n.name.clone())
            .collect();
        for node in nodes.iter().filter(|n| !n.ready) {
            metrics.scrape_error(&node.name, "not_ready");
        }
        let scrapes: Vec<Scrape> = futures::stream::iter(ready)
            .map(|node| scrape_node(client.clone(), node, args.scrape_timeout))
            .buffer_unordered(args.scrape_concurrency.max(1))
            .collect()
            .await;
        let mut gpus = dcgm::GpuMap::new();
        for endpoint in &args.dcgm_endpoints {
            match dcgm::fetch(&http, endpoint).await {
                Ok(map) => gpus.extend(map),
                Err(error) => tracing::warn!(%error, "DCGM exporter"),
            }
        }
        counters.begin_round();
        let mut container_rows = Vec::new();
        let mut summaries = HashMap::new();
        {
            let inventory = inventory.lock().unwrap();
            for scrape in &scrapes {
                match &scrape.summary {
                    Ok(summary) => {
                        let mut rows = usage::container_rows(
                            &scrape.node,
                            time_ms,
                            summary,
                            &scrape.throttling,
                            &mut counters,
                            |ns, pod, c| inventory.container(ns, pod, c),
                        );
                        for row in &mut rows {
                            if let Some(gpu) = gpus.get(&(
                                row.namespace.clone(),
                                row.pod.clone(),
                                row.container.clone(),
                            )) {
                                row.gpu_utilization = Some(gpu.utilization);
                                row.gpu_memory_bytes = Some(gpu.memory_bytes);
                            }
                        }
                        container_rows.extend(rows);
                        summaries.insert(scrape.node.clone(), summary);
                    }
                    Err(reason) => metrics.scrape_error(&scrape.node, reason),
                }
            }
        }
        let node_rows: Vec<_> = nodes
            .into_iter()
            .map(|info| {
                let summary = summaries.get(&info.name).copied();
                usage::node_row(info, time_ms, summary, &mut counters)
            })
            .collect();
        metrics
            .scrapes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if !container_rows.is_empty() {
            outbox.push(
                Table::ContainerUsage,
                batches::container_usage(&container_rows),
            );
        }
        outbox.push(Table::NodeUsage, batches::node_usage(&node_rows));
    }
}

fn flush(inventory: &Mutex<Inventory>, outbox: &Outbox, metrics: &Metrics) {
    let (rows, counts) = {
        let mut inventory = inventory.lock().unwrap();
        (inventory.take_rows(now_ms()), inventory.counts())
    };
    metrics.set_objects(counts);
    if !rows.pods.is_empty() {
        outbox.push(Table::Pods, batches::pods(&rows.pods));
    }
    if !rows.workloads.is_empty() {
        outbox.push(Table::Workloads, batches::workloads(&rows.workloads));
    }
    if !rows.events.is_empty() {
        outbox.push(Table::Events, batches::events(&rows.events));
    }
}

/// Runs the collector until SIGTERM or Ctrl-C.
pub async fn run(args: CollectorArgs) -> Result<(), CollectorError> {
    let credentials = credentials(&args)?;
    let client = kube_client(&args).await?;
    let metrics = Arc::new(Metrics::default());
    let outbox = Arc::new(Outbox::new(args.buffer_bytes, metrics.clone()));
    let inventory = Arc::new(Mutex::new(Inventory::default()));

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| CollectorError::Listen {
            addr: args.listen,
            source,
        })?;
    let listen = listener.local_addr().expect("bound address");
    println!("listening {listen}");
    let router = health::router(metrics.clone());
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::error!(%error, "health server stopped");
        }
    });

    let (stop, stopped) = watch::channel(false);
    let sender = tokio::spawn(sender::deliver(
        outbox.clone(),
        args.connection.appliance.clone(),
        credentials,
        metrics.clone(),
        stopped,
    ));
    start_informers(&client, &inventory, &metrics).await;
    tokio::spawn(scrape_loop(
        client.clone(),
        args.clone(),
        inventory.clone(),
        outbox.clone(),
        metrics.clone(),
    ));

    let mut flush_tick = tokio::time::interval(args.flush_interval);
    let mut snapshot_tick = tokio::time::interval(args.snapshot_interval);
    snapshot_tick.tick().await;
    let signal = wait_for_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            _ = flush_tick.tick() => flush(&inventory, &outbox, &metrics),
            _ = snapshot_tick.tick() => inventory.lock().unwrap().snapshot(),
            _ = &mut signal => break,
        }
    }
    tracing::info!(
        buffered_bytes = outbox.bytes(),
        "stopping: delivering what is buffered"
    );
    flush(&inventory, &outbox, &metrics);
    let _ = stop.send(true);
    if tokio::time::timeout(args.shutdown_grace, sender)
        .await
        .is_err()
    {
        tracing::warn!(
            buffered_bytes = outbox.bytes(),
            "gave up delivering the buffer at shutdown"
        );
    }
    Ok(())
}

async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("signal handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: CollectorArgs,
    }

    #[test]
    fn flags_parse_and_bad_values_are_clear_errors() {
        let cli = Cli::try_parse_from([
            "c",
            "--appliance",
            "http://127.0.0.1:1",
            "--insecure",
            "--buffer-bytes",
            "1MiB",
            "--scrape-interval",
            "2s",
        ])
        .unwrap();
        assert_eq!(cli.args.buffer_bytes, 1 << 20);
        assert_eq!(cli.args.scrape_interval, Duration::from_secs(2));
        assert!(matches!(
            credentials(&cli.args).unwrap(),
            Credentials::Insecure
        ));
        let err = Cli::try_parse_from(["c", "--appliance", "x", "--scrape-interval", "soon"])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("not a duration"), "{err}");
        let cli = Cli::try_parse_from(["c", "--appliance", "https://x:1"]).unwrap();
        let err = credentials(&cli.args).unwrap_err().to_string();
        assert!(err.contains("--bootstrap-url"), "{err}");
        let cli = Cli::try_parse_from([
            "c",
            "--appliance",
            "https://x:1",
            "--bootstrap-url",
            "https://x:2",
        ])
        .unwrap();
        let err = credentials(&cli.args).unwrap_err().to_string();
        assert!(err.contains("--appliance-ca is required"), "{err}");
        assert!(
            Cli::try_parse_from([
                "c",
                "--appliance",
                "x",
                "--insecure",
                "--tls-cert",
                "a",
                "--tls-key",
                "b"
            ])
            .is_err()
        );
    }

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_bytes("64MiB").unwrap(), 64 << 20);
        assert!(
            parse_bytes("64MB")
                .unwrap_err()
                .contains("unknown size unit")
        );
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("0s").is_err());
    }
}
