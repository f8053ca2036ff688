//! The `tally` command line. Every flag is documented here; `tally help <command>` prints it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tally_wire::Table;

#[derive(Debug, Parser)]
#[command(
    name = "tally",
    version,
    about = "Tally: Kubernetes cost and efficiency, inside your cluster",
    long_about = "Tally stores what its agents observe about a Kubernetes cluster as Arrow/Parquet, \
                  analyses it with SQL and shows costs, waste and recommendations.\n\n\
                  Start with `tally demo`: the appliance fed by a simulated cluster, UI on localhost."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the appliance: Arrow Flight ingest and Flight SQL (mutual TLS), HTTP UI and SQL API.
    Serve(Box<ServeArgs>),
    /// Run the appliance on localhost fed by a built-in simulated cluster (14 days of history, then live).
    Demo(DemoArgs),
    /// Run one read-only SQL query against a running appliance and print the result.
    Sql(SqlArgs),
    /// Create a CA, a server certificate and a client certificate for mutual TLS.
    Certs(CertsArgs),
}

#[derive(Debug, Args, Clone)]
pub struct StoreArgs {
    /// Directory for the write-ahead log, the manifest and the Parquet files.
    #[arg(long, env = "TALLY_DATA_DIR", default_value = "/var/lib/tally")]
    pub data_dir: PathBuf,
    /// Flush buffered rows to Parquet at least this often (e.g. 10s, 1m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub flush_interval: Duration,
    /// Flush as soon as this many rows are buffered.
    #[arg(long, default_value_t = 1_000_000)]
    pub flush_rows: usize,
    /// Backpressure: writes wait while this many rows are buffered (flushes have not kept
    /// up), and are refused with RESOURCE_EXHAUSTED after 30 s; bounds the appliance's memory.
    #[arg(long, default_value_t = 2_000_000)]
    pub max_hot_rows: usize,
    /// Run compaction (merging small files) and retention this often.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub maintenance_interval: Duration,
    /// Delete files replaced by compaction or dropped by retention this long after, so
    /// queries that started before can finish reading them.
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    pub delete_grace: Duration,
    /// Keep a table's rows this long, overriding the default (repeatable), e.g.
    /// `--retention container_usage=30d`. Defaults: raw usage and flows 15d, DNS 7d, hourly
    /// rollups, inventory and events 90d, prices, recommendations and actions 365d.
    #[arg(long = "retention", value_parser = parse_retention)]
    pub retention: Vec<(Table, Duration)>,
    /// Memory the SQL queries running at one time may use together; a query that needs more
    /// fails with a clear error (nothing spills to disk). Bytes; suffixes KiB, MiB, GiB.
    #[arg(long, default_value = "512MiB", value_parser = parse_bytes)]
    pub query_memory: usize,
    /// Time one SQL query may run before it is cancelled.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub query_timeout: Duration,
    /// Memory an analysis run's queries may use (apart from --query-memory, so users' SQL
    /// and the analyses never starve each other). A 30,000-container, 14-day history needs
    /// more than 512 MiB for the replicas analysis. Bytes; suffixes KiB, MiB, GiB.
    #[arg(long, default_value = "2GiB", value_parser = parse_bytes)]
    pub analysis_memory: usize,
    /// The largest Arrow batch message accepted on ingest (bytes; suffixes KiB, MiB, GiB).
    #[arg(long, default_value = "64MiB", value_parser = parse_bytes)]
    pub max_message_bytes: usize,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Address of the Arrow Flight endpoint (ingest and Flight SQL).
    #[arg(long, env = "TALLY_FLIGHT_LISTEN", default_value = "0.0.0.0:50051")]
    pub flight_listen: SocketAddr,
    /// Address of the HTTP server (UI, SQL API, export, /healthz, /metrics).
    #[arg(long, env = "TALLY_HTTP_LISTEN", default_value = "0.0.0.0:8080")]
    pub http_listen: SocketAddr,
    /// The appliance's TLS certificate (PEM).
    #[arg(long, env = "TALLY_TLS_CERT", requires_all = ["tls_key", "client_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "TALLY_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CA whose client certificates may write (PEM); clients without one are refused.
    #[arg(long, env = "TALLY_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,
    /// Accept Flight connections without TLS. For local demos only: anyone who can reach
    /// the port can write.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key", "client_ca"])]
    pub insecure: bool,
    /// Run the analyses (rightsizing, replicas and HPAs, node consolidation, instance types)
    /// this often, writing each run's rows to the recommendations table; 0 turns the periodic
    /// run off (POST /api/v1/analysis/run still runs one).
    #[arg(long, env = "TALLY_ANALYSIS_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub analysis_interval: Duration,
    /// Hours of history (and of container-hours) after which a rightsizing recommendation
    /// has full confidence; confidence grows linearly up to it.
    #[arg(long, env = "TALLY_ANALYSIS_CONFIDENT_HOURS", default_value_t = 168.0, value_parser = parse_positive)]
    pub analysis_confident_hours: f64,
    /// Below this confidence (0..1) a rightsizing recommendation keeps the current requests
    /// and says it is held back (an OOM kill is never held back). 0 recommends from the first
    /// samples on, e.g. to try Tally on a fresh cluster.
    #[arg(long, env = "TALLY_ANALYSIS_HOLD_BELOW_CONFIDENCE", default_value_t = 0.25, value_parser = parse_fraction)]
    pub analysis_hold_below_confidence: f64,
    /// The Kubernetes API server UI sign-ins are checked against (TokenReview and
    /// SubjectAccessReview), e.g. https://10.0.0.1:443. Default: in a pod, the cluster's own
    /// (KUBERNETES_SERVICE_HOST and the service account); elsewhere nobody can sign in.
    #[arg(long, env = "TALLY_KUBE_API_SERVER", requires = "kube_token_file")]
    pub kube_api_server: Option<String>,
    /// The CA certificate (PEM) of --kube-api-server; default: the system's roots.
    #[arg(long, env = "TALLY_KUBE_CA")]
    pub kube_ca: Option<PathBuf>,
    /// A file holding the appliance's own bearer token for --kube-api-server; it needs
    /// `create` on tokenreviews and subjectaccessreviews (ClusterRole system:auth-delegator).
    #[arg(long, env = "TALLY_KUBE_TOKEN_FILE")]
    pub kube_token_file: Option<PathBuf>,
    /// Issue agents their client certificates automatically: serve the certificate
    /// bootstrap (HTTPS) on this address. The appliance then keeps its own CA (see
    /// --ca-secret, --ca-dir), signs its server certificate for --server-name at every start,
    /// and accepts Flight clients whose certificates that CA signed. Agents present their
    /// ServiceAccount token, checked with a TokenReview against the API server of
    /// --kube-api-server (default: in-cluster).
    #[arg(long, env = "TALLY_BOOTSTRAP_LISTEN", conflicts_with_all = ["tls_cert", "tls_key", "client_ca", "insecure"])]
    pub bootstrap_listen: Option<SocketAddr>,
    /// Keep the CA in this Secret, `namespace/name` (created on first start; its certificate
    /// is also published in a ConfigMap of the same name for agents to mount).
    #[arg(long, env = "TALLY_CA_SECRET", requires = "bootstrap_listen")]
    pub ca_secret: Option<String>,
    /// Keep the CA in this directory when there is no --ca-secret (default: <data-dir>/pki).
    #[arg(
        long,
        env = "TALLY_CA_DIR",
        requires = "bootstrap_listen",
        conflicts_with = "ca_secret"
    )]
    pub ca_dir: Option<PathBuf>,
    /// DNS names and IP addresses agents use to reach the appliance, for its server
    /// certificate (repeatable or comma-separated).
    #[arg(long = "server-name", env = "TALLY_SERVER_NAMES", value_delimiter = ',', default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
    pub server_names: Vec<String>,
    /// ServiceAccounts that may get an agent certificate, as `namespace:name` or
    /// `namespace:*` (repeatable or comma-separated).
    #[arg(
        long = "bootstrap-allow",
        env = "TALLY_BOOTSTRAP_ALLOW",
        value_delimiter = ','
    )]
    pub bootstrap_allow: Vec<String>,
    /// Price overrides: a CSV file in the columns of the shipped catalog, loaded at every
    /// start into the prices table with source `user`, which every cost query prefers to the
    /// catalog. `#` lines are comments; the header is
    /// `provider,region,instance_type,capacity_type,hourly_usd,cpu_cores,memory_gib,gpu_count`:
    /// provider (aws, gcp, azure, ...), region and instance type as the nodes' labels say,
    /// capacity type `on_demand` or `spot`, USD per hour, cores, GiB and a whole number of
    /// GPUs, all >= 0; each region, type and capacity type once. A bad file stops the start
    /// with its line and column. A row is written only when it differs from the newest user
    /// row for its type (restarts with the same file write nothing); a changed price is in
    /// force from the start that loaded it, earlier windows keep the earlier price.
    #[arg(long, env = "TALLY_PRICES")]
    pub prices: Option<PathBuf>,
    /// How long an agent certificate is valid; agents renew at two thirds of it.
    #[arg(long, env = "TALLY_AGENT_CERT_TTL", default_value = "24h", value_parser = parse_duration)]
    pub agent_cert_ttl: Duration,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where to keep the demo's data (default: a new temporary directory, removed on exit).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Address of the UI and SQL API.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http_listen: SocketAddr,
    /// Address of the Flight endpoint the simulated agents write to (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub flight_listen: SocketAddr,
    /// Seed of the simulated cluster: the same seed gives the same cluster and history.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Number of nodes.
    #[arg(long, default_value_t = 50)]
    pub nodes: usize,
    /// Number of workloads.
    #[arg(long, default_value_t = 600)]
    pub workloads: usize,
    /// Days of history to backfill at start-up.
    #[arg(long, default_value_t = 14)]
    pub days: u32,
    /// Sample interval of the backfilled history.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub history_step: Duration,
    /// Sample interval of the live stream after the backfill.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub live_step: Duration,
    /// Stop after the backfill instead of streaming live (for scripts and tests).
    #[arg(long)]
    pub no_live: bool,
    /// Exit after the backfill (implies --no-live); prints what was loaded.
    #[arg(long)]
    pub exit_after_backfill: bool,
}

#[derive(Debug, Args)]
pub struct SqlArgs {
    /// The query: SELECT, WITH, EXPLAIN, SHOW TABLES, SHOW COLUMNS FROM t, DESCRIBE t.
    pub query: String,
    /// The appliance's HTTP address.
    #[arg(long, env = "TALLY_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: SqlFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum SqlFormat {
    Table,
    Json,
    Csv,
}

#[derive(Debug, Args)]
pub struct CertsArgs {
    /// Directory to write ca.pem, server.pem, client.pem and their keys into.
    #[arg(long)]
    pub out: PathBuf,
    /// DNS names and IP addresses of the appliance (repeatable).
    #[arg(long = "server-name", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
    pub server_names: Vec<String>,
    /// Common name of the client certificate.
    #[arg(long, default_value = "tally-agent")]
    pub client_name: String,
}

/// Parses `500ms`, `10s`, `5m`, `2h`, `14d` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| {
        format!("`{text}` is not a duration: use a number with ms, s, m, h or d, like 30s")
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
    Ok(Duration::from_secs_f64(seconds))
}

/// Parses `512MiB`, `1GiB`, `64KiB` or a number of bytes.
pub fn parse_bytes(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: usize = number.parse().map_err(|_| {
        format!("`{text}` is not a size: use a number with KiB, MiB or GiB, like 512MiB")
    })?;
    let factor = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{text}`: use KiB, MiB or GiB"
            ));
        }
    };
    Ok(value * factor)
}

/// Parses `table=duration`.
pub fn parse_retention(text: &str) -> Result<(Table, Duration), String> {
    let (table, duration) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` should look like container_usage=30d"))?;
    Ok((
        table
            .parse()
            .map_err(|e: tally_wire::UnknownTable| e.to_string())?,
        parse_duration(duration)?,
    ))
}

fn parse_positive(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("expected a number above 0, got `{text}`")),
    }
}

fn parse_fraction(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("expected a number from 0 to 1, got `{text}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_sizes_and_retention_parse_with_clear_errors() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(
            parse_duration("14d").unwrap(),
            Duration::from_secs(14 * 86_400)
        );
        assert!(
            parse_duration("10 parsecs")
                .unwrap_err()
                .contains("unknown duration unit")
        );
        assert_eq!(parse_bytes("512MiB").unwrap(), 512 << 20);
        assert!(parse_bytes("lots").unwrap_err().contains("not a size"));
        assert_eq!(
            parse_retention("dns_lookups=2d").unwrap(),
            (Table::DnsLookups, Duration::from_secs(2 * 86_400))
        );
        assert!(
            parse_retention("nope=2d")
                .unwrap_err()
                .starts_with("unknown table `nope`")
        );
    }

    #[test]
    fn analysis_knobs_refuse_values_out_of_range() {
        assert_eq!(parse_fraction("0"), Ok(0.0));
        assert_eq!(parse_fraction("0.25"), Ok(0.25));
        assert!(parse_fraction("1.5").unwrap_err().contains("from 0 to 1"));
        assert!(parse_fraction("x").is_err());
        assert_eq!(parse_positive("168"), Ok(168.0));
        assert!(parse_positive("0").unwrap_err().contains("above 0"));
        assert!(parse_positive("inf").is_err());
    }
}
