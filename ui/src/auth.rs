//! Who may use the UI. Users sign in with a Kubernetes bearer token: the API server says who
//! it belongs to (TokenReview) and cluster RBAC says what they may do (SubjectAccessReview).
//! The demo instead prints a one-time sign-in link and needs no cluster.
//!
//! Sessions live in a cookie signed with HMAC-SHA256 (key random per process, so a restart
//! signs everyone out); the session carries a random CSRF token that every form and every
//! htmx request must send back.

use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "tally_session";
/// The sign-in form's CSRF cookie (double submit: before there is a session).
pub const SIGN_IN_COOKIE: &str = "tally_sign_in";
/// The header htmx requests carry the CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a session lasts.
pub const SESSION_SECONDS: i64 = 12 * 3600;

/// What a signed-in user may do, as cluster RBAC decided at sign-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Permissions {
    /// See every page (RBAC: `list pods` cluster-wide, because Tally shows every pod's data).
    pub view: bool,
    /// Approve or reject recommendations (RBAC: `update workloadrecommendations.tally.dev`).
    pub approve: bool,
    /// Create and edit policies (RBAC: `update policies.tally.dev`).
    pub admin: bool,
}

/// A signed-in user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub user: String,
    pub permissions: Permissions,
    /// Sent back by every form and htmx request.
    pub csrf: String,
    /// Unix seconds.
    pub expires: i64,
}

/// How users sign in.
#[derive(Debug, Clone)]
pub enum SignIn {
    /// A one-time link (the demo): whoever opens it first gets every permission.
    OneTimeLink,
    /// A Kubernetes bearer token, checked against the API server.
    Kubernetes(KubernetesAuth),
    /// Nobody can sign in: the appliance does not know an API server (the page says how to
    /// configure one).
    Unconfigured,
}

/// Where TokenReview and SubjectAccessReview requests go.
#[derive(Debug, Clone)]
pub struct KubernetesAuth {
    /// `https://host:port` of the API server.
    pub api_server: String,
    /// The API server's CA (PEM); `None` trusts the system roots.
    pub ca_pem: Option<Vec<u8>>,
    /// The appliance's own token: it needs `create` on `tokenreviews` and
    /// `subjectaccessreviews` (the `system:auth-delegator` ClusterRole).
    pub token: String,
}

impl SignIn {
    /// In a pod: the API server from `KUBERNETES_SERVICE_HOST`/`_PORT` and the service
    /// account's token and CA; elsewhere [`SignIn::Unconfigured`].
    pub fn in_cluster() -> SignIn {
        let dir = std::path::Path::new("/var/run/secrets/kubernetes.io/serviceaccount");
        let (Ok(host), Ok(port)) = (
            std::env::var("KUBERNETES_SERVICE_HOST"),
            std::env::var("KUBERNETES_SERVICE_PORT"),
        ) else {
            return SignIn::Unconfigured;
        };
        let (Ok(token), Ok(ca)) = (
            std::fs::read_to_string(dir.join("token")),
            std::fs::read(dir.join("ca.crt")),
        ) else {
            return SignIn::Unconfigured;
        };
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        SignIn::Kubernetes(KubernetesAuth {
            api_server: format!("https://{host}:{port}"),
            ca_pem: Some(ca),
            token: token.trim().to_string(),
        })
    }
}

/// Why a sign-in failed, in words for the sign-in page.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("the API server did not accept this token")]
    Unauthenticated,
    #[error(
        "{user} may not view Tally: cluster RBAC does not allow `list pods` in every namespace"
    )]
    Forbidden { user: String },
    #[error("cannot reach the Kubernetes API server at {url}: {message}")]
    ApiServer { url: String, message: String },
    #[error("this sign-in link was already used or is not valid; restart the demo for a new one")]
    BadLink,
    #[error(
        "no Kubernetes API server is configured, so nobody can sign in: run Tally in the cluster (it uses its service account) or start it with `tally demo`"
    )]
    Unconfigured,
}

/// Signs and checks session cookies and holds the demo's one-time link.
#[derive(Clone)]
pub struct Auth {
    key: hmac::Key,
    rng: SystemRandom,
    pub(crate) sign_in: SignIn,
    one_time: Arc<Mutex<Option<String>>>,
    http: reqwest::Client,
    /// Mark cookies `Secure` (when served over HTTPS).
    pub secure_cookies: bool,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("sign_in", &self.sign_in)
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// A fresh random signing key; for [`SignIn::OneTimeLink`] also a fresh one-time token.
    pub fn new(sign_in: SignIn) -> Auth {
        let rng = SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng).expect("system randomness");
        let mut http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(10));
        if let SignIn::Kubernetes(k8s) = &sign_in
            && let Some(pem) = &k8s.ca_pem
        {
            match reqwest::Certificate::from_pem(pem) {
                Ok(ca) => http = http.tls_built_in_root_certs(false).add_root_certificate(ca),
                Err(error) => tracing::error!(%error, "the Kubernetes CA is not valid PEM"),
            }
        }
        let one_time = match sign_in {
            SignIn::OneTimeLink => Some(random_token(&rng)),
            _ => None,
        };
        Auth {
            key,
            rng,
            sign_in,
            one_time: Arc::new(Mutex::new(one_time)),
            http: http.build().expect("HTTP client"),
            secure_cookies: false,
        }
    }

    /// The demo's one-time sign-in path (`/sign-in/link?token=…`), while it is unused.
    pub fn one_time_path(&self) -> Option<String> {
        let token = self.one_time.lock().expect("lock").clone()?;
        Some(format!("/sign-in/link?token={token}"))
    }

    /// A fresh random token (CSRF, one-time links).
    pub fn random(&self) -> String {
        random_token(&self.rng)
    }

    /// Uses up the one-time token: a session with every permission.
    pub fn redeem_link(&self, token: &str) -> Result<Session, AuthError> {
        let mut slot = self.one_time.lock().expect("lock");
        match slot.as_deref() {
            Some(expected) if constant_time_eq(expected.as_bytes(), token.as_bytes()) => {
                *slot = None;
                Ok(self.session(
                    "demo".to_string(),
                    Permissions {
                        view: true,
                        approve: true,
                        admin: true,
                    },
                ))
            }
            _ => Err(AuthError::BadLink),
        }
    }

    fn session(&self, user: String, permissions: Permissions) -> Session {
        Session {
            user,
            permissions,
            csrf: self.random(),
            expires: chrono::Utc::now().timestamp() + SESSION_SECONDS,
        }
    }

    /// The cookie value for a session: `base64(json).base64(hmac)`.
    pub fn seal(&self, session: &Session) -> String {
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(session).expect("serialisable"));
        let tag = hmac::sign(&self.key, payload.as_bytes());
        format!("{payload}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// The session in a cookie value, if the signature holds and it has not expired.
    pub fn open(&self, cookie: &str) -> Option<Session> {
        let (payload, tag) = cookie.split_once('.')?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        hmac::verify(&self.key, payload.as_bytes(), &tag).ok()?;
        let session: Session =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
        (session.expires > chrono::Utc::now().timestamp()).then_some(session)
    }

    /// Signs in with a Kubernetes bearer token: TokenReview, then SubjectAccessReviews.
    pub async fn sign_in_with_token(&self, token: &str) -> Result<Session, AuthError> {
        let k8s = match &self.sign_in {
            SignIn::Kubernetes(k8s) => k8s,
            SignIn::OneTimeLink => {
                return Err(AuthError::ApiServer {
                    url: "(none)".into(),
                    message: "the demo has no cluster; use the sign-in link it printed".into(),
                });
            }
            SignIn::Unconfigured => return Err(AuthError::Unconfigured),
        };
        let review = self
            .post(
                k8s,
                "/apis/authentication.k8s.io/v1/tokenreviews",
                serde_json::json!({
                    "apiVersion": "authentication.k8s.io/v1",
                    "kind": "TokenReview",
                    "spec": { "token": token.trim() },
                }),
            )
            .await?;
        let status = &review["status"];
        if status["authenticated"].as_bool() != Some(true) {
            return Err(AuthError::Unauthenticated);
        }
        let user = &status["user"];
        let name = user["username"].as_str().unwrap_or_default().to_string();
        let groups = user["groups"].clone();
        let uid = user["uid"].clone();
        let may = |verb: &'static str, group: &'static str, resource: &'static str| {
            let body = serde_json::json!({
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SubjectAccessReview",
                "spec": {
                    "user": name,
                    "groups": groups,
                    "uid": uid,
                    "resourceAttributes": { "verb": verb, "group": group, "resource": resource },
                },
            });
            async move {
                let answer = self
                    .post(
                        k8s,
                        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                        body,
                    )
                    .await?;
                Ok::<bool, AuthError>(answer["status"]["allowed"].as_bool() == Some(true))
            }
        };
        let permissions = Permissions {
            view: may("list", "", "pods").await?,
            approve: may("update", "tally.dev", "workloadrecommendations").await?,
            admin: may("update", "tally.dev", "policies").await?,
        };
        if !permissions.view {
            return Err(AuthError::Forbidden { user: name });
        }
        Ok(self.session(name, permissions))
    }

    async fn post(
        &self,
        k8s: &KubernetesAuth,
        path: &str,
        body: serde_json::Value,
    ) -> Result<serde_json::Value, AuthError> {
        let url = format!("{}{path}", k8s.api_server.trim_end_matches('/'));
        let failed = |message: String| AuthError::ApiServer {
            url: url.clone(),
            message,
        };
        let response = self
            .http
            .post(&url)
            .bearer_auth(&k8s.token)
            .json(&body)
            .send()
            .await
            .map_err(|e| failed(e.to_string()))?;
        let status = response.status();
        let answer: serde_json::Value = response.json().await.map_err(|e| failed(e.to_string()))?;
        if !status.is_success() {
            return Err(failed(format!(
                "{status}: {}",
                answer["message"].as_str().unwrap_or("no message")
            )));
        }
        Ok(answer)
    }
}

fn random_token(rng: &SystemRandom) -> String {
    let mut bytes = [0u8; 24];
    rng.fill(&mut bytes).expect("system randomness");
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Compares secrets without leaking where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A cookie's value from the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_session_opens_and_a_tampered_one_does_not() {
        let auth = Auth::new(SignIn::OneTimeLink);
        let session = auth.redeem_link(
            auth.one_time_path()
                .unwrap()
                .strip_prefix("/sign-in/link?token=")
                .unwrap(),
        );
        let session = session.unwrap();
        let sealed = auth.seal(&session);
        assert_eq!(auth.open(&sealed), Some(session.clone()));

        let (payload, tag) = sealed.split_once('.').unwrap();
        let mut forged = session.clone();
        forged.user = "admin".into();
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        assert_eq!(auth.open(&format!("{forged_payload}.{tag}")), None);
        assert_eq!(auth.open(payload), None);
        // Another process's key does not open it either.
        assert_eq!(Auth::new(SignIn::OneTimeLink).open(&sealed), None);

        let mut expired = session;
        expired.expires = chrono::Utc::now().timestamp() - 1;
        assert_eq!(auth.open(&auth.seal(&expired)), None);
    }

    #[test]
    fn the_one_time_link_works_once() {
        let auth = Auth::new(SignIn::OneTimeLink);
        let path = auth.one_time_path().unwrap();
        let token = path.strip_prefix("/sign-in/link?token=").unwrap();
        assert!(matches!(auth.redeem_link("wrong"), Err(AuthError::BadLink)));
        let session = auth.redeem_link(token).unwrap();
        assert!(session.permissions.admin);
        assert!(matches!(auth.redeem_link(token), Err(AuthError::BadLink)));
        assert_eq!(auth.one_time_path(), None);
    }
}
