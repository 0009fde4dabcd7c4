//! The node side of a GPU assignment: the node's GPU inventory and a kubelet device plugin (v1beta1
//! gRPC over the kubelet's unix socket) that hands each container exactly the GPUs the scheduler
//! assigned to its pod. See `docs/device-plugin.md`.
#![forbid(unsafe_code)]

pub mod inventory;
pub mod kubelet;
pub mod nvml;
pub mod plugin;

/// The kubelet device plugin API, v1beta1, generated from `proto/v1beta1/api.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic, clippy::unwrap_used)]
pub mod api {
    tonic::include_proto!("v1beta1");
}

use thiserror::Error;

/// What went wrong on the node side.
#[derive(Debug, Error)]
pub enum DeviceError {
    /// The inventory file is malformed.
    #[error("GPU inventory: {0}")]
    Inventory(String),
    /// NVML could not list the GPUs.
    #[error("NVML {0}")]
    Nvml(String),
    /// The kubelet could not be reached, refused the plugin, or a socket could not be served.
    #[error("kubelet: {0}")]
    Kubelet(String),
}
