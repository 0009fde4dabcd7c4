//! Loader for a cluster written as Kubernetes `Node` and `Pod` objects (YAML, one or many documents,
//! `List` objects too). Which fields carry GPUs is documented in `docs/cluster-yaml.md`:
//! node GPU count from allocatable extended resources, GPU model from labels, pod GPU shares from
//! annotations or `nvidia.com/gpu` requests.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use serde_saphyr::{Location, Spanned};

use crate::error::LoadError;
use crate::quantity::Quantity;
use crate::resources::{
    GpuRequest, MAX_GPUS_PER_NODE, MILLI_PER_GPU, Node, Pod, Taint, TaintEffect, Toleration, TolerationOperator,
};

/// Extended resources that give a node's GPU count, in the order they are looked up.
pub const NODE_GPU_RESOURCES: &[&str] = &["gpuplane.io/gpu", "nvidia.com/gpu", "alibabacloud.com/gpu-count"];
/// The milli-GPU resource gpuplane's device plugin advertises (1,000 per GPU); a node with none of
/// [`NODE_GPU_RESOURCES`] has this many thousandths of GPUs.
pub const NODE_GPU_MILLI_RESOURCE: &str = "gpuplane.io/gpu-milli";
/// Node labels that give the GPU model, in the order they are looked up.
pub const NODE_GPU_MODEL_LABELS: &[&str] =
    &["gpuplane.io/gpu-model", "nvidia.com/gpu.product", "alibabacloud.com/gpu-card-model"];
/// Pod annotation: number of GPUs.
pub const POD_GPU_COUNT_ANNOTATIONS: &[&str] = &["gpuplane.io/gpu-count", "alibabacloud.com/gpu-count"];
/// Pod annotation: milli-GPUs per GPU (1000 = whole GPU).
pub const POD_GPU_MILLI_ANNOTATIONS: &[&str] = &["gpuplane.io/gpu-milli", "alibabacloud.com/gpu-milli"];
/// Pod annotation: accepted GPU models separated by `|`.
pub const POD_GPU_MODEL_ANNOTATIONS: &[&str] = &["gpuplane.io/gpu-model", "alibabacloud.com/gpu-card-model"];

/// Nodes and pods read from manifests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifests {
    /// Nodes, in document order.
    pub nodes: Vec<Node>,
    /// Pods, in document order.
    pub pods: Vec<ManifestPod>,
}

/// A pod from a manifest, with the node it is bound to, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestPod {
    /// The pod and its requests.
    pub pod: Pod,
    /// `spec.nodeName`, when the pod is already bound.
    pub node_name: Option<String>,
}

/// Reads Kubernetes `Node`, `Pod`, and `List`/`NodeList`/`PodList` objects from YAML text.
pub fn read_manifests(source_name: &str, text: &str) -> Result<Manifests, LoadError> {
    let documents: Vec<Option<Object>> = serde_saphyr::from_multiple(text).map_err(|e| {
        let (line, column, message) = crate::error::yaml_error_parts(&e);
        LoadError::Yaml { source_name: source_name.to_owned(), line, column, message }
    })?;
    let mut out = Manifests::default();
    let mut reader = ObjectReader { source_name, node_names: HashSet::new() };
    for object in documents.into_iter().flatten() {
        reader.read_object(object, &mut out)?;
    }
    if out.nodes.is_empty() && out.pods.is_empty() {
        return Err(LoadError::Empty { source_name: source_name.to_owned(), what: "Node or Pod objects" });
    }
    Ok(out)
}

struct ObjectReader<'a> {
    source_name: &'a str,
    node_names: HashSet<String>,
}

impl ObjectReader<'_> {
    fn yaml_error(&self, at: Location, message: String) -> LoadError {
        LoadError::Yaml { source_name: self.source_name.to_owned(), line: at.line(), column: at.column(), message }
    }

    fn field_error(&self, at: Location, field: &str, value: &str, expected: &str) -> LoadError {
        LoadError::Field {
            source_name: self.source_name.to_owned(),
            line: at.line(),
            column: at.column(),
            field: field.to_owned(),
            value: value.to_owned(),
            expected: expected.to_owned(),
        }
    }

    fn read_object(&mut self, object: Object, out: &mut Manifests) -> Result<(), LoadError> {
        match object.kind.value.as_str() {
            "List" | "NodeList" | "PodList" => {
                for item in object.items {
                    self.read_object(item, out)?;
                }
                Ok(())
            }
            "Node" => {
                let node = self.node(object)?;
                out.nodes.push(node);
                Ok(())
            }
            "Pod" => {
                let pod = self.pod(object)?;
                out.pods.push(pod);
                Ok(())
            }
            other => Err(self.yaml_error(
                object.kind.referenced,
                format!("kind {other:?} is not read here; expected Node, Pod, or a List of them"),
            )),
        }
    }

    fn name(&self, object: &Object) -> Result<String, LoadError> {
        match &object.metadata.name {
            Some(name) if !name.value.is_empty() => Ok(name.value.clone()),
            _ => Err(self.yaml_error(object.kind.referenced, format!("{} without metadata.name", object.kind.value))),
        }
    }

    fn quantity(&self, field: &str, text: &Spanned<QuantityText>) -> Result<Quantity, LoadError> {
        Quantity::parse_non_negative(&text.value.0).map_err(|e| {
            self.field_error(
                text.referenced,
                field,
                &text.value.0,
                &format!("a non-negative Kubernetes quantity ({e})"),
            )
        })
    }

    fn node(&mut self, object: Object) -> Result<Node, LoadError> {
        let name = self.name(&object)?;
        if !self.node_names.insert(name.clone()) {
            return Err(LoadError::Duplicate {
                source_name: self.source_name.to_owned(),
                line: object.kind.referenced.line(),
                what: "node",
                name,
            });
        }
        // Allocatable is what the scheduler may hand out; capacity is the fallback.
        let lookup = |key: &str| object.status.allocatable.get(key).or_else(|| object.status.capacity.get(key));
        let cpu = lookup("cpu").ok_or_else(|| {
            self.yaml_error(
                object.kind.referenced,
                format!("node {name:?} has no status.allocatable.cpu or status.capacity.cpu"),
            )
        })?;
        let cpu_milli = self.quantity("status.allocatable.cpu", cpu)?.milli_value() as u64;
        let memory_bytes = match lookup("memory") {
            Some(m) => self.quantity("status.allocatable.memory", m)?.value() as u64,
            None => {
                return Err(self.yaml_error(
                    object.kind.referenced,
                    format!("node {name:?} has no status.allocatable.memory or status.capacity.memory"),
                ));
            }
        };
        let mut gpu_count = 0u8;
        if let Some((key, q)) = NODE_GPU_RESOURCES.iter().find_map(|k| lookup(k).map(|q| (k, q))) {
            let count = self.quantity(&format!("status.allocatable.{key}"), q)?.value();
            if count > MAX_GPUS_PER_NODE as i64 {
                return Err(self.field_error(q.referenced, key, &q.value.0, "a GPU count from 0 to 8"));
            }
            gpu_count = count as u8;
        } else if let Some(q) = lookup(NODE_GPU_MILLI_RESOURCE) {
            let milli = self.quantity(&format!("status.allocatable.{NODE_GPU_MILLI_RESOURCE}"), q)?.value();
            if milli % 1000 != 0 || milli > 1000 * MAX_GPUS_PER_NODE as i64 {
                let expected = "milli-GPUs, 1000 per GPU, up to 8000";
                return Err(self.field_error(q.referenced, NODE_GPU_MILLI_RESOURCE, &q.value.0, expected));
            }
            gpu_count = (milli / 1000) as u8;
        }
        let gpu_model = NODE_GPU_MODEL_LABELS.iter().find_map(|l| object.metadata.labels.get(*l)).cloned();
        if gpu_count > 0 && gpu_model.is_none() {
            return Err(self.yaml_error(
                object.kind.referenced,
                format!("node {name:?} has {gpu_count} GPUs but no GPU model label; expected one of {NODE_GPU_MODEL_LABELS:?}"),
            ));
        }
        let mut taints = Vec::new();
        for t in &object.spec.taints {
            let effect = TaintEffect::parse(&t.effect.value).ok_or_else(|| {
                self.field_error(t.effect.referenced, "spec.taints.effect", &t.effect.value, TaintEffect::EXPECTED)
            })?;
            taints.push(Taint { key: t.key.clone(), value: t.value.clone().unwrap_or_default(), effect });
        }
        if object.spec.unschedulable == Some(true) {
            taints.push(Taint::unschedulable());
        }
        Ok(Node {
            name,
            cpu_milli,
            memory_bytes,
            gpu_count,
            gpu_model: (gpu_count > 0).then_some(gpu_model).flatten(),
            labels: object.metadata.labels,
            taints,
        })
    }

    /// Effective request of one resource: max(sum over containers, largest init container),
    /// where a container's request defaults to its limit.
    fn pod_request(&self, spec: &Spec, resource: &str, in_milli: bool) -> Result<u64, LoadError> {
        let one = |c: &Container| -> Result<u64, LoadError> {
            let field = format!("resources.requests.{resource}");
            match c.resources.requests.get(resource).or_else(|| c.resources.limits.get(resource)) {
                Some(q) => {
                    let q = self.quantity(&field, q)?;
                    Ok(if in_milli { q.milli_value() } else { q.value() } as u64)
                }
                None => Ok(0),
            }
        };
        let mut sum = 0u64;
        for c in &spec.containers {
            sum = sum.saturating_add(one(c)?);
        }
        let mut init_max = 0u64;
        for c in &spec.init_containers {
            init_max = init_max.max(one(c)?);
        }
        Ok(sum.max(init_max))
    }

    fn pod(&mut self, object: Object) -> Result<ManifestPod, LoadError> {
        let name = self.name(&object)?;
        let cpu_milli = self.pod_request(&object.spec, "cpu", true)?;
        let memory_bytes = self.pod_request(&object.spec, "memory", false)?;
        let whole_gpus = self.pod_request(&object.spec, "nvidia.com/gpu", false)?;
        let mut gpu = GpuRequest::NONE;
        if whole_gpus > 0 {
            if whole_gpus > MAX_GPUS_PER_NODE as u64 {
                return Err(self.yaml_error(
                    object.kind.referenced,
                    format!("pod {name:?} asks for {whole_gpus} nvidia.com/gpu; at most 8 fit a node"),
                ));
            }
            gpu = GpuRequest { count: whole_gpus as u8, milli_per_gpu: MILLI_PER_GPU as u16 };
        }
        let count = annotation(&object, POD_GPU_COUNT_ANNOTATIONS);
        let milli = annotation(&object, POD_GPU_MILLI_ANNOTATIONS);
        if count.is_some() || milli.is_some() {
            if whole_gpus > 0 {
                return Err(self.yaml_error(
                    object.kind.referenced,
                    format!("pod {name:?} sets both nvidia.com/gpu and GPU-share annotations; expected one of the two"),
                ));
            }
            let count = match count {
                Some((key, v)) => match v.value.trim().parse::<u8>() {
                    Ok(n) if usize::from(n) <= MAX_GPUS_PER_NODE => n,
                    _ => return Err(self.field_error(v.referenced, key, &v.value, "a GPU count from 0 to 8")),
                },
                None => 1,
            };
            let milli = match milli {
                Some((key, v)) => match v.value.trim().parse::<u16>() {
                    Ok(m) if m >= 1 && u32::from(m) <= MILLI_PER_GPU => m,
                    _ => {
                        return Err(self.field_error(
                            v.referenced,
                            key,
                            &v.value,
                            "milli-GPUs per GPU, from 1 to 1000",
                        ));
                    }
                },
                None => MILLI_PER_GPU as u16,
            };
            if count > 1 && u32::from(milli) != MILLI_PER_GPU {
                let (key, v) = annotation(&object, POD_GPU_MILLI_ANNOTATIONS)
                    .map_or(("gpu-milli", ""), |(k, v)| (k, v.value.as_str()));
                let at = object.metadata.annotations.get(key).map_or(object.kind.referenced, |s| s.referenced);
                return Err(self.field_error(
                    at,
                    key,
                    v,
                    "1000 when more than one GPU is requested (only single-GPU pods share)",
                ));
            }
            if count > 0 {
                gpu = GpuRequest { count, milli_per_gpu: milli };
            }
        }
        let gpu_models = match annotation(&object, POD_GPU_MODEL_ANNOTATIONS) {
            Some((key, v)) => {
                let models: Vec<String> = v.value.split('|').map(|m| m.trim().to_owned()).collect();
                if models.iter().any(String::is_empty) {
                    return Err(self.field_error(v.referenced, key, &v.value, "GPU model names separated by '|'"));
                }
                models
            }
            None => Vec::new(),
        };
        let mut tolerations = Vec::new();
        for t in &object.spec.tolerations {
            let written = t.operator.as_ref().map(|o| o.value.as_str());
            let operator = TolerationOperator::parse(written).ok_or_else(|| {
                let at = t.operator.as_ref().map_or(object.kind.referenced, |o| o.referenced);
                self.field_error(at, "spec.tolerations.operator", written.unwrap_or_default(), "Equal or Exists")
            })?;
            let effect = match &t.effect {
                None => None,
                Some(e) if e.value.is_empty() => None,
                Some(e) => Some(TaintEffect::parse(&e.value).ok_or_else(|| {
                    self.field_error(e.referenced, "spec.tolerations.effect", &e.value, TaintEffect::EXPECTED)
                })?),
            };
            tolerations.push(Toleration {
                key: t.key.clone().unwrap_or_default(),
                operator,
                value: t.value.clone().unwrap_or_default(),
                effect,
            });
        }
        Ok(ManifestPod {
            pod: Pod {
                name,
                namespace: object.metadata.namespace.clone().unwrap_or_else(|| "default".to_owned()),
                cpu_milli,
                memory_bytes,
                gpu,
                gpu_models,
                priority: object.spec.priority.unwrap_or(0),
                node_selector: object.spec.node_selector.clone(),
                tolerations,
            },
            node_name: object.spec.node_name.clone().filter(|n| !n.is_empty()),
        })
    }
}

/// The first annotation among `keys` that the object carries, with its key.
fn annotation<'o>(object: &'o Object, keys: &'static [&'static str]) -> Option<(&'static str, &'o Spanned<String>)> {
    keys.iter().find_map(|k| object.metadata.annotations.get(*k).map(|v| (*k, v)))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Object {
    kind: Spanned<String>,
    #[serde(default)]
    metadata: Metadata,
    #[serde(default)]
    spec: Spec,
    #[serde(default)]
    status: Status,
    #[serde(default)]
    items: Vec<Object>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Metadata {
    name: Option<Spanned<String>>,
    namespace: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Spec {
    node_name: Option<String>,
    #[serde(default)]
    node_selector: BTreeMap<String, String>,
    #[serde(default)]
    tolerations: Vec<TolerationDoc>,
    #[serde(default)]
    taints: Vec<TaintDoc>,
    #[serde(default)]
    containers: Vec<Container>,
    #[serde(default)]
    init_containers: Vec<Container>,
    priority: Option<i32>,
    unschedulable: Option<bool>,
}

#[derive(Deserialize)]
struct TaintDoc {
    key: String,
    value: Option<String>,
    effect: Spanned<String>,
}

#[derive(Deserialize)]
struct TolerationDoc {
    key: Option<String>,
    operator: Option<Spanned<String>>,
    value: Option<String>,
    effect: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
struct Container {
    #[serde(default)]
    resources: Resources,
}

#[derive(Deserialize, Default)]
struct Resources {
    #[serde(default)]
    requests: BTreeMap<String, Spanned<QuantityText>>,
    #[serde(default)]
    limits: BTreeMap<String, Spanned<QuantityText>>,
}

#[derive(Deserialize, Default)]
struct Status {
    #[serde(default)]
    capacity: BTreeMap<String, Spanned<QuantityText>>,
    #[serde(default)]
    allocatable: BTreeMap<String, Spanned<QuantityText>>,
}

/// The text of a quantity, which YAML may write as a string or a bare number.
struct QuantityText(String);

impl<'de> Deserialize<'de> for QuantityText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl Visitor<'_> for TextVisitor {
            type Value = QuantityText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a Kubernetes quantity such as 500m, 4 or 16Gi")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<QuantityText, E> {
                Ok(QuantityText(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<QuantityText, E> {
                Ok(QuantityText(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<QuantityText, E> {
                Ok(QuantityText(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<QuantityText, E> {
                Ok(QuantityText(v.to_string()))
            }
        }
        deserializer.deserialize_any(TextVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: &str = r#"
apiVersion: v1
kind: Node
metadata:
  name: gpu-a
  labels:
    nvidia.com/gpu.product: A100
    pool: inference
spec:
  taints:
  - key: nvidia.com/gpu
    value: present
    effect: NoSchedule
status:
  capacity: {cpu: "64", memory: 512Gi, nvidia.com/gpu: "8"}
  allocatable: {cpu: 63500m, memory: 500Gi, nvidia.com/gpu: 8}
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata:
    name: llm-0
    namespace: serving
    annotations:
      gpuplane.io/gpu-milli: "250"
      gpuplane.io/gpu-model: A100|H100
  spec:
    priority: 1000
    nodeSelector: {pool: inference}
    tolerations:
    - {key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}
    containers:
    - resources:
        requests: {cpu: 1500m, memory: 8Gi}
    - resources:
        limits: {cpu: 1, memory: 1Gi}
    initContainers:
    - resources:
        requests: {cpu: 4}
- apiVersion: v1
  kind: Pod
  metadata: {name: trainer}
  spec:
    containers:
    - resources:
        limits: {nvidia.com/gpu: 2}
"#;

    #[test]
    fn reads_nodes_and_pods() {
        let m = read_manifests("cluster.yaml", CLUSTER).unwrap();
        let node = &m.nodes[0];
        assert_eq!(node.cpu_milli, 63_500);
        assert_eq!(node.memory_bytes, 500 << 30);
        assert_eq!(node.gpu_count, 8);
        assert_eq!(node.gpu_model.as_deref(), Some("A100"));
        assert_eq!(node.taints.len(), 1);
        let llm = &m.pods[0].pod;
        assert_eq!(llm.namespace, "serving");
        assert_eq!(llm.cpu_milli, 4000, "init container's 4 CPUs exceed 2.5 from containers");
        assert_eq!(llm.memory_bytes, 9 << 30);
        assert_eq!(llm.gpu, GpuRequest { count: 1, milli_per_gpu: 250 });
        assert_eq!(llm.gpu_models, vec!["A100", "H100"]);
        assert_eq!(llm.priority, 1000);
        assert!(crate::resources::tolerates_all(&llm.tolerations, &node.taints));
        assert_eq!(m.pods[1].pod.gpu, GpuRequest { count: 2, milli_per_gpu: 1000 });
    }

    #[test]
    fn a_node_advertising_milli_gpus_has_that_many_thousandths() {
        let node = "kind: Node\nmetadata: {name: n, labels: {gpuplane.io/gpu-model: A100}}\n\
                    status: {allocatable: {cpu: '8', memory: 1Gi, gpuplane.io/gpu-milli: '4000'}}\n";
        assert_eq!(read_manifests("n.yaml", node).unwrap().nodes[0].gpu_count, 4);
        let odd = node.replace("'4000'", "'4500'");
        let msg = read_manifests("n.yaml", &odd).unwrap_err().to_string();
        assert!(msg.contains("gpuplane.io/gpu-milli") && msg.contains("1000 per GPU"), "{msg}");
    }

    #[test]
    fn errors_point_at_line_and_column() {
        let bad = "kind: Node\nmetadata: {name: n}\nstatus:\n  allocatable:\n    cpu: lots\n    memory: 1Gi\n";
        let msg = read_manifests("nodes.yaml", bad).unwrap_err().to_string();
        assert!(msg.starts_with("nodes.yaml:5:10: field `status.allocatable.cpu` is \"lots\""), "{msg}");
        let bad = "kind: Pod\nmetadata:\n  name: p\n  annotations:\n    gpuplane.io/gpu-milli: \"1500\"\n";
        let msg = read_manifests("pods.yaml", bad).unwrap_err().to_string();
        assert!(msg.starts_with("pods.yaml:5:28: field `gpuplane.io/gpu-milli`"), "{msg}");
        let msg = read_manifests("x.yaml", "kind: Deployment\nmetadata: {name: d}\n").unwrap_err().to_string();
        assert!(msg.contains("x.yaml:1:7") && msg.contains("Deployment"), "{msg}");
        let msg = read_manifests("x.yaml", "kind: [unclosed\n").unwrap_err().to_string();
        assert!(msg.starts_with("x.yaml:"), "{msg}");
        let msg =
            read_manifests("x.yaml", "kind: Node\nmetadata: {name: n}\nstatus: {allocatable: {cpu: -1, memory: 1}}\n")
                .unwrap_err()
                .to_string();
        assert!(msg.contains("non-negative"), "{msg}");
        let msg = read_manifests("x.yaml", "").unwrap_err().to_string();
        assert!(msg.contains("no Node or Pod objects"), "{msg}");
    }
}
