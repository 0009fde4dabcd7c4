//! Peers: a fetch under way announced to other agents ([`InFlight`], ordered by [`FetchKey`]), the
//! bytes it has so far served to followers as they land, and the search of peers for a blob before the
//! origin — a whole copy, or an earlier fetch of the same URL to follow.

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::{BLOB_STATE_HEADER, FETCH_KEY_HEADER, FETCH_SOURCE_HEADER, Fetcher, From, PeerToken};
use crate::store::open_nofollow;

/// A file being fetched here, announced to peers: which of its ranges are on disk so far.
#[derive(Debug)]
pub struct InFlight {
    /// Size of the file.
    pub size: u64,
    /// The announcement key: earlier fetches lead, later ones follow them.
    pub key: FetchKey,
    /// SHA-256 of the URL being read: only a fetch of the same URL follows this one.
    pub source: String,
    pub(super) part: PathBuf,
    pub(super) chunk: u64,
    pub(super) done: Mutex<Vec<bool>>,
    pub(super) progress: watch::Sender<u64>,
    pub(super) ended: AtomicBool,
}

/// Orders announcements of one file across agents: start time in µs, then the agent's node name. The clock
/// is fine enough that an agent announcing after it answered a peer's probe has the later key (in one
/// millisecond two agents on one host could otherwise each see the other as later, and both read the origin).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FetchKey {
    /// Microseconds since the epoch when the fetch was announced.
    pub started_us: u64,
    /// The announcing agent.
    pub node: String,
}

impl std::fmt::Display for FetchKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.started_us, self.node)
    }
}

impl std::str::FromStr for FetchKey {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let (us, node) = s.split_once('-').ok_or(())?;
        Ok(FetchKey { started_us: us.parse().map_err(|_| ())?, node: node.to_owned() })
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
    pub(super) fn mark(&self, i: u64) {
        if let Some(d) = self.done.lock().unwrap_or_else(|p| p.into_inner()).get_mut(i as usize) {
            *d = true;
        }
        self.progress.send_modify(|v| *v += 1);
    }

    /// Forgets every range: a new attempt starts (or resumes from what it finds on disk).
    pub(super) fn reset(&self) {
        self.done.lock().unwrap_or_else(|p| p.into_inner()).iter_mut().for_each(|d| *d = false);
    }

    pub(super) fn end(&self) {
        self.ended.store(true, Ordering::Release);
        self.progress.send_modify(|v| *v += 1);
    }

    pub(super) fn is_done(&self, i: u64) -> bool {
        self.done.lock().unwrap_or_else(|p| p.into_inner()).get(i as usize).copied().unwrap_or(false)
    }

    pub(super) fn covers(&self, start: u64, end: u64) -> bool {
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
pub(super) struct Announced {
    pub(super) registry: Arc<Mutex<HashMap<String, Arc<InFlight>>>>,
    pub(super) digest: String,
    pub(super) flight: Arc<InFlight>,
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

impl Fetcher {
    pub(super) fn token(&self) -> Option<String> {
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
    pub(super) async fn find_peer(
        &self,
        sha256: &str,
        size: u64,
        own: &FetchKey,
        source: &str,
        strict: bool,
    ) -> Option<From> {
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
