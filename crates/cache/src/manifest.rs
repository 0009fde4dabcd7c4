//! A model as the cache knows it: a name, where its files come from, and each file's relative path,
//! size and SHA-256. Read from JSON; every path is checked so that no file can land outside the
//! model's directory.

use std::collections::HashSet;
use std::path::{Component, Path};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Where a model's files are read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Source {
    /// An HTTP(S) origin: each file is `base_url` + `/` + its path, read with Range requests. A
    /// Hugging Face model is `https://huggingface.co/<repo>/resolve/<revision>`.
    Http {
        /// The URL the file paths are appended to.
        base_url: String,
        /// Environment variable holding a bearer token, if the origin needs one (such as `HF_TOKEN`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token_env: Option<String>,
    },
    /// An S3-compatible object store: each file is the object `prefix` + `/` + its path. Credentials
    /// come from the usual `AWS_*` environment variables.
    S3 {
        /// The bucket.
        bucket: String,
        /// Key prefix of the model's files (may be empty).
        #[serde(default)]
        prefix: String,
        /// Endpoint of an S3-compatible store other than AWS (`http://minio:9000`, say).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        endpoint: Option<String>,
        /// Region (default `us-east-1`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        region: Option<String>,
    },
    /// A directory on this machine (a mounted volume, say).
    Local {
        /// The directory the file paths are relative to.
        dir: String,
    },
}

/// One file of a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path inside the model, `/`-separated, relative.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the content, 64 lowercase hex digits.
    pub sha256: String,
}

/// A model: its name, its source and its files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The model's name, also its directory under `models/` (such as `llama-3-8b@v1`).
    pub model: String,
    /// Where the files come from.
    pub source: Source,
    /// The files.
    pub files: Vec<FileEntry>,
}

/// A manifest that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ManifestError {
    /// Not JSON of the manifest's shape.
    #[error("{origin}: not a model manifest: {message}")]
    Json {
        /// Where the manifest came from.
        origin: String,
        /// serde's message, with line and column.
        message: String,
    },
    /// A field holds a value that cannot be used.
    #[error("{origin}: field `{field}` is {value:?}; expected {expected}")]
    Field {
        /// Where the manifest came from.
        origin: String,
        /// Which field.
        field: String,
        /// The value found.
        value: String,
        /// What was expected.
        expected: String,
    },
}

impl Manifest {
    /// Reads and checks a manifest; `origin` names it in errors (a file name, an HTTP request).
    pub fn from_json(text: &str, origin: &str) -> Result<Manifest, ManifestError> {
        let manifest: Manifest = serde_json::from_str(text)
            .map_err(|e| ManifestError::Json { origin: origin.to_owned(), message: e.to_string() })?;
        manifest.check(origin)?;
        Ok(manifest)
    }

    /// Checks names, paths and digests.
    pub fn check(&self, origin: &str) -> Result<(), ManifestError> {
        let bad = |field: String, value: &str, expected: &str| ManifestError::Field {
            origin: origin.to_owned(),
            field,
            value: value.to_owned(),
            expected: expected.to_owned(),
        };
        if !is_safe_name(&self.model) {
            return Err(bad(
                "model".to_owned(),
                &self.model,
                "a name of letters, digits, '.', '-', '_' and '@' (not '.' or '..')",
            ));
        }
        if self.files.is_empty() {
            return Err(bad("files".to_owned(), "[]", "at least one file"));
        }
        let mut seen = HashSet::new();
        for (i, f) in self.files.iter().enumerate() {
            if !is_safe_relative_path(&f.path) {
                return Err(bad(
                    format!("files[{i}].path"),
                    &f.path,
                    "a relative path inside the model, without '..', '.' or empty parts",
                ));
            }
            if !seen.insert(f.path.as_str()) {
                return Err(bad(format!("files[{i}].path"), &f.path, "each path once"));
            }
            if f.sha256.len() != 64 || !f.sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                return Err(bad(format!("files[{i}].sha256"), &f.sha256, "64 lowercase hex digits"));
            }
        }
        Ok(())
    }

    /// Total bytes of the model's files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 200
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
}

/// A `/`-separated relative path whose every part is a normal name: no root, no `..`, no `.`, no
/// empty part, no backslash.
pub fn is_safe_relative_path(path: &str) -> bool {
    if path.is_empty() || path.len() > 1024 || path.contains('\\') || path.contains('\0') {
        return false;
    }
    if path.split('/').any(|part| part.is_empty() || part == "." || part == "..") {
        return false;
    }
    Path::new(path).components().all(|c| matches!(c, Component::Normal(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn manifest(path: &str) -> String {
        format!(
            r#"{{"model": "tiny@v1", "source": {{"kind": "http", "base_url": "http://127.0.0.1/m"}},
                "files": [{{"path": "{path}", "size": 4, "sha256": "{DIGEST}"}}]}}"#
        )
    }

    #[test]
    fn reads_a_manifest() {
        let m = Manifest::from_json(&manifest("weights/model.safetensors"), "m.json").unwrap();
        assert_eq!(m.bytes(), 4);
        assert_eq!(m.source, Source::Http { base_url: "http://127.0.0.1/m".into(), token_env: None });
    }

    #[test]
    fn paths_that_could_escape_the_model_are_rejected() {
        for path in ["../etc/passwd", "/etc/passwd", "a/../../b", "a//b", "./a", "a\\\\b", ""] {
            let e = Manifest::from_json(&manifest(path), "m.json").unwrap_err();
            assert!(e.to_string().contains("files[0].path"), "{path}: {e}");
        }
    }

    #[test]
    fn bad_digests_names_and_json_are_named() {
        let text = manifest("a").replace(DIGEST, "xyz");
        let e = Manifest::from_json(&text, "m.json").unwrap_err();
        assert!(e.to_string().contains("files[0].sha256") && e.to_string().contains("64 lowercase hex"), "{e}");
        let e = Manifest::from_json(&manifest("a").replace("tiny@v1", "../x"), "m.json").unwrap_err();
        assert!(e.to_string().contains("field `model`"), "{e}");
        let e = Manifest::from_json("{", "m.json").unwrap_err();
        assert!(e.to_string().starts_with("m.json: not a model manifest"), "{e}");
    }
}
