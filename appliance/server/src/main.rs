use std::process::ExitCode;

use clap::Parser;
use tally_appliance::cli::{Cli, Command, ServeArgs, SqlArgs, SqlFormat, StoreArgs};
use tally_appliance::tls::ServerTlsFiles;
use tally_appliance::{Appliance, ApplianceOptions, demo, tls, wait_for_signal};
use tally_query::QueryLimits;
use tally_store::StoreConfig;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,datafusion=warn,h2=warn,tower=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    // Large worker stacks: planning a long SQL expression recurses once per term (see
    // tally_query::MAX_STATEMENT_BYTES), and 2 MiB overflowed at 2,000 terms.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(32 << 20)
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(*args).await,
            Command::Demo(args) => demo::run(args).await.map_err(|e| e.to_string()),
            Command::Sql(args) => sql(args).await,
            Command::Certs(args) => {
                let names: Vec<&str> = args.server_names.iter().map(String::as_str).collect();
                tls::write_bundle(&args.out, &names, &args.client_name)
                    .map_err(|e| e.to_string())?;
                println!(
                    "wrote ca.pem, server.pem, client.pem and their keys to {}",
                    args.out.display()
                );
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

pub fn store_config(args: &StoreArgs) -> StoreConfig {
    let mut config = StoreConfig::new(&args.data_dir);
    config.flush_interval = args.flush_interval;
    config.flush_rows = args.flush_rows;
    config.max_hot_rows = args.max_hot_rows;
    config.maintenance_interval = args.maintenance_interval;
    config.delete_grace = args.delete_grace;
    for (table, keep) in &args.retention {
        config.retention.insert(*table, *keep);
    }
    config
}

pub fn query_limits(args: &StoreArgs) -> QueryLimits {
    QueryLimits {
        memory_bytes: args.query_memory,
        timeout: args.query_timeout,
        ..QueryLimits::default()
    }
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    // A bad price file stops the start before anything listens.
    let price_overrides = match &args.prices {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the price file {}: {e}", path.display()))?;
            tally_analysis::catalog::Catalog::parse_overrides(&text)
                .map_err(|e| format!("price file {}: {e}", path.display()))?
        }
        None => Vec::new(),
    };
    let bootstrap = match args.bootstrap_listen {
        Some(listen) => Some(start_bootstrap(&args, listen).await?),
        None => None,
    };
    let tls = match (&args.tls_cert, &args.tls_key, &args.client_ca) {
        _ if bootstrap.is_some() => bootstrap.as_ref().map(|b| b.tls_files.clone()),
        (Some(cert), Some(key), Some(client_ca)) => Some(ServerTlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: client_ca.clone(),
        }),
        _ if args.insecure => None,
        _ => {
            return Err(
                "mutual TLS is required: pass --tls-cert, --tls-key and --client-ca \
                        (`tally certs --out DIR` creates them), or --insecure for a local demo"
                    .into(),
            );
        }
    };
    let options = ApplianceOptions {
        store: store_config(&args.store),
        flight_listen: args.flight_listen,
        http_listen: args.http_listen,
        tls,
        max_message_bytes: args.store.max_message_bytes,
        query: query_limits(&args.store),
        analysis_memory_bytes: args.store.analysis_memory,
        sign_in: sign_in(&args)?,
        analysis_interval: (!args.analysis_interval.is_zero()).then_some(args.analysis_interval),
        analysis: tally_analysis::AnalysisConfig {
            confident_hours: args.analysis_confident_hours,
            hold_below_confidence: args.analysis_hold_below_confidence,
            ..tally_analysis::AnalysisConfig::default()
        },
        price_overrides,
    };
    let appliance = Appliance::start(options).await.map_err(|e| e.to_string())?;
    println!("flight {}", appliance.flight_url());
    println!("http {}", appliance.http_url());
    if let Some(bootstrap) = &bootstrap {
        println!("bootstrap {}", bootstrap.url());
    }
    wait_for_signal().await;
    tracing::info!("shutting down: flushing buffered rows");
    appliance.shutdown().await.map_err(|e| e.to_string())
}

/// How UI users sign in: against --kube-api-server when given, else the cluster Tally runs in.
fn sign_in(args: &ServeArgs) -> Result<tally_ui::SignIn, String> {
    let Some(api_server) = &args.kube_api_server else {
        return Ok(tally_ui::SignIn::in_cluster());
    };
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let token_file = args
        .kube_token_file
        .as_deref()
        .ok_or("--kube-api-server needs --kube-token-file")?;
    let token = String::from_utf8(read(token_file)?)
        .map_err(|_| format!("{} is not text", token_file.display()))?;
    Ok(tally_ui::SignIn::Kubernetes(tally_ui::KubernetesAuth {
        api_server: api_server.clone(),
        ca_pem: args.kube_ca.as_deref().map(read).transpose()?,
        token: token.trim().to_string(),
    }))
}

async fn sql(args: SqlArgs) -> Result<(), String> {
    let url = format!("{}/api/v1/sql", args.url.trim_end_matches('/'));
    let client = reqwest::Client::new();
    let accept = match args.format {
        SqlFormat::Json => "application/json",
        SqlFormat::Table | SqlFormat::Csv => "application/vnd.apache.arrow.stream",
    };
    let response = client
        .post(&url)
        .header("accept", accept)
        .json(&serde_json::json!({ "sql": args.query }))
        .send()
        .await
        .map_err(|e| format!("cannot reach the appliance at {url}: {e}"))?;
    let status = response.status();
    let bytes = response.bytes().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        let message = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        return Err(format!("{status}: {message}"));
    }
    match args.format {
        SqlFormat::Json => println!("{}", String::from_utf8_lossy(&bytes)),
        SqlFormat::Table | SqlFormat::Csv => {
            let reader =
                arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
                    .map_err(|e| e.to_string())?;
            let batches = reader
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            if matches!(args.format, SqlFormat::Table) {
                println!(
                    "{}",
                    arrow::util::pretty::pretty_format_batches(&batches)
                        .map_err(|e| e.to_string())?
                );
            } else {
                let mut out = arrow::csv::Writer::new(std::io::stdout());
                for batch in &batches {
                    out.write(batch).map_err(|e| e.to_string())?;
                }
            }
        }
    }
    Ok(())
}

/// Starts the certificate bootstrap (--bootstrap-listen): the CA, the appliance's server
/// certificate and the HTTPS endpoint agents get their client certificates from.
async fn start_bootstrap(
    args: &ServeArgs,
    listen: std::net::SocketAddr,
) -> Result<tally_appliance::bootstrap::Bootstrap, String> {
    use tally_appliance::bootstrap::{self, BootstrapConfig, CaStore};
    let ca_store = match &args.ca_secret {
        Some(secret) => {
            let (namespace, name) = secret.split_once('/').ok_or_else(|| {
                format!(
                    "--ca-secret `{secret}` should look like namespace/name, e.g. tally/tally-ca"
                )
            })?;
            CaStore::Secret {
                namespace: namespace.to_string(),
                name: name.to_string(),
            }
        }
        None => CaStore::Disk(
            args.ca_dir
                .clone()
                .unwrap_or_else(|| args.store.data_dir.join("pki")),
        ),
    };
    let kube = bootstrap::kube_client(
        args.kube_api_server.as_deref(),
        args.kube_ca.as_deref(),
        args.kube_token_file.as_deref(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let config = BootstrapConfig {
        listen,
        ca_store,
        pki_dir: args.store.data_dir.join("pki"),
        server_names: args.server_names.clone(),
        allowed: args.bootstrap_allow.clone(),
        cert_ttl: args.agent_cert_ttl,
    };
    bootstrap::start(config, kube)
        .await
        .map_err(|e| e.to_string())
}
