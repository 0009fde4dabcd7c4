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
use gpuplane_cache::{FileEntry, Manifest, Source};

#[derive(Default)]
pub struct Origin {
    pub files: Mutex<HashMap<String, Vec<u8>>>,
    pub served: AtomicU64,
    pub delay_ms: AtomicU64,
    /// When non-zero, ranges that would take `served` past this many bytes are answered 503.
    pub fail_after: AtomicU64,
}

async fn serve(State(o): State<Arc<Origin>>, Path(path): Path<String>, headers: HeaderMap) -> Response {
    let delay = o.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let Some(body) = o.files.lock().unwrap().get(&path).cloned() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).and_then(|r| r.strip_prefix("bytes="));
    let Some((a, b)) = range.and_then(|r| r.split_once('-')) else {
        o.served.fetch_add(body.len() as u64, Ordering::Relaxed);
        return body.into_response();
    };
    let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
    let part = body[a..=b.min(body.len() - 1)].to_vec();
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
