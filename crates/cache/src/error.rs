//! Why a cache operation failed, naming the file, URL or model at fault.

use std::path::PathBuf;

use thiserror::Error;

/// A failed cache operation.
#[derive(Debug, Error)]
pub enum CacheError {
    /// A local file or directory could not be read or written.
    #[error("{path}: {source}")]
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
    /// The model does not fit the store even after evicting every model that may go.
    #[error(
        "model {model} needs {needed} more bytes; {used} bytes are stored or reserved, and the store may hold {capacity} now (budget {budget}, less when the disk has less room); {why}"
    )]
    Budget {
        /// The model.
        model: String,
        /// Bytes it still needs.
        needed: u64,
        /// Bytes stored, or reserved by fetches under way.
        used: u64,
        /// What the store may hold now: the budget, or what the file system leaves.
        capacity: u64,
        /// The configured budget.
        budget: u64,
        /// What could not be evicted, in words.
        why: String,
    },
    /// The origin answered a Range request with the whole file; read it as one stream instead.
    #[error("{url}: the origin ignores Range requests")]
    RangeIgnored {
        /// The URL.
        url: String,
    },
    /// The manifest is unusable.
    #[error(transparent)]
    Manifest(#[from] crate::manifest::ManifestError),
}

impl CacheError {
    /// What a caller who is not an administrator is told: which model, file or URL failed and how, but
    /// never a digest, a size or other bytes of content it may not read (those go to the agent's log).
    pub fn public_message(&self) -> String {
        match self {
            CacheError::Io { .. } | CacheError::Index { .. } => "the agent could not use its store".to_owned(),
            CacheError::Origin { url, .. } => {
                format!("{url}: not read as the manifest describes (status, length, range or deadline)")
            }
            CacheError::RangeIgnored { url } => format!("{url}: the origin ignores Range requests"),
            CacheError::HashMismatch { model, path, .. } => {
                format!("{model}/{path}: the bytes read do not match the manifest; nothing was published")
            }
            CacheError::Safetensors { model, path, .. } => {
                format!("{model}/{path}: not a valid safetensors file; nothing was published")
            }
            CacheError::Budget { model, .. } => {
                format!("model {model} does not fit: what the cache cannot free is pinned or being fetched")
            }
            CacheError::Manifest(e) => e.to_string(),
        }
    }
}
