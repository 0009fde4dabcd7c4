//! The node-local model cache: a model is a manifest of files with sizes and SHA-256 digests; the
//! fetcher reads them from an HTTP(S) origin or a local directory with many ranged reads at once,
//! hashes while streaming, resumes after a crash, and publishes atomically into a content-addressed
//! store with a disk budget and LRU eviction that spares models pinned by running pods.
#![forbid(unsafe_code)]

pub mod error;
pub mod fetch;
pub mod manifest;
pub mod safetensors;
pub mod store;

pub use error::CacheError;
pub use fetch::{FetchConfig, FetchReport, Fetcher};
pub use manifest::{FileEntry, Manifest, Source};
pub use store::{CachedModel, Store};
