//! Two cache agents on loopback: the first reads a model from the origin, the second reads it from
//! the first instead (the origin serves the bytes once per cluster), the inventory and pins, the blob
//! endpoint's Range handling, and bad requests.
#![allow(clippy::unwrap_used)] // Helpers too: a failed unwrap is a failed test, with its location.

mod support;

use std::sync::atomic::Ordering;

use gpuplane_cache::agent::{Agent, router};
use gpuplane_cache::{FetchConfig, Fetcher, Store};
use serde_json::Value;
use support::{content, model, origin};

async fn agent(dir: &std::path::Path, peers: Vec<String>) -> String {
    let fetcher =
        Fetcher::new(FetchConfig { chunk_bytes: 1 << 20, concurrency: 4, retries: 1 }, 8).unwrap().with_peers(peers);
    let agent = Agent::new(Store::open(dir, 1 << 30).unwrap(), fetcher);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router(agent)).await.unwrap() });
    format!("http://{addr}")
}

async fn json(response: reqwest::Response) -> Value {
    serde_json::from_slice(&response.bytes().await.unwrap()).unwrap()
}

#[tokio::test]
async fn a_second_node_reads_the_model_from_its_peer_not_the_origin() {
    let (o, base) = origin().await;
    let m = model(
        &o,
        &base,
        "chat-7b@v2",
        &[("model-00001.bin", content(3 << 20, 1)), ("tokenizer.json", content(1000, 2))],
    );
    let body = serde_json::to_string(&m).unwrap();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = agent(dir_a.path(), vec![]).await;
    let b = agent(dir_b.path(), vec![a.clone()]).await;
    let http = reqwest::Client::new();

    // Two prefetches at once on the first node: one fetch.
    let (r1, r2) = tokio::join!(
        http.post(format!("{a}/models")).body(body.clone()).send(),
        http.post(format!("{a}/models")).body(body.clone()).send()
    );
    assert_eq!((r1.unwrap().status().as_u16(), r2.unwrap().status().as_u16()), (200, 200));
    assert_eq!(o.served.load(Ordering::Relaxed), m.bytes(), "the origin served each byte once");

    let r = json(http.post(format!("{b}/models")).body(body).send().await.unwrap()).await;
    assert_eq!(r["peer_bytes"], m.bytes(), "{r}");
    assert_eq!(o.served.load(Ordering::Relaxed), m.bytes(), "still once per cluster");
    assert!(dir_b.path().join("models/chat-7b@v2/model-00001.bin").exists());

    // Inventory and pins.
    let put = http.put(format!("{b}/models/chat-7b@v2/pins/serving%2Fchat-0")).send().await.unwrap();
    assert_eq!(put.status(), 204);
    let inventory = json(http.get(format!("{b}/models")).send().await.unwrap()).await;
    assert_eq!(inventory["models"][0]["model"], "chat-7b@v2");
    assert_eq!(inventory["models"][0]["bytes"], m.bytes());
    assert_eq!(inventory["models"][0]["pinned_by"][0], "serving/chat-0");
    assert_eq!(inventory["used_bytes"], m.bytes());
    let missing = http.put(format!("{b}/models/other/pins/p")).send().await.unwrap();
    assert_eq!(missing.status(), 404);

    let metrics = http.get(format!("{b}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(&format!("gpuplane_cache_peer_bytes_total {}", m.bytes())), "{metrics}");
}

#[tokio::test]
async fn blobs_are_served_by_range_and_bad_requests_get_4xx() {
    let (o, base) = origin().await;
    let bytes = content(100_000, 3);
    let m = model(&o, &base, "m", &[("w.bin", bytes.clone())]);
    let dir = tempfile::tempdir().unwrap();
    let a = agent(dir.path(), vec![]).await;
    let http = reqwest::Client::new();
    assert_eq!(
        http.post(format!("{a}/models")).body(serde_json::to_string(&m).unwrap()).send().await.unwrap().status(),
        200
    );
    let url = format!("{a}/blobs/sha256/{}", m.files[0].sha256);

    let whole = http.get(&url).send().await.unwrap();
    assert_eq!(whole.bytes().await.unwrap().as_ref(), &bytes[..]);
    let part = http.get(&url).header("Range", "bytes=10-19").send().await.unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.headers()["content-range"], "bytes 10-19/100000");
    assert_eq!(part.bytes().await.unwrap().as_ref(), &bytes[10..20]);
    assert_eq!(http.get(&url).header("Range", "bytes=5-200000").send().await.unwrap().status(), 416);
    assert_eq!(http.get(format!("{a}/blobs/sha256/{}", "0".repeat(64))).send().await.unwrap().status(), 404);
    assert_eq!(http.get(format!("{a}/blobs/sha256/..%2Findex.json")).send().await.unwrap().status(), 400);

    let bad = http
        .post(format!("{a}/models"))
        .body(r#"{"model": "../x", "source": {"kind": "local", "dir": "/"}, "files": []}"#);
    let bad = bad.send().await.unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("field `model`"));
}
