//! The engine's view of a live cluster: nodes and the pods bound to them, with each bound pod's GPU
//! shares taken from its assignment annotation. Built from Node and Pod objects (as a reflector store
//! holds them); placements the scheduler makes are assumed into it at once, so two decisions in a row
//! never hand out the same GPU milli.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use gpuplane_place::{BindError, Cluster, ClusterError, GpuShare, NodeId, Placement, PodRequest};
use k8s_openapi::api::core::v1 as api;

use crate::assignment::{self, ASSIGNMENT_ANNOTATION};
use crate::fit::{Fit, PodInfo};
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
    /// A bound GPU pod with no (or a malformed) assignment, or one whose milli per GPU is not what the pod
    /// requests: it is given the lowest-index GPUs that fit, at its requested milli.
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
    /// How many bound pods hold each priority: a preemption search is skipped when none is lower.
    priorities: BTreeMap<i32, usize>,
    gpu_uuids: HashMap<NodeId, Vec<String>>,
    /// The same nodes and bound pods as kube-scheduler's filters see them.
    fit: Fit,
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
    /// The pod's labels (PodDisruptionBudgets select victims by them).
    pub labels: BTreeMap<String, String>,
    /// When it started (`status.startTime`, seconds since the epoch), if it has.
    pub started_s: Option<i64>,
    /// The model it serves (`gpuplane.io/model`), if it names one.
    pub model: Option<String>,
}

impl Snapshot {
    /// Builds the snapshot from every Node and Pod object; pending and terminal pods take nothing.
    pub fn build(nodes: &[api::Node], pods: &[api::Pod]) -> Result<(Snapshot, Vec<Warning>), ClusterError> {
        let mut warnings = Vec::new();
        let mut domain = Vec::with_capacity(nodes.len());
        let mut readable = Vec::with_capacity(nodes.len());
        for n in nodes {
            match objects::node(n) {
                Ok(node) => {
                    readable.push((n, node.taints.clone()));
                    domain.push(node);
                }
                Err(e) => warnings.push(Warning::Unreadable(e)),
            }
        }
        let cluster = Cluster::new(&domain)?;
        let fit = Fit::new(&readable);
        let by_name: HashMap<String, NodeId> = domain.iter().enumerate().map(|(i, n)| (n.name.clone(), i)).collect();
        let mut gpu_uuids = HashMap::new();
        for n in nodes {
            let annotation = n.metadata.annotations.as_ref().and_then(|a| a.get(assignment::NODE_GPU_UUIDS_ANNOTATION));
            let (Some(value), Some(&id)) = (annotation, n.metadata.name.as_ref().and_then(|name| by_name.get(name)))
            else {
                continue;
            };
            match assignment::parse_uuids(value, cluster.nodes()[id].gpu_count) {
                Some(uuids) => {
                    gpu_uuids.insert(id, uuids);
                }
                None => warnings.push(Warning::Unreadable(ObjectError {
                    kind: "Node",
                    name: domain[id].name.clone(),
                    field: format!("metadata.annotations.{}", assignment::NODE_GPU_UUIDS_ANNOTATION),
                    value: value.clone(),
                    expected: format!("{} distinct GPU UUIDs, comma-separated", cluster.nodes()[id].gpu_count),
                })),
            }
        }
        let mut snapshot = Snapshot {
            cluster,
            by_name,
            bound: HashMap::new(),
            by_uid: HashMap::new(),
            by_node: HashMap::new(),
            priorities: BTreeMap::new(),
            gpu_uuids,
            fit,
        };
        for p in pods {
            warnings.extend(snapshot.observe_bound(p).1);
        }
        Ok((snapshot, warnings))
    }

    /// Takes one Pod object into the snapshot if it is bound and running: its GPU shares come from
    /// the assignment annotation (or, without one, the lowest-index GPUs that fit). Pending, terminal
    /// and already-known pods change nothing. Returns whether the pod was taken, and what was
    /// skipped or guessed.
    pub fn observe_bound(&mut self, p: &api::Pod) -> (bool, Option<Warning>) {
        match self.try_observe_bound(p) {
            Ok(taken) => (taken, None),
            Err((taken, w)) => (taken, Some(w)),
        }
    }

    fn try_observe_bound(&mut self, p: &api::Pod) -> Result<bool, (bool, Warning)> {
        let Some(node_name) = p.spec.as_ref().and_then(|s| s.node_name.as_deref()).filter(|n| !n.is_empty()) else {
            return Ok(false);
        };
        if objects::is_terminal(p) {
            return Ok(false);
        }
        let key = objects::pod_key(p);
        if self.bound.contains_key(&key) {
            return Ok(false);
        }
        let Some(&node) = self.by_name.get(node_name) else {
            return Err((false, Warning::UnknownNode { pod: key, node: node_name.to_owned() }));
        };
        // Kubernetes' filters count every pod bound to the node, also one the engine cannot read.
        let info = PodInfo::of(p).ok().map(Arc::new);
        if let Some(info) = &info {
            self.fit.add(&key, node, Arc::clone(info));
        }
        let pod = objects::pod(p).map_err(|e| (false, Warning::Unreadable(e)))?;
        let request = self.cluster.request(&pod);
        let annotated = p
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ASSIGNMENT_ANNOTATION))
            .and_then(|v| assignment::parse(v).ok())
            // The annotation says which GPUs; how much of each is the pod's own request. An assignment
            // that claims another amount is not the scheduler's (annotations can be written by others).
            .filter(|shares| {
                shares.len() == usize::from(request.gpu.count)
                    && shares.iter().all(|s| s.milli == request.gpu.milli_per_gpu)
            });
        let mut guessed = false;
        let gpus = match annotated {
            Some(shares) => shares,
            None if request.gpu.is_none() => Vec::new(),
            None => {
                guessed = true;
                lowest_fitting(&self.cluster, node, &request)
            }
        };
        let placement = Placement { node, gpus };
        let uid = p.metadata.uid.clone().unwrap_or_default();
        let labels = p.metadata.labels.clone().unwrap_or_default();
        let started_s = p.status.as_ref().and_then(|s| s.start_time.as_ref()).map(|t| t.0.as_second());
        let model = p.metadata.annotations.as_ref().and_then(|a| a.get(crate::inventory::MODEL_ANNOTATION)).cloned();
        match self.assume_pod(&key, &uid, request, placement, info) {
            Ok(()) => {
                if let Some(b) = self.bound.get_mut(&key) {
                    b.labels = labels;
                    b.started_s = started_s;
                    b.model = model;
                }
                if guessed { Err((true, Warning::GuessedAssignment { pod: key })) } else { Ok(true) }
            }
            Err(e) => Err((false, Warning::Conflict { pod: key, reason: e.to_string() })),
        }
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

    /// The GPU UUIDs of a node in index order, when it publishes them.
    pub fn gpu_uuids(&self, node: NodeId) -> &[String] {
        self.gpu_uuids.get(&node).map_or(&[], Vec::as_slice)
    }

    /// The placement of a bound pod, by `namespace/name`.
    pub fn binding(&self, pod_key: &str) -> Option<&Placement> {
        self.bound.get(pod_key).map(|b| &b.placement)
    }

    /// A bound pod by UID.
    pub fn bound_by_uid(&self, uid: &str) -> Option<&BoundPod> {
        self.by_uid.get(uid).and_then(|k| self.bound.get(k))
    }

    /// The lowest priority of a bound pod, if any pod is bound.
    pub fn lowest_priority(&self) -> Option<i32> {
        self.priorities.keys().next().copied()
    }

    /// The pods bound to a node.
    pub fn pods_on(&self, node: NodeId) -> impl Iterator<Item = &BoundPod> {
        self.by_node.get(&node).into_iter().flatten().filter_map(|k| self.bound.get(k))
    }

    /// The cluster as kube-scheduler's filters see it.
    pub fn fit(&self) -> &Fit {
        &self.fit
    }

    /// The same, to set namespaces and volumes.
    pub fn fit_mut(&mut self) -> &mut Fit {
        &mut self.fit
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
        self.assume_pod(pod_key, uid, request, placement, None)
    }

    /// [`Self::assume`], with what Kubernetes' filters need of the pod (its ports, labels, all its
    /// requests), for a scheduler that runs them.
    pub fn assume_pod(
        &mut self,
        pod_key: &str,
        uid: &str,
        request: PodRequest,
        placement: Placement,
        info: Option<Arc<PodInfo>>,
    ) -> Result<(), BindError> {
        if let Some(existing) = self.bound.get(pod_key) {
            let node = self.cluster.node_info()[existing.placement.node].name.clone();
            return Err(BindError::Capacity { node, what: format!("pod {pod_key} is already bound here") });
        }
        self.cluster.bind(&request, &placement)?;
        if let Some(info) = info {
            self.fit.add(pod_key, placement.node, info);
        }
        if !uid.is_empty() {
            self.by_uid.insert(uid.to_owned(), pod_key.to_owned());
        }
        self.by_node.entry(placement.node).or_default().push(pod_key.to_owned());
        *self.priorities.entry(request.priority).or_insert(0) += 1;
        self.bound.insert(
            pod_key.to_owned(),
            BoundPod {
                key: pod_key.to_owned(),
                uid: uid.to_owned(),
                request,
                placement,
                labels: BTreeMap::new(),
                started_s: None,
                model: None,
            },
        );
        Ok(())
    }

    /// Forgets a bound pod (deleted, or its bind failed) and frees what it held.
    pub fn forget(&mut self, pod_key: &str) -> Result<bool, BindError> {
        self.fit.remove(pod_key);
        let Some(pod) = self.bound.remove(pod_key) else { return Ok(false) };
        if let Some(n) = self.priorities.get_mut(&pod.request.priority) {
            *n -= 1;
            if *n == 0 {
                self.priorities.remove(&pod.request.priority);
            }
        }
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
