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

mod peer;
mod ranges;

use peer::Announced;
pub use peer::{Available, FetchKey, InFlight};
use ranges::{BlobFileLock, chunks_of, discard, no_s3_client, open_partial, part_of, s3_store};

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{Semaphore, watch};

use crate::error::CacheError;
use crate::manifest::{FileEntry, Manifest, Source};
use crate::safetensors;
use crate::store::{Sound, Store, sound_blob};

/// The response header that tells a peer whether a blob is `complete` here or being `fetching`.
pub const BLOB_STATE_HEADER: &str = "x-gpuplane-blob";
/// The response header with an in-flight fetch's announcement key (`<start µs>-<node>`).
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

/// Where a manifest's file is read: its URL (`s3://bucket/key` for S3) or local path.
pub fn file_location(source: &Source, path: &str) -> Result<String, CacheError> {
    Ok(match source {
        Source::Http { base_url, .. } => file_url(base_url, path)?,
        Source::Local { dir } => Path::new(dir).join(path).display().to_string(),
        Source::S3 { bucket, .. } => format!("s3://{bucket}/{}", s3_key(source, path)),
    })
}

/// What announcements, partial downloads and blobs name as a file's source: the SHA-256 of its
/// [`file_location`] and the credential it is read with (the `token_env` of an HTTP source, the endpoint of
/// an S3 one). Bytes read with one credential are never handed to a request made without it.
pub fn source_id(source: &Source, path: &str) -> Option<String> {
    let location = file_location(source, path).ok()?;
    let credential = match source {
        Source::Http { token_env, .. } => token_env.as_deref().unwrap_or(""),
        Source::S3 { endpoint, .. } => endpoint.as_deref().unwrap_or(""),
        Source::Local { .. } => "",
    };
    let mut hash = crate::Sha256::default();
    hash.update(location.as_bytes());
    hash.update(b"\n");
    hash.update(credential.as_bytes());
    Some(hash.hex())
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

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
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
        let mut done = HashSet::new();
        let mut reads = Vec::new();
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
            let source = source_id(&manifest.source, &file.path).unwrap_or_default();
            reads.push((file, from, source));
        }
        // The source is asked for each missing file's size before anything is evicted for it: a manifest
        // naming files the source does not have (or not at that size) empties nothing.
        let missing: Vec<(&FileEntry, &From)> = {
            let mut s = store.lock().unwrap_or_else(|p| p.into_inner());
            reads.iter().filter(|(f, _, _)| !s.has_blob(&f.sha256, f.size)).map(|(f, from, _)| (*f, from)).collect()
        };
        self.check_sizes(&missing).await?;
        report.evicted = store.lock().unwrap_or_else(|p| p.into_inner()).make_room(manifest)?;
        *self.active.lock().unwrap_or_else(|p| p.into_inner()).entry(manifest.model.clone()).or_default() += 1;
        let mut recorded = Recorded { store, model: &manifest.model, active: &self.active, succeeded: false };
        for (file, from, source) in &reads {
            self.fetch_blob(store, &manifest.model, file, (from, source), strict, &mut report).await?;
        }
        store.lock().unwrap_or_else(|p| p.into_inner()).link_model(manifest)?;
        recorded.succeeded = true;
        Ok(report)
    }

    /// Makes one blob present and verified: reused when stored and sound, else read from a peer that
    /// has it (or is fetching it from the same source earlier than this agent), else from `from`, whose
    /// [`source_id`] is `source`.
    async fn fetch_blob(
        &self,
        store: &Mutex<Store>,
        model: &str,
        file: &FileEntry,
        (from, source): (&From, &str),
        strict: bool,
        report: &mut FetchReport,
    ) -> Result<(), CacheError> {
        // One fetch per blob and source at a time, whichever model asks: a second waits and finds it
        // stored. The lock file extends that to other processes sharing the root. Fetches of one digest
        // from different sources neither wait for each other nor share a partial file: a slow or lying
        // source cannot stall or poison another's fetch.
        let partial = store.lock().unwrap_or_else(|p| p.into_inner()).partial_path(&file.sha256, source);
        let blob_lock = {
            let mut locks = self.blob_locks.lock().unwrap_or_else(|p| p.into_inner());
            let key = partial.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            Arc::clone(locks.entry(key).or_default())
        };
        let _held = blob_lock.lock().await;
        let lock_path = partial.with_extension("lock");
        let _file_lock = blocking(&lock_path.clone(), move || BlobFileLock::take(lock_path)).await?;
        let source = source.to_owned();
        let reusable =
            !strict || store.lock().unwrap_or_else(|p| p.into_inner()).blob_sources(&file.sha256).contains(&source);
        if reusable && matches!(sound_blob(store, &file.sha256, Some(file.size), false).await?, Sound::Blob(..)) {
            report.reused_bytes += file.size;
            return Ok(());
        }

        let key = FetchKey { started_us: now_us(), node: self.node.clone() };
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
}
