//! Talking to the API server with kube-rs: the [`Binder`] that writes a placement in one request — the
//! `pods/binding` subresource, as kube-scheduler binds, carrying the GPU assignment as its annotations.

use k8s_openapi::api::core::v1 as api;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

use crate::assignment::{ASSIGNMENT_ANNOTATION, ASSIGNMENT_UUIDS_ANNOTATION};
use crate::extender::{BindFailure, BindTarget, Binder};
use crate::scheduler::leader::Fence;

/// Binds pods through the Kubernetes API.
#[derive(Clone)]
pub struct KubeBinder {
    client: kube::Client,
    field_manager: String,
    fence: Fence,
}

impl KubeBinder {
    /// A binder that writes as `field_manager` (the owner of the annotations in the pod's managed fields).
    pub fn new(client: kube::Client, field_manager: impl Into<String>) -> Self {
        KubeBinder { client, field_manager: field_manager.into(), fence: Fence::open() }
    }

    /// Binds only while `fence` holds (a leader's lease).
    pub fn fenced(self, fence: Fence) -> Self {
        KubeBinder { fence, ..self }
    }
}

/// The failure of a write refused because this replica no longer leads.
pub(crate) fn not_leader() -> BindFailure {
    BindFailure::Other("not written: this replica no longer holds the lease".to_owned())
}

/// Sorts an API error by what the caller should do about it, with `context` in front of the message.
pub(crate) fn failure(context: String, e: kube::Error) -> BindFailure {
    match e {
        kube::Error::Api(status) => {
            let message = format!("{context}: {} ({}): {}", status.reason, status.code, status.message);
            match status.code {
                404 => BindFailure::Gone(message),
                // A UID precondition that no longer holds means the pod was replaced.
                409 if status.message.contains("UID") => BindFailure::Gone(message),
                409 => BindFailure::Conflict(message),
                _ => BindFailure::Other(message),
            }
        }
        other => BindFailure::Other(format!("{context}: {other}")),
    }
}

impl Binder for KubeBinder {
    async fn bind(&self, target: BindTarget) -> Result<(), BindFailure> {
        if !self.fence.holds() {
            return Err(not_leader());
        }
        let pods: Api<api::Pod> = Api::namespaced(self.client.clone(), &target.namespace);
        let mut metadata = json!({"name": target.name, "namespace": target.namespace});
        if !target.uid.is_empty() {
            // A UID makes the API server refuse the binding if the pod was replaced meanwhile.
            metadata["uid"] = json!(target.uid);
        }
        // The API server copies a Binding's annotations onto the pod in the same write that sets its node:
        // the GPU assignment and the binding succeed or fail together, and no separate write can change
        // the assignment of a pod that is already bound.
        if !target.assignment.is_empty() {
            metadata["annotations"] = json!({ASSIGNMENT_ANNOTATION: target.assignment});
            if !target.assignment_uuids.is_empty() {
                metadata["annotations"][ASSIGNMENT_UUIDS_ANNOTATION] = json!(target.assignment_uuids);
            }
        }
        let binding = json!({
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": metadata,
            "target": {"apiVersion": "v1", "kind": "Node", "name": target.node},
        });
        let params = PostParams { field_manager: Some(self.field_manager.clone()), ..Default::default() };
        pods.create_subresource::<_, serde_json::Value>("binding", &target.name, &params, &binding)
            .await
            .map(|_| ())
            .map_err(|e| failure(format!("binding pod {}/{} to {}", target.namespace, target.name, target.node), e))
    }
}
