//! The write operator: it turns the appliance's recommendations into custom resources and
//! applies those the user's Policies allow.
//!
//! `tally-agent operator` runs as one Deployment per cluster:
//! - custom resources `WorkloadRecommendation` (namespaced), `NodeGroupRecommendation` and
//!   `Policy` (cluster-scoped), group `tally.dev/v1alpha1`, defined in [`crd`] and printed
//!   as YAML by `tally-agent crds`;
//! - the appliance pushes every finished analysis run over a gRPC server stream (Flight
//!   `DoGet` on its mutual-TLS port, certificate from the bootstrap endpoint); the operator
//!   subscribes at start and runs a reconcile pass ([`reconcile`]) as soon as a run arrives,
//!   reconnecting with exponential backoff when the stream breaks ([`stream`]). A pass also
//!   runs every `--poll-interval` (Policies' time windows open without a new run), and an
//!   appliance without the stream (`Unimplemented`) leaves the operator polling alone. A pass
//!   reads the latest run with Flight SQL; policies are evaluated again before anything
//!   changes ([`policy`]). `--namespace` limits it to chosen namespaces;
//! - node groups a valid Policy names in `spec.nodeGroups` are cordoned and drained through
//!   the eviction API, honouring PodDisruptionBudgets ([`drain`], [`evict`]); node drains
//!   are cluster-wide, whatever `--namespace` says;
//! - for policies with `applyMethod: webhook` the updater evicts, one pod per workload and
//!   pass, running pods whose requests differ from the recommendation by more than
//!   `--updater-threshold-percent` ([`updater`]);
//! - every decision goes to the appliance's `actions` table ([`appliance`]);
//! - `/healthz`, `/readyz` and `/metrics` on `--listen` ([`health`]);
//! - with `--webhook-listen`, the mutating admission webhook that sets the resources of
//!   opted-in pods at creation, and its health check, reported by `/readyz` ([`webhook`]).
//!   `tally-agent webhook` serves only the webhook and its health check (no appliance).
//!
//! Its ClusterRole is `agents/operator/rbac.yaml`.

pub mod appliance;
pub mod crd;
pub mod drain;
pub mod evict;
pub mod health;
pub mod policy;
pub mod quantity;
pub mod reconcile;
pub mod scaling;
pub mod stream;
pub mod updater;
pub mod webhook;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kube::Client;

use crate::appliance::{Appliance, Credentials};
use crate::health::Metrics;
use crate::reconcile::Reconciler;

/// Flags of `tally-agent operator`.
#[derive(Debug, Clone, clap::Args)]
pub struct OperatorArgs {
    /// How to reach the appliance.
    #[command(flatten)]
    pub connection: tally_wire::agent::ApplianceArgs,
    /// A kubeconfig file (default: in-cluster configuration, or $KUBECONFIG).
    #[arg(long, env = "TALLY_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// How often every resource is reconciled and the latest run read (e.g. 30s), besides
    /// the pass each run pushed over the appliance's recommendation stream triggers.
    #[arg(long, env = "TALLY_POLL_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// Serve only these namespaces (repeatable or comma-separated; default: every
    /// namespace). Recommendations of other namespaces are neither created nor applied.
    #[arg(
        long = "namespace",
        env = "TALLY_OPERATOR_NAMESPACES",
        value_delimiter = ','
    )]
    pub namespaces: Vec<String>,
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, env = "TALLY_OPERATOR_LISTEN", default_value = "0.0.0.0:9091")]
    pub listen: SocketAddr,
    /// The updater evicts a running pod of a webhook-applied workload when one of its
    /// requests is further than this from the recommendation, in percent.
    #[arg(long, env = "TALLY_UPDATER_THRESHOLD_PERCENT", default_value_t = 10.0)]
    pub updater_threshold_percent: f64,
    /// The admission webhook (off unless --webhook-listen is given).
    #[command(flatten)]
    pub webhook: webhook::WebhookArgs,
}

/// Flags of `tally-agent webhook`: the admission webhook and its health check alone.
#[derive(Debug, Clone, clap::Args)]
pub struct WebhookServerArgs {
    /// A kubeconfig file (default: in-cluster configuration, or $KUBECONFIG).
    #[arg(long, env = "TALLY_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, env = "TALLY_OPERATOR_LISTEN", default_value = "0.0.0.0:9091")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub webhook: webhook::WebhookArgs,
}

/// Flags of `tally-agent crds`.
#[derive(Debug, Clone, clap::Args)]
pub struct CrdsArgs {
    /// Write one file per CRD into this directory instead of printing one multi-document
    /// YAML.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Why the operator could not run.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error(transparent)]
    Credentials(#[from] tally_wire::agent::CredentialsError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot configure the Kubernetes client: {0}")]
    KubeConfig(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot render the CRDs: {0}")]
    Render(String),
    #[error("admission webhook: {0}")]
    Webhook(#[from] webhook::WebhookError),
}

/// Parses `500ms`, `10s`, `5m`, `2h` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| {
        format!("`{text}` is not a duration: use a number with ms, s, m or h, like 30s")
    })?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit `{other}` in `{text}`: use ms, s, m or h"
            ));
        }
    };
    if seconds <= 0.0 {
        return Err(format!("`{text}` must be longer than zero"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn credentials(args: &OperatorArgs) -> Result<Credentials, OperatorError> {
    Ok(args.connection.credentials()?)
}

async fn kube_client(kubeconfig: Option<&Path>) -> Result<Client, OperatorError> {
    let config = kube_config(kubeconfig).await?;
    Client::try_from(config).map_err(|e| OperatorError::KubeConfig(e.to_string()))
}

async fn kube_config(kubeconfig: Option<&Path>) -> Result<kube::Config, OperatorError> {
    Ok(match kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| OperatorError::KubeConfig(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|e| OperatorError::KubeConfig(e.to_string()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| OperatorError::KubeConfig(e.to_string()))?,
    })
}

/// `tally-agent crds`: the CRD YAML on stdout, or one file per CRD in `--out`.
pub fn print_crds(args: CrdsArgs) -> Result<(), OperatorError> {
    match args.out {
        None => {
            let yaml = crd::crds_yaml().map_err(OperatorError::Render)?;
            print!("{yaml}");
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir).map_err(|source| OperatorError::Write {
                path: dir.clone(),
                source,
            })?;
            for crd in crd::crds() {
                let name = crd.metadata.name.clone().unwrap_or_default();
                let path = dir.join(format!("{name}.yaml"));
                let yaml = crd::crd_yaml(&crd).map_err(OperatorError::Render)?;
                std::fs::write(&path, yaml).map_err(|source| OperatorError::Write {
                    path: path.clone(),
                    source,
                })?;
                println!("{}", path.display());
            }
        }
    }
    Ok(())
}

/// Runs the operator until SIGTERM or Ctrl-C.
pub async fn run(args: OperatorArgs) -> Result<(), OperatorError> {
    let credentials = credentials(&args)?;
    let client = kube_client(args.kubeconfig.as_deref()).await?;
    let metrics = Arc::new(Metrics::default());
    metrics.stale_after_ms.store(
        (args.poll_interval.as_millis() as i64) * 3 + 60_000,
        Ordering::Relaxed,
    );

    serve_health(args.listen, metrics.clone()).await?;
    if let Some(listen) = args.webhook.webhook_listen {
        let addr = webhook::start(client.clone(), metrics.clone(), &args.webhook, listen).await?;
        println!("webhook listening {addr}");
    }

    // Evictions go through a client that does not retry a 429 itself: for an eviction it
    // means a PodDisruptionBudget allows no disruption now, which the drain and the updater
    // retry on a later pass (kube's default client would retry it for minutes, holding the
    // whole pass).
    let mut config = kube_config(args.kubeconfig.as_deref()).await?;
    config.default_retry = false;
    let eviction_client =
        Client::try_from(config).map_err(|e| OperatorError::KubeConfig(e.to_string()))?;
    let mut reconciler = Reconciler {
        client,
        appliance: Appliance::new(args.connection.appliance.clone(), credentials.clone()),
        metrics: metrics.clone(),
        dismissed: Default::default(),
        memory: Default::default(),
        namespaces: args.namespaces.clone(),
        drain: drain::State {
            eviction_client: Some(eviction_client),
            ..Default::default()
        },
        updater: updater::Settings {
            threshold_percent: args.updater_threshold_percent,
        },
    };
    let mut backoff = Duration::from_millis(500);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| OperatorError::Listen {
        addr: args.listen,
        source,
    })?;
    tracing::info!(appliance = %args.connection.appliance, poll = ?args.poll_interval, "operator started");
    // Runs pushed by the appliance trigger a pass at once; the poll keeps running beside.
    let mut runs = stream::spawn(
        args.connection.appliance.clone(),
        credentials,
        metrics.clone(),
    );
    let mut streaming = true;
    loop {
        let wait = match reconciler.pass(chrono::Utc::now()).await {
            Ok(()) => {
                metrics.passes.fetch_add(1, Ordering::Relaxed);
                metrics
                    .last_success_ms
                    .store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed);
                backoff = Duration::from_millis(500);
                args.poll_interval
            }
            Err(error) => {
                metrics.pass_errors.fetch_add(1, Ordering::Relaxed);
                reconciler.appliance.reset();
                tracing::warn!(%error, retry_in = ?backoff, "reconcile pass failed");
                let wait = backoff.min(args.poll_interval);
                backoff = (backoff * 2).min(Duration::from_secs(30));
                wait
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            changed = runs.changed(), if streaming => match changed {
                Ok(()) => {
                    if let Some(run) = runs.borrow_and_update().clone() {
                        tracing::info!(run_id = %run.run_id, rows = run.rows, "reconciling the run the appliance pushed");
                    }
                }
                // The appliance has no stream (logged by the stream's task): poll alone.
                Err(_) => streaming = false,
            },
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    tracing::info!("operator stopped");
    Ok(())
}

/// Serves `/healthz`, `/readyz` and `/metrics` on `listen` in the background and prints
/// `listening ADDR` (the bound address: the tests read it from stdout).
async fn serve_health(listen: SocketAddr, metrics: Arc<Metrics>) -> Result<(), OperatorError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| OperatorError::Listen {
            addr: listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| OperatorError::Listen {
            addr: listen,
            source,
        })?;
    println!("listening {addr}");
    let router = health::router(metrics);
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::error!(%error, "health listener stopped");
        }
    });
    Ok(())
}

/// Runs the admission webhook and its health check alone (`tally-agent webhook`) until
/// SIGTERM or Ctrl-C: no appliance, no reconcile passes; `/readyz` is the webhook's health.
pub async fn run_webhook(args: WebhookServerArgs) -> Result<(), OperatorError> {
    let client = kube_client(args.kubeconfig.as_deref()).await?;
    let metrics = Arc::new(Metrics::default());
    metrics.webhook_only.store(true, Ordering::Relaxed);
    serve_health(args.listen, metrics.clone()).await?;
    let listen = args
        .webhook
        .webhook_listen
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 9443)));
    let addr = webhook::start(client, metrics, &args.webhook, listen).await?;
    println!("webhook listening {addr}");
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| OperatorError::Listen {
        addr: args.listen,
        source,
    })?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("webhook stopped");
    Ok(())
}
