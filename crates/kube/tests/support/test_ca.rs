//! A certificate authority made with openssl at test time (the fixtures' CA keys are not kept), and the
//! client certificates it signs. Shared by the TLS unit tests, the extender's handshake tests and the
//! extender attack test (each includes this file with `#[path]`).
#![allow(dead_code, clippy::unwrap_used)] // Test support: each includer uses part of it; a failure should stop the test.

use std::path::{Path, PathBuf};

/// openssl's arguments for a new P-256 key without a passphrase.
const NEW_KEY: [&str; 5] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];

/// A CA in a temporary directory: `ca.pem` and its key.
pub struct TestCa {
    dir: tempfile::TempDir,
}

impl TestCa {
    /// A new CA named `name` (its subject CN).
    pub fn new(name: &str) -> TestCa {
        let ca = TestCa { dir: tempfile::tempdir().unwrap() };
        let subject = format!("/CN={name}");
        let ca_extensions =
            ["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign"];
        let out = ["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", &subject];
        ca.openssl(&[&["req", "-x509"][..], &NEW_KEY, &out, &ca_extensions].concat());
        ca
    }

    /// The CA certificate (PEM).
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The folder the CA and its certificates are in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A client certificate (clientAuth) for `subject` in openssl's `/CN=…/O=…` form, with DNS SANs: the
    /// certificate and key files (PEM).
    pub fn client(&self, file: &str, subject: &str, dns: &[&str]) -> (PathBuf, PathBuf) {
        let mut ext =
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n".to_owned();
        if !dns.is_empty() {
            let sans: Vec<String> = dns.iter().map(|d| format!("DNS:{d}")).collect();
            ext.push_str(&format!("subjectAltName={}\n", sans.join(",")));
        }
        let (key, csr, pem, extfile) =
            (format!("{file}.key"), format!("{file}.csr"), format!("{file}.pem"), format!("{file}.ext"));
        std::fs::write(self.dir.path().join(&extfile), ext).unwrap();
        self.openssl(&[&["req"][..], &NEW_KEY, &["-keyout", &key, "-out", &csr, "-subj", subject]].concat());
        let sign = ["x509", "-req", "-in", &csr, "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial"];
        self.openssl(&[&sign[..], &["-out", &pem, "-days", "2", "-extfile", &extfile]].concat());
        (self.dir.path().join(pem), self.dir.path().join(key))
    }

    fn openssl(&self, args: &[&str]) {
        let out = std::process::Command::new("openssl").args(args).current_dir(self.dir.path()).output().unwrap();
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}
