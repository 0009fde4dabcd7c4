//! PersistentVolumeClaims as kube-scheduler's VolumeBinding sees them: a claim must exist and not be
//! going away; a claim of an Immediate class must already be bound; a bound claim's volume must exist and
//! its node affinity must admit the node. Claims of WaitForFirstConsumer classes that are not bound yet
//! are refused with a message: gpuplane does not pick volumes or trigger provisioning.

use std::collections::HashMap;

use k8s_openapi::api::core::v1 as api;
use k8s_openapi::api::storage::v1::StorageClass;

use super::labels::{Labels, NodeTerm};

const BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";

/// A claim, reduced.
#[derive(Debug, Clone)]
struct Claim {
    volume: Option<String>,
    class: Option<String>,
    deleting: bool,
}

/// The claims, volumes and storage classes of the cluster.
#[derive(Debug, Clone, Default)]
pub struct Volumes {
    claims: HashMap<(String, String), Claim>,
    /// Bound volumes' node affinity terms (ORed; `None`: any node).
    volumes: HashMap<String, Option<Vec<NodeTerm>>>,
    /// Classes by name: true for WaitForFirstConsumer.
    delayed: HashMap<String, bool>,
}

impl Volumes {
    /// Reads the objects; a volume whose node affinity cannot be read admits no node.
    pub fn new(
        claims: &[api::PersistentVolumeClaim],
        volumes: &[api::PersistentVolume],
        classes: &[StorageClass],
    ) -> Volumes {
        let claims = claims
            .iter()
            .map(|c| {
                let key =
                    (c.metadata.namespace.clone().unwrap_or_default(), c.metadata.name.clone().unwrap_or_default());
                let spec = c.spec.as_ref();
                let bound = c.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(BIND_COMPLETED));
                let claim = Claim {
                    volume: spec.and_then(|s| s.volume_name.clone()).filter(|v| !v.is_empty() && bound),
                    class: spec.and_then(|s| s.storage_class_name.clone()).filter(|c| !c.is_empty()),
                    deleting: c.metadata.deletion_timestamp.is_some(),
                };
                (key, claim)
            })
            .collect();
        let volumes = volumes
            .iter()
            .map(|v| {
                let terms = v.spec.as_ref().and_then(|s| s.node_affinity.as_ref()).and_then(|a| a.required.as_ref());
                let compiled =
                    terms.map(|t| t.node_selector_terms.iter().map(NodeTerm::compile_lenient).collect::<Vec<_>>());
                (v.metadata.name.clone().unwrap_or_default(), compiled)
            })
            .collect();
        let delayed = classes
            .iter()
            .map(|c| {
                let wffc = c.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer");
                (c.metadata.name.clone().unwrap_or_default(), wffc)
            })
            .collect();
        Volumes { claims, volumes, delayed }
    }

    /// The bound volumes of the pod's claims, or why no node can take the pod now.
    pub fn prefilter(&self, namespace: &str, pod_name: &str, volumes: &[api::Volume]) -> Result<Vec<String>, String> {
        let mut bound = Vec::new();
        let mut unbound_immediate = false;
        for v in volumes {
            let (name, ephemeral) = match (&v.persistent_volume_claim, &v.ephemeral) {
                (Some(c), _) => (c.claim_name.clone(), false),
                (None, Some(_)) => (format!("{pod_name}-{}", v.name), true),
                _ => continue,
            };
            let Some(claim) = self.claims.get(&(namespace.to_owned(), name.clone())) else {
                return Err(if ephemeral {
                    format!("waiting for ephemeral volume controller to create the persistentvolumeclaim {name:?}")
                } else {
                    format!("persistentvolumeclaim {name:?} not found")
                });
            };
            if claim.deleting {
                return Err(format!("persistentvolumeclaim {name:?} is being deleted"));
            }
            match &claim.volume {
                Some(volume) => bound.push(volume.clone()),
                None => match claim.class.as_ref().map(|c| self.delayed.get(c)) {
                    Some(None) => {
                        return Err(format!(
                            "storageclass.storage.k8s.io {:?} not found",
                            claim.class.as_deref().unwrap_or_default()
                        ));
                    }
                    Some(Some(true)) => {
                        return Err(format!(
                            "persistentvolumeclaim {name:?} waits for its first consumer; gpuplane does not bind or \
                             provision volumes (bind the claim first, or schedule the pod with kube-scheduler)"
                        ));
                    }
                    _ => unbound_immediate = true,
                },
            }
        }
        if unbound_immediate {
            return Err("pod has unbound immediate PersistentVolumeClaims".to_owned());
        }
        Ok(bound)
    }

    /// Whether every bound volume admits the node.
    pub fn check(&self, bound: &[String], node: &str, labels: &Labels) -> Result<(), &'static str> {
        for v in bound {
            match self.volumes.get(v) {
                None => return Err("node(s) unavailable due to one or more pvc(s) bound to non-existent pv(s)"),
                Some(Some(terms)) if !terms.iter().any(|t| t.matches(node, labels)) => {
                    return Err("node(s) had volume node affinity conflict");
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}
