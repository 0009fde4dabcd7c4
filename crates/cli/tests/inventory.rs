//! The scheduler reads what a real cache agent serves: a model prefetched by the agent shows up in the
//! inventory `gpuplane_kube::inventory` reads over HTTP, and an agent that is not there is named.
#![allow(clippy::unwrap_used)] // Helpers too: a failed unwrap is a failed test, with its location.

use std::collections::HashMap;
use std::time::Duration;

use gpuplane_cache::agent::{Agent, AgentConfig, router};
use gpuplane_cache::auth::{Caller, Policy, StaticTokens};
use gpuplane_cache::manifest::{FileEntry, Manifest, Source};
use gpuplane_cache::{FetchConfig, Fetcher, Sha256, Store};
use gpuplane_kube::inventory;

const TOKEN: &str = "scheduler-token-0123456789";

#[tokio::test]
async fn the_scheduler_reads_the_models_a_cache_agent_holds() {
    let origin = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let bytes = vec![7u8; 300_000];
    std::fs::write(origin.path().join("weights.bin"), &bytes).unwrap();
    let mut sha = Sha256::default();
    sha.update(&bytes);
    let manifest = Manifest {
        model: "tiny@v1".into(),
        source: Source::Local { dir: origin.path().display().to_string() },
        files: vec![FileEntry { path: "weights.bin".into(), size: bytes.len() as u64, sha256: sha.hex() }],
    };
    let fetcher =
        Fetcher::new(FetchConfig { chunk_bytes: 1 << 16, concurrency: 2, retries: 0, ..Default::default() }, 2)
            .unwrap();
    // The scheduler's ServiceAccount reads the inventory by default; its token is checked.
    let scheduler =
        Caller { user: "system:serviceaccount:gpuplane-system:gpuplane-scheduler".into(), ..Caller::default() };
    let tokens = StaticTokens::new([(TOKEN.to_owned(), scheduler.clone())]);
    let config = AgentConfig {
        policy: Policy { readers: [scheduler.user].into(), ..Policy::default() },
        ..AgentConfig::default()
    };
    let agent = Agent::new(Store::open(cache.path(), 1 << 30).unwrap(), fetcher, config, Box::new(tokens));
    agent.prefetch(&manifest).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router(agent)).await.unwrap() });

    let models = inventory::fetch(addr, Duration::from_secs(5), Some(TOKEN)).await.unwrap();
    assert_eq!(models, HashMap::from([("tiny@v1".to_owned(), 300_000)]));
    let refused = inventory::fetch(addr, Duration::from_secs(5), None).await.unwrap_err();
    assert!(refused.to_string().contains("401"), "{refused}");

    // The round reads every agent; one that does not answer is left out and named.
    let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let agents =
        [inventory::Agent { node: "gpu-a".into(), addr }, inventory::Agent { node: "gpu-b".into(), addr: gone }];
    let (inventories, failed) = inventory::fetch_all(&agents, Duration::from_secs(5), Some(TOKEN)).await;
    assert_eq!(inventories.nodes(), 1);
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].0.node, "gpu-b");
    assert!(failed[0].1.to_string().contains(&gone.to_string()), "{}", failed[0].1);
}
