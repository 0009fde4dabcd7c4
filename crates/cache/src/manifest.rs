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

/// Upper bounds on what a manifest may ask for; the agent refuses more with 400, naming the field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest single file, in bytes.
    pub max_file_bytes: u64,
    /// Largest model (all its files), in bytes.
    pub max_model_bytes: u64,
    /// Most files in one model.
    pub max_files: usize,
}

impl Default for Limits {
    /// 1 TiB per file, 4 TiB per model, 100,000 files: above any published checkpoint, far below what
    /// would overflow the byte arithmetic.
    fn default() -> Self {
        Limits { max_file_bytes: 1 << 40, max_model_bytes: 4 << 40, max_files: 100_000 }
    }
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

    /// Checks names, paths, digests and sizes against the default [`Limits`].
    pub fn check(&self, origin: &str) -> Result<(), ManifestError> {
        self.check_within(&Limits::default(), origin)
    }

    /// Checks names, paths, digests and sizes against `limits`.
    pub fn check_within(&self, limits: &Limits, origin: &str) -> Result<(), ManifestError> {
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
                "a name of letters, digits, '.', '-', '_' and '@' that does not begin with '.'",
            ));
        }
        if self.files.is_empty() {
            return Err(bad("files".to_owned(), "[]", "at least one file"));
        }
        if self.files.len() > limits.max_files {
            let count = self.files.len().to_string();
            return Err(bad("files".to_owned(), &count, &format!("at most {} files", limits.max_files)));
        }
        let mut seen = HashSet::new();
        let mut total: u64 = 0;
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
            if f.size > limits.max_file_bytes {
                let expected = format!("at most {} bytes per file", limits.max_file_bytes);
                return Err(bad(format!("files[{i}].size"), &f.size.to_string(), &expected));
            }
            total = match total.checked_add(f.size) {
                Some(t) if t <= limits.max_model_bytes => t,
                _ => {
                    let expected = format!("files adding up to at most {} bytes per model", limits.max_model_bytes);
                    return Err(bad(format!("files[{i}].size"), &f.size.to_string(), &expected));
                }
            };
            if f.sha256.len() != 64 || !f.sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                return Err(bad(format!("files[{i}].sha256"), &f.sha256, "64 lowercase hex digits"));
            }
        }
        // A file cannot also be another file's directory (`x` and `x/y`).
        for (i, f) in self.files.iter().enumerate() {
            let mut dir = f.path.as_str();
            while let Some((parent, _)) = dir.rsplit_once('/') {
                if seen.contains(parent) {
                    let expected = format!("a path whose directories are not files of the model (`{parent}` is one)");
                    return Err(bad(format!("files[{i}].path"), &f.path, &expected));
                }
                dir = parent;
            }
        }
        Ok(())
    }

    /// Total bytes of the model's files (saturating; [`Self::check`] refuses manifests that overflow).
    pub fn bytes(&self) -> u64 {
        self.files.iter().fold(0u64, |t, f| t.saturating_add(f.size))
    }
}

fn is_safe_name(name: &str) -> bool {
    // A leading '.' is refused: the store keeps its own staging entries under such names.
    !name.is_empty()
        && !name.starts_with('.')
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
        for name in [".m", ".m.old", "..", "."] {
            let e = Manifest::from_json(&manifest("a").replace("tiny@v1", name), "m.json").unwrap_err();
            assert!(e.to_string().contains("does not begin with '.'"), "{name}: {e}");
        }
    }

    fn two_files(a: (&str, u64), b: (&str, u64)) -> String {
        format!(
            r#"{{"model": "m", "source": {{"kind": "local", "dir": "/x"}}, "files": [
                {{"path": "{}", "size": {}, "sha256": "{DIGEST}"}}, {{"path": "{}", "size": {}, "sha256": "{DIGEST}"}}]}}"#,
            a.0, a.1, b.0, b.1
        )
    }

    #[test]
    fn sizes_that_overflow_or_exceed_the_limits_are_refused_by_field() {
        let e = Manifest::from_json(&two_files(("a", u64::MAX), ("b", 2)), "m.json").unwrap_err();
        assert!(e.to_string().contains("files[0].size"), "{e}");
        let huge = 1u64 << 40;
        let e = Manifest::from_json(&two_files(("a", huge), ("b", huge)), "m.json").unwrap();
        let limits = Limits { max_file_bytes: huge, max_model_bytes: huge + 1, max_files: 10 };
        let e = e.check_within(&limits, "req").unwrap_err();
        assert!(e.to_string().contains("files[1].size") && e.to_string().contains("per model"), "{e}");
        let limits = Limits { max_files: 1, ..Limits::default() };
        let m = Manifest::from_json(&two_files(("a", 1), ("b", 1)), "m.json").unwrap();
        assert!(m.check_within(&limits, "req").unwrap_err().to_string().contains("at most 1 files"));
    }

    proptest::proptest! {
        /// Any sizes: the check never panics, and a manifest it accepts adds up within the limits.
        #[test]
        fn accepted_manifests_add_up_within_the_limits(sizes in proptest::collection::vec(proptest::num::u64::ANY, 1..6)) {
            let files: Vec<String> = sizes
                .iter()
                .enumerate()
                .map(|(i, s)| format!(r#"{{"path": "f{i}", "size": {s}, "sha256": "{DIGEST}"}}"#))
                .collect();
            let text = format!(r#"{{"model": "m", "source": {{"kind": "local", "dir": "/x"}}, "files": [{}]}}"#, files.join(","));
            if let Ok(m) = Manifest::from_json(&text, "m.json") {
                let total = m.files.iter().try_fold(0u64, |t, f| t.checked_add(f.size));
                proptest::prop_assert!(total.is_some_and(|t| t <= Limits::default().max_model_bytes));
            }
        }
    }

    #[test]
    fn a_file_cannot_be_another_files_directory() {
        let e = Manifest::from_json(&two_files(("x/y/z", 1), ("x/y", 1)), "m.json").unwrap_err();
        assert!(e.to_string().contains("files[0].path") && e.to_string().contains("`x/y` is one"), "{e}");
        Manifest::from_json(&two_files(("x/y", 1), ("x/z", 1)), "m.json").unwrap();
    }
}
