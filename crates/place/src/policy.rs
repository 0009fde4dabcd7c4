//! The placement policies and their GPU-selection rules, scored exactly as the FGD paper's simulator
//! scores them (integer scores 0–100; the highest wins, ties broken at random by the engine).

use std::fmt;
use std::str::FromStr;

use gpuplane_core::{GpuRequest, MILLI_PER_GPU};
use thiserror::Error;

use crate::cluster::{GPU_CLASSES, NodeInfo, NodeState, PodRequest, gpu_class};

/// CPU of the largest node, used to normalise CPU (128 cores).
pub const MAX_NODE_CPU_MILLI: f64 = 128_000.0;
/// GPU milli of the largest node, used to normalise GPU (8 GPUs).
pub const MAX_NODE_GPU_MILLI: f64 = 8_000.0;
const FULL_GPU: u16 = MILLI_PER_GPU as u16;

/// A placement policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Policy {
    /// A uniformly random feasible node.
    Random,
    /// The Kubernetes default scheduler's NodeResourcesFit LeastAllocated: the node with the most CPU and
    /// memory left after placement (spreading); no GPU-level awareness, a shared GPU is the first that fits.
    LeastAllocated,
    /// Smallest dot product of free (CPU, GPU) and demand, both normalised to the largest node.
    DotProd,
    /// Prefer nodes that already run pods of the same GPU class (sharing, 1, 2, 4, 8 GPUs).
    GpuClustering,
    /// Prefer partly used GPUs, then partly used nodes, then the smallest empty node.
    GpuPacking,
    /// Least CPU + GPU left over after placement.
    BestFit,
    /// Fragmentation Gradient Descent: least growth of expected fragmentation.
    Fgd,
    /// gpuplane's policy: fragmentation growth measured exactly against a workload learned from the
    /// arrivals so far (see `docs/placement-policy.md`).
    Gpuplane,
}

/// A policy name that is not known.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "unknown policy {0:?}; expected one of: random, kube-default, dotprod, clustering, packing, bestfit, fgd, gpuplane (or all)"
)]
pub struct UnknownPolicy(pub String);

impl Policy {
    /// Every policy, in the order reports list them.
    pub const ALL: [Policy; 8] = [
        Policy::Random,
        Policy::LeastAllocated,
        Policy::DotProd,
        Policy::GpuClustering,
        Policy::GpuPacking,
        Policy::BestFit,
        Policy::Fgd,
        Policy::Gpuplane,
    ];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Random => "random",
            Policy::LeastAllocated => "kube-default",
            Policy::DotProd => "dotprod",
            Policy::GpuClustering => "clustering",
            Policy::GpuPacking => "packing",
            Policy::BestFit => "bestfit",
            Policy::Fgd => "fgd",
            Policy::Gpuplane => "gpuplane",
        }
    }

    /// The display name used in tables and charts.
    pub fn title(self) -> &'static str {
        match self {
            Policy::Random => "Random",
            Policy::LeastAllocated => "kube-default",
            Policy::DotProd => "DotProd",
            Policy::GpuClustering => "Clustering",
            Policy::GpuPacking => "Packing",
            Policy::BestFit => "BestFit",
            Policy::Fgd => "FGD",
            Policy::Gpuplane => "gpuplane",
        }
    }

    /// Parses a comma-separated list of policy names; `all` means every policy.
    pub fn parse_list(list: &str) -> Result<Vec<Policy>, UnknownPolicy> {
        let mut out = Vec::new();
        for item in list.split(',').map(str::trim) {
            if item.eq_ignore_ascii_case("all") {
                for p in Policy::ALL {
                    if !out.contains(&p) {
                        out.push(p);
                    }
                }
                continue;
            }
            let p: Policy = item.parse()?;
            if !out.contains(&p) {
                out.push(p);
            }
        }
        Ok(out)
    }
}

impl FromStr for Policy {
    type Err = UnknownPolicy;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "random" => Ok(Policy::Random),
            "kubedefault" | "leastallocated" => Ok(Policy::LeastAllocated),
            "dotprod" | "dotproduct" => Ok(Policy::DotProd),
            "clustering" | "gpuclustering" => Ok(Policy::GpuClustering),
            "packing" | "gpupacking" => Ok(Policy::GpuPacking),
            "bestfit" => Ok(Policy::BestFit),
            "fgd" => Ok(Policy::Fgd),
            "gpuplane" => Ok(Policy::Gpuplane),
            _ => Err(UnknownPolicy(s.to_owned())),
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.title())
    }
}

/// LeastAllocated as the default scheduler scores it: the mean over CPU and memory of the share of the
/// node's capacity left free after placing the pod, 0–100.
pub fn least_allocated_score(info: &NodeInfo, node: &NodeState, pod: &PodRequest) -> i64 {
    let left = |free: u64, request: u64, capacity: u64| {
        if capacity == 0 { 0.0 } else { free.saturating_sub(request) as f64 * 100.0 / capacity as f64 }
    };
    let cpu = left(node.cpu_free, pod.cpu_milli, info.cpu_capacity);
    let memory = left(node.memory_free, pod.memory_bytes, info.memory_capacity);
    ((cpu + memory) / 2.0) as i64
}

/// The lowest-index GPU with at least `milli` free: a GPU choice that knows nothing of fragmentation.
pub fn first_fit_gpu(node: &NodeState, milli: u16) -> Option<u8> {
    (0..node.gpu_count).find(|&i| node.gpu_free[usize::from(i)] >= milli)
}

/// DotProd: 100 · (1 − (free · demand) / 2), both vectors normalised to the largest node.
/// The smaller the overlap of what is left with what is asked, the higher the score.
pub fn dot_product_score(node: &NodeState, pod: &PodRequest) -> i64 {
    if node.cpu_free < pod.cpu_milli {
        return 0;
    }
    let dot = (node.cpu_free as f64 / MAX_NODE_CPU_MILLI) * (pod.cpu_milli as f64 / MAX_NODE_CPU_MILLI)
        + (f64::from(node.gpu_free_total()) / MAX_NODE_GPU_MILLI)
            * (f64::from(pod.gpu.total_milli()) / MAX_NODE_GPU_MILLI);
    (100.0 * (1.0 - dot / 2.0)) as i64
}

/// GpuClustering: 75–100 if the node runs only this pod's GPU class, 50–75 if it runs it among others,
/// 25–50 if it runs no GPU pod, 0–25 otherwise; within a band, fuller nodes score higher.
/// CPU-only pods score 0 everywhere.
pub fn gpu_clustering_score(node: &NodeState, pod: &PodRequest) -> i64 {
    let Some(class) = gpu_class(pod.gpu) else { return 0 };
    let left = i64::from(node.gpu_free_total());
    let fullness = 25 * (MAX_NODE_GPU_MILLI as i64 - left) / MAX_NODE_GPU_MILLI as i64;
    let classes = &node.gpu_pods_by_class;
    let distinct = classes.iter().filter(|&&n| n > 0).count();
    debug_assert!(classes.len() == GPU_CLASSES);
    let band = if classes[class] > 0 {
        if distinct == 1 { 75 } else { 50 }
    } else if distinct == 0 {
        25
    } else {
        0
    };
    fullness + band
}

/// GpuPacking: using already shared GPUs scores 50–100, using free GPUs on a used node 33–50, an empty
/// node 0–33 with smaller nodes first. CPU-only pods score 0 everywhere.
pub fn gpu_packing_score(node: &NodeState, pod: &PodRequest) -> i64 {
    if pod.gpu.is_none() {
        return 0;
    }
    let full = node.full_gpus() as i64;
    if full == i64::from(node.gpu_count) {
        return (33 - full).max(full);
    }
    let mut used_full = 0i64;
    let mut free_percent_sum = 0i64;
    let mut wanted = pod.gpu.count;
    for idx in ascending_free_order(node) {
        if wanted == 0 {
            break;
        }
        let free = node.gpu_free[idx];
        if free >= pod.gpu.milli_per_gpu {
            wanted -= 1;
            if free == FULL_GPU {
                used_full += 1;
            }
            free_percent_sum += i64::from(free) * 100 / i64::from(MILLI_PER_GPU);
        }
    }
    if wanted != 0 {
        return 0;
    }
    if used_full > 0 { (50 - used_full).max(33) } else { (100 - free_percent_sum / 10).max(50) }
}

/// BestFit before normalisation: 100 · (1 − [½ (CPU left after)/128 cores + ½ (GPU left after)/8 GPUs]).
pub fn best_fit_raw_score(node: &NodeState, pod: &PodRequest) -> i64 {
    let cpu_left = node.cpu_free as f64 - pod.cpu_milli as f64;
    let gpu_left = f64::from(node.gpu_free_total()) - f64::from(pod.gpu.total_milli());
    let mut left = cpu_left / MAX_NODE_CPU_MILLI * 0.5;
    left += gpu_left / MAX_NODE_GPU_MILLI * 0.5;
    ((1.0 - left) * 100.0) as i64
}

/// GPU indices of a node sorted by free milli, smallest first, stable on index.
pub fn ascending_free_order(node: &NodeState) -> impl Iterator<Item = usize> {
    let mut order = [0usize, 1, 2, 3, 4, 5, 6, 7];
    let n = usize::from(node.gpu_count);
    order[..n].sort_by_key(|&i| node.gpu_free[i]);
    order.into_iter().take(n)
}

/// For whole-GPU pods: the lowest-index fully free GPUs.
pub fn lowest_full_gpus(node: &NodeState, gpu: GpuRequest) -> Vec<u8> {
    (0..node.gpu_count).filter(|&i| node.gpu_free[usize::from(i)] == FULL_GPU).take(usize::from(gpu.count)).collect()
}

/// For a sharing pod: the GPU with the least free milli that still fits, lowest index on ties.
pub fn best_fit_gpu(node: &NodeState, milli: u16) -> Option<u8> {
    let mut best: Option<u8> = None;
    for i in 0..node.gpu_count {
        let free = node.gpu_free[usize::from(i)];
        if free >= milli && best.is_none_or(|b| free < node.gpu_free[usize::from(b)]) {
            best = Some(i);
        }
    }
    best
}

/// Simulates `NodeResource.Sub`: the node's GPUs after taking the pod from the smallest sufficient GPUs.
pub fn gpus_after_packing(node: &NodeState, gpu: GpuRequest) -> [u16; 8] {
    let mut after = node.gpu_free;
    let mut wanted = gpu.count;
    for idx in ascending_free_order(node) {
        if wanted == 0 {
            break;
        }
        if after[idx] >= gpu.milli_per_gpu {
            after[idx] -= gpu.milli_per_gpu;
            wanted -= 1;
        }
    }
    after
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ModelSet;

    fn node(cpu_free: u64, gpus: &[u16]) -> NodeState {
        let mut gpu_free = [0u16; 8];
        gpu_free[..gpus.len()].copy_from_slice(gpus);
        NodeState {
            cpu_free,
            memory_free: u64::MAX,
            gpu_free,
            gpu_count: gpus.len() as u8,
            model: Some(0),
            gpu_pods_by_class: [0; GPU_CLASSES],
            stamp: 0,
            has_hard_taints: false,
        }
    }

    fn pod(cpu: u64, count: u8, milli: u16) -> PodRequest {
        PodRequest {
            cpu_milli: cpu,
            memory_bytes: 0,
            gpu: GpuRequest { count, milli_per_gpu: milli },
            models: ModelSet::Any,
            priority: 0,
            constraints: None,
        }
    }

    #[test]
    fn policy_names_parse() {
        assert_eq!(Policy::parse_list("fgd,BestFit").unwrap(), vec![Policy::Fgd, Policy::BestFit]);
        assert_eq!(Policy::parse_list("all").unwrap().len(), 8);
        assert_eq!(Policy::parse_list("kube-default").unwrap(), vec![Policy::LeastAllocated]);
        let err = Policy::parse_list("fgd,tetris").unwrap_err().to_string();
        assert!(err.contains("tetris") && err.contains("bestfit"), "{err}");
    }

    #[test]
    fn least_allocated_prefers_the_emptier_node_and_ignores_gpus() {
        let info = NodeInfo {
            name: "n".into(),
            cpu_capacity: 64_000,
            memory_capacity: 0,
            labels: Default::default(),
            taints: vec![],
        };
        let p = pod(16_000, 1, 500);
        // CPU: (64 − 16) / 64 = 75 %; memory capacity 0 counts 0: mean 37.
        assert_eq!(least_allocated_score(&info, &node(64_000, &[1000, 1000]), &p), 37);
        assert_eq!(least_allocated_score(&info, &node(32_000, &[1000, 1000]), &p), 12);
        // GPUs in use do not change it.
        assert_eq!(least_allocated_score(&info, &node(64_000, &[0, 500]), &p), 37);
        assert_eq!(first_fit_gpu(&node(64_000, &[400, 900, 1000]), 500), Some(1));
    }

    #[test]
    fn packing_prefers_shared_gpus_then_used_nodes() {
        let p = pod(1000, 1, 500);
        assert_eq!(gpu_packing_score(&node(64_000, &[1000, 1000]), &p), 31, "empty 2-GPU node: 33 - 2");
        assert_eq!(gpu_packing_score(&node(64_000, &[1000; 8]), &p), 25, "empty 8-GPU node: 33 - 8");
        assert_eq!(gpu_packing_score(&node(64_000, &[0, 1000]), &p), 49, "one fresh GPU on a used node");
        assert_eq!(gpu_packing_score(&node(64_000, &[600, 1000]), &p), 94, "shared GPU with 60 % free");
        assert_eq!(gpu_packing_score(&node(64_000, &[1000]), &pod(1000, 0, 0)), 0);
    }

    #[test]
    fn dot_product_and_best_fit_match_reference_arithmetic() {
        let n = node(64_000, &[1000, 1000]);
        let p = pod(8000, 1, 1000);
        // dot = 0.5 * 0.0625 + 0.25 * 0.125 = 0.0625; 100 * (1 - 0.03125) = 96.875 -> 96
        assert_eq!(dot_product_score(&n, &p), 96);
        // left = (56/128)/2 + (1/8)/2 = 0.21875 + 0.0625 = 0.28125 -> 71.875 -> 71
        assert_eq!(best_fit_raw_score(&n, &p), 71);
    }

    #[test]
    fn clustering_bands() {
        let mut n = node(64_000, &[1000; 8]);
        let share = pod(1000, 1, 500);
        assert_eq!(gpu_clustering_score(&n, &share), 25, "idle node: band 25 + fullness 0");
        n.gpu_pods_by_class[0] = 1;
        n.gpu_free[0] = 500;
        assert_eq!(gpu_clustering_score(&n, &share), 75 + 25 * 500 / 8000);
        n.gpu_pods_by_class[1] = 1;
        n.gpu_free[1] = 0;
        assert_eq!(gpu_clustering_score(&n, &share), 50 + 25 * 1500 / 8000);
        assert_eq!(gpu_clustering_score(&n, &pod(1000, 2, 1000)), 25 * 1500 / 8000);
        assert_eq!(gpu_clustering_score(&n, &pod(1000, 0, 0)), 0);
    }

    #[test]
    fn gpu_choice_rules() {
        let n = node(64_000, &[1000, 300, 1000, 600]);
        assert_eq!(best_fit_gpu(&n, 250), Some(1));
        assert_eq!(best_fit_gpu(&n, 500), Some(3));
        assert_eq!(best_fit_gpu(&n, 700), Some(0));
        assert_eq!(lowest_full_gpus(&n, GpuRequest { count: 2, milli_per_gpu: 1000 }), vec![0, 2]);
        let after = gpus_after_packing(&n, GpuRequest { count: 1, milli_per_gpu: 500 });
        assert_eq!(&after[..4], &[1000, 300, 1000, 100]);
    }
}
