//! The placement engine: filters, GPU-level scorers (FGD and the baselines of the FGD paper), the
//! fragmentation measure, and a pure decide-then-bind contract. No I/O, no async, no clocks.
#![forbid(unsafe_code)]

pub mod cluster;
pub mod engine;
pub mod filter;
pub mod frag;
pub mod policy;

pub use cluster::{
    BindError, Cluster, ClusterError, GpuShare, ModelSet, NodeId, NodeState, Placement, PodRequest, Shape,
};
pub use engine::{Decision, Engine, EngineConfig, EngineError, TieBreak};
pub use filter::{Rejection, RejectionCounts};
pub use frag::{TargetWorkload, WeightedShape, WorkloadError};
pub use policy::{Policy, UnknownPolicy};
