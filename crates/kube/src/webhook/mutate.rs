//! The mutating review: a JSON Patch that moves a GPU pod into the GPU pool (node selector, toleration,
//! `schedulerName`, priority class) and puts its GPUs in its requests and limits as `gpuplane.io/gpu-milli`,
//! the one resource gpuplane's device plugin serves: a share asked by annotation, and whole GPUs asked as
//! `nvidia.com/gpu` by a pod gpuplane schedules. Requests cannot change after creation, and the API server's
//! ResourceQuota counts them: one GPU budget per namespace.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use gpuplane_core::manifest::NODE_GPU_MILLI_RESOURCE;
use gpuplane_core::{Taint, TaintEffect};
use serde_json::{Value, json};

use super::{AdmissionRequest, AdmissionResponse, WebhookConfig, allow, deny, pod_of};
use crate::objects;

/// JSON Pointer escaping of a map key (`~` → `~0`, `/` → `~1`).
fn pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// The mutating review of a pod CREATE; anything else is admitted unchanged.
pub fn mutate(config: &WebhookConfig, req: &AdmissionRequest) -> AdmissionResponse {
    // A pod's scheduling fields cannot change after creation: an UPDATE is left alone, never patched.
    if req.operation != "CREATE" || req.sub_resource.is_some() {
        return allow(&req.uid);
    }
    let (pod, domain) = match pod_of(req) {
        Ok(Some(p)) => p,
        Ok(None) => return allow(&req.uid),
        Err(message) => return deny(&req.uid, 400, message),
    };
    if domain.gpu.is_none() {
        return allow(&req.uid);
    }
    let spec = pod.spec.clone().unwrap_or_default();
    let mut patch: Vec<Value> = Vec::new();
    let ours = match spec.scheduler_name.as_deref() {
        None | Some("") | Some("default-scheduler") => true,
        Some(name) => name == config.scheduler_name,
    };
    if !objects::asks_gpu_by_resource(&pod) {
        share_into_requests(&spec, domain.gpu.total_milli(), &mut patch);
    } else if ours {
        whole_gpus_as_milli(&spec, &mut patch);
    }
    match &spec.node_selector {
        None => patch.push(json!({"op": "add", "path": "/spec/nodeSelector", "value": config.pool_selector})),
        Some(existing) => {
            for (k, v) in &config.pool_selector {
                if existing.get(k) != Some(v) {
                    patch.push(json!({"op": "add", "path": format!("/spec/nodeSelector/{}", pointer(k)), "value": v}));
                }
            }
        }
    }
    // No effect: the pool may be tainted NoExecute as well as NoSchedule (the kubelet enforces NoExecute
    // even on pods created with a node name, docs/security.md).
    let toleration = json!({"key": config.pool_taint_key, "operator": "Exists"});
    let tolerated = [TaintEffect::NoSchedule, TaintEffect::NoExecute].into_iter().all(|effect| {
        let taint = Taint { key: config.pool_taint_key.clone(), value: String::new(), effect };
        domain.tolerations.iter().any(|t| t.tolerates(&taint))
    });
    if !tolerated {
        match &spec.tolerations {
            None => patch.push(json!({"op": "add", "path": "/spec/tolerations", "value": [toleration]})),
            Some(_) => patch.push(json!({"op": "add", "path": "/spec/tolerations/-", "value": toleration})),
        }
    }
    match spec.scheduler_name.as_deref() {
        None | Some("") | Some("default-scheduler") => {
            patch.push(json!({"op": "add", "path": "/spec/schedulerName", "value": config.scheduler_name}))
        }
        Some(_) => {}
    }
    let class = pod.metadata.labels.as_ref().and_then(|l| l.get(&config.latency_label));
    if let (Some((name, value)), None) = (class.and_then(|c| config.priority_classes.get(c)), &spec.priority_class_name)
    {
        patch.push(json!({"op": "add", "path": "/spec/priorityClassName", "value": name}));
        patch.push(json!({"op": "add", "path": "/spec/priority", "value": value}));
    }
    if patch.is_empty() {
        return allow(&req.uid);
    }
    AdmissionResponse {
        uid: req.uid.clone(),
        allowed: true,
        patch: Some(STANDARD.encode(Value::Array(patch).to_string())),
        patch_type: Some("JSONPatch".to_owned()),
        ..Default::default()
    }
}

/// Adds `gpuplane.io/gpu-milli: milli` to the first container's requests and limits (an extended resource
/// is requested and limited alike).
fn share_into_requests(spec: &k8s_openapi::api::core::v1::PodSpec, milli: u32, patch: &mut Vec<Value>) {
    let Some(first) = spec.containers.first() else { return };
    let value = milli.to_string();
    let base = "/spec/containers/0/resources";
    let Some(resources) = &first.resources else {
        let both = json!({"requests": {NODE_GPU_MILLI_RESOURCE: value}, "limits": {NODE_GPU_MILLI_RESOURCE: value}});
        patch.push(json!({"op": "add", "path": base, "value": both}));
        return;
    };
    for (field, present) in [("requests", resources.requests.is_some()), ("limits", resources.limits.is_some())] {
        if present {
            let path = format!("{base}/{field}/{}", pointer(NODE_GPU_MILLI_RESOURCE));
            patch.push(json!({"op": "add", "path": path, "value": value}));
        } else {
            patch.push(
                json!({"op": "add", "path": format!("{base}/{field}"), "value": {NODE_GPU_MILLI_RESOURCE: value}}),
            );
        }
    }
}

/// Rewrites `nvidia.com/gpu: N` as `gpuplane.io/gpu-milli: N×1000` in every container's requests and limits:
/// on gpuplane's pool the device plugin serves only the latter, and one resource name makes one quota.
fn whole_gpus_as_milli(spec: &k8s_openapi::api::core::v1::PodSpec, patch: &mut Vec<Value>) {
    for (i, c) in spec.containers.iter().enumerate() {
        let Some(resources) = &c.resources else { continue };
        for (field, map) in [("requests", &resources.requests), ("limits", &resources.limits)] {
            let Some(q) = map.as_ref().and_then(|m| m.get("nvidia.com/gpu")) else { continue };
            let Ok(n) = gpuplane_core::Quantity::parse_non_negative(&q.0) else { continue };
            let base = format!("/spec/containers/{i}/resources/{field}");
            patch.push(json!({"op": "remove", "path": format!("{base}/nvidia.com~1gpu")}));
            let milli = (n.value().saturating_mul(1000)).to_string();
            patch.push(
                json!({"op": "add", "path": format!("{base}/{}", pointer(NODE_GPU_MILLI_RESOURCE)), "value": milli}),
            );
        }
    }
}
