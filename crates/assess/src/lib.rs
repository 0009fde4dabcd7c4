//! Platform-engineering maturity assessment. A five-level model (Ad hoc → Optimizing) over capability
//! areas lives in a YAML file; evidence comes from git repositories, Kubernetes manifests and an attested
//! survey; each area gets the highest level whose checks all pass, with evidence, and a plan of milestones.
#![forbid(unsafe_code)]

pub mod assess;
pub mod baseline;
pub mod dora;
pub mod glob;
pub mod helm;
pub mod model;
pub mod objects;
pub mod repo;
pub mod survey;

pub use assess::{ASSESS_JSON_SCHEMA, Assessment, Inputs, assess};
pub use model::Model;

/// Why an assessment could not be made. Every variant names the file or repository at fault.
#[derive(Debug, thiserror::Error)]
pub enum AssessError {
    /// A YAML file does not parse.
    #[error("{source_name}: line {line} column {column}: {message}")]
    Yaml {
        /// File name.
        source_name: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The parser's message.
        message: String,
    },
    /// A file parses but a field holds something else than expected.
    #[error("{source_name}: {field}: expected {expected}")]
    Invalid {
        /// File name.
        source_name: String,
        /// Where in the file (field path, perhaps with a line).
        field: String,
        /// What was expected there.
        expected: String,
    },
    /// A file or folder cannot be read.
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

impl AssessError {
    pub(crate) fn yaml(source_name: &str, e: &serde_saphyr::Error) -> AssessError {
        AssessError::yaml_at(source_name, e, 0)
    }

    /// A YAML error in a document that starts `line_offset` lines into the file.
    pub(crate) fn yaml_at(source_name: &str, e: &serde_saphyr::Error, line_offset: usize) -> AssessError {
        let (line, column, message) = gpuplane_core::yaml_error_parts(e);
        AssessError::Yaml {
            source_name: source_name.to_owned(),
            line: line as usize + line_offset,
            column: column as usize,
            message,
        }
    }

    pub(crate) fn invalid(source_name: &str, field: &str, expected: &str) -> AssessError {
        AssessError::Invalid {
            source_name: source_name.to_owned(),
            field: field.to_owned(),
            expected: expected.to_owned(),
        }
    }

    pub(crate) fn io(path: &std::path::Path, e: &std::io::Error) -> AssessError {
        AssessError::Io { path: path.display().to_string(), message: e.to_string() }
    }
}
