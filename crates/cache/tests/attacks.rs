//! The agent attacked as anything that reaches its port would: reading node files through a `local`
//! source, sending a credential to an attacker's origin, making the agent request internal addresses,
//! unpinning another pod's model, exhausting memory with blob streams, overflowing sizes, slow
//! clients, and a token reviewer that is down. Each test sends the request the attack needs and
//! checks that it is refused and that nothing happened.
#![allow(clippy::unwrap_used)] // Helpers too: a failed unwrap is a failed test, with its location.

mod support;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use gpuplane_cache::agent::{Agent, AgentConfig};
use gpuplane_cache::auth::{AuthError, AuthFuture, Authenticator};
use gpuplane_cache::{FileEntry, Manifest, Source, Store};
use support::{
    ADMIN, PEER, POD_A, POD_B, REMOTE_POD, SCHEDULER, agent_at, agent_config, content, model, origin, serve_agent, sha,
    test_fetcher,
};

fn post(http: &reqwest::Client, agent: &str, token: &str, body: String) -> reqwest::RequestBuilder {
    http.post(format!("{agent}/models")).bearer_auth(token).body(body)
}

#[tokio::test]
async fn no_file_of_the_node_can_be_read_through_a_local_source() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = agent_at(dir.path(), vec![], agent_config("gpu-a", &[])).await;
    let http = reqwest::Client::new();
    let environ = std::fs::read("/proc/self/environ").unwrap_or_default();
    let m = Manifest {
        model: "steal".into(),
        source: Source::Local { dir: "/proc/self".into() },
        files: vec![FileEntry { path: "environ".into(), size: environ.len() as u64, sha256: "0".repeat(64) }],
    };
    for token in [ADMIN, POD_A] {
        let r = post(&http, &a, token, serde_json::to_string(&m).unwrap()).send().await.unwrap();
        assert_eq!(r.status(), 403);
        let text = r.text().await.unwrap();
        assert!(text.contains("source.kind") && !text.contains(&sha(&environ)), "{text}");
    }
    // Nothing was read, so nothing is published or served under any digest.
    assert_eq!(std::fs::read_dir(dir.path().join("blobs/sha256")).unwrap().count(), 0);
    let blob = http.get(format!("{a}/blobs/sha256/{}", sha(&environ))).bearer_auth(PEER).send().await.unwrap();
    assert_eq!(blob.status(), 404);
    // And without a token nothing is served at all.
    let anonymous = http.get(format!("{a}/blobs/sha256/{}", sha(&environ))).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test]
async fn credentials_go_only_to_allowed_origins_and_only_from_allowed_variables() {
    // Whatever AWS_SECRET_ACCESS_KEY holds on the node, no request carrying it may leave: the
    // attacker's origin must see no request at all.
    let (attacker, attacker_base) = origin().await;
    let (o, base) = origin().await;
    let m = model(&o, &base, "m", &[("w.bin", content(10_000, 1))]);
    attacker.files.lock().unwrap().insert("w.bin".into(), content(10_000, 1));
    let dir = tempfile::tempdir().unwrap();
    let mut config = agent_config("gpu-a", &[&base]);
    config.token_envs = vec!["HF_TOKEN".into()];
    let (a, _) = agent_at(dir.path(), vec![], config).await;
    let http = reqwest::Client::new();

    // An attacker's origin, with the token from AWS_SECRET_ACCESS_KEY: refused before any request.
    let mut stolen = m.clone();
    stolen.source = Source::Http { base_url: attacker_base.clone(), token_env: Some("AWS_SECRET_ACCESS_KEY".into()) };
    let r = post(&http, &a, ADMIN, serde_json::to_string(&stolen).unwrap()).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("source.base_url"));
    // The allowed origin, but a variable not on the list: refused too.
    let mut other_var = m.clone();
    other_var.source = Source::Http { base_url: base.clone(), token_env: Some("AWS_SECRET_ACCESS_KEY".into()) };
    let r = post(&http, &a, ADMIN, serde_json::to_string(&other_var).unwrap()).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("source.token_env"));
    assert!(attacker.requests.lock().unwrap().is_empty(), "the attacker's origin was never asked");
    assert!(o.requests.lock().unwrap().is_empty(), "nor the real one, with the wrong variable");
    // An allowed variable to the allowed origin is fine.
    let mut fine = m.clone();
    fine.source = Source::Http { base_url: base.clone(), token_env: Some("HF_TOKEN".into()) };
    let r = post(&http, &a, ADMIN, serde_json::to_string(&fine).unwrap()).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn the_agent_requests_nothing_outside_its_allowed_origins() {
    let (internal, internal_base) = origin().await; // stands for the cloud metadata server or an admin API
    internal.files.lock().unwrap().insert("latest/meta-data".into(), b"role-credentials".to_vec());
    let (_o, base) = origin().await;
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = agent_at(dir.path(), vec![], agent_config("gpu-a", &[&format!("{base}/")])).await;
    let http = reqwest::Client::new();
    let host = base.trim_start_matches("http://").trim_end_matches("/m").to_owned();
    let internal_host = internal_base.trim_start_matches("http://").trim_end_matches("/m").to_owned();
    let tries = [
        internal_base.clone(),
        format!("http://{host}@{internal_host}/m"),
        format!("http://{host}/m/../../{internal_host}"),
        format!("http://{host}/m/%2e%2e/x"),
        format!("{base}-other"),
        format!("https://{host}/m"),
    ];
    for base_url in tries {
        let m = Manifest {
            model: "probe".into(),
            source: Source::Http { base_url: base_url.clone(), token_env: None },
            files: vec![FileEntry { path: "latest/meta-data".into(), size: 16, sha256: "0".repeat(64) }],
        };
        let r = post(&http, &a, ADMIN, serde_json::to_string(&m).unwrap()).send().await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        assert_eq!(status, 403, "{base_url}: {text}");
        assert!(!text.contains("role-credentials"), "{text}");
    }
    assert!(internal.requests.lock().unwrap().is_empty(), "no request reached the internal server");
    // S3 endpoints are origins too.
    let s3 = Manifest {
        model: "probe".into(),
        source: Source::S3 { bucket: "b".into(), prefix: String::new(), endpoint: Some(internal_base), region: None },
        files: vec![FileEntry { path: "x".into(), size: 1, sha256: "0".repeat(64) }],
    };
    let r = post(&http, &a, ADMIN, serde_json::to_string(&s3).unwrap()).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(internal.requests.lock().unwrap().is_empty());
}

#[tokio::test]
async fn only_the_pod_itself_or_a_writer_unpins_and_strangers_are_refused() {
    let (o, base) = origin().await;
    let m = model(&o, &base, "e1", &[("w.bin", content(50_000, 2))]);
    let dir = tempfile::tempdir().unwrap();
    let (a, agent) = agent_at(dir.path(), vec![], agent_config("gpu-a", &[&base])).await;
    let http = reqwest::Client::new();
    assert_eq!(post(&http, &a, POD_A, serde_json::to_string(&m).unwrap()).send().await.unwrap().status(), 200);
    let pin = |token: Option<&str>, pod: &str, delete: bool| {
        let url = format!("{a}/models/e1/pins/{}", pod.replace('/', "%2F"));
        let r = if delete { http.delete(url) } else { http.put(url) };
        let r = match token {
            Some(t) => r.bearer_auth(t),
            None => r,
        };
        async move { r.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(pin(Some(POD_A), "serving/pod-a", false).await, 204, "a pod pins for itself");
    assert_eq!(pin(None, "serving/pod-a", true).await, 401, "anonymous");
    assert_eq!(pin(Some("not-a-token-at-all-000"), "serving/pod-a", true).await, 401, "a made-up token");
    assert_eq!(pin(Some(POD_B), "serving/pod-a", true).await, 403, "another pod on the node");
    assert_eq!(pin(Some(REMOTE_POD), "serving/pod-a", true).await, 403, "a pod on another node");
    assert_eq!(pin(Some(PEER), "serving/pod-a", true).await, 403, "a peer agent");
    assert_eq!(pin(Some(SCHEDULER), "serving/pod-a", true).await, 403, "a reader");
    assert_eq!(agent.inventory().models[0].pinned_by, ["serving/pod-a"], "the pin survived");
    assert_eq!(pin(Some(POD_A), "serving/pod-a", true).await, 204, "the pod itself");
    assert_eq!(pin(Some(ADMIN), "serving/pod-b", false).await, 204, "a writer, for any pod");
    // A remote pod can neither read blobs nor prefetch here; the scheduler reads only the inventory.
    let blob = format!("{a}/blobs/sha256/{}", m.files[0].sha256);
    assert_eq!(http.get(&blob).bearer_auth(REMOTE_POD).send().await.unwrap().status(), 403);
    assert_eq!(http.get(&blob).bearer_auth(SCHEDULER).send().await.unwrap().status(), 403);
    assert_eq!(post(&http, &a, REMOTE_POD, "{}".into()).send().await.unwrap().status(), 403);
    assert_eq!(http.get(format!("{a}/models")).bearer_auth(SCHEDULER).send().await.unwrap().status(), 200);
    assert_eq!(http.get(format!("{a}/metrics")).send().await.unwrap().status(), 401);
    assert_eq!(http.get(format!("{a}/healthz")).send().await.unwrap().status(), 200, "probes need no token");
}

/// Resident memory of this process, bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_streams_are_bounded_in_number_memory_and_time() {
    let (o, base) = origin().await;
    let size = 64 << 20;
    let m = model(&o, &base, "big", &[("w.bin", content(size, 3))]);
    let dir = tempfile::tempdir().unwrap();
    let mut config = agent_config("gpu-a", &[&base]);
    config.max_streams = 8;
    config.send_timeout = Duration::from_secs(2);
    let (a, _) = agent_at(dir.path(), vec![], config).await;
    let http = reqwest::Client::new();
    assert_eq!(post(&http, &a, ADMIN, serde_json::to_string(&m).unwrap()).send().await.unwrap().status(), 200);
    let url = format!("{a}/blobs/sha256/{}", m.files[0].sha256);

    // Eight whole-blob reads whose readers take nothing: served as streams, not read into memory.
    let before = rss();
    let mut held = Vec::new();
    for _ in 0..8 {
        let r = http.get(&url).bearer_auth(PEER).send().await.unwrap();
        assert_eq!(r.status(), 200);
        held.push(r);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let grown = rss().saturating_sub(before);
    // Whole reads into memory took 8 × 64 MiB; streams take two 256 KiB pieces each (11 MiB measured
    // in all, with the connections' buffers). The bound leaves room for the other tests of this binary.
    assert!(grown < 128 << 20, "8 streams of a 64 MiB blob grew memory by {} MiB", grown >> 20);
    // A ninth is refused, not queued.
    let ninth = http.get(&url).bearer_auth(PEER).header("Range", "bytes=0-1023").send().await.unwrap();
    assert_eq!(ninth.status(), 503);
    assert!(ninth.headers().contains_key("retry-after"));
    let whole = http.get(&url).bearer_auth(PEER).send().await.unwrap();
    assert_eq!(whole.status(), 503, "a whole read is refused the same way");
    // Readers that take nothing for the send timeout lose their stream, and their slots come back.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = http.get(&url).bearer_auth(PEER).header("Range", "bytes=0-1023").send().await.unwrap();
    assert_eq!(again.status(), 206);
    assert_eq!(again.bytes().await.unwrap().len(), 1024);
    drop(held);
}

#[tokio::test]
async fn sizes_that_overflow_are_refused_and_the_agent_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (_o, base) = origin().await;
    let (a, _) = agent_at(dir.path(), vec![], agent_config("gpu-a", &[&base])).await;
    let http = reqwest::Client::new();
    let body = format!(
        r#"{{"model": "boom", "source": {{"kind": "http", "base_url": "{base}"}}, "files": [
            {{"path": "a", "size": {}, "sha256": "{z}"}}, {{"path": "b", "size": 2, "sha256": "{z}"}}]}}"#,
        u64::MAX,
        z = "0".repeat(64)
    );
    let r = post(&http, &a, ADMIN, body).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("files[0].size"));
    let body = format!(
        r#"{{"model": "boom", "source": {{"kind": "http", "base_url": "{base}"}}, "files": [
            {{"path": "a", "size": {}, "sha256": "{z}"}}, {{"path": "b", "size": {}, "sha256": "{z}"}}]}}"#,
        1u64 << 40,
        u64::MAX - (1 << 39),
        z = "0".repeat(64)
    );
    let r = post(&http, &a, ADMIN, body).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let big = "x".repeat(5 << 20);
    assert_eq!(post(&http, &a, ADMIN, big).send().await.unwrap().status(), 413);
    assert_eq!(http.get(format!("{a}/healthz")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn slow_and_idle_clients_are_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = agent_at(dir.path(), vec![], agent_config("gpu-a", &[])).await;
    let addr = a.trim_start_matches("http://").to_owned();
    let closed_within = |send: &'static [u8]| {
        let addr = addr.clone();
        move || {
            let mut s = std::net::TcpStream::connect(&addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(send).unwrap();
            let started = Instant::now();
            let mut buf = [0u8; 256];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => return started.elapsed(),
                    Ok(_) => {}
                    Err(e) => panic!("still open after {:?}: {e}", started.elapsed()),
                }
            }
        }
    };
    // Headers that never finish, and a connection that never sends anything.
    for send in [&b"GET /healthz HTTP/1.1\r\nHost: x\r\n"[..], &b""[..]] {
        let took = tokio::task::spawn_blocking(closed_within(send)).await.unwrap();
        assert!(took < Duration::from_secs(3), "closed after {took:?}");
    }
}

/// A reviewer that cannot reach the API server.
struct Down;

impl Authenticator for Down {
    fn authenticate<'a>(&'a self, _token: &'a str) -> AuthFuture<'a> {
        Box::pin(async { Err(AuthError("connection refused".into())) })
    }
}

#[tokio::test]
async fn when_tokens_cannot_be_checked_nothing_is_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::new(
        Store::open(dir.path(), 1 << 30).unwrap(),
        test_fetcher(vec![], "gpu-a"),
        AgentConfig { policy: agent_config("gpu-a", &[]).policy, ..AgentConfig::default() },
        Box::new(Down),
    );
    let a = serve_agent(agent).await;
    let http = reqwest::Client::new();
    let r = http.get(format!("{a}/models")).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let r = http.delete(format!("{a}/models/m/pins/p")).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(r.status(), 503);
}

// --- What an attacker's review found (issue 33), one test per attack. ---

/// Puts `body` on the origin under `path` (a path below the origin's base).
fn put(o: &support::Origin, path: &str, body: Vec<u8>) {
    o.files.lock().unwrap().insert(path.to_owned(), body);
}

fn manifest(model: &str, base_url: String, token_env: Option<&str>, size: u64, sha256: String) -> String {
    let m = Manifest {
        model: model.into(),
        source: Source::Http { base_url, token_env: token_env.map(Into::into) },
        files: vec![FileEntry { path: "w.bin".into(), size, sha256 }],
    };
    serde_json::to_string(&m).unwrap()
}

#[tokio::test]
async fn a_pod_cannot_read_a_private_model_with_the_nodes_credential() {
    let (o, base) = origin().await;
    let secret = content(300_000, 21);
    put(&o, "private/w.bin", secret.clone());
    put(&o, "public/w.bin", content(1000, 22));
    let dir = tempfile::tempdir().unwrap();
    let mut config = agent_config("gpu-a", &[&base]);
    config.token_envs = vec!["GPUPLANE_TEST_PRIVATE_TOKEN".into()];
    // The platform grants namespace `serving` the public models only.
    config.policy.grants[0].origin = format!("{base}/public");
    let (a, _) = agent_at(dir.path(), vec![], config).await;
    let http = reqwest::Client::new();
    let (size, digest) = (secret.len() as u64, sha(&secret));
    let private = format!("{base}/private");
    let token = Some("GPUPLANE_TEST_PRIVATE_TOKEN");

    // The administrator caches the private model.
    let r = post(&http, &a, ADMIN, manifest("private", private.clone(), token, size, digest.clone())).send().await;
    assert_eq!(r.unwrap().status(), 200);

    // A pod that knows only the URL learns nothing: wrong size, wrong digest, then both right.
    let o_before = o.served.load(std::sync::atomic::Ordering::Relaxed);
    for (size, digest) in [(1, digest.clone()), (size, "0".repeat(64)), (size, digest.clone())] {
        let r = post(&http, &a, POD_A, manifest("mine", private.clone(), token, size, digest)).send().await.unwrap();
        assert_eq!(r.status(), 403);
        let text = r.text().await.unwrap();
        assert!(!text.contains(&secret.len().to_string()) && !text.contains(&sha(&secret)), "{text}");
    }
    // Without the credential, or from the public origin claiming the private digest: still nothing.
    let r = post(&http, &a, POD_A, manifest("mine", private.clone(), None, size, digest.clone())).send().await;
    assert_eq!(r.unwrap().status(), 403);
    let r = post(&http, &a, POD_A, manifest("stolen", format!("{base}/public"), None, size, digest.clone())).send();
    let r = r.await.unwrap();
    assert_eq!(r.status(), 502, "the public origin was read and its bytes failed the claimed digest");
    let text = r.text().await.unwrap();
    assert!(!text.contains(&digest) && !text.contains(&size.to_string()), "{text}");
    assert!(!dir.path().join("models/stolen").exists(), "knowing a digest gives no bytes");
    assert_eq!(o.served.load(std::sync::atomic::Ordering::Relaxed) - o_before, 1000, "only the public file was read");
    // Nor is the private model visible, pinnable or readable to the pod.
    let inventory = http.get(format!("{a}/models")).bearer_auth(POD_A).send().await.unwrap().text().await.unwrap();
    assert!(!inventory.contains("private"), "{inventory}");
    let pin = http.put(format!("{a}/models/private/pins/serving%2Fpod-a")).bearer_auth(POD_A).send().await.unwrap();
    assert_eq!(pin.status(), 404);
    let blob = http.get(format!("{a}/blobs/sha256/{digest}")).bearer_auth(POD_A).send().await.unwrap();
    assert_eq!(blob.status(), 403);
    // A wrong digest on its own granted origin is named without the real one.
    let r = post(&http, &a, POD_A, manifest("pub", format!("{base}/public"), None, 1000, "0".repeat(64))).send();
    let text = r.await.unwrap().text().await.unwrap();
    assert!(text.contains("do not match") && !text.contains(&sha(&content(1000, 22))), "{text}");
}

#[tokio::test]
async fn redirects_are_followed_only_within_the_allowed_origins() {
    let (o, base) = origin().await;
    let (internal, internal_base) = origin().await;
    let body = content(50_000, 23);
    put(&internal, "w.bin", body.clone());
    put(&o, "elsewhere/w.bin", body.clone());
    o.redirects.lock().unwrap().insert("w.bin".into(), format!("{internal_base}/w.bin"));
    o.redirects.lock().unwrap().insert("moved/w.bin".into(), format!("{base}/elsewhere/w.bin"));
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = agent_at(dir.path(), vec![], agent_config("gpu-a", &[&base])).await;
    let http = reqwest::Client::new();
    let (size, digest) = (body.len() as u64, sha(&body));
    let r = post(&http, &a, ADMIN, manifest("m", base.clone(), None, size, digest.clone())).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert!(internal.requests.lock().unwrap().is_empty(), "the address outside the allowed origins was never asked");
    // A redirect that stays under the allowed origin is followed.
    let r = post(&http, &a, ADMIN, manifest("m", format!("{base}/moved"), None, size, digest)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(std::fs::read(dir.path().join("models/m/w.bin")).unwrap(), body);
}

#[tokio::test]
async fn an_oversized_request_evicts_nothing() {
    let (o, base) = origin().await;
    let m = model(&o, &base, "kept", &[("k.bin", content(1 << 20, 24))]);
    put(&o, "w.bin", content(4 << 20, 29));
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::new(
        Store::open(dir.path(), 3 << 20).unwrap(),
        test_fetcher(vec![], "gpu-a"),
        agent_config("gpu-a", &[&base]),
        Box::new(support::tokens()),
    );
    let a = serve_agent(agent).await;
    let http = reqwest::Client::new();
    assert_eq!(post(&http, &a, ADMIN, serde_json::to_string(&m).unwrap()).send().await.unwrap().status(), 200);
    let kept = || async {
        let inventory = http.get(format!("{a}/models")).bearer_auth(ADMIN).send().await.unwrap();
        let inventory: serde_json::Value = serde_json::from_slice(&inventory.bytes().await.unwrap()).unwrap();
        inventory["models"][0]["model"] == "kept" && dir.path().join("models/kept/k.bin").exists()
    };
    // 512 GiB claimed (under the 1 TiB cap per file) for a file the origin has at 4 MiB: refused when
    // the origin is asked for the size, before anything is evicted.
    let r = post(&http, &a, POD_A, manifest("huge", base.clone(), None, 512 << 30, "1".repeat(64))).send().await;
    let r = r.unwrap();
    assert_eq!(r.status(), 502);
    let text = r.text().await.unwrap();
    assert!(!text.contains(&(4u64 << 20).to_string()), "the real size is not told: {text}");
    assert!(kept().await, "nothing was evicted for a file the origin does not have at that size");
    // A real 4 MiB file in a 3 MiB store: it cannot fit even with everything evicted, so nothing is.
    let body = content(4 << 20, 29);
    let r = post(&http, &a, POD_A, manifest("big", base.clone(), None, body.len() as u64, sha(&body))).send().await;
    let r = r.unwrap();
    assert_eq!(r.status(), 507);
    assert!(!r.text().await.unwrap().contains("kept"), "a pod is not told other models' names");
    assert!(kept().await, "nothing was evicted for a model that could not fit");
}

#[tokio::test]
async fn a_fetch_of_other_bytes_under_the_same_digest_is_not_followed() {
    let (o, base) = origin().await;
    let real = content(4 << 20, 25);
    put(&o, "real/w.bin", real.clone());
    put(&o, "fake/w.bin", vec![0u8; real.len()]);
    o.delay_ms.store(150, std::sync::atomic::Ordering::Relaxed);
    let (dir_x, dir_y) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (x, _) = agent_at(dir_x.path(), vec![], agent_config("gpu-a", &[&base])).await;
    let (y, _) = agent_at(dir_y.path(), vec![x.clone()], agent_config("gpu-b", &[&base])).await;
    let http = reqwest::Client::new();
    let (size, digest) = (real.len() as u64, sha(&real));
    // A pod on node X announces a slow fetch of zeros claiming the real model's digest.
    let poison = post(&http, &x, POD_A, manifest("poison", format!("{base}/fake"), None, size, digest.clone())).send();
    let poison = tokio::spawn(poison);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Node Y's fetch of the real model does not follow it, and succeeds.
    let r = post(&http, &y, ADMIN, manifest("real", format!("{base}/real"), None, size, digest)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let report: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(report["peer_bytes"], 0, "{report}");
    assert_eq!(std::fs::read(dir_y.path().join("models/real/w.bin")).unwrap(), real);
    assert_eq!(poison.await.unwrap().unwrap().status(), 502);
}

#[tokio::test]
async fn a_peer_serving_other_bytes_is_checked_and_the_origin_read_afresh() {
    let (o, base) = origin().await;
    let (peer, peer_base) = origin().await;
    let body = content(3 << 20, 26);
    let m = model(&o, &base, "m", &[("w.bin", body.clone())]);
    // A peer that says it holds the blob and serves zeros.
    put(&peer, &format!("blobs/sha256/{}", m.files[0].sha256), vec![0u8; body.len()]);
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Mutex::new(Store::open(dir.path(), 1 << 30).unwrap());
    let report = test_fetcher(vec![peer_base], "gpu-a").fetch_model(&store, &m).await.unwrap();
    assert_eq!(report.peer_bytes, 0, "{report:?}");
    assert_eq!(std::fs::read(dir.path().join("models/m/w.bin")).unwrap(), body);
}

#[tokio::test]
async fn a_slow_origin_is_given_up_at_its_deadline() {
    let (o, base) = origin().await;
    let m = model(&o, &base, "m", &[("w.bin", content(200_000, 27))]);
    o.trickle.store(true, std::sync::atomic::Ordering::Relaxed);
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Mutex::new(Store::open(dir.path(), 1 << 30).unwrap());
    let config = gpuplane_cache::FetchConfig {
        chunk_bytes: 1 << 20,
        concurrency: 2,
        retries: 1,
        min_bytes_per_sec: 64 << 10,
        grace: Duration::from_secs(1),
    };
    let fetcher = gpuplane_cache::Fetcher::new(config, 8).unwrap();
    let started = Instant::now();
    let e = fetcher.fetch_model(&store, &m).await.unwrap_err();
    // Each try: 1 s plus 200,000 bytes at 64 KiB/s ≈ 4 s; one retry after 400 ms.
    assert!(started.elapsed() < Duration::from_secs(15), "gave up after {:?}: {e}", started.elapsed());
}

/// Latencies of `n` requests to the agent from 127.0.0.1, ten at a time, each on a new connection.
async fn legitimate_latencies(a: &str, n: usize) -> Vec<Duration> {
    let http = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 1]))
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let requests = (0..n).map(|i| {
        let (http, a) = (http.clone(), a.to_owned());
        async move {
            let started = Instant::now();
            let r = if i % 2 == 0 {
                http.get(format!("{a}/healthz")).send().await
            } else {
                http.get(format!("{a}/models")).bearer_auth(SCHEDULER).send().await
            };
            assert_eq!(r.unwrap().status(), 200);
            started.elapsed()
        }
    });
    let mut latencies: Vec<Duration> =
        futures::StreamExt::collect(futures::StreamExt::buffer_unordered(futures::stream::iter(requests), 10)).await;
    latencies.sort();
    latencies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_slowloris_from_one_address_starves_no_one_else() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::new(
        Store::open(dir.path(), 1 << 30).unwrap(),
        test_fetcher(vec![], "gpu-a"),
        agent_config("gpu-a", &[]),
        Box::new(support::tokens()),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = gpuplane_cache::agent::ServerLimits::default();
    tokio::spawn(gpuplane_cache::agent::serve(
        listener,
        gpuplane_cache::agent::router(agent),
        limits,
        std::future::pending(),
    ));
    let (tried, latencies) = under_slowloris(addr, &[[127, 0, 0, 2]], 1000).await;
    let p99 = latencies[98];
    eprintln!("slowloris: {tried} attacker connections; legitimate p50 {:?}, p99 {p99:?}", latencies[49]);
    assert!(tried > 1000, "the attack ran: {tried} connections");
    assert!(p99 < Duration::from_secs(1), "p99 {p99:?}");
}

/// Runs `sockets` slowloris sockets spread over `from` (half a header each, reconnecting as soon as closed,
/// on a thread of their own: another process, as it were) while 100 legitimate requests are made; the
/// attacker's connection count and the legitimate latencies, sorted.
async fn under_slowloris(addr: std::net::SocketAddr, from: &[[u8; 4]], sockets: usize) -> (u64, Vec<Duration>) {
    let from = from.to_vec();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let attempts = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (stop2, attempts2) = (stop.clone(), attempts.clone());
    let attacker = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let tasks: Vec<_> = (0..sockets)
                .map(|i| {
                    let (stop, attempts) = (stop2.clone(), attempts2.clone());
                    let ip = from[i % from.len()];
                    tokio::spawn(async move {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                            attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let socket = tokio::net::TcpSocket::new_v4().unwrap();
                            if socket.bind(std::net::SocketAddr::from((ip, 0))).is_err() {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                continue;
                            }
                            let Ok(mut s) = socket.connect(addr).await else {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                continue;
                            };
                            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await;
                            let mut buf = [0u8; 64];
                            let _ = tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf)).await;
                        }
                    })
                })
                .collect();
            for t in tasks {
                let _ = t.await;
            }
        });
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let latencies = legitimate_latencies(&format!("http://{addr}"), 100).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = tokio::task::spawn_blocking(move || attacker.join()).await;
    (attempts.load(std::sync::atomic::Ordering::Relaxed), latencies)
}

#[tokio::test]
async fn one_caller_cannot_hold_every_blob_stream() {
    let (o, base) = origin().await;
    let m = model(&o, &base, "m", &[("w.bin", content(8 << 20, 28))]);
    let dir = tempfile::tempdir().unwrap();
    let mut config = agent_config("gpu-a", &[&base]);
    config.max_streams = 12;
    config.max_streams_per_caller = 4;
    let (a, _) = agent_at(dir.path(), vec![], config).await;
    let http = reqwest::Client::new();
    assert_eq!(post(&http, &a, ADMIN, serde_json::to_string(&m).unwrap()).send().await.unwrap().status(), 200);
    let url = format!("{a}/blobs/sha256/{}", m.files[0].sha256);
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(http.get(&url).bearer_auth(PEER).send().await.unwrap());
    }
    assert_eq!(http.get(&url).bearer_auth(PEER).send().await.unwrap().status(), 503, "the peer is at its bound");
    let other = http.get(&url).bearer_auth(ADMIN).header("Range", "bytes=0-9").send().await.unwrap();
    assert_eq!(other.status(), 206, "another caller is still served");
    let pod = http.get(&url).bearer_auth(POD_A).send().await.unwrap();
    assert_eq!(pod.status(), 403, "pods read models from the store they mount, not from the agent");
    drop(held);
}

/// Counts token reviews.
struct Counting(gpuplane_cache::auth::StaticTokens, std::sync::Arc<std::sync::atomic::AtomicU64>);

impl Authenticator for Counting {
    fn authenticate<'a>(&'a self, token: &'a str) -> AuthFuture<'a> {
        self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.0.authenticate(token)
    }
}

#[tokio::test]
async fn bogus_tokens_cost_the_api_server_a_bounded_number_of_reviews() {
    let dir = tempfile::tempdir().unwrap();
    let reviews = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let agent = Agent::new(
        Store::open(dir.path(), 1 << 30).unwrap(),
        test_fetcher(vec![], "gpu-a"),
        agent_config("gpu-a", &[]),
        Box::new(Counting(support::tokens(), reviews.clone())),
    );
    let a = serve_agent(agent).await;
    let http = reqwest::Client::new();
    let started = Instant::now();
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..200 {
        let r = http.get(format!("{a}/models")).bearer_auth(format!("bogus-token-{i:06}-0123456789")).send().await;
        *statuses.entry(r.unwrap().status().as_u16()).or_insert(0) += 1;
    }
    let allowed = 20 + started.elapsed().as_secs() + 1;
    let n = reviews.load(std::sync::atomic::Ordering::Relaxed);
    assert!(n <= allowed, "{n} reviews for 200 bogus tokens in {:?}: {statuses:?}", started.elapsed());
    assert!(statuses.get(&429).copied().unwrap_or(0) > 100, "{statuses:?}");
}

#[tokio::test]
async fn pins_are_bounded_per_pod_and_die_with_their_pod() {
    let (o, base) = origin().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = agent_config("gpu-a", &[&base]);
    config.max_pins_per_pod = 3;
    let (a, agent) = agent_at(dir.path(), vec![], config).await;
    let http = reqwest::Client::new();
    for i in 0..4 {
        let m = model(&o, &base, &format!("m{i}"), &[(&format!("w{i}.bin"), content(1000, 30 + i))]);
        assert_eq!(post(&http, &a, POD_A, serde_json::to_string(&m).unwrap()).send().await.unwrap().status(), 200);
    }
    let pin = |model: &str| http.put(format!("{a}/models/{model}/pins/serving%2Fpod-a")).bearer_auth(POD_A).send();
    for i in 0..3 {
        assert_eq!(pin(&format!("m{i}")).await.unwrap().status(), 204);
    }
    let fourth = pin("m3").await.unwrap();
    assert_eq!(fourth.status(), 409);
    assert!(fourth.text().await.unwrap().contains("already pins 3"));
    // The pod is gone: the next check of the node's pods drops its pins.
    let listed_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 1;
    let dropped = agent.reconcile_pins(&["serving/pod-b".to_owned()].into(), listed_at).unwrap();
    assert_eq!(dropped.len(), 3, "{dropped:?}");
    let inventory: serde_json::Value = serde_json::from_slice(
        &http.get(format!("{a}/models")).bearer_auth(ADMIN).send().await.unwrap().bytes().await.unwrap(),
    )
    .unwrap();
    for m in inventory["models"].as_array().unwrap() {
        assert!(m["pinned_by"].as_array().unwrap().is_empty(), "{m}");
    }
}

// --- What the red team found after the first fixes. ---

#[tokio::test]
async fn a_wrong_size_for_a_stored_blob_removes_nothing() {
    let (o, base) = origin().await;
    let m = model(&o, &base, "shared", &[("w.bin", content(500_000, 50))]);
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = agent_at(dir.path(), vec![], agent_config("gpu-a", &[&base])).await;
    let http = reqwest::Client::new();
    assert_eq!(post(&http, &a, ADMIN, serde_json::to_string(&m).unwrap()).send().await.unwrap().status(), 200);
    let pin = http.put(format!("{a}/models/shared/pins/serving%2Fpod-b")).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(pin.status(), 204);
    // Same URL and digest, another size: refused, and the stored blob is left alone.
    let (digest, url) = (m.files[0].sha256.clone(), base.clone());
    for size in [499_999, 1 << 30] {
        let r = post(&http, &a, POD_A, manifest("mine", url.clone(), None, size, digest.clone())).send().await.unwrap();
        assert_eq!(r.status(), 502);
    }
    assert!(dir.path().join(format!("blobs/sha256/{digest}")).exists());
    let inventory = http.get(format!("{a}/models")).bearer_auth(ADMIN).send().await.unwrap().text().await.unwrap();
    assert!(inventory.contains("\"shared\""), "{inventory}");
}

#[tokio::test]
async fn a_pods_fetch_from_another_url_neither_stalls_nor_poisons_anothers() {
    let (o, base) = origin().await;
    let real = content(3 << 20, 51);
    put(&o, "real/w.bin", real.clone());
    put(&o, "fake/w.bin", vec![0u8; real.len()]);
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = agent_at(dir.path(), vec![], agent_config("gpu-a", &[&base])).await;
    let http = reqwest::Client::new();
    let (size, digest) = (real.len() as u64, sha(&real));
    // The pod's fetch of zeros under the real digest gets its first two 1 MiB ranges at once, then
    // trickles (a byte every 100 ms), and is abandoned: two ranges of zeros are recorded as done.
    o.trickle_from.store(2 << 20, std::sync::atomic::Ordering::Relaxed);
    o.trickle.store(true, std::sync::atomic::Ordering::Relaxed);
    let poison = post(&http, &a, POD_A, manifest("poison", format!("{base}/fake"), None, size, digest.clone()));
    let _ = poison.timeout(Duration::from_secs(2)).send().await;
    o.trickle.store(false, std::sync::atomic::Ordering::Relaxed);
    let partials = std::fs::read_dir(dir.path().join("partial")).unwrap().count();
    assert!(partials > 0, "the abandoned fetch left its partial download");
    // The administrator's fetch from the real URL neither waits for it nor resumes from its bytes.
    let started = Instant::now();
    let r = post(&http, &a, ADMIN, manifest("real", format!("{base}/real"), None, size, digest)).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert!(started.elapsed() < Duration::from_secs(10), "waited {:?}", started.elapsed());
    assert_eq!(std::fs::read(dir.path().join("models/real/w.bin")).unwrap(), real);
}

#[tokio::test]
async fn bytes_read_with_a_credential_are_not_given_to_a_request_without_it() {
    let (o, base) = origin().await;
    let secret = content(200_000, 52);
    put(&o, "w.bin", secret.clone());
    let dir = tempfile::tempdir().unwrap();
    let mut config = agent_config("gpu-a", &[&base]);
    config.token_envs = vec!["GPUPLANE_TEST_CREDENTIAL".into()];
    let (a, _) = agent_at(dir.path(), vec![], config).await;
    let http = reqwest::Client::new();
    let (size, digest) = (secret.len() as u64, sha(&secret));
    let cred = Some("GPUPLANE_TEST_CREDENTIAL");
    let r = post(&http, &a, ADMIN, manifest("private", base.clone(), cred, size, digest.clone())).send().await;
    assert_eq!(r.unwrap().status(), 200);
    let before = o.requests.lock().unwrap().len();
    // The pod's grant has no credential: its fetch goes to the origin without one, whatever is stored.
    let r = post(&http, &a, POD_A, manifest("mine", base.clone(), None, size, digest)).send().await.unwrap();
    let report: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(report["reused_bytes"], 0, "{report}");
    assert!(o.requests.lock().unwrap()[before..].iter().all(|(_, auth)| auth.is_none()));
    assert!(o.requests.lock().unwrap().len() > before, "the origin was asked");
}

#[tokio::test]
async fn a_pod_cannot_take_over_another_tenants_model_name() {
    let (o, base) = origin().await;
    let theirs = model(&o, &base, "llama@v1", &[("w.bin", content(1000, 53))]);
    put(&o, "mine/w.bin", content(1000, 54));
    let dir = tempfile::tempdir().unwrap();
    let mut config = agent_config("gpu-a", &[&base]);
    config.policy.grants[0].origin = format!("{base}/mine");
    let (a, _) = agent_at(dir.path(), vec![], config).await;
    let http = reqwest::Client::new();
    assert_eq!(post(&http, &a, ADMIN, serde_json::to_string(&theirs).unwrap()).send().await.unwrap().status(), 200);
    let mine = content(1000, 54);
    let r = post(&http, &a, POD_A, manifest("llama@v1", format!("{base}/mine"), None, 1000, sha(&mine))).send();
    assert_eq!(r.await.unwrap().status(), 409);
    assert_eq!(std::fs::read(dir.path().join("models/llama@v1/w.bin")).unwrap(), content(1000, 53));
}

#[tokio::test]
async fn a_known_token_is_served_from_an_address_locked_out_for_bogus_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = agent_at(dir.path(), vec![], agent_config("gpu-a", &[])).await;
    let http = reqwest::Client::new();
    assert_eq!(http.get(format!("{a}/models")).bearer_auth(SCHEDULER).send().await.unwrap().status(), 200);
    for i in 0..40 {
        let _ = http.get(format!("{a}/models")).bearer_auth(format!("bogus-token-{i:06}-0123456789")).send().await;
    }
    let bogus = http.get(format!("{a}/models")).bearer_auth("bogus-token-x-0123456789").send().await.unwrap();
    assert_eq!(bogus.status(), 429);
    assert_eq!(http.get(format!("{a}/models")).bearer_auth(SCHEDULER).send().await.unwrap().status(), 200);
}
