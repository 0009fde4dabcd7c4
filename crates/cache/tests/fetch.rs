//! The fetcher and the store against an HTTP origin on loopback that honours Range requests and counts
//! what it serves: publish and dedup, resume after a fetch is killed, corrupted bytes, a broken
//! safetensors header, the disk budget with pins, concurrent fetches of one model, a missing file.
#![allow(clippy::unwrap_used)] // Helpers too: a failed unwrap is a failed test, with its location.

mod support;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gpuplane_cache::{CacheError, FetchConfig, Fetcher, FileEntry, Manifest, Source, Store};
use support::{content, model, origin, safetensors_file, sha};

fn fetcher(chunk: u64, concurrency: usize) -> Fetcher {
    Fetcher::new(FetchConfig { chunk_bytes: chunk, concurrency, retries: 1, ..Default::default() }, 64).unwrap()
}

#[tokio::test]
async fn fetches_verifies_publishes_and_stores_shared_bytes_once() {
    let (o, base) = origin().await;
    let dir = tempfile::tempdir().unwrap();
    let store = Mutex::new(Store::open(dir.path(), 1 << 30).unwrap());
    let weights = content(5 << 20 | 12345, 1);
    let m = model(
        &o,
        &base,
        "tiny@v1",
        &[("weights/part-0.bin", weights.clone()), ("model.safetensors", safetensors_file())],
    );
    let report = fetcher(1 << 20, 4).fetch_model(&store, &m).await.unwrap();
    assert_eq!(report.fetched_bytes, m.bytes());
    assert_eq!(report.reused_bytes, 0);
    let linked = dir.path().join("models/tiny@v1/weights/part-0.bin");
    assert_eq!(std::fs::read(&linked).unwrap(), weights, "the symlink resolves to the published blob");
    assert!(std::fs::symlink_metadata(&linked).unwrap().file_type().is_symlink());
    assert!(std::fs::metadata(&linked).unwrap().permissions().readonly());

    // A second model with the same weights file under another name reads nothing from the origin.
    let served = o.served.load(Ordering::Relaxed);
    let twin = model(&o, &base, "tiny@v1-copy", &[("w.bin", weights)]);
    let report = fetcher(1 << 20, 4).fetch_model(&store, &twin).await.unwrap();
    assert_eq!((report.fetched_bytes, report.reused_bytes), (0, twin.bytes()));
    assert_eq!(o.served.load(Ordering::Relaxed), served);
    assert_eq!(store.lock().unwrap().used_bytes(), m.bytes(), "shared bytes counted once");
}

#[tokio::test]
async fn a_fetch_killed_half_way_resumes_and_the_result_verifies() {
    let (o, base) = origin().await;
    let dir = tempfile::tempdir().unwrap();
    let body = content(40 * (256 << 10), 2);
    let m = model(&o, &base, "big", &[("big.bin", body.clone())]);
    o.delay_ms.store(20, Ordering::Relaxed);

    let store = Arc::new(Mutex::new(Store::open(dir.path(), 1 << 30).unwrap()));
    let (s, mm) = (Arc::clone(&store), m.clone());
    let task = tokio::spawn(async move { fetcher(256 << 10, 2).fetch_model(&s, &mm).await });
    // Kill it once at least 8 ranges are recorded as durable.
    let source = gpuplane_cache::fetch::source_id(&m.source, &m.files[0].path).unwrap();
    let progress = store.lock().unwrap().partial_path(&m.files[0].sha256, &source).with_extension("chunks");
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let marks = std::fs::read(&progress).unwrap_or_default();
        if marks.iter().skip(8).filter(|&&b| b == 1).count() >= 8 {
            break;
        }
    }
    task.abort();
    let _ = task.await;
    drop(store);

    o.delay_ms.store(0, Ordering::Relaxed);
    let store = Mutex::new(Store::open(dir.path(), 1 << 30).unwrap());
    let report = fetcher(256 << 10, 2).fetch_model(&store, &m).await.unwrap();
    assert!(report.resumed_bytes >= 8 * (256 << 10), "{report:?}");
    assert_eq!(report.resumed_bytes + report.fetched_bytes, m.bytes());
    let published = std::fs::read(dir.path().join("models/big/big.bin")).unwrap();
    assert_eq!(sha(&published), m.files[0].sha256);
    assert!(!progress.exists(), "progress record removed once published");
}

#[tokio::test]
async fn a_corrupted_byte_publishes_nothing() {
    let (o, base) = origin().await;
    let dir = tempfile::tempdir().unwrap();
    let store = Mutex::new(Store::open(dir.path(), 1 << 30).unwrap());
    let body = content(3 << 20, 3);
    let m = model(&o, &base, "m", &[("w.bin", body)]);
    o.files.lock().unwrap().get_mut("w.bin").unwrap()[1_234_567] ^= 0x01;
    let e = fetcher(1 << 20, 3).fetch_model(&store, &m).await.unwrap_err();
    assert!(matches!(e, CacheError::HashMismatch { .. }), "{e}");
    assert!(e.to_string().contains("m/w.bin") && e.to_string().contains(&m.files[0].sha256), "{e}");
    assert!(!dir.path().join("models/m").exists());
    assert_eq!(std::fs::read_dir(dir.path().join("blobs/sha256")).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(dir.path().join("partial")).unwrap().count(), 0, "the bad download is discarded");
}

#[tokio::test]
async fn a_broken_safetensors_header_publishes_nothing() {
    let (o, base) = origin().await;
    let dir = tempfile::tempdir().unwrap();
    let store = Mutex::new(Store::open(dir.path(), 1 << 30).unwrap());
    let mut file = safetensors_file();
    file.truncate(file.len() - 2); // the data section is now 2 bytes short of what the header says
    let m = model(&o, &base, "st", &[("model.safetensors", file)]);
    let e = fetcher(1 << 20, 2).fetch_model(&store, &m).await.unwrap_err();
    assert!(e.to_string().contains("st/model.safetensors: not a valid safetensors file"), "{e}");
    assert!(!dir.path().join("models/st").exists());
}

#[tokio::test]
async fn the_budget_evicts_unpinned_models_first_and_says_when_nothing_can_go() {
    let (o, base) = origin().await;
    let dir = tempfile::tempdir().unwrap();
    let store = Mutex::new(Store::open(dir.path(), 3 << 20).unwrap());
    let f = fetcher(1 << 20, 2);
    let a = model(&o, &base, "a", &[("a.bin", content(1 << 20, 10))]);
    let b = model(&o, &base, "b", &[("b.bin", content(1 << 20, 11))]);
    f.fetch_model(&store, &a).await.unwrap();
    f.fetch_model(&store, &b).await.unwrap();
    assert!(store.lock().unwrap().pin("a", "serving/chat-0", 16).unwrap() == gpuplane_cache::store::Pinned::Pinned);
    // a is older but pinned: b goes.
    let c = model(&o, &base, "c", &[("c.bin", content(3 << 19, 12))]);
    let report = f.fetch_model(&store, &c).await.unwrap();
    assert_eq!(report.evicted, ["b"]);
    assert!(dir.path().join("models/a/a.bin").exists() && !dir.path().join("models/b").exists());
    assert!(!store.lock().unwrap().has_blob(&b.files[0].sha256, b.files[0].size));
    // Now c can go but not a: 2.5 MiB does not fit beside a's 1 MiB.
    let d = model(&o, &base, "d", &[("d.bin", content(5 << 19, 13))]);
    let e = f.fetch_model(&store, &d).await.unwrap_err();
    assert!(matches!(e, CacheError::Budget { .. }), "{e}");
    assert!(e.to_string().contains("model d needs") && e.to_string().contains("pinned: a"), "{e}");
    assert!(dir.path().join("models/a/a.bin").exists(), "a pinned model is never evicted");
    assert!(dir.path().join("models/c/c.bin").exists(), "nor c, since evicting it would not make room");
}

#[tokio::test]
async fn two_concurrent_fetches_of_one_model_read_the_origin_once() {
    let (o, base) = origin().await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Mutex::new(Store::open(dir.path(), 1 << 30).unwrap()));
    let m = model(&o, &base, "shared", &[("w.bin", content(4 << 20, 5))]);
    o.delay_ms.store(5, Ordering::Relaxed);
    let f = fetcher(1 << 20, 2);
    let (s1, s2) = (Arc::clone(&store), Arc::clone(&store));
    let (m1, m2) = (m.clone(), m.clone());
    let (f1, f2) = (f.clone(), f.clone());
    let (r1, r2) = tokio::join!(
        tokio::spawn(async move { f1.fetch_model(&s1, &m1).await }),
        tokio::spawn(async move { f2.fetch_model(&s2, &m2).await })
    );
    let (r1, r2) = (r1.unwrap().unwrap(), r2.unwrap().unwrap());
    assert_eq!(r1.fetched_bytes + r2.fetched_bytes, m.bytes(), "{r1:?} {r2:?}");
    assert_eq!(o.served.load(Ordering::Relaxed), m.bytes());
}

#[tokio::test]
async fn a_missing_file_and_a_local_source() {
    let (o, base) = origin().await;
    let dir = tempfile::tempdir().unwrap();
    let store = Mutex::new(Store::open(dir.path().join("cache"), 1 << 30).unwrap());
    let mut m = model(&o, &base, "gone", &[("w.bin", content(1000, 6))]);
    o.files.lock().unwrap().clear();
    let e = fetcher(1 << 20, 2).fetch_model(&store, &m).await.unwrap_err();
    assert!(e.to_string().contains("/m/w.bin: HTTP 404"), "{e}");

    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    let body = content(3_000_001, 7);
    std::fs::write(src.join("sub/w.bin"), &body).unwrap();
    m = Manifest {
        model: "local".into(),
        source: Source::Local { dir: src.display().to_string() },
        files: vec![FileEntry { path: "sub/w.bin".into(), size: body.len() as u64, sha256: sha(&body) }],
    };
    fetcher(1 << 20, 3).fetch_model(&store, &m).await.unwrap();
    assert_eq!(std::fs::read(dir.path().join("cache/models/local/sub/w.bin")).unwrap(), body);
}

#[tokio::test]
async fn a_peer_that_fails_part_way_hands_over_to_the_origin() {
    let (o, base) = origin().await;
    let (peer, peer_base) = origin().await;
    let body = content(4 << 20, 11);
    let m = model(&o, &base, "m", &[("w.bin", body.clone())]);
    // The peer holds the blob but stops answering after 1.5 MiB (the one-byte probe included).
    peer.files.lock().unwrap().insert(format!("blobs/sha256/{}", m.files[0].sha256), body);
    peer.fail_after.store(3 << 19, Ordering::Relaxed);
    let dir = tempfile::tempdir().unwrap();
    let store = Mutex::new(Store::open(dir.path(), 1 << 30).unwrap());
    let fetcher = fetcher(1 << 19, 1).with_peers(vec![peer_base]);
    let report = fetcher.fetch_model(&store, &m).await.unwrap();
    assert_eq!(report.peer_bytes, 0, "the peer's read did not finish");
    let from_peer = peer.served.load(Ordering::Relaxed);
    assert!(from_peer > 1 && from_peer <= 3 << 19, "{from_peer}");
    assert_eq!(report.fetched_bytes + report.resumed_bytes, m.bytes(), "{report:?}");
    assert!(o.served.load(Ordering::Relaxed) < m.bytes(), "the origin resumed after what the peer gave");
    assert_eq!(
        std::fs::read(dir.path().join("models/m/w.bin")).unwrap(),
        std::fs::read(dir.path().join(format!("blobs/sha256/{}", m.files[0].sha256))).unwrap()
    );
}

#[tokio::test]
async fn two_models_fetched_at_once_never_overrun_the_budget_together() {
    let (o, base) = origin().await;
    o.delay_ms.store(20, Ordering::Relaxed);
    let dir = tempfile::tempdir().unwrap();
    let store = Mutex::new(Store::open(dir.path(), 3 << 20).unwrap());
    let f = fetcher(1 << 20, 2);
    let x = model(&o, &base, "x", &[("x.bin", content(2 << 20, 14))]);
    let y = model(&o, &base, "y", &[("y.bin", content(2 << 20, 15))]);
    let (rx, ry) = tokio::join!(f.fetch_model(&store, &x), f.fetch_model(&store, &y));
    let errors: Vec<String> = [rx.err(), ry.err()].into_iter().flatten().map(|e| e.to_string()).collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("reserved by fetches under way"), "{errors:?}");
    assert!(store.lock().unwrap().used_bytes() <= 3 << 20);
    // The reservation ends with the fetch: the other model fits once the first is evictable.
    let retry = if dir.path().join("models/x").exists() { &y } else { &x };
    let report = f.fetch_model(&store, retry).await.unwrap();
    assert_eq!(report.evicted.len(), 1);
}
