//! The admission webhook (AdmissionReview v1). It holds no state: every decision is a function of the
//! review alone, so any number of replicas agree. [`mutate`] steers GPU pods into the GPU pool and writes
//! a GPU share asked by annotation into the pod's resource requests, where the API server's own
//! ResourceQuota counts it atomically; [`validate`] keeps pods without GPUs out of the pool and every pod
//! away from GPUs it was not assigned (docs/security.md).

mod mutate;
mod validate;

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use gpuplane_core::Pod;
use k8s_openapi::api::core::v1 as api;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub use mutate::mutate;
pub use validate::{is_gpu_resource, validate};

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
    /// The subresource written, such as `ephemeralcontainers`; `None` for the pod itself.
    #[serde(default)]
    pub sub_resource: Option<String>,
    /// Who makes the request, as the API server authenticated them.
    #[serde(default)]
    pub user_info: UserInfo,
    /// The object being admitted, as sent: parsed only into the Pod type, never into a JSON tree.
    #[serde(default)]
    pub object: Option<Box<RawValue>>,
    /// The object as it was, on UPDATE.
    #[serde(default)]
    pub old_object: Option<Box<RawValue>>,
    /// True when the request will not be persisted.
    #[serde(default)]
    pub dry_run: Option<bool>,
}

/// The requester of an admission review.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UserInfo {
    /// User name (`system:node:gpu-1`, `system:serviceaccount:ns:name`, ...).
    #[serde(default)]
    pub username: String,
    /// Groups.
    #[serde(default)]
    pub groups: Vec<String>,
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

/// The ResourceQuota key that limits the GPU shares and whole GPUs pods ask of gpuplane's device plugin, in
/// milli-GPUs: the API server counts it from the requests [`mutate`] writes.
pub const GPU_MILLI_QUOTA_RESOURCE: &str = "requests.gpuplane.io/gpu-milli";

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
    let Some(pod) = pod_object(object).map_err(|e| format!("gpuplane: the object is not a valid Pod: {e}"))? else {
        return Ok(None);
    };
    let domain = objects::pod(&pod).map_err(|e| format!("gpuplane: {e}"))?;
    crate::inventory::model_of(&pod).map_err(|e| format!("gpuplane: {e}"))?;
    Ok(Some((pod, domain)))
}

/// A review's object as a Pod; `None` when its `kind` is another.
fn pod_object(raw: &RawValue) -> Result<Option<api::Pod>, serde_json::Error> {
    #[derive(Deserialize)]
    struct Kind {
        #[serde(default)]
        kind: Option<String>,
    }
    let kind: Kind = serde_json::from_str(raw.get())?;
    if kind.kind.as_deref().is_some_and(|k| k != "Pod") {
        return Ok(None);
    }
    serde_json::from_str(raw.get()).map(Some)
}

/// How many reviews a replica reads and decides at once; more wait, unread.
pub const MAX_IN_FLIGHT: usize = 8;

/// The webhook's shared state: its settings, its metrics and the reviews in flight. It keeps nothing
/// between reviews.
#[derive(Debug)]
pub struct Webhook {
    /// Settings.
    pub config: WebhookConfig,
    /// Reviews answered, by path and outcome.
    pub metrics: crate::metrics::WebhookMetrics,
    in_flight: tokio::sync::Semaphore,
}

impl Default for Webhook {
    fn default() -> Self {
        Webhook::new(WebhookConfig::default())
    }
}

impl Webhook {
    /// A webhook with `config`.
    pub fn new(config: WebhookConfig) -> Self {
        Webhook { config, metrics: Default::default(), in_flight: tokio::sync::Semaphore::new(MAX_IN_FLIGHT) }
    }
}

/// The HTTP routes: `POST /mutate`, `POST /validate`, `GET /healthz`, `GET /metrics`; bodies over
/// `max_body_bytes` get 413, malformed reviews 400.
pub fn router(webhook: std::sync::Arc<Webhook>, max_body_bytes: usize) -> axum::Router {
    use axum::extract::State;
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
    async fn answer(
        w: std::sync::Arc<Webhook>,
        path: &'static str,
        body: axum::body::Body,
        limit: usize,
        decide: fn(&WebhookConfig, &AdmissionRequest) -> AdmissionResponse,
    ) -> axum::response::Response {
        // At most MAX_IN_FLIGHT reviews are read and decided at once: a flood of large bodies waits in the
        // connection, unread, instead of taking the replica's memory (the connection limits and deadlines of
        // crates/serve bound the waiting).
        let Ok(_permit) = w.in_flight.acquire().await else {
            return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
        };
        let started = Instant::now();
        let body = match axum::body::to_bytes(body, limit).await {
            Ok(bytes) => bytes,
            Err(_) => {
                w.metrics.malformed(path);
                let message = format!("AdmissionReview over {limit} bytes, or its body could not be read\n");
                return (StatusCode::PAYLOAD_TOO_LARGE, message).into_response();
            }
        };
        match read(&body) {
            Ok(req) => {
                let response = decide(&w.config, &req);
                w.metrics.review(path, &response, started.elapsed());
                axum::Json(review_response(response)).into_response()
            }
            Err(r) => {
                w.metrics.malformed(path);
                r.into_response()
            }
        }
    }
    let limit = max_body_bytes;
    let mutating = move |State(w): State<std::sync::Arc<Webhook>>, body: axum::body::Body| async move {
        answer(w, "mutate", body, limit, mutate).await
    };
    let validating = move |State(w): State<std::sync::Arc<Webhook>>, body: axum::body::Body| async move {
        answer(w, "validate", body, limit, validate).await
    };
    async fn metrics(State(w): State<std::sync::Arc<Webhook>>) -> axum::response::Response {
        ([(axum::http::header::CONTENT_TYPE, crate::metrics::OPENMETRICS_CONTENT_TYPE)], w.metrics.encode())
            .into_response()
    }
    axum::Router::new()
        .route("/mutate", post(mutating))
        .route("/validate", post(validating))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .fallback(|| async { (StatusCode::NOT_FOUND, "unknown webhook path; expected POST /mutate or /validate\n") })
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
