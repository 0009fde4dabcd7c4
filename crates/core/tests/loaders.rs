//! Loaders against recorded inputs: the FGD simulator's own Node YAML (same cluster as the CSV node
//! list), a node as kubectl prints it, and arbitrary text that must never make a parser panic.

use gpuplane_core::manifest::read_manifests;
use gpuplane_core::openb::{read_nodes, read_pods};
use proptest::prelude::*;

fn fixture(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    std::fs::read_to_string(path).expect("fixture")
}

#[test]
fn simulator_node_yaml_matches_the_csv_rows() {
    let yaml = read_manifests("openb-nodes.yaml", &fixture("openb-nodes.yaml")).unwrap();
    let csv = "sn,cpu_milli,memory_mib,gpu,model\n\
               openb-node-0000,64000,262144,2,P100\n\
               openb-node-0022,128000,786432,8,G3\n\
               openb-node-0025,32000,131072,4,V100M16\n";
    let from_csv = read_nodes("nodes.csv", csv.as_bytes()).unwrap();
    assert_eq!(yaml.nodes.len(), 3);
    for (y, c) in yaml.nodes.iter().zip(&from_csv) {
        assert_eq!(
            (&y.name, y.cpu_milli, y.memory_bytes, y.gpu_count, &y.gpu_model),
            (&c.name, c.cpu_milli, c.memory_bytes, c.gpu_count, &c.gpu_model)
        );
    }
}

#[test]
fn kubectl_node_with_nvidia_device_plugin() {
    let m = read_manifests("node.yaml", &fixture("kubectl-gpu-node.yaml")).unwrap();
    let node = &m.nodes[0];
    assert_eq!(node.cpu_milli, 95_690, "allocatable, not capacity");
    assert_eq!(node.memory_bytes, 1_157_221_684 * 1024);
    assert_eq!(node.gpu_count, 8);
    assert_eq!(node.gpu_model.as_deref(), Some("NVIDIA-A100-SXM4-40GB"));
    assert_eq!(node.taints.len(), 1);
    assert_eq!(node.labels.get("pool").map(String::as_str), Some("inference"));
}

proptest! {
    #[test]
    fn csv_loaders_never_panic(body in "[a-z0-9,|.\\-\n\" ]{0,200}") {
        let pods = format!("name,cpu_milli,memory_mib,num_gpu,gpu_milli\n{body}");
        let _ = read_pods("fuzz.csv", pods.as_bytes());
        let nodes = format!("sn,cpu_milli,memory_mib,gpu,model\n{body}");
        let _ = read_nodes("fuzz.csv", nodes.as_bytes());
    }

    #[test]
    fn yaml_loader_never_panics(body in "[a-zA-Z0-9:{}\\[\\],'\"\\-\n ]{0,200}") {
        let _ = read_manifests("fuzz.yaml", &body);
    }

    #[test]
    fn valid_pod_rows_round_trip(cpu in 0u64..200_000, mem in 0u64..1_000_000, count in 0u8..=8, share in 1u16..=1000) {
        let milli = match count { 0 => 0, 1 => share, _ => 1000 };
        let text = format!("name,cpu_milli,memory_mib,num_gpu,gpu_milli\np,{cpu},{mem},{count},{milli}\n");
        let pods = read_pods("p.csv", text.as_bytes()).unwrap();
        prop_assert_eq!(pods[0].pod.cpu_milli, cpu);
        prop_assert_eq!(pods[0].pod.memory_bytes, mem << 20);
        prop_assert_eq!(pods[0].pod.gpu.count, count);
        prop_assert_eq!(u32::from(pods[0].pod.gpu.milli_per_gpu), u32::from(milli));
    }
}
