//! The device plugin's view of its node: the pods bound there that carry a gpuplane assignment, with
//! the `gpuplane.io/gpu-milli` their containers ask for, kept current by a reflector on the node's pods;
//! and the annotation that records a pod got its GPUs, so that a restarted plugin does not serve it twice.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1 as api;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};

use gpuplane_core::manifest::NODE_GPU_MODEL_LABELS;

use crate::assignment::{ASSIGNMENT_ANNOTATION, NODE_GPU_UUIDS_ANNOTATION};

/// The annotation the device plugin writes when it hands a pod its GPUs.
pub const ALLOCATED_ANNOTATION: &str = "gpuplane.io/gpu-allocated";
/// The extended resource containers ask for.
pub const GPU_MILLI_RESOURCE: &str = "gpuplane.io/gpu-milli";

/// A pod on the node with a GPU assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePod {
    /// `namespace/name`.
    pub key: String,
    /// The assignment annotation's value.
    pub assignment: String,
    /// `gpuplane.io/gpu-milli` over the pod's containers (limits, else requests).
    pub requested_milli: u64,
    /// The plugin already handed it its GPUs.
    pub allocated: bool,
}

/// The pod as the plugin sees it, or `None` when it has no assignment or has finished.
pub fn node_pod(pod: &api::Pod) -> Option<NodePod> {
    let annotations = pod.metadata.annotations.as_ref()?;
    let assignment = annotations.get(ASSIGNMENT_ANNOTATION)?.clone();
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return None;
    }
    let milli = |resources: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>| {
        resources.and_then(|r| r.get(GPU_MILLI_RESOURCE)).and_then(|q| q.0.trim().parse::<u64>().ok())
    };
    let requested_milli = pod
        .spec
        .as_ref()
        .map(|s| {
            s.containers
                .iter()
                .filter_map(|c| {
                    let r = c.resources.as_ref()?;
                    milli(r.limits.as_ref()).or_else(|| milli(r.requests.as_ref()))
                })
                .sum()
        })
        .unwrap_or(0);
    Some(NodePod {
        key: format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any()),
        assignment,
        requested_milli,
        allocated: annotations.get(ALLOCATED_ANNOTATION).is_some_and(|v| v == "true"),
    })
}

/// The node's assigned pods, oldest first (then by key).
pub fn assigned(pods: &[Arc<api::Pod>]) -> Vec<NodePod> {
    let mut with_time: Vec<(Option<String>, NodePod)> = pods
        .iter()
        .filter_map(|p| {
            let created = p.metadata.creation_timestamp.as_ref().map(|t| format!("{:?}", t.0));
            node_pod(p).map(|n| (created, n))
        })
        .collect();
    with_time.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.key.cmp(&b.1.key)));
    with_time.into_iter().map(|(_, n)| n).collect()
}

/// Watches the pods bound to `node` into a reflector store.
pub fn watch_node(client: Client, node: &str) -> Store<api::Pod> {
    let (store, writer) = reflector::store::<api::Pod>();
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    tokio::spawn(
        watcher(Api::<api::Pod>::all(client), config)
            .default_backoff()
            .reflect(writer)
            .for_each(|_| futures::future::ready(())),
    );
    store
}

/// The merge patch that publishes a node's GPUs: UUIDs in index order (the annotation the scheduler
/// writes UUID assignments from) and, when every GPU is the same model, the model label it filters on.
pub fn gpu_node_patch(uuids: &[String], models: &[String]) -> serde_json::Value {
    let mut patch = serde_json::json!({"metadata": {"annotations": {NODE_GPU_UUIDS_ANNOTATION: uuids.join(",")}}});
    if let Some(first) = models.first().filter(|m| models.iter().all(|x| x == *m)) {
        patch["metadata"]["labels"] = serde_json::json!({NODE_GPU_MODEL_LABELS[0]: first});
    }
    patch
}

/// Publishes the node's GPUs on its Node object (see [`gpu_node_patch`]).
pub async fn publish_gpus(client: Client, node: &str, uuids: &[String], models: &[String]) -> Result<(), kube::Error> {
    Api::<api::Node>::all(client)
        .patch(node, &PatchParams::default(), &Patch::Merge(&gpu_node_patch(uuids, models)))
        .await
        .map(|_| ())
}

/// Writes the allocated annotation on a pod.
pub async fn mark_allocated(client: Client, key: &str) -> Result<(), kube::Error> {
    let (namespace, name) = key.split_once('/').unwrap_or(("default", key));
    let patch = serde_json::json!({"metadata": {"annotations": {ALLOCATED_ANNOTATION: "true"}}});
    Api::<api::Pod>::namespaced(client, namespace)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pod(yaml: &str) -> Arc<api::Pod> {
        Arc::new(serde_saphyr::from_str(yaml).unwrap())
    }

    #[test]
    fn the_node_patch_names_uuids_in_order_and_one_model() {
        let uuids = vec!["GPU-a".to_owned(), "GPU-b".to_owned()];
        let same = gpu_node_patch(&uuids, &["A100".to_owned(), "A100".to_owned()]);
        assert_eq!(same["metadata"]["annotations"]["gpuplane.io/gpu-uuids"], "GPU-a,GPU-b");
        assert_eq!(same["metadata"]["labels"]["gpuplane.io/gpu-model"], "A100");
        let mixed = gpu_node_patch(&uuids, &["A100".to_owned(), "T4".to_owned()]);
        assert!(mixed["metadata"].get("labels").is_none());
        // The scheduler reads the annotation back as this node's UUIDs.
        assert_eq!(crate::assignment::parse_uuids("GPU-a,GPU-b", 2), Some(uuids));
    }

    #[test]
    fn reads_the_assignment_and_the_milli_the_containers_ask_for() {
        let a = pod("metadata: {name: infer, namespace: ml, creationTimestamp: '2026-11-28T10:00:00Z', \
             annotations: {gpuplane.io/gpu-assignment: '1:250'}}\n\
             spec: {containers: [{name: a, resources: {limits: {gpuplane.io/gpu-milli: '200'}}}, \
             {name: b, resources: {requests: {gpuplane.io/gpu-milli: '50'}}}]}\n");
        let older = pod("metadata: {name: train, namespace: ml, creationTimestamp: '2026-11-28T09:00:00Z', \
             annotations: {gpuplane.io/gpu-assignment: '0:1000', gpuplane.io/gpu-allocated: 'true'}}\n\
             spec: {containers: [{name: a, resources: {limits: {gpuplane.io/gpu-milli: '1000'}}}]}\n");
        let plain = pod("metadata: {name: web, namespace: ml}\nspec: {containers: [{name: a}]}\n");
        let done = pod("metadata: {name: old, namespace: ml, annotations: {gpuplane.io/gpu-assignment: '0:500'}}\n\
             spec: {containers: [{name: a}]}\nstatus: {phase: Succeeded}\n");
        let got = assigned(&[a, older, plain, done]);
        assert_eq!(
            got,
            vec![
                NodePod { key: "ml/train".into(), assignment: "0:1000".into(), requested_milli: 1000, allocated: true },
                NodePod { key: "ml/infer".into(), assignment: "1:250".into(), requested_milli: 250, allocated: false },
            ]
        );
    }
}
