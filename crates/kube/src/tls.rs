//! HTTPS for the admission webhook and the extender: rustls (aws-lc-rs) with the certificate and key read from PEM
//! files — a mounted Secret, as cert-manager writes it — and read again when the files change, so a
//! rotated certificate is served without a restart. HTTP/1.1 over each TLS connection by hyper.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use thiserror::Error;

/// How often at most the files are checked for a change.
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// A certificate or key that cannot be used.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A file cannot be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file holds no usable PEM block of the expected kind.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was expected.
        what: String,
    },
    /// The key does not suit the certificate, or is of an unsupported type.
    #[error("{path}: unusable private key")]
    Key {
        /// The key file.
        path: PathBuf,
        /// Why.
        source: rustls::Error,
    },
    /// Listening failed.
    #[error("serving on {addr}")]
    Io {
        /// The listen address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Reads a certificate chain and its private key from PEM files.
pub fn load(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let read = |path: &Path| std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source });
    let cert_pem = read(cert)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem { path: cert.to_owned(), what: format!("malformed PEM ({e})") })?;
    if chain.is_empty() {
        return Err(TlsError::Pem { path: cert.to_owned(), what: "no CERTIFICATE block".to_owned() });
    }
    let key_pem = read(key)?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
        path: key.to_owned(),
        what: format!("no PKCS#8, PKCS#1 or SEC1 private key ({e})"),
    })?;
    let signing = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|source| TlsError::Key { path: key.to_owned(), source })?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|source| TlsError::Key { path: key.to_owned(), source })?;
    Ok(certified)
}

struct Loaded {
    key: Arc<CertifiedKey>,
    stamps: (Option<SystemTime>, Option<SystemTime>),
    checked: Instant,
}

/// Serves the certificate in `cert` and `key`, reading them again after they change. A new pair that
/// cannot be used (half-written, mismatched) is logged and the previous one kept.
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    loaded: RwLock<Loaded>,
}

impl std::fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCert").field("cert", &self.cert).field("key", &self.key).finish()
    }
}

impl ReloadingCert {
    /// Loads the pair now; an unusable pair is an error at start-up.
    pub fn new(cert: PathBuf, key: PathBuf, provider: Arc<CryptoProvider>) -> Result<Self, TlsError> {
        let loaded = Loaded {
            key: Arc::new(load(&cert, &key, &provider)?),
            stamps: (modified(&cert), modified(&key)),
            checked: Instant::now(),
        };
        Ok(ReloadingCert { cert, key, provider, loaded: RwLock::new(loaded) })
    }

    /// The pair to serve, reloaded first if the files changed since the last check.
    pub fn current(&self) -> Arc<CertifiedKey> {
        {
            let loaded = self.loaded.read().unwrap_or_else(|p| p.into_inner());
            if loaded.checked.elapsed() < CHECK_EVERY {
                return Arc::clone(&loaded.key);
            }
        }
        let mut loaded = self.loaded.write().unwrap_or_else(|p| p.into_inner());
        loaded.checked = Instant::now();
        let stamps = (modified(&self.cert), modified(&self.key));
        if stamps != loaded.stamps {
            match load(&self.cert, &self.key, &self.provider) {
                Ok(key) => {
                    tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded.");
                    loaded.key = Arc::new(key);
                    loaded.stamps = stamps;
                }
                Err(e) => tracing::warn!(error = %e, "New TLS certificate not usable; serving the previous one."),
            }
        }
        Arc::clone(&loaded.key)
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// A rustls server configuration (HTTP/1.1 by ALPN) over a reloading certificate.
pub fn server_config(cert: PathBuf, key: PathBuf) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    server_config_for_clients(cert, key, None)
}

/// As [`server_config`], and when `client_ca` is given, every client must present a certificate that
/// CA signed (kube-scheduler's extender `tlsConfig.certFile`/`keyFile`); the handshake fails otherwise.
pub fn server_config_for_clients(
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let resolver = Arc::new(ReloadingCert::new(cert.clone(), key, Arc::clone(&provider))?);
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Key { path: cert, source })?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let pem = std::fs::read(&ca).map_err(|source| TlsError::Read { path: ca.clone(), source })?;
            let mut roots = rustls::RootCertStore::empty();
            for der in CertificateDer::pem_slice_iter(&pem) {
                let der = der.map_err(|e| TlsError::Pem { path: ca.clone(), what: format!("malformed PEM ({e})") })?;
                roots.add(der).map_err(|e| TlsError::Pem { path: ca.clone(), what: format!("unusable CA ({e})") })?;
            }
            if roots.is_empty() {
                return Err(TlsError::Pem { path: ca, what: "no CERTIFICATE block".to_owned() });
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Pem { path: ca, what: format!("client CA not usable ({e})") })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
