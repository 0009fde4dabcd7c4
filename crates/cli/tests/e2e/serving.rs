//! The serving policy on the real control plane: `gpuplane scheduler --serving-priority` keeps a batch pod
//! off the fast GPU model while a slower GPU fits it, holds the next one out of the headroom kept for an
//! interactive replica (and says so on the pod), lets it in once the replica is gone, and once every GPU is
//! held an interactive replica claims a young batch pod's fast GPU back through the Eviction API.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;

use crate::support::*;

/// Three one-GPU kwok nodes set apart by a label and a taint: `serve-a-fast` and `serve-c-fast` (H100) and
/// `serve-b-slow` (A10); priority classes for batch (1000) and interactive (100000) pods.
pub async fn the_serving_policy_keeps_headroom_and_claims_fast_gpus(plane: &ControlPlane, client: &Client) {
    let nodes: Api<Node> = Api::all(client.clone());
    for (name, product) in [("serve-a-fast", "H100"), ("serve-b-slow", "A10"), ("serve-c-fast", "H100")] {
        let node = pool_gpu_node(name, "serve", product);
        nodes.create(&PostParams::default(), &node).await.unwrap();
    }
    // Until kwok reports a node Ready it carries the not-ready taint, and no pod may go there: the first
    // placement below is only a test of the policy once all three can take it.
    wait_for("the three serve nodes Ready and untainted", Duration::from_secs(60), || async {
        let list = nodes.list(&ListParams::default().labels("e2e/pool=serve")).await.unwrap();
        list.items.len() == 3
            && list.items.iter().all(|n| {
                let ready = n
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                let taints = n.spec.as_ref().and_then(|s| s.taints.as_ref()).map_or(&[][..], Vec::as_slice);
                ready && taints.iter().all(|t| t.key == "e2e/serve")
            })
    })
    .await;
    let classes: Api<k8s_openapi::api::scheduling::v1::PriorityClass> = Api::all(client.clone());
    for (name, value) in [("e2e-serve-batch", 1000), ("e2e-serve-interactive", 100_000)] {
        let class = serde_json::from_value(json!({"metadata": {"name": name}, "value": value})).unwrap();
        classes.create(&PostParams::default(), &class).await.unwrap();
    }
    restricted_namespace(client, "serve").await;
    let pod = |name: &str, class: &str| -> Pod {
        let mut pod = pool_gpu_pod(name, "serve", class);
        pod.metadata.annotations.get_or_insert_default().insert("gpuplane.io/model".into(), "chat@v1".into());
        pod
    };
    // The scheduler's log stays for a failed run to be read.
    let log = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-serving-scheduler.log");
    let mut scheduler = gpuplane(plane, &log);
    scheduler.env("RUST_LOG", "info,gpuplane_kube=debug");
    scheduler.args(SCHEDULER).args(["--lease-name", "", "--serving-priority", "100000", "--fast-gpu-models", "H100"]);
    let _scheduler = Running::spawn(scheduler);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "serve");
    let node_of = |name: &'static str| {
        let pods = pods.clone();
        async move { pods.get_opt(name).await.unwrap().and_then(|p| p.spec.and_then(|s| s.node_name)) }
    };

    // A batch pod goes to the slow GPU, though the fast node sorts first and fits it.
    pods.create(&PostParams::default(), &pod("train-1", "e2e-serve-batch")).await.unwrap();
    wait_for("train-1 bound", Duration::from_secs(60), || async { node_of("train-1").await.is_some() }).await;
    assert_eq!(node_of("train-1").await.as_deref(), Some("serve-b-slow"), "batch kept off the fast GPUs");
    // An interactive replica takes a fast GPU.
    pods.create(&PostParams::default(), &pod("chat-1", "e2e-serve-interactive")).await.unwrap();
    wait_for("chat-1 bound", Duration::from_secs(60), || async { node_of("chat-1").await.is_some() }).await;
    assert_eq!(node_of("chat-1").await.as_deref(), Some("serve-a-fast"));
    // The last fast GPU is the headroom of one replica (1 × √1) kept for chat: a second batch pod waits, told why.
    pods.create(&PostParams::default(), &pod("train-2", "e2e-serve-batch")).await.unwrap();
    let told = || async {
        let p = pods.get("train-2").await.unwrap();
        let conditions = p.status.and_then(|s| s.conditions).unwrap_or_default();
        conditions.iter().any(|c| {
            c.type_ == "PodScheduled"
                && c.status == "False"
                && c.message.as_deref().is_some_and(|m| m.contains("headroom"))
        })
    };
    wait_for("train-2 told it waits for the serving headroom", Duration::from_secs(60), told).await;
    assert_eq!(node_of("train-2").await, None);
    // The replica goes (scaled down): no headroom is kept, the batch pod backfills the fast GPU.
    let now = DeleteParams { grace_period_seconds: Some(0), ..Default::default() };
    pods.delete("chat-1", &now).await.unwrap();
    wait_for("train-2 bound once chat-1 is gone", Duration::from_secs(60), || async {
        node_of("train-2").await.is_some()
    })
    .await;
    assert!(node_of("train-2").await.is_some_and(|n| n.ends_with("-fast")));
    // With no replica left, a third batch pod takes the other fast GPU: every GPU is held.
    pods.create(&PostParams::default(), &pod("train-3", "e2e-serve-batch")).await.unwrap();
    wait_for("train-3 bound", Duration::from_secs(60), || async { node_of("train-3").await.is_some() }).await;
    // A new replica finds no GPU free: it claims a fast GPU back from a young batch pod, not the slow one.
    let train_2_node = node_of("train-2").await.unwrap();
    pods.create(&PostParams::default(), &pod("chat-2", "e2e-serve-interactive")).await.unwrap();
    wait_for("chat-2 bound", Duration::from_secs(90), || async { node_of("chat-2").await.is_some() }).await;
    let chat_2_node = node_of("chat-2").await.unwrap();
    assert!(chat_2_node.ends_with("-fast"), "chat-2 on {chat_2_node}");
    let list = pods.list(&ListParams::default()).await.unwrap();
    let live = |name: &str| {
        list.items.iter().any(|p| p.metadata.name.as_deref() == Some(name) && p.metadata.deletion_timestamp.is_none())
    };
    assert!(live("train-1"), "the batch pod on the slow GPU keeps running");
    let claimed: Vec<&str> = ["train-2", "train-3"].into_iter().filter(|n| !live(n)).collect();
    eprintln!(
        "e2e: serving policy: train-1 on serve-b-slow, train-2 held for the headroom then on {train_2_node}, chat-2 \
         on {chat_2_node}, claimed from {claimed:?}"
    );
    assert_eq!(claimed.len(), 1, "one young batch pod claimed");
}
