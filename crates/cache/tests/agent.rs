//! Cache agents on loopback: the first reads a model from the origin, the second reads it from the
//! first instead (the origin serves the bytes once per cluster) — also when both start cold at once —,
//! the inventory and pins, the blob endpoint's Range handling, and bad requests.
#![allow(clippy::unwrap_used)] // Helpers too: a failed unwrap is a failed test, with its location.

mod support;

use std::sync::atomic::Ordering;

use serde_json::Value;
use support::{ADMIN, PEER, POD_A, SCHEDULER, agent_at, agent_config, content, model, origin};

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
    let (a, _) = agent_at(dir_a.path(), vec![], agent_config("gpu-a", &[&base])).await;
    let (b, _) = agent_at(dir_b.path(), vec![a.clone()], agent_config("gpu-b", &[&base])).await;
    let http = reqwest::Client::new();

    // Two prefetches at once on the first node: one fetch.
    let (r1, r2) = tokio::join!(
        http.post(format!("{a}/models")).bearer_auth(ADMIN).body(body.clone()).send(),
        http.post(format!("{a}/models")).bearer_auth(ADMIN).body(body.clone()).send()
    );
    assert_eq!((r1.unwrap().status().as_u16(), r2.unwrap().status().as_u16()), (200, 200));
    assert_eq!(o.served.load(Ordering::Relaxed), m.bytes(), "the origin served each byte once");

    let r = json(http.post(format!("{b}/models")).bearer_auth(ADMIN).body(body).send().await.unwrap()).await;
    assert_eq!(r["peer_bytes"], m.bytes(), "{r}");
    assert_eq!(o.served.load(Ordering::Relaxed), m.bytes(), "still once per cluster");
    assert!(dir_b.path().join("models/chat-7b@v2/model-00001.bin").exists());

    // Inventory and pins: the scheduler reads, an administrator pins.
    let put = http.put(format!("{b}/models/chat-7b@v2/pins/serving%2Fchat-0")).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(put.status(), 204);
    let inventory = json(http.get(format!("{b}/models")).bearer_auth(SCHEDULER).send().await.unwrap()).await;
    assert_eq!(inventory["models"][0]["model"], "chat-7b@v2");
    assert_eq!(inventory["models"][0]["bytes"], m.bytes());
    assert_eq!(inventory["models"][0]["pinned_by"][0], "serving/chat-0");
    assert_eq!(inventory["used_bytes"], m.bytes());
    let missing = http.put(format!("{b}/models/other/pins/p")).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(missing.status(), 404);

    let metrics = http.get(format!("{b}/metrics")).bearer_auth(SCHEDULER).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(&format!("gpuplane_cache_peer_bytes_total {}", m.bytes())), "{metrics}");
}

#[tokio::test]
async fn two_cold_agents_fetching_one_model_at_once_read_the_origin_once() {
    let (o, base) = origin().await;
    // Slow enough that both fetches overlap: 24 ranges of 1 MiB, 30 ms each, four at a time.
    o.delay_ms.store(30, Ordering::Relaxed);
    let m = model(&o, &base, "big@v1", &[("w.bin", content(24 << 20, 4)), ("c.json", content(5000, 5))]);
    let body = serde_json::to_string(&m).unwrap();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut agents = Vec::new();
    for (dir, node) in dirs.iter().zip(["gpu-a", "gpu-b", "gpu-c"]) {
        agents.push(agent_at(dir.path(), vec![], agent_config(node, &[&base])).await);
    }
    // Every agent asks the two others.
    for (i, (_, agent)) in agents.iter().enumerate() {
        let others = agents.iter().enumerate().filter(|&(j, _)| j != i).map(|(_, (url, _))| url.clone()).collect();
        agent.fetcher().set_peers(others);
    }
    let (a, b, a2) = (agents[0].0.clone(), agents[1].0.clone(), agents[2].0.clone());
    let http = reqwest::Client::new();
    let (r1, r2, r3) = tokio::join!(
        http.post(format!("{a}/models")).bearer_auth(ADMIN).body(body.clone()).send(),
        http.post(format!("{b}/models")).bearer_auth(ADMIN).body(body.clone()).send(),
        http.post(format!("{a2}/models")).bearer_auth(ADMIN).body(body.clone()).send(),
    );
    let (r1, r2, r3) = (json(r1.unwrap()).await, json(r2.unwrap()).await, json(r3.unwrap()).await);
    assert_eq!(o.served.load(Ordering::Relaxed), m.bytes(), "{r1} {r2} {r3}");
    assert_eq!(o.probes.load(Ordering::Relaxed), 6, "each agent asked the origin each file's size once");
    let peer_total = [&r1, &r2, &r3].iter().map(|r| r["peer_bytes"].as_u64().unwrap()).sum::<u64>();
    assert_eq!(peer_total, 2 * m.bytes(), "two of three read every byte from a peer: {r1} {r2} {r3}");
    for dir in &dirs {
        assert_eq!(std::fs::read(dir.path().join("models/big@v1/w.bin")).unwrap(), content(24 << 20, 4));
    }
}

#[tokio::test]
async fn blobs_are_served_by_range_and_bad_requests_get_4xx() {
    let (o, base) = origin().await;
    let bytes = content(100_000, 3);
    let m = model(&o, &base, "m", &[("w.bin", bytes.clone())]);
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = agent_at(dir.path(), vec![], agent_config("gpu-a", &[&base])).await;
    let http = reqwest::Client::new();
    let posted =
        http.post(format!("{a}/models")).bearer_auth(POD_A).body(serde_json::to_string(&m).unwrap()).send().await;
    assert_eq!(posted.unwrap().status(), 200, "a pod on this node may prefetch");
    let url = format!("{a}/blobs/sha256/{}", m.files[0].sha256);

    let whole = http.get(&url).bearer_auth(PEER).send().await.unwrap();
    assert_eq!(whole.headers()["x-gpuplane-blob"], "complete");
    assert_eq!(whole.bytes().await.unwrap().as_ref(), &bytes[..]);
    let part = http.get(&url).bearer_auth(PEER).header("Range", "bytes=10-19").send().await.unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.headers()["content-range"], "bytes 10-19/100000");
    assert_eq!(part.bytes().await.unwrap().as_ref(), &bytes[10..20]);
    let tail = http.get(&url).bearer_auth(PEER).header("Range", "bytes=99990-").send().await.unwrap();
    assert_eq!(tail.bytes().await.unwrap().as_ref(), &bytes[99_990..]);
    assert_eq!(http.get(&url).bearer_auth(PEER).header("Range", "bytes=5-200000").send().await.unwrap().status(), 416);
    let head = http.head(&url).bearer_auth(PEER).send().await.unwrap();
    assert_eq!((head.status().as_u16(), head.headers()["content-length"].to_str().unwrap()), (200, "100000"));
    let absent = http.get(format!("{a}/blobs/sha256/{}", "0".repeat(64))).bearer_auth(PEER).send().await.unwrap();
    assert_eq!(absent.status(), 404);
    let sneaky = http.get(format!("{a}/blobs/sha256/..%2Findex.json")).bearer_auth(PEER).send().await.unwrap();
    assert_eq!(sneaky.status(), 400);

    let bad = http
        .post(format!("{a}/models"))
        .bearer_auth(ADMIN)
        .body(r#"{"model": "../x", "source": {"kind": "local", "dir": "/"}, "files": []}"#);
    let bad = bad.send().await.unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("field `model`"));
}
