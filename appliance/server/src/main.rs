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
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(args).await,
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
    let tls = match (&args.tls_cert, &args.tls_key, &args.client_ca) {
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
        analysis_interval: (!args.analysis_interval.is_zero()).then_some(args.analysis_interval),
    };
    let appliance = Appliance::start(options).await.map_err(|e| e.to_string())?;
    println!("flight {}", appliance.flight_url());
    println!("http {}", appliance.http_url());
    wait_for_signal().await;
    tracing::info!("shutting down: flushing buffered rows");
    appliance.shutdown().await.map_err(|e| e.to_string())
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
