//! Certificates without a manual step: an agent proves who it is with its Kubernetes
//! ServiceAccount token and receives a short-lived client certificate for mutual TLS.
//!
//! The agent creates its own key pair and sends only a certificate signing request (the
//! private key never leaves the agent) to the appliance's HTTPS bootstrap endpoint
//! ([`BOOTSTRAP_PATH`]) with `Authorization: Bearer <token>`. The appliance checks the token
//! with a TokenReview against the API server and that the ServiceAccount is one it allows,
//! and answers a certificate signed by its CA, whose common name is the ServiceAccount's
//! user name (`system:serviceaccount:<namespace>:<name>`). The agent renews it at two
//! thirds of its life ([`IssuedCertificate::renew_at_ms`]).

use std::time::Duration;

use rcgen::{CertificateParams, DnType, KeyPair};
use serde::{Deserialize, Serialize};

use crate::ClientTls;

/// The path of the bootstrap endpoint on the appliance's bootstrap listener (POST).
pub const BOOTSTRAP_PATH: &str = "/v1/bootstrap/certificate";

/// The body an agent posts: a PEM certificate signing request (PKCS #10).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertificateRequest {
    pub csr_pem: String,
}

/// The appliance's answer: the signed certificate, the CA that signed it (the same CA signs
/// the appliance's own server certificate) and the certificate's validity.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertificateResponse {
    pub cert_pem: String,
    pub ca_pem: String,
    /// Start of validity, Unix milliseconds.
    pub not_before_ms: i64,
    /// End of validity, Unix milliseconds.
    pub not_after_ms: i64,
    /// Whom the certificate names: the ServiceAccount's user name.
    pub identity: String,
}

/// The JSON error body of a refused request: `{"error": "..."}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BootstrapErrorBody {
    pub error: String,
}

/// A client certificate the appliance issued, ready for [`crate::IngestClient::connect`].
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    pub tls: ClientTls,
    pub not_before_ms: i64,
    pub not_after_ms: i64,
    pub identity: String,
}

impl IssuedCertificate {
    /// When to ask for a new certificate: two thirds into its validity.
    pub fn renew_at_ms(&self) -> i64 {
        self.not_before_ms + (self.not_after_ms - self.not_before_ms) * 2 / 3
    }
}

/// Why no certificate was issued.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("cannot read the appliance CA certificate: {0}")]
    Ca(String),
    #[error("cannot create a key pair and signing request: {0}")]
    Key(#[from] rcgen::Error),
    #[error("cannot reach the bootstrap endpoint {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the appliance refused to issue a certificate ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("the bootstrap endpoint sent an answer that is not a certificate: {0}")]
    BadAnswer(String),
}

/// Asks the appliance at `bootstrap_url` (`https://host:port`) for a client certificate,
/// proving the caller's identity with `token` (a ServiceAccount token). The appliance's
/// certificate must be signed by `ca_pem`.
pub async fn request_certificate(
    bootstrap_url: &str,
    ca_pem: &[u8],
    token: &str,
) -> Result<IssuedCertificate, BootstrapError> {
    let ca =
        reqwest::Certificate::from_pem(ca_pem).map_err(|e| BootstrapError::Ca(e.to_string()))?;
    let http = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .https_only(true)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| BootstrapError::Ca(e.to_string()))?;

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "tally-agent");
    let csr_pem = params.serialize_request(&key)?.pem()?;

    let url = format!("{}{BOOTSTRAP_PATH}", bootstrap_url.trim_end_matches('/'));
    let response = http
        .post(&url)
        .bearer_auth(token.trim())
        .json(&CertificateRequest { csr_pem })
        .send()
        .await
        .map_err(|e| BootstrapError::Unreachable {
            url: url.clone(),
            reason: error_chain(&e),
        })?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| BootstrapError::Unreachable {
            url: url.clone(),
            reason: error_chain(&e),
        })?;
    if !status.is_success() {
        let message = serde_json::from_slice::<BootstrapErrorBody>(&body)
            .map(|b| b.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
        return Err(BootstrapError::Refused {
            status: status.as_u16(),
            message,
        });
    }
    let answer: CertificateResponse =
        serde_json::from_slice(&body).map_err(|e| BootstrapError::BadAnswer(e.to_string()))?;
    Ok(IssuedCertificate {
        tls: ClientTls {
            ca_pem: answer.ca_pem.into_bytes(),
            cert_pem: answer.cert_pem.into_bytes(),
            key_pem: key.serialize_pem().into_bytes(),
            domain: None,
        },
        not_before_ms: answer.not_before_ms,
        not_after_ms: answer.not_after_ms,
        identity: answer.identity,
    })
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_two_thirds_into_the_validity() {
        let issued = IssuedCertificate {
            tls: ClientTls {
                ca_pem: vec![],
                cert_pem: vec![],
                key_pem: vec![],
                domain: None,
            },
            not_before_ms: 1_000,
            not_after_ms: 4_000,
            identity: "x".into(),
        };
        assert_eq!(issued.renew_at_ms(), 3_000);
    }

    #[tokio::test]
    async fn an_unreachable_appliance_is_a_clear_error() {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap().pem();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = request_certificate(&format!("https://127.0.0.1:{port}"), ca.as_bytes(), "t")
            .await
            .unwrap_err();
        assert!(matches!(err, BootstrapError::Unreachable { .. }), "{err}");
        assert!(err.to_string().contains(BOOTSTRAP_PATH), "{err}");
    }
}
