//! The extender's HTTPS with client certificates (`gpuplane extender --tls-cert --tls-key --client-ca
//! --client-identity`): a client with a certificate the CA signed that names a pinned identity is served; one
//! without a certificate, with one from another CA, or with one the CA signed for another name (a kubelet's,
//! say) is refused in the handshake and never reaches a handler.
#![allow(clippy::unwrap_used)] // Helpers too: a failed unwrap is a failed test, with its location.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use gpuplane_kube::server::{Limits, serve};
use gpuplane_kube::tls::{ClientAuth, TlsError, server_config_for_clients};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls").join(name)
}

/// A server asking for client certificates from the CAs in `ca` naming one of `identities`; counts the
/// requests its handler saw.
async fn start_for(ca: PathBuf, identities: &[&str]) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let clients = ClientAuth { ca, identities: identities.iter().map(|s| (*s).to_owned()).collect() };
    let config = server_config_for_clients(fixture("cert-1.pem"), fixture("key-1.pem"), Some(clients)).unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&served);
    let app = axum::Router::new().route(
        "/filter",
        axum::routing::post(move || {
            seen.fetch_add(1, Ordering::SeqCst);
            async { "{}" }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, Some(config), app, Limits::default(), futures::future::pending()));
    (addr, served)
}

/// A server for `client-ca.pem`'s certificates naming `kube-scheduler` (the fixture client's CN).
async fn start() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    start_for(fixture("client-ca.pem"), &["kube-scheduler"]).await
}

/// POSTs /filter presenting `client` (certificate and key fixtures), or no certificate; the response,
/// or the error that ended the exchange.
async fn post(addr: std::net::SocketAddr, client: Option<(&str, &str)>) -> Result<String, std::io::Error> {
    post_with(addr, client.map(|(cert, key)| (fixture(cert), fixture(key)))).await
}

/// As [`post`], with the certificate and key at these paths.
async fn post_with(addr: std::net::SocketAddr, client: Option<(PathBuf, PathBuf)>) -> Result<String, std::io::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(fixture("ca.pem")).unwrap()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_file(cert).unwrap()],
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut tls = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await?;
    let request = "POST /filter HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";
    tls.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    tls.read_to_string(&mut response).await?;
    Ok(response)
}

#[tokio::test]
async fn only_clients_with_a_certificate_from_the_given_ca_are_served() {
    let (addr, served) = start().await;
    let ok = post(addr, Some(("client-cert.pem", "client-key.pem"))).await.unwrap();
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert_eq!(served.load(Ordering::SeqCst), 1);

    // TLS 1.3 finishes the client's side of the handshake before the server checks its certificate, so
    // the refusal shows on the first read or write: either way no response, and the handler never ran.
    let anonymous = post(addr, None).await;
    assert!(anonymous.as_ref().is_err() || anonymous.as_ref().is_ok_and(|r| r.is_empty()), "{anonymous:?}");
    let stranger = post(addr, Some(("untrusted-client-cert.pem", "untrusted-client-key.pem"))).await;
    assert!(stranger.as_ref().is_err() || stranger.as_ref().is_ok_and(|r| r.is_empty()), "{stranger:?}");
    assert_eq!(served.load(Ordering::SeqCst), 1, "refused clients reached the handler");
}

#[path = "support/test_ca.rs"]
mod test_ca;

#[tokio::test]
async fn a_certificate_from_a_trusted_ca_for_another_name_is_refused_in_the_handshake() {
    // A second trusted CA that, like kubeadm's cluster CA, also signs kubelets' client certificates.
    let cluster = test_ca::TestCa::new("cluster CA");
    let bundle = cluster.dir().join("bundle.pem");
    let pems = [std::fs::read(fixture("client-ca.pem")).unwrap(), std::fs::read(cluster.ca()).unwrap()];
    std::fs::write(&bundle, pems.concat()).unwrap();
    let (addr, served) = start_for(bundle, &["kube-scheduler", "system:kube-scheduler"]).await;

    let kubelet = cluster.client("kubelet", "/CN=system:node:gpu-1/O=system:nodes", &[]);
    let refused = post_with(addr, Some(kubelet)).await;
    assert!(refused.as_ref().is_err() || refused.as_ref().is_ok_and(|r| r.is_empty()), "{refused:?}");
    assert_eq!(served.load(Ordering::SeqCst), 0, "a kubelet's certificate reached the handler");

    // Both CAs are trusted, and either one's certificate for a pinned name is served.
    let scheduler = cluster.client("scheduler", "/CN=system:kube-scheduler", &[]);
    let ok = post_with(addr, Some(scheduler)).await.unwrap();
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    let fixture_client = post(addr, Some(("client-cert.pem", "client-key.pem"))).await.unwrap();
    assert!(fixture_client.starts_with("HTTP/1.1 200"), "{fixture_client}");
    assert_eq!(served.load(Ordering::SeqCst), 2);
}

#[test]
fn a_client_ca_file_without_a_certificate_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("ca.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let clients = ClientAuth { ca: empty.clone(), identities: vec!["kube-scheduler".into()] };
    let err = server_config_for_clients(fixture("cert-1.pem"), fixture("key-1.pem"), Some(clients)).unwrap_err();
    assert!(matches!(&err, TlsError::Pem { path, .. } if *path == empty), "{err:?}");
}
