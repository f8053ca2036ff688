//! The mutating admission webhook: it sets a pod's container requests and limits at creation
//! from its workload's approved recommendation, so Policies with `applyMethod: webhook`
//! change running workloads without ever writing their spec (the way ScaleOps and the VPA's
//! admission controller work).
//!
//! `POST /mutate-pods` answers AdmissionReview `admission.k8s.io/v1` (and `v1beta1` when the
//! API server asks in it). It never denies: a pod is admitted, and is changed only when all of
//! this holds at the moment it is created:
//! - the pod carries the opt-in label `tally.dev/rightsize: enabled` ([`OPT_IN_LABEL`]);
//! - its controller is a Deployment (through its ReplicaSet), a StatefulSet or a DaemonSet,
//!   read from the API through `ownerReferences`;
//! - that workload's `WorkloadRecommendation` is Approved or Applied (not rejected);
//! - the Policies are evaluated again ([`crate::policy`]): every valid Policy covering the
//!   workload auto-applies, one of them through the webhook, every one's time window is open
//!   and their bounds can all hold; each value is then moved at most the maximum step away
//!   from the pod's own value and held inside the bounds, exactly as the reconciler does for
//!   `applyMethod: patch`.
//!
//! Every opted-in pod gets the annotation `tally.dev/rightsize-result` ([`RESULT_ANNOTATION`])
//! saying what was done or why nothing was. The health check ([`probe`]) relies on it: every
//! `--webhook-probe-interval` the operator creates an opted-in probe pod with `?dryRun=All`
//! in its own namespace; when the API server returns it without the annotation (failurePolicy
//! Ignore hides a webhook that does not answer) or refuses it, `/readyz` fails with the
//! reason, `tally_operator_webhook_healthy` is 0 and the operator logs a warning.
//!
//! Serving certificate: `--webhook-cert`/`--webhook-key` (PEM files), or generated at start
//! (a CA and a server certificate for `--webhook-dns-name`); then the operator writes that CA
//! into the `caBundle` of every webhook of the MutatingWebhookConfiguration named by
//! `--webhook-configuration`, and writes it again whenever it differs (a `helm upgrade`
//! resets it), before each probe.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::{DateTime, Utc};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::crd::{
    ApplyMethod, Approval, FIELD_MANAGER, Mode, Phase, Policy, WorkloadKind, WorkloadRecommendation,
};
use crate::health::{Metrics, WebhookHealth};
use crate::policy::{self, Bounds, Subject};
use crate::reconcile::{read_resources, recommendation_name, same_resources, write_resources};

/// The label a pod carries to have its resources set at creation.
pub const OPT_IN_LABEL: &str = "tally.dev/rightsize";
/// The value of [`OPT_IN_LABEL`] that opts in.
pub const OPT_IN_VALUE: &str = "enabled";
/// The annotation the webhook adds to every opted-in pod: what it set, or why nothing.
pub const RESULT_ANNOTATION: &str = "tally.dev/rightsize-result";
/// The label of the health check's dry-run probe pod.
pub const PROBE_LABEL: &str = "tally.dev/webhook-probe";
/// The webhook's path.
pub const PATH: &str = "/mutate-pods";
/// How soon a failed health check is repeated (at most: the probe interval if shorter).
const RETRY: Duration = Duration::from_secs(5);

/// Flags of the admission webhook (of `tally-agent operator` and `tally-agent webhook`).
#[derive(Debug, Clone, clap::Args)]
pub struct WebhookArgs {
    /// Serve the mutating admission webhook (HTTPS, `/mutate-pods`) on this address, e.g.
    /// 0.0.0.0:9443. Absent: `tally-agent operator` serves no webhook (`tally-agent webhook`
    /// uses 0.0.0.0:9443).
    #[arg(long, env = "TALLY_WEBHOOK_LISTEN")]
    pub webhook_listen: Option<SocketAddr>,
    /// The webhook's serving certificate (PEM; its chain may follow). Absent: a CA and a
    /// certificate for --webhook-dns-name are generated at start, and the CA is written into
    /// --webhook-configuration's caBundle.
    #[arg(long, env = "TALLY_WEBHOOK_CERT", requires = "webhook_key")]
    pub webhook_cert: Option<PathBuf>,
    /// The private key of --webhook-cert (PEM).
    #[arg(long, env = "TALLY_WEBHOOK_KEY", requires = "webhook_cert")]
    pub webhook_key: Option<PathBuf>,
    /// The DNS names or IP addresses the API server calls the webhook by, for the generated
    /// certificate (repeatable or comma-separated), e.g. tally-operator-webhook.tally.svc.
    #[arg(
        long = "webhook-dns-name",
        env = "TALLY_WEBHOOK_DNS_NAMES",
        value_delimiter = ','
    )]
    pub webhook_dns_names: Vec<String>,
    /// The MutatingWebhookConfiguration whose caBundle the operator keeps equal to its
    /// generated CA (not with --webhook-cert: then whoever made the certificate sets it).
    #[arg(long, env = "TALLY_WEBHOOK_CONFIGURATION")]
    pub webhook_configuration: Option<String>,
    /// How often the health check creates its dry-run probe pod (e.g. 60s; after a failure
    /// every 5 s at most).
    #[arg(long, env = "TALLY_WEBHOOK_PROBE_INTERVAL", default_value = "60s", value_parser = crate::parse_duration)]
    pub webhook_probe_interval: Duration,
    /// The namespace of the probe pod (default: the operator's own, from its ServiceAccount
    /// or kubeconfig). The webhook configuration must send it to the webhook.
    #[arg(long, env = "TALLY_WEBHOOK_PROBE_NAMESPACE")]
    pub webhook_probe_namespace: Option<String>,
}

/// Why the webhook could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the webhook's serving certificate: {0}")]
    Certificate(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The serving certificate and key, and the CA to publish (generated ones only).
struct Serving {
    cert_pem: String,
    key_pem: String,
    ca_pem: Option<String>,
}

fn serving(args: &WebhookArgs) -> Result<Serving, WebhookError> {
    if let (Some(cert), Some(key)) = (&args.webhook_cert, &args.webhook_key) {
        let read = |path: &PathBuf| {
            std::fs::read_to_string(path).map_err(|source| WebhookError::Read {
                path: path.clone(),
                source,
            })
        };
        return Ok(Serving {
            cert_pem: read(cert)?,
            key_pem: read(key)?,
            ca_pem: None,
        });
    }
    let names = if args.webhook_dns_names.is_empty() {
        vec!["localhost".to_string()]
    } else {
        args.webhook_dns_names.clone()
    };
    generate(&names).map_err(|e| WebhookError::Certificate(e.to_string()))
}

/// A CA and a server certificate for `names` (DNS names or IP addresses), generated anew at
/// every start (rcgen's default validity: the CA lives only as long as the process uses it).
fn generate(names: &[String]) -> Result<Serving, rcgen::Error> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "tally-operator webhook CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let mut server = CertificateParams::new(names.to_vec())?;
    server
        .distinguished_name
        .push(DnType::CommonName, names[0].as_str());
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate()?;
    let cert = server.signed_by(&key, &issuer)?;
    Ok(Serving {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        ca_pem: Some(ca_cert.pem()),
    })
}

/// Starts the webhook (HTTPS) and its health check; returns the bound address.
pub async fn start(
    client: Client,
    metrics: Arc<Metrics>,
    args: &WebhookArgs,
    listen: SocketAddr,
) -> Result<SocketAddr, WebhookError> {
    let serving = serving(args)?;
    if serving.ca_pem.is_some() && args.webhook_configuration.is_none() {
        tracing::warn!(
            "the webhook's certificate is generated but no --webhook-configuration names where to \
             publish its CA: the API server cannot trust it (give one, or --webhook-cert/--webhook-key)"
        );
    }
    let certs = CertificateDer::pem_slice_iter(serving.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| WebhookError::Certificate(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(serving.key_pem.as_bytes())
        .map_err(|e| WebhookError::Certificate(e.to_string()))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| WebhookError::Certificate(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| WebhookError::Certificate(e.to_string()))?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];

    let tcp = TcpListener::bind(listen)
        .await
        .map_err(|source| WebhookError::Listen {
            addr: listen,
            source,
        })?;
    let addr = tcp.local_addr().map_err(|source| WebhookError::Listen {
        addr: listen,
        source,
    })?;
    *metrics.webhook.lock().unwrap() = Some(WebhookHealth {
        healthy: false,
        reason: "not probed yet".into(),
    });
    let hook = Arc::new(Webhook {
        client: client.clone(),
        metrics: metrics.clone(),
    });
    let router = Router::new().route(PATH, post(mutate)).with_state(hook);
    let listener = TlsListener::spawn(tcp, TlsAcceptor::from(Arc::new(tls)));
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::error!(%error, "webhook listener stopped");
        }
    });

    let namespace = args
        .webhook_probe_namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let checker = Checker {
        client,
        metrics,
        namespace,
        configuration: args.webhook_configuration.clone(),
        ca_pem: serving.ca_pem,
    };
    let interval = args.webhook_probe_interval;
    tokio::spawn(async move {
        loop {
            // A failing check (or a caBundle not written yet: the configuration may be
            // created after the operator starts) is retried sooner, so recovery shows fast.
            let wait = if checker.check().await {
                interval
            } else {
                interval.min(RETRY)
            };
            tokio::time::sleep(wait).await;
        }
    });
    tracing::info!(%addr, path = PATH, "admission webhook started");
    Ok(addr)
}

/// Accepts TCP connections and completes TLS handshakes concurrently (each bounded by a
/// timeout), so a slow or silent client never holds up the others.
struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>,
    addr: SocketAddr,
}

impl TlsListener {
    fn spawn(tcp: TcpListener, acceptor: TlsAcceptor) -> TlsListener {
        let addr = tcp.local_addr().expect("bound address");
        let (send, ready) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "webhook accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let send = send.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(tls)) => {
                            let _ = send.send((tls, peer)).await;
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(%peer, %error, "webhook TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "webhook TLS handshake timed out"),
                    }
                });
            }
        });
        TlsListener { ready, addr }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accept loop never ends while the listener lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

/// What the webhook needs per request.
struct Webhook {
    client: Client,
    metrics: Arc<Metrics>,
}

fn bad_request(message: String) -> Response {
    tracing::info!(%message, "malformed admission request");
    (StatusCode::BAD_REQUEST, message).into_response()
}

async fn mutate(State(hook): State<Arc<Webhook>>, body: Bytes) -> Response {
    let review: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad_request(format!("not an AdmissionReview: {e}")),
    };
    let api_version = review["apiVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if !matches!(
        api_version.as_str(),
        "admission.k8s.io/v1" | "admission.k8s.io/v1beta1"
    ) {
        return bad_request(format!(
            "AdmissionReview apiVersion `{api_version}`: admission.k8s.io/v1 or v1beta1 expected"
        ));
    }
    let request = &review["request"];
    let Some(uid) = request["uid"].as_str() else {
        return bad_request("AdmissionReview without request.uid".into());
    };
    let ops = hook.review(request, Utc::now()).await;
    let mut response = json!({"uid": uid, "allowed": true});
    if !ops.is_empty() {
        let patch = serde_json::to_vec(&Value::Array(ops)).expect("JSON");
        response["patchType"] = json!("JSONPatch");
        response["patch"] = serde_json::to_value(ByteString(patch)).expect("base64");
    }
    axum::Json(json!({
        "apiVersion": api_version,
        "kind": "AdmissionReview",
        "response": response,
    }))
    .into_response()
}

/// What the webhook decided for one opted-in pod.
#[derive(Debug, PartialEq)]
enum Decision {
    /// JSON patch operations on the pod's containers, and what they do.
    Set(Vec<Value>, String),
    /// Why nothing changes.
    Unchanged(String),
}

#[derive(Debug, thiserror::Error)]
enum DecideError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

impl Webhook {
    /// The JSON patch for one admission request (empty: admit unchanged).
    async fn review(&self, request: &Value, now: DateTime<Utc>) -> Vec<Value> {
        let pod = &request["object"];
        if request["operation"] != "CREATE"
            || request["kind"]["kind"] != "Pod"
            || request["subResource"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
            || pod["metadata"]["labels"][OPT_IN_LABEL] != OPT_IN_VALUE
        {
            self.metrics.webhook_request("ignored");
            return Vec::new();
        }
        let namespace = request["namespace"]
            .as_str()
            .or(pod["metadata"]["namespace"].as_str())
            .unwrap_or_default();
        let (mut ops, message, result) = match self.decide(namespace, pod, now).await {
            Ok(Decision::Set(ops, message)) => (ops, message, "patched"),
            Ok(Decision::Unchanged(why)) => (Vec::new(), format!("unchanged: {why}"), "unchanged"),
            Err(error) => {
                tracing::warn!(%namespace, %error, "webhook cannot decide; the pod is admitted unchanged");
                (
                    Vec::new(),
                    format!("unchanged: the webhook could not decide ({error})"),
                    "error",
                )
            }
        };
        self.metrics.webhook_request(result);
        tracing::debug!(%namespace, pod = %pod_name(pod), %message, "admission");
        ops.push(annotation_op(pod, &message));
        ops
    }

    /// Whether and how the pod's containers change (see the module docs).
    async fn decide(
        &self,
        ns: &str,
        pod: &Value,
        now: DateTime<Utc>,
    ) -> Result<Decision, DecideError> {
        use Decision::Unchanged;
        let Some((owner_kind, owner_name)) = controller(&pod["metadata"]) else {
            return Ok(Unchanged(
                "the pod has no controller (a Deployment, StatefulSet or DaemonSet)".into(),
            ));
        };
        let (kind, name) = match owner_kind.as_str() {
            "ReplicaSet" => {
                let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), ns);
                let Some(rs) = api.get_metadata_opt(&owner_name).await? else {
                    return Ok(Unchanged(format!("ReplicaSet {owner_name} does not exist")));
                };
                let meta = serde_json::to_value(&rs.metadata).unwrap_or_default();
                match controller(&meta) {
                    Some((k, n)) if k == "Deployment" => (WorkloadKind::Deployment, n),
                    _ => {
                        return Ok(Unchanged(format!(
                            "ReplicaSet {owner_name} has no controlling Deployment"
                        )));
                    }
                }
            }
            other => match WorkloadKind::parse(other) {
                Some(WorkloadKind::Deployment) => {
                    return Ok(Unchanged(format!(
                        "its controller is Deployment {owner_name} itself, not a ReplicaSet of it"
                    )));
                }
                Some(kind) => (kind, owner_name),
                None => {
                    return Ok(Unchanged(format!(
                        "its controller is a {other}, not a Deployment, StatefulSet or DaemonSet"
                    )));
                }
            },
        };
        let target = format!("{} {name}", kind.as_str());
        let wr_name = recommendation_name(kind, &name);
        let wrs: Api<WorkloadRecommendation> = Api::namespaced(self.client.clone(), ns);
        let Some(wr) = wrs.get_opt(&wr_name).await? else {
            return Ok(Unchanged(format!(
                "no WorkloadRecommendation {wr_name} for {target}"
            )));
        };
        if wr.spec.approval == Some(Approval::Rejected) {
            return Ok(Unchanged(format!(
                "WorkloadRecommendation {wr_name} is rejected"
            )));
        }
        let phase = wr.status.as_ref().map(|s| s.phase).unwrap_or_default();
        if !matches!(phase, Phase::Approved | Phase::Applied) {
            return Ok(Unchanged(format!(
                "WorkloadRecommendation {wr_name} is {}, not Approved",
                phase.as_str()
            )));
        }
        let Some(labels) = self.workload_labels(ns, kind, &name).await? else {
            return Ok(Unchanged(format!("{target} does not exist")));
        };

        let policies: Api<Policy> = Api::all(self.client.clone());
        let valid: Vec<Policy> = policies
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|p| policy::validate(&p.spec).is_empty())
            .collect();
        let namespace_labels = if valid.iter().any(|p| p.spec.namespace_selector.is_some()) {
            Api::<Namespace>::all(self.client.clone())
                .get_metadata_opt(ns)
                .await?
                .map(|n| n.metadata.labels.unwrap_or_default())
                .unwrap_or_default()
        } else {
            BTreeMap::new()
        };
        let subject = Subject {
            namespace: ns,
            namespace_labels: &namespace_labels,
            kind,
            name: &name,
            labels: &labels,
        };
        let mut covering: Vec<&Policy> = valid
            .iter()
            .filter(|p| policy::covers(&p.spec, &subject))
            .collect();
        covering.sort_by_key(|p| p.name_any());
        Ok(plan_pod(pod, &wr, &covering, now))
    }

    /// The labels of a workload (None: it does not exist).
    async fn workload_labels(
        &self,
        ns: &str,
        kind: WorkloadKind,
        name: &str,
    ) -> Result<Option<BTreeMap<String, String>>, kube::Error> {
        let c = self.client.clone();
        let meta = match kind {
            WorkloadKind::Deployment => Api::<Deployment>::namespaced(c, ns)
                .get_metadata_opt(name)
                .await?
                .map(|m| m.metadata),
            WorkloadKind::StatefulSet => Api::<StatefulSet>::namespaced(c, ns)
                .get_metadata_opt(name)
                .await?
                .map(|m| m.metadata),
            WorkloadKind::DaemonSet => Api::<DaemonSet>::namespaced(c, ns)
                .get_metadata_opt(name)
                .await?
                .map(|m| m.metadata),
        };
        Ok(meta.map(|m| m.labels.unwrap_or_default()))
    }
}

/// The decision for a pod of a workload whose recommendation is approved, under the valid
/// Policies that cover the workload (sorted by name). The same rules as the reconciler.
fn plan_pod(
    pod: &Value,
    wr: &WorkloadRecommendation,
    covering: &[&Policy],
    now: DateTime<Utc>,
) -> Decision {
    use Decision::Unchanged;
    let target = format!("{} {}", wr.spec.target.kind.as_str(), wr.spec.target.name);
    if covering.is_empty() {
        return Unchanged(format!("no Policy covers {target}"));
    }
    if let Some(audit) = covering.iter().find(|p| p.spec.mode == Mode::AuditOnly) {
        return Unchanged(format!("policy {} is audit-only", audit.name_any()));
    }
    let names = covering
        .iter()
        .map(|p| p.name_any())
        .collect::<Vec<_>>()
        .join("+");
    if !covering
        .iter()
        .any(|p| p.spec.apply_method == ApplyMethod::Webhook)
    {
        return Unchanged(format!(
            "policy {names} does not apply through the webhook (applyMethod)"
        ));
    }
    if let Some(closed) = covering
        .iter()
        .find(|p| !policy::in_window(&p.spec.windows, now))
    {
        return Unchanged(format!(
            "outside the time window of policy {}",
            closed.name_any()
        ));
    }
    let bounds = Bounds::all(covering.iter().map(|p| &p.spec));
    if let Some(conflict) = bounds.conflict() {
        return Unchanged(format!("policies {names} cannot all hold ({conflict})"));
    }
    let containers = pod["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut ops = Vec::new();
    for rec in &wr.spec.containers {
        let Some((index, container)) = containers
            .iter()
            .enumerate()
            .find(|(_, c)| c["name"] == rec.name.as_str())
        else {
            continue;
        };
        let resources = container.get("resources").filter(|r| !r.is_null());
        let current = read_resources(resources);
        let planned = policy::plan(&current, &rec.recommended, &bounds);
        let new = write_resources(resources, &planned);
        if !same_resources(resources, Some(&new)) {
            let base = format!("/spec/containers/{index}");
            ops.push(json!({"op": "test", "path": format!("{base}/name"), "value": rec.name}));
            ops.push(json!({"op": "add", "path": format!("{base}/resources"), "value": new}));
        }
    }
    let run = &wr.spec.run_id;
    if ops.is_empty() {
        return Unchanged(format!(
            "the containers already have the values policy {names} allows (run {run})"
        ));
    }
    Decision::Set(
        ops,
        format!(
            "set by policy {names} from WorkloadRecommendation {} (run {run})",
            wr.name_any()
        ),
    )
}

/// The controlling owner (kind, name) in a metadata object.
fn controller(meta: &Value) -> Option<(String, String)> {
    meta["ownerReferences"]
        .as_array()?
        .iter()
        .find(|o| o["controller"] == true)
        .and_then(|o| Some((o["kind"].as_str()?.into(), o["name"].as_str()?.into())))
}

fn pod_name(pod: &Value) -> &str {
    pod["metadata"]["name"]
        .as_str()
        .or(pod["metadata"]["generateName"].as_str())
        .unwrap_or_default()
}

/// The JSON patch operation that sets [`RESULT_ANNOTATION`].
fn annotation_op(pod: &Value, message: &str) -> Value {
    if pod["metadata"]["annotations"].is_object() {
        json!({
            "op": "add",
            "path": format!("/metadata/annotations/{}", RESULT_ANNOTATION.replace('~', "~0").replace('/', "~1")),
            "value": message,
        })
    } else {
        json!({"op": "add", "path": "/metadata/annotations", "value": {RESULT_ANNOTATION: message}})
    }
}

/// The health check: keeps the caBundle right and proves the webhook answers.
struct Checker {
    client: Client,
    metrics: Arc<Metrics>,
    namespace: String,
    configuration: Option<String>,
    ca_pem: Option<String>,
}

impl Checker {
    /// One check; whether everything was fine.
    async fn check(&self) -> bool {
        let mut fine = true;
        if let (Some(name), Some(ca)) = (&self.configuration, &self.ca_pem)
            && let Err(error) = self.publish_ca(name, ca).await
        {
            fine = false;
            tracing::warn!(configuration = %name, %error, "cannot write the webhook's caBundle");
        }
        let result = probe(&self.client, &self.namespace).await;
        self.metrics.webhook_probes.fetch_add(1, Ordering::Relaxed);
        let mut state = self.metrics.webhook.lock().unwrap();
        let was_healthy = state.as_ref().is_some_and(|s| s.healthy);
        match result {
            Ok(message) => {
                if !was_healthy {
                    tracing::info!(namespace = %self.namespace, %message, "admission webhook answers the dry-run probe");
                }
                *state = Some(WebhookHealth {
                    healthy: true,
                    reason: String::new(),
                });
                fine
            }
            Err(reason) => {
                self.metrics
                    .webhook_probe_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(namespace = %self.namespace, %reason, "admission webhook health check failed");
                *state = Some(WebhookHealth {
                    healthy: false,
                    reason,
                });
                false
            }
        }
    }

    /// Writes `ca` into the caBundle of every webhook of the configuration that differs.
    async fn publish_ca(&self, name: &str, ca: &str) -> Result<(), kube::Error> {
        let api: Api<MutatingWebhookConfiguration> = Api::all(self.client.clone());
        let config = api.get(name).await?;
        let bundle = ByteString(ca.as_bytes().to_vec());
        let mut ops = Vec::new();
        for (i, webhook) in config.webhooks.iter().flatten().enumerate() {
            if webhook.client_config.ca_bundle.as_ref() != Some(&bundle) {
                ops.push(json!({"op": "test", "path": format!("/webhooks/{i}/name"), "value": webhook.name}));
                ops.push(json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": bundle}));
            }
        }
        if ops.is_empty() {
            return Ok(());
        }
        let patch: json_patch::Patch =
            serde_json::from_value(Value::Array(ops)).expect("a JSON patch");
        api.patch(
            name,
            &PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            },
            &Patch::<()>::Json(patch),
        )
        .await?;
        tracing::info!(configuration = %name, "wrote the webhook's CA into caBundle");
        Ok(())
    }
}

/// The probe pod: opted in, owned by nothing, acceptable under the restricted Pod Security
/// Standard and any quota (it is never stored: the create is a dry run).
fn probe_pod() -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "tally-webhook-probe",
            "labels": {OPT_IN_LABEL: OPT_IN_VALUE, PROBE_LABEL: "true"},
        },
        "spec": {
            "automountServiceAccountToken": false,
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "probe",
                "image": "tally.invalid/webhook-probe:never-pulled",
                "resources": {"requests": {"cpu": "1m", "memory": "1Mi"}, "limits": {"cpu": "1m", "memory": "1Mi"}},
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
            }],
        },
    }))
    .expect("the probe pod")
}

/// One dry-run create of the probe pod in `namespace`: Ok with the webhook's annotation when
/// the webhook answered, Err with why not.
pub async fn probe(client: &Client, namespace: &str) -> Result<String, String> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let params = PostParams {
        dry_run: true,
        field_manager: Some(FIELD_MANAGER.into()),
    };
    let admitted = api.create(&params, &probe_pod()).await.map_err(|e| {
        format!("the dry-run create of the probe pod in namespace {namespace} failed: {e}")
    })?;
    match admitted.annotations().get(RESULT_ANNOTATION) {
        Some(message) => Ok(message.clone()),
        None => Err(format!(
            "the dry-run probe pod in namespace {namespace} was admitted without the {RESULT_ANNOTATION} \
             annotation: the API server did not reach the webhook (check the MutatingWebhookConfiguration's \
             service or URL, its caBundle and its selectors)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{
        ContainerRecommendation, PolicySpec, Resources, TargetRef, TimeWindow,
        WorkloadRecommendationSpec,
    };

    fn policy(name: &str, spec: Value) -> Policy {
        let spec: PolicySpec = serde_json::from_value(spec).unwrap();
        Policy::new(name, spec)
    }

    fn recommendation() -> WorkloadRecommendation {
        WorkloadRecommendation::new(
            "deployment-web",
            WorkloadRecommendationSpec {
                target: TargetRef {
                    kind: WorkloadKind::Deployment,
                    name: "web".into(),
                },
                run_id: "run-1".into(),
                containers: vec![ContainerRecommendation {
                    name: "main".into(),
                    current: Resources::default(),
                    recommended: Resources {
                        cpu_request_cores: Some(0.1),
                        memory_request_bytes: Some(200 << 20),
                        ..Default::default()
                    },
                }],
                replicas: None,
                hpa: None,
                confidence: 0.9,
                why: "test".into(),
                savings_monthly_usd: 1.0,
                approval: None,
            },
        )
    }

    fn pod() -> Value {
        json!({
            "metadata": {"labels": {OPT_IN_LABEL: OPT_IN_VALUE}},
            "spec": {"containers": [
                {"name": "side", "image": "x"},
                {"name": "main", "image": "x", "resources": {"requests": {"cpu": "1", "memory": "256Mi"}, "limits": {"memory": "512Mi"}}},
            ]},
        })
    }

    #[test]
    fn a_webhook_policy_sets_the_requests_within_step_and_bounds() {
        let p = policy(
            "hook",
            json!({"mode": "auto-apply", "applyMethod": "webhook", "maxStepPercent": 50, "minMemory": "224Mi"}),
        );
        let decision = plan_pod(&pod(), &recommendation(), &[&p], Utc::now());
        let Decision::Set(ops, message) = decision else {
            panic!("{decision:?}");
        };
        assert_eq!(
            ops,
            vec![
                json!({"op": "test", "path": "/spec/containers/1/name", "value": "main"}),
                json!({"op": "add", "path": "/spec/containers/1/resources",
                       "value": {"requests": {"cpu": "500m", "memory": "224Mi"}, "limits": {"memory": "512Mi"}}}),
            ]
        );
        assert!(
            message.contains("hook") && message.contains("run-1"),
            "{message}"
        );
        // The patch applies to the pod as the API server would apply it.
        let mut patched = pod();
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops)).unwrap();
        json_patch::patch(&mut patched, &patch).unwrap();
        assert_eq!(
            patched["spec"]["containers"][1]["resources"]["requests"]["cpu"],
            "500m"
        );
    }

    #[test]
    fn other_policies_leave_the_pod_unchanged_and_say_why() {
        let now = Utc::now();
        let why = |policies: &[&Policy]| match plan_pod(&pod(), &recommendation(), policies, now) {
            Decision::Unchanged(why) => why,
            other => panic!("{other:?}"),
        };
        assert!(why(&[]).contains("no Policy covers Deployment web"));
        let patch = policy("patch", json!({"mode": "auto-apply"}));
        assert!(why(&[&patch]).contains("does not apply through the webhook"));
        let hook = policy(
            "hook",
            json!({"mode": "auto-apply", "applyMethod": "webhook"}),
        );
        let audit = policy("audit", json!({"mode": "audit-only"}));
        assert!(why(&[&audit, &hook]).contains("audit-only"));
        // A window that closed an hour ago and opens in an hour.
        let hour = |offset: i64| {
            let h = (now.timestamp() / 3600 + offset).rem_euclid(24);
            format!("{h:02}:00")
        };
        let mut later = policy(
            "later",
            json!({"mode": "auto-apply", "applyMethod": "webhook"}),
        );
        later.spec.windows = vec![TimeWindow {
            days: Vec::new(),
            start: hour(1),
            end: hour(2),
            time_zone: None,
        }];
        assert!(why(&[&later]).contains("time window of policy later"));
        let floor = policy(
            "floor",
            json!({"mode": "auto-apply", "applyMethod": "webhook", "minCpu": "2"}),
        );
        let ceiling = policy("ceiling", json!({"mode": "auto-apply", "maxCpu": "1"}));
        assert!(why(&[&ceiling, &floor]).contains("cannot all hold"));
    }

    #[test]
    fn the_annotation_is_added_whether_or_not_the_pod_has_annotations() {
        let op = annotation_op(&json!({"metadata": {}}), "m");
        assert_eq!(
            op,
            json!({"op": "add", "path": "/metadata/annotations", "value": {RESULT_ANNOTATION: "m"}})
        );
        let op = annotation_op(&json!({"metadata": {"annotations": {"a": "b"}}}), "m");
        assert_eq!(
            op["path"],
            "/metadata/annotations/tally.dev~1rightsize-result"
        );
    }

    #[test]
    fn the_controller_is_the_owner_marked_controller() {
        let meta = json!({"ownerReferences": [
            {"kind": "Other", "name": "x"},
            {"kind": "ReplicaSet", "name": "web-5d4f", "controller": true},
        ]});
        assert_eq!(
            controller(&meta),
            Some(("ReplicaSet".into(), "web-5d4f".into()))
        );
        assert_eq!(controller(&json!({})), None);
    }

    /// The AdmissionReview envelope, in-process. The pods here never make the webhook ask the
    /// API (not opted in, or no controller), so the client points at an address where
    /// nothing listens; the real API server's side is tests/e2e/operator_webhook.rs.
    #[tokio::test]
    async fn the_answer_echoes_the_version_and_uid_and_never_denies() {
        let client =
            Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap())).unwrap();
        let metrics = Arc::new(Metrics::default());
        *metrics.webhook.lock().unwrap() = Some(WebhookHealth {
            healthy: true,
            reason: String::new(),
        });
        let hook = Arc::new(Webhook { client, metrics });
        let call = |review: Value| {
            let hook = hook.clone();
            async move {
                let response = mutate(State(hook), Bytes::from(review.to_string())).await;
                let status = response.status();
                let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                    .await
                    .unwrap();
                (
                    status,
                    serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null),
                )
            }
        };
        let review = |version: &str, labels: Value| {
            json!({
                "apiVersion": format!("admission.k8s.io/{version}"),
                "kind": "AdmissionReview",
                "request": {
                    "uid": "u-1", "operation": "CREATE", "namespace": "shop",
                    "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "object": {"metadata": {"name": "p", "labels": labels}, "spec": {"containers": []}},
                },
            })
        };
        // Not opted in: allowed, no patch.
        let (status, answer) = call(review("v1", json!({"app": "x"}))).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            answer,
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                   "response": {"uid": "u-1", "allowed": true}})
        );
        // Opted in without a controller, asked in v1beta1: answered in v1beta1, allowed, and
        // the only change is the annotation saying why nothing else changed.
        let (_, answer) = call(review("v1beta1", json!({OPT_IN_LABEL: OPT_IN_VALUE}))).await;
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1beta1");
        let response = &answer["response"];
        assert_eq!(response["allowed"], true);
        assert_eq!(response["uid"], "u-1");
        assert_eq!(response["patchType"], "JSONPatch");
        let patch: ByteString = serde_json::from_value(response["patch"].clone()).unwrap();
        let ops: Value = serde_json::from_slice(&patch.0).unwrap();
        assert_eq!(ops.as_array().unwrap().len(), 1, "{ops}");
        assert_eq!(ops[0]["path"], "/metadata/annotations");
        assert!(
            ops[0]["value"][RESULT_ANNOTATION]
                .as_str()
                .unwrap()
                .starts_with("unchanged: the pod has no controller"),
            "{ops}"
        );
        // Not an AdmissionReview: refused as a bad request (the API server then applies the
        // failure policy), never a denial.
        let (status, _) = call(json!({"apiVersion": "v1", "kind": "Pod"})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let metrics = hook.metrics.render();
        for result in ["ignored", "unchanged"] {
            assert!(
                metrics.contains(&format!(
                    "tally_operator_webhook_requests_total{{result=\"{result}\"}} 1"
                )),
                "{metrics}"
            );
        }
    }

    #[test]
    fn a_generated_certificate_names_the_addresses() {
        let serving = generate(&["10.213.0.1".into(), "svc.ns.svc".into()]).unwrap();
        assert!(serving.ca_pem.unwrap().contains("BEGIN CERTIFICATE"));
        assert!(serving.cert_pem.contains("BEGIN CERTIFICATE"));
        assert!(serving.key_pem.contains("PRIVATE KEY"));
    }
}
