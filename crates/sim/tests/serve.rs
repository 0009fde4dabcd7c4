//! The serving simulation on the bundled traces: the default configuration's verdict on the Azure conv
//! trace, reproducibility, and errors that name their input.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use gpuplane_core::openb::{read_nodes, read_pods};
use gpuplane_sim::serve::{LatencyClass, ServeConfig, ServeResult, Setup, read_azure, run};

fn data(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data").join(path)
}

fn setup(config: ServeConfig) -> Setup {
    let open = |p: &str| std::fs::File::open(data(p)).unwrap();
    Setup {
        config,
        nodes: read_nodes("nodes", open("openb/openb_node_list_gpu_node.csv")).unwrap(),
        batch: read_pods("batch", open("openb/openb_pod_list_default.csv")).unwrap(),
        requests: read_azure("conv", open("azure-llm-2023/AzureLLMInferenceTrace_conv.csv")).unwrap(),
    }
}

fn without_timing(mut r: ServeResult) -> ServeResult {
    r.stacks.iter_mut().for_each(|s| s.wall_s = 0.0);
    r
}

#[test]
fn on_the_conv_trace_gpuplane_halves_interactive_p99_ttft_reads_less_from_the_origin_and_allocates_no_less() {
    let result = run(&setup(ServeConfig::default()), 42).unwrap();
    let stack = |name: &str| result.stacks.iter().find(|s| s.name == name).unwrap();
    let (kube, ours) = (stack("kube-default"), stack("gpuplane"));
    let p99 = |s: &gpuplane_sim::serve::StackResult| s.class(LatencyClass::Interactive).unwrap().p99_s;
    assert!(2.0 * p99(ours) <= p99(kube), "p99 TTFT gpuplane {} s, kube-default {} s", p99(ours), p99(kube));
    assert!(ours.origin_gb < kube.origin_gb, "origin GB gpuplane {}, kube-default {}", ours.origin_gb, kube.origin_gb);
    assert!(
        ours.mean_allocated_gpu_pct >= kube.mean_allocated_gpu_pct,
        "allocated GPU % gpuplane {}, kube-default {}",
        ours.mean_allocated_gpu_pct,
        kube.mean_allocated_gpu_pct
    );
    // Every request is accounted for, and the batch load is real.
    for s in &result.stacks {
        let counted: usize = s.ttft.values().map(|p| p.count).sum();
        assert_eq!(counted, s.requests, "{}", s.name);
        assert!(s.mean_allocated_gpu_pct > 80.0, "{}: {}", s.name, s.mean_allocated_gpu_pct);
    }
}

#[test]
fn the_same_seed_gives_the_same_result_and_another_seed_another() {
    let config = ServeConfig { horizon_s: 900.0, drain_s: 300.0, ..ServeConfig::default() };
    let s = setup(config);
    let a = without_timing(run(&s, 7).unwrap());
    let b = without_timing(run(&s, 7).unwrap());
    assert_eq!(a, b);
    let c = without_timing(run(&s, 8).unwrap());
    assert_ne!(a.stacks, c.stacks);
}

#[test]
fn a_batch_pod_without_times_is_named() {
    let mut s = setup(ServeConfig { horizon_s: 60.0, ..ServeConfig::default() });
    s.batch[3].deletion_time = None;
    let err = run(&s, 1).unwrap_err().to_string();
    assert!(err.contains(&s.batch[3].pod.name) && err.contains("deletion_time"), "{err}");
}

#[test]
fn a_service_no_gpu_can_hold_is_named() {
    let mut config = ServeConfig::default();
    config.services[0].weight_gb = 900.0;
    let err = run(&setup(config), 1).unwrap_err().to_string();
    assert!(err.contains("services[chat-8b]") && err.contains("GB"), "{err}");
}

#[test]
fn interactive_replicas_prefer_fast_gpu_models_only_when_the_stack_says_so() {
    use gpuplane_core::Node;
    use gpuplane_sim::serve::{LlmRequest, Stack};
    let node = |name: &str, model: &str| Node {
        name: name.into(),
        cpu_milli: 64_000,
        memory_bytes: 512 << 30,
        gpu_count: 8,
        gpu_model: Some(model.into()),
        labels: Default::default(),
        taints: vec![],
    };
    let mut config = ServeConfig { horizon_s: 120.0, drain_s: 60.0, ..ServeConfig::default() };
    // Only the 3B assistant (interactive, half a GPU): it fits a P100 half (8 GB) and a G3 half (20 GB).
    config.services.retain(|s| s.name == "assist-3b");
    config.services[0].min_replicas = 2;
    let stack = |name: &str, fast_gpus: bool| Stack {
        name: name.into(),
        policy: "bestfit".into(),
        model_cache: false,
        locality_weight: 0.0,
        preemption: false,
        fast_gpus,
    };
    config.stacks = vec![stack("any", false), stack("fast", true)];
    let requests =
        (0..50).map(|i| LlmRequest { at_s: f64::from(i), context_tokens: 500, generated_tokens: 20 }).collect();
    // "a-p100" sorts first, so a policy blind to speed starts there.
    let setup = Setup { config, nodes: vec![node("a-p100", "P100"), node("b-g3", "G3")], batch: vec![], requests };
    let result = run(&setup, 3).unwrap();
    let starts = |stack: usize| result.stacks[stack].services[0].replica_starts_by_gpu.clone();
    assert_eq!(starts(0).keys().collect::<Vec<_>>(), ["P100"], "{:?}", starts(0));
    assert_eq!(starts(1).keys().collect::<Vec<_>>(), ["G3"], "{:?}", starts(1));
    let p99 = |stack: usize| result.stacks[stack].class(LatencyClass::Interactive).unwrap().p99_s;
    assert!(p99(1) < p99(0), "fast {} s, any {} s", p99(1), p99(0));
}
