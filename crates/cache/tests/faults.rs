//! The store through ordinary faults and tampering: a full disk (a real 8 MiB tmpfs), symlinks
//! planted where blobs and partial downloads belong, a flipped byte in a stored blob, names that
//! could collide with staging, two processes sharing one root, a corrupt index, an origin without
//! Range support or whose body breaks off, paths that need encoding, and what failed fetches leave.
//! In every case the store stays usable and nothing corrupt is published or served.
#![allow(clippy::unwrap_used)] // Helpers too: a failed unwrap is a failed test, with its location.

mod support;

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gpuplane_cache::{CacheError, FetchConfig, Fetcher, Store};
use support::{ADMIN, PEER, agent_at, agent_config, content, model, origin};

fn fetcher() -> Fetcher {
    Fetcher::new(FetchConfig { chunk_bytes: 1 << 20, concurrency: 2, retries: 1, ..Default::default() }, 8).unwrap()
}

/// An 8 MiB tmpfs mounted for one test (the tests run as root in CI), unmounted when dropped.
struct Tmpfs(PathBuf, #[allow(dead_code)] tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fs");
        std::fs::create_dir(&path).unwrap();
        let status =
            Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(&path).status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "mounting a tmpfs needs root (or CAP_SYS_ADMIN): run the tests as CI does, as root"
        );
        Tmpfs(path, dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_full_disk_refuses_clearly_gives_its_space_back_and_the_store_stays_usable() {
    let fs = Tmpfs::mount("8m");
    let root = fs.0.join("cache");
    let (o, base) = origin().await;
    // The budget says 1 GiB; the file system has 8 MiB: the store believes the file system.
    let store = Mutex::new(Store::open(&root, 1 << 30).unwrap());
    let too_big = model(&o, &base, "too-big", &[("w.bin", content(12 << 20, 1))]);
    let e = fetcher().fetch_model(&store, &too_big).await.unwrap_err();
    assert!(matches!(e, CacheError::Budget { .. }), "{e}");
    let text = e.to_string();
    assert!(text.contains("model too-big needs") && text.contains("less when the disk has less room"), "{text}");
    assert!(!text.contains("[]"), "{text}");
    assert_eq!(o.served.load(Ordering::Relaxed), 0, "refused before reading anything");

    // The disk fills up during a fetch (another writer on the node): the fetch fails naming the
    // cause, and its partial download is removed rather than left to block the next fetch.
    o.delay_ms.store(300, Ordering::Relaxed);
    let fits = model(&o, &base, "fits", &[("w.bin", content(5 << 20, 2))]);
    let filler = fs.0.join("filler");
    let (f, s) = (fetcher(), &store);
    let fetch = f.fetch_model(s, &fits);
    let fill = async {
        // Once the fetch has room and has begun (its partial download exists), while its ranges are read.
        let partial = root.join("partial");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::fs::read_dir(&partial).unwrap().next().is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = std::fs::write(&filler, vec![1u8; 6 << 20]);
    };
    let (result, ()) = tokio::join!(fetch, fill);
    let e = result.unwrap_err();
    assert!(e.to_string().contains("No space left on device"), "{e}");
    let partial: Vec<_> = std::fs::read_dir(root.join("partial")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(partial.is_empty(), "{partial:?}");
    assert_eq!(store.lock().unwrap().stray_bytes(), 0);

    // Space back: the same fetch succeeds.
    std::fs::remove_file(&filler).unwrap();
    o.delay_ms.store(0, Ordering::Relaxed);
    fetcher().fetch_model(&store, &fits).await.unwrap();
    assert_eq!(std::fs::read(root.join("models/fits/w.bin")).unwrap(), content(5 << 20, 2));
}

fn chmod_writable(path: &Path) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

#[tokio::test]
async fn planted_symlinks_are_never_followed_served_or_written_through() {
    let (o, base) = origin().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, b"node credentials").unwrap();
    let body = content(3 << 20, 3);
    let m = model(&o, &base, "m", &[("w.bin", body.clone())]);
    let digest = &m.files[0].sha256;
    let root = dir.path().join("cache");
    let store = Mutex::new(Store::open(&root, 1 << 30).unwrap());

    // A symlink at the partial download's place: not followed, the target not truncated.
    let source = gpuplane_cache::fetch::source_id(&m.source, &m.files[0].path).unwrap();
    let partial = store.lock().unwrap().partial_path(digest, &source).with_extension("part");
    std::os::unix::fs::symlink(&secret, partial).unwrap();
    fetcher().fetch_model(&store, &m).await.unwrap();
    assert_eq!(std::fs::read(&secret).unwrap(), b"node credentials");
    assert_eq!(std::fs::read(root.join("models/m/w.bin")).unwrap(), body);

    // A symlink in place of the blob: not reused ("already stored") and not served to peers.
    let blob = root.join(format!("blobs/sha256/{digest}"));
    std::fs::remove_file(&blob).unwrap();
    std::os::unix::fs::symlink(&secret, &blob).unwrap();
    drop(store);
    let (a, _) = agent_at(&root, vec![], agent_config("gpu-a", &[&base])).await;
    let http = reqwest::Client::new();
    let served = http.get(format!("{a}/blobs/sha256/{digest}")).bearer_auth(PEER).send().await.unwrap();
    assert_eq!(served.status(), 404);
    let r = http.post(format!("{a}/models")).bearer_auth(ADMIN).body(serde_json::to_string(&m).unwrap());
    let r: serde_json::Value = serde_json::from_slice(&r.send().await.unwrap().bytes().await.unwrap()).unwrap();
    assert_eq!(r["fetched_bytes"], m.bytes(), "fetched again, not reused: {r}");
    assert!(!std::fs::symlink_metadata(&blob).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read(root.join("models/m/w.bin")).unwrap(), body);
    assert_eq!(std::fs::read(&secret).unwrap(), b"node credentials");
}

#[tokio::test]
async fn a_flipped_byte_is_found_before_reuse_and_before_serving() {
    let (o, base) = origin().await;
    let dir = tempfile::tempdir().unwrap();
    let body = content(2 << 20, 4);
    let m = model(&o, &base, "m", &[("w.bin", body.clone())]);
    let (a, agent) = agent_at(dir.path(), vec![], agent_config("gpu-a", &[&base])).await;
    let http = reqwest::Client::new();
    let post = |m: &gpuplane_cache::Manifest| {
        http.post(format!("{a}/models")).bearer_auth(ADMIN).body(serde_json::to_string(m).unwrap()).send()
    };
    assert_eq!(post(&m).await.unwrap().status(), 200);
    let blob = dir.path().join(format!("blobs/sha256/{}", m.files[0].sha256));
    let flip = || {
        chmod_writable(&blob);
        let mut bytes = std::fs::read(&blob).unwrap();
        bytes[1_000_000] ^= 0x40;
        std::fs::write(&blob, bytes).unwrap();
    };
    flip();
    // Served to a peer: no, it is hashed again first (it changed since it was verified) and removed.
    let url = format!("{a}/blobs/sha256/{}", m.files[0].sha256);
    assert_eq!(http.get(&url).bearer_auth(PEER).send().await.unwrap().status(), 404);
    // The agent fetches the damaged model again by itself, from the source it recorded.
    let deadline = Instant::now() + Duration::from_secs(20);
    while o.served.load(Ordering::Relaxed) < 2 * m.bytes() || !blob.exists() {
        assert!(Instant::now() < deadline, "the damaged model was not fetched again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(std::fs::read(dir.path().join("models/m/w.bin")).unwrap(), body, "the model healed");
    // Another model with the same file reuses the healed blob.
    let twin = model(&o, &base, "twin", &[("copy.bin", body.clone())]);
    let r: serde_json::Value = serde_json::from_slice(&post(&twin).await.unwrap().bytes().await.unwrap()).unwrap();
    assert_eq!(r["reused_bytes"], twin.bytes(), "{r}");

    // The periodic re-hash finds corruption that left no trace in the file's times: here the store
    // is told the flipped file is the verified one (as bit rot would leave it), through a second
    // handle on the root.
    flip();
    let stamp = gpuplane_cache::store::Stamp::of(&std::fs::metadata(&blob).unwrap());
    Store::open(dir.path(), 1 << 30).unwrap().mark_verified(&m.files[0].sha256, stamp).unwrap();
    let removed = agent.rehash().await;
    assert_eq!(removed, [m.files[0].sha256.clone()]);
    let metrics = http.get(format!("{a}/metrics")).bearer_auth(ADMIN).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("gpuplane_cache_corrupt_blobs_total 2"), "{metrics}");
}

#[tokio::test]
async fn names_cannot_collide_with_staging_and_debris_is_collected() {
    let (o, base) = origin().await;
    let dir = tempfile::tempdir().unwrap();
    let store = Mutex::new(Store::open(dir.path(), 1 << 30).unwrap());
    for name in [".m.old", ".staging-m", "."] {
        let bad = model(&o, &base, name, &[("w.bin", content(10, 5))]);
        let e = fetcher().fetch_model(&store, &bad).await.unwrap_err();
        assert!(e.to_string().contains("field `model`"), "{name}: {e}");
    }
    // A model with files x and x/y is refused whole: no staging debris.
    let clash = model(&o, &base, "clash", &[("x", content(10, 6)), ("x/y", content(10, 7))]);
    let e = fetcher().fetch_model(&store, &clash).await.unwrap_err();
    assert!(e.to_string().contains("files[1].path"), "{e}");
    // Debris from a crash (staging left behind, a model directory the index does not know) goes at
    // the next collection; a real model stays.
    let m = model(&o, &base, "m", &[("w.bin", content(1000, 8))]);
    fetcher().fetch_model(&store, &m).await.unwrap();
    std::fs::create_dir_all(dir.path().join("models/.staging-m/sub")).unwrap();
    std::fs::create_dir_all(dir.path().join("models/ghost")).unwrap();
    let report = store.lock().unwrap().collect_garbage(Duration::from_secs(3600), &HashSet::new()).unwrap();
    assert_eq!(report.dirs, 2, "{report:?}");
    let left: Vec<_> = std::fs::read_dir(dir.path().join("models")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(left, ["m"]);
}

#[tokio::test]
async fn relinking_a_model_never_leaves_it_missing() {
    let (o, base) = origin().await;
    let dir = tempfile::tempdir().unwrap();
    let store = Mutex::new(Store::open(dir.path(), 1 << 30).unwrap());
    let v1 = model(&o, &base, "m", &[("w.bin", content(1000, 9))]);
    let mut v2 = model(&o, &base, "m", &[("w2.bin", content(1000, 10))]);
    v2.files.extend(v1.files.clone());
    fetcher().fetch_model(&store, &v1).await.unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watched = dir.path().join("models/m/w.bin");
    let (s, w) = (Arc::clone(&stop), watched.clone());
    let watcher = std::thread::spawn(move || {
        let mut misses = 0;
        while !s.load(Ordering::Relaxed) {
            if std::fs::metadata(&w).is_err() {
                misses += 1;
            }
        }
        misses
    });
    for i in 0..50 {
        let m = if i % 2 == 0 { &v2 } else { &v1 };
        fetcher().fetch_model(&store, m).await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    assert_eq!(watcher.join().unwrap(), 0, "models/m/w.bin was missing during a swap");
}

#[tokio::test]
async fn two_processes_sharing_a_root_lose_no_index_update() {
    let (o, base) = origin().await;
    let dir = tempfile::tempdir().unwrap();
    // Two stores opened separately stand for two processes: separate files, separate locks.
    let one = Mutex::new(Store::open(dir.path(), 1 << 30).unwrap());
    let two = Mutex::new(Store::open(dir.path(), 1 << 30).unwrap());
    let models: Vec<_> = (0..6)
        .map(|i| model(&o, &base, &format!("m{i}"), &[(&format!("{i}.bin"), content(300_000, 20 + i))]))
        .collect();
    let (f1, f2) = (fetcher(), fetcher());
    let first = async {
        for m in models.iter().step_by(2) {
            f1.fetch_model(&one, m).await.unwrap();
        }
    };
    let second = async {
        for m in models.iter().skip(1).step_by(2) {
            f2.fetch_model(&two, m).await.unwrap();
        }
    };
    tokio::join!(first, second);
    one.lock().unwrap().pin("m1", "ns/a", 16).unwrap();
    two.lock().unwrap().pin("m0", "ns/b", 16).unwrap();
    let fresh = Store::open(dir.path(), 1 << 30).unwrap();
    let names: Vec<_> = fresh.models().keys().cloned().collect();
    assert_eq!(names, ["m0", "m1", "m2", "m3", "m4", "m5"]);
    assert!(fresh.models()["m1"].pinned_by.contains("ns/a") && fresh.models()["m0"].pinned_by.contains("ns/b"));
}

#[tokio::test]
async fn a_corrupt_index_is_rebuilt_from_the_models_and_their_blobs() {
    let (o, base) = origin().await;
    let dir = tempfile::tempdir().unwrap();
    let m = model(&o, &base, "m", &[("a/w.bin", content(200_000, 30)), ("c.json", content(100, 31))]);
    {
        let store = Mutex::new(Store::open(dir.path(), 1 << 30).unwrap());
        fetcher().fetch_model(&store, &m).await.unwrap();
    }
    std::fs::write(dir.path().join("index.json"), b"{\"models\": {\"m\": [tru").unwrap();
    let store = Mutex::new(Store::open(dir.path(), 1 << 30).unwrap());
    assert!(dir.path().join("index.json.corrupt").exists());
    {
        let s = store.lock().unwrap();
        assert_eq!(s.models()["m"].bytes(), m.bytes());
        assert_eq!(s.used_bytes(), m.bytes());
    }
    // The blobs are hashed again before reuse (no stamps survived) and reused.
    let served = o.served.load(Ordering::Relaxed);
    let r = fetcher().fetch_model(&store, &m).await.unwrap();
    assert_eq!((r.reused_bytes, o.served.load(Ordering::Relaxed)), (m.bytes(), served));
}

#[tokio::test]
async fn an_origin_without_range_is_read_as_one_stream_and_a_cut_body_is_named() {
    let (o, base) = origin().await;
    o.ignore_range.store(true, Ordering::Relaxed);
    let dir = tempfile::tempdir().unwrap();
    let store = Mutex::new(Store::open(dir.path(), 1 << 30).unwrap());
    let body = content((5 << 20) + 77, 40);
    // A path that must be percent-encoded on the wire.
    let m = model(&o, &base, "m", &[("sub dir/w#1?.bin", body.clone())]);
    let r = fetcher().fetch_model(&store, &m).await.unwrap();
    assert_eq!(r.fetched_bytes, m.bytes());
    assert_eq!(std::fs::read(dir.path().join("models/m/sub dir/w#1?.bin")).unwrap(), body);
    assert!(o.requests.lock().unwrap().iter().all(|(p, _)| p == "sub dir/w#1?.bin"));

    o.truncate_to.store(1 << 20, Ordering::Relaxed);
    let cut = model(&o, &base, "cut", &[("c.bin", content(3 << 20, 41))]);
    let e = fetcher().fetch_model(&store, &cut).await.unwrap_err();
    let text = e.to_string();
    assert!(text.contains("broke off after") || text.contains("truncated"), "{text}");
    assert!(text.contains(&format!("of {} bytes", 3 << 20)), "{text}");
}

#[tokio::test]
async fn what_a_failed_fetch_leaves_is_counted_reused_and_collected() {
    let (o, base) = origin().await;
    let dir = tempfile::tempdir().unwrap();
    let store = Mutex::new(Store::open(dir.path(), 1 << 30).unwrap());
    let mut m = model(&o, &base, "m", &[("a.bin", content(1 << 20, 50)), ("b.bin", content(1 << 20, 51))]);
    // The origin fails after a.bin (its size checks pass): b.bin's read fails.
    o.fail_after.store((1 << 20) + 1, Ordering::Relaxed);
    let e = fetcher().fetch_model(&store, &m).await.unwrap_err();
    assert!(e.to_string().contains("HTTP 503"), "{e}");
    assert!(!store.lock().unwrap().models().contains_key("m"), "no half model in the index");
    let stray = store.lock().unwrap().stray_bytes();
    assert!(
        (1 << 20..(1 << 20) + 16384).contains(&stray),
        "a.bin (and b.bin's empty partial) count as strays: {stray}"
    );
    // A retry reuses what the failed fetch published.
    o.fail_after.store(0, Ordering::Relaxed);
    let r = fetcher().fetch_model(&store, &m).await.unwrap();
    assert_eq!(r.reused_bytes, 1 << 20);
    // A failure whose leftovers nobody wants: collected (here at once; the agent waits --stale-after-hours).
    m.model = "n".into();
    // b.bin under a digest it does not have: read, and refused when its hash is known.
    m.files[1] = gpuplane_cache::FileEntry { path: "b.bin".into(), size: 1 << 20, sha256: "1".repeat(64) };
    m.files[0] = gpuplane_cache::FileEntry { path: "d.bin".into(), size: 5, sha256: support::sha(&content(5, 52)) };
    o.files.lock().unwrap().insert("d.bin".into(), content(5, 52));
    fetcher().fetch_model(&store, &m).await.unwrap_err();
    assert!(store.lock().unwrap().stray_bytes() >= 4096, "d.bin's one block");
    let report = store.lock().unwrap().collect_garbage(Duration::ZERO, &HashSet::new()).unwrap();
    assert_eq!((report.blobs, store.lock().unwrap().stray_bytes()), (1, 0), "{report:?}");
    assert!(dir.path().join("models/m/b.bin").exists(), "the good model is untouched");
}

#[tokio::test]
async fn listing_a_store_writes_nothing() {
    let (o, base) = origin().await;
    let dir = tempfile::tempdir().unwrap();
    let m = model(&o, &base, "m", &[("w.bin", content(1000, 60))]);
    fetcher().fetch_model(&Mutex::new(Store::open(dir.path(), 1 << 30).unwrap()), &m).await.unwrap();
    let index = dir.path().join("index.json");
    let before = std::fs::metadata(&index).unwrap().modified().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let mut store = Store::open(dir.path(), u64::MAX).unwrap();
    store.refresh().unwrap();
    assert_eq!(store.models()["m"].bytes(), 1000);
    assert_eq!(std::fs::metadata(&index).unwrap().modified().unwrap(), before, "opening and reading saved nothing");
}

#[tokio::test]
async fn a_change_the_index_could_not_save_did_not_happen() {
    let (o, base) = origin().await;
    let m = model(&o, &base, "m", &[("w.bin", content(10_000, 40))]);
    let dir = tempfile::tempdir().unwrap();
    let store = Mutex::new(Store::open(dir.path(), 1 << 30).unwrap());
    fetcher().fetch_model(&store, &m).await.unwrap();
    // The index cannot be written (a directory where its temporary file goes): the pin fails…
    let blocker = dir.path().join(".index.json.tmp");
    std::fs::create_dir(&blocker).unwrap();
    assert!(store.lock().unwrap().pin("m", "ns/p", 16).is_err());
    std::fs::remove_dir(&blocker).unwrap();
    // …and is not in effect, in this process or on disk after the next change.
    assert!(store.lock().unwrap().models()["m"].pinned_by.is_empty());
    store.lock().unwrap().touch("m").unwrap();
    assert!(Store::open(dir.path(), 1 << 30).unwrap().models()["m"].pinned_by.is_empty());
}

#[tokio::test]
async fn a_blob_that_fails_takes_its_model_out_of_the_inventory_at_once() {
    let (o, base) = origin().await;
    let m = model(&o, &base, "m", &[("w.bin", content(10_000, 41)), ("c.json", content(100, 42))]);
    let dir = tempfile::tempdir().unwrap();
    let store = Mutex::new(Store::open(dir.path(), 1 << 30).unwrap());
    fetcher().fetch_model(&store, &m).await.unwrap();
    assert!(store.lock().unwrap().models()["m"].is_ready());
    store.lock().unwrap().discard_blob(&m.files[0].sha256).unwrap();
    {
        let s = store.lock().unwrap();
        assert!(!s.models()["m"].is_ready(), "not advertised while a blob is missing");
        assert_eq!(s.damaged(), vec![m.clone()], "and known to be fetched again, from its recorded source");
    }
    fetcher().fetch_model(&store, &m).await.unwrap();
    assert!(store.lock().unwrap().models()["m"].is_ready());
}
