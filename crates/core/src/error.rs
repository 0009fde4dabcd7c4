//! Errors of the loaders: each names the source, the line and column (or field) at fault, and what was
//! expected there.

use thiserror::Error;

/// An input file or text that could not be turned into nodes or pods.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LoadError {
    /// The input holds no records.
    #[error("{source_name}: no {what} found; expected at least one")]
    Empty {
        /// File name or other label of the input.
        source_name: String,
        /// What was missing ("pods", "nodes").
        what: &'static str,
    },
    /// The header row is not one of the supported forms.
    #[error("{source_name}:1: unexpected header {found:?}; expected {expected}")]
    Header {
        /// File name or other label of the input.
        source_name: String,
        /// The header that was found.
        found: String,
        /// The supported headers.
        expected: String,
    },
    /// A row that the CSV reader could not split, or with the wrong number of fields.
    #[error("{source_name}:{line}: {message}")]
    Row {
        /// File name or other label of the input.
        source_name: String,
        /// 1-based line number.
        line: u64,
        /// What is wrong.
        message: String,
    },
    /// One field of a row or object holds a value of the wrong form.
    #[error("{source_name}:{line}:{column}: field `{field}` is {value:?}; expected {expected}")]
    Field {
        /// File name or other label of the input.
        source_name: String,
        /// 1-based line number.
        line: u64,
        /// 1-based column (CSV: field number; YAML: character column).
        column: u64,
        /// Field name.
        field: String,
        /// The value found.
        value: String,
        /// What was expected instead.
        expected: String,
    },
    /// A YAML document that is not valid YAML or not a Node or Pod object.
    #[error("{source_name}:{line}:{column}: {message}")]
    Yaml {
        /// File name or other label of the input.
        source_name: String,
        /// 1-based line number (0 when unknown).
        line: u64,
        /// 1-based column (0 when unknown).
        column: u64,
        /// What is wrong.
        message: String,
    },
    /// Two objects with the same name where names must be unique.
    #[error("{source_name}:{line}: duplicate {what} name {name:?}")]
    Duplicate {
        /// File name or other label of the input.
        source_name: String,
        /// 1-based line number of the second occurrence.
        line: u64,
        /// "node" or "pod".
        what: &'static str,
        /// The repeated name.
        name: String,
    },
}
