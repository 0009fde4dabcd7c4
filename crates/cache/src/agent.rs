//! The cache agent's HTTP API, one per GPU node: prefetch a model, list the inventory (what the
//! scheduler reads for its locality score), pin and unpin models for pods, serve blobs to peer agents
//! with Range requests (also while they are still being fetched here), health and metrics. Every
//! call but `/healthz` is authenticated and authorised ([`crate::auth`]); sources come only from the
//! configured origins, and a pod's only from its namespace's grants; sizes, streams per caller, memory
//! per stream, failed token checks per address and idle clients are bounded.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::auth::{Action, Authenticator, Caller, Policy};
use crate::error::CacheError;
use crate::fetch::{Available, BLOB_STATE_HEADER, FETCH_KEY_HEADER, FETCH_SOURCE_HEADER, FetchReport, Fetcher};
use crate::limits::{Failures, RecentTokens};
use crate::manifest::{Limits, Manifest, Source};
use crate::origin;
use crate::store::{GcReport, Pinned, Sound, Store, sound_blob};

/// What the agent accepts and how much it spends.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Who may do what.
    pub policy: Policy,
    /// Origins a manifest may name: URL prefixes (`https://huggingface.co/`, `s3://bucket/prefix`).
    pub origins: Vec<String>,
    /// Environment variables a manifest's `token_env` may name.
    pub token_envs: Vec<String>,
    /// Size limits of a manifest.
    pub limits: Limits,
    /// Largest request body (a manifest).
    pub max_body_bytes: usize,
    /// How long a client may take to send a request body.
    pub body_timeout: Duration,
    /// Blob streams served at once to peer agents; more are answered 503.
    pub max_streams: usize,
    /// Blob streams one caller (one peer's pod, one writer) may hold at once.
    pub max_streams_per_caller: usize,
    /// Models one pod may pin at once.
    pub max_pins_per_pod: usize,
    /// Failed token checks one client address may cause at once, then one a second (429 beyond).
    pub failed_auth_burst: u32,
    /// Bytes read from disk per piece of a blob stream: with one piece buffered, the memory one stream holds.
    pub piece_bytes: usize,
    /// How long a blob stream waits for its reader to take a piece before it is dropped.
    pub send_timeout: Duration,
    /// How long a range request waits for bytes a fetch under way has not received yet.
    pub follow_wait: Duration,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            policy: Policy::default(),
            origins: Vec::new(),
            token_envs: Vec::new(),
            limits: Limits::default(),
            max_body_bytes: 4 << 20,
            body_timeout: Duration::from_secs(30),
            max_streams: 32,
            max_streams_per_caller: 8,
            max_pins_per_pod: 16,
            failed_auth_burst: 20,
            piece_bytes: 256 << 10,
            send_timeout: Duration::from_secs(60),
            follow_wait: Duration::from_secs(20),
        }
    }
}

/// The agent's state.
pub struct Agent {
    store: Arc<Mutex<Store>>,
    fetcher: Fetcher,
    config: AgentConfig,
    auth: Box<dyn Authenticator>,
    streams: Arc<gpuplane_serve::Slots<String>>,
    failures: Failures,
    recent: RecentTokens,
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    registry: Registry,
    metrics: Metrics,
}

#[derive(Default)]
struct Metrics {
    fetched: Counter,
    peer: Counter,
    reused: Counter,
    failures: Counter,
    served: Counter,
    denied: Counter,
    corrupt: Counter,
    used: Gauge,
    stray: Gauge,
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
    /// Bytes of blobs and partial downloads no model refers to (failed fetches), until collected.
    pub stray_bytes: u64,
    /// The disk budget.
    pub budget_bytes: u64,
    /// The models ready to use.
    pub models: Vec<InventoryModel>,
}

/// A request refused before it reached the store: status and message.
#[derive(Debug)]
pub struct Refusal(pub StatusCode, pub String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, format!("{}\n", self.1)).into_response()
    }
}

impl Agent {
    /// An agent over a store and a fetcher, checking callers with `auth`.
    pub fn new(store: Store, fetcher: Fetcher, config: AgentConfig, auth: Box<dyn Authenticator>) -> Arc<Agent> {
        let mut registry = Registry::with_prefix("gpuplane_cache");
        let metrics = Metrics::default();
        registry.register("fetched_bytes", "Bytes read from origins and peers", metrics.fetched.clone());
        registry.register("peer_bytes", "Of the fetched bytes, those read from peer agents", metrics.peer.clone());
        registry.register("reused_bytes", "Bytes a prefetch found already stored", metrics.reused.clone());
        registry.register("fetch_failures", "Prefetches that failed", metrics.failures.clone());
        registry.register("served_bytes", "Blob bytes served to peer agents", metrics.served.clone());
        registry.register(
            "denied_requests",
            "Requests refused for their token or their rights",
            metrics.denied.clone(),
        );
        registry.register("corrupt_blobs", "Stored blobs found not to match their digest", metrics.corrupt.clone());
        registry.register("used_bytes", "Bytes stored", metrics.used.clone());
        registry.register("stray_bytes", "Bytes of blobs and partials no model refers to", metrics.stray.clone());
        let streams =
            gpuplane_serve::Slots::new(Some(config.max_streams.max(1)), Some(config.max_streams_per_caller.max(1)));
        let failures = Failures::new(config.failed_auth_burst, 1.0, 65_536);
        Arc::new(Agent {
            store: Arc::new(Mutex::new(store)),
            fetcher,
            config,
            auth,
            streams,
            failures,
            recent: RecentTokens::default(),
            fetching: Mutex::default(),
            registry,
            metrics,
        })
    }

    /// The fetcher (its peer list can be changed through it).
    pub fn fetcher(&self) -> &Fetcher {
        &self.fetcher
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks a manifest against the agent's limits and origins, and a pod's against its namespace's
    /// grants; the refusal names the field.
    pub fn admit(&self, manifest: &Manifest, caller: &Caller) -> Result<(), Refusal> {
        let bad = |code: StatusCode, m: String| Err(Refusal(code, m));
        if let Err(e) = manifest.check_within(&self.config.limits, "request body") {
            return bad(StatusCode::BAD_REQUEST, e.to_string());
        }
        self.admit_source(manifest)?;
        // A pod may not replace a model of another tenant's under its name (its pods would read the
        // replacement): a name held by a model the caller may not see is not available to it.
        let taken = self
            .store()
            .models()
            .get(&manifest.model)
            .is_some_and(|m| m.source.as_ref().is_none_or(|s| !self.config.policy.may_use(caller, s)));
        if taken && !self.config.policy.is_writer(caller) {
            return bad(
                StatusCode::CONFLICT,
                format!("request body: field `model`: the name {:?} is not available; choose another", manifest.model),
            );
        }
        if !self.config.policy.may_use(caller, &manifest.source) {
            let namespace = caller.namespace().unwrap_or("(none)");
            return bad(
                StatusCode::FORBIDDEN,
                format!(
                    "request body: field `source`: no grant lets pods of namespace {namespace} fetch from it with this credential (--grants)"
                ),
            );
        }
        Ok(())
    }

    fn admit_source(&self, manifest: &Manifest) -> Result<(), Refusal> {
        let bad = |code: StatusCode, m: String| Err(Refusal(code, m));
        match &manifest.source {
            Source::Local { .. } => bad(
                StatusCode::FORBIDDEN,
                "request body: field `source.kind` is \"local\"; the API accepts only http and s3 sources (local directories are for `gpuplane cache fetch` on the node)".to_owned(),
            ),
            Source::Http { base_url, token_env } => {
                if !self.origin_allowed(base_url) {
                    return bad(
                        StatusCode::FORBIDDEN,
                        format!("request body: field `source.base_url` is {base_url:?}, not under an allowed origin (--allow-origin)"),
                    );
                }
                if let Some(env) = token_env
                    && !self.config.token_envs.iter().any(|e| e == env)
                {
                    return bad(
                        StatusCode::FORBIDDEN,
                        format!("request body: field `source.token_env` is {env:?}, not one the agent may send (--allow-token-env)"),
                    );
                }
                Ok(())
            }
            Source::S3 { bucket, prefix, endpoint, .. } => {
                let url = format!("s3://{bucket}/{prefix}");
                if !self.origin_allowed(&url) {
                    return bad(
                        StatusCode::FORBIDDEN,
                        format!("request body: fields `source.bucket` and `source.prefix` make {url:?}, not under an allowed origin (--allow-origin)"),
                    );
                }
                if let Some(e) = endpoint
                    && !self.origin_allowed(e)
                {
                    return bad(
                        StatusCode::FORBIDDEN,
                        format!("request body: field `source.endpoint` is {e:?}, not an allowed origin (--allow-origin)"),
                    );
                }
                Ok(())
            }
        }
    }

    fn origin_allowed(&self, url: &str) -> bool {
        origin::allowed(&self.config.origins, url)
    }

    /// Fetches a model for an administrator (files already stored or on peers are reused whatever source
    /// put them there); a second call for the same model waits for the first and then finds it stored.
    pub async fn prefetch(&self, manifest: &Manifest) -> Result<FetchReport, CacheError> {
        self.prefetch_as(manifest, None).await
    }

    /// [`Self::prefetch`]; for a pod's request, `scope` gives the origins its grants cover: the fetch is
    /// strict ([`Fetcher::fetch_model_as`]) and follows redirects only within them.
    pub async fn prefetch_as(
        &self,
        manifest: &Manifest,
        scope: Option<Vec<String>>,
    ) -> Result<FetchReport, CacheError> {
        let gate = {
            let mut fetching = self.fetching.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(fetching.entry(manifest.model.clone()).or_default())
        };
        let _one_at_a_time = gate.lock().await;
        let result = match scope {
            None => self.fetcher.fetch_model(&self.store, manifest).await,
            Some(origins) => match self.fetcher.clone().with_origins(origins) {
                Ok(fetcher) => fetcher.fetch_model_as(&self.store, manifest, true).await,
                Err(e) => Err(e),
            },
        };
        match &result {
            Ok(r) => {
                self.metrics.fetched.inc_by(r.fetched_bytes);
                self.metrics.peer.inc_by(r.peer_bytes);
                self.metrics.reused.inc_by(r.reused_bytes);
            }
            Err(_) => {
                self.metrics.failures.inc();
            }
        }
        self.update_gauges();
        result
    }

    fn update_gauges(&self) {
        let store = self.store();
        self.metrics.used.set(i64::try_from(store.used_bytes()).unwrap_or(i64::MAX));
        self.metrics.stray.set(i64::try_from(store.stray_bytes()).unwrap_or(i64::MAX));
    }

    /// The models ready to use.
    pub fn inventory(&self) -> Inventory {
        self.inventory_for(None)
    }

    /// The models ready to use that `caller` may see (all of them for `None`).
    fn inventory_for(&self, caller: Option<&Caller>) -> Inventory {
        let mut store = self.store();
        if let Err(e) = store.refresh() {
            tracing::warn!(error = %e, "Could not re-read the model index.");
        }
        // A pod sees the models it may use, the pins of its own namespace's pods, and the bytes of those
        // models: nothing of other tenants, not even their totals.
        let namespace = caller.map(|c| format!("{}/", c.namespace().unwrap_or("")));
        let models: Vec<InventoryModel> = store
            .models()
            .iter()
            .filter(|(_, m)| m.is_ready())
            .filter(|(_, m)| caller.is_none_or(|c| m.source.as_ref().is_some_and(|s| self.config.policy.may_use(c, s))))
            .map(|(name, m)| InventoryModel {
                model: name.clone(),
                bytes: m.bytes(),
                files: m.files.len(),
                last_used: m.last_used,
                pinned_by: m
                    .pinned_by
                    .iter()
                    .filter(|p| namespace.as_ref().is_none_or(|ns| p.starts_with(ns.as_str())))
                    .cloned()
                    .collect(),
            })
            .collect();
        let (used_bytes, stray_bytes) = match caller {
            None => (store.used_bytes(), store.stray_bytes()),
            Some(_) => (models.iter().map(|m| m.bytes).sum(), 0),
        };
        Inventory { used_bytes, stray_bytes, budget_bytes: store.budget(), models }
    }

    /// Fetches again, in the background, every model a failed blob took out of the inventory.
    pub fn heal(self: &Arc<Self>) {
        let damaged = self.store().damaged();
        for manifest in damaged {
            let agent = Arc::clone(self);
            tokio::spawn(async move {
                match agent.prefetch(&manifest).await {
                    Ok(r) => {
                        tracing::info!(model = %manifest.model, fetched = r.fetched_bytes, "Damaged model fetched again.")
                    }
                    Err(e) => tracing::warn!(model = %manifest.model, error = %e, "Damaged model not fetched again."),
                }
            });
        }
    }

    /// Drops the pins of pods not in `live` (`namespace/name` of the pods on this node, listed at
    /// `listed_at`, seconds since the epoch); returns the `(model, pod)` pins dropped.
    pub fn reconcile_pins(&self, live: &HashSet<String>, listed_at: u64) -> Result<Vec<(String, String)>, CacheError> {
        self.store().retain_pins(live, listed_at)
    }

    /// Removes strays and stale staging (see [`Store::collect_garbage`]).
    pub fn collect_garbage(&self, stale_after: Duration) -> Result<GcReport, CacheError> {
        let active = self.fetcher.active_models();
        let report = self.store().collect_garbage(stale_after, &active)?;
        self.update_gauges();
        Ok(report)
    }

    /// Hashes every verified blob again, one at a time; a blob that no longer matches is removed (its
    /// models fetch it again when next asked). Returns the digests removed.
    pub async fn rehash(&self) -> Vec<String> {
        let blobs = {
            let mut store = self.store();
            if let Err(e) = store.refresh() {
                tracing::warn!(error = %e, "Could not re-read the model index.");
            }
            store.verified_blobs()
        };
        let mut removed = Vec::new();
        for (digest, _) in blobs {
            if self.fetcher.in_flight(&digest).is_some() {
                continue;
            }
            // Hashed whatever its times say: this is for corruption that leaves them unchanged.
            if matches!(self.sound_blob(&digest, true).await, Sound::Corrupt) {
                removed.push(digest);
            }
        }
        removed
    }

    /// Runs garbage collection every `gc_every` and a re-hash of all blobs every `rehash_every`.
    pub async fn maintain(self: Arc<Self>, gc_every: Duration, stale_after: Duration, rehash_every: Duration) {
        let mut gc = tokio::time::interval(gc_every);
        let mut rehash = tokio::time::interval(rehash_every);
        rehash.tick().await;
        loop {
            tokio::select! {
                _ = gc.tick() => match self.collect_garbage(stale_after) {
                    Ok(r) if r != GcReport::default() => tracing::info!(blobs = r.blobs, partials = r.partials,
                        dirs = r.dirs, stale_fetches = r.stale_fetches, bytes = r.bytes, "Collected garbage."),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "Garbage collection failed."),
                },
                _ = rehash.tick() => {
                    let removed = self.rehash().await;
                    if !removed.is_empty() {
                        tracing::warn!(blobs = ?removed, "Re-hash found corrupt blobs; removed.");
                        self.heal();
                    }
                }
            }
        }
    }

    /// [`sound_blob`], counting corrupt blobs; a store error is logged and counts as absent.
    async fn sound_blob(&self, digest: &str, rehash: bool) -> Sound {
        match sound_blob(&self.store, digest, None, rehash).await {
            Ok(Sound::Corrupt) => {
                self.metrics.corrupt.inc();
                Sound::Corrupt
            }
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(blob = digest, error = %e, "Blob not readable.");
                Sound::Absent
            }
        }
    }

    async fn caller(
        &self,
        headers: &HeaderMap,
        client: Option<IpAddr>,
        action: &Action<'_>,
    ) -> Result<Caller, Refusal> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|t| !t.is_empty() && t.len() <= 16 << 10);
        let Some(token) = token else {
            self.metrics.denied.inc();
            return Err(Refusal(StatusCode::UNAUTHORIZED, "a bearer token is required".to_owned()));
        };
        if client.is_some_and(|ip| !self.failures.allows(ip)) && !self.recent.contains(token) {
            self.metrics.denied.inc();
            return Err(Refusal(StatusCode::TOO_MANY_REQUESTS, "too many invalid tokens from this address".to_owned()));
        }
        let reviewed = self.auth.authenticate(token).await;
        if matches!(reviewed, Ok(Some(_))) {
            self.recent.insert(token);
        }
        match reviewed {
            Ok(Some(caller)) if self.config.policy.allows(&caller, action) => Ok(caller),
            Ok(Some(caller)) => {
                self.metrics.denied.inc();
                tracing::info!(user = %caller.user, ?action, "Request refused: not allowed.");
                Err(Refusal(StatusCode::FORBIDDEN, format!("{} may not do this", caller.user)))
            }
            Ok(None) => {
                self.metrics.denied.inc();
                if let Some(ip) = client {
                    self.failures.failed(ip);
                }
                Err(Refusal(StatusCode::UNAUTHORIZED, "the token is not valid".to_owned()))
            }
            Err(e) => {
                tracing::warn!(error = %e, "Token review failed; refusing.");
                Err(Refusal(StatusCode::SERVICE_UNAVAILABLE, "cannot check the token now".to_owned()))
            }
        }
    }
}

/// The answer to a failed operation: the whole error for an administrator, [`CacheError::public_message`]
/// for anyone else (the whole error goes to the log).
fn error_response(e: &CacheError, detailed: bool) -> Response {
    let status = match e {
        CacheError::Manifest(_) => StatusCode::BAD_REQUEST,
        CacheError::Budget { .. } => StatusCode::INSUFFICIENT_STORAGE,
        CacheError::HashMismatch { .. }
        | CacheError::Safetensors { .. }
        | CacheError::Origin { .. }
        | CacheError::RangeIgnored { .. } => StatusCode::BAD_GATEWAY,
        CacheError::Io { .. } | CacheError::Index { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let message = if detailed { e.to_string() } else { e.public_message() };
    (status, format!("{message}\n")).into_response()
}

/// The client's address, as the server recorded it.
fn client(request: &axum::http::Extensions) -> Option<IpAddr> {
    request.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip())
}

/// The routes: `POST /models` (a manifest), `GET /models`, `PUT`/`DELETE /models/{model}/pins/{pod}`,
/// `GET`/`HEAD /blobs/sha256/{digest}` (Range), `GET /healthz`, `GET /metrics`.
pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/models", post(prefetch).get(list))
        .route("/models/{model}/pins/{pod}", axum::routing::put(pins).delete(pins))
        .route("/blobs/sha256/{digest}", get(blob))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .with_state(agent)
}

async fn prefetch(State(agent): State<Arc<Agent>>, request: Request) -> Response {
    let caller = match agent.caller(request.headers(), client(request.extensions()), &Action::Prefetch).await {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let writer = agent.config.policy.is_writer(&caller);
    let limit = agent.config.max_body_bytes;
    let read = tokio::time::timeout(agent.config.body_timeout, axum::body::to_bytes(request.into_body(), limit));
    let body = match read.await {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => {
            return Refusal(StatusCode::PAYLOAD_TOO_LARGE, format!("the manifest is over {limit} bytes"))
                .into_response();
        }
        Err(_) => {
            return Refusal(StatusCode::REQUEST_TIMEOUT, "the request body came too slowly".to_owned()).into_response();
        }
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return Refusal(StatusCode::BAD_REQUEST, "the manifest is not UTF-8".to_owned()).into_response();
    };
    let manifest = match Manifest::from_json(text, "request body") {
        Ok(m) => m,
        Err(e) => return error_response(&e.into(), true),
    };
    if let Err(r) = agent.admit(&manifest, &caller) {
        return r.into_response();
    }
    let scope = (!writer).then(|| agent.config.policy.granted_origins(&caller, &manifest.source));
    match agent.prefetch_as(&manifest, scope).await {
        Ok(r) => axum::Json(serde_json::json!({
            "model": manifest.model, "files": r.files, "fetched_bytes": r.fetched_bytes, "peer_bytes": r.peer_bytes,
            "resumed_bytes": r.resumed_bytes, "reused_bytes": r.reused_bytes, "evicted": r.evicted,
        }))
        .into_response(),
        Err(e) => {
            tracing::warn!(model = %manifest.model, user = %caller.user, error = %e, "Prefetch failed.");
            error_response(&e, writer)
        }
    }
}

async fn list(State(agent): State<Arc<Agent>>, extensions: axum::http::Extensions, headers: HeaderMap) -> Response {
    let caller = match agent.caller(&headers, client(&extensions), &Action::Inventory).await {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    // Pods see the models their namespace's grants cover; the scheduler, peers and writers see all.
    let policy = &agent.config.policy;
    let sees_all =
        policy.is_writer(&caller) || policy.peers.contains(&caller.user) || policy.readers.contains(&caller.user);
    axum::Json(agent.inventory_for((!sees_all).then_some(&caller))).into_response()
}

/// `PUT` pins, `DELETE` unpins.
async fn pins(
    State(agent): State<Arc<Agent>>,
    Path((model, pod)): Path<(String, String)>,
    method: Method,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
) -> Response {
    let caller = match agent.caller(&headers, client(&extensions), &Action::Pin(&pod)).await {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let not_here = || Refusal(StatusCode::NOT_FOUND, format!("model {model} is not cached here")).into_response();
    // A model the caller may not see is answered as one that is not here.
    let visible = agent
        .store()
        .models()
        .get(&model)
        .and_then(|m| m.source.clone())
        .is_some_and(|s| agent.config.policy.may_use(&caller, &s));
    let writer = agent.config.policy.is_writer(&caller);
    if !visible && !writer {
        return not_here();
    }
    if method != Method::PUT {
        return match agent.store().unpin(&model, &pod) {
            Ok(_) => StatusCode::NO_CONTENT.into_response(),
            Err(e) => error_response(&e, writer),
        };
    }
    let max = agent.config.max_pins_per_pod;
    let result = agent.store().pin(&model, &pod, max);
    match result {
        Ok(Pinned::Pinned) => StatusCode::NO_CONTENT.into_response(),
        Ok(Pinned::NotCached) => not_here(),
        Ok(Pinned::TooMany(n)) => Refusal(
            StatusCode::CONFLICT,
            format!("{pod} already pins {n} models, the most one pod may (unpin one first)"),
        )
        .into_response(),
        Err(e) => error_response(&e, writer),
    }
}

async fn metrics(State(agent): State<Arc<Agent>>, extensions: axum::http::Extensions, headers: HeaderMap) -> Response {
    if let Err(r) = agent.caller(&headers, client(&extensions), &Action::Metrics).await {
        return r.into_response();
    }
    let mut out = String::new();
    let _ = encode(&mut out, &agent.registry);
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], out).into_response()
}

/// Parses `bytes=a-b` or `bytes=a-` against a size.
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

fn state_headers(state: &'static str, key: Option<String>, sources: &[String]) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(BLOB_STATE_HEADER, HeaderValue::from_static(state));
    if let Some(k) = key.and_then(|k| HeaderValue::from_str(&k).ok()) {
        h.insert(FETCH_KEY_HEADER, k);
    }
    if let Ok(v) = HeaderValue::from_str(&sources.join(","))
        && !sources.is_empty()
    {
        h.insert(FETCH_SOURCE_HEADER, v);
    }
    h
}

async fn blob(
    State(agent): State<Arc<Agent>>,
    Path(digest): Path<String>,
    method: Method,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
) -> Response {
    let caller = match agent.caller(&headers, client(&extensions), &Action::ReadBlob).await {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let who = caller.pod.clone().unwrap_or(caller.user);
    if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Refusal(StatusCode::BAD_REQUEST, "expected a SHA-256 digest".to_owned()).into_response();
    }
    // The fetch under way is looked up before the store: a fetch publishes before it ends its
    // announcement, so a blob not announced a moment ago is published by now if it ever will be.
    for _ in 0..2 {
        let flight = agent.fetcher.in_flight(&digest);
        match agent.sound_blob(&digest, false).await {
            Sound::Blob(file, size) => {
                let sources: Vec<String> = agent.store().blob_sources(&digest).into_iter().collect();
                let complete = state_headers("complete", None, &sources);
                return serve_file(&agent, &who, file, size, &method, &headers, complete);
            }
            Sound::Corrupt => agent.heal(),
            Sound::Absent => {}
        }
        let Some(flight) = flight else { break };
        let size = flight.size;
        let fetching = state_headers("fetching", Some(flight.key.to_string()), std::slice::from_ref(&flight.source));
        if method == Method::HEAD {
            return head(fetching, size);
        }
        let (start, end) = match range(&headers, size) {
            Ok(Some(r)) => r,
            Ok(None) => {
                return Refusal(StatusCode::CONFLICT, "being fetched here: ask by Range".to_owned()).into_response();
            }
            Err(()) => return not_satisfiable(size),
        };
        match flight.wait_for(start, end, agent.config.follow_wait).await {
            Available::Partial(file) => return serve_range(&agent, &who, file, (start, end), size, fetching),
            Available::Ended => continue,
            Available::NotYet => {
                let mut response =
                    Refusal(StatusCode::SERVICE_UNAVAILABLE, "not received yet; ask again".to_owned()).into_response();
                response.headers_mut().extend(fetching);
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return response;
            }
        }
    }
    Refusal(StatusCode::NOT_FOUND, "not cached here".to_owned()).into_response()
}

/// A `HEAD` answer: the headers and the length a `GET` would have.
fn head(headers: HeaderMap, size: u64) -> Response {
    let mut response = (headers, Body::empty()).into_response();
    response.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    response
}

fn not_satisfiable(size: u64) -> Response {
    (StatusCode::RANGE_NOT_SATISFIABLE, [(header::CONTENT_RANGE, format!("bytes */{size}"))]).into_response()
}

fn serve_file(
    agent: &Arc<Agent>,
    who: &str,
    file: std::fs::File,
    size: u64,
    method: &Method,
    headers: &HeaderMap,
    extra: HeaderMap,
) -> Response {
    if method == Method::HEAD {
        return head(extra, size);
    }
    match range(headers, size) {
        Ok(Some(range)) => serve_range(agent, who, file, range, size, extra),
        Ok(None) if size == 0 => (extra, Body::empty()).into_response(),
        Ok(None) => stream(agent, who, file, (0, size - 1), extra),
        Err(()) => not_satisfiable(size),
    }
}

fn serve_range(
    agent: &Arc<Agent>,
    who: &str,
    file: std::fs::File,
    (start, end): (u64, u64),
    size: u64,
    extra: HeaderMap,
) -> Response {
    let mut response = stream(agent, who, file, (start, end), extra);
    if response.status() == StatusCode::OK {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{size}")) {
            response.headers_mut().insert(header::CONTENT_RANGE, v);
        }
    }
    response
}

/// Streams bytes `start..=end` of a file: pieces read off the async threads into a one-piece channel,
/// so a stream holds at most two pieces in memory; a reader that takes nothing for `send_timeout` is
/// dropped. At most `max_streams` run at once, `max_streams_per_caller` for one caller; more get 503.
fn stream(agent: &Arc<Agent>, who: &str, file: std::fs::File, (start, end): (u64, u64), extra: HeaderMap) -> Response {
    let Some(permit) = agent.streams.try_take(&who.to_owned()) else {
        let mut response =
            Refusal(StatusCode::SERVICE_UNAVAILABLE, "too many blob streams; ask again".to_owned()).into_response();
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    let piece = agent.config.piece_bytes.max(4096) as u64;
    let send_timeout = agent.config.send_timeout;
    let served = agent.metrics.served.clone();
    let file = Arc::new(file);
    tokio::spawn(async move {
        let _permit = permit;
        let mut at = start;
        while at <= end {
            let len = piece.min(end + 1 - at);
            let f = Arc::clone(&file);
            let read = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; len as usize];
                f.read_exact_at(&mut buf, at).map(|()| Bytes::from(buf))
            })
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
            let failed = read.is_err();
            match tokio::time::timeout(send_timeout, tx.send(read)).await {
                Ok(Ok(())) if !failed => {}
                _ => return,
            }
            served.inc_by(len);
            at += len;
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut response = (extra, body).into_response();
    response.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(end + 1 - start));
    response
}

/// Limits of the agent's HTTP server.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// Connections served at once; more wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Connections one client address may hold; more are closed at once.
    pub max_per_client: usize,
    /// How long a client may take to send a request's headers, and how long an idle keep-alive
    /// connection is kept.
    pub header_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits { max_connections: 512, max_per_client: 32, header_timeout: Duration::from_secs(10) }
    }
}

/// Serves `app` on `listener` over HTTP/1.1 with the limits, until `shutdown` completes (gpuplane's shared
/// server; an agent's connection lives as long as its client reads, a multi-GB blob included).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: ServerLimits,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let limits = gpuplane_serve::Limits {
        max_connections: limits.max_connections,
        header_timeout: limits.header_timeout,
        max_lifetime: None,
        max_per_client: Some(limits.max_per_client),
    };
    gpuplane_serve::serve(listener, None, app, limits, shutdown).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Whatever a client puts in Range, the parser never panics and only answers ranges inside the blob.
        #[test]
        fn ranges_stay_inside_the_blob(spec in "(bytes=)?[0-9]{0,21}-?[0-9]{0,21}", size in 0u64..1 << 40) {
            let mut headers = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&spec) {
                headers.insert(header::RANGE, v);
            }
            if let Ok(Some((start, end))) = range(&headers, size) {
                proptest::prop_assert!(start <= end && end < size);
            }
        }
    }
}
