//! Writing a cluster and an arrival sequence in the input format of the FGD paper's simulator
//! (hkust-adsl/kubernetes-scheduler-simulator): Node and Pod YAML with its `alibabacloud.com/gpu-*`
//! resources and annotations, so both simulators can replay the very same pods for a differential test.

use std::fmt::Write as _;

use gpuplane_core::{MILLI_PER_GPU, Node, Pod};

const MIB: u64 = 1 << 20;
const GPU_MILLI: &str = "alibabacloud.com/gpu-milli";
const GPU_COUNT: &str = "alibabacloud.com/gpu-count";
const GPU_MODEL: &str = "alibabacloud.com/gpu-card-model";

/// The nodes as the reference simulator's node YAML: GPU count and milli as allocatable resources, the
/// GPU model as a label, 1,001 pods per node.
pub fn nodes_yaml(nodes: &[Node]) -> String {
    let mut out = String::new();
    for (i, n) in nodes.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        let name = quote(&n.name);
        let _ = writeln!(out, "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:");
        if let (Some(model), true) = (&n.gpu_model, n.gpu_count > 0) {
            let _ = writeln!(out, "    {GPU_MODEL}: {}", quote(model));
        }
        let _ = writeln!(out, "    kubernetes.io/hostname: {name}\n    kubernetes.io/os: linux\nstatus:");
        for section in ["allocatable", "capacity"] {
            let _ = writeln!(
                out,
                "  {section}:\n    {GPU_COUNT}: '{}'\n    {GPU_MILLI}: '{}'\n    cpu: {}m\n    memory: {}Mi\n    pods: '1001'",
                n.gpu_count,
                u32::from(n.gpu_count) * MILLI_PER_GPU,
                n.cpu_milli,
                n.memory_bytes.div_ceil(MIB),
            );
        }
    }
    out
}

/// The pods, in the order given, as the reference simulator's pod YAML (requests equal limits; GPU
/// demand in annotations, as its `pod_csv_to_yaml.py` writes them).
pub fn pods_yaml(pods: &[Pod]) -> String {
    let mut out = String::new();
    for (i, p) in pods.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        let _ = writeln!(
            out,
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {}\n  namespace: {}",
            quote(&p.name),
            quote(&p.namespace)
        );
        if !p.gpu.is_none() {
            let _ = writeln!(
                out,
                "  annotations:\n    {GPU_MILLI}: '{}'\n    {GPU_COUNT}: '{}'",
                p.gpu.milli_per_gpu, p.gpu.count
            );
            if !p.gpu_models.is_empty() {
                let _ = writeln!(out, "    {GPU_MODEL}: {}", quote(&p.gpu_models.join("|")));
            }
        }
        let resources = format!("{{cpu: {}m, memory: {}Mi}}", p.cpu_milli, p.memory_bytes.div_ceil(MIB));
        let _ = writeln!(
            out,
            "spec:\n  containers:\n  - name: main\n    image: tensorflow:latest\n    resources:\n      \
             requests: {resources}\n      limits: {resources}\n  restartPolicy: OnFailure\n  dnsPolicy: Default"
        );
    }
    out
}

/// A YAML double-quoted scalar.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpuplane_core::GpuRequest;
    use gpuplane_core::manifest::read_manifests;

    #[test]
    fn pods_and_nodes_read_back_through_the_manifest_reader() {
        let mut shared =
            Pod::with_requests("s000000-p0", 6000, 12288 * MIB, GpuRequest { count: 1, milli_per_gpu: 460 });
        shared.gpu_models = vec!["V100M16".into(), "V100M32".into()];
        shared.namespace = "paib-gpu".into();
        let cpu = Pod::with_requests("s000001-\"odd\"", 1000, 1024 * MIB, GpuRequest::NONE);
        let yaml = pods_yaml(&[shared.clone(), cpu]);
        assert!(yaml.contains("alibabacloud.com/gpu-milli: '460'"), "{yaml}");
        assert!(yaml.contains("alibabacloud.com/gpu-card-model: \"V100M16|V100M32\""), "{yaml}");
        assert!(yaml.contains("requests: {cpu: 6000m, memory: 12288Mi}"), "{yaml}");
        let node = Node {
            name: "openb-node-0000".into(),
            cpu_milli: 64_000,
            memory_bytes: 262_144 * MIB,
            gpu_count: 2,
            gpu_model: Some("P100".into()),
            labels: Default::default(),
            taints: vec![],
        };
        let nodes = nodes_yaml(std::slice::from_ref(&node));
        assert!(nodes.contains("alibabacloud.com/gpu-milli: '2000'"), "{nodes}");
        let parsed = read_manifests("nodes.yaml", &nodes).unwrap();
        assert_eq!(parsed.nodes.len(), 1);
        assert_eq!(parsed.nodes[0].cpu_milli, 64_000);
        assert_eq!(parsed.nodes[0].memory_bytes, 262_144 * MIB);
        let parsed = read_manifests("pods.yaml", &yaml).unwrap();
        assert_eq!(parsed.pods.len(), 2);
        assert_eq!(parsed.pods[0].pod.name, "s000000-p0");
        assert_eq!(parsed.pods[0].pod.cpu_milli, 6000);
        assert_eq!((parsed.pods[0].pod.gpu, &parsed.pods[0].pod.gpu_models), (shared.gpu, &shared.gpu_models));
        assert_eq!(parsed.pods[1].pod.name, "s000001-\"odd\"");
    }
}
