//! The cluster snapshot the engine decides on: per-node free CPU, memory and per-GPU milli, with a
//! stamp that changes whenever a node changes so scorers can memoise per node state. Stamps are unique
//! process-wide, so a clone (a scratch copy to try placements on) shares its original's memo.
//! Binding and releasing are checked here: no GPU ever exceeds 1000 milli, no node its CPU or memory.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use gpuplane_core::{GpuRequest, MAX_GPUS_PER_NODE, MILLI_PER_GPU, Node, Pod, Taint, Toleration};
use thiserror::Error;

/// Index of a node in a [`Cluster`].
pub type NodeId = usize;

const FULL_GPU: u16 = MILLI_PER_GPU as u16;

/// The GPU models a pod accepts, as a bit set over the cluster's models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ModelSet {
    /// Any model.
    Any,
    /// Only the models whose bits are set (bit i = the cluster's model i).
    Only(u64),
}

impl ModelSet {
    /// True when a node with this model (by index) is accepted.
    #[inline]
    pub fn accepts(&self, model: Option<u8>) -> bool {
        match (self, model) {
            (ModelSet::Any, _) => true,
            (ModelSet::Only(mask), Some(m)) => mask & (1u64 << m) != 0,
            (ModelSet::Only(_), None) => false,
        }
    }
}

/// What the engine needs of a pod, with models resolved against the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRequest {
    /// CPU in milli-cores.
    pub cpu_milli: u64,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// GPU request.
    pub gpu: GpuRequest,
    /// Accepted GPU models.
    pub models: ModelSet,
    /// Priority.
    pub priority: i32,
    /// Node selector and tolerations, when the pod has any.
    pub constraints: Option<Box<Constraints>>,
}

/// Placement constraints beyond resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraints {
    /// Labels a node must carry.
    pub node_selector: BTreeMap<String, String>,
    /// Taints the pod tolerates.
    pub tolerations: Vec<Toleration>,
}

impl PodRequest {
    /// The pod's shape: what fragmentation and memoisation key on.
    #[inline]
    pub fn shape(&self) -> Shape {
        Shape { cpu_milli: self.cpu_milli, gpu: self.gpu, models: self.models }
    }
}

/// A task shape: CPU, GPU request and accepted models. Memory plays no part in fragmentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Shape {
    /// CPU in milli-cores.
    pub cpu_milli: u64,
    /// GPU request.
    pub gpu: GpuRequest,
    /// Accepted models.
    pub models: ModelSet,
}

/// The milli-GPUs a placement takes from one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GpuShare {
    /// Device index on the node.
    pub index: u8,
    /// Milli-GPUs taken.
    pub milli: u16,
}

/// Where a pod goes: the node and the milli taken from each GPU index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Placement {
    /// Node index.
    pub node: NodeId,
    /// GPU shares, in index order; empty for a CPU-only pod.
    pub gpus: Vec<GpuShare>,
}

/// Mutable state of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    /// Free CPU in milli-cores.
    pub cpu_free: u64,
    /// Free memory in bytes.
    pub memory_free: u64,
    /// Free milli per GPU index; entries past `gpu_count` are 0.
    pub gpu_free: [u16; MAX_GPUS_PER_NODE],
    /// Number of GPU devices.
    pub gpu_count: u8,
    /// Index of the node's GPU model in the cluster's model table.
    pub model: Option<u8>,
    /// GPU pods on the node per class (see [`gpu_class`]), for class-clustering scorers.
    pub gpu_pods_by_class: [u16; GPU_CLASSES],
    /// A fresh number (unique in the process) on every bind or release, 0 when never changed; scorers
    /// memoise on it.
    pub stamp: u64,
    /// True when the node has a taint that keeps pods without a toleration away.
    pub has_hard_taints: bool,
}

/// Number of GPU pod classes: sharing, then 1 to 8 whole GPUs.
pub const GPU_CLASSES: usize = 1 + MAX_GPUS_PER_NODE;

/// The class of a GPU pod: 0 for a sharing pod, k for k whole GPUs. `None` for a CPU-only pod.
pub fn gpu_class(gpu: GpuRequest) -> Option<usize> {
    if gpu.is_none() {
        None
    } else if gpu.is_sharing() {
        Some(0)
    } else {
        Some(usize::from(gpu.count).min(MAX_GPUS_PER_NODE))
    }
}

impl NodeState {
    /// Free GPUs of the node as a slice over its devices.
    #[inline]
    pub fn gpus(&self) -> &[u16] {
        &self.gpu_free[..usize::from(self.gpu_count)]
    }

    /// Total free milli-GPUs.
    #[inline]
    pub fn gpu_free_total(&self) -> u32 {
        self.gpus().iter().map(|&g| u32::from(g)).sum()
    }

    /// Number of fully free GPUs.
    #[inline]
    pub fn full_gpus(&self) -> usize {
        self.gpus().iter().filter(|&&g| g == FULL_GPU).count()
    }

    /// True when `count` devices each have at least `milli` free.
    #[inline]
    pub fn gpu_fits(&self, gpu: GpuRequest) -> bool {
        if gpu.is_none() {
            return true;
        }
        self.gpus().iter().filter(|&&g| g >= gpu.milli_per_gpu).count() >= usize::from(gpu.count)
    }
}

/// Why a bind or release was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BindError {
    /// The node index is out of range.
    #[error("node index {0} is not in the cluster")]
    UnknownNode(NodeId),
    /// CPU, memory or a GPU would be over-allocated (or, on release, over-freed).
    #[error("node {node}: {what}")]
    Capacity {
        /// Node name.
        node: String,
        /// What does not fit.
        what: String,
    },
}

static NEXT_CLUSTER_ID: AtomicU64 = AtomicU64::new(1);
/// Source of node stamps: one counter for every cluster, so that within a cluster and all its clones
/// the same stamp always means the same node state.
static NEXT_STAMP: AtomicU64 = AtomicU64::new(1);

fn next_stamp() -> u64 {
    NEXT_STAMP.fetch_add(1, Ordering::Relaxed)
}

/// Static facts of a node that never change during placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Node name.
    pub name: String,
    /// CPU capacity in milli-cores.
    pub cpu_capacity: u64,
    /// Memory capacity in bytes.
    pub memory_capacity: u64,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Taints.
    pub taints: Vec<Taint>,
}

/// The cluster snapshot: static node facts and their mutable state.
///
/// A clone keeps its original's [`Cluster::id`]: node stamps are unique process-wide, so memos keyed on
/// (id, stamp) stay valid for both. The static facts are shared, so a clone copies only node states.
#[derive(Debug, Clone)]
pub struct Cluster {
    id: u64,
    info: Arc<[NodeInfo]>,
    state: Vec<NodeState>,
    name_rank: Arc<[u32]>,
    models: Arc<[String]>,
    total_gpu_milli: u64,
    allocated_gpu_milli: u64,
}

/// Why a cluster could not be built.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ClusterError {
    /// More distinct GPU models than the model bit set holds.
    #[error("the cluster has more than 64 distinct GPU models")]
    TooManyModels,
    /// No nodes.
    #[error("the cluster has no nodes")]
    Empty,
    /// A tie order that is not a permutation of the nodes.
    #[error("a tie order must rank each of the {nodes} nodes exactly once")]
    TieRank {
        /// Nodes in the cluster.
        nodes: usize,
    },
}

impl Cluster {
    /// Builds an empty cluster (nothing allocated) from nodes.
    pub fn new(nodes: &[Node]) -> Result<Self, ClusterError> {
        if nodes.is_empty() {
            return Err(ClusterError::Empty);
        }
        // Models are numbered in name order, so the same set of models gets the same numbers in every
        // snapshot, whatever order the nodes come in.
        let mut models: Vec<String> =
            nodes.iter().filter(|n| n.gpu_count > 0).filter_map(|n| n.gpu_model.clone()).collect();
        models.sort();
        models.dedup();
        if models.len() > 64 {
            return Err(ClusterError::TooManyModels);
        }
        let mut info = Vec::with_capacity(nodes.len());
        let mut state = Vec::with_capacity(nodes.len());
        let mut total_gpu_milli = 0;
        for node in nodes {
            let model = match &node.gpu_model {
                Some(m) if node.gpu_count > 0 => models.binary_search(m).ok().map(|i| i as u8),
                _ => None,
            };
            let gpu_count = node.gpu_count.min(MAX_GPUS_PER_NODE as u8);
            let mut gpu_free = [0u16; MAX_GPUS_PER_NODE];
            gpu_free[..usize::from(gpu_count)].fill(FULL_GPU);
            total_gpu_milli += u64::from(gpu_count) * u64::from(MILLI_PER_GPU);
            info.push(NodeInfo {
                name: node.name.clone(),
                cpu_capacity: node.cpu_milli,
                memory_capacity: node.memory_bytes,
                labels: node.labels.clone(),
                taints: node.taints.clone(),
            });
            state.push(NodeState {
                cpu_free: node.cpu_milli,
                memory_free: node.memory_bytes,
                gpu_free,
                gpu_count,
                model,
                gpu_pods_by_class: [0; GPU_CLASSES],
                stamp: 0,
                has_hard_taints: node.taints.iter().any(|t| t.effect != gpuplane_core::TaintEffect::PreferNoSchedule),
            });
        }
        let mut by_name: Vec<usize> = (0..info.len()).collect();
        by_name.sort_by(|&a, &b| info[a].name.cmp(&info[b].name));
        let mut name_rank = vec![0u32; info.len()];
        for (rank, &id) in by_name.iter().enumerate() {
            name_rank[id] = rank as u32;
        }
        Ok(Cluster {
            id: NEXT_CLUSTER_ID.fetch_add(1, Ordering::Relaxed),
            info: info.into(),
            state,
            name_rank: name_rank.into(),
            models: models.into(),
            total_gpu_milli,
            allocated_gpu_milli: 0,
        })
    }

    /// A number unique to this cluster and its clones; caches key on it with the node stamps.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.state.len()
    }

    /// True when the cluster has no nodes (never, for a built cluster).
    pub fn is_empty(&self) -> bool {
        self.state.is_empty()
    }

    /// Mutable state of every node.
    pub fn nodes(&self) -> &[NodeState] {
        &self.state
    }

    /// Static facts of every node.
    pub fn node_info(&self) -> &[NodeInfo] {
        &self.info
    }

    /// Each node's position in the order ties are broken by (0 wins): the lexicographic order of node
    /// names unless [`Cluster::set_tie_rank`] replaced it.
    pub fn name_rank(&self) -> &[u32] {
        &self.name_rank
    }

    /// Replaces the tie order with `rank` (node id → position, 0 wins ties), which must be a permutation
    /// of `0..len`. The FGD paper's simulator prefixes every node name with a seeded random permutation
    /// index before breaking ties by smallest name; a simulator does the same with this.
    pub fn set_tie_rank(&mut self, rank: Vec<u32>) -> Result<(), ClusterError> {
        let mut seen = vec![false; self.info.len()];
        let valid = rank.len() == seen.len()
            && rank.iter().all(|&r| seen.get_mut(r as usize).is_some_and(|s| !std::mem::replace(s, true)));
        if !valid {
            return Err(ClusterError::TieRank { nodes: self.info.len() });
        }
        self.name_rank = rank.into();
        Ok(())
    }

    /// The GPU model names; `NodeState::model` indexes this table.
    pub fn models(&self) -> &[String] {
        &self.models
    }

    /// All GPU milli in the cluster.
    pub fn total_gpu_milli(&self) -> u64 {
        self.total_gpu_milli
    }

    /// GPU milli currently allocated.
    pub fn allocated_gpu_milli(&self) -> u64 {
        self.allocated_gpu_milli
    }

    /// Resolves a pod's GPU models against this cluster's model table.
    pub fn request(&self, pod: &Pod) -> PodRequest {
        let models = if pod.gpu_models.is_empty() {
            ModelSet::Any
        } else {
            let mut mask = 0u64;
            for m in &pod.gpu_models {
                if let Some(i) = self.models.iter().position(|x| x == m) {
                    mask |= 1 << i;
                }
            }
            ModelSet::Only(mask)
        };
        let constraints = (!pod.node_selector.is_empty() || !pod.tolerations.is_empty()).then(|| {
            Box::new(Constraints { node_selector: pod.node_selector.clone(), tolerations: pod.tolerations.clone() })
        });
        PodRequest {
            cpu_milli: pod.cpu_milli,
            memory_bytes: pod.memory_bytes,
            gpu: pod.gpu,
            models,
            priority: pod.priority,
            constraints,
        }
    }

    /// Takes the placement's resources from its node, after checking that everything fits.
    pub fn bind(&mut self, pod: &PodRequest, placement: &Placement) -> Result<(), BindError> {
        let info = self.info.get(placement.node).ok_or(BindError::UnknownNode(placement.node))?;
        let node = &self.state[placement.node];
        let refuse = |what: String| Err(BindError::Capacity { node: info.name.clone(), what });
        if node.cpu_free < pod.cpu_milli {
            return refuse(format!("CPU {}m requested, {}m free", pod.cpu_milli, node.cpu_free));
        }
        if node.memory_free < pod.memory_bytes {
            return refuse(format!("memory {} bytes requested, {} free", pod.memory_bytes, node.memory_free));
        }
        check_gpu_shares(node, pod.gpu, &placement.gpus).or_else(refuse)?;
        let node = &mut self.state[placement.node];
        node.cpu_free -= pod.cpu_milli;
        node.memory_free -= pod.memory_bytes;
        for share in &placement.gpus {
            node.gpu_free[usize::from(share.index)] -= share.milli;
            self.allocated_gpu_milli += u64::from(share.milli);
        }
        if let Some(class) = gpu_class(pod.gpu) {
            node.gpu_pods_by_class[class] += 1;
        }
        node.stamp = next_stamp();
        Ok(())
    }

    /// Gives a bound pod's resources back to its node.
    pub fn release(&mut self, pod: &PodRequest, placement: &Placement) -> Result<(), BindError> {
        let info = self.info.get(placement.node).ok_or(BindError::UnknownNode(placement.node))?;
        let node = &self.state[placement.node];
        let refuse = |what: String| Err(BindError::Capacity { node: info.name.clone(), what });
        if node.cpu_free + pod.cpu_milli > info.cpu_capacity
            || node.memory_free + pod.memory_bytes > info.memory_capacity
        {
            return refuse("release would free more CPU or memory than the node has".to_owned());
        }
        for share in &placement.gpus {
            let i = usize::from(share.index);
            if i >= usize::from(node.gpu_count) || node.gpu_free[i] + share.milli > FULL_GPU {
                return refuse(format!("release would free more than GPU {i} has"));
            }
        }
        let class = gpu_class(pod.gpu);
        if class.is_some_and(|c| node.gpu_pods_by_class[c] == 0) {
            return refuse("release of a GPU pod the node does not hold".to_owned());
        }
        let node = &mut self.state[placement.node];
        node.cpu_free += pod.cpu_milli;
        node.memory_free += pod.memory_bytes;
        for share in &placement.gpus {
            node.gpu_free[usize::from(share.index)] += share.milli;
            self.allocated_gpu_milli -= u64::from(share.milli);
        }
        if let Some(c) = class {
            node.gpu_pods_by_class[c] -= 1;
        }
        node.stamp = next_stamp();
        Ok(())
    }
}

/// Checks that `shares` hand the pod exactly `count` distinct devices with `milli` each, all free.
fn check_gpu_shares(node: &NodeState, gpu: GpuRequest, shares: &[GpuShare]) -> Result<(), String> {
    if gpu.is_none() {
        return if shares.is_empty() { Ok(()) } else { Err("GPU shares given to a CPU-only pod".to_owned()) };
    }
    if shares.len() != usize::from(gpu.count) {
        return Err(format!("{} GPU shares for a pod that asks for {} GPUs", shares.len(), gpu.count));
    }
    let mut seen = 0u16;
    for share in shares {
        let i = usize::from(share.index);
        if i >= usize::from(node.gpu_count) {
            return Err(format!("GPU index {i} does not exist (the node has {})", node.gpu_count));
        }
        if seen & (1 << i) != 0 {
            return Err(format!("GPU index {i} given twice"));
        }
        seen |= 1 << i;
        if share.milli != gpu.milli_per_gpu {
            return Err(format!("GPU {i} share is {} milli, the pod asks for {}", share.milli, gpu.milli_per_gpu));
        }
        if node.gpu_free[i] < share.milli {
            return Err(format!("GPU {i} has {} milli free, {} requested", node.gpu_free[i], share.milli));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, model: &str) -> Node {
        Node {
            name: name.into(),
            cpu_milli: 1000,
            memory_bytes: 1 << 30,
            gpu_count: 1,
            gpu_model: Some(model.into()),
            labels: BTreeMap::new(),
            taints: vec![],
        }
    }

    #[test]
    fn model_numbers_do_not_depend_on_node_order() {
        let nodes = vec![node("a", "T4"), node("b", "A100"), node("c", "L4")];
        let mut reversed = nodes.clone();
        reversed.reverse();
        let (x, y) = (Cluster::new(&nodes).unwrap(), Cluster::new(&reversed).unwrap());
        assert_eq!(x.models(), y.models());
        let mut pod = Pod::with_requests("p", 1, 1, GpuRequest { count: 1, milli_per_gpu: 500 });
        pod.gpu_models = vec!["L4".into()];
        assert_eq!(x.request(&pod).models, y.request(&pod).models);
    }

    #[test]
    fn bind_refuses_overallocation_and_bad_shares() {
        let mut c = Cluster::new(&[node("a", "T4")]).unwrap();
        let pod = c.request(&Pod::with_requests("p", 100, 0, GpuRequest { count: 1, milli_per_gpu: 600 }));
        let on = |milli| Placement { node: 0, gpus: vec![GpuShare { index: 0, milli }] };
        c.bind(&pod, &on(600)).unwrap();
        assert!(c.bind(&pod, &on(600)).is_err(), "600 + 600 > 1000");
        assert!(c.bind(&pod, &on(300)).is_err(), "share differs from the request");
        assert!(c.bind(&pod, &Placement { node: 0, gpus: vec![GpuShare { index: 3, milli: 600 }] }).is_err());
        assert!(c.bind(&pod, &Placement { node: 7, gpus: vec![] }).is_err());
        assert_eq!(c.allocated_gpu_milli(), 600);
    }
}
