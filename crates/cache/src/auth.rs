//! Who may call the agent, and for what. Every request but `/healthz` carries a bearer token; an
//! [`Authenticator`] turns it into a [`Caller`] (in a cluster: a projected ServiceAccount token checked
//! with a TokenReview, which also names the pod and node the token was issued to), and [`Policy`]
//! decides: peers read blobs; pods on this node prefetch only what a platform [`Grant`] gives their
//! namespace, see only those models, and pin them for themselves; configured writers do anything;
//! configured readers list the inventory and metrics.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;

use serde::Deserialize;
use thiserror::Error;

use crate::manifest::Source;
use crate::origin::origin_matches;

/// Who made a request, as the token reviewer says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Caller {
    /// User name (`system:serviceaccount:<namespace>:<name>` for a ServiceAccount).
    pub user: String,
    /// The node the token was issued on, when it is bound to a pod.
    pub node: Option<String>,
    /// The pod (`namespace/name`) the token was issued to, when bound to one.
    pub pod: Option<String>,
}

impl Caller {
    /// The namespace of the pod the token was issued to.
    pub fn namespace(&self) -> Option<&str> {
        self.pod.as_deref().and_then(|p| p.split_once('/')).map(|(ns, _)| ns)
    }
}

/// What the platform lets pods of some namespaces have the agent fetch: models under `origin`, sent the
/// credential in `token_env` if the grant names one. Read from the grants file (`--grants`, a ConfigMap the
/// platform team owns); a pod's request is judged by its token's namespace, never by what it sends.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// A URL prefix (matched as `--allow-origin` is: scheme, host, port, whole path segments).
    pub origin: String,
    /// Namespaces whose pods it covers (`*`: every namespace).
    pub namespaces: Vec<String>,
    /// The environment variable whose token the agent may send for these pods, if any.
    #[serde(default)]
    pub token_env: Option<String>,
}

impl Grant {
    fn covers(&self, namespace: &str, url: &str, token_env: Option<&str>) -> bool {
        self.namespaces.iter().any(|n| n == "*" || n == namespace)
            && origin_matches(&self.origin, url)
            && (token_env.is_none() || token_env == self.token_env.as_deref())
    }
}

/// The grants file: `grants:` and a list of [`Grant`]s, YAML (or JSON).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantsFile {
    grants: Vec<Grant>,
}

/// A grants file that cannot be used.
#[derive(Debug, Error)]
#[error("{path}: {message}")]
pub struct GrantsError {
    /// The file.
    pub path: String,
    /// What is wrong, with the line where the parser knows it.
    pub message: String,
}

/// Reads a grants file; every origin must parse as a URL and every grant name a namespace.
pub fn read_grants(path: &Path) -> Result<Vec<Grant>, GrantsError> {
    let shown = path.display().to_string();
    let bad = |message: String| GrantsError { path: shown.clone(), message };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let file: GrantsFile = serde_saphyr::from_str(&text).map_err(|e| bad(e.to_string()))?;
    for (i, g) in file.grants.iter().enumerate() {
        if reqwest::Url::parse(&g.origin).is_err() {
            return Err(bad(format!("grants[{i}].origin is {:?}, not a URL", g.origin)));
        }
        if g.namespaces.is_empty() || g.namespaces.iter().any(String::is_empty) {
            return Err(bad(format!("grants[{i}].namespaces must name at least one namespace (or \"*\")")));
        }
    }
    Ok(file.grants)
}

/// The URL a source's files are read under, and the credential it names, as grants judge them.
pub fn source_scope(source: &Source) -> Option<(String, Option<&str>)> {
    match source {
        Source::Http { base_url, token_env } => Some((base_url.clone(), token_env.as_deref())),
        Source::S3 { bucket, prefix, .. } => Some((format!("s3://{bucket}/{prefix}"), None)),
        Source::Local { .. } => None,
    }
}

/// The token reviewer could not answer (the agent then refuses: it fails closed).
#[derive(Debug, Error)]
#[error("token review failed: {0}")]
pub struct AuthError(pub String);

/// A future returned by an [`Authenticator`].
pub type AuthFuture<'a> = Pin<Box<dyn Future<Output = Result<Option<Caller>, AuthError>> + Send + 'a>>;

/// Turns a bearer token into a caller; `Ok(None)` for a token that is not valid.
pub trait Authenticator: Send + Sync + 'static {
    /// Reviews a token.
    fn authenticate<'a>(&'a self, token: &'a str) -> AuthFuture<'a>;
}

/// Fixed tokens from a file, one `token,user[,node[,pod]]` per line (`#` starts a comment), like the
/// API server's static token file: for clusters without TokenReview access and for tests.
#[derive(Debug, Clone, Default)]
pub struct StaticTokens {
    tokens: HashMap<String, Caller>,
}

/// A static token file that cannot be used.
#[derive(Debug, Error)]
pub enum TokenFileError {
    /// Unreadable.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A line of the wrong shape.
    #[error("{path}:{line}: expected token,user[,node[,namespace/pod]] with a token of at least 16 characters")]
    Line {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
    },
}

impl StaticTokens {
    /// Tokens given in code.
    pub fn new(tokens: impl IntoIterator<Item = (String, Caller)>) -> Self {
        StaticTokens { tokens: tokens.into_iter().collect() }
    }

    /// Reads a token file.
    pub fn from_file(path: &Path) -> Result<Self, TokenFileError> {
        let shown = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|source| TokenFileError::Read { path: shown.clone(), source })?;
        let mut tokens = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let parts: Vec<&str> = line.split(',').map(str::trim).collect();
            let bad = || TokenFileError::Line { path: shown.clone(), line: i + 1 };
            if parts.len() < 2 || parts.len() > 4 || parts[0].len() < 16 || parts[1].is_empty() {
                return Err(bad());
            }
            let opt = |k: usize| parts.get(k).filter(|s| !s.is_empty()).map(|s| (*s).to_owned());
            let caller = Caller { user: parts[1].to_owned(), node: opt(2), pod: opt(3) };
            if caller.pod.as_deref().is_some_and(|p| !p.contains('/')) {
                return Err(bad());
            }
            tokens.insert(parts[0].to_owned(), caller);
        }
        Ok(StaticTokens { tokens })
    }
}

impl Authenticator for StaticTokens {
    fn authenticate<'a>(&'a self, token: &'a str) -> AuthFuture<'a> {
        // Compare every token in constant time for its length: no early exit on the first byte.
        let found = self
            .tokens
            .iter()
            .find(|(t, _)| {
                t.len() == token.len() && t.bytes().zip(token.bytes()).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0
            })
            .map(|(_, c)| c.clone());
        Box::pin(async move { Ok(found) })
    }
}

/// What a request wants to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<'a> {
    /// `GET`/`HEAD /blobs/sha256/{d}`.
    ReadBlob,
    /// `GET /models`.
    Inventory,
    /// `GET /metrics`.
    Metrics,
    /// `POST /models`.
    Prefetch,
    /// `PUT`/`DELETE /models/{m}/pins/{pod}` for this pod.
    Pin(&'a str),
}

/// The agent's authorisation rules.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// This agent's node: pods whose tokens were issued on it are local clients.
    pub node: String,
    /// Users that are peer agents (read blobs and the inventory).
    pub peers: HashSet<String>,
    /// Users that read the inventory and metrics (the scheduler, Prometheus).
    pub readers: HashSet<String>,
    /// Users that may prefetch and pin or unpin for any pod.
    pub writers: HashSet<String>,
    /// What pods on this node may fetch and see.
    pub grants: Vec<Grant>,
}

impl Policy {
    fn is_local(&self, caller: &Caller) -> bool {
        !self.node.is_empty() && caller.node.as_deref() == Some(self.node.as_str()) && caller.pod.is_some()
    }

    /// Whether `caller` is a configured writer.
    pub fn is_writer(&self, caller: &Caller) -> bool {
        self.writers.contains(caller.user.as_str())
    }

    /// Whether `caller` may have the agent read `source` (for a pod: a grant covers its namespace, the
    /// source's URL and the credential it names) and see a model fetched from it.
    pub fn may_use(&self, caller: &Caller, source: &Source) -> bool {
        self.is_writer(caller) || !self.covering(caller, source).is_empty()
    }

    /// The origins of the grants that let `caller` (a pod) read `source`: where its fetch may be redirected.
    pub fn granted_origins(&self, caller: &Caller, source: &Source) -> Vec<String> {
        self.covering(caller, source).into_iter().map(|g| g.origin.clone()).collect()
    }

    /// The grants that cover a pod on this node reading `source`; none for anyone else.
    fn covering(&self, caller: &Caller, source: &Source) -> Vec<&Grant> {
        let (Some(namespace), Some((url, token_env))) = (caller.namespace(), source_scope(source)) else {
            return Vec::new();
        };
        if !self.is_local(caller) {
            return Vec::new();
        }
        self.grants.iter().filter(|g| g.covers(namespace, &url, token_env)).collect()
    }

    /// Whether `caller` may do `action` (what it may do to which model is [`Self::may_use`]'s).
    pub fn allows(&self, caller: &Caller, action: &Action<'_>) -> bool {
        let user = caller.user.as_str();
        let writer = self.writers.contains(user);
        match action {
            // Pods read models through the store they mount, never through the agent: the blob endpoint
            // is for peer agents.
            Action::ReadBlob => writer || self.peers.contains(user),
            Action::Inventory => {
                writer || self.peers.contains(user) || self.readers.contains(user) || self.is_local(caller)
            }
            Action::Metrics => writer || self.peers.contains(user) || self.readers.contains(user),
            Action::Prefetch => writer || self.is_local(caller),
            Action::Pin(pod) => writer || (self.is_local(caller) && caller.pod.as_deref() == Some(pod)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(user: &str, node: Option<&str>, pod: Option<&str>) -> Caller {
        Caller { user: user.into(), node: node.map(Into::into), pod: pod.map(Into::into) }
    }

    #[test]
    fn local_pods_pin_only_for_themselves_and_strangers_get_nothing() {
        let policy = Policy {
            node: "gpu-1".into(),
            peers: ["system:serviceaccount:gpuplane-system:gpuplane-cache".to_owned()].into(),
            readers: ["system:serviceaccount:gpuplane-system:gpuplane-scheduler".to_owned()].into(),
            writers: HashSet::new(),
            grants: vec![Grant {
                origin: "https://models.example/serving/".into(),
                namespaces: vec!["serving".into()],
                token_env: Some("HF_TOKEN".into()),
            }],
        };
        let pod_a = caller("system:serviceaccount:serving:default", Some("gpu-1"), Some("serving/pod-a"));
        assert!(policy.allows(&pod_a, &Action::Pin("serving/pod-a")));
        assert!(!policy.allows(&pod_a, &Action::Pin("serving/pod-b")), "another pod's pin");
        assert!(policy.allows(&pod_a, &Action::Prefetch) && !policy.allows(&pod_a, &Action::ReadBlob));
        let http =
            |base: &str, token: Option<&str>| Source::Http { base_url: base.into(), token_env: token.map(Into::into) };
        assert!(policy.may_use(&pod_a, &http("https://models.example/serving/llama", Some("HF_TOKEN"))));
        assert!(policy.may_use(&pod_a, &http("https://models.example/serving/llama", None)));
        assert!(!policy.may_use(&pod_a, &http("https://models.example/research/x", None)), "another origin");
        assert!(!policy.may_use(&pod_a, &http("https://models.example/serving/x", Some("AWS_KEY"))), "credential");
        let other_ns = caller("system:serviceaccount:team-b:default", Some("gpu-1"), Some("team-b/pod"));
        assert!(!policy.may_use(&other_ns, &http("https://models.example/serving/llama", None)), "namespace");
        let elsewhere = caller("system:serviceaccount:serving:default", Some("gpu-2"), Some("serving/pod-c"));
        assert!(!policy.allows(&elsewhere, &Action::ReadBlob) && !policy.allows(&elsewhere, &Action::Prefetch));
        let peer = caller("system:serviceaccount:gpuplane-system:gpuplane-cache", Some("gpu-2"), Some("x/y"));
        assert!(policy.allows(&peer, &Action::ReadBlob) && !policy.allows(&peer, &Action::Pin("x/y")));
        let scheduler = caller("system:serviceaccount:gpuplane-system:gpuplane-scheduler", None, None);
        assert!(policy.allows(&scheduler, &Action::Inventory) && !policy.allows(&scheduler, &Action::ReadBlob));
        let nobody = Caller::default();
        for action in [Action::ReadBlob, Action::Inventory, Action::Metrics, Action::Prefetch, Action::Pin("")] {
            assert!(!policy.allows(&nobody, &action), "{action:?}");
        }
    }

    #[test]
    fn token_files_are_read_and_bad_lines_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.csv");
        std::fs::write(&path, "# comment\n0123456789abcdef0,peer\n0123456789abcdef1,pod-user,gpu-1,ns/p\n").unwrap();
        let tokens = StaticTokens::from_file(&path).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let c = rt.block_on(tokens.authenticate("0123456789abcdef1")).unwrap().unwrap();
        assert_eq!((c.node.as_deref(), c.pod.as_deref()), (Some("gpu-1"), Some("ns/p")));
        assert!(rt.block_on(tokens.authenticate("0123456789abcdef2")).unwrap().is_none());
        std::fs::write(&path, "short,peer\n").unwrap();
        let e = StaticTokens::from_file(&path).unwrap_err();
        assert!(e.to_string().contains("tokens.csv:1"), "{e}");
    }

    #[test]
    fn grants_files_are_read_and_mistakes_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grants.yaml");
        let text =
            "grants:\n- origin: https://huggingface.co/meta-llama/\n  namespaces: [serving]\n  token_env: HF_TOKEN\n";
        std::fs::write(&path, text).unwrap();
        let grants = read_grants(&path).unwrap();
        assert_eq!(grants[0].token_env.as_deref(), Some("HF_TOKEN"));
        std::fs::write(&path, "grants:\n- origin: nowhere\n  namespaces: [a]\n").unwrap();
        assert!(read_grants(&path).unwrap_err().to_string().contains("grants[0].origin"));
        std::fs::write(&path, "grants:\n- origin: https://x/\n  namespace: [a]\n").unwrap();
        let e = read_grants(&path).unwrap_err().to_string();
        assert!(e.contains("grants.yaml") && e.contains("namespace"), "{e}");
    }
}
