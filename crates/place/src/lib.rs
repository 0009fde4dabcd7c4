//! The placement engine: filters, GPU-level scorers (FGD and the baselines of the FGD paper), the
//! fragmentation measure, and a pure decide-then-bind contract. No I/O, no async, no clocks.
//!
//! The engine decides; the caller applies the decision, and only then does the cluster change:
//!
//! ```
//! use gpuplane_core::{GpuRequest, Node, Pod};
//! use gpuplane_place::{Cluster, Decision, Engine, EngineConfig, Policy, TieBreak};
//!
//! let node = |name: &str| Node {
//!     name: name.into(),
//!     cpu_milli: 32_000,
//!     memory_bytes: 128 << 30,
//!     gpu_count: 4,
//!     gpu_model: Some("T4".into()),
//!     labels: Default::default(),
//!     taints: vec![],
//! };
//! let mut cluster = Cluster::new(&[node("a"), node("b")]).unwrap();
//! let mut engine =
//!     Engine::new(EngineConfig { policy: Policy::BestFit, target: None, seed: 1, tie_break: TieBreak::LowestName })
//!         .unwrap();
//! let pod = cluster.request(&Pod::with_requests("llm", 4_000, 16 << 30, GpuRequest { count: 1, milli_per_gpu: 500 }));
//! let Decision::Place(placement) = engine.decide(&cluster, &pod) else { panic!("two empty nodes fit") };
//! assert_eq!(placement.gpus[0].milli, 500);
//! cluster.bind(&pod, &placement).unwrap();
//! assert_eq!(cluster.allocated_gpu_milli(), 500);
//! ```
#![forbid(unsafe_code)]

pub mod assignment;
pub mod cluster;
pub mod defrag;
pub mod engine;
pub mod filter;
pub mod frag;
pub mod locality;
pub mod policy;
pub mod preempt;
pub mod reserve;
pub mod serving;
pub mod window;

pub use cluster::{
    BindError, Cluster, ClusterError, GpuShare, ModelSet, NodeId, NodeState, Placement, PodRequest, Shape,
};
pub use engine::{Decision, Engine, EngineConfig, EngineError, TieBreak};
pub use filter::{Rejection, RejectionCounts};
pub use frag::{TargetWorkload, WeightedShape, WorkloadError};
pub use locality::{Bandwidth, Explanation, Locality, Tier};
pub use policy::{Policy, UnknownPolicy};
pub use preempt::{Evictable, Preemption, VictimChoice};
pub use reserve::{Reserve, Reserved, Slots};
pub use serving::{ServingSteps, Step};

/// Nodes for the unit tests of several modules.
#[cfg(test)]
mod test_nodes {
    use gpuplane_core::Node;

    /// A node with 64 cores, 256 GiB and `gpus` GPUs of `model`, no labels or taints.
    pub(crate) fn gpu_node(name: &str, gpus: u8, model: &str) -> Node {
        Node {
            name: name.into(),
            cpu_milli: 64_000,
            memory_bytes: 256 << 30,
            gpu_count: gpus,
            gpu_model: Some(model.into()),
            labels: Default::default(),
            taints: vec![],
        }
    }
}
