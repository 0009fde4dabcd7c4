//! The node-local model cache: a model is a manifest of files with sizes and SHA-256 digests; the
//! fetcher reads them from an HTTP(S) origin or a local directory with many ranged reads at once,
//! hashes while streaming, resumes after a crash, and publishes atomically into a content-addressed
//! store with a disk budget and LRU eviction that spares models pinned by running pods. Peer agents
//! serve their blobs to each other — also while they are still fetching them — so a cluster reads a
//! file from its origin once. The agent authenticates every caller and bounds what each may cost.
#![forbid(unsafe_code)]

pub mod agent;
pub mod auth;
pub mod error;
pub mod fetch;
pub mod limits;
pub mod manifest;
pub mod origin;
pub mod safetensors;
pub mod store;

pub use error::CacheError;
pub use fetch::{FetchConfig, FetchReport, Fetcher, PeerToken};
pub use manifest::{FileEntry, Limits, Manifest, Source};
pub use store::{CachedModel, Store};

/// SHA-256 over bytes given in pieces, as lowercase hex (the digests manifests carry).
#[derive(Clone)]
pub struct Sha256(aws_lc_rs::digest::Context);

impl Default for Sha256 {
    fn default() -> Self {
        Sha256(aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256))
    }
}

impl std::fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sha256")
    }
}

impl Sha256 {
    /// Adds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The digest as 64 lowercase hex digits.
    pub fn hex(self) -> String {
        self.0.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }
}
