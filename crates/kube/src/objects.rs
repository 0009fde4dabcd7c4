//! Kubernetes `Node` and `Pod` objects (k8s-openapi types) turned into gpuplane's domain model, with
//! the same conventions as the YAML loader (`docs/cluster-yaml.md`): GPU count from extended resources,
//! model from labels, GPU shares from annotations or `nvidia.com/gpu`.

use std::collections::BTreeMap;

use gpuplane_core::manifest::{
    NODE_GPU_MILLI_RESOURCE, NODE_GPU_MODEL_LABELS, NODE_GPU_RESOURCES, POD_GPU_COUNT_ANNOTATIONS,
    POD_GPU_MILLI_ANNOTATIONS, POD_GPU_MODEL_ANNOTATIONS,
};
use gpuplane_core::{
    GpuRequest, MAX_GPUS_PER_NODE, MILLI_PER_GPU, Node, Pod, Quantity, Taint, TaintEffect, Toleration,
    TolerationOperator,
};
use k8s_openapi::api::core::v1 as api;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as ApiQuantity;
use thiserror::Error;

/// An object whose fields cannot be turned into a node or pod.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{kind} {name}: field `{field}` is {value:?}; expected {expected}")]
pub struct ObjectError {
    /// `Node` or `Pod`.
    pub kind: &'static str,
    /// `name` or `namespace/name`.
    pub name: String,
    /// Field path.
    pub field: String,
    /// The value found.
    pub value: String,
    /// What was expected.
    pub expected: String,
}

/// `namespace/name` of a pod, the key gpuplane tracks pods by.
pub fn pod_key(pod: &api::Pod) -> String {
    format!("{}/{}", pod.metadata.namespace.as_deref().unwrap_or("default"), pod.metadata.name.as_deref().unwrap_or(""))
}

fn quantity(kind: &'static str, name: &str, field: &str, q: &ApiQuantity) -> Result<Quantity, ObjectError> {
    Quantity::parse_non_negative(&q.0).map_err(|e| ObjectError {
        kind,
        name: name.to_owned(),
        field: field.to_owned(),
        value: q.0.clone(),
        expected: format!("a non-negative Kubernetes quantity ({e})"),
    })
}

/// Converts a Node object. Allocatable is used where present, capacity otherwise.
pub fn node(n: &api::Node) -> Result<Node, ObjectError> {
    let name = n.metadata.name.clone().unwrap_or_default();
    let err = |field: &str, value: &str, expected: &str| ObjectError {
        kind: "Node",
        name: name.clone(),
        field: field.to_owned(),
        value: value.to_owned(),
        expected: expected.to_owned(),
    };
    if name.is_empty() {
        return Err(err("metadata.name", "", "a node name"));
    }
    let status = n.status.as_ref();
    let lookup = |key: &str| {
        status.and_then(|s| {
            s.allocatable.as_ref().and_then(|a| a.get(key)).or_else(|| s.capacity.as_ref().and_then(|c| c.get(key)))
        })
    };
    let cpu_milli = match lookup("cpu") {
        Some(q) => quantity("Node", &name, "status.allocatable.cpu", q)?.milli_value() as u64,
        None => return Err(err("status.allocatable.cpu", "", "the node's CPU")),
    };
    let memory_bytes = match lookup("memory") {
        Some(q) => quantity("Node", &name, "status.allocatable.memory", q)?.value() as u64,
        None => return Err(err("status.allocatable.memory", "", "the node's memory")),
    };
    // Every allocatable amount must read: kube-scheduler's resource fit compares each one.
    crate::fit::requests::node_allocatable(n).map_err(|e| err("status.allocatable", "", &e))?;
    let mut gpu_count = 0;
    if let Some((key, q)) = NODE_GPU_RESOURCES.iter().find_map(|k| lookup(k).map(|q| (*k, q))) {
        let count = quantity("Node", &name, &format!("status.allocatable.{key}"), q)?.value();
        if count > MAX_GPUS_PER_NODE as i64 {
            return Err(err(&format!("status.allocatable.{key}"), &q.0, "a GPU count from 0 to 8"));
        }
        gpu_count = count as u8;
    } else if let Some(q) = lookup(NODE_GPU_MILLI_RESOURCE) {
        let field = format!("status.allocatable.{NODE_GPU_MILLI_RESOURCE}");
        let milli = quantity("Node", &name, &field, q)?.value();
        if milli % 1000 != 0 || milli > 1000 * MAX_GPUS_PER_NODE as i64 {
            return Err(err(&field, &q.0, "milli-GPUs, 1000 per GPU, up to 8000"));
        }
        gpu_count = (milli / 1000) as u8;
    }
    let labels: BTreeMap<String, String> = n.metadata.labels.clone().unwrap_or_default();
    let gpu_model = NODE_GPU_MODEL_LABELS.iter().find_map(|l| labels.get(*l)).cloned();
    if gpu_count > 0 && gpu_model.is_none() {
        return Err(err("metadata.labels", "", &format!("a GPU model label, one of {NODE_GPU_MODEL_LABELS:?}")));
    }
    let spec = n.spec.as_ref();
    let mut taints = Vec::new();
    for t in spec.and_then(|s| s.taints.as_ref()).into_iter().flatten() {
        let effect =
            TaintEffect::parse(&t.effect).ok_or_else(|| err("spec.taints.effect", &t.effect, TaintEffect::EXPECTED))?;
        taints.push(Taint { key: t.key.clone(), value: t.value.clone().unwrap_or_default(), effect });
    }
    if spec.and_then(|s| s.unschedulable) == Some(true) {
        taints.push(Taint::unschedulable());
    }
    Ok(Node {
        name,
        cpu_milli,
        memory_bytes,
        gpu_count,
        gpu_model: gpu_model.filter(|_| gpu_count > 0),
        labels,
        taints,
    })
}

/// Converts a Pod object: effective requests (containers summed, init containers as a floor, pod
/// overhead added), GPU request, accepted models, priority, node selector, tolerations.
pub fn pod(p: &api::Pod) -> Result<Pod, ObjectError> {
    let key = pod_key(p);
    let err = |field: &str, value: &str, expected: &str| ObjectError {
        kind: "Pod",
        name: key.clone(),
        field: field.to_owned(),
        value: value.to_owned(),
        expected: expected.to_owned(),
    };
    let spec = p.spec.as_ref().ok_or_else(|| err("spec", "", "a pod spec"))?;
    // Requests as kube-scheduler and the kubelet count them: sidecars add, pod-level requests replace cpu and
    // memory, overhead adds. GPUs are asked by one regular container (checked below), so their sum is its ask.
    let effective = crate::fit::requests::pod_requests(spec).map_err(|e| err("spec", "", &e))?;
    let cpu_milli = effective.get("cpu").max(0) as u64;
    let memory_bytes = effective.get("memory").max(0) as u64;
    gpu_in_one_container(p).map_err(|(field, expected)| err(&field, "", &expected))?;
    let whole = effective.get("nvidia.com/gpu").max(0) as u64;
    // The device plugin's resource: what the kubelet hands out, and what kube-scheduler's
    // managedResources route to the extender. 250 is a quarter of one GPU, 2000 two whole GPUs.
    let device_milli = effective.get(NODE_GPU_MILLI_RESOURCE).max(0) as u64;
    let annotations = p.metadata.annotations.clone().unwrap_or_default();
    let annotation = |keys: &[&'static str]| keys.iter().find_map(|k| annotations.get(*k).map(|v| (*k, v.as_str())));
    // Resource requests cannot change once the pod exists (ResourceQuota counts them); annotations can be
    // edited. So a pod that asks through its requests is read from them alone, and the share annotations
    // count only for a pod that asks through nothing else.
    let gpu = if whole > 0 || device_milli > 0 {
        resource_request(whole, device_milli).map_err(|(field, value, expected)| err(field, &value, expected))?
    } else {
        annotated_request(annotation(POD_GPU_COUNT_ANNOTATIONS), annotation(POD_GPU_MILLI_ANNOTATIONS))
            .map_err(|(field, value, expected)| err(field, value, &expected))?
    };
    let gpu_models = match annotation(POD_GPU_MODEL_ANNOTATIONS) {
        Some((k, v)) => {
            let models: Vec<String> = v.split('|').map(|m| m.trim().to_owned()).collect();
            if models.iter().any(String::is_empty) {
                return Err(err(k, v, "GPU model names separated by '|'"));
            }
            models
        }
        None => Vec::new(),
    };
    let mut tolerations = Vec::new();
    for t in spec.tolerations.iter().flatten() {
        let operator = TolerationOperator::parse(t.operator.as_deref()).ok_or_else(|| {
            err("spec.tolerations.operator", t.operator.as_deref().unwrap_or_default(), "Equal or Exists")
        })?;
        let effect = match t.effect.as_deref() {
            None | Some("") => None,
            Some(e) => {
                Some(TaintEffect::parse(e).ok_or_else(|| err("spec.tolerations.effect", e, TaintEffect::EXPECTED))?)
            }
        };
        tolerations.push(Toleration {
            key: t.key.clone().unwrap_or_default(),
            operator,
            value: t.value.clone().unwrap_or_default(),
            effect,
        });
    }
    Ok(Pod {
        name: p.metadata.name.clone().unwrap_or_default(),
        namespace: p.metadata.namespace.clone().unwrap_or_else(|| "default".to_owned()),
        cpu_milli,
        memory_bytes,
        gpu,
        gpu_models,
        priority: spec.priority.unwrap_or(0),
        node_selector: spec.node_selector.clone().unwrap_or_default(),
        tolerations,
    })
}

/// GPUs go to one regular container: the device plugin hands a container the GPUs of a pod that asks for as
/// many as the container does, so GPUs asked by an init container, a sidecar (which runs beside the others,
/// so kube-scheduler would add it, not take the larger) or split over several containers could not be served
/// as placed. Err: the field at fault and what is expected.
fn gpu_in_one_container(p: &api::Pod) -> Result<(), (String, String)> {
    let Some(spec) = p.spec.as_ref() else { return Ok(()) };
    if let Some(c) = spec.init_containers.iter().flatten().find(|c| container_asks_gpu(c)) {
        return Err((
            format!("spec.initContainers[{}].resources", c.name),
            "GPUs in one regular container; init containers and sidecars cannot ask for GPUs".to_owned(),
        ));
    }
    let asking: Vec<&str> = spec.containers.iter().filter(|c| container_asks_gpu(c)).map(|c| c.name.as_str()).collect();
    if asking.len() > 1 {
        return Err((
            format!("spec.containers[{}].resources", asking.join(", ")),
            "GPUs in one container of the pod".to_owned(),
        ));
    }
    Ok(())
}

/// The GPU request of a pod that asks through its resource requests: `nvidia.com/gpu` whole GPUs, or the
/// device plugin's milli-GPUs (up to 1000 on one GPU, or whole GPUs in thousands); not both.
fn resource_request(whole: u64, device_milli: u64) -> Result<GpuRequest, (&'static str, String, &'static str)> {
    const MILLI_FIELD: &str = "resources.requests.gpuplane.io/gpu-milli";
    if whole > 0 && device_milli > 0 {
        return Err((MILLI_FIELD, device_milli.to_string(), "no nvidia.com/gpu request beside it"));
    }
    if whole > 0 {
        if whole > MAX_GPUS_PER_NODE as u64 {
            return Err(("resources.requests.nvidia.com/gpu", whole.to_string(), "at most 8 GPUs (one node)"));
        }
        return Ok(GpuRequest { count: whole as u8, milli_per_gpu: MILLI_PER_GPU as u16 });
    }
    match device_milli {
        1..=1000 => Ok(GpuRequest { count: 1, milli_per_gpu: device_milli as u16 }),
        m if m % 1000 == 0 && m / 1000 <= MAX_GPUS_PER_NODE as u64 => {
            Ok(GpuRequest { count: (m / 1000) as u8, milli_per_gpu: MILLI_PER_GPU as u16 })
        }
        _ => Err((
            MILLI_FIELD,
            device_milli.to_string(),
            "up to 1000 (one GPU or a share of it) or whole GPUs, at most 8000",
        )),
    }
}

/// The GPU request the share annotations (`gpuplane.io/gpu-count`, `gpuplane.io/gpu-milli`) spell, for a
/// pod that asks through no resource request.
fn annotated_request<'a>(
    count: Option<(&'static str, &'a str)>,
    milli: Option<(&'static str, &'a str)>,
) -> Result<GpuRequest, (&'static str, &'a str, String)> {
    if count.is_none() && milli.is_none() {
        return Ok(GpuRequest::NONE);
    }
    let count = match count {
        Some((k, v)) => match v.trim().parse::<u8>() {
            Ok(n) if usize::from(n) <= MAX_GPUS_PER_NODE => n,
            _ => return Err((k, v, "a GPU count from 0 to 8".to_owned())),
        },
        None => 1,
    };
    let milli_per_gpu = match milli {
        Some((k, v)) => match v.trim().parse::<u16>() {
            Ok(m) if (1..=MILLI_PER_GPU as u16).contains(&m) => m,
            _ => return Err((k, v, "milli-GPUs per GPU, from 1 to 1000".to_owned())),
        },
        None => MILLI_PER_GPU as u16,
    };
    if count > 1 && u32::from(milli_per_gpu) != MILLI_PER_GPU {
        let (k, v) = milli.unwrap_or(("gpuplane.io/gpu-milli", ""));
        return Err((k, v, "1000 when more than one GPU is requested".to_owned()));
    }
    Ok(if count == 0 { GpuRequest::NONE } else { GpuRequest { count, milli_per_gpu } })
}

/// True when the pod asks for GPUs through a resource request of its containers (`nvidia.com/gpu` or the
/// device plugin's `gpuplane.io/gpu-milli`) rather than through share annotations alone.
pub fn asks_gpu_by_resource(p: &api::Pod) -> bool {
    let Some(spec) = p.spec.as_ref() else { return false };
    spec.containers.iter().chain(spec.init_containers.iter().flatten()).any(container_asks_gpu)
}

/// True when the container requests or limits `nvidia.com/gpu` or `gpuplane.io/gpu-milli`.
fn container_asks_gpu(c: &api::Container) -> bool {
    let r = c.resources.as_ref();
    let has = |m: Option<&BTreeMap<String, ApiQuantity>>| {
        m.is_some_and(|m| ["nvidia.com/gpu", NODE_GPU_MILLI_RESOURCE].iter().any(|n| m.contains_key(*n)))
    };
    has(r.and_then(|r| r.requests.as_ref())) || has(r.and_then(|r| r.limits.as_ref()))
}

/// The GPU request the share annotations spell (`gpuplane.io/gpu-count`, `gpuplane.io/gpu-milli`), whatever
/// the resource requests say; [`GpuRequest::NONE`] without them.
pub fn annotated_gpu(p: &api::Pod) -> Result<GpuRequest, ObjectError> {
    let annotations = p.metadata.annotations.clone().unwrap_or_default();
    let annotation = |keys: &[&'static str]| keys.iter().find_map(|k| annotations.get(*k).map(|v| (*k, v.as_str())));
    annotated_request(annotation(POD_GPU_COUNT_ANNOTATIONS), annotation(POD_GPU_MILLI_ANNOTATIONS)).map_err(
        |(field, value, expected)| ObjectError {
            kind: "Pod",
            name: pod_key(p),
            field: field.to_owned(),
            value: value.to_owned(),
            expected,
        },
    )
}

/// A Node object for a domain node, with the fields [`node`] reads (the inverse of [`node`]).
pub fn api_node(n: &Node) -> api::Node {
    let mut labels = n.labels.clone();
    let mut allocatable = BTreeMap::new();
    allocatable.insert("cpu".to_owned(), ApiQuantity(format!("{}m", n.cpu_milli)));
    allocatable.insert("memory".to_owned(), ApiQuantity(n.memory_bytes.to_string()));
    // The kubelet's default --max-pods: kube-scheduler (and gpuplane's filters) admit no pod on a node without it.
    allocatable.insert("pods".to_owned(), ApiQuantity("110".to_owned()));
    if n.gpu_count > 0 {
        allocatable.insert(NODE_GPU_RESOURCES[0].to_owned(), ApiQuantity(n.gpu_count.to_string()));
        if let Some(model) = &n.gpu_model {
            labels.insert(NODE_GPU_MODEL_LABELS[0].to_owned(), model.clone());
        }
    }
    let taints: Vec<api::Taint> = n
        .taints
        .iter()
        .map(|t| api::Taint {
            key: t.key.clone(),
            value: Some(t.value.clone()),
            effect: match t.effect {
                TaintEffect::NoSchedule => "NoSchedule",
                TaintEffect::PreferNoSchedule => "PreferNoSchedule",
                TaintEffect::NoExecute => "NoExecute",
            }
            .to_owned(),
            ..Default::default()
        })
        .collect();
    api::Node {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(n.name.clone()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(api::NodeSpec { taints: (!taints.is_empty()).then_some(taints), ..Default::default() }),
        status: Some(api::NodeStatus { allocatable: Some(allocatable), ..Default::default() }),
    }
}

/// True when the pod no longer holds resources (Succeeded or Failed).
pub fn is_terminal(p: &api::Pod) -> bool {
    matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_node_round_trips() {
        let n = Node {
            name: "g".into(),
            cpu_milli: 96_000,
            memory_bytes: 384 << 30,
            gpu_count: 8,
            gpu_model: Some("G2".into()),
            labels: BTreeMap::from([("pool".to_owned(), "gpu".to_owned())]),
            taints: vec![Taint { key: "gpu".into(), value: "yes".into(), effect: TaintEffect::NoSchedule }],
        };
        let mut back = node(&api_node(&n)).unwrap();
        back.labels.remove(NODE_GPU_MODEL_LABELS[0]);
        assert_eq!(back, n);
    }

    fn gpu_pod(requests: serde_json::Value, annotations: serde_json::Value) -> Result<Pod, ObjectError> {
        let p: api::Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ml", "annotations": annotations},
            "spec": {"containers": [{"name": "c", "resources": {"requests": requests}}]}
        }))
        .unwrap();
        pod(&p)
    }

    #[test]
    fn the_device_plugin_resource_asks_for_a_share_or_whole_gpus() {
        let none = serde_json::json!({});
        let share = gpu_pod(serde_json::json!({"gpuplane.io/gpu-milli": "250"}), none.clone()).unwrap();
        assert_eq!(share.gpu, GpuRequest { count: 1, milli_per_gpu: 250 });
        let two = gpu_pod(serde_json::json!({"gpuplane.io/gpu-milli": "2000"}), none.clone()).unwrap();
        assert_eq!(two.gpu, GpuRequest { count: 2, milli_per_gpu: 1000 });
        let agreeing = gpu_pod(
            serde_json::json!({"gpuplane.io/gpu-milli": "500"}),
            serde_json::json!({"gpuplane.io/gpu-milli": "500"}),
        )
        .unwrap();
        assert_eq!(agreeing.gpu, GpuRequest { count: 1, milli_per_gpu: 500 });

        let odd = gpu_pod(serde_json::json!({"gpuplane.io/gpu-milli": "1500"}), none.clone()).unwrap_err().to_string();
        assert!(odd.contains("resources.requests.gpuplane.io/gpu-milli") && odd.contains("1500"), "{odd}");
        let both = gpu_pod(serde_json::json!({"gpuplane.io/gpu-milli": "500", "nvidia.com/gpu": "1"}), none.clone())
            .unwrap_err()
            .to_string();
        assert!(both.contains("nvidia.com/gpu"), "{both}");
        // Annotations can be edited after admission, requests cannot: a pod that asks through its
        // requests is read from them, whatever its annotations say.
        let edited = gpu_pod(
            serde_json::json!({"gpuplane.io/gpu-milli": "250"}),
            serde_json::json!({"gpuplane.io/gpu-milli": "1000", "gpuplane.io/gpu-count": "4"}),
        )
        .unwrap();
        assert_eq!(edited.gpu, GpuRequest { count: 1, milli_per_gpu: 250 });
        let whole =
            gpu_pod(serde_json::json!({"nvidia.com/gpu": "1"}), serde_json::json!({"gpuplane.io/gpu-count": "8"}))
                .unwrap();
        assert_eq!(whole.gpu, GpuRequest { count: 1, milli_per_gpu: 1000 });
        // Without a request the annotations are the request.
        let annotated = gpu_pod(none.clone(), serde_json::json!({"gpuplane.io/gpu-milli": "300"})).unwrap();
        assert_eq!(annotated.gpu, GpuRequest { count: 1, milli_per_gpu: 300 });
        let bad = gpu_pod(none, serde_json::json!({"gpuplane.io/gpu-count": "2", "gpuplane.io/gpu-milli": "300"}))
            .unwrap_err()
            .to_string();
        assert!(bad.contains("1000 when more than one GPU"), "{bad}");
    }

    #[test]
    fn gpus_are_asked_by_one_regular_container() {
        let pod = |spec: serde_json::Value| -> api::Pod {
            serde_json::from_value(serde_json::json!({"metadata": {"name": "p", "namespace": "ml"}, "spec": spec}))
                .unwrap()
        };
        let gpu = serde_json::json!({"requests": {"gpuplane.io/gpu-milli": "600"}, "limits": {"gpuplane.io/gpu-milli": "600"}});
        let sidecar = pod(serde_json::json!({
            "initContainers": [{"name": "side", "restartPolicy": "Always", "resources": gpu}],
            "containers": [{"name": "main"}]
        }));
        let err = super::pod(&sidecar).unwrap_err().to_string();
        assert!(err.contains("initContainers[side]") && err.contains("sidecars"), "{err}");
        let two =
            pod(serde_json::json!({"containers": [{"name": "a", "resources": gpu}, {"name": "b", "resources": gpu}]}));
        let err = super::pod(&two).unwrap_err().to_string();
        assert!(err.contains("containers[a, b]"), "{err}");
        let one = pod(serde_json::json!({"containers": [{"name": "a", "resources": gpu}, {"name": "b"}]}));
        assert_eq!(super::pod(&one).unwrap().gpu, GpuRequest { count: 1, milli_per_gpu: 600 });
    }

    #[test]
    fn a_node_with_only_the_device_plugin_counts_its_milli_gpus() {
        let n = Node {
            name: "g".into(),
            cpu_milli: 64_000,
            memory_bytes: 256 << 30,
            gpu_count: 2,
            gpu_model: Some("A100".into()),
            labels: BTreeMap::new(),
            taints: vec![],
        };
        let mut api = api_node(&n);
        let allocatable = api.status.as_mut().unwrap().allocatable.as_mut().unwrap();
        allocatable.remove(NODE_GPU_RESOURCES[0]);
        allocatable.insert(NODE_GPU_MILLI_RESOURCE.to_owned(), ApiQuantity("2000".into()));
        assert_eq!(node(&api).unwrap().gpu_count, 2);
        let allocatable = api.status.as_mut().unwrap().allocatable.as_mut().unwrap();
        allocatable.insert(NODE_GPU_MILLI_RESOURCE.to_owned(), ApiQuantity("1500".into()));
        let err = node(&api).unwrap_err().to_string();
        assert!(err.contains("gpuplane.io/gpu-milli") && err.contains("1000 per GPU"), "{err}");
    }
}
