//! `tally-agent`: the agents Tally runs in a cluster, one subcommand each.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "tally-agent",
    version,
    about = "Tally's in-cluster agents: they observe the cluster and send what they see to the appliance"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    // Each agent adds one variant here and one arm in `main`.
    /// The node network agent: flows from conntrack or eBPF, DNS lookups, pod enrichment.
    Netmon(tally_netmon::NetmonArgs),
    /// The cluster agent: informers for workloads, pods, nodes and events, kubelet usage
    /// scraping, delivery to the appliance with a bootstrapped client certificate.
    Collector(tally_collector::CollectorArgs),
    /// The write operator: recommendations as custom resources, applied within the limits
    /// of the user's Policies, rolled back when deleted or rejected, every action audited.
    Operator(tally_operator::OperatorArgs),
    /// The operator's mutating admission webhook and its health check alone (the operator
    /// serves them too with --webhook-listen): sets the resources of opted-in pods at creation.
    Webhook(tally_operator::WebhookServerArgs),
    /// Prints the operator's CRDs (WorkloadRecommendation, NodeGroupRecommendation, Policy)
    /// as one multi-document YAML, or writes one file per CRD with --out.
    Crds(tally_operator::CrdsArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,h2=warn,tower=warn,hyper=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result: Result<(), String> = runtime.block_on(async move {
        match cli.command {
            Command::Netmon(args) => tally_netmon::run(args).await.map_err(|e| e.to_string()),
            Command::Collector(args) => tally_collector::run(args).await.map_err(|e| e.to_string()),
            Command::Operator(args) => tally_operator::run(args).await.map_err(|e| e.to_string()),
            Command::Webhook(args) => tally_operator::run_webhook(args)
                .await
                .map_err(|e| e.to_string()),
            Command::Crds(args) => tally_operator::print_crds(args).map_err(|e| e.to_string()),
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
