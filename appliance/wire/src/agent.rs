//! What every agent needs to reach the appliance: the flags that say how, and the credentials
//! they name (a certificate from the appliance's bootstrap endpoint, certificate files, or no
//! TLS for a local demo). The collector, the operator and netmon flatten [`ApplianceArgs`] into
//! theirs and keep their certificates with [`crate::link`].

use std::path::{Path, PathBuf};

use crate::ClientTls;

/// How an agent reaches the appliance.
#[derive(Debug, Clone, clap::Args)]
pub struct ApplianceArgs {
    /// The appliance's Flight URL (`https://tally.tally.svc:50051`).
    #[arg(long, env = "TALLY_APPLIANCE_URL")]
    pub appliance: String,
    /// The appliance's certificate bootstrap URL (`https://tally.tally.svc:8443`): the agent
    /// presents its ServiceAccount token there and receives a short-lived client certificate,
    /// renewed at two thirds of its life.
    #[arg(long, env = "TALLY_BOOTSTRAP_URL", conflicts_with_all = ["tls_cert", "insecure"])]
    pub bootstrap_url: Option<String>,
    /// The CA that signed the appliance's certificates (PEM), e.g. mounted from the
    /// `tally-ca` ConfigMap the appliance publishes.
    #[arg(long, env = "TALLY_APPLIANCE_CA")]
    pub appliance_ca: Option<PathBuf>,
    /// The ServiceAccount token presented to the bootstrap endpoint (re-read at every
    /// renewal, so projected tokens can rotate).
    #[arg(
        long,
        env = "TALLY_TOKEN_FILE",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    )]
    pub token_file: PathBuf,
    /// A client certificate (PEM) to use instead of the bootstrap.
    #[arg(
        long,
        env = "TALLY_TLS_CERT",
        requires = "tls_key",
        conflicts_with = "insecure"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "TALLY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Talk to the appliance without TLS (`http://` URL). For local demos only.
    #[arg(long)]
    pub insecure: bool,
}

/// The credentials an agent presents to the appliance.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// Plain HTTP/2 (`--insecure`, local demos only).
    Insecure,
    /// Certificate files given on the command line.
    Static(ClientTls),
    /// A certificate from the appliance's bootstrap endpoint, renewed at 2/3 of its life.
    Bootstrap {
        url: String,
        ca_pem: Vec<u8>,
        token_file: PathBuf,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("invalid flags: {0}")]
    Flags(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn read(path: &Path) -> Result<Vec<u8>, CredentialsError> {
    std::fs::read(path).map_err(|source| CredentialsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

impl ApplianceArgs {
    /// Reads the files the flags name into the credentials they describe.
    pub fn credentials(&self) -> Result<Credentials, CredentialsError> {
        if self.insecure {
            return Ok(Credentials::Insecure);
        }
        let ca = || {
            self.appliance_ca.as_deref().ok_or_else(|| {
                CredentialsError::Flags(
                    "--appliance-ca is required with TLS (the CA that signed the appliance's certificate)"
                        .into(),
                )
            })
        };
        if let Some(url) = &self.bootstrap_url {
            return Ok(Credentials::Bootstrap {
                url: url.clone(),
                ca_pem: read(ca()?)?,
                token_file: self.token_file.clone(),
            });
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            return Ok(Credentials::Static(ClientTls {
                ca_pem: read(ca()?)?,
                cert_pem: read(cert)?,
                key_pem: read(key)?,
                domain: None,
            }));
        }
        Err(CredentialsError::Flags(
            "say how to reach the appliance securely: --bootstrap-url (with --appliance-ca), \
             or --tls-cert and --tls-key, or --insecure for a local demo"
                .into(),
        ))
    }
}
