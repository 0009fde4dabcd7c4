//! The admission webhook's decisions (AdmissionReview v1): a mutating review steers GPU pods into the
//! GPU pool (node selector, toleration, `schedulerName`, priority class from the latency-class label)
//! and never gives the GPU toleration to a pod without GPUs; a validating review denies GPU pods over
//! their namespace's GPU quota and pods that choose their own `NVIDIA_VISIBLE_DEVICES`. The quota check
//! counts the GPU pods it admitted until the Pod watch shows them ([`QuotaLedger`]), so concurrent
//! creates cannot all pass, and refuses GPU pods while its view of the cluster is not current.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use gpuplane_core::{Pod, TaintEffect};
use k8s_openapi::api::core::v1 as api;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::objects;

/// `admission.k8s.io/v1` `AdmissionReview`, request or response.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionReview {
    /// `admission.k8s.io/v1`.
    #[serde(default)]
    pub api_version: String,
    /// `AdmissionReview`.
    #[serde(default)]
    pub kind: String,
    /// Set by the API server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<AdmissionRequest>,
    /// Set by the webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<AdmissionResponse>,
}

/// The fields of an `AdmissionRequest` the webhook reads.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionRequest {
    /// Echoed in the response.
    pub uid: String,
    /// Namespace of the object.
    #[serde(default)]
    pub namespace: Option<String>,
    /// `CREATE`, `UPDATE`, `DELETE` or `CONNECT`.
    #[serde(default)]
    pub operation: String,
    /// The object being admitted.
    #[serde(default)]
    pub object: Option<Value>,
    /// True when the request will not be persisted.
    #[serde(default)]
    pub dry_run: Option<bool>,
}

/// An `AdmissionResponse`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionResponse {
    /// The request's uid.
    pub uid: String,
    /// Admit or deny.
    pub allowed: bool,
    /// Why it was denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// Base64 of a JSON Patch, for a mutation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    /// `JSONPatch` when `patch` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<String>,
    /// Warnings shown to the client.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The `metav1.Status` of a denial.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// HTTP-like code (403 for a policy denial, 400 for a malformed object).
    pub code: u16,
    /// Human-readable reason.
    pub message: String,
}

/// How the webhook steers and checks pods.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Node selector of the GPU pool, given to GPU pods.
    pub pool_selector: BTreeMap<String, String>,
    /// The GPU pool's taint key; GPU pods get a toleration for it.
    pub pool_taint_key: String,
    /// Scheduler name set on GPU pods that use the default scheduler.
    pub scheduler_name: String,
    /// Pod label naming the latency class (`interactive`, `batch`).
    pub latency_label: String,
    /// Priority class (name, value) per latency class.
    pub priority_classes: HashMap<String, (String, i32)>,
    /// Deny `NVIDIA_VISIBLE_DEVICES=all` on pods without GPUs.
    pub deny_visible_devices_all: bool,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            pool_selector: BTreeMap::from([("gpuplane.io/pool".to_owned(), "gpu".to_owned())]),
            pool_taint_key: "nvidia.com/gpu".to_owned(),
            scheduler_name: "gpuplane".to_owned(),
            latency_label: "gpuplane.io/latency-class".to_owned(),
            priority_classes: HashMap::from([
                ("interactive".to_owned(), ("gpuplane-interactive".to_owned(), 100_000)),
                ("batch".to_owned(), ("gpuplane-batch".to_owned(), 1_000)),
            ]),
            deny_visible_devices_all: true,
        }
    }
}

/// GPU quota of one namespace, from a ResourceQuota on `requests.nvidia.com/gpu`: hard limit and use, in
/// milli-GPUs (a GPU share counts as its fraction).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GpuQuota {
    /// Limit.
    pub hard_milli: u64,
    /// In use.
    pub used_milli: u64,
}

/// The ResourceQuota key gpuplane reads a namespace's GPU limit from.
pub const GPU_QUOTA_RESOURCE: &str = "requests.nvidia.com/gpu";

/// The GPU quotas as the watches show them, and which pods their use counts (`namespace/name`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuotaView {
    /// GPU quota per namespace that has one.
    pub quotas: HashMap<String, GpuQuota>,
    /// The pods counted in `used_milli`.
    pub counted: HashSet<String>,
}

/// GPU quota per namespace: the limit from the namespace's unscoped ResourceQuotas on
/// [`GPU_QUOTA_RESOURCE`] (the smallest, if several), and the use summed over its pods that are not
/// finished, GPU shares counted as their fraction (ResourceQuota's own `status.used` counts only whole
/// `nvidia.com/gpu` requests). Scoped quotas are skipped: they bind only some pods. Quotas and pods
/// that cannot be read are reported and left out.
pub fn gpu_quotas(quotas: &[api::ResourceQuota], pods: &[api::Pod]) -> (QuotaView, Vec<String>) {
    let mut out: HashMap<String, GpuQuota> = HashMap::new();
    let mut counted = HashSet::new();
    let mut problems = Vec::new();
    for q in quotas {
        let Some(spec) = &q.spec else { continue };
        if spec.scopes.as_ref().is_some_and(|s| !s.is_empty()) || spec.scope_selector.is_some() {
            continue;
        }
        let Some(hard) = spec.hard.as_ref().and_then(|h| h.get(GPU_QUOTA_RESOURCE)) else { continue };
        let namespace = q.metadata.namespace.clone().unwrap_or_else(|| "default".to_owned());
        match gpuplane_core::Quantity::parse_non_negative(&hard.0) {
            Ok(limit) => {
                let milli = u64::try_from(limit.milli_value()).unwrap_or(0);
                let entry = out.entry(namespace).or_insert(GpuQuota { hard_milli: u64::MAX, used_milli: 0 });
                entry.hard_milli = entry.hard_milli.min(milli);
            }
            Err(e) => problems.push(format!(
                "ResourceQuota {namespace}/{}: field `spec.hard.{GPU_QUOTA_RESOURCE}` is {:?}; expected a non-negative quantity ({e})",
                q.metadata.name.as_deref().unwrap_or(""),
                hard.0
            )),
        }
    }
    for p in pods {
        let namespace = p.metadata.namespace.as_deref().unwrap_or("default");
        let Some(quota) = out.get_mut(namespace) else { continue };
        if objects::is_terminal(p) {
            continue;
        }
        match objects::pod(p) {
            Ok(pod) => {
                quota.used_milli += u64::from(pod.gpu.total_milli());
                counted.insert(objects::pod_key(p));
            }
            Err(e) => problems.push(e.to_string()),
        }
    }
    (QuotaView { quotas: out, counted }, problems)
}

/// A GPU pod admitted against a quota that the Pod watch has not shown yet.
#[derive(Debug, Clone)]
struct Admitted {
    key: String,
    milli: u64,
    at: Instant,
}

/// The quota check's state: the watches' view, and the GPU pods admitted since that the view does not
/// count yet. Admitting a pod and counting it happen under one lock, so of ten concurrent creates that
/// fit one at a time only as many as fit are admitted. An admitted pod stops counting here once the
/// watch counts it, or after [`ADMITTED_TTL`] (its create may have failed later). While the view is
/// older than `stale_after` — the watches have not listed yet, or the API server stopped answering —
/// GPU pods are refused: a quota that silently stops being enforced is the failure to avoid.
#[derive(Debug)]
pub struct QuotaLedger {
    view: QuotaView,
    admitted: HashMap<String, (VecDeque<Admitted>, u64)>,
    fresh_at: Option<Instant>,
    stale_after: Duration,
}

/// How long an admitted pod is counted while the Pod watch does not show it.
pub const ADMITTED_TTL: Duration = Duration::from_secs(60);

/// How old the quota view may get (no successful read of the API server) before GPU pods are refused.
pub const STALE_AFTER: Duration = Duration::from_secs(30);

impl Default for QuotaLedger {
    fn default() -> Self {
        QuotaLedger::new(STALE_AFTER)
    }
}

impl QuotaLedger {
    /// An empty ledger, stale until the first [`QuotaLedger::refresh`].
    pub fn new(stale_after: Duration) -> Self {
        QuotaLedger { view: QuotaView::default(), admitted: HashMap::new(), fresh_at: None, stale_after }
    }

    /// Takes a new view from the watches (read at `now`); admitted pods it counts stop counting here.
    pub fn refresh(&mut self, view: QuotaView, now: Instant) {
        for (queue, sum) in self.admitted.values_mut() {
            queue.retain(|a| !view.counted.contains(&a.key));
            *sum = queue.iter().map(|a| a.milli).sum();
        }
        self.admitted.retain(|_, (queue, _)| !queue.is_empty());
        self.view = view;
        self.fresh_at = Some(now);
    }

    /// Records that the API server answered at `now`, so the view (kept current by the watches) is fresh.
    pub fn confirm_fresh(&mut self, now: Instant) {
        if self.fresh_at.is_some() {
            self.fresh_at = Some(now);
        }
    }

    /// Why the view cannot be trusted at `now`, if it cannot.
    pub fn stale(&self, now: Instant) -> Option<String> {
        match self.fresh_at {
            None => Some("the ResourceQuota and Pod watches have not listed yet".to_owned()),
            Some(at) if now.saturating_duration_since(at) > self.stale_after => {
                Some(format!("the API server has not answered for {} s", now.saturating_duration_since(at).as_secs()))
            }
            Some(_) => None,
        }
    }

    /// The namespace's quota with the admitted pods the watch does not show yet counted in `used_milli`.
    pub fn quota(&mut self, namespace: &str, now: Instant) -> Option<GpuQuota> {
        let q = *self.view.quotas.get(namespace)?;
        let reserved = match self.admitted.get_mut(namespace) {
            Some((queue, sum)) => {
                while queue.front().is_some_and(|a| now.saturating_duration_since(a.at) > ADMITTED_TTL) {
                    if let Some(old) = queue.pop_front() {
                        *sum -= old.milli;
                    }
                }
                *sum
            }
            None => 0,
        };
        Some(GpuQuota { hard_milli: q.hard_milli, used_milli: q.used_milli.saturating_add(reserved) })
    }

    fn admit(&mut self, namespace: &str, key: String, milli: u64, now: Instant) {
        let (queue, sum) = self.admitted.entry(namespace.to_owned()).or_default();
        queue.push_back(Admitted { key, milli, at: now });
        *sum += milli;
    }
}

fn allow(uid: &str) -> AdmissionResponse {
    AdmissionResponse { uid: uid.to_owned(), allowed: true, ..Default::default() }
}

fn deny(uid: &str, code: u16, message: String) -> AdmissionResponse {
    AdmissionResponse {
        uid: uid.to_owned(),
        allowed: false,
        status: Some(Status { code, message }),
        ..Default::default()
    }
}

/// Reads the Pod of a review: `None` when the object is not a Pod, `Err` with the denial message when it
/// is a malformed one.
fn pod_of(req: &AdmissionRequest) -> Result<Option<(api::Pod, Pod)>, String> {
    let Some(object) = &req.object else { return Ok(None) };
    if object.get("kind").and_then(Value::as_str).is_some_and(|k| k != "Pod") {
        return Ok(None);
    }
    let pod: api::Pod =
        serde_json::from_value(object.clone()).map_err(|e| format!("gpuplane: the object is not a valid Pod: {e}"))?;
    let domain = objects::pod(&pod).map_err(|e| format!("gpuplane: {e}"))?;
    crate::inventory::model_of(&pod).map_err(|e| format!("gpuplane: {e}"))?;
    Ok(Some((pod, domain)))
}

/// JSON Pointer escaping of a map key (`~` → `~0`, `/` → `~1`).
fn pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// The mutating review: a JSON Patch that moves a GPU pod into the GPU pool.
pub fn mutate(config: &WebhookConfig, req: &AdmissionRequest) -> AdmissionResponse {
    // A pod's scheduling fields cannot change after creation: an UPDATE is left alone, never patched.
    if req.operation != "CREATE" {
        return allow(&req.uid);
    }
    let (pod, domain) = match pod_of(req) {
        Ok(Some(p)) => p,
        Ok(None) => return allow(&req.uid),
        Err(message) => return deny(&req.uid, 400, message),
    };
    if domain.gpu.is_none() {
        return allow(&req.uid);
    }
    let spec = pod.spec.unwrap_or_default();
    let mut patch: Vec<Value> = Vec::new();
    match &spec.node_selector {
        None => patch.push(json!({"op": "add", "path": "/spec/nodeSelector", "value": config.pool_selector})),
        Some(existing) => {
            for (k, v) in &config.pool_selector {
                if existing.get(k) != Some(v) {
                    patch.push(json!({"op": "add", "path": format!("/spec/nodeSelector/{}", pointer(k)), "value": v}));
                }
            }
        }
    }
    let toleration = json!({"key": config.pool_taint_key, "operator": "Exists", "effect": "NoSchedule"});
    let taint = gpuplane_core::Taint {
        key: config.pool_taint_key.clone(),
        value: String::new(),
        effect: TaintEffect::NoSchedule,
    };
    if !domain.tolerations.iter().any(|t| t.tolerates(&taint)) {
        match &spec.tolerations {
            None => patch.push(json!({"op": "add", "path": "/spec/tolerations", "value": [toleration]})),
            Some(_) => patch.push(json!({"op": "add", "path": "/spec/tolerations/-", "value": toleration})),
        }
    }
    match spec.scheduler_name.as_deref() {
        None | Some("") | Some("default-scheduler") => {
            patch.push(json!({"op": "add", "path": "/spec/schedulerName", "value": config.scheduler_name}))
        }
        Some(_) => {}
    }
    let class = pod.metadata.labels.as_ref().and_then(|l| l.get(&config.latency_label));
    if let (Some((name, value)), None) = (class.and_then(|c| config.priority_classes.get(c)), &spec.priority_class_name)
    {
        patch.push(json!({"op": "add", "path": "/spec/priorityClassName", "value": name}));
        patch.push(json!({"op": "add", "path": "/spec/priority", "value": value}));
    }
    if patch.is_empty() {
        return allow(&req.uid);
    }
    AdmissionResponse {
        uid: req.uid.clone(),
        allowed: true,
        patch: Some(STANDARD.encode(Value::Array(patch).to_string())),
        patch_type: Some("JSONPatch".to_owned()),
        ..Default::default()
    }
}

/// The variable through which the NVIDIA container runtime exposes GPUs to a container.
const VISIBLE_DEVICES: &str = "NVIDIA_VISIBLE_DEVICES";

/// Why a pod may not set `NVIDIA_VISIBLE_DEVICES` as it does, if it may not.
///
/// The device plugin sets the variable to the GPUs gpuplane assigned; a value of the pod's own would expose
/// other GPUs of the node (`all`, `0,1,…`), to a GPU pod as to one without GPUs. Only `void` and `none` (no
/// GPU) are harmless. A value from `valueFrom`, or from an `envFrom` source whose prefix could spell the name,
/// cannot be checked at admission: it is refused too — `envFrom` only on GPU pods, where the device plugin's
/// value is at stake (a prefix, or listing the variables one by one, keeps such a source usable).
fn visible_devices_override(pod: &api::Pod, asks_gpu: bool) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let containers =
        spec.containers.iter().chain(spec.init_containers.iter().flatten()).map(|c| (&c.name, &c.env, &c.env_from));
    let ephemeral = spec.ephemeral_containers.iter().flatten().map(|c| (&c.name, &c.env, &c.env_from));
    for (name, env, env_from) in containers.chain(ephemeral) {
        for e in env.iter().flatten().filter(|e| e.name == VISIBLE_DEVICES) {
            if e.value_from.is_some() {
                return Some(format!(
                    "container {name:?} sets {VISIBLE_DEVICES} from valueFrom, which cannot be checked at admission"
                ));
            }
            let value = e.value.as_deref().unwrap_or("").trim();
            if !matches!(value, "" | "void" | "none") {
                let why = if asks_gpu {
                    "the device plugin sets it to the GPUs gpuplane assigned"
                } else {
                    "the pod requests no GPU"
                };
                return Some(format!(
                    "container {name:?} sets {VISIBLE_DEVICES}={value}, which would expose GPUs of the node ({why}); only void or none are allowed"
                ));
            }
        }
        if asks_gpu {
            for source in env_from.iter().flatten() {
                let prefix = source.prefix.as_deref().unwrap_or("");
                let from = match (&source.config_map_ref, &source.secret_ref) {
                    (Some(c), _) => format!("ConfigMap {:?}", c.name),
                    (None, Some(s)) => format!("Secret {:?}", s.name),
                    (None, None) => continue,
                };
                if VISIBLE_DEVICES.starts_with(prefix) {
                    return Some(format!(
                        "container {name:?} takes envFrom {from} with prefix {prefix:?}, which could set {VISIBLE_DEVICES} on a GPU pod; use a prefix or list the variables"
                    ));
                }
            }
        }
    }
    None
}

/// The validating review, against the quota ledger at `now`; an admitted GPU pod in a namespace with a
/// GPU quota is counted in the ledger at once (not for a dry run).
pub fn validate(
    config: &WebhookConfig,
    ledger: &mut QuotaLedger,
    req: &AdmissionRequest,
    now: Instant,
) -> AdmissionResponse {
    let (pod, domain) = match pod_of(req) {
        Ok(Some(p)) => p,
        Ok(None) => return allow(&req.uid),
        Err(message) => return deny(&req.uid, 400, message),
    };
    let key = objects::pod_key(&pod);
    if config.deny_visible_devices_all
        && let Some(message) = visible_devices_override(&pod, !domain.gpu.is_none())
    {
        return deny(&req.uid, 403, format!("gpuplane: pod {key}: {message}"));
    }
    if domain.gpu.is_none() {
        return allow(&req.uid);
    }
    if req.operation != "CREATE" {
        return allow(&req.uid);
    }
    if let Some(why) = ledger.stale(now) {
        return deny(
            &req.uid,
            503,
            format!("gpuplane: pod {key} asks for GPUs, whose quota cannot be checked now: {why}; retry shortly"),
        );
    }
    let namespace = req.namespace.clone().or(pod.metadata.namespace.clone()).unwrap_or_else(|| "default".to_owned());
    if let Some(q) = ledger.quota(&namespace, now) {
        let asked = u64::from(domain.gpu.total_milli());
        if q.used_milli + asked > q.hard_milli {
            return deny(
                &req.uid,
                403,
                format!(
                    "gpuplane: pod {key} asks for {:.3} GPUs; namespace {namespace} uses {:.3} of its {:.3} GPU quota",
                    asked as f64 / 1000.0,
                    q.used_milli as f64 / 1000.0,
                    q.hard_milli as f64 / 1000.0
                ),
            );
        }
        if req.dry_run != Some(true) {
            // A generated name is known only once the pod exists: such an admission counts until it expires.
            let name = pod.metadata.name.as_deref().unwrap_or("");
            let key = if name.is_empty() { format!("review {}", req.uid) } else { key };
            ledger.admit(&namespace, key, asked, now);
        }
    }
    allow(&req.uid)
}

/// The webhook's shared state: its settings, the quota ledger and its metrics.
#[derive(Debug, Default)]
pub struct Webhook {
    /// Settings.
    pub config: WebhookConfig,
    /// GPU quotas and what was admitted against them.
    pub ledger: std::sync::Mutex<QuotaLedger>,
    /// Reviews answered, by path and outcome.
    pub metrics: crate::metrics::WebhookMetrics,
}

impl Webhook {
    /// A webhook with `config`, stale until its ledger is first refreshed.
    pub fn new(config: WebhookConfig, ledger: QuotaLedger) -> Self {
        Webhook { config, ledger: std::sync::Mutex::new(ledger), metrics: Default::default() }
    }
}

/// The HTTP routes: `POST /mutate`, `POST /validate`, `GET /healthz` (503 while the quota view is stale),
/// `GET /metrics`; bodies over `max_body_bytes` get 413, malformed reviews 400.
pub fn router(webhook: std::sync::Arc<Webhook>, max_body_bytes: usize) -> axum::Router {
    use axum::extract::{DefaultBodyLimit, State};
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use axum::routing::{get, post};

    fn read(body: &[u8]) -> Result<AdmissionRequest, (StatusCode, String)> {
        let review: AdmissionReview = serde_json::from_slice(body)
            .map_err(|e| (StatusCode::BAD_REQUEST, format!("invalid AdmissionReview JSON: {e}\n")))?;
        // Only the version this webhook speaks: an answer in v1 to another version would be misread.
        if review.api_version != "admission.k8s.io/v1" || review.kind != "AdmissionReview" {
            return Err((
                StatusCode::BAD_REQUEST,
                format!(
                    "unsupported {:?} {:?}; this webhook speaks admission.k8s.io/v1 AdmissionReview\n",
                    review.api_version, review.kind
                ),
            ));
        }
        review.request.ok_or_else(|| (StatusCode::BAD_REQUEST, "AdmissionReview without request\n".to_owned()))
    }
    async fn mutating(State(w): State<std::sync::Arc<Webhook>>, body: axum::body::Bytes) -> axum::response::Response {
        let started = Instant::now();
        match read(&body) {
            Ok(req) => {
                let response = mutate(&w.config, &req);
                w.metrics.review("mutate", &response, started.elapsed());
                axum::Json(review_response(response)).into_response()
            }
            Err(r) => {
                w.metrics.malformed("mutate");
                r.into_response()
            }
        }
    }
    async fn validating(State(w): State<std::sync::Arc<Webhook>>, body: axum::body::Bytes) -> axum::response::Response {
        let started = Instant::now();
        match read(&body) {
            Ok(req) => {
                let response = {
                    let mut ledger = w.ledger.lock().unwrap_or_else(|p| p.into_inner());
                    validate(&w.config, &mut ledger, &req, Instant::now())
                };
                w.metrics.review("validate", &response, started.elapsed());
                axum::Json(review_response(response)).into_response()
            }
            Err(r) => {
                w.metrics.malformed("validate");
                r.into_response()
            }
        }
    }
    async fn health(State(w): State<std::sync::Arc<Webhook>>) -> axum::response::Response {
        let stale = w.ledger.lock().unwrap_or_else(|p| p.into_inner()).stale(Instant::now());
        w.metrics.set_stale(stale.is_some());
        match stale {
            None => "ok\n".into_response(),
            Some(why) => {
                (StatusCode::SERVICE_UNAVAILABLE, format!("GPU quotas cannot be checked: {why}\n")).into_response()
            }
        }
    }
    async fn metrics(State(w): State<std::sync::Arc<Webhook>>) -> axum::response::Response {
        let stale = w.ledger.lock().unwrap_or_else(|p| p.into_inner()).stale(Instant::now());
        w.metrics.set_stale(stale.is_some());
        ([(axum::http::header::CONTENT_TYPE, crate::metrics::OPENMETRICS_CONTENT_TYPE)], w.metrics.encode())
            .into_response()
    }
    axum::Router::new()
        .route("/mutate", post(mutating))
        .route("/validate", post(validating))
        .route("/healthz", get(health))
        .route("/metrics", get(metrics))
        .fallback(|| async { (StatusCode::NOT_FOUND, "unknown webhook path; expected POST /mutate or /validate\n") })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(webhook)
}

/// Wraps a response in an AdmissionReview as the API server expects it back.
pub fn review_response(response: AdmissionResponse) -> AdmissionReview {
    AdmissionReview {
        api_version: "admission.k8s.io/v1".to_owned(),
        kind: "AdmissionReview".to_owned(),
        request: None,
        response: Some(response),
    }
}
