//! Tally's appliance: the store behind an Arrow Flight endpoint (ingest, Flight SQL and the
//! recommendation stream to the operator, mutual TLS) and an HTTP server (the UI, the SQL API, export, health and metrics).

pub mod bootstrap;
pub mod cli;
pub mod demo;
pub mod export;
pub mod flight;
pub mod http;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arrow_flight::flight_service_server::FlightServiceServer;
use tally_query::{QueryEngine, QueryLimits};
use tally_store::{Store, StoreConfig, StoreError};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

use crate::tls::{ServerTlsFiles, TlsError};

/// How a running appliance is set up.
#[derive(Debug, Clone)]
pub struct ApplianceOptions {
    pub store: StoreConfig,
    pub flight_listen: SocketAddr,
    pub http_listen: SocketAddr,
    /// `None` only in the explicit insecure (demo) mode.
    pub tls: Option<ServerTlsFiles>,
    /// The largest gRPC message accepted (one Arrow batch).
    pub max_message_bytes: usize,
    pub query: QueryLimits,
    /// Memory the analyses' queries may use together (their own pool, apart from `query`).
    pub analysis_memory_bytes: usize,
    /// How users sign in to the web UI.
    pub sign_in: tally_ui::SignIn,
    /// Run the analyses (rightsizing, replicas, consolidation, instance types) this often;
    /// `None` runs them only on `POST /api/v1/analysis/run`.
    pub analysis_interval: Option<Duration>,
    /// The analyses' knobs (`--analysis-*`).
    pub analysis: tally_analysis::AnalysisConfig,
    /// The user's price overrides (`--prices`), written to `prices` at start.
    pub price_overrides: Vec<tally_analysis::catalog::CatalogPrice>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplianceError {
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the Flight server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("cannot load the price overrides: {0}")]
    Prices(#[source] tally_analysis::AnalysisError),
}

/// A started appliance.
pub struct Appliance {
    pub flight_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub tls: bool,
    pub store: Arc<Store>,
    pub engine: QueryEngine,
    /// The web UI's state (the demo reads its one-time sign-in link from it).
    pub ui: tally_ui::UiState,
    /// The analyses, also run periodically when configured.
    pub analyzer: Arc<tally_analysis::Analyzer>,
    analysis: Option<tokio::task::JoinHandle<()>>,
    stop: watch::Sender<bool>,
    servers: Vec<tokio::task::JoinHandle<()>>,
}

impl Appliance {
    pub async fn start(options: ApplianceOptions) -> Result<Appliance, ApplianceError> {
        let store = Store::open(options.store.clone()).await?;
        let engine = QueryEngine::new(store.clone(), options.query.clone());
        let (stop, _) = watch::channel(false);

        let flight_listener = TcpListener::bind(options.flight_listen)
            .await
            .map_err(|source| ApplianceError::Listen {
                addr: options.flight_listen,
                source,
            })?;
        let flight_addr = flight_listener.local_addr().expect("bound address");
        let http_listener = TcpListener::bind(options.http_listen)
            .await
            .map_err(|source| ApplianceError::Listen {
                addr: options.http_listen,
                source,
            })?;
        let http_addr = http_listener.local_addr().expect("bound address");

        // Finished analysis runs (and DoPuts of recommendation rows) are announced here;
        // the Flight recommendation stream follows it.
        let (runs, _) = watch::channel(None::<String>);
        let flight_service = flight::ApplianceFlight::new(store.clone(), engine.clone())
            .with_runs(runs.clone())
            .with_stop(stop.subscribe());
        let service = FlightServiceServer::new(flight_service)
            .max_decoding_message_size(options.max_message_bytes)
            .max_encoding_message_size(64 << 20);
        let mut builder = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .tcp_nodelay(true);
        if let Some(tls) = &options.tls {
            builder = builder.tls_config(tls.server_config()?)?;
        }
        let mut stop_flight = stop.subscribe();
        let flight = tokio::spawn(async move {
            let served = builder
                .add_service(service)
                .serve_with_incoming_shutdown(TcpListenerStream::new(flight_listener), async move {
                    let _ = stop_flight.wait_for(|s| *s).await;
                })
                .await;
            if let Err(error) = served {
                tracing::error!(%error, "Flight server stopped");
            }
        });

        let ui = tally_ui::UiState::new(
            engine.clone(),
            store.clone(),
            tally_ui::Auth::new(options.sign_in.clone()),
            Some(options.store.data_dir.join("policies.json")),
        );
        // The analyses get an engine of their own: a big run cannot starve users' SQL, and
        // users' SQL cannot starve a run.
        let analysis_engine = QueryEngine::new(
            store.clone(),
            QueryLimits {
                memory_bytes: options.analysis_memory_bytes,
                timeout: Duration::from_secs(1800),
                ..options.query.clone()
            },
        );
        let analyzer = Arc::new(
            tally_analysis::Analyzer::new(store.clone(), analysis_engine, options.analysis.clone())
                .with_run_notifier(runs),
        );
        let loaded = analyzer
            .load_price_overrides(&options.price_overrides, chrono::Utc::now())
            .await
            .map_err(ApplianceError::Prices)?;
        if !options.price_overrides.is_empty() {
            tracing::info!(
                rows = options.price_overrides.len(),
                written = loaded,
                "price overrides loaded"
            );
        }
        let analysis = options
            .analysis_interval
            .map(|every| tally_analysis::spawn_periodic(analyzer.clone(), every));
        let app = http::router(http::AppState {
            store: store.clone(),
            engine: engine.clone(),
            flight_addr,
            tls: options.tls.is_some(),
            ui: ui.clone(),
        })
        .merge(tally_analysis::http::router(analyzer.clone()));
        let mut stop_http = stop.subscribe();
        let web = tokio::spawn(async move {
            let served = axum::serve(http_listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop_http.wait_for(|s| *s).await;
                })
                .await;
            if let Err(error) = served {
                tracing::error!(%error, "HTTP server stopped");
            }
        });
        tracing::info!(%flight_addr, %http_addr, tls = options.tls.is_some(), "appliance started");
        Ok(Appliance {
            flight_addr,
            http_addr,
            tls: options.tls.is_some(),
            store,
            engine,
            ui,
            analyzer,
            analysis,
            stop,
            servers: vec![flight, web],
        })
    }

    /// The Flight URL agents write to.
    pub fn flight_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.flight_addr)
    }

    pub fn http_url(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// Stops both servers, flushes the store and closes it.
    pub async fn shutdown(self) -> Result<(), ApplianceError> {
        let _ = self.stop.send(true);
        if let Some(analysis) = &self.analysis {
            analysis.abort();
        }
        for server in self.servers {
            let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
        }
        self.store.close().await?;
        Ok(())
    }
}

/// Defaults for a data directory: everything on loopback, insecure (tests and the demo).
pub fn local_options(data_dir: impl Into<PathBuf>) -> ApplianceOptions {
    ApplianceOptions {
        store: StoreConfig::new(data_dir),
        flight_listen: "127.0.0.1:0".parse().expect("address"),
        http_listen: "127.0.0.1:0".parse().expect("address"),
        tls: None,
        max_message_bytes: 64 << 20,
        query: QueryLimits::default(),
        analysis_memory_bytes: 2 << 30,
        sign_in: tally_ui::SignIn::OneTimeLink,
        analysis_interval: Some(Duration::from_secs(300)),
        analysis: tally_analysis::AnalysisConfig::default(),
        price_overrides: Vec::new(),
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn wait_for_signal() {
    shutdown_signal().await
}

/// Registers the SIGINT and SIGTERM handlers now (so a signal that arrives before anyone
/// awaits is not lost, nor kills the process) and resolves on the first of them.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler");
    async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = term.recv() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use tally_wire::subscribe::{RecommendationStream, StreamEvent};

    use super::*;

    /// The recommendation stream is wired into a started appliance: subscribers get the
    /// runs the analyzer finishes, and a shutdown ends their streams cleanly (so the
    /// Flight server's graceful shutdown does not wait on them).
    #[tokio::test]
    async fn the_appliance_streams_its_analysis_runs_and_ends_streams_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = local_options(dir.path());
        options.analysis_interval = None;
        let appliance = Appliance::start(options).await.unwrap();
        let mut stream = RecommendationStream::open(&appliance.flight_url(), None)
            .await
            .unwrap();
        let summary = appliance.analyzer.run(chrono::Utc::now()).await.unwrap();
        match stream.next().await.unwrap() {
            Some(StreamEvent::Run(run)) => assert_eq!(run.run_id, summary.run_id),
            other => panic!("{other:?}"),
        }
        appliance.shutdown().await.unwrap();
        assert!(
            matches!(stream.next().await, Ok(None)),
            "the stream ends cleanly when the appliance stops"
        );
    }
}
