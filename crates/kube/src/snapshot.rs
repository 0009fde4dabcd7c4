//! The engine's view of a live cluster: nodes and the pods bound to them, with each bound pod's GPU
//! shares taken from its assignment annotation. Built from Node and Pod objects (as a reflector store
//! holds them); placements the scheduler makes are assumed into it at once, so two decisions in a row
//! never hand out the same GPU milli.

use std::collections::HashMap;

use gpuplane_place::{BindError, Cluster, ClusterError, GpuShare, NodeId, Placement, PodRequest};
use k8s_openapi::api::core::v1 as api;

use crate::assignment::{self, ASSIGNMENT_ANNOTATION};
use crate::objects::{self, ObjectError};

/// Something in the objects that the snapshot could not take as it is; it is skipped or approximated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warning {
    /// A node or pod with fields gpuplane cannot read; it is left out.
    Unreadable(ObjectError),
    /// A pod bound to a node the snapshot does not have.
    UnknownNode {
        /// `namespace/name`.
        pod: String,
        /// `spec.nodeName`.
        node: String,
    },
    /// A bound GPU pod with no (or a malformed) assignment: it is given the lowest-index GPUs that fit.
    GuessedAssignment {
        /// `namespace/name`.
        pod: String,
    },
    /// A bound pod that does not fit on its node next to the others (over-committed by another
    /// scheduler, or a stale assignment); it is left out, so its GPUs look free.
    Conflict {
        /// `namespace/name`.
        pod: String,
        /// Why it does not fit.
        reason: String,
    },
}

/// The cluster as the engine sees it, with the pods bound so far.
#[derive(Debug, Clone)]
pub struct Snapshot {
    cluster: Cluster,
    by_name: HashMap<String, NodeId>,
    bound: HashMap<String, BoundPod>,
    by_uid: HashMap<String, String>,
    by_node: HashMap<NodeId, Vec<String>>,
}

/// A pod bound in the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundPod {
    /// `namespace/name`.
    pub key: String,
    /// The pod's UID (may be empty when unknown).
    pub uid: String,
    /// What it asks for.
    pub request: PodRequest,
    /// Where it runs and which GPU milli it holds.
    pub placement: Placement,
}

impl Snapshot {
    /// Builds the snapshot from every Node and Pod object; pending and terminal pods take nothing.
    pub fn build(nodes: &[api::Node], pods: &[api::Pod]) -> Result<(Snapshot, Vec<Warning>), ClusterError> {
        let mut warnings = Vec::new();
        let mut domain = Vec::with_capacity(nodes.len());
        for n in nodes {
            match objects::node(n) {
                Ok(node) => domain.push(node),
                Err(e) => warnings.push(Warning::Unreadable(e)),
            }
        }
        let cluster = Cluster::new(&domain)?;
        let by_name = domain.iter().enumerate().map(|(i, n)| (n.name.clone(), i)).collect();
        let mut snapshot =
            Snapshot { cluster, by_name, bound: HashMap::new(), by_uid: HashMap::new(), by_node: HashMap::new() };
        for p in pods {
            let Some(node_name) = p.spec.as_ref().and_then(|s| s.node_name.as_deref()).filter(|n| !n.is_empty()) else {
                continue;
            };
            if objects::is_terminal(p) {
                continue;
            }
            let key = objects::pod_key(p);
            let pod = match objects::pod(p) {
                Ok(pod) => pod,
                Err(e) => {
                    warnings.push(Warning::Unreadable(e));
                    continue;
                }
            };
            let Some(&node) = snapshot.by_name.get(node_name) else {
                warnings.push(Warning::UnknownNode { pod: key, node: node_name.to_owned() });
                continue;
            };
            let request = snapshot.cluster.request(&pod);
            let annotated = p
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ASSIGNMENT_ANNOTATION))
                .and_then(|v| assignment::parse(v).ok())
                .filter(|shares| shares.len() == usize::from(request.gpu.count));
            let gpus = match annotated {
                Some(shares) => shares,
                None if request.gpu.is_none() => Vec::new(),
                None => {
                    warnings.push(Warning::GuessedAssignment { pod: key.clone() });
                    lowest_fitting(&snapshot.cluster, node, &request)
                }
            };
            let placement = Placement { node, gpus };
            let uid = p.metadata.uid.clone().unwrap_or_default();
            if let Err(e) = snapshot.assume(&key, &uid, request, placement) {
                warnings.push(Warning::Conflict { pod: key, reason: e.to_string() });
            }
        }
        Ok((snapshot, warnings))
    }

    /// The cluster state.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The index of a node by name.
    pub fn node_id(&self, name: &str) -> Option<NodeId> {
        self.by_name.get(name).copied()
    }

    /// The name of a node.
    pub fn node_name(&self, id: NodeId) -> &str {
        &self.cluster.node_info()[id].name
    }

    /// The placement of a bound pod, by `namespace/name`.
    pub fn binding(&self, pod_key: &str) -> Option<&Placement> {
        self.bound.get(pod_key).map(|b| &b.placement)
    }

    /// A bound pod by UID.
    pub fn bound_by_uid(&self, uid: &str) -> Option<&BoundPod> {
        self.by_uid.get(uid).and_then(|k| self.bound.get(k))
    }

    /// The pods bound to a node.
    pub fn pods_on(&self, node: NodeId) -> impl Iterator<Item = &BoundPod> {
        self.by_node.get(&node).into_iter().flatten().filter_map(|k| self.bound.get(k))
    }

    /// Takes a placement into the snapshot; refused if the pod is already bound or the placement
    /// does not fit, so a GPU is never handed out twice.
    pub fn assume(
        &mut self,
        pod_key: &str,
        uid: &str,
        request: PodRequest,
        placement: Placement,
    ) -> Result<(), BindError> {
        if let Some(existing) = self.bound.get(pod_key) {
            let node = self.cluster.node_info()[existing.placement.node].name.clone();
            return Err(BindError::Capacity { node, what: format!("pod {pod_key} is already bound here") });
        }
        self.cluster.bind(&request, &placement)?;
        if !uid.is_empty() {
            self.by_uid.insert(uid.to_owned(), pod_key.to_owned());
        }
        self.by_node.entry(placement.node).or_default().push(pod_key.to_owned());
        self.bound
            .insert(pod_key.to_owned(), BoundPod { key: pod_key.to_owned(), uid: uid.to_owned(), request, placement });
        Ok(())
    }

    /// Forgets a bound pod (deleted, or its bind failed) and frees what it held.
    pub fn forget(&mut self, pod_key: &str) -> Result<bool, BindError> {
        let Some(pod) = self.bound.remove(pod_key) else { return Ok(false) };
        self.by_uid.remove(&pod.uid);
        if let Some(keys) = self.by_node.get_mut(&pod.placement.node) {
            keys.retain(|k| k != pod_key);
        }
        self.cluster.release(&pod.request, &pod.placement).map(|()| true)
    }
}

/// The lowest-index GPUs with enough free milli, as a device plugin that knows nothing of shares would pick.
fn lowest_fitting(cluster: &Cluster, node: NodeId, request: &PodRequest) -> Vec<GpuShare> {
    let state = &cluster.nodes()[node];
    (0..state.gpu_count)
        .filter(|&i| state.gpu_free[usize::from(i)] >= request.gpu.milli_per_gpu)
        .take(usize::from(request.gpu.count))
        .map(|index| GpuShare { index, milli: request.gpu.milli_per_gpu })
        .collect()
}
