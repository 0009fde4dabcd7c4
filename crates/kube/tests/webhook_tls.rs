//! The webhook's HTTPS server: it answers AdmissionReviews over TLS, serves a rotated certificate
//! after the files change without a restart, keeps the previous one when the new files are unusable,
//! and refuses to start on a missing or mismatched pair, naming the file.
#![allow(clippy::unwrap_used)] // Helpers too: a failed unwrap is a failed test, with its location.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gpuplane_kube::server::{Limits, serve};
use gpuplane_kube::tls::{TlsError, server_config};
use gpuplane_kube::webhook::{Webhook, router};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls").join(name)
}

fn install(dir: &Path, n: u8) {
    std::fs::copy(fixture(&format!("cert-{n}.pem")), dir.join("tls.crt")).unwrap();
    std::fs::copy(fixture(&format!("key-{n}.pem")), dir.join("tls.key")).unwrap();
}

/// One HTTPS request on a new connection: the certificate the server presented, and the response.
async fn post(addr: std::net::SocketAddr, path: &str, body: &str) -> (CertificateDer<'static>, String) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(fixture("ca.pem")).unwrap()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
    let served = tls.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tls.read_to_string(&mut response).await.unwrap();
    (served, response)
}

fn leaf(n: u8) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(fixture(&format!("cert-{n}.pem"))).unwrap()
}

#[tokio::test]
async fn answers_over_tls_and_serves_a_rotated_certificate() {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), 1);
    let config = server_config(dir.path().join("tls.crt"), dir.path().join("tls.key")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(Arc::new(Webhook::default()), 1 << 20); // Mutations only: no quota view needed.
    tokio::spawn(serve(listener, Some(config), app, Limits::default(), futures::future::pending()));

    let review = include_str!("fixtures/admission-review-gpu-pod.json");
    let (served, response) = post(addr, "/mutate", review).await;
    assert_eq!(served, leaf(1));
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let body: Value = serde_json::from_str(response.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["response"]["allowed"], true);
    assert_eq!(body["response"]["patchType"], "JSONPatch");

    // cert-manager rotates the Secret: the next connection gets the new certificate.
    install(dir.path(), 2);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(post(addr, "/mutate", review).await.0, leaf(2));

    // A half-written rotation (the key is garbage) is not taken; the last good pair stays.
    std::fs::write(dir.path().join("tls.key"), "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (served, response) = post(addr, "/validate", "{not json").await;
    assert_eq!(served, leaf(2));
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
}

#[test]
fn an_unusable_pair_stops_start_up_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let err = server_config(dir.path().join("tls.crt"), dir.path().join("tls.key")).unwrap_err();
    assert!(matches!(err, TlsError::Read { .. }) && err.to_string().contains("tls.crt"), "{err}");

    // Certificate 1 with key 2.
    std::fs::copy(fixture("cert-1.pem"), dir.path().join("tls.crt")).unwrap();
    std::fs::copy(fixture("key-2.pem"), dir.path().join("tls.key")).unwrap();
    let err = server_config(dir.path().join("tls.crt"), dir.path().join("tls.key")).unwrap_err();
    assert!(matches!(err, TlsError::Key { .. }) && err.to_string().contains("tls.key"), "{err}");
    assert!(std::error::Error::source(&err).is_some());

    std::fs::write(dir.path().join("tls.crt"), "hello").unwrap();
    let err = server_config(dir.path().join("tls.crt"), dir.path().join("tls.key")).unwrap_err();
    assert!(err.to_string().contains("no CERTIFICATE block"), "{err}");
}
