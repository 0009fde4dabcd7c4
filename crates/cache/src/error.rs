//! Why a cache operation failed, naming the file, URL or model at fault.

use std::path::PathBuf;

use thiserror::Error;

/// A failed cache operation.
#[derive(Debug, Error)]
pub enum CacheError {
    /// A local file or directory could not be read or written.
    #[error("{path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `index.json` is unreadable.
    #[error("{path}: not a model index: {message}")]
    Index {
        /// The index file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The origin answered with an error status or a wrong range.
    #[error("{url}: {message}")]
    Origin {
        /// The URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The downloaded bytes do not have the manifest's digest; nothing was published.
    #[error("{model}/{path}: SHA-256 is {actual}, the manifest says {expected}; the download was discarded")]
    HashMismatch {
        /// The model.
        model: String,
        /// The file in the model.
        path: String,
        /// From the manifest.
        expected: String,
        /// Computed while streaming.
        actual: String,
    },
    /// A `.safetensors` file whose header is malformed; nothing was published.
    #[error("{model}/{path}: not a valid safetensors file: {message}")]
    Safetensors {
        /// The model.
        model: String,
        /// The file in the model.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The model does not fit the disk budget even after evicting every unpinned model.
    #[error(
        "model {model} needs {needed} more bytes; {used} of the {budget}-byte budget are stored or reserved by fetches under way, and the rest is pinned by running pods ({pinned:?})"
    )]
    Budget {
        /// The model.
        model: String,
        /// Bytes it still needs.
        needed: u64,
        /// Bytes stored, or reserved by other fetches under way.
        used: u64,
        /// The budget.
        budget: u64,
        /// Models that could not be evicted.
        pinned: Vec<String>,
    },
    /// The manifest is unusable.
    #[error(transparent)]
    Manifest(#[from] crate::manifest::ManifestError),
}
