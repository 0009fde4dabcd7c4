//! Talking to the API server with kube-rs: the [`Binder`] that writes a placement — the GPU assignment
//! annotations first (a merge patch), then the `pods/binding` subresource, as kube-scheduler binds.

use k8s_openapi::api::core::v1 as api;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

use crate::assignment::{ASSIGNMENT_ANNOTATION, ASSIGNMENT_UUIDS_ANNOTATION};
use crate::extender::{BindFailure, BindTarget, Binder};

/// Binds pods through the Kubernetes API.
#[derive(Clone)]
pub struct KubeBinder {
    client: kube::Client,
    field_manager: String,
}

impl KubeBinder {
    /// A binder that patches as `field_manager` (server-side apply ownership of the annotation).
    pub fn new(client: kube::Client, field_manager: impl Into<String>) -> Self {
        KubeBinder { client, field_manager: field_manager.into() }
    }
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
        let pods: Api<api::Pod> = Api::namespaced(self.client.clone(), &target.namespace);
        if !target.assignment.is_empty() {
            let mut annotations = json!({ASSIGNMENT_ANNOTATION: target.assignment});
            if !target.assignment_uuids.is_empty() {
                annotations[ASSIGNMENT_UUIDS_ANNOTATION] = json!(target.assignment_uuids);
            }
            let patch = json!({"metadata": {"annotations": annotations}});
            let params = PatchParams { field_manager: Some(self.field_manager.clone()), ..Default::default() };
            pods.patch(&target.name, &params, &Patch::Merge(&patch))
                .await
                .map_err(|e| failure(format!("annotating pod {}/{}", target.namespace, target.name), e))?;
        }
        let mut metadata = json!({"name": target.name, "namespace": target.namespace});
        if !target.uid.is_empty() {
            // A UID makes the API server refuse the binding if the pod was replaced meanwhile.
            metadata["uid"] = json!(target.uid);
        }
        let binding = json!({
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": metadata,
            "target": {"apiVersion": "v1", "kind": "Node", "name": target.node},
        });
        pods.create_subresource::<_, serde_json::Value>("binding", &target.name, &PostParams::default(), &binding)
            .await
            .map(|_| ())
            .map_err(|e| failure(format!("binding pod {}/{} to {}", target.namespace, target.name, target.node), e))
    }
}
