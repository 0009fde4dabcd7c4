//! The kube-scheduler extender: `filter`, `prioritize` and `bind` verbs over HTTP with the exact wire
//! format of `k8s.io/kube-scheduler/extender/v1` (the Go types carry no JSON tags, so the keys are the
//! PascalCase field names). Works with and without `nodeCacheCapable`; GPU state always comes from
//! gpuplane's own snapshot, since Node objects do not say which GPU milli are taken.

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
use gpuplane_place::{Engine, NodeId, PodRequest, Rejection};
use k8s_openapi::api::core::v1 as api;
use serde::{Deserialize, Serialize};

use crate::assignment;
use crate::metrics::{Metrics, OPENMETRICS_CONTENT_TYPE};
use crate::objects;
use crate::snapshot::Snapshot;

/// Highest score an extender may give (`MaxExtenderPriority`); kube-scheduler multiplies it by the
/// extender's weight and by 10.
pub const MAX_EXTENDER_PRIORITY: i64 = 10;

/// A `v1.NodeList` as it travels inside extender messages (only `items` is read).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeList {
    /// The nodes.
    #[serde(default)]
    pub items: Vec<api::Node>,
}

/// `ExtenderArgs`: the pod and the candidate nodes, as full objects or (nodeCacheCapable) names.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExtenderArgs {
    /// The pod being scheduled.
    #[serde(default)]
    pub pod: Option<api::Pod>,
    /// Candidate nodes, when the extender is not node-cache capable.
    #[serde(default)]
    pub nodes: Option<NodeList>,
    /// Candidate node names, when it is.
    #[serde(default)]
    pub node_names: Option<Vec<String>>,
}

/// `ExtenderFilterResult`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ExtenderFilterResult {
    /// Nodes that passed, when the request carried full nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<NodeListOut>,
    /// Names of nodes that passed, when the request carried names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_names: Option<Vec<String>>,
    /// Nodes that failed, with the reason; preemption may help.
    #[serde(default)]
    pub failed_nodes: BTreeMap<String, String>,
    /// Nodes that failed in a way preemption cannot fix.
    #[serde(default)]
    pub failed_and_unresolvable_nodes: BTreeMap<String, String>,
    /// A failure of the whole call.
    #[serde(default)]
    pub error: String,
}

/// The node list of a filter result (kept as raw JSON so the nodes go back exactly as they came).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct NodeListOut {
    /// The nodes that passed.
    pub items: Vec<serde_json::Value>,
}

/// `HostPriority`: one node's score, 0 to [`MAX_EXTENDER_PRIORITY`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct HostPriority {
    /// Node name.
    pub host: String,
    /// Score.
    pub score: i64,
}

/// `ExtenderBindingArgs`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct ExtenderBindingArgs {
    /// Pod name.
    pub pod_name: String,
    /// Pod namespace.
    pub pod_namespace: String,
    /// Pod UID.
    #[serde(rename = "PodUID")]
    pub pod_uid: String,
    /// The node kube-scheduler chose.
    pub node: String,
}

/// `ExtenderBindingResult`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct ExtenderBindingResult {
    /// Empty on success.
    #[serde(default)]
    pub error: String,
}

/// `ExtenderPreemptionArgs`: the preemptor and, per node, the victims kube-scheduler proposes (as full
/// pods, or as UIDs when the extender is node-cache capable).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExtenderPreemptionArgs {
    /// The pod that wants to run.
    #[serde(default)]
    pub pod: Option<api::Pod>,
    /// Proposed victims per node, as pods.
    #[serde(default)]
    pub node_name_to_victims: Option<BTreeMap<String, Victims>>,
    /// Proposed victims per node, as UIDs.
    #[serde(default)]
    pub node_name_to_meta_victims: Option<BTreeMap<String, MetaVictims>>,
}

/// `Victims`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Victims {
    /// The pods to evict.
    #[serde(default)]
    pub pods: Vec<api::Pod>,
    /// PodDisruptionBudgets those evictions would violate.
    #[serde(default, rename = "NumPDBViolations")]
    pub num_pdb_violations: i64,
}

/// `MetaVictims`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct MetaVictims {
    /// The pods to evict, by UID.
    #[serde(default)]
    pub pods: Vec<MetaPod>,
    /// PodDisruptionBudgets those evictions would violate.
    #[serde(default, rename = "NumPDBViolations")]
    pub num_pdb_violations: i64,
}

/// `MetaPod`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MetaPod {
    /// Pod UID.
    #[serde(rename = "UID")]
    pub uid: String,
}

/// `ExtenderPreemptionResult`: the nodes where preemption works, with the victims it takes there.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct ExtenderPreemptionResult {
    /// Victims per node.
    #[serde(default)]
    pub node_name_to_meta_victims: BTreeMap<String, MetaVictims>,
}

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

/// Settings of the extender.
#[derive(Debug, Clone)]
pub struct ExtenderConfig {
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// How many recently filtered pods are remembered for the bind verb.
    pub remembered_pods: usize,
}

impl Default for ExtenderConfig {
    fn default() -> Self {
        ExtenderConfig { max_body_bytes: 32 << 20, remembered_pods: 10_000 }
    }
}

/// The extender's shared state: the snapshot, the engine, and the pods seen by filter/prioritize.
pub struct Extender<B> {
    inner: Mutex<Inner>,
    binder: B,
    config: ExtenderConfig,
    metrics: Metrics,
}

struct Inner {
    snapshot: Snapshot,
    engine: Engine,
    /// Pods seen by filter/prioritize, kept as domain pods: a snapshot rebuilt in between may number
    /// GPU models differently, so requests are resolved again at bind time.
    recent: HashMap<String, gpuplane_core::Pod>,
    order: VecDeque<String>,
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
    /// Builds the extender over a snapshot and an engine.
    pub fn new(snapshot: Snapshot, engine: Engine, binder: B, config: ExtenderConfig) -> Self {
        let inner =
            Inner { snapshot, engine, recent: HashMap::new(), order: VecDeque::new(), in_flight: HashMap::new() };
        Extender { inner: Mutex::new(inner), binder, config, metrics: Metrics::new() }
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
        .route("/filter", post(filter::<B>))
        .route("/prioritize", post(prioritize::<B>))
        .route("/bind", post(bind::<B>))
        .route("/preempt", post(preempt::<B>))
        .route("/metrics", get(metrics::<B>))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(|| async {
            (StatusCode::NOT_FOUND, "unknown extender verb; expected POST /filter, /prioritize or /bind\n")
        })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(extender)
}

/// The pod and the candidates of a filter or prioritize call, read before taking the lock.
struct Call {
    uid: String,
    pod: gpuplane_core::Pod,
    names: Vec<String>,
    nodes_json: Option<Vec<serde_json::Value>>,
}

/// Why a filter or prioritize call cannot be answered.
enum CallError {
    /// The body is not an ExtenderArgs message (400: kube-scheduler never sends one).
    BadRequest(String),
    /// The pod asks for something that cannot be placed anywhere. kube-scheduler reads an extender's
    /// answer only from a 200, so this is a 200 that fails every candidate as unresolvable, with the reason.
    Impossible { reason: String, names: Vec<String>, nodes_json: Option<Vec<serde_json::Value>> },
}

impl IntoResponse for CallError {
    fn into_response(self) -> Response {
        match self {
            CallError::BadRequest(m) => (StatusCode::BAD_REQUEST, m).into_response(),
            CallError::Impossible { reason, names, nodes_json } => {
                let body = ExtenderFilterResult {
                    failed_and_unresolvable_nodes: names
                        .into_iter()
                        .map(|n| (n, format!("gpuplane: {reason}")))
                        .collect(),
                    node_names: nodes_json.is_none().then(Vec::new),
                    nodes: nodes_json.map(|_| NodeListOut { items: Vec::new() }),
                    ..Default::default()
                };
                axum::Json(body).into_response()
            }
        }
    }
}

fn invalid(what: &str, e: impl std::fmt::Display) -> CallError {
    CallError::BadRequest(format!("invalid {what}: {e}\n"))
}

fn read_call(body: &[u8]) -> Result<Call, CallError> {
    let args: ExtenderArgs = serde_json::from_slice(body).map_err(|e| invalid("ExtenderArgs JSON", e))?;
    // Without nodeCacheCapable the passing nodes go back as they came: keep their JSON as sent.
    let nodes_json = match (&args.node_names, &args.nodes) {
        (None, Some(_)) => {
            let raw: serde_json::Value = serde_json::from_slice(body).map_err(|e| invalid("ExtenderArgs JSON", e))?;
            raw.get("Nodes").and_then(|n| n.get("items")).and_then(|i| i.as_array()).cloned()
        }
        _ => None,
    };
    let pod = args.pod.ok_or_else(|| invalid("ExtenderArgs", "no Pod"))?;
    let names: Vec<String> = match (&args.node_names, &args.nodes) {
        (Some(names), _) => names.clone(),
        (None, Some(list)) => list.items.iter().map(|n| n.metadata.name.clone().unwrap_or_default()).collect(),
        (None, None) => return Err(invalid("ExtenderArgs", "neither Nodes nor NodeNames")),
    };
    let domain = match objects::pod(&pod) {
        Ok(domain) => domain,
        Err(e) => return Err(CallError::Impossible { reason: e.to_string(), names, nodes_json }),
    };
    Ok(Call { uid: pod.metadata.uid.clone().unwrap_or_default(), pod: domain, names, nodes_json })
}

/// Remembers the pod for the bind verb and scores the candidates; `None` for nodes the snapshot lacks.
fn evaluate(inner: &mut Inner, limit: usize, call: &Call) -> Vec<Option<Result<i64, Rejection>>> {
    let request = inner.snapshot.cluster().request(&call.pod);
    remember(inner, limit, call);
    let ids: Vec<Option<NodeId>> = call.names.iter().map(|n| inner.snapshot.node_id(n)).collect();
    let known: Vec<NodeId> = ids.iter().flatten().copied().collect();
    let Inner { snapshot, engine, .. } = inner;
    let mut scored = engine.evaluate(snapshot.cluster(), &request, &known).into_iter();
    ids.iter().map(|id| id.and_then(|_| scored.next())).collect()
}

fn remember(inner: &mut Inner, limit: usize, call: &Call) {
    // Bind finds the pod by UID only; a call without one (kube-scheduler always sends it) is not kept.
    if call.uid.is_empty() {
        return;
    }
    let id = call.uid.clone();
    if inner.recent.insert(id.clone(), call.pod.clone()).is_none() {
        inner.order.push_back(id);
        while inner.order.len() > limit {
            if let Some(old) = inner.order.pop_front() {
                inner.recent.remove(&old);
            }
        }
    }
}

fn reason(r: Rejection) -> (&'static str, bool) {
    // The second value: can evicting pods (preemption) help?
    match r {
        Rejection::GpuModel => ("gpuplane: GPU model not accepted, or no GPU on the node", false),
        Rejection::NodeSelector => ("gpuplane: node selector does not match", false),
        Rejection::Taint => ("gpuplane: untolerated taint", false),
        Rejection::Cpu => ("gpuplane: not enough CPU", true),
        Rejection::Memory => ("gpuplane: not enough memory", true),
        Rejection::Gpu => ("gpuplane: not enough free GPU milli on enough GPUs", true),
    }
}

async fn filter<B: Binder>(State(ext): State<Arc<Extender<B>>>, body: Bytes) -> Response {
    let started = Instant::now();
    let response = filter_inner(&ext, body).await;
    ext.metrics.observe_request("filter", response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

async fn filter_inner<B: Binder>(ext: &Arc<Extender<B>>, body: Bytes) -> Response {
    let call = match read_call(&body) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let verdicts = evaluate(&mut ext.lock(), ext.config.remembered_pods, &call);
    let mut result = ExtenderFilterResult::default();
    let mut passed = Vec::new();
    for (i, (name, verdict)) in call.names.iter().zip(verdicts).enumerate() {
        match verdict {
            Some(Ok(_)) => passed.push(i),
            Some(Err(r)) => {
                let (text, resolvable) = reason(r);
                let map = if resolvable { &mut result.failed_nodes } else { &mut result.failed_and_unresolvable_nodes };
                map.insert(name.clone(), text.to_owned());
            }
            None => {
                result
                    .failed_and_unresolvable_nodes
                    .insert(name.clone(), "gpuplane: node unknown to gpuplane".to_owned());
            }
        }
    }
    match &call.nodes_json {
        Some(items) => {
            result.nodes = Some(NodeListOut { items: passed.iter().filter_map(|&i| items.get(i).cloned()).collect() })
        }
        None => result.node_names = Some(passed.iter().map(|&i| call.names[i].clone()).collect()),
    }
    axum::Json(result).into_response()
}

async fn prioritize<B: Binder>(State(ext): State<Arc<Extender<B>>>, body: Bytes) -> Response {
    let started = Instant::now();
    let response = prioritize_inner(&ext, body).await;
    ext.metrics.observe_request("prioritize", response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

async fn prioritize_inner<B: Binder>(ext: &Arc<Extender<B>>, body: Bytes) -> Response {
    let call = match read_call(&body) {
        Ok(c) => c,
        // Filter has failed every node for this pod; its priorities are all 0.
        Err(CallError::Impossible { names, .. }) => {
            let zeros: Vec<HostPriority> = names.into_iter().map(|host| HostPriority { host, score: 0 }).collect();
            return axum::Json(zeros).into_response();
        }
        Err(e) => return e.into_response(),
    };
    let verdicts = evaluate(&mut ext.lock(), ext.config.remembered_pods, &call);
    let list: Vec<HostPriority> = call
        .names
        .iter()
        .zip(verdicts)
        .map(|(name, v)| HostPriority {
            host: name.clone(),
            score: match v {
                Some(Ok(score)) => score.clamp(0, 100) * MAX_EXTENDER_PRIORITY / 100,
                _ => 0,
            },
        })
        .collect();
    axum::Json(list).into_response()
}

async fn bind<B: Binder>(State(ext): State<Arc<Extender<B>>>, body: Bytes) -> Response {
    let started = Instant::now();
    let response = bind_inner(&ext, body).await;
    ext.metrics.observe_request("bind", response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

async fn bind_inner<B: Binder>(ext: &Arc<Extender<B>>, body: Bytes) -> Response {
    let args: ExtenderBindingArgs = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) => return invalid("ExtenderBindingArgs JSON", e).into_response(),
    };
    let key = format!("{}/{}", args.pod_namespace, args.pod_name);
    // kube-scheduler reads `Error` only from a 200: every refusal is a 200 with the reason.
    let refuse = |error: String| {
        ext.metrics.observe_bind("conflict");
        axum::Json(ExtenderBindingResult { error }).into_response()
    };
    // Without the UID the Binding has no precondition: a pod deleted and re-created under the same name
    // would be bound in its place. kube-scheduler always sends it.
    if args.pod_uid.is_empty() {
        return refuse(format!("pod {key}: PodUID is required"));
    }
    // Choose the GPUs and reserve them in the snapshot before talking to the API server, so a
    // concurrent decision cannot take the same milli.
    let target = {
        let mut inner = ext.lock();
        let remembered = inner.recent.get(&args.pod_uid);
        let Some(request) = remembered.map(|pod| inner.snapshot.cluster().request(pod)) else {
            return refuse(format!(
                "pod {key} (uid {}) was not seen by filter or prioritize; cannot choose its GPUs",
                args.pod_uid
            ));
        };
        let Some(node) = inner.snapshot.node_id(&args.node) else {
            return refuse(format!("node {} is unknown to gpuplane", args.node));
        };
        let Inner { snapshot, engine, .. } = &mut *inner;
        let placement = match engine.place_on(snapshot.cluster(), &request, node) {
            Ok(p) => p,
            Err(r) => {
                return refuse(format!("pod {key} no longer fits node {}: {}", args.node, reason(r).0));
            }
        };
        let assignment = assignment::format(&placement.gpus);
        let assignment_uuids = assignment::format_uuids(&placement.gpus, snapshot.gpu_uuids(node));
        let in_flight = InFlight {
            uid: args.pod_uid.clone(),
            node: args.node.clone(),
            request: request.clone(),
            gpus: placement.gpus.clone(),
            since: Instant::now(),
        };
        if let Err(e) = snapshot.assume(&key, &args.pod_uid, request, placement) {
            return refuse(format!("pod {key}: {e}"));
        }
        inner.in_flight.insert(key.clone(), in_flight);
        BindTarget {
            namespace: args.pod_namespace,
            name: args.pod_name,
            uid: args.pod_uid,
            node: args.node,
            assignment,
            assignment_uuids,
        }
    };
    match ext.binder.bind(target).await {
        Ok(()) => {
            ext.metrics.observe_bind("ok");
            axum::Json(ExtenderBindingResult::default()).into_response()
        }
        Err(e) => {
            tracing::warn!(pod = %key, error = %e, "Binding failed; GPU reservation released.");
            ext.metrics.observe_bind("error");
            // The reservation is undone so the GPUs are free again.
            let mut inner = ext.lock();
            inner.in_flight.remove(&key);
            let _ = inner.snapshot.forget(&key);
            axum::Json(ExtenderBindingResult { error: format!("binding {key} failed: {e}") }).into_response()
        }
    }
}

/// Checks kube-scheduler's proposed victims against GPU-level fit. kube-scheduler does not see GPU shares
/// (they are annotations), so its victims may not free the right GPU milli: on each node gpuplane keeps the
/// proposal if the preemptor then fits, adds lower-priority pods of that node (lowest priority first, most
/// GPU milli first) until it does, or drops the node. Victims gpuplane adds are chosen without
/// PodDisruptionBudget knowledge; the count kube-scheduler sent is passed back unchanged.
async fn metrics<B: Binder>(State(ext): State<Arc<Extender<B>>>) -> Response {
    ([(axum::http::header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], ext.metrics_text()).into_response()
}

async fn preempt<B: Binder>(State(ext): State<Arc<Extender<B>>>, body: Bytes) -> Response {
    let started = Instant::now();
    let response = preempt_inner(&ext, body).await;
    ext.metrics.observe_request("preempt", response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

async fn preempt_inner<B: Binder>(ext: &Arc<Extender<B>>, body: Bytes) -> Response {
    let args: ExtenderPreemptionArgs = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) => return invalid("ExtenderPreemptionArgs JSON", e).into_response(),
    };
    let Some(pod) = args.pod else { return invalid("ExtenderPreemptionArgs", "no Pod").into_response() };
    let domain = match objects::pod(&pod) {
        Ok(d) => d,
        // No eviction makes room for a pod no node can take: no candidates, in a 200 as the protocol wants.
        Err(e) => {
            tracing::debug!(error = %e, "Preempt for a pod that cannot be placed anywhere.");
            return axum::Json(ExtenderPreemptionResult::default()).into_response();
        }
    };
    let mut proposals: BTreeMap<String, (Vec<String>, i64)> = BTreeMap::new();
    for (node, v) in args.node_name_to_meta_victims.unwrap_or_default() {
        proposals.insert(node, (v.pods.into_iter().map(|p| p.uid).collect(), v.num_pdb_violations));
    }
    for (node, v) in args.node_name_to_victims.unwrap_or_default() {
        let uids = v.pods.iter().filter_map(|p| p.metadata.uid.clone()).collect();
        proposals.insert(node, (uids, v.num_pdb_violations));
    }
    let inner = ext.lock();
    let snapshot = &inner.snapshot;
    let request = snapshot.cluster().request(&domain);
    let mut result = ExtenderPreemptionResult::default();
    for (name, (uids, pdb)) in proposals {
        let Some(node) = snapshot.node_id(&name) else { continue };
        if let Some(victims) = victims_that_fit(snapshot, node, &request, &uids) {
            let pods = victims.into_iter().map(|uid| MetaPod { uid }).collect();
            result.node_name_to_meta_victims.insert(name, MetaVictims { pods, num_pdb_violations: pdb });
        }
    }
    axum::Json(result).into_response()
}

/// The victims on `node` after which `request` fits: the proposal, extended if needed; `None` if no set of
/// lower-priority pods makes room.
fn victims_that_fit(
    snapshot: &Snapshot,
    node: NodeId,
    request: &PodRequest,
    proposed: &[String],
) -> Option<Vec<String>> {
    let info = &snapshot.cluster().node_info()[node];
    let mut state = snapshot.cluster().nodes()[node].clone();
    let free = crate::scheduler::preempt::release_into;
    let mut victims = Vec::new();
    for uid in proposed {
        match snapshot.bound_by_uid(uid) {
            Some(pod) if pod.placement.node == node => {
                free(&mut state, pod);
                victims.push(uid.clone());
            }
            // A victim gpuplane does not hold (CPU-only pods bound before it started, say) frees nothing it can count.
            _ => victims.push(uid.clone()),
        }
    }
    if gpuplane_place::filter::check(info, &state, request).is_ok() {
        return Some(victims);
    }
    let mut extra: Vec<&crate::BoundPod> = snapshot
        .pods_on(node)
        .filter(|p| p.request.priority < request.priority && !p.uid.is_empty() && !victims.contains(&p.uid))
        .collect();
    extra.sort_by(|a, b| {
        a.request.priority.cmp(&b.request.priority).then(b.request.gpu.total_milli().cmp(&a.request.gpu.total_milli()))
    });
    for pod in extra {
        free(&mut state, pod);
        victims.push(pod.uid.clone());
        if gpuplane_place::filter::check(info, &state, request).is_ok() {
            return Some(victims);
        }
    }
    None
}
