//! Security posture of AI-assisted development: which commits an AI assistant helped write (from the
//! markers the tools leave), findings from any SARIF 2.1.0 scanner with stable fingerprints and
//! baseline states, findings blamed to commits and rated per cohort, a CI gate, and GPU workload rules.
#![forbid(unsafe_code)]

pub mod attribution;
pub mod cohort;
pub mod finding;
pub mod gate;
pub mod history;
pub mod lint;
pub mod sarif;
pub mod scan;
pub mod triage;

/// Why a posture command could not run. Every variant names the file, repository or field at fault.
#[derive(Debug, thiserror::Error)]
pub enum PostureError {
    /// A file does not parse.
    #[error("{source_name}: line {line} column {column}: {message}")]
    Parse {
        /// File name.
        source_name: String,
        /// 1-based line (0 when unknown).
        line: usize,
        /// 1-based column (0 when unknown).
        column: usize,
        /// The parser's message.
        message: String,
    },
    /// A file parses but a field holds something else than expected.
    #[error("{source_name}: {field}: expected {expected}")]
    Invalid {
        /// File name.
        source_name: String,
        /// Field path.
        field: String,
        /// What was expected.
        expected: String,
    },
    /// A file cannot be read.
    #[error("{path}: {message}")]
    Io {
        /// The path.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// A repository cannot be read with git.
    #[error("{repo}: {message}")]
    Git {
        /// The repository path.
        repo: String,
        /// What went wrong.
        message: String,
    },
}

impl PostureError {
    pub(crate) fn invalid(source_name: &str, field: &str, expected: &str) -> PostureError {
        PostureError::Invalid {
            source_name: source_name.to_owned(),
            field: field.to_owned(),
            expected: expected.to_owned(),
        }
    }

    pub(crate) fn yaml(source_name: &str, e: &serde_saphyr::Error) -> PostureError {
        let (line, column, message) = gpuplane_core::yaml_error_parts(e);
        PostureError::Parse {
            source_name: source_name.to_owned(),
            line: line as usize,
            column: column as usize,
            message,
        }
    }

    pub(crate) fn json(source_name: &str, e: &serde_json::Error) -> PostureError {
        PostureError::Parse {
            source_name: source_name.to_owned(),
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        }
    }
}
