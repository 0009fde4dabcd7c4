//! Fetching a model into the store: each file is read as fixed-size byte ranges, many at once (HTTP
//! Range requests, or positioned reads of a local file), written in place into a partial file, and
//! hashed in order as its prefix fills, read back from the page cache. Progress is recorded per
//! range after the data is flushed, so a fetch killed half-way resumes where it stopped. A file is
//! published only when its SHA-256 matches the manifest (and, for `.safetensors`, its header is sound).
//! An origin that ignores Range is read as one stream.
//!
//! Across a cluster a file is read from its origin once: before reading, a fetch announces itself
//! (peers see it in `HEAD /blobs/sha256/<d>`) and asks its peers; a peer that holds the file, or that
//! announced a fetch of the same file from the same URL earlier, is read instead, range by range as its
//! pieces arrive. Whatever a peer gives is verified here; when it fails, the origin is read afresh.
//!
//! Every request has a deadline (a grace plus its length at a minimum rate), a model's fetch has one
//! too, and with [`Fetcher::with_origins`] every redirect hop must stay under an allowed origin.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest::{Context, SHA256};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::sync::{Semaphore, watch};

use crate::error::CacheError;
use crate::manifest::{FileEntry, Manifest, Source};
use crate::safetensors;
use crate::store::{Sound, Store, open_lock_file, open_nofollow, sound_blob};

/// The response header that tells a peer whether a blob is `complete` here or being `fetching`.
pub const BLOB_STATE_HEADER: &str = "x-gpuplane-blob";
/// The response header with an in-flight fetch's announcement key (`<start ms>-<node>`).
pub const FETCH_KEY_HEADER: &str = "x-gpuplane-fetch-key";
/// Most ranges one file is split into (the range size grows for larger files).
const MAX_RANGES: u64 = 1 << 20;
/// The response header with a fetch's source: SHA-256 of the URL it reads (followers need the same).
pub const FETCH_SOURCE_HEADER: &str = "x-gpuplane-fetch-source";
/// How many times a follower asks again for a range its peer has not received yet (each ask waits up to
/// the peer's follow wait, 20 s by default); then it reads the origin itself.
const FOLLOW_RETRIES: u32 = 3;
/// Most redirects followed per request.
const MAX_REDIRECTS: usize = 5;

/// How files are read.
#[derive(Debug, Clone, Copy)]
pub struct FetchConfig {
    /// Bytes per range request.
    pub chunk_bytes: u64,
    /// Ranges in flight per file.
    pub concurrency: usize,
    /// Retries of a failed range (with exponential backoff from 200 ms).
    pub retries: u32,
    /// The slowest a request may go: its deadline is `grace` plus its length at this rate.
    pub min_bytes_per_sec: u64,
    /// The fixed part of every request's deadline (connect, first byte); a model's whole fetch gets ten of
    /// these plus its bytes at `min_bytes_per_sec`.
    pub grace: Duration,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            chunk_bytes: 16 << 20,
            concurrency: 16,
            retries: 4,
            min_bytes_per_sec: 1 << 20,
            grace: Duration::from_secs(30),
        }
    }
}

impl FetchConfig {
    /// How long a request for `bytes` may take.
    pub fn request_deadline(&self, bytes: u64) -> Duration {
        self.grace + Duration::from_secs_f64(bytes as f64 / self.min_bytes_per_sec.max(1) as f64)
    }

    /// How long a model's fetch of `bytes` may take.
    pub fn fetch_deadline(&self, bytes: u64) -> Duration {
        self.grace * 10 + Duration::from_secs_f64(bytes as f64 / self.min_bytes_per_sec.max(1) as f64)
    }
}

/// What a fetch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchReport {
    /// Files of the model.
    pub files: usize,
    /// Bytes read from the source in this fetch.
    pub fetched_bytes: u64,
    /// Bytes a killed earlier fetch had already written (read back from disk for the hash).
    pub resumed_bytes: u64,
    /// Bytes already in the store (this model or another with the same files).
    pub reused_bytes: u64,
    /// Of the fetched bytes, those read from peer agents rather than the origin.
    pub peer_bytes: u64,
    /// Models evicted to make room.
    pub evicted: Vec<String>,
}

/// A bearer token the fetcher presents to peer agents: fixed, or read from a file (a projected
/// ServiceAccount token, which the kubelet rotates) at most once a minute.
#[derive(Debug, Clone)]
pub enum PeerToken {
    /// A fixed token.
    Fixed(String),
    /// A file holding the token.
    File(PathBuf),
}

#[derive(Debug, Default)]
struct TokenCache {
    value: Option<String>,
    read: Option<std::time::Instant>,
}

/// A file being fetched here, announced to peers: which of its ranges are on disk so far.
#[derive(Debug)]
pub struct InFlight {
    /// Size of the file.
    pub size: u64,
    /// The announcement key: earlier fetches lead, later ones follow them.
    pub key: FetchKey,
    /// SHA-256 of the URL being read: only a fetch of the same URL follows this one.
    pub source: String,
    part: PathBuf,
    chunk: u64,
    done: Mutex<Vec<bool>>,
    progress: watch::Sender<u64>,
    ended: AtomicBool,
}

/// Orders announcements of one file across agents: start time in ms, then the agent's node name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FetchKey {
    /// Milliseconds since the epoch when the fetch was announced.
    pub started_ms: u64,
    /// The announcing agent.
    pub node: String,
}

impl std::fmt::Display for FetchKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.started_ms, self.node)
    }
}

impl std::str::FromStr for FetchKey {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let (ms, node) = s.split_once('-').ok_or(())?;
        Ok(FetchKey { started_ms: ms.parse().map_err(|_| ())?, node: node.to_owned() })
    }
}

/// What [`InFlight::wait_for`] found.
#[derive(Debug)]
pub enum Available {
    /// The range is on disk in the partial file, opened here.
    Partial(File),
    /// The fetch ended (published or failed): look for the blob.
    Ended,
    /// Still not there when the wait ran out.
    NotYet,
}

impl InFlight {
    fn mark(&self, i: u64) {
        if let Some(d) = self.done.lock().unwrap_or_else(|p| p.into_inner()).get_mut(i as usize) {
            *d = true;
        }
        self.progress.send_modify(|v| *v += 1);
    }

    /// Forgets every range: a new attempt starts (or resumes from what it finds on disk).
    fn reset(&self) {
        self.done.lock().unwrap_or_else(|p| p.into_inner()).iter_mut().for_each(|d| *d = false);
    }

    fn end(&self) {
        self.ended.store(true, Ordering::Release);
        self.progress.send_modify(|v| *v += 1);
    }

    fn is_done(&self, i: u64) -> bool {
        self.done.lock().unwrap_or_else(|p| p.into_inner()).get(i as usize).copied().unwrap_or(false)
    }

    fn covers(&self, start: u64, end: u64) -> bool {
        let done = self.done.lock().unwrap_or_else(|p| p.into_inner());
        (start / self.chunk..=end / self.chunk).all(|i| done.get(i as usize).copied().unwrap_or(false))
    }

    /// Waits up to `wait` until bytes `start..=end` are on disk.
    pub async fn wait_for(&self, start: u64, end: u64, wait: Duration) -> Available {
        let mut changes = self.progress.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if self.ended.load(Ordering::Acquire) {
                return Available::Ended;
            }
            if self.covers(start, end) {
                return match open_nofollow(&self.part) {
                    Ok(f) => Available::Partial(f),
                    Err(_) => Available::Ended,
                };
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Available::Ended,
                Err(_) => return Available::NotYet,
            }
        }
    }
}

/// Ends an announcement however the fetch ends.
struct Announced {
    registry: Arc<Mutex<HashMap<String, Arc<InFlight>>>>,
    digest: String,
    flight: Arc<InFlight>,
}

impl Drop for Announced {
    fn drop(&mut self) {
        self.flight.end();
        let mut registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if registry.get(&self.digest).is_some_and(|f| Arc::ptr_eq(f, &self.flight)) {
            registry.remove(&self.digest);
        }
    }
}

/// Reads files from origins into a store.
#[derive(Debug, Clone)]
pub struct Fetcher {
    http: reqwest::Client,
    config: FetchConfig,
    origin_reads: Arc<Semaphore>,
    blob_locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    peers: Arc<std::sync::RwLock<Vec<String>>>,
    in_flight: Arc<Mutex<HashMap<String, Arc<InFlight>>>>,
    node: String,
    peer_token: Option<PeerToken>,
    token_cache: Arc<Mutex<TokenCache>>,
    active: Arc<Mutex<HashMap<String, usize>>>,
    origins: Option<Arc<Vec<String>>>,
}

/// Ends a fetch's record in the store however the fetch ends.
struct Recorded<'a> {
    store: &'a Mutex<Store>,
    model: &'a str,
    active: &'a Mutex<HashMap<String, usize>>,
    succeeded: bool,
}

impl Drop for Recorded<'_> {
    fn drop(&mut self) {
        let mut store = self.store.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = store.finish_fetch(self.model, self.succeeded) {
            tracing::warn!(model = %self.model, error = %e, "Could not record the end of a fetch.");
        }
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = active.get_mut(self.model) {
            *n -= 1;
            if *n == 0 {
                active.remove(self.model);
            }
        }
    }
}

/// One file to read: from an origin URL, an object store, a local path, or a peer agent.
#[derive(Debug, Clone)]
enum From {
    Http {
        url: String,
        token: Option<String>,
    },
    Local {
        path: PathBuf,
    },
    /// Another node's cache agent serving the blob (`GET /blobs/sha256/<digest>` with Range); `following`
    /// when the peer is still fetching it.
    Peer {
        url: String,
        token: Option<String>,
        following: bool,
    },
    /// An object in an S3-compatible store.
    S3 {
        store: Arc<dyn object_store::ObjectStore>,
        path: object_store::path::Path,
        display: String,
    },
}

impl From {
    /// SHA-256 of what is read (a URL or a path): fetches of one file from one place share it.
    fn source_id(&self) -> String {
        location_id(&self.to_string())
    }
}

fn location_id(location: &str) -> String {
    let mut hash = crate::Sha256::default();
    hash.update(location.as_bytes());
    hash.hex()
}

/// Where a manifest's file is read: its URL (`s3://bucket/key` for S3) or local path.
pub fn file_location(source: &Source, path: &str) -> Result<String, CacheError> {
    Ok(match source {
        Source::Http { base_url, .. } => file_url(base_url, path)?,
        Source::Local { dir } => Path::new(dir).join(path).display().to_string(),
        Source::S3 { bucket, .. } => format!("s3://{bucket}/{}", s3_key(source, path)),
    })
}

/// The SHA-256 of [`file_location`]: what announcements and blobs name as a file's source.
pub fn source_id(source: &Source, path: &str) -> Option<String> {
    file_location(source, path).ok().map(|l| location_id(&l))
}

fn s3_key(source: &Source, path: &str) -> String {
    match source {
        Source::S3 { prefix, .. } if !prefix.is_empty() => format!("{}/{path}", prefix.trim_end_matches('/')),
        _ => path.to_owned(),
    }
}

impl std::fmt::Display for From {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            From::Http { url, .. } | From::Peer { url, .. } | From::S3 { display: url, .. } => f.write_str(url),
            From::Local { path } => write!(f, "{}", path.display()),
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io { path: path.to_owned(), source }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    path: &Path,
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, CacheError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(r) => r.map_err(io(path)),
        Err(e) => Err(CacheError::Io { path: path.to_owned(), source: std::io::Error::other(e.to_string()) }),
    }
}

/// The fetcher's HTTP client: connect and read timeouts, and redirects checked against `origins`.
fn http_client(config: &FetchConfig, origins: Option<Arc<Vec<String>>>) -> Result<reqwest::Client, CacheError> {
    let redirects = reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= MAX_REDIRECTS {
            attempt.error("too many redirects")
        } else if origins.as_ref().is_none_or(|o| crate::origin::allowed(o, attempt.url().as_str())) {
            attempt.follow()
        } else {
            attempt.error("redirected outside the allowed origins")
        }
    });
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(60))
        .redirect(redirects)
        .pool_max_idle_per_host(config.concurrency.max(1) * 2)
        .build()
        .map_err(|e| CacheError::Origin { url: String::new(), message: format!("HTTP client: {e}") })
}

/// The URL of `path` under `base`, each path segment percent-encoded.
pub fn file_url(base: &str, path: &str) -> Result<String, CacheError> {
    let bad = |message: String| CacheError::Origin { url: base.to_owned(), message };
    let mut url = reqwest::Url::parse(base).map_err(|e| bad(format!("not a URL: {e}")))?;
    {
        let mut segments = url.path_segments_mut().map_err(|()| bad("not a base URL".to_owned()))?;
        segments.pop_if_empty();
        segments.extend(path.split('/'));
    }
    Ok(url.to_string())
}

impl Fetcher {
    /// A fetcher; at most `origin_limit` range reads hit origins at once across all fetches.
    pub fn new(config: FetchConfig, origin_limit: usize) -> Result<Self, CacheError> {
        Ok(Fetcher {
            http: http_client(&config, None)?,
            config: FetchConfig {
                concurrency: config.concurrency.max(1),
                chunk_bytes: config.chunk_bytes.max(4096),
                ..config
            },
            origin_reads: Arc::new(Semaphore::new(origin_limit.max(1))),
            blob_locks: Arc::default(),
            peers: Arc::default(),
            in_flight: Arc::default(),
            node: "local".to_owned(),
            peer_token: None,
            token_cache: Arc::default(),
            active: Arc::default(),
            origins: None,
        })
    }

    /// Follows a redirect only when its target is under one of `origins` (and at most five); without
    /// this, redirects are followed up to five wherever they lead (`gpuplane cache fetch` on the node).
    pub fn with_origins(mut self, origins: Vec<String>) -> Result<Self, CacheError> {
        let origins = Arc::new(origins);
        self.http = http_client(&self.config, Some(Arc::clone(&origins)))?;
        self.origins = Some(origins);
        Ok(self)
    }

    /// Asks these peer agents (base URLs such as `http://10.0.0.7:8470`) for a file before its origin.
    pub fn with_peers(self, peers: Vec<String>) -> Self {
        self.set_peers(peers);
        self
    }

    /// Names this agent in its announcements (the node name; unique in the cluster).
    pub fn with_node(mut self, node: impl Into<String>) -> Self {
        self.node = node.into();
        self
    }

    /// Presents this bearer token to peer agents.
    pub fn with_peer_token(mut self, token: PeerToken) -> Self {
        self.peer_token = Some(token);
        self
    }

    /// Replaces the peer list (discovery refreshes it); clones of this fetcher see the change.
    pub fn set_peers(&self, peers: Vec<String>) {
        let peers = peers.into_iter().map(|p| p.trim_end_matches('/').to_owned()).collect();
        *self.peers.write().unwrap_or_else(|p| p.into_inner()) = peers;
    }

    /// The current peer list.
    pub fn peers(&self) -> Vec<String> {
        self.peers.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The fetch of a blob under way here, if any.
    pub fn in_flight(&self, sha256: &str) -> Option<Arc<InFlight>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner()).get(sha256).cloned()
    }

    /// Models with a fetch under way in this process.
    pub fn active_models(&self) -> HashSet<String> {
        self.active.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect()
    }

    fn token(&self) -> Option<String> {
        match self.peer_token.as_ref()? {
            PeerToken::Fixed(t) => Some(t.clone()),
            PeerToken::File(path) => {
                let mut cache = self.token_cache.lock().unwrap_or_else(|p| p.into_inner());
                if cache.read.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    match std::fs::read_to_string(path) {
                        Ok(t) => cache.value = Some(t.trim().to_owned()),
                        Err(e) => tracing::warn!(token = %path.display(), error = %e, "Peer token not readable."),
                    }
                    cache.read = Some(std::time::Instant::now());
                }
                cache.value.clone()
            }
        }
    }

    /// Asks every peer about a blob (`HEAD`): the first that holds it in full, else the earliest
    /// announced fetch of it that is earlier than `own`.
    async fn find_peer(&self, sha256: &str, size: u64, own: &FetchKey, source: &str, strict: bool) -> Option<From> {
        let token = self.token();
        let mut earliest: Option<(FetchKey, String)> = None;
        for peer in self.peers() {
            let url = format!("{peer}/blobs/sha256/{sha256}");
            let mut probe = self.http.head(&url).timeout(Duration::from_secs(2));
            if let Some(t) = &token {
                probe = probe.bearer_auth(t);
            }
            let Ok(response) = probe.send().await else { continue };
            let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
            let length = header(reqwest::header::CONTENT_LENGTH.as_str()).and_then(|v| v.parse::<u64>().ok());
            if response.status() != reqwest::StatusCode::OK || length != Some(size) {
                continue;
            }
            match header(BLOB_STATE_HEADER).as_deref() {
                Some("fetching") => {
                    // Only a fetch of the same URL is followed: a fetch of other bytes under this digest
                    // (a pod's manifest may claim any) would feed us what fails our check.
                    if header(FETCH_SOURCE_HEADER).as_deref() != Some(source) {
                        continue;
                    }
                    let Some(key) = header(FETCH_KEY_HEADER).and_then(|k| k.parse::<FetchKey>().ok()) else { continue };
                    if key < *own && earliest.as_ref().is_none_or(|(k, _)| key < *k) {
                        earliest = Some((key, url));
                    }
                }
                // A whole blob is checked by its digest; a strict fetch takes it only when the peer read
                // it from the same URL (the header lists the sources of the peer's models holding it).
                _ if strict && !header(FETCH_SOURCE_HEADER).is_some_and(|l| l.split(',').any(|s| s == source)) => {}
                _ => return Some(From::Peer { url, token, following: false }),
            }
        }
        earliest.map(|(_, url)| From::Peer { url, token, following: true })
    }

    /// Fetches every file of `manifest` not yet stored, publishes them, and links the model; gives up after
    /// [`FetchConfig::fetch_deadline`] for the model's bytes.
    pub async fn fetch_model(&self, store: &Mutex<Store>, manifest: &Manifest) -> Result<FetchReport, CacheError> {
        self.fetch_model_as(store, manifest, false).await
    }

    /// [`Self::fetch_model`]; with `strict` (a request from a pod, whose manifest may name any digest),
    /// a file is taken from the store or a peer only when it was read there from the same URL the
    /// manifest names — knowing a digest gives no bytes: otherwise the file is read from the manifest's
    /// source and verified, which proves the source has those bytes.
    pub async fn fetch_model_as(
        &self,
        store: &Mutex<Store>,
        manifest: &Manifest,
        strict: bool,
    ) -> Result<FetchReport, CacheError> {
        manifest.check(&manifest.model)?;
        let deadline = self.config.fetch_deadline(manifest.bytes());
        match tokio::time::timeout(deadline, self.fetch_model_now(store, manifest, strict)).await {
            Ok(r) => r,
            Err(_) => Err(CacheError::Origin {
                url: manifest.model.clone(),
                message: format!("the fetch did not finish within its deadline of {} s", deadline.as_secs()),
            }),
        }
    }

    async fn fetch_model_now(
        &self,
        store: &Mutex<Store>,
        manifest: &Manifest,
        strict: bool,
    ) -> Result<FetchReport, CacheError> {
        let s3 = match &manifest.source {
            Source::S3 { bucket, endpoint, region, .. } => {
                Some(s3_store(bucket, endpoint.as_deref(), region.as_deref())?)
            }
            _ => None,
        };
        let mut report = FetchReport { files: manifest.files.len(), ..Default::default() };
        report.evicted = store.lock().unwrap_or_else(|p| p.into_inner()).make_room(manifest)?;
        *self.active.lock().unwrap_or_else(|p| p.into_inner()).entry(manifest.model.clone()).or_default() += 1;
        let mut recorded = Recorded { store, model: &manifest.model, active: &self.active, succeeded: false };
        let mut done = HashSet::new();
        for file in &manifest.files {
            if !done.insert(file.sha256.as_str()) {
                continue;
            }
            let from = match &manifest.source {
                Source::Http { base_url, token_env } => From::Http {
                    url: file_url(base_url, &file.path)?,
                    token: token_env.as_ref().and_then(|v| std::env::var(v).ok()).filter(|t| !t.is_empty()),
                },
                Source::Local { dir } => From::Local { path: Path::new(dir).join(&file.path) },
                Source::S3 { bucket, .. } => {
                    let key = s3_key(&manifest.source, &file.path);
                    let store = s3.clone().ok_or_else(no_s3_client)?;
                    From::S3 {
                        store,
                        display: format!("s3://{bucket}/{key}"),
                        path: object_store::path::Path::from(key),
                    }
                }
            };
            self.fetch_blob(store, &manifest.model, file, &from, strict, &mut report).await?;
        }
        store.lock().unwrap_or_else(|p| p.into_inner()).link_model(manifest)?;
        recorded.succeeded = true;
        Ok(report)
    }

    /// Makes one blob present and verified: reused when stored and sound, else read from a peer that
    /// has it (or is fetching it earlier than this agent), else from `from`.
    async fn fetch_blob(
        &self,
        store: &Mutex<Store>,
        model: &str,
        file: &FileEntry,
        from: &From,
        strict: bool,
        report: &mut FetchReport,
    ) -> Result<(), CacheError> {
        // One fetch per blob at a time, whichever model asks: a second waits and finds it stored. The
        // lock file extends that to other processes sharing the root.
        let blob_lock = {
            let mut locks = self.blob_locks.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(locks.entry(file.sha256.clone()).or_default())
        };
        let _held = blob_lock.lock().await;
        let partial = store.lock().unwrap_or_else(|p| p.into_inner()).partial_path(&file.sha256);
        let lock_path = partial.with_extension("lock");
        let _file_lock = blocking(&lock_path.clone(), move || BlobFileLock::take(lock_path)).await?;
        let source = from.source_id();
        let reusable =
            !strict || store.lock().unwrap_or_else(|p| p.into_inner()).blob_sources(&file.sha256).contains(&source);
        if reusable && matches!(sound_blob(store, &file.sha256, Some(file.size), false).await?, Sound::Blob(..)) {
            report.reused_bytes += file.size;
            return Ok(());
        }

        let key = FetchKey { started_ms: now_ms(), node: self.node.clone() };
        let chunk = self.config.chunk_bytes.max(file.size.div_ceil(MAX_RANGES));
        let n = file.size.div_ceil(chunk);
        let (tx, _) = watch::channel(0);
        let flight = Arc::new(InFlight {
            size: file.size,
            key: key.clone(),
            source: source.clone(),
            part: part_of(&partial),
            chunk,
            done: Mutex::new(vec![false; n as usize]),
            progress: tx,
            ended: AtomicBool::new(false),
        });
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner()).insert(file.sha256.clone(), Arc::clone(&flight));
        let _announced = Announced {
            registry: Arc::clone(&self.in_flight),
            digest: file.sha256.clone(),
            flight: Arc::clone(&flight),
        };

        // A peer that holds the blob, or fetches it from the same URL ahead of us, is read instead of the
        // origin; the digest is checked all the same. A peer that fails part-way hands over to the origin,
        // which resumes from the ranges already on disk — and when what it resumed from then fails the
        // check, or the peer's bytes did, the origin is read again from nothing.
        let mut read = None;
        let mut peer_tried = false;
        if let Some(peer) = self.find_peer(&file.sha256, file.size, &key, &source, strict).await {
            peer_tried = true;
            match self.fetch_file(model, file, &peer, &partial, &flight).await {
                Ok((fetched, resumed)) => {
                    report.peer_bytes += fetched;
                    read = Some((fetched, resumed));
                }
                Err(e) => tracing::warn!(model, file = %file.path, peer = %peer, error = %e,
                    "Peer read failed; reading the origin."),
            }
        }
        let (fetched, resumed) = match read {
            Some(r) => r,
            None => {
                flight.reset();
                match self.fetch_file(model, file, from, &partial, &flight).await {
                    Err(CacheError::HashMismatch { .. } | CacheError::Safetensors { .. }) if peer_tried => {
                        // The mismatching file is discarded: this attempt starts from nothing.
                        flight.reset();
                        self.fetch_file(model, file, from, &partial, &flight).await?
                    }
                    other => other?,
                }
            }
        };
        report.fetched_bytes += fetched;
        report.resumed_bytes += resumed;
        store.lock().unwrap_or_else(|p| p.into_inner()).publish_blob(&part_of(&partial), &file.sha256)?;
        let _ = std::fs::remove_file(chunks_of(&partial));
        Ok(())
    }

    /// Reads one file into `<partial>.part`, verified; returns the bytes read from the source and
    /// those resumed from an earlier attempt.
    async fn fetch_file(
        &self,
        model: &str,
        file: &FileEntry,
        from: &From,
        partial: &Path,
        flight: &Arc<InFlight>,
    ) -> Result<(u64, u64), CacheError> {
        let part_path = part_of(partial);
        let chunks_path = chunks_of(partial);
        let chunk = flight.chunk;
        let n = file.size.div_ceil(chunk);
        let (part, progress, done_before) = open_partial(&part_path, &chunks_path, file.size, chunk, n).await?;
        let part = Arc::new(part);
        let result = match self.read_ranges(file, from, &part, progress, &done_before, flight).await {
            Err(CacheError::RangeIgnored { url }) if matches!(from, From::Http { .. }) => {
                tracing::info!(%url, "The origin ignores Range requests; reading the file as one stream.");
                self.read_stream(file, from, &part, &chunks_path, flight).await.map(|(f, h)| (f, 0, h))
            }
            other => other,
        };
        let (fetched, resumed, actual) = match result {
            Ok(r) => r,
            Err(e) => {
                if let CacheError::Io { source, .. } = &e
                    && source.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error())
                {
                    // Nothing to resume on a full disk: give the space back.
                    discard(&part_path, &chunks_path);
                }
                return Err(e);
            }
        };
        if actual != file.sha256 {
            discard(&part_path, &chunks_path);
            return Err(CacheError::HashMismatch {
                model: model.to_owned(),
                path: file.path.clone(),
                expected: file.sha256.clone(),
                actual,
            });
        }
        if file.path.ends_with(".safetensors") {
            let p = Arc::clone(&part);
            let size = file.size;
            let verdict = blocking(&part_path, move || {
                let mut first8 = [0u8; 8];
                if size < 8 {
                    return Ok(Err(format!("the file has {size} bytes, fewer than the 8-byte header length")));
                }
                p.read_exact_at(&mut first8, 0)?;
                let n = match safetensors::header_len(first8, size) {
                    Ok(n) => n,
                    Err(e) => return Ok(Err(e)),
                };
                let mut header = vec![0u8; n as usize];
                p.read_exact_at(&mut header, 8)?;
                Ok(safetensors::check_header(&header, size - 8 - n).map(|_| ()))
            })
            .await?;
            if let Err(message) = verdict {
                discard(&part_path, &chunks_path);
                return Err(CacheError::Safetensors { model: model.to_owned(), path: file.path.clone(), message });
            }
        }
        Ok((fetched, resumed))
    }

    /// Reads the file's missing ranges, many at once and in any order of completion, and hashes the
    /// whole file in order as its prefix fills; returns bytes fetched, bytes resumed and the digest.
    ///
    /// Each range is its own task that writes its bytes in place and drops them, so memory is at most
    /// `concurrency` ranges however unevenly they finish, and a slow range never holds the others
    /// back. A second task hashes the file from the start, reading back (from the page cache) each
    /// range once every range before it is on disk, and records ranges as done — after `fdatasync` —
    /// every 8 completions, so neither hashing nor flushing stops new ranges from starting.
    async fn read_ranges(
        &self,
        file: &FileEntry,
        from: &From,
        part: &Arc<File>,
        mut progress: File,
        done_before: &[bool],
        flight: &Arc<InFlight>,
    ) -> Result<(u64, u64, String), CacheError> {
        let part_path = flight.part.clone();
        let chunks_path = part_path.with_extension("chunks");
        let chunk = flight.chunk;
        let size = file.size;
        let n = size.div_ceil(chunk);
        let resumed: u64 = (0..n).filter(|&i| done_before[i as usize]).map(|i| range_len(size, chunk, i)).sum();
        for i in (0..n).filter(|&i| done_before[i as usize]) {
            flight.mark(i);
        }

        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
        let sink_part = Arc::clone(part);
        let sink_path = part_path.clone();
        let sink_flight = Arc::clone(flight);
        let sink = tokio::spawn(async move {
            let io_error = |e: String| CacheError::Io { path: sink_path.clone(), source: std::io::Error::other(e) };
            let mut hash = Some(Context::new(&SHA256));
            let mut buffer = Some(Vec::new());
            let mut next = 0u64;
            let mut unrecorded = Vec::new();
            let mut outcome = Ok(());
            loop {
                // Hash every range of the on-disk prefix not hashed yet.
                while next < n && sink_flight.is_done(next) {
                    let (Some(mut h), Some(mut buf)) = (hash.take(), buffer.take()) else { break };
                    let (p, at, len) = (Arc::clone(&sink_part), next * chunk, range_len(size, chunk, next));
                    let hashed = tokio::task::spawn_blocking(move || {
                        buf.resize(len as usize, 0);
                        p.read_exact_at(&mut buf, at).map(|()| {
                            h.update(&buf);
                            (h, buf)
                        })
                    })
                    .await;
                    match hashed {
                        Ok(Ok((h, buf))) => (hash, buffer) = (Some(h), Some(buf)),
                        Ok(Err(e)) => outcome = Err(io_error(e.to_string())),
                        Err(e) => outcome = Err(io_error(e.to_string())),
                    }
                    if outcome.is_err() {
                        break;
                    }
                    next += 1;
                }
                if outcome.is_err() {
                    break;
                }
                let Some(i) = done_rx.recv().await else { break };
                unrecorded.push(i);
                if unrecorded.len() >= 8
                    && let Err(e) = record(&sink_part, &mut progress, &chunks_path, &mut unrecorded).await
                {
                    outcome = Err(e);
                    break;
                }
            }
            // What arrived is kept however the reads end: the next attempt resumes after it.
            while let Ok(i) = done_rx.try_recv() {
                unrecorded.push(i);
            }
            let flushed = record(&sink_part, &mut progress, &chunks_path, &mut unrecorded).await;
            let digest = (next == n).then(|| hash.map(|h| hex(h.finish().as_ref()))).flatten();
            outcome.and(flushed).map(|()| digest)
        });

        let todo: Vec<u64> = (0..n).filter(|&i| !done_before[i as usize]).collect();
        let mut ranges = futures::stream::iter(todo)
            .map(|i| {
                let part = Arc::clone(part);
                let task_path = part_path.clone();
                let from = from.clone();
                let fetcher = self.clone();
                let flight = Arc::clone(flight);
                let mut task = AbortOnDrop(tokio::spawn(async move {
                    let (start, len) = (i * chunk, range_len(size, chunk, i));
                    let bytes = fetcher.read_range(&from, start, len, size).await?;
                    blocking(&task_path, move || part.write_all_at(&bytes, start)).await?;
                    flight.mark(i);
                    Ok::<_, CacheError>((i, len))
                }));
                let task_path = part_path.clone();
                async move {
                    (&mut task.0).await.map_err(|e| CacheError::Io {
                        path: task_path,
                        source: std::io::Error::other(format!("range task failed: {e}")),
                    })?
                }
            })
            .buffer_unordered(self.config.concurrency);
        let mut fetched = 0u64;
        let mut failed = None;
        while let Some(next) = ranges.next().await {
            match next {
                Ok((i, len)) => {
                    fetched += len;
                    if done_tx.send(i).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        // Ranges still running are cancelled with the stream: nothing writes into the file after this.
        drop(ranges);
        drop(done_tx);
        let sunk = sink
            .await
            .map_err(|e| CacheError::Io { path: part_path.clone(), source: std::io::Error::other(e.to_string()) })?;
        // A read's error is the one to report, whether or not the flush after it succeeded.
        if let Some(e) = failed {
            return Err(e);
        }
        match sunk? {
            Some(digest) => Ok((fetched, resumed, digest)),
            None => Err(CacheError::Io {
                path: part_path,
                source: std::io::Error::other("the file was not hashed to its end"),
            }),
        }
    }

    /// Reads the whole file as one response body (an origin that ignores Range), written and hashed
    /// as it arrives; returns the bytes fetched and the digest.
    async fn read_stream(
        &self,
        file: &FileEntry,
        from: &From,
        part: &Arc<File>,
        chunks_path: &Path,
        flight: &Arc<InFlight>,
    ) -> Result<(u64, String), CacheError> {
        let From::Http { url, token } = from else {
            return Err(CacheError::RangeIgnored { url: from.to_string() });
        };
        let origin = |message: String| CacheError::Origin { url: url.clone(), message };
        let _permit = self.origin_reads.acquire().await.map_err(|e| origin(e.to_string()))?;
        // Nothing of a range-less download can be resumed: forget earlier progress.
        let _ = std::fs::remove_file(chunks_path);
        let mut request = self.http.get(url).timeout(self.config.request_deadline(file.size));
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        let mut response = request.send().await.map_err(|e| origin(e.to_string()))?;
        if response.status() != reqwest::StatusCode::OK {
            return Err(origin(format!("HTTP {} for the whole file", response.status())));
        }
        let mut hash = Context::new(&SHA256);
        let mut offset = 0u64;
        let (n, mut marked) = (file.size.div_ceil(flight.chunk), 0u64);
        let mut buffer = BytesMut::with_capacity(8 << 20);
        loop {
            let piece = response.chunk().await.map_err(|e| {
                origin(format!("the body broke off after {} of {} bytes: {e}", offset + buffer.len() as u64, file.size))
            })?;
            let last = piece.is_none();
            if let Some(piece) = piece {
                if offset + (buffer.len() + piece.len()) as u64 > file.size {
                    return Err(origin(format!("more than the manifest's {} bytes", file.size)));
                }
                buffer.extend_from_slice(&piece);
            }
            if buffer.len() >= 8 << 20 || (last && !buffer.is_empty()) {
                let bytes = buffer.split().freeze();
                let (p, b, at) = (Arc::clone(part), bytes.clone(), offset);
                blocking(&flight.part, move || p.write_all_at(&b, at)).await?;
                hash.update(&bytes);
                offset += bytes.len() as u64;
                // Ranges wholly on disk now can be served to followers.
                while marked < n && ((marked + 1) * flight.chunk <= offset || offset == file.size) {
                    flight.mark(marked);
                    marked += 1;
                }
            }
            if last {
                break;
            }
        }
        if offset != file.size {
            return Err(origin(format!("the body ended after {offset} of {} bytes (truncated)", file.size)));
        }
        let p = Arc::clone(part);
        blocking(&flight.part, move || p.sync_data()).await?;
        Ok((offset, hex(hash.finish().as_ref())))
    }

    /// Reads `len` bytes at `start`, retrying transient failures.
    async fn read_range(&self, from: &From, start: u64, len: u64, total: u64) -> Result<Bytes, CacheError> {
        let _permit = match from {
            // A peer is not an origin: its reads do not take the origin's places.
            From::Peer { .. } => None,
            _ => Some(
                self.origin_reads
                    .acquire()
                    .await
                    .map_err(|e| CacheError::Origin { url: from.to_string(), message: e.to_string() })?,
            ),
        };
        let mut attempt = 0;
        let retries = match from {
            From::Peer { following: true, .. } => FOLLOW_RETRIES,
            _ => self.config.retries,
        };
        loop {
            let result = match from {
                From::Local { path } => {
                    let path = path.clone();
                    blocking(&path.clone(), move || {
                        let f = File::open(&path)?;
                        let mut buf = vec![0u8; len as usize];
                        f.read_exact_at(&mut buf, start).map(|()| Bytes::from(buf))
                    })
                    .await
                    .map_err(|e| (false, e))
                }
                From::Http { url, token } => self.http_range(url, token.as_deref(), start, len, total).await,
                From::Peer { url, token, .. } => self.http_range(url, token.as_deref(), start, len, total).await,
                From::S3 { store, path, display } => s3_range(store.as_ref(), path, display, start, len).await,
            };
            match result {
                Ok(bytes) => return Ok(bytes),
                Err((retryable, e)) if retryable && attempt < retries => {
                    attempt += 1;
                    let backoff = Duration::from_millis(200u64 << attempt.min(4));
                    tracing::debug!(error = %e, attempt, "Range read failed; retrying.");
                    tokio::time::sleep(backoff).await;
                }
                Err((_, e)) => return Err(e),
            }
        }
    }

    /// One ranged GET; the error says whether a retry may help.
    async fn http_range(
        &self,
        url: &str,
        token: Option<&str>,
        start: u64,
        len: u64,
        total: u64,
    ) -> Result<Bytes, (bool, CacheError)> {
        let origin = |message: String| CacheError::Origin { url: url.to_owned(), message };
        if len == 0 {
            return Ok(Bytes::new());
        }
        let mut request = self
            .http
            .get(url)
            .header(reqwest::header::RANGE, format!("bytes={start}-{}", start + len - 1))
            .timeout(self.config.request_deadline(len));
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        let mut response = request.send().await.map_err(|e| (true, origin(e.to_string())))?;
        let status = response.status();
        let whole = status == reqwest::StatusCode::OK && start == 0 && len == total;
        if status == reqwest::StatusCode::OK && !whole {
            // Dropping the response closes the connection before the whole body comes.
            return Err((false, CacheError::RangeIgnored { url: url.to_owned() }));
        }
        if status != reqwest::StatusCode::PARTIAL_CONTENT && !whole {
            let retry = status.is_server_error() || status == 408 || status == 429;
            return Err((retry, origin(format!("HTTP {status} for bytes {start}-{}", start + len - 1))));
        }
        if status == reqwest::StatusCode::PARTIAL_CONTENT {
            let range = response.headers().get(reqwest::header::CONTENT_RANGE).and_then(|v| v.to_str().ok());
            let expected = format!("bytes {start}-{}/", start + len - 1);
            if !range.is_some_and(|r| r.starts_with(&expected)) {
                return Err((false, origin(format!("Content-Range is {range:?}, expected {expected}{total}"))));
            }
        }
        let mut body = BytesMut::with_capacity(len as usize);
        loop {
            let piece = response.chunk().await.map_err(|e| {
                (
                    true,
                    origin(format!(
                        "bytes {start}-{}: the body broke off after {} of {len} bytes: {e}",
                        start + len - 1,
                        body.len()
                    )),
                )
            })?;
            let Some(piece) = piece else { break };
            body.extend_from_slice(&piece);
            if body.len() as u64 > len {
                return Err((false, origin(format!("more than the {len} bytes asked for"))));
            }
        }
        if body.len() as u64 != len {
            return Err((
                true,
                origin(format!(
                    "bytes {start}-{}: the body ended after {} of {len} bytes (truncated)",
                    start + len - 1,
                    body.len()
                )),
            ));
        }
        Ok(body.freeze())
    }
}

/// A spawned task that is aborted when its handle is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An exclusive `flock` on `partial/<digest>.lock`, so that processes sharing the root fetch a blob
/// one at a time; the file is removed before the lock is let go, and a taker that finds its file
/// removed under it takes the new one.
struct BlobFileLock {
    path: PathBuf,
    _file: File,
}

impl BlobFileLock {
    fn take(path: PathBuf) -> std::io::Result<BlobFileLock> {
        use std::os::unix::fs::MetadataExt;
        loop {
            let file = open_lock_file(&path)?;
            file.lock()?;
            let held = file.metadata()?.ino();
            if std::fs::symlink_metadata(&path).is_ok_and(|m| m.ino() == held) {
                return Ok(BlobFileLock { path, _file: file });
            }
        }
    }
}

impl Drop for BlobFileLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn discard(part: &Path, chunks: &Path) {
    let _ = std::fs::remove_file(part);
    let _ = std::fs::remove_file(chunks);
}

/// A client for an S3-compatible store, credentials from the environment.
fn s3_store(
    bucket: &str,
    endpoint: Option<&str>,
    region: Option<&str>,
) -> Result<Arc<dyn object_store::ObjectStore>, CacheError> {
    let mut builder = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_region(region.unwrap_or("us-east-1"));
    if let Some(e) = endpoint {
        builder = builder.with_endpoint(e).with_allow_http(e.starts_with("http://"));
    }
    builder
        .build()
        .map(|s| Arc::new(s) as Arc<dyn object_store::ObjectStore>)
        .map_err(|e| CacheError::Origin { url: format!("s3://{bucket}"), message: e.to_string() })
}

fn no_s3_client() -> CacheError {
    CacheError::Origin { url: "s3".to_owned(), message: "no S3 client for an S3 source".to_owned() }
}

/// One ranged read of an object; the error says whether a retry may help.
async fn s3_range(
    store: &dyn object_store::ObjectStore,
    path: &object_store::path::Path,
    display: &str,
    start: u64,
    len: u64,
) -> Result<Bytes, (bool, CacheError)> {
    use object_store::ObjectStoreExt;
    if len == 0 {
        return Ok(Bytes::new());
    }
    match store.get_range(path, start..start + len).await {
        Ok(bytes) if bytes.len() as u64 == len => Ok(bytes),
        Ok(bytes) => Err((
            true,
            CacheError::Origin { url: display.to_owned(), message: format!("{} of {len} bytes", bytes.len()) },
        )),
        Err(e) => {
            let retry =
                !matches!(e, object_store::Error::NotFound { .. } | object_store::Error::PermissionDenied { .. });
            Err((retry, CacheError::Origin { url: display.to_owned(), message: e.to_string() }))
        }
    }
}

fn part_of(partial: &Path) -> PathBuf {
    partial.with_extension("part")
}

fn chunks_of(partial: &Path) -> PathBuf {
    partial.with_extension("chunks")
}

fn range_len(size: u64, chunk: u64, i: u64) -> u64 {
    chunk.min(size - i * chunk)
}

/// Opens a partial file without following a symlink; anything but a regular file there is removed
/// and the file created anew, exclusively.
fn open_regular(path: &Path) -> std::io::Result<File> {
    let nofollow = rustix::fs::OFlags::NOFOLLOW.bits() as i32;
    match OpenOptions::new().read(true).write(true).custom_flags(nofollow).open(path) {
        Ok(f) if f.metadata()?.is_file() => return Ok(f),
        Ok(_) => std::fs::remove_dir_all(path)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            // ELOOP: a symlink planted where the partial belongs. Remove the link, never its target.
            tracing::warn!(partial = %path.display(), error = %e, "Unusable partial file replaced.");
            std::fs::remove_file(path)?;
        }
    }
    OpenOptions::new().read(true).write(true).create_new(true).custom_flags(nofollow).open(path)
}

/// Opens the partial file and its progress record; a record made with another range size, or for
/// another size, is started over.
async fn open_partial(
    part_path: &Path,
    chunks_path: &Path,
    size: u64,
    chunk: u64,
    n: u64,
) -> Result<(File, File, Vec<bool>), CacheError> {
    let (part_path, chunks_path) = (part_path.to_owned(), chunks_path.to_owned());
    let path = part_path.clone();
    blocking(&path, move || {
        let part = open_regular(&part_path)?;
        let progress = open_regular(&chunks_path)?;
        let mut done = vec![false; n as usize];
        let mut head = [0u8; 8];
        let usable = part.metadata()?.len() == size
            && progress.metadata()?.len() == 8 + n
            && progress.read_exact_at(&mut head, 0).is_ok()
            && u64::from_le_bytes(head) == chunk;
        if usable {
            let mut marks = vec![0u8; n as usize];
            progress.read_exact_at(&mut marks, 8)?;
            for (d, m) in done.iter_mut().zip(marks) {
                *d = m == 1;
            }
        } else {
            part.set_len(0)?;
            part.set_len(size)?;
            progress.set_len(0)?;
            progress.write_all_at(&chunk.to_le_bytes(), 0)?;
            progress.set_len(8 + n)?;
            progress.sync_all()?;
        }
        Ok((part, progress, done))
    })
    .await
}

/// Flushes the written ranges to disk, then marks them done: a range is marked only once its bytes
/// are durable.
async fn record(
    part: &Arc<File>,
    progress: &mut File,
    chunks_path: &Path,
    done: &mut Vec<u64>,
) -> Result<(), CacheError> {
    if done.is_empty() {
        return Ok(());
    }
    let marks = std::mem::take(done);
    let part = Arc::clone(part);
    let progress_file = progress.try_clone().map_err(io(chunks_path))?;
    blocking(chunks_path, move || {
        part.sync_data()?;
        for i in marks {
            progress_file.write_all_at(&[1], 8 + i)?;
        }
        Ok(())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_urls_encode_each_segment() {
        let url = file_url("https://h.example/org/model/resolve/main/", "sub dir/a#b?.bin").unwrap();
        assert_eq!(url, "https://h.example/org/model/resolve/main/sub%20dir/a%23b%3F.bin");
        assert_eq!(file_url("http://h/x", "w.bin").unwrap(), "http://h/x/w.bin");
        assert!(file_url("not a url", "w").is_err());
    }

    #[test]
    fn fetch_keys_order_by_time_then_node() {
        let a: FetchKey = "100-node-a".parse().unwrap();
        let b: FetchKey = "100-node-b".parse().unwrap();
        let c: FetchKey = "99-node-z".parse().unwrap();
        assert!(c < a && a < b);
        assert_eq!(a.to_string(), "100-node-a");
        assert!("x-1".parse::<FetchKey>().is_err());
    }
}
