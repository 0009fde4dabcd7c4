//! A vLLM-like inference Deployment placed by `gpuplane scheduler` on the real control plane: three
//! replicas with required anti-affinity on the hostname, required node affinity on the GPU model and a
//! zone spread that must hold. The replicas land only where those rules allow, each with its GPU assigned;
//! a replica no node can take is told why (condition and event), never left silently Pending.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // A test: a failure should stop it loudly.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

mod support;
use support::*;

const ZONE: &str = "topology.kubernetes.io/zone";

/// Nine kwok GPU nodes: two A100 and one L4 in each of three zones.
async fn gpu_nodes(client: &kube::Client) -> BTreeMap<String, (String, String)> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut layout = BTreeMap::new();
    for zone in ["zone-a", "zone-b", "zone-c"] {
        for (i, model) in ["A100", "A100", "L4"].iter().enumerate() {
            let name = format!("{zone}-{}-{i}", model.to_lowercase());
            let resources = json!({"cpu": "32", "memory": "128Gi", "pods": "110", "nvidia.com/gpu": "4"});
            let node = serde_json::from_value(json!({
                "metadata": {"name": name, "annotations": {"kwok.x-k8s.io/node": "fake"},
                    "labels": {"kubernetes.io/hostname": name, ZONE: zone, "nvidia.com/gpu.product": model}},
                "status": {"allocatable": resources, "capacity": resources}
            }))
            .unwrap();
            nodes.create(&PostParams::default(), &node).await.unwrap();
            layout.insert(name, (zone.to_owned(), (*model).to_owned()));
        }
    }
    wait_for("the GPU nodes Ready", Duration::from_secs(120), || async {
        let list = nodes.list(&ListParams::default()).await.unwrap();
        list.items
            .iter()
            .filter(|n| {
                let ready = n
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                let taints = n.spec.as_ref().and_then(|s| s.taints.as_ref());
                ready && taints.is_none_or(Vec::is_empty)
            })
            .count()
            == 9
    })
    .await;
    layout
}

fn vllm(replicas: i32) -> Deployment {
    let selector = json!({"matchLabels": {"app": "vllm"}});
    serde_json::from_value(json!({
        "metadata": {"name": "vllm", "namespace": "serving"},
        "spec": {"replicas": replicas, "selector": selector, "template": {
            "metadata": {"labels": {"app": "vllm"}},
            "spec": {
                "schedulerName": "gpuplane",
                "affinity": {
                    "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "nvidia.com/gpu.product", "operator": "In", "values": ["A100"]}]}]}},
                    "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                        {"topologyKey": "kubernetes.io/hostname", "labelSelector": selector}]}
                },
                "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": ZONE,
                    "whenUnsatisfiable": "DoNotSchedule", "labelSelector": selector}],
                "containers": [{"name": "vllm", "image": "vllm/vllm-openai:v0.6.0",
                    "resources": {"requests": {"cpu": "4", "memory": "32Gi", "nvidia.com/gpu": "1"},
                                  "limits": {"nvidia.com/gpu": "1"}}}]
            }
        }}
    }))
    .unwrap()
}

#[test]
fn vllm_deployment_is_placed_where_its_rules_allow() {
    let plane = ControlPlane::start();
    let work = tempfile::tempdir().unwrap();
    let mut scheduler = gpuplane(&plane, &work.path().join("scheduler.log"));
    scheduler.args(SCHEDULER).args(["--lease-name", ""]);
    let _scheduler = Running::spawn(scheduler);
    runtime().block_on(async {
        let client = plane.client().await;
        let layout = gpu_nodes(&client).await;
        plane.kubectl(&["create", "namespace", "serving"]);
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), "serving");
        deployments.create(&PostParams::default(), &vllm(3)).await.unwrap();
        let pods: Api<Pod> = Api::namespaced(client.clone(), "serving");
        let bound = |want: usize| {
            let pods = pods.clone();
            async move {
                let list = pods.list(&ListParams::default()).await.unwrap();
                let placed: Vec<Pod> = list
                    .items
                    .into_iter()
                    .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
                    .collect();
                (placed.len() == want).then_some(placed)
            }
        };
        wait_for("three replicas bound", Duration::from_secs(120), || async { bound(3).await.is_some() }).await;
        let check = |placed: &[Pod]| {
            let nodes: Vec<&String> = placed.iter().filter_map(|p| p.spec.as_ref()?.node_name.as_ref()).collect();
            let distinct: BTreeSet<&&String> = nodes.iter().collect();
            assert_eq!(distinct.len(), nodes.len(), "anti-affinity: one replica per node, got {nodes:?}");
            let mut per_zone = BTreeMap::<&str, usize>::new();
            for n in &nodes {
                let (zone, model) = &layout[*n];
                assert_eq!(model, "A100", "node affinity: {n} is {model}");
                *per_zone.entry(zone).or_default() += 1;
            }
            let counts: Vec<usize> =
                ["zone-a", "zone-b", "zone-c"].iter().map(|z| per_zone.get(z).copied().unwrap_or(0)).collect();
            let skew = counts.iter().max().unwrap() - counts.iter().min().unwrap();
            assert!(skew <= 1, "zone spread: {per_zone:?}");
            for p in placed {
                let annotations = p.metadata.annotations.clone().unwrap_or_default();
                let assignment = annotations.get("gpuplane.io/gpu-assignment").map(String::as_str).unwrap_or("");
                assert_eq!(assignment.split(',').count(), 1, "one GPU assigned: {assignment:?}");
            }
            eprintln!("deployment: {} replicas on {nodes:?}, per zone {per_zone:?}", nodes.len());
        };
        check(&bound(3).await.unwrap());

        // Seven replicas: six A100 nodes, one replica each; the seventh fits nowhere and is told so.
        let scale = json!({"spec": {"replicas": 7}});
        deployments.patch("vllm", &PatchParams::default(), &Patch::Merge(&scale)).await.unwrap();
        wait_for("six replicas bound", Duration::from_secs(120), || async { bound(6).await.is_some() }).await;
        check(&bound(6).await.unwrap());
        let events: Api<Event> = Api::namespaced(client.clone(), "serving");
        let mut message = String::new();
        wait_for("the seventh replica reported unschedulable", Duration::from_secs(60), || async {
            let list = pods.list(&ListParams::default()).await.unwrap();
            let waiting = list.items.iter().find(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_none()));
            let condition = waiting.and_then(|p| {
                p.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "PodScheduled").cloned()
            });
            let events = events.list(&ListParams::default()).await.unwrap();
            let event = events.items.iter().any(|e| e.reason.as_deref() == Some("FailedScheduling"));
            condition.is_some_and(|c| c.status == "False" && c.reason.as_deref() == Some("Unschedulable")) && event
        })
        .await;
        let list = pods.list(&ListParams::default()).await.unwrap();
        if let Some(p) = list.items.iter().find(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_none())) {
            let conditions = p.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
            message =
                conditions.into_iter().find(|c| c.type_ == "PodScheduled").and_then(|c| c.message).unwrap_or_default();
        }
        eprintln!("deployment: seventh replica: {message}");
        assert!(message.starts_with("0/9 nodes are available:"), "{message}");
        assert!(message.contains("3 node(s) didn't match Pod's node affinity/selector"), "{message}");
        assert!(message.contains("6 node(s) didn't match pod anti-affinity rules"), "{message}");
    });
}
