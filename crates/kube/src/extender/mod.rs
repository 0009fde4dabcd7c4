//! The kube-scheduler extender: `filter`, `prioritize`, `bind` and `preempt` verbs over HTTP with the exact
//! wire format of `k8s.io/kube-scheduler/extender/v1` ([`wire`]). Works with and without `nodeCacheCapable`; GPU state always comes from
//! gpuplane's own snapshot, since Node objects do not say which GPU milli are taken.
//!
//! Nothing a caller sends is trusted beyond naming a pod. `filter`, `prioritize`, `bind` and `preempt` read
//! only the pod's UID (and namespace/name) from the body and evaluate the Pod object of gpuplane's own watch
//! with that UID ([`Extender::set_pods`], a map lookup); a pod the watch has not shown yet is read once from
//! the API server through a [`PodLookup`] and accepted only if its UID matches. Only pods whose
//! `spec.schedulerName` is one of [`ExtenderConfig::scheduler_names`] are served; every other pod is refused
//! with the reason ([`PodRefusal`]). Bodies are parsed once, into the few fields read: whole Nodes stay the
//! raw JSON slices of the request (returned byte for byte when they pass), so a request costs about its own
//! size in memory. Who may call at all is settled in the TLS handshake ([`crate::tls::ClientAuth`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::future::BoxFuture;
use gpuplane_place::{Engine, NodeId, PodRequest, Rejection};
use k8s_openapi::api::core::v1 as api;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::assignment;
use crate::metrics::{Metrics, OPENMETRICS_CONTENT_TYPE};
use crate::objects;
use crate::snapshot::Snapshot;

mod verbs;
mod wire;

pub use wire::*;

#[cfg(test)]
mod tests;

/// Where and how a pod is to be bound: the node and the GPU assignment annotation to write first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindTarget {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
    /// Node name.
    pub node: String,
    /// Value of the `gpuplane.io/gpu-assignment` annotation (empty for a CPU-only pod).
    pub assignment: String,
    /// Value of the `gpuplane.io/gpu-assignment-uuids` annotation (empty when the node has no UUIDs).
    pub assignment_uuids: String,
}

/// Why a binding did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindFailure {
    /// The pod no longer exists, or was replaced by another with the same name (404, or a UID precondition).
    #[error("{0}")]
    Gone(String),
    /// The pod is already bound, or was changed meanwhile (409).
    #[error("{0}")]
    Conflict(String),
    /// Anything else (API server unreachable, forbidden, ...); worth a retry.
    #[error("{0}")]
    Other(String),
}

/// Writes a binding to the API server: the assignment annotation, then the Binding subresource.
pub trait Binder: Send + Sync + 'static {
    /// Binds, or says why not.
    fn bind(&self, target: BindTarget) -> impl Future<Output = Result<(), BindFailure>> + Send;
}

/// Default largest request body, 128 MiB. An `ExtenderArgs` with 5,000 whole Nodes (`nodeCacheCapable:
/// false`) of about 15.5 KB each — kubelet-reported GPU Nodes with 50 images and their managedFields — is
/// 77.7 MB (74 MiB, measured in `tests/extender_memory.rs`); the limit leaves 70 % room above that.
pub const DEFAULT_MAX_BODY_BYTES: usize = 128 << 20;

/// The scheduler whose pods are served when no other is configured: kube-scheduler's default profile.
pub const DEFAULT_SCHEDULER_NAME: &str = "default-scheduler";

/// Settings of the extender.
#[derive(Debug, Clone)]
pub struct ExtenderConfig {
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// How many pods read from the API server (not shown by the watch yet) are kept for the next verbs.
    pub remembered_pods: usize,
    /// The `spec.schedulerName`s of the pods served; pods of any other scheduler are refused.
    pub scheduler_names: Vec<String>,
}

impl Default for ExtenderConfig {
    fn default() -> Self {
        ExtenderConfig {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            remembered_pods: 10_000,
            scheduler_names: vec![DEFAULT_SCHEDULER_NAME.to_owned()],
        }
    }
}

/// Reading a pod from the API server failed (not: the pod does not exist).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LookupError(pub String);

/// Reads one pod, by namespace and name, from the cluster, for a UID the watch has not shown yet.
pub trait PodLookup: Send + Sync + 'static {
    /// The pod as the API server has it; `None` if there is none of that name.
    fn get<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Arc<api::Pod>>, LookupError>>;
}

/// Why a verb refuses the pod a request names. kube-scheduler reads answers only from a 200, so every
/// refusal is a 200 carrying this text (every node failed and unresolvable, all scores 0, a bind `Error`,
/// no preemption candidates).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PodRefusal {
    /// The request has no pod UID.
    #[error("the request names no pod UID (Pod.metadata.uid, PodUID); gpuplane finds pods by UID")]
    NoUid,
    /// Neither the watch nor the API server has a pod with that UID.
    #[error("pod {key} (uid {uid}) is unknown: neither gpuplane's watch nor the API server has a pod with that UID")]
    Unknown {
        /// `namespace/name` as the request says.
        key: String,
        /// The UID sent.
        uid: String,
    },
    /// The API server's pod of that name has another UID.
    #[error("pod {key} has uid {actual} at the API server, not {sent} as the request says")]
    UidMismatch {
        /// `namespace/name`.
        key: String,
        /// The UID sent.
        sent: String,
        /// The UID the API server has.
        actual: String,
    },
    /// The pod with that UID has another namespace or name than the request says.
    #[error("uid {uid} is pod {actual}, not {sent} as the request says")]
    NameMismatch {
        /// The UID.
        uid: String,
        /// `namespace/name` sent.
        sent: String,
        /// `namespace/name` of the pod with that UID.
        actual: String,
    },
    /// The pod belongs to a scheduler this extender does not serve.
    #[error("pod {key} has spec.schedulerName {scheduler:?}; this extender serves only pods of {served}")]
    OtherScheduler {
        /// `namespace/name`.
        key: String,
        /// Its `spec.schedulerName`.
        scheduler: String,
        /// The schedulers served, comma-separated.
        served: String,
    },
    /// The API server could not be asked.
    #[error("pod {key} (uid {uid}) is not in gpuplane's watch and reading it from the API server failed: {error}")]
    Lookup {
        /// `namespace/name`.
        key: String,
        /// The UID sent.
        uid: String,
        /// Why.
        error: String,
    },
}

/// The extender's shared state: the snapshot, the engine, and the pods it evaluates.
pub struct Extender<B> {
    inner: Mutex<Inner>,
    binder: B,
    lookup: Option<Box<dyn PodLookup>>,
    config: ExtenderConfig,
    metrics: Metrics,
}

struct Inner {
    snapshot: Snapshot,
    engine: Engine,
    /// The watch's pods by UID; the only pods the verbs evaluate, besides `fetched`.
    pods: HashMap<String, Arc<api::Pod>>,
    /// Pods read from the API server because the watch did not show them yet, by UID (oldest first in
    /// `fetched_order`); dropped once the watch shows them, or beyond `remembered_pods`.
    fetched: HashMap<String, Arc<api::Pod>>,
    fetched_order: VecDeque<String>,
    in_flight: HashMap<String, InFlight>,
}

/// A binding gpuplane made that the watch caches may not show yet.
struct InFlight {
    uid: String,
    node: String,
    request: PodRequest,
    gpus: Vec<gpuplane_place::GpuShare>,
    since: Instant,
}

impl<B: Binder> Extender<B> {
    /// Builds the extender over a snapshot and an engine. It knows no pods until [`Extender::set_pods`],
    /// and reads none from the API server without [`Extender::with_pod_lookup`].
    pub fn new(snapshot: Snapshot, engine: Engine, binder: B, config: ExtenderConfig) -> Self {
        let inner = Inner {
            snapshot,
            engine,
            pods: HashMap::new(),
            fetched: HashMap::new(),
            fetched_order: VecDeque::new(),
            in_flight: HashMap::new(),
        };
        Extender { inner: Mutex::new(inner), binder, lookup: None, config, metrics: Metrics::new() }
    }

    /// Reads pods the watch has not shown yet through `lookup` (one read per unknown UID).
    pub fn with_pod_lookup(self, lookup: impl PodLookup) -> Self {
        Extender { lookup: Some(Box::new(lookup)), ..self }
    }

    /// Replaces the pods the verbs evaluate with the watch's Pod objects (those without a UID are left
    /// out). Pods read from the API server meanwhile are dropped once the watch shows them.
    pub fn set_pods(&self, pods: impl IntoIterator<Item = Arc<api::Pod>>) {
        let index: HashMap<String, Arc<api::Pod>> =
            pods.into_iter().filter_map(|p| p.metadata.uid.clone().filter(|u| !u.is_empty()).map(|u| (u, p))).collect();
        let mut inner = self.lock();
        let Inner { fetched, fetched_order, .. } = &mut *inner;
        fetched.retain(|uid, _| !index.contains_key(uid));
        fetched_order.retain(|uid| fetched.contains_key(uid));
        inner.pods = index;
    }

    /// The pod a request names, as gpuplane's watch (or else the API server) has it, if it is one of the
    /// pods this extender serves. `sent` is only the identity the request gives.
    async fn resolve(&self, sent: &PodIdentity) -> Result<Arc<api::Pod>, PodRefusal> {
        if sent.uid.is_empty() {
            return Err(PodRefusal::NoUid);
        }
        let held = {
            let inner = self.lock();
            inner.pods.get(&sent.uid).or_else(|| inner.fetched.get(&sent.uid)).cloned()
        };
        let pod = match held {
            Some(pod) => pod,
            None => self.fetch(sent).await?,
        };
        let actual = objects::pod_key(&pod);
        let (namespace, name) =
            (pod.metadata.namespace.as_deref().unwrap_or_default(), pod.metadata.name.as_deref().unwrap_or_default());
        if (!sent.namespace.is_empty() && sent.namespace != namespace) || (!sent.name.is_empty() && sent.name != name) {
            return Err(PodRefusal::NameMismatch { uid: sent.uid.clone(), sent: sent.key(), actual });
        }
        let scheduler = pod.spec.as_ref().and_then(|s| s.scheduler_name.as_deref()).unwrap_or(DEFAULT_SCHEDULER_NAME);
        if !self.config.scheduler_names.iter().any(|s| s == scheduler) {
            return Err(PodRefusal::OtherScheduler {
                key: actual,
                scheduler: scheduler.to_owned(),
                served: self.config.scheduler_names.join(", "),
            });
        }
        Ok(pod)
    }

    /// One read of the pod from the API server, accepted only with the UID sent; kept for the next verbs.
    async fn fetch(&self, sent: &PodIdentity) -> Result<Arc<api::Pod>, PodRefusal> {
        let unknown = || PodRefusal::Unknown { key: sent.key(), uid: sent.uid.clone() };
        let Some(lookup) = &self.lookup else { return Err(unknown()) };
        if sent.namespace.is_empty() || sent.name.is_empty() {
            return Err(unknown());
        }
        let pod = match lookup.get(&sent.namespace, &sent.name).await {
            Ok(Some(pod)) => pod,
            Ok(None) => return Err(unknown()),
            Err(e) => {
                return Err(PodRefusal::Lookup { key: sent.key(), uid: sent.uid.clone(), error: e.to_string() });
            }
        };
        let actual = pod.metadata.uid.as_deref().unwrap_or_default();
        if actual != sent.uid {
            return Err(PodRefusal::UidMismatch { key: sent.key(), sent: sent.uid.clone(), actual: actual.to_owned() });
        }
        let mut inner = self.lock();
        let limit = self.config.remembered_pods;
        if limit > 0 && inner.fetched.insert(sent.uid.clone(), Arc::clone(&pod)).is_none() {
            inner.fetched_order.push_back(sent.uid.clone());
            while inner.fetched_order.len() > limit {
                if let Some(old) = inner.fetched_order.pop_front() {
                    inner.fetched.remove(&old);
                }
            }
        }
        Ok(pod)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every update is a single call); keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the snapshot (after the watch caches changed).
    pub fn set_snapshot(&self, snapshot: Snapshot) {
        self.lock().snapshot = snapshot;
    }

    /// Rebuilds the snapshot from the watch caches' Node and Pod objects, keeping the bindings gpuplane
    /// made that the caches do not show yet (for at most `ttl`), so a GPU is not handed out twice in
    /// the window between a bind and its watch event.
    pub fn refresh(
        &self,
        nodes: &[api::Node],
        pods: &[api::Pod],
        ttl: std::time::Duration,
    ) -> Result<Vec<crate::Warning>, gpuplane_place::ClusterError> {
        let (mut snapshot, warnings) = Snapshot::build(nodes, pods)?;
        let now = Instant::now();
        let mut inner = self.lock();
        inner.in_flight.retain(|key, b| {
            if snapshot.binding(key).is_some() || now.duration_since(b.since) > ttl {
                return false;
            }
            let Some(node) = snapshot.node_id(&b.node) else { return false };
            let placement = gpuplane_place::Placement { node, gpus: b.gpus.clone() };
            snapshot.assume(key, &b.uid, b.request.clone(), placement).is_ok()
        });
        inner.snapshot = snapshot;
        Ok(warnings)
    }

    /// A copy of the current snapshot.
    pub fn snapshot(&self) -> Snapshot {
        self.lock().snapshot.clone()
    }

    /// The metrics text, with the pool gauges taken from the current snapshot.
    pub fn metrics_text(&self) -> String {
        {
            let inner = self.lock();
            self.metrics.set_pools(inner.snapshot.cluster(), inner.engine.target().map(|t| t.as_ref()));
        }
        self.metrics.encode()
    }
}

/// The HTTP routes: `POST /filter`, `POST /prioritize`, `POST /bind`, `POST /preempt`, `GET /metrics`,
/// `GET /healthz`.
pub fn router<B: Binder>(extender: Arc<Extender<B>>) -> Router {
    let limit = extender.config.max_body_bytes;
    Router::new()
        .route("/filter", post(verbs::filter::<B>))
        .route("/prioritize", post(verbs::prioritize::<B>))
        .route("/bind", post(verbs::bind::<B>))
        .route("/preempt", post(verbs::preempt::<B>))
        .route("/metrics", get(verbs::metrics::<B>))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(|| async {
            (StatusCode::NOT_FOUND, "unknown extender verb; expected POST /filter, /prioritize or /bind\n")
        })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(extender)
}

/// The identity of a pod as a request gives it: all that is read of the pod a body carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct PodIdentity {
    namespace: String,
    name: String,
    uid: String,
}

impl PodIdentity {
    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}
