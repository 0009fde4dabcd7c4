//! The domain model of gpuplane: Kubernetes quantities, nodes with GPU devices, pods with GPU shares,
//! taints and tolerations, and loaders that read them from openb trace CSVs and Kubernetes YAML.
//! Nothing here does I/O beyond reading from a caller-supplied reader or string.
#![forbid(unsafe_code)]

pub mod error;
pub mod manifest;
pub mod openb;
pub mod path;
pub mod quantity;
pub mod resources;

pub use error::{LoadError, yaml_error_parts};
pub use quantity::{Quantity, QuantityError};
pub use resources::{
    GpuRequest, MAX_GPUS_PER_NODE, MILLI_PER_GPU, Node, Pod, Taint, TaintEffect, Toleration, TolerationOperator,
};
