//! HTTPS for the admission webhook and the extender: rustls (aws-lc-rs) with the certificate and key read from PEM
//! files — a mounted Secret, as cert-manager writes it — and read again when the files change, so a
//! rotated certificate is served without a restart. HTTP/1.1 over each TLS connection by hyper.
//!
//! A server that asks for client certificates ([`ClientAuth`]) accepts one only if it chains to the client CA
//! *and* names one of the given identities: its subject CN or one of its DNS subjectAltNames must equal one
//! of them. A CA such as kubeadm's also signs every kubelet's client certificate, so the chain alone says
//! nothing about who is calling. Any other certificate ends the handshake (alert `access_denied`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
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
    /// Client certificates are asked for, but no identity is given that they must carry.
    #[error("{path}: no client identity given; any certificate this CA signed would be accepted")]
    NoIdentity {
        /// The client CA file.
        path: PathBuf,
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

/// Which clients a server accepts: those presenting a certificate that `ca` signed and that names one of
/// `identities` (kube-scheduler's extender `tlsConfig.certFile`/`keyFile`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuth {
    /// PEM file of the CA certificates client certificates must chain to.
    pub ca: PathBuf,
    /// Names of which the certificate's subject CN, or one of its DNS subjectAltNames, must be one.
    pub identities: Vec<String>,
}

/// As [`server_config`], and when `clients` is given, every client must present a certificate its CA
/// signed that names one of its identities; the handshake fails otherwise.
pub fn server_config_for_clients(
    cert: PathBuf,
    key: PathBuf,
    clients: Option<ClientAuth>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let resolver = Arc::new(ReloadingCert::new(cert.clone(), key, Arc::clone(&provider))?);
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Key { path: cert, source })?;
    let builder = match clients {
        None => builder.with_no_client_auth(),
        Some(clients) => builder.with_client_cert_verifier(client_verifier(&clients, provider)?),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The verifier of [`ClientAuth`]: the chain by webpki (validity, `clientAuth` usage), then the identity.
pub fn client_verifier(
    clients: &ClientAuth,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let ca = &clients.ca;
    let identities: Vec<String> = clients.identities.iter().filter(|i| !i.is_empty()).cloned().collect();
    if identities.is_empty() {
        return Err(TlsError::NoIdentity { path: ca.clone() });
    }
    let pem = std::fs::read(ca).map_err(|source| TlsError::Read { path: ca.clone(), source })?;
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(&pem) {
        let der = der.map_err(|e| TlsError::Pem { path: ca.clone(), what: format!("malformed PEM ({e})") })?;
        roots.add(der).map_err(|e| TlsError::Pem { path: ca.clone(), what: format!("unusable CA ({e})") })?;
    }
    if roots.is_empty() {
        return Err(TlsError::Pem { path: ca.clone(), what: "no CERTIFICATE block".to_owned() });
    }
    let chain = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| TlsError::Pem { path: ca.clone(), what: format!("client CA not usable ({e})") })?;
    Ok(Arc::new(PinnedIdentity { chain, identities }))
}

/// Accepts a client certificate that `chain` accepts and that names one of `identities`.
#[derive(Debug)]
struct PinnedIdentity {
    chain: Arc<dyn ClientCertVerifier>,
    identities: Vec<String>,
}

impl ClientCertVerifier for PinnedIdentity {
    fn offer_client_auth(&self) -> bool {
        self.chain.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.chain.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.chain.verify_client_cert(end_entity, intermediates, now)?;
        let names = CertNames::read(end_entity.as_ref())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if names.is_one_of(&self.identities) {
            return Ok(verified);
        }
        tracing::warn!(
            common_names = ?names.common_names,
            dns_names = ?names.dns_names,
            accepted = ?self.identities,
            "Client certificate from a trusted CA refused: it names none of the accepted client identities."
        );
        Err(rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

/// The names an X.509 certificate carries: its subject's common names and its DNS subjectAltNames.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertNames {
    /// Every CN attribute of the subject, in order (undecodable ones as U+FFFD).
    pub common_names: Vec<String>,
    /// The `dNSName` entries of the subjectAltName extension.
    pub dns_names: Vec<String>,
}

/// A certificate that is not the DER its ASN.1 structure says.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("malformed certificate DER: {0}")]
pub struct DerError(&'static str);

impl CertNames {
    /// Reads the names from a DER certificate.
    pub fn read(der: &[u8]) -> Result<CertNames, DerError> {
        let mut names = CertNames::default();
        let mut certificate = Der::new(der).enter(SEQUENCE, "Certificate")?;
        let mut tbs = certificate.enter(SEQUENCE, "tbsCertificate")?;
        if tbs.peek() == Some(0xa0) {
            tbs.any("version")?;
        }
        tbs.content(INTEGER, "serialNumber")?;
        tbs.enter(SEQUENCE, "signature")?;
        tbs.enter(SEQUENCE, "issuer")?;
        tbs.enter(SEQUENCE, "validity")?;
        let mut subject = tbs.enter(SEQUENCE, "subject")?;
        while !subject.is_empty() {
            let mut rdn = subject.enter(SET, "RelativeDistinguishedName")?;
            while !rdn.is_empty() {
                let mut attribute = rdn.enter(SEQUENCE, "AttributeTypeAndValue")?;
                let oid = attribute.content(OID, "AttributeType")?;
                let (tag, value) = attribute.any("AttributeValue")?;
                if oid == OID_COMMON_NAME {
                    names.common_names.push(directory_string(tag, value));
                }
            }
        }
        tbs.enter(SEQUENCE, "subjectPublicKeyInfo")?;
        while !tbs.is_empty() {
            let (tag, content) = tbs.any("tbsCertificate field")?;
            if tag != 0xa3 {
                continue; // issuerUniqueID, subjectUniqueID
            }
            let mut extensions = Der::new(content).enter(SEQUENCE, "extensions")?;
            while !extensions.is_empty() {
                let mut extension = extensions.enter(SEQUENCE, "Extension")?;
                let oid = extension.content(OID, "extnID")?;
                if extension.peek() == Some(BOOLEAN) {
                    extension.any("critical")?;
                }
                let value = extension.content(OCTET_STRING, "extnValue")?;
                if oid != OID_SUBJECT_ALT_NAME {
                    continue;
                }
                let mut general_names = Der::new(value).enter(SEQUENCE, "GeneralNames")?;
                while !general_names.is_empty() {
                    let (tag, name) = general_names.any("GeneralName")?;
                    if tag == DNS_NAME {
                        names.dns_names.push(String::from_utf8_lossy(name).into_owned());
                    }
                }
            }
        }
        Ok(names)
    }

    /// Whether the certificate names one of `identities`: by its subject CN — only when it has exactly one,
    /// since programs disagree on which of several counts (Go takes the last) — or by a DNS subjectAltName.
    pub fn is_one_of(&self, identities: &[String]) -> bool {
        let by_cn = matches!(self.common_names.as_slice(), [cn] if identities.contains(cn));
        by_cn || self.dns_names.iter().any(|d| identities.contains(d))
    }
}

const BOOLEAN: u8 = 0x01;
const INTEGER: u8 = 0x02;
const OCTET_STRING: u8 = 0x04;
const OID: u8 = 0x06;
const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
/// `dNSName [2] IA5String` of a GeneralName.
const DNS_NAME: u8 = 0x82;
/// 2.5.4.3, id-at-commonName.
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
/// 2.5.29.17, id-ce-subjectAltName.
const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

/// A DirectoryString as text: UTF8String, PrintableString, IA5String, BMPString (UTF-16); U+FFFD otherwise.
fn directory_string(tag: u8, value: &[u8]) -> String {
    match tag {
        0x0c | 0x13 | 0x16 => String::from_utf8_lossy(value).into_owned(),
        0x1e if value.len().is_multiple_of(2) => {
            char::decode_utf16(value.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])))
                .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
                .collect()
        }
        _ => char::REPLACEMENT_CHARACTER.to_string(),
    }
}

/// A reader of consecutive DER elements (definite lengths, single-byte tags: all an X.509 certificate uses).
struct Der<'a> {
    rest: &'a [u8],
}

impl<'a> Der<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Der { rest: bytes }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn peek(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    /// The next element's tag and content.
    fn any(&mut self, what: &'static str) -> Result<(u8, &'a [u8]), DerError> {
        let (&tag, rest) = self.rest.split_first().ok_or(DerError(what))?;
        if tag & 0x1f == 0x1f {
            return Err(DerError(what));
        }
        let (&first, mut rest) = rest.split_first().ok_or(DerError(what))?;
        let len = match first {
            0..=0x7f => usize::from(first),
            0x81..=0x84 => {
                let n = usize::from(first & 0x7f);
                if rest.len() < n {
                    return Err(DerError(what));
                }
                let (bytes, after) = rest.split_at(n);
                rest = after;
                bytes.iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
            }
            _ => return Err(DerError(what)),
        };
        if rest.len() < len {
            return Err(DerError(what));
        }
        let (content, after) = rest.split_at(len);
        self.rest = after;
        Ok((tag, content))
    }

    /// The next element's content, which must have `tag`.
    fn content(&mut self, tag: u8, what: &'static str) -> Result<&'a [u8], DerError> {
        match self.any(what)? {
            (t, content) if t == tag => Ok(content),
            _ => Err(DerError(what)),
        }
    }

    /// A reader of the next element's content, which must have `tag`.
    fn enter(&mut self, tag: u8, what: &'static str) -> Result<Der<'a>, DerError> {
        self.content(tag, what).map(Der::new)
    }
}

#[cfg(test)]
#[path = "../tests/support/test_ca.rs"]
mod test_ca;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // A failed unwrap is a failed test, with its location.

    use super::test_ca::TestCa;
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls").join(name)
    }

    fn der(path: &Path) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(path).unwrap()
    }

    fn verifier(ca: PathBuf, identities: &[&str]) -> Arc<dyn ClientCertVerifier> {
        let clients = ClientAuth { ca, identities: identities.iter().map(|s| (*s).to_owned()).collect() };
        client_verifier(&clients, Arc::new(rustls::crypto::aws_lc_rs::default_provider())).unwrap()
    }

    #[test]
    fn names_are_read_from_the_subject_and_the_dns_subject_alt_names() {
        let scheduler = CertNames::read(der(&fixture("client-cert.pem")).as_ref()).unwrap();
        assert_eq!(scheduler, CertNames { common_names: vec!["kube-scheduler".into()], dns_names: vec![] });
        let server = CertNames::read(der(&fixture("cert-1.pem")).as_ref()).unwrap();
        assert_eq!(server.common_names, ["gpuplane-webhook-1"]);
        assert_eq!(server.dns_names, ["localhost", "gpuplane-webhook.gpuplane-system.svc"]);
        assert!(CertNames::read(b"\x30\x05\x30\x03\x02").is_err(), "truncated DER");
        assert!(CertNames::read(b"").is_err());
    }

    #[test]
    fn a_certificate_of_a_trusted_ca_naming_another_identity_is_refused() {
        let ca = TestCa::new("gpuplane unit-test CA");
        let node = der(&ca.client("node", "/CN=system:node:gpu-1/O=system:nodes", &[]).0);
        let pinned = verifier(ca.ca(), &["system:kube-scheduler"]);
        let refused = pinned.verify_client_cert(&node, &[], UnixTime::now()).unwrap_err();
        assert_eq!(refused, rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure));
        // The same certificate passes when its name is the pinned one: the chain was never the reason.
        assert!(verifier(ca.ca(), &["system:node:gpu-1"]).verify_client_cert(&node, &[], UnixTime::now()).is_ok());
        let scheduler = der(&ca.client("scheduler", "/CN=system:kube-scheduler/O=system:kube-scheduler", &[]).0);
        assert!(pinned.verify_client_cert(&scheduler, &[], UnixTime::now()).is_ok());
    }

    #[test]
    fn several_common_names_do_not_count_but_a_dns_name_does() {
        let ca = TestCa::new("gpuplane unit-test CA");
        let pinned = verifier(ca.ca(), &["system:kube-scheduler", "scheduler.example"]);
        // Go reads the last CN, others the first: a certificate with two is not taken as either.
        let two = der(&ca.client("two", "/CN=system:kube-scheduler/CN=system:node:gpu-1", &[]).0);
        assert_eq!(CertNames::read(two.as_ref()).unwrap().common_names, ["system:kube-scheduler", "system:node:gpu-1"]);
        assert!(pinned.verify_client_cert(&two, &[], UnixTime::now()).is_err());
        let by_san = der(&ca.client("san", "/CN=anything", &["other.example", "scheduler.example"]).0);
        assert!(pinned.verify_client_cert(&by_san, &[], UnixTime::now()).is_ok());
    }

    #[test]
    fn client_certificates_without_an_identity_are_refused_at_start() {
        let clients = ClientAuth { ca: fixture("client-ca.pem"), identities: vec![String::new()] };
        let err = server_config_for_clients(fixture("cert-1.pem"), fixture("key-1.pem"), Some(clients)).unwrap_err();
        assert!(matches!(&err, TlsError::NoIdentity { path } if *path == fixture("client-ca.pem")), "{err:?}");
    }

    proptest::proptest! {
        /// The reader runs only on certificates whose chain verified, but it must still never panic or
        /// read past its input: any bytes, and any one-byte change of a real certificate, give names or an error.
        #[test]
        fn any_bytes_give_names_or_an_error(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
                                            at in 0usize..4096, to in proptest::num::u8::ANY) {
            let _ = CertNames::read(&bytes);
            let mut real = der(&fixture("client-cert.pem")).as_ref().to_vec();
            let i = at % real.len();
            real[i] = to;
            let _ = CertNames::read(&real);
        }
    }
}
