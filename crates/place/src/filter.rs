//! Filters: whether a pod may run on a node now. The same checks as kube-scheduler's
//! NodeResourcesFit (CPU, memory), NodeAffinity's node selector and TaintToleration, plus the
//! GPU-level fit: the accepted GPU model and enough devices with enough free milli.

use gpuplane_core::resources::{selector_matches, tolerates_all};

use crate::cluster::{NodeInfo, NodeState, PodRequest};

/// The first filter a node failed for a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// The node's GPU model is not one the pod accepts, or the node has no GPU for a GPU pod.
    GpuModel,
    /// The node lacks a label of the pod's node selector.
    NodeSelector,
    /// The node has a `NoSchedule`/`NoExecute` taint the pod does not tolerate.
    Taint,
    /// Not enough free CPU.
    Cpu,
    /// Not enough free memory.
    Memory,
    /// Not enough GPU devices with the requested free milli.
    Gpu,
}

impl Rejection {
    /// Every rejection, in the order filters run.
    pub const ALL: [Rejection; 6] = [
        Rejection::GpuModel,
        Rejection::NodeSelector,
        Rejection::Taint,
        Rejection::Cpu,
        Rejection::Memory,
        Rejection::Gpu,
    ];

    /// A short label for reports.
    pub fn label(self) -> &'static str {
        match self {
            Rejection::GpuModel => "gpu-model",
            Rejection::NodeSelector => "node-selector",
            Rejection::Taint => "taint",
            Rejection::Cpu => "cpu",
            Rejection::Memory => "memory",
            Rejection::Gpu => "gpu",
        }
    }
}

/// Runs every filter; `Ok` when the pod may be placed on the node.
#[inline(always)]
pub fn check(info: &NodeInfo, node: &NodeState, pod: &PodRequest) -> Result<(), Rejection> {
    if !pod.gpu.is_none() && (node.gpu_count == 0 || !pod.models.accepts(node.model)) {
        return Err(Rejection::GpuModel);
    }
    if let Some(c) = &pod.constraints {
        if !selector_matches(&c.node_selector, &info.labels) {
            return Err(Rejection::NodeSelector);
        }
        if !tolerates_all(&c.tolerations, &info.taints) {
            return Err(Rejection::Taint);
        }
    } else if node.has_hard_taints {
        return Err(Rejection::Taint);
    }
    if node.cpu_free < pod.cpu_milli {
        return Err(Rejection::Cpu);
    }
    if node.memory_free < pod.memory_bytes {
        return Err(Rejection::Memory);
    }
    if !node.gpu_fits(pod.gpu) {
        return Err(Rejection::Gpu);
    }
    Ok(())
}

/// How many nodes each filter rejected, for an unschedulable pod.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RejectionCounts {
    counts: [u32; 6],
}

impl RejectionCounts {
    /// Counts one rejection.
    #[inline]
    pub fn add(&mut self, r: Rejection) {
        self.counts[r as usize] += 1;
    }

    /// Nodes rejected by one filter.
    pub fn get(&self, r: Rejection) -> u32 {
        self.counts[r as usize]
    }

    /// All nodes rejected.
    pub fn total(&self) -> u32 {
        self.counts.iter().sum()
    }
}

impl std::fmt::Display for RejectionCounts {
    /// In the style of kube-scheduler's "0/3 nodes are available" message.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = Rejection::ALL
            .iter()
            .filter(|r| self.get(**r) > 0)
            .map(|r| format!("{} {}", self.get(*r), r.label()))
            .collect();
        write!(f, "0/{} nodes are available: {}", self.total(), parts.join(", "))
    }
}
