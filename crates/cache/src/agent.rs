//! The cache agent's HTTP API, one per GPU node: prefetch a model, list the inventory (what the
//! scheduler reads for its locality score), pin and unpin models for pods, serve blobs to peer agents
//! with Range requests, health and metrics. Concurrent prefetches of one model run one fetch.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::error::CacheError;
use crate::fetch::{FetchReport, Fetcher};
use crate::manifest::Manifest;
use crate::store::Store;

/// Largest blob range served in one response.
const MAX_RANGE: u64 = 256 << 20;

/// The agent's state.
pub struct Agent {
    store: Arc<Mutex<Store>>,
    fetcher: Fetcher,
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    registry: Registry,
    fetched: Counter,
    peer: Counter,
    reused: Counter,
    failures: Counter,
    served: Counter,
    used: Gauge,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Agent")
    }
}

/// One model in the inventory.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct InventoryModel {
    /// Name.
    pub model: String,
    /// Bytes of its files.
    pub bytes: u64,
    /// Files.
    pub files: usize,
    /// Last use, seconds since the Unix epoch.
    pub last_used: u64,
    /// Pods pinning it.
    pub pinned_by: Vec<String>,
}

/// `GET /models`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Inventory {
    /// Bytes stored (shared files once).
    pub used_bytes: u64,
    /// The disk budget.
    pub budget_bytes: u64,
    /// The models.
    pub models: Vec<InventoryModel>,
}

impl Agent {
    /// An agent over a store and a fetcher.
    pub fn new(store: Store, fetcher: Fetcher) -> Arc<Agent> {
        let mut registry = Registry::with_prefix("gpuplane_cache");
        let (fetched, peer, reused, failures, served, used) = (
            Counter::default(),
            Counter::default(),
            Counter::default(),
            Counter::default(),
            Counter::default(),
            Gauge::default(),
        );
        registry.register("fetched_bytes", "Bytes read from origins and peers", fetched.clone());
        registry.register("peer_bytes", "Of the fetched bytes, those read from peer agents", peer.clone());
        registry.register("reused_bytes", "Bytes a prefetch found already stored", reused.clone());
        registry.register("fetch_failures", "Prefetches that failed", failures.clone());
        registry.register("served_bytes", "Blob bytes served to peer agents", served.clone());
        registry.register("used_bytes", "Bytes stored", used.clone());
        Arc::new(Agent {
            store: Arc::new(Mutex::new(store)),
            fetcher,
            fetching: Mutex::default(),
            registry,
            fetched,
            peer,
            reused,
            failures,
            served,
            used,
        })
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fetches a model; a second call for the same model waits for the first and then finds it stored.
    pub async fn prefetch(&self, manifest: &Manifest) -> Result<FetchReport, CacheError> {
        let gate = {
            let mut fetching = self.fetching.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(fetching.entry(manifest.model.clone()).or_default())
        };
        let _one_at_a_time = gate.lock().await;
        let result = self.fetcher.fetch_model(&self.store, manifest).await;
        match &result {
            Ok(r) => {
                self.fetched.inc_by(r.fetched_bytes);
                self.peer.inc_by(r.peer_bytes);
                self.reused.inc_by(r.reused_bytes);
            }
            Err(_) => {
                self.failures.inc();
            }
        }
        self.used.set(i64::try_from(self.store().used_bytes()).unwrap_or(i64::MAX));
        result
    }

    /// The models held.
    pub fn inventory(&self) -> Inventory {
        let store = self.store();
        Inventory {
            used_bytes: store.used_bytes(),
            budget_bytes: store.budget(),
            models: store
                .models()
                .iter()
                .map(|(name, m)| InventoryModel {
                    model: name.clone(),
                    bytes: m.bytes(),
                    files: m.files.len(),
                    last_used: m.last_used,
                    pinned_by: m.pinned_by.iter().cloned().collect(),
                })
                .collect(),
        }
    }
}

fn error_response(e: &CacheError) -> Response {
    let status = match e {
        CacheError::Manifest(_) => StatusCode::BAD_REQUEST,
        CacheError::Budget { .. } => StatusCode::INSUFFICIENT_STORAGE,
        CacheError::HashMismatch { .. } | CacheError::Safetensors { .. } | CacheError::Origin { .. } => {
            StatusCode::BAD_GATEWAY
        }
        CacheError::Io { .. } | CacheError::Index { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, format!("{e}\n")).into_response()
}

/// The routes: `POST /models` (a manifest), `GET /models`, `PUT`/`DELETE /models/{model}/pins/{pod}`,
/// `GET /blobs/sha256/{digest}` (Range), `GET /healthz`, `GET /metrics`.
pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/models", post(prefetch).get(list))
        .route("/models/{model}/pins/{pod}", axum::routing::put(pin).delete(unpin))
        .route("/blobs/sha256/{digest}", get(blob))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(16 << 20))
        .with_state(agent)
}

async fn prefetch(State(agent): State<Arc<Agent>>, body: Bytes) -> Response {
    let text = match std::str::from_utf8(&body) {
        Ok(t) => t,
        Err(_) => return (StatusCode::BAD_REQUEST, "the manifest is not UTF-8\n").into_response(),
    };
    let manifest = match Manifest::from_json(text, "request body") {
        Ok(m) => m,
        Err(e) => return error_response(&e.into()),
    };
    match agent.prefetch(&manifest).await {
        Ok(r) => axum::Json(serde_json::json!({
            "model": manifest.model, "files": r.files, "fetched_bytes": r.fetched_bytes, "peer_bytes": r.peer_bytes,
            "resumed_bytes": r.resumed_bytes, "reused_bytes": r.reused_bytes, "evicted": r.evicted,
        }))
        .into_response(),
        Err(e) => {
            tracing::warn!(model = %manifest.model, error = %e, "Prefetch failed.");
            error_response(&e)
        }
    }
}

async fn list(State(agent): State<Arc<Agent>>) -> Response {
    axum::Json(agent.inventory()).into_response()
}

async fn pin(State(agent): State<Arc<Agent>>, Path((model, pod)): Path<(String, String)>) -> Response {
    let result = agent.store().pin(&model, &pod);
    match result {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => (StatusCode::NOT_FOUND, format!("model {model} is not cached here\n")).into_response(),
        Err(e) => error_response(&e),
    }
}

async fn unpin(State(agent): State<Arc<Agent>>, Path((model, pod)): Path<(String, String)>) -> Response {
    let result = agent.store().unpin(&model, &pod);
    match result {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => error_response(&e),
    }
}

async fn metrics(State(agent): State<Arc<Agent>>) -> Response {
    let mut out = String::new();
    let _ = encode(&mut out, &agent.registry);
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], out).into_response()
}

/// Parses `bytes=a-b` against a size.
fn range(headers: &HeaderMap, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(value) = headers.get(header::RANGE) else { return Ok(None) };
    let spec = value.to_str().map_err(|_| ())?.strip_prefix("bytes=").ok_or(())?;
    let (a, b) = spec.split_once('-').ok_or(())?;
    let start: u64 = a.trim().parse().map_err(|_| ())?;
    let end: u64 = if b.trim().is_empty() { size.saturating_sub(1) } else { b.trim().parse().map_err(|_| ())? };
    if start > end || end >= size {
        return Err(());
    }
    Ok(Some((start, end)))
}

async fn blob(State(agent): State<Arc<Agent>>, Path(digest): Path<String>, headers: HeaderMap) -> Response {
    if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return (StatusCode::BAD_REQUEST, "expected a SHA-256 digest\n").into_response();
    }
    let path = agent.store().blob_path(&digest);
    let Ok(file) = std::fs::File::open(&path) else {
        return (StatusCode::NOT_FOUND, "not cached here\n").into_response();
    };
    let size = match file.metadata() {
        Ok(m) => m.len(),
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    let (start, end) = match range(&headers, size) {
        Ok(Some(r)) => r,
        Ok(None) if size <= MAX_RANGE => (0, size.saturating_sub(1)),
        Ok(None) => {
            return (StatusCode::RANGE_NOT_SATISFIABLE, "blobs this large are served by Range requests only\n")
                .into_response();
        }
        Err(()) => {
            return (StatusCode::RANGE_NOT_SATISFIABLE, [(header::CONTENT_RANGE, format!("bytes */{size}"))])
                .into_response();
        }
    };
    let partial = headers.contains_key(header::RANGE);
    if end + 1 - start > MAX_RANGE {
        return (StatusCode::RANGE_NOT_SATISFIABLE, format!("at most {MAX_RANGE} bytes per range\n")).into_response();
    }
    let len = if size == 0 { 0 } else { end + 1 - start };
    let read = tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, start).map(|()| buf)
    })
    .await;
    let Ok(Ok(bytes)) = read else { return StatusCode::INTERNAL_SERVER_ERROR.into_response() };
    agent.served.inc_by(len);
    if partial {
        let content_range = format!("bytes {start}-{end}/{size}");
        (StatusCode::PARTIAL_CONTENT, [(header::CONTENT_RANGE, content_range)], bytes).into_response()
    } else {
        bytes.into_response()
    }
}
