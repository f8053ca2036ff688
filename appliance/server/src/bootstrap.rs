//! Certificates without a manual step: the appliance keeps a CA and issues agents short-lived
//! client certificates in exchange for a valid ServiceAccount token.
//!
//! - The CA is created on first start and kept in a Kubernetes Secret (`--ca-secret
//!   namespace/name`, when the appliance runs in a cluster; its public certificate is also
//!   published in a ConfigMap of the same name, which agent pods mount to trust the
//!   appliance) or on disk (`--ca-dir`, default `<data dir>/pki`).
//! - At every start the appliance signs itself a server certificate for `--server-name`s;
//!   the Flight endpoint requires client certificates from the same CA.
//! - The bootstrap endpoint (HTTPS, `--bootstrap-listen`) takes `POST
//!   /v1/bootstrap/certificate` with `Authorization: Bearer <ServiceAccount token>` and a
//!   certificate signing request. The token is checked with a TokenReview against the API
//!   server, the ServiceAccount must be one of `--bootstrap-allow namespace:name`, and the
//!   answer is a certificate for the agent's key whose common name is the ServiceAccount's
//!   user name, valid for `--agent-cert-ttl` (24 h by default).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ObjectMeta, PostParams};
use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, Issuer,
    KeyPair, KeyUsagePurpose,
};
use tally_wire::bootstrap::{
    BOOTSTRAP_PATH, BootstrapErrorBody, CertificateRequest, CertificateResponse,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::tls::{CertificateAuthority, ServerTlsFiles, TlsError};

/// Where the CA lives.
#[derive(Debug, Clone)]
pub enum CaStore {
    /// `ca.pem` and `ca-key.pem` in a directory.
    Disk(PathBuf),
    /// A Secret (`ca.crt`, `ca.key`), with the certificate published in a ConfigMap of the
    /// same name.
    Secret { namespace: String, name: String },
}

/// How the bootstrap is set up.
#[derive(Debug, Clone)]
pub struct BootstrapConfig {
    pub listen: SocketAddr,
    pub ca_store: CaStore,
    /// Where the appliance's own server certificate files are written (for the Flight server).
    pub pki_dir: PathBuf,
    /// DNS names and IP addresses of the appliance's server certificate.
    pub server_names: Vec<String>,
    /// ServiceAccounts that may get a certificate, as `namespace:name` (`namespace:*` for all
    /// of a namespace).
    pub allowed: Vec<String>,
    pub cert_ttl: Duration,
}

/// Why the bootstrap could not start.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("the CA in Secret {namespace}/{name}: {reason}")]
    Secret {
        namespace: String,
        name: String,
        reason: String,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the Kubernetes client: {0}")]
    Kube(String),
    #[error("the bootstrap endpoint's TLS configuration: {0}")]
    Rustls(String),
}

/// A running bootstrap endpoint and the server TLS files it made for the Flight server.
pub struct Bootstrap {
    pub addr: SocketAddr,
    /// The appliance's server certificate, its key and the client CA (the same CA).
    pub tls_files: ServerTlsFiles,
    pub ca_pem: String,
    task: tokio::task::JoinHandle<()>,
}

impl Bootstrap {
    /// The bootstrap URL agents use.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Stops serving.
    pub fn stop(&self) {
        self.task.abort();
    }
}

fn write(path: &Path, content: &str, private: bool) -> Result<(), BootstrapError> {
    let err = |source| BootstrapError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    std::fs::write(path, content).map_err(err)?;
    if private {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    }
    Ok(())
}

/// Loads the CA (certificate and key PEM) from its store, creating it on first start.
pub async fn load_or_create_ca(
    store: &CaStore,
    kube: &kube::Client,
) -> Result<(String, String), BootstrapError> {
    match store {
        CaStore::Disk(dir) => {
            let (cert, key) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
            if let (Ok(c), Ok(k)) = (
                std::fs::read_to_string(&cert),
                std::fs::read_to_string(&key),
            ) {
                return Ok((c, k));
            }
            let ca = CertificateAuthority::generate("Tally appliance CA")?;
            write(&key, &ca.cert.key_pem, true)?;
            write(&cert, &ca.cert.cert_pem, false)?;
            tracing::info!(dir = %dir.display(), "created the appliance CA");
            Ok((ca.cert.cert_pem, ca.cert.key_pem))
        }
        CaStore::Secret { namespace, name } => {
            let fail = |reason: String| BootstrapError::Secret {
                namespace: namespace.clone(),
                name: name.clone(),
                reason,
            };
            let secrets: Api<Secret> = Api::namespaced(kube.clone(), namespace);
            let read = |secret: &Secret| -> Option<(String, String)> {
                let data = secret.data.as_ref()?;
                let text = |k: &str| String::from_utf8(data.get(k)?.0.clone()).ok();
                Some((text("ca.crt")?, text("ca.key")?))
            };
            let pems = match secrets
                .get_opt(name)
                .await
                .map_err(|e| fail(e.to_string()))?
            {
                Some(secret) => {
                    read(&secret).ok_or_else(|| fail("it lacks ca.crt or ca.key".into()))?
                }
                None => {
                    let ca = CertificateAuthority::generate("Tally appliance CA")?;
                    let secret = Secret {
                        metadata: ObjectMeta {
                            name: Some(name.clone()),
                            namespace: Some(namespace.clone()),
                            labels: Some(BTreeMap::from([(
                                "app.kubernetes.io/name".to_string(),
                                "tally".to_string(),
                            )])),
                            ..ObjectMeta::default()
                        },
                        data: Some(BTreeMap::from([
                            (
                                "ca.crt".to_string(),
                                ByteString(ca.cert.cert_pem.clone().into_bytes()),
                            ),
                            (
                                "ca.key".to_string(),
                                ByteString(ca.cert.key_pem.clone().into_bytes()),
                            ),
                        ])),
                        ..Secret::default()
                    };
                    match secrets.create(&PostParams::default(), &secret).await {
                        Ok(_) => {
                            tracing::info!(%namespace, %name, "created the appliance CA in a Secret");
                            (ca.cert.cert_pem, ca.cert.key_pem)
                        }
                        // Another replica created it first: use theirs.
                        Err(kube::Error::Api(status)) if status.code == 409 => {
                            let secret =
                                secrets.get(name).await.map_err(|e| fail(e.to_string()))?;
                            read(&secret).ok_or_else(|| fail("it lacks ca.crt or ca.key".into()))?
                        }
                        Err(e) => return Err(fail(e.to_string())),
                    }
                }
            };
            publish_ca(kube, namespace, name, &pems.0)
                .await
                .map_err(|e| {
                    fail(format!(
                        "cannot publish the CA certificate in ConfigMap {name}: {e}"
                    ))
                })?;
            Ok(pems)
        }
    }
}

/// Publishes the CA's public certificate in a ConfigMap (`ca.crt`) agents can mount.
async fn publish_ca(
    kube: &kube::Client,
    namespace: &str,
    name: &str,
    cert_pem: &str,
) -> Result<(), kube::Error> {
    let maps: Api<ConfigMap> = Api::namespaced(kube.clone(), namespace);
    let map = ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            "ca.crt".to_string(),
            cert_pem.to_string(),
        )])),
        ..ConfigMap::default()
    };
    match maps.get_opt(name).await? {
        Some(existing) if existing.data == map.data => Ok(()),
        Some(existing) => {
            let mut map = map;
            map.metadata.resource_version = existing.metadata.resource_version;
            maps.replace(name, &PostParams::default(), &map)
                .await
                .map(|_| ())
        }
        None => maps.create(&PostParams::default(), &map).await.map(|_| ()),
    }
}

/// A Kubernetes client for TokenReviews and the CA Secret: the API server of
/// `--kube-api-server` with `--kube-ca` and the token in `--kube-token-file` when given, else
/// the in-cluster configuration (or $KUBECONFIG).
pub async fn kube_client(
    api_server: Option<&str>,
    ca: Option<&Path>,
    token_file: Option<&Path>,
) -> Result<kube::Client, BootstrapError> {
    let fail = |reason: String| BootstrapError::Kube(reason);
    let config = match api_server {
        Some(url) => {
            let mut config = kube::Config::new(
                url.parse()
                    .map_err(|e| fail(format!("--kube-api-server `{url}`: {e}")))?,
            );
            if let Some(ca) = ca {
                let pem = std::fs::read(ca)
                    .map_err(|e| fail(format!("cannot read {}: {e}", ca.display())))?;
                let certs = CertificateDer::pem_slice_iter(&pem)
                    .map(|c| c.map(|c| c.to_vec()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| fail(format!("{}: {e}", ca.display())))?;
                config.root_cert = Some(certs);
            }
            config.auth_info.token_file = token_file.map(|p| p.display().to_string());
            config
        }
        None => kube::Config::infer().await.map_err(|e| {
            fail(format!(
                "no Kubernetes API server to check agent tokens with (pass --kube-api-server or run in a cluster): {e}"
            ))
        })?,
    };
    kube::Client::try_from(config).map_err(|e| fail(e.to_string()))
}

struct Signer {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
    kube: kube::Client,
    allowed: Vec<String>,
    ttl: Duration,
}

/// Loads or creates the CA, writes the appliance's server certificate into `pki_dir` and
/// serves the bootstrap endpoint.
pub async fn start(
    config: BootstrapConfig,
    kube: kube::Client,
) -> Result<Bootstrap, BootstrapError> {
    let (ca_pem, ca_key_pem) = load_or_create_ca(&config.ca_store, &kube).await?;
    let ca = CertificateAuthority::from_pem(&ca_pem, &ca_key_pem)?;
    let names: Vec<&str> = config.server_names.iter().map(String::as_str).collect();
    let server = ca.server(&names)?;
    let tls_files = ServerTlsFiles {
        cert: config.pki_dir.join("server.pem"),
        key: config.pki_dir.join("server-key.pem"),
        client_ca: config.pki_dir.join("client-ca.pem"),
    };
    write(&tls_files.key, &server.key_pem, true)?;
    write(&tls_files.cert, &server.cert_pem, false)?;
    write(&tls_files.client_ca, &ca_pem, false)?;

    let certs = CertificateDer::pem_slice_iter(server.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| BootstrapError::Rustls(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes())
        .map_err(|e| BootstrapError::Rustls(e.to_string()))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| BootstrapError::Rustls(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| BootstrapError::Rustls(e.to_string()))?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];

    let listener =
        TcpListener::bind(config.listen)
            .await
            .map_err(|source| BootstrapError::Listen {
                addr: config.listen,
                source,
            })?;
    let addr = listener.local_addr().expect("bound address");
    let signer = Arc::new(Signer {
        issuer: Issuer::from_ca_cert_pem(&ca_pem, KeyPair::from_pem(&ca_key_pem)?)?,
        ca_pem: ca_pem.clone(),
        kube,
        allowed: config.allowed.clone(),
        ttl: config.cert_ttl,
    });
    let app = Router::new()
        .route(BOOTSTRAP_PATH, post(issue))
        .with_state(signer);
    let listener = TlsListener {
        tcp: listener,
        acceptor: TlsAcceptor::from(Arc::new(tls)),
    };
    let task = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "bootstrap endpoint stopped");
        }
    });
    tracing::info!(%addr, "certificate bootstrap endpoint started");
    Ok(Bootstrap {
        addr,
        tls_files,
        ca_pem,
        task,
    })
}

/// Accepts TCP connections and completes the TLS handshake (bounded by a timeout, so a
/// silent client cannot hold the listener).
struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, peer) = match self.tcp.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "bootstrap accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            match tokio::time::timeout(Duration::from_secs(10), self.acceptor.accept(stream)).await
            {
                Ok(Ok(tls)) => return (tls, peer),
                Ok(Err(error)) => tracing::debug!(%peer, %error, "bootstrap TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "bootstrap TLS handshake timed out"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

fn refuse(status: StatusCode, error: impl Into<String>) -> Response {
    let error = error.into();
    tracing::info!(%status, %error, "certificate request refused");
    (status, Json(BootstrapErrorBody { error })).into_response()
}

fn unix_ms(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

/// Whether `username` (`system:serviceaccount:<ns>:<name>`) is one of `allowed`.
pub fn service_account_allowed(username: &str, allowed: &[String]) -> bool {
    let Some(account) = username.strip_prefix("system:serviceaccount:") else {
        return false;
    };
    let Some((namespace, _)) = account.split_once(':') else {
        return false;
    };
    allowed
        .iter()
        .any(|a| a == account || *a == format!("{namespace}:*"))
}

async fn issue(
    State(signer): State<Arc<Signer>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
    else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "missing bearer token: present the agent's ServiceAccount token as `Authorization: Bearer <token>`",
        );
    };
    let request: CertificateRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!(
                    "expected a JSON body like {{\"csr_pem\": \"-----BEGIN CERTIFICATE REQUEST-----...\"}}: {e}"
                ),
            );
        }
    };
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_string()),
            audiences: None,
        },
        ..TokenReview::default()
    };
    let reviewed = match Api::<TokenReview>::all(signer.kube.clone())
        .create(&PostParams::default(), &review)
        .await
    {
        Ok(r) => r,
        Err(e) => {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot check the token with the Kubernetes API server (TokenReview): {e}"),
            );
        }
    };
    let status = reviewed.status.unwrap_or_default();
    if status.authenticated != Some(true) {
        let why = status.error.unwrap_or_else(|| "not authenticated".into());
        return refuse(
            StatusCode::UNAUTHORIZED,
            format!("the Kubernetes API server rejected the token: {why}"),
        );
    }
    let username = status.user.and_then(|u| u.username).unwrap_or_default();
    if !service_account_allowed(&username, &signer.allowed) {
        return refuse(
            StatusCode::FORBIDDEN,
            format!(
                "`{username}` may not get an agent certificate: only the ServiceAccounts {} may (--bootstrap-allow)",
                if signer.allowed.is_empty() {
                    "listed".to_string()
                } else {
                    signer.allowed.join(", ")
                }
            ),
        );
    }
    let csr = match CertificateSigningRequestParams::from_pem(&request.csr_pem) {
        Ok(csr) => csr,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("csr_pem is not a PEM certificate signing request: {e}"),
            );
        }
    };
    let now = SystemTime::now();
    let not_before = now - Duration::from_secs(300);
    let not_after = now + signer.ttl;
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let signed = (|| {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, username.clone());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = epoch + not_before.duration_since(UNIX_EPOCH).unwrap_or_default();
        params.not_after = epoch + not_after.duration_since(UNIX_EPOCH).unwrap_or_default();
        params.signed_by(&csr.public_key, &signer.issuer)
    })();
    match signed {
        Ok(cert) => {
            tracing::info!(identity = %username, "issued an agent certificate");
            Json(CertificateResponse {
                cert_pem: cert.pem(),
                ca_pem: signer.ca_pem.clone(),
                not_before_ms: unix_ms(not_before),
                not_after_ms: unix_ms(not_after),
                identity: username,
            })
            .into_response()
        }
        Err(e) => refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("signing failed: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_service_accounts_are_allowed() {
        let allowed = vec!["tally:collector".to_string(), "ops:*".to_string()];
        assert!(service_account_allowed(
            "system:serviceaccount:tally:collector",
            &allowed
        ));
        assert!(service_account_allowed(
            "system:serviceaccount:ops:anything",
            &allowed
        ));
        assert!(!service_account_allowed(
            "system:serviceaccount:tally:other",
            &allowed
        ));
        assert!(!service_account_allowed("admin", &allowed));
        assert!(!service_account_allowed(
            "system:serviceaccount:tally:collector",
            &[]
        ));
    }
}
