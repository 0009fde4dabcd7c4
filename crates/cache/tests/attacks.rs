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
