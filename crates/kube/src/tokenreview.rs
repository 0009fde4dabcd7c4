//! Checking bearer tokens with the API server's TokenReview, as the kubelet and kube-rbac-proxy do:
//! a token is valid when the API server says so for one of our audiences. Answers are cached by the
//! token's SHA-256 (never the token itself) for a short time, in a bounded table, so a busy peer
//! does not cost one API call per request.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};

/// A user the API server vouched for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewedUser {
    /// `system:serviceaccount:<namespace>:<name>` for a ServiceAccount token.
    pub username: String,
    /// Groups.
    pub groups: Vec<String>,
    /// Extra attributes; a pod-bound token has `authentication.kubernetes.io/pod-name` and
    /// `authentication.kubernetes.io/node-name`.
    pub extra: BTreeMap<String, Vec<String>>,
}

impl ReviewedUser {
    /// The first value of an extra attribute.
    pub fn extra_value(&self, key: &str) -> Option<&str> {
        self.extra.get(key).and_then(|v| v.first()).map(String::as_str)
    }

    /// For a pod-bound ServiceAccount token: the pod as `namespace/name`.
    pub fn pod(&self) -> Option<String> {
        let namespace = self.username.strip_prefix("system:serviceaccount:")?.split(':').next()?;
        let name = self.extra_value("authentication.kubernetes.io/pod-name")?;
        Some(format!("{namespace}/{name}"))
    }

    /// For a pod-bound ServiceAccount token: the node the pod runs on.
    pub fn node(&self) -> Option<String> {
        self.extra_value("authentication.kubernetes.io/node-name").map(str::to_owned)
    }
}

struct Cached {
    at: Instant,
    user: Option<ReviewedUser>,
}

/// Reviews tokens against the API server, with a bounded cache.
pub struct TokenReviewer {
    client: kube::Client,
    audiences: Vec<String>,
    cache: Mutex<HashMap<[u8; 32], Cached>>,
    valid_for: Duration,
    invalid_for: Duration,
    max_entries: usize,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer").field("audiences", &self.audiences).finish()
    }
}

impl TokenReviewer {
    /// Reviews tokens for `audiences` (empty: the API server's own); valid answers are kept 60 s,
    /// refusals 10 s, at most 4,096 of them.
    pub fn new(client: kube::Client, audiences: Vec<String>) -> Self {
        TokenReviewer {
            client,
            audiences,
            cache: Mutex::default(),
            valid_for: Duration::from_secs(60),
            invalid_for: Duration::from_secs(10),
            max_entries: 4096,
        }
    }

    /// The user a token stands for, `None` when the API server refuses it; an error when it cannot
    /// be asked.
    pub async fn review(&self, token: &str) -> Result<Option<ReviewedUser>, kube::Error> {
        let key: [u8; 32] = {
            let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
            let mut k = [0u8; 32];
            k.copy_from_slice(d.as_ref());
            k
        };
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = cache.get(&key) {
                let ttl = if c.user.is_some() { self.valid_for } else { self.invalid_for };
                if c.at.elapsed() < ttl {
                    return Ok(c.user.clone());
                }
            }
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: (!self.audiences.is_empty()).then(|| self.audiences.clone()),
            },
            ..Default::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone()).create(&PostParams::default(), &review).await?;
        let user = answer
            .status
            .filter(|s| s.authenticated == Some(true))
            .filter(|s| {
                self.audiences.is_empty()
                    || s.audiences.as_ref().is_some_and(|a| a.iter().any(|x| self.audiences.contains(x)))
            })
            .and_then(|s| s.user)
            .and_then(|u| {
                Some(ReviewedUser {
                    username: u.username?,
                    groups: u.groups.unwrap_or_default(),
                    extra: u.extra.unwrap_or_default(),
                })
            });
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= self.max_entries {
            let now = Instant::now();
            cache.retain(|_, c| now.duration_since(c.at) < self.valid_for);
            if cache.len() >= self.max_entries {
                cache.clear();
            }
        }
        cache.insert(key, Cached { at: Instant::now(), user: user.clone() });
        Ok(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_bound_token_names_its_pod_and_node() {
        let user = ReviewedUser {
            username: "system:serviceaccount:serving:chat".into(),
            groups: vec![],
            extra: [
                ("authentication.kubernetes.io/pod-name".to_owned(), vec!["chat-0".to_owned()]),
                ("authentication.kubernetes.io/node-name".to_owned(), vec!["gpu-7".to_owned()]),
            ]
            .into(),
        };
        assert_eq!(user.pod().as_deref(), Some("serving/chat-0"));
        assert_eq!(user.node().as_deref(), Some("gpu-7"));
        let person = ReviewedUser { username: "alice".into(), groups: vec![], extra: BTreeMap::new() };
        assert_eq!((person.pod(), person.node()), (None, None));
    }
}
