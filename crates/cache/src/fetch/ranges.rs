//! Reading one file: its missing ranges many at once into a partial file, hashed in order as its
//! prefix fills and recorded as done once flushed; an origin without Range read as one stream; the
//! partial and progress files opened safely; S3 ranges.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::digest::{Context, SHA256};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use super::{FOLLOW_RETRIES, Fetcher, From, InFlight, blocking, hex, io};
use crate::error::CacheError;
use crate::manifest::FileEntry;
use crate::store::open_lock_file;

impl Fetcher {
    /// Asks the source of each file for its size (a one-byte Range request, an object's metadata, a
    /// file's length), many at once; an error names the first file whose source lacks it or has another
    /// size.
    pub(super) async fn check_sizes(&self, files: &[(&FileEntry, &From)]) -> Result<(), CacheError> {
        for group in files.chunks(self.config.concurrency.max(1)) {
            let mut checks = Vec::with_capacity(group.len());
            for (file, from) in group {
                checks.push(self.check_size(file, from));
            }
            futures::future::try_join_all(checks).await?;
        }
        Ok(())
    }

    async fn check_size(&self, file: &FileEntry, from: &From) -> Result<(), CacheError> {
        let wrong = |found: u64| CacheError::Origin {
            url: from.to_string(),
            message: format!("the source has {found} bytes, the manifest says {}", file.size),
        };
        let found = match from {
            From::Http { url, token } => {
                let origin = |message: String| CacheError::Origin { url: url.clone(), message };
                let mut request =
                    self.http.get(url).header(reqwest::header::RANGE, "bytes=0-0").timeout(self.config.grace);
                if let Some(t) = token {
                    request = request.bearer_auth(t);
                }
                let response = request.send().await.map_err(|e| origin(e.to_string()))?;
                let header = |name| response.headers().get(name).and_then(|v| v.to_str().ok());
                match response.status() {
                    reqwest::StatusCode::PARTIAL_CONTENT => header(reqwest::header::CONTENT_RANGE)
                        .and_then(|r| r.rsplit_once('/'))
                        .and_then(|(_, total)| total.parse::<u64>().ok()),
                    // The whole file (an origin without Range): its length says; the body is not read.
                    reqwest::StatusCode::OK => header(reqwest::header::CONTENT_LENGTH).and_then(|l| l.parse().ok()),
                    // An empty file has no byte 0 to ask for.
                    reqwest::StatusCode::RANGE_NOT_SATISFIABLE if file.size == 0 => Some(0),
                    status => return Err(origin(format!("HTTP {status} when asked for the file's size"))),
                }
            }
            From::S3 { store, path, display } => {
                use object_store::ObjectStoreExt;
                let meta = store
                    .head(path)
                    .await
                    .map_err(|e| CacheError::Origin { url: display.clone(), message: e.to_string() })?;
                Some(meta.size)
            }
            From::Local { path } => Some(std::fs::metadata(path).map_err(io(path))?.len()),
            From::Peer { .. } => return Ok(()),
        };
        match found {
            Some(n) if n == file.size => Ok(()),
            Some(n) => Err(wrong(n)),
            // No length given (a chunked answer): the fetch itself will tell.
            None => Ok(()),
        }
    }

    /// Reads the file's missing ranges, many at once and in any order of completion, and hashes the
    /// whole file in order as its prefix fills; returns bytes fetched, bytes resumed and the digest.
    ///
    /// Each range is its own task that writes its bytes in place and drops them, so memory is at most
    /// `concurrency` ranges however unevenly they finish, and a slow range never holds the others
    /// back. A second task hashes the file from the start, reading back (from the page cache) each
    /// range once every range before it is on disk, and records ranges as done — after `fdatasync` —
    /// every 8 completions, so neither hashing nor flushing stops new ranges from starting.
    pub(super) async fn read_ranges(
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
    pub(super) async fn read_stream(
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
pub(super) struct BlobFileLock {
    path: PathBuf,
    _file: File,
}

impl BlobFileLock {
    pub(super) fn take(path: PathBuf) -> std::io::Result<BlobFileLock> {
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

pub(super) fn discard(part: &Path, chunks: &Path) {
    let _ = std::fs::remove_file(part);
    let _ = std::fs::remove_file(chunks);
}

/// A client for an S3-compatible store, credentials from the environment.
pub(super) fn s3_store(
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

pub(super) fn no_s3_client() -> CacheError {
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

pub(super) fn part_of(partial: &Path) -> PathBuf {
    partial.with_extension("part")
}

pub(super) fn chunks_of(partial: &Path) -> PathBuf {
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
pub(super) async fn open_partial(
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
