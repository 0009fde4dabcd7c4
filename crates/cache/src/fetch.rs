//! Fetching a model into the store: each file is read as fixed-size byte ranges, many at once (HTTP
//! Range requests, or positioned reads of a local file), written in place into a partial file, and
//! hashed in order as the ranges complete — no second pass over the bytes. Progress is recorded per
//! range after the data is flushed, so a fetch killed half-way resumes where it stopped. A file is
//! published only when its SHA-256 matches the manifest (and, for `.safetensors`, its header is sound).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::digest::{Context, SHA256};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::sync::Semaphore;

use crate::error::CacheError;
use crate::manifest::{FileEntry, Manifest, Source};
use crate::safetensors;
use crate::store::Store;

/// How files are read.
#[derive(Debug, Clone, Copy)]
pub struct FetchConfig {
    /// Bytes per range request.
    pub chunk_bytes: u64,
    /// Ranges in flight per file.
    pub concurrency: usize,
    /// Retries of a failed range (with exponential backoff from 200 ms).
    pub retries: u32,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig { chunk_bytes: 16 << 20, concurrency: 16, retries: 4 }
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

/// Reads files from origins into a store.
#[derive(Debug, Clone)]
pub struct Fetcher {
    http: reqwest::Client,
    config: FetchConfig,
    origin_reads: Arc<Semaphore>,
    blob_locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    peers: Arc<std::sync::RwLock<Vec<String>>>,
}

/// Ends a fetch's budget reservation however the fetch ends.
struct Reservation<'a> {
    store: &'a Mutex<Store>,
    model: &'a str,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.store.lock().unwrap_or_else(|p| p.into_inner()).release(self.model);
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
    /// Another node's cache agent serving the blob (`GET /blobs/sha256/<digest>` with Range).
    Peer {
        url: String,
    },
    /// An object in an S3-compatible store.
    S3 {
        store: Arc<dyn object_store::ObjectStore>,
        path: object_store::path::Path,
        display: String,
    },
}

impl std::fmt::Display for From {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            From::Http { url, .. } | From::Peer { url } | From::S3 { display: url, .. } => f.write_str(url),
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

impl Fetcher {
    /// A fetcher; at most `origin_limit` range reads hit origins at once across all fetches.
    pub fn new(config: FetchConfig, origin_limit: usize) -> Result<Self, CacheError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(config.concurrency.max(1) * 2)
            .build()
            .map_err(|e| CacheError::Origin { url: String::new(), message: format!("HTTP client: {e}") })?;
        Ok(Fetcher {
            http,
            config: FetchConfig {
                concurrency: config.concurrency.max(1),
                chunk_bytes: config.chunk_bytes.max(4096),
                ..config
            },
            origin_reads: Arc::new(Semaphore::new(origin_limit.max(1))),
            blob_locks: Arc::default(),
            peers: Arc::default(),
        })
    }

    /// Asks these peer agents (base URLs such as `http://10.0.0.7:8470`) for a file before its origin.
    pub fn with_peers(self, peers: Vec<String>) -> Self {
        self.set_peers(peers);
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

    /// The first peer that holds the blob in full, if any: a one-byte range read whose Content-Range
    /// gives the peer's size of it.
    async fn peer_with(&self, sha256: &str, size: u64) -> Option<String> {
        for peer in self.peers() {
            let url = format!("{peer}/blobs/sha256/{sha256}");
            let probe = self.http.get(&url).header(reqwest::header::RANGE, "bytes=0-0").timeout(Duration::from_secs(2));
            let Ok(response) = probe.send().await else { continue };
            let total = response
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit('/').next())
                .and_then(|t| t.parse::<u64>().ok());
            if response.status() == reqwest::StatusCode::PARTIAL_CONTENT && total == Some(size) {
                return Some(url);
            }
        }
        None
    }

    /// Fetches every file of `manifest` not yet stored, publishes them, and links the model.
    pub async fn fetch_model(&self, store: &Mutex<Store>, manifest: &Manifest) -> Result<FetchReport, CacheError> {
        manifest.check(&manifest.model)?;
        let s3 = match &manifest.source {
            Source::S3 { bucket, endpoint, region, .. } => {
                Some(s3_store(bucket, endpoint.as_deref(), region.as_deref())?)
            }
            _ => None,
        };
        let mut report = FetchReport { files: manifest.files.len(), ..Default::default() };
        report.evicted = store.lock().unwrap_or_else(|p| p.into_inner()).make_room(manifest)?;
        let _reservation = Reservation { store, model: &manifest.model };
        let mut done = std::collections::HashSet::new();
        for file in &manifest.files {
            if !done.insert(file.sha256.as_str()) {
                continue;
            }
            let from = match &manifest.source {
                Source::Http { base_url, token_env } => From::Http {
                    url: format!("{}/{}", base_url.trim_end_matches('/'), file.path),
                    token: token_env.as_ref().and_then(|v| std::env::var(v).ok()).filter(|t| !t.is_empty()),
                },
                Source::Local { dir } => From::Local { path: Path::new(dir).join(&file.path) },
                Source::S3 { bucket, prefix, .. } => {
                    let key = if prefix.is_empty() {
                        file.path.clone()
                    } else {
                        format!("{}/{}", prefix.trim_end_matches('/'), file.path)
                    };
                    let store = s3.clone().ok_or_else(no_s3_client)?;
                    From::S3 {
                        store,
                        display: format!("s3://{bucket}/{key}"),
                        path: object_store::path::Path::from(key),
                    }
                }
            };
            // One fetch per blob at a time, whichever model asks: a second waits and finds it stored.
            let blob_lock = {
                let mut locks = self.blob_locks.lock().unwrap_or_else(|p| p.into_inner());
                Arc::clone(locks.entry(file.sha256.clone()).or_default())
            };
            let _held = blob_lock.lock().await;
            let (partial, stored) = {
                let s = store.lock().unwrap_or_else(|p| p.into_inner());
                (s.partial_path(&file.sha256), s.has_blob(&file.sha256))
            };
            if stored {
                report.reused_bytes += file.size;
                continue;
            }
            // A peer that holds the blob is read instead of the origin; the digest is checked all the same.
            // A peer that fails part-way (gone, restarted, wrong bytes) hands over to the origin, which
            // resumes from the ranges already on disk (or starts again after a digest mismatch).
            let from_peer = match self.peer_with(&file.sha256, file.size).await {
                Some(url) => {
                    match self.fetch_file(&manifest.model, file, &From::Peer { url: url.clone() }, &partial).await {
                        Ok(done) => Some(done),
                        Err(e) => {
                            tracing::warn!(model = %manifest.model, file = %file.path, peer = %url, error = %e,
                            "Peer read failed; reading the origin.");
                            None
                        }
                    }
                }
                None => None,
            };
            let (fetched, resumed) = match from_peer {
                Some((fetched, resumed)) => {
                    report.peer_bytes += fetched;
                    (fetched, resumed)
                }
                None => self.fetch_file(&manifest.model, file, &from, &partial).await?,
            };
            report.fetched_bytes += fetched;
            report.resumed_bytes += resumed;
            store.lock().unwrap_or_else(|p| p.into_inner()).publish_blob(&part_of(&partial), &file.sha256)?;
            let chunks = chunks_of(&partial);
            let _ = std::fs::remove_file(&chunks);
        }
        store.lock().unwrap_or_else(|p| p.into_inner()).link_model(manifest)?;
        Ok(report)
    }

    /// Reads one file into `<partial>.part`, verified; returns the bytes read from the source and
    /// those resumed from an earlier attempt.
    async fn fetch_file(
        &self,
        model: &str,
        file: &FileEntry,
        from: &From,
        partial: &Path,
    ) -> Result<(u64, u64), CacheError> {
        let part_path = part_of(partial);
        let chunks_path = chunks_of(partial);
        let chunk = self.config.chunk_bytes;
        let n = file.size.div_ceil(chunk);
        let (part, mut progress, done_before) = open_partial(&part_path, &chunks_path, file.size, chunk, n).await?;
        let part = Arc::new(part);
        let resumed: u64 = (0..n).filter(|&i| done_before[i as usize]).map(|i| range_len(file.size, chunk, i)).sum();

        // Each range runs as its own task, so reads go on while earlier ranges are hashed and flushed;
        // `buffered` hands them over in order and keeps at most `concurrency` in flight.
        let ranges = futures::stream::iter(0..n)
            .map(|i| {
                let part = Arc::clone(&part);
                let part_path = part_path.clone();
                let from = from.clone();
                let fetcher = self.clone();
                let was_done = done_before[i as usize];
                let size = file.size;
                let task = tokio::spawn(async move {
                    let (start, len) = (i * chunk, range_len(size, chunk, i));
                    let bytes = if was_done {
                        blocking(&part_path, move || {
                            let mut buf = vec![0u8; len as usize];
                            part.read_exact_at(&mut buf, start).map(|()| Bytes::from(buf))
                        })
                        .await?
                    } else {
                        let bytes = fetcher.read_range(&from, start, len, size).await?;
                        let write = bytes.clone();
                        blocking(&part_path, move || part.write_all_at(&write, start)).await?;
                        bytes
                    };
                    Ok::<_, CacheError>((i, bytes, !was_done))
                });
                let part_path = part_of(partial);
                async move {
                    task.await.map_err(|e| CacheError::Io {
                        path: part_path,
                        source: std::io::Error::other(format!("range task failed: {e}")),
                    })?
                }
            })
            .buffered(self.config.concurrency);
        tokio::pin!(ranges);

        let mut hash = Context::new(&SHA256);
        let mut unrecorded = Vec::new();
        let mut fetched = 0u64;
        while let Some(next) = ranges.next().await {
            let (i, bytes, fresh) = match next {
                Ok(range) => range,
                Err(e) => {
                    // Keep what arrived: the next attempt (another source, a restart) resumes after it.
                    // The read's error is the one to report, whether or not this flush succeeds.
                    let _ = record(&part, &mut progress, &chunks_path, &mut unrecorded).await;
                    return Err(e);
                }
            };
            if fresh {
                fetched += bytes.len() as u64;
                unrecorded.push(i);
            }
            // Hashing 16 MiB takes milliseconds: off the async threads, in order.
            hash = tokio::task::spawn_blocking(move || {
                hash.update(&bytes);
                hash
            })
            .await
            .map_err(|e| CacheError::Io { path: part_path.clone(), source: std::io::Error::other(e.to_string()) })?;
            if unrecorded.len() >= 8 {
                record(&part, &mut progress, &chunks_path, &mut unrecorded).await?;
            }
        }
        record(&part, &mut progress, &chunks_path, &mut unrecorded).await?;

        let actual = hex(hash.finish().as_ref());
        let discard = || {
            let _ = std::fs::remove_file(&part_path);
            let _ = std::fs::remove_file(&chunks_path);
        };
        if actual != file.sha256 {
            discard();
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
                discard();
                return Err(CacheError::Safetensors { model: model.to_owned(), path: file.path.clone(), message });
            }
        }
        Ok((fetched, resumed))
    }

    /// Reads `len` bytes at `start`, retrying transient failures.
    async fn read_range(&self, from: &From, start: u64, len: u64, total: u64) -> Result<Bytes, CacheError> {
        let _permit = self
            .origin_reads
            .acquire()
            .await
            .map_err(|e| CacheError::Origin { url: from.to_string(), message: e.to_string() })?;
        let mut attempt = 0;
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
                From::Peer { url } => self.http_range(url, None, start, len, total).await,
                From::S3 { store, path, display } => s3_range(store.as_ref(), path, display, start, len).await,
            };
            match result {
                Ok(bytes) => return Ok(bytes),
                Err((retryable, e)) if retryable && attempt < self.config.retries => {
                    attempt += 1;
                    let backoff = Duration::from_millis(200u64 << attempt.min(6));
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
        let mut request =
            self.http.get(url).header(reqwest::header::RANGE, format!("bytes={start}-{}", start + len - 1));
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        let mut response = request.send().await.map_err(|e| (true, origin(e.to_string())))?;
        let status = response.status();
        let whole = status == reqwest::StatusCode::OK && start == 0 && len == total;
        if status != reqwest::StatusCode::PARTIAL_CONTENT && !whole {
            let retry = status.is_server_error() || status == 408 || status == 429;
            let hint = if status == reqwest::StatusCode::OK { " (the origin ignores Range requests)" } else { "" };
            return Err((retry, origin(format!("HTTP {status} for bytes {start}-{}{hint}", start + len - 1))));
        }
        if status == reqwest::StatusCode::PARTIAL_CONTENT {
            let range = response.headers().get(reqwest::header::CONTENT_RANGE).and_then(|v| v.to_str().ok());
            let expected = format!("bytes {start}-{}/", start + len - 1);
            if !range.is_some_and(|r| r.starts_with(&expected)) {
                return Err((false, origin(format!("Content-Range is {range:?}, expected {expected}{total}"))));
            }
        }
        let mut body = BytesMut::with_capacity(len as usize);
        while let Some(piece) = response.chunk().await.map_err(|e| (true, origin(e.to_string())))? {
            body.extend_from_slice(&piece);
            if body.len() as u64 > len {
                return Err((false, origin(format!("more than the {len} bytes asked for"))));
            }
        }
        if body.len() as u64 != len {
            return Err((true, origin(format!("{} of {len} bytes before the connection closed", body.len()))));
        }
        Ok(body.freeze())
    }
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
        let part = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&part_path)?;
        let progress = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&chunks_path)?;
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
