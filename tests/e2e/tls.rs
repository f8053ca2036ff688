//! Mutual TLS on the Flight endpoint: a client with a certificate from the appliance's client
//! CA writes; a client without a certificate, with one from another CA, or without TLS at
//! all is refused.

use tally_appliance::tls::{CertificateAuthority, ServerTlsFiles};
use tally_appliance::{Appliance, local_options};
use tally_e2e::events;
use tally_wire::{ClientTls, IngestClient, Table};

struct Setup {
    _dir: tempfile::TempDir,
    appliance: Appliance,
    ca: CertificateAuthority,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::generate("Tally test CA").unwrap();
    let server = ca.server(&["localhost", "127.0.0.1"]).unwrap();
    let write = |name: &str, pem: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    let files = ServerTlsFiles {
        cert: write("server.pem", &server.cert_pem),
        key: write("server-key.pem", &server.key_pem),
        client_ca: write("ca.pem", &ca.cert.cert_pem),
    };
    let mut options = local_options(dir.path().join("data"));
    options.tls = Some(files);
    let appliance = Appliance::start(options).await.unwrap();
    Setup {
        _dir: dir,
        appliance,
        ca,
    }
}

fn url(appliance: &Appliance) -> String {
    format!("https://localhost:{}", appliance.flight_addr.port())
}

async fn try_write(url: &str, tls: Option<ClientTls>) -> Result<(), String> {
    let mut client = IngestClient::connect(url, tls)
        .await
        .map_err(|e| e.to_string())?;
    client
        .write(Table::Events, vec![events("tls", 0, 2)])
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn only_clients_with_a_certificate_from_the_client_ca_may_write() {
    let s = setup().await;
    let url = url(&s.appliance);
    let ca_pem = s.ca.cert.cert_pem.clone().into_bytes();

    let agent = s.ca.client("collector").unwrap();
    let trusted = ClientTls {
        ca_pem: ca_pem.clone(),
        cert_pem: agent.cert_pem.into_bytes(),
        key_pem: agent.key_pem.into_bytes(),
        domain: None,
    };
    try_write(&url, Some(trusted))
        .await
        .expect("a trusted client writes");

    // Another CA's certificate, however well-formed, is refused.
    let other = CertificateAuthority::generate("Somebody else's CA").unwrap();
    let stranger = other.client("collector").unwrap();
    let foreign = ClientTls {
        ca_pem: ca_pem.clone(),
        cert_pem: stranger.cert_pem.into_bytes(),
        key_pem: stranger.key_pem.into_bytes(),
        domain: None,
    };
    let err = try_write(&url, Some(foreign))
        .await
        .expect_err("another CA's client is refused");
    eprintln!("other CA: {err}");

    // TLS without a client certificate is refused.
    let err = anonymous_write(&url, &ca_pem)
        .await
        .expect_err("a client without a certificate is refused");
    eprintln!("no certificate: {err}");

    // Plain HTTP/2 to the TLS port is refused.
    let plain = format!("http://127.0.0.1:{}", s.appliance.flight_addr.port());
    let err = try_write(&plain, None)
        .await
        .expect_err("a client without TLS is refused");
    eprintln!("no TLS: {err}");

    // Nothing of the refused writes arrived; the trusted one did, once.
    let answer = tally_e2e::sql(&s.appliance.http_url(), "SELECT count(*) FROM events")
        .await
        .unwrap();
    assert_eq!(answer["rows"][0][0], 2, "{answer}");
    s.appliance.shutdown().await.unwrap();
}

async fn anonymous_write(url: &str, ca_pem: &[u8]) -> Result<(), String> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
    let endpoint = Endpoint::from_shared(url.to_string())
        .unwrap()
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)))
        .unwrap();
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut client = arrow_flight::flight_service_client::FlightServiceClient::new(channel);
    let data = arrow_flight::encode::FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(arrow_flight::FlightDescriptor::new_path(vec![
            "events".into(),
        ])))
        .build(futures::stream::iter(vec![Ok(events("anon", 0, 1))]));
    use futures::StreamExt;
    let response = client
        .do_put(data.map(|r| r.unwrap()))
        .await
        .map_err(|e| format!("do_put: {e}"))?;
    let mut results = response.into_inner();
    match results.next().await {
        Some(Ok(_)) => Ok(()),
        Some(Err(status)) => Err(status.to_string()),
        None => Err("no acknowledgement".into()),
    }
}
