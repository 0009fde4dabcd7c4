//! An HTTP origin on loopback that honours Range requests and counts the bytes it serves, and the
//! content and manifests the cache tests fetch from it.
#![allow(clippy::unwrap_used, dead_code)] // Not every test file uses every helper.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::digest::{SHA256, digest};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use gpuplane_cache::{FileEntry, Manifest, Source};

#[derive(Default)]
pub struct Origin {
    pub files: Mutex<HashMap<String, Vec<u8>>>,
    /// Bytes of content served (size checks, one-byte ranges at 0, counted in `probes` instead).
    pub served: AtomicU64,
    /// Size checks: requests for `bytes=0-0`.
    pub probes: AtomicU64,
    pub delay_ms: AtomicU64,
    /// When non-zero, ranges that would take `served` past this many bytes are answered 503.
    pub fail_after: AtomicU64,
    /// Answer Range requests with the whole file (200), as some origins do.
    pub ignore_range: std::sync::atomic::AtomicBool,
    /// When non-zero, whole-file answers announce the full length but send only this many bytes.
    pub truncate_to: AtomicU64,
    /// Requests received, with their Authorization header.
    pub requests: Mutex<Vec<(String, Option<String>)>>,
    /// Paths answered `302 Found` to the URL given.
    pub redirects: Mutex<HashMap<String, String>>,
    /// Send bodies one byte every 100 ms (ranges that start at `trickle_from` or later).
    pub trickle: std::sync::atomic::AtomicBool,
    pub trickle_from: AtomicU64,
}

async fn serve(
    State(o): State<Arc<Origin>>,
    Path(path): Path<String>,
    method: axum::http::Method,
    headers: HeaderMap,
) -> Response {
    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
    o.requests.lock().unwrap().push((path.clone(), auth));
    if let Some(to) = o.redirects.lock().unwrap().get(&path).cloned() {
        return (StatusCode::FOUND, [(header::LOCATION, to)]).into_response();
    }
    let delay = o.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let Some(body) = o.files.lock().unwrap().get(&path).cloned() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if method == axum::http::Method::HEAD {
        return ([(header::CONTENT_LENGTH, body.len().to_string())], axum::body::Body::empty()).into_response();
    }
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).and_then(|r| r.strip_prefix("bytes="));
    let range = range.filter(|_| !o.ignore_range.load(Ordering::Relaxed));
    let Some((a, b)) = range.and_then(|r| r.split_once('-')) else {
        let cut = o.truncate_to.load(Ordering::Relaxed);
        if cut > 0 {
            // Announce the whole length, send less, and close: a body that breaks off.
            let len = body.len();
            let part = body[..cut as usize].to_vec();
            o.served.fetch_add(cut, Ordering::Relaxed);
            let stream = futures::stream::iter([
                Ok::<_, std::io::Error>(axum::body::Bytes::from(part)),
                Err(std::io::Error::other("cut")),
            ]);
            return ([(header::CONTENT_LENGTH, len.to_string())], axum::body::Body::from_stream(stream))
                .into_response();
        }
        o.served.fetch_add(body.len() as u64, Ordering::Relaxed);
        return body.into_response();
    };
    let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
    let part = body[a..=b.min(body.len() - 1)].to_vec();
    if o.trickle.load(Ordering::Relaxed) && a as u64 >= o.trickle_from.load(Ordering::Relaxed) {
        let content_range = format!("bytes {a}-{}/{}", a + part.len() - 1, body.len());
        let stream = futures::stream::iter(part).then(|byte| async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok::<_, std::io::Error>(axum::body::Bytes::from(vec![byte]))
        });
        return (
            StatusCode::PARTIAL_CONTENT,
            [(header::CONTENT_RANGE, content_range)],
            axum::body::Body::from_stream(stream),
        )
            .into_response();
    }
    if (a, b) == (0, 0) && body.len() > 1 {
        o.probes.fetch_add(1, Ordering::Relaxed);
        let content_range = format!("bytes 0-0/{}", body.len());
        return (StatusCode::PARTIAL_CONTENT, [(header::CONTENT_RANGE, content_range)], part).into_response();
    }
    let limit = o.fail_after.load(Ordering::Relaxed);
    if limit > 0 && o.served.load(Ordering::Relaxed) + part.len() as u64 > limit {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    o.served.fetch_add(part.len() as u64, Ordering::Relaxed);
    let content_range = format!("bytes {a}-{}/{}", a + part.len() - 1, body.len());
    (StatusCode::PARTIAL_CONTENT, [(header::CONTENT_RANGE, content_range)], part).into_response()
}

pub async fn origin() -> (Arc<Origin>, String) {
    let o = Arc::new(Origin::default());
    let app = axum::Router::new().route("/m/{*path}", axum::routing::get(serve)).with_state(Arc::clone(&o));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (o, format!("http://{addr}/m"))
}

pub fn sha(bytes: &[u8]) -> String {
    digest(&SHA256, bytes).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes that differ everywhere, so a misplaced range changes the digest.
pub fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn safetensors_file() -> Vec<u8> {
    let header = br#"{"w":{"dtype":"BF16","shape":[4,4],"data_offsets":[0,32]}}"#;
    let mut padded = header.to_vec();
    while !padded.len().is_multiple_of(8) {
        padded.push(b' ');
    }
    let mut out = (padded.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&padded);
    out.extend(content(32, 9));
    out
}

/// Puts files on the origin and returns the manifest for them.
pub fn model(o: &Origin, base: &str, name: &str, files: &[(&str, Vec<u8>)]) -> Manifest {
    let mut entries = Vec::new();
    for (path, body) in files {
        entries.push(FileEntry { path: (*path).to_owned(), size: body.len() as u64, sha256: sha(body) });
        o.files.lock().unwrap().insert((*path).to_owned(), body.clone());
    }
    Manifest {
        model: name.to_owned(),
        source: Source::Http { base_url: base.to_owned(), token_env: None },
        files: entries,
    }
}

/// Bearer tokens of the test callers (see [`tokens`]).
pub const PEER: &str = "peer-token-0123456789";
pub const SCHEDULER: &str = "scheduler-token-0123456789";
pub const ADMIN: &str = "admin-token-0123456789";
pub const POD_A: &str = "pod-a-token-0123456789";
pub const POD_B: &str = "pod-b-token-0123456789";
pub const REMOTE_POD: &str = "remote-pod-token-0123456789";
/// The node the test agents run on (pods A and B run there too).
pub const NODE: &str = "gpu-a";

/// The callers behind the test tokens: a peer agent, the scheduler, an administrator, two pods on
/// this node and one on another.
pub fn tokens() -> gpuplane_cache::auth::StaticTokens {
    use gpuplane_cache::auth::Caller;
    let c = |user: &str, node: Option<&str>, pod: Option<&str>| Caller {
        user: user.to_owned(),
        node: node.map(str::to_owned),
        pod: pod.map(str::to_owned),
    };
    gpuplane_cache::auth::StaticTokens::new([
        (
            PEER.to_owned(),
            c("system:serviceaccount:gpuplane-system:gpuplane-cache", Some("gpu-b"), Some("gpuplane-system/cache-b")),
        ),
        (SCHEDULER.to_owned(), c("system:serviceaccount:gpuplane-system:gpuplane-scheduler", None, None)),
        (ADMIN.to_owned(), c("admin", None, None)),
        (POD_A.to_owned(), c("system:serviceaccount:serving:default", Some(NODE), Some("serving/pod-a"))),
        (POD_B.to_owned(), c("system:serviceaccount:serving:default", Some(NODE), Some("serving/pod-b"))),
        (REMOTE_POD.to_owned(), c("system:serviceaccount:serving:default", Some("gpu-z"), Some("serving/pod-z"))),
    ])
}

/// The agent configuration of the tests: the peers, the scheduler and the admin as above; origins
/// on `allowed` only, each granted to the pods of namespace `serving` without a credential.
pub fn agent_config(node: &str, allowed: &[&str]) -> gpuplane_cache::agent::AgentConfig {
    gpuplane_cache::agent::AgentConfig {
        policy: gpuplane_cache::auth::Policy {
            node: node.to_owned(),
            peers: ["system:serviceaccount:gpuplane-system:gpuplane-cache".to_owned()].into(),
            readers: ["system:serviceaccount:gpuplane-system:gpuplane-scheduler".to_owned()].into(),
            writers: ["admin".to_owned()].into(),
            grants: allowed
                .iter()
                .map(|o| gpuplane_cache::auth::Grant {
                    origin: (*o).to_owned(),
                    namespaces: vec!["serving".to_owned()],
                    token_env: None,
                })
                .collect(),
        },
        origins: allowed.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    }
}

/// A fetcher with small ranges for tests, presenting the peer token to peers.
pub fn test_fetcher(peers: Vec<String>, node: &str) -> gpuplane_cache::Fetcher {
    gpuplane_cache::Fetcher::new(
        gpuplane_cache::FetchConfig { chunk_bytes: 1 << 20, concurrency: 4, retries: 1, ..Default::default() },
        8,
    )
    .unwrap()
    .with_peers(peers)
    .with_node(node)
    .with_peer_token(gpuplane_cache::PeerToken::Fixed(PEER.to_owned()))
}

/// Serves an agent on loopback with the real server (header timeout 1 s); its base URL.
pub async fn serve_agent(agent: Arc<gpuplane_cache::agent::Agent>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = gpuplane_cache::agent::ServerLimits {
        max_connections: 64,
        max_per_client: 48,
        header_timeout: Duration::from_secs(1),
    };
    tokio::spawn(gpuplane_cache::agent::serve(
        listener,
        gpuplane_cache::agent::router(agent),
        limits,
        std::future::pending(),
    ));
    format!("http://{addr}")
}

/// An agent over a store at `dir`, its base URL and the agent itself.
pub async fn agent_at(
    dir: &std::path::Path,
    peers: Vec<String>,
    config: gpuplane_cache::agent::AgentConfig,
) -> (String, Arc<gpuplane_cache::agent::Agent>) {
    let node = config.policy.node.clone();
    let agent = gpuplane_cache::agent::Agent::new(
        gpuplane_cache::Store::open(dir, 1 << 30).unwrap(),
        test_fetcher(peers, &node).with_origins(config.origins.clone()).unwrap(),
        config,
        Box::new(tokens()),
    );
    (serve_agent(Arc::clone(&agent)).await, agent)
}
