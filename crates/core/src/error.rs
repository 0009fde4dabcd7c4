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

/// Where a YAML error is and what it says: 1-based line and column (0 when unknown) and the message's
/// first line without the location serde-saphyr puts in front of it, so that a caller naming the file and
/// the place does not print them twice.
pub fn yaml_error_parts(e: &serde_saphyr::Error) -> (u64, u64, String) {
    let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let message = match first.split_once(": ") {
        Some((at, rest)) if at.starts_with("line ") && at.contains(" column ") => rest,
        _ => first,
    };
    (line, column, message.to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_yaml_error_names_its_place_once() {
        let e =
            serde_saphyr::from_str::<std::collections::BTreeMap<String, Vec<String>>>("a: [x]\nb: [c\n").unwrap_err();
        let (line, column, message) = yaml_error_parts(&e);
        assert!(line >= 2 && column > 0, "{line}:{column}");
        assert!(!message.contains("line ") && !message.starts_with("error"), "{message}");
        assert!(!message.is_empty());
    }
}
