//! The Kubernetes side of gpuplane: Node and Pod objects turned into the engine's snapshot (with the
//! GPU assignments of bound pods), the assignment annotation, and the kube-scheduler extender
//! (`filter`, `prioritize`, `bind` over HTTP) for clusters that keep kube-scheduler, the secondary
//! scheduler for clusters that run gpuplane beside it, and the admission webhook.
#![forbid(unsafe_code)]

pub use gpuplane_place::assignment;
/// The HTTP server the extender, the webhook and the metrics endpoint run on.
pub use gpuplane_serve as server;
pub mod client;
pub mod evidence;
pub mod extender;
pub mod fit;
pub mod inventory;
pub mod metrics;
pub mod node_pods;
pub mod objects;
pub mod ratelimit;
pub mod scheduler;
pub mod serve;
pub mod snapshot;
pub mod tls;
pub mod tokenreview;
pub mod webhook;

pub use extender::{BindFailure, BindTarget, Binder, Extender, ExtenderConfig, router};
pub use snapshot::{BoundPod, Snapshot, Warning};
