//! The serving simulation on the bundled traces: the default configuration's verdict on the Azure conv
//! trace, reproducibility, and errors that name their input.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use gpuplane_core::Node;
use gpuplane_core::openb::{read_nodes, read_pods};
use gpuplane_sim::serve::{
    LatencyClass, Link, LlmRequest, LoadRecord, ServeConfig, ServeResult, Setup, Stack, read_azure, run,
};
use proptest::prelude::*;

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

/// A node with `gpus` GPUs of `model` and room for anything else.
fn gpu_node(name: &str, model: &str, gpus: u8) -> Node {
    Node {
        name: name.into(),
        cpu_milli: 64_000,
        memory_bytes: 512 << 30,
        gpu_count: gpus,
        gpu_model: Some(model.into()),
        labels: Default::default(),
        taints: vec![],
    }
}

/// A BestFit stack without the model cache or locality.
fn bestfit_stack(name: &str, preemption: bool, fast_gpus: bool) -> Stack {
    Stack {
        name: name.into(),
        policy: "bestfit".into(),
        model_cache: false,
        locality_weight: 0.0,
        preemption,
        fast_gpus,
        victims: Default::default(),
        reserve_fast: false,
        headroom: 0.0,
        slot_headroom: 0.0,
        claim_age_s: 0.0,
    }
}

fn without_timing(mut r: ServeResult) -> ServeResult {
    r.stacks.iter_mut().for_each(|s| s.wall_s = 0.0);
    r
}

#[test]
fn on_the_conv_trace_the_model_cache_cuts_origin_reads_and_gpuplane_allocates_more() {
    // At the trace's native rate, where the spreading default leaves the most GPUs idle.
    let result = run(&setup(ServeConfig { request_rate_scale: 1.0, ..ServeConfig::default() }), 42).unwrap();
    let stack = |name: &str| result.stacks.iter().find(|s| s.name == name).unwrap();
    let (kube, cache, ours) = (stack("kube-default"), stack("+ model cache"), stack("gpuplane"));
    for s in [cache, ours] {
        assert!(
            s.origin_gb < kube.origin_gb / 2.0,
            "origin GB {} {}, kube-default {}",
            s.name,
            s.origin_gb,
            kube.origin_gb
        );
    }
    assert!(
        ours.mean_allocated_gpu_pct >= kube.mean_allocated_gpu_pct + 5.0,
        "allocated GPU % gpuplane {}, kube-default {}",
        ours.mean_allocated_gpu_pct,
        kube.mean_allocated_gpu_pct
    );
    // Every stack preempts, as kube-scheduler does; every request is accounted for; the batch load is real.
    for s in &result.stacks {
        assert!(s.batch_evictions > 0, "{} never preempted", s.name);
        let served: usize = s.ttft.values().map(|p| p.count).sum();
        let slo: Vec<_> = s.slo.values().collect();
        assert_eq!(served, slo.iter().map(|f| f.served).sum::<usize>(), "{}", s.name);
        let counted: usize = slo.iter().map(|f| f.served + f.timed_out + f.refused).sum::<usize>() + s.unserved;
        assert_eq!(counted, s.requests, "{}", s.name);
        assert!(slo.iter().all(|f| f.within_slo <= f.served && f.attainment_pct <= 100.0), "{}", s.name);
        assert!(s.mean_allocated_gpu_pct > 80.0, "{}: {}", s.name, s.mean_allocated_gpu_pct);
    }
}

#[test]
fn the_same_seed_gives_the_same_result_and_another_seed_another() {
    let config = ServeConfig { horizon_s: 900.0, drain_s: 300.0, request_rate_scale: 1.0, ..ServeConfig::default() };
    let s = setup(config);
    let a = without_timing(run(&s, 7).unwrap());
    let b = without_timing(run(&s, 7).unwrap());
    assert_eq!(a, b);
    let c = without_timing(run(&s, 8).unwrap());
    assert_ne!(a.stacks, c.stacks);
}

#[test]
fn the_request_rate_scale_superposes_the_trace_and_excluded_gpus_get_no_replica() {
    let base = ServeConfig { horizon_s: 600.0, drain_s: 60.0, ..ServeConfig::default() };
    let mut config = ServeConfig { request_rate_scale: 1.0, ..base.clone() };
    config.stacks.truncate(1);
    let native = run(&setup(config.clone()), 5).unwrap();
    config.request_rate_scale = 3.0;
    let tripled = run(&setup(config.clone()), 5).unwrap();
    assert_eq!(tripled.requests, 3 * native.requests);
    config.request_rate_scale = 2.5;
    let more = run(&setup(config), 5).unwrap().requests as f64;
    let expected = 2.5 * native.requests as f64;
    assert!((more - expected).abs() < 0.05 * expected, "{more} requests at 2.5x of {}", native.requests);
    // P100s (compute capability 6.0) are below vLLM's 7.0: no replica lands there.
    for stack in &tripled.stacks {
        for service in &stack.services {
            assert!(!service.replica_starts_by_gpu.contains_key("P100"), "{}: {:?}", service.name, service);
        }
    }
}

#[test]
fn a_batch_trace_with_one_creation_instant_is_replayed_without_end() {
    let mut s =
        setup(ServeConfig { horizon_s: 120.0, drain_s: 0.0, request_rate_scale: 1.0, ..ServeConfig::default() });
    s.config.stacks.truncate(1);
    s.batch.truncate(50);
    for pod in &mut s.batch {
        pod.creation_time = Some(100);
        pod.deletion_time = Some(400);
    }
    let result = run(&s, 1).unwrap();
    assert!(result.batch_pods > 0);
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
    let mut config = ServeConfig { horizon_s: 120.0, drain_s: 60.0, request_rate_scale: 1.0, ..ServeConfig::default() };
    // Only the 3B assistant (interactive, half a GPU): it fits a T4 half (8 GB) and a G3 half (20 GB).
    config.services.retain(|s| s.name == "assist-3b");
    config.services[0].min_replicas = 2;
    config.stacks = vec![bestfit_stack("any", false, false), bestfit_stack("fast", false, true)];
    let requests =
        (0..50).map(|i| LlmRequest { at_s: f64::from(i), context_tokens: 500, generated_tokens: 20 }).collect();
    // "a-t4" sorts first, so a policy blind to speed starts there.
    let setup =
        Setup { config, nodes: vec![gpu_node("a-t4", "T4", 8), gpu_node("b-g3", "G3", 8)], batch: vec![], requests };
    let result = run(&setup, 3).unwrap();
    let starts = |stack: usize| result.stacks[stack].services[0].replica_starts_by_gpu.clone();
    assert_eq!(starts(0).keys().collect::<Vec<_>>(), ["T4"], "{:?}", starts(0));
    assert_eq!(starts(1).keys().collect::<Vec<_>>(), ["G3"], "{:?}", starts(1));
    let p99 = |stack: usize| result.stacks[stack].class(LatencyClass::Interactive).unwrap().p99_s;
    assert!(p99(1) < p99(0), "fast {} s, any {} s", p99(1), p99(0));
}

#[test]
fn readers_of_one_link_share_its_bandwidth() {
    // Eleven peers read a 141 GB model from one holder's 1.25 GB/s NIC at once: one after the other.
    let mut nic = Link::default();
    let (bytes, rate) = (141e9, 1.25e9);
    for i in 1..=11 {
        let end = nic.carry(100.0, bytes, rate);
        assert!((end - (100.0 + f64::from(i) * bytes / rate)).abs() < 1e-6, "reader {i} done at {end}");
    }
    // A read after the link went idle starts when it asks.
    assert!((nic.carry(5000.0, bytes, rate) - (5000.0 + bytes / rate)).abs() < 1e-6);
}

/// Checks that no weight read in `loads` ends before its bytes could have arrived: not before its own
/// transfer time, not before the copy it read was complete — and that copy is one an earlier read made on
/// the node named — and no link carried more than its capacity.
fn check_causality(loads: &[LoadRecord], config: &ServeConfig) -> Result<(), TestCaseError> {
    const EPS: f64 = 1e-6;
    for r in loads {
        prop_assert!(r.loaded_s + EPS >= r.start_s + r.bytes / r.rate, "{r:?}: faster than its tier");
        prop_assert!(r.loaded_s + EPS >= r.source_complete_s, "{r:?}: done before its source");
        prop_assert!((r.ready_s - r.loaded_s - config.engine_startup_s).abs() < EPS, "{r:?}");
        if let Some(source) = r.source_node {
            let copy = loads.iter().any(|q| {
                !std::ptr::eq(q, r) && q.service == r.service && q.node == source && q.loaded_s == r.source_complete_s
            });
            prop_assert!(copy, "{r:?}: read a copy no earlier read made");
        }
    }
    // Per link, reads in the order they finished: the bytes through by each finish fit its capacity.
    let gb = 1e9;
    let b = config.bandwidth_gbps;
    type Reads<'a> = (f64, Vec<&'a LoadRecord>);
    let mut links: std::collections::BTreeMap<(&str, Option<usize>), Reads<'_>> = Default::default();
    for r in loads {
        let (key, capacity) = match r.tier {
            "origin" => (("origin", None), b.origin_shared * gb),
            "peer" => (("nic", r.source_node), b.peer * gb),
            "local" => (("disk", Some(r.node)), b.local * gb),
            _ => continue,
        };
        links.entry(key).or_insert((capacity, Vec::new())).1.push(r);
    }
    for ((link, node), (capacity, mut reads)) in links {
        reads.sort_by(|a, b| a.loaded_s.total_cmp(&b.loaded_s));
        let first = reads.iter().map(|r| r.start_s).fold(f64::INFINITY, f64::min);
        let mut carried = 0.0;
        for r in reads {
            carried += r.bytes;
            prop_assert!(
                carried <= capacity * (r.loaded_s - first) * (1.0 + 1e-9) + 1.0,
                "{link} {node:?}: {carried} bytes by {} s from {first} s",
                r.loaded_s
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    /// No replica is ever ready before the bytes it loads could have arrived, whatever the seed and rates.
    #[test]
    fn no_replica_is_ready_before_its_bytes_could_arrive(
        seed in 0u64..1000,
        horizon in 300.0f64..900.0,
        rates in 0.3f64..3.0,
        cache_gb in prop::sample::select(vec![50.0, 400.0]),
    ) {
        let mut config = ServeConfig {
            horizon_s: horizon,
            drain_s: 300.0,
            node_cache_gb: cache_gb,
            request_rate_scale: 1.0,
            ..ServeConfig::default()
        };
        config.bandwidth_gbps = config.bandwidth_gbps.scaled(rates);
        config.stacks.retain(|s| s.model_cache);
        let result = run(&setup(config.clone()), seed).unwrap();
        for stack in &result.stacks {
            prop_assert!(!stack.loads.is_empty());
            check_causality(&stack.loads, &config)?;
        }
    }
}

#[test]
fn clients_give_up_after_their_timeout_and_a_full_queue_refuses() {
    // One T4 node serving the 3B assistant on half a GPU: long prompts prefill slowly there.
    let mut config =
        ServeConfig { horizon_s: 100.0, drain_s: 100.0, request_rate_scale: 1.0, ..ServeConfig::default() };
    config.services.retain(|s| s.name == "assist-3b");
    config.clients.queue_limit = 10;
    config.clients.timeout_s = 30.0;
    config.stacks = vec![bestfit_stack("s", true, false)];
    // 40 requests in the first 4 s, each with a prompt a T4 half takes about 3 s to serve, and whose KV cache
    // leaves room for one request at a time there.
    let requests =
        (0..40).map(|i| LlmRequest { at_s: f64::from(i) * 0.1, context_tokens: 5_000, generated_tokens: 10 }).collect();
    let setup = Setup { config, nodes: vec![gpu_node("t4", "T4", 1)], batch: vec![], requests };
    let result = run(&setup, 1).unwrap();
    let f = result.stacks[0].slo["interactive"];
    assert_eq!(f.requests, 40);
    assert_eq!(f.served + f.timed_out + f.refused, 40, "{f:?}");
    assert!(f.refused >= 20, "a queue of 10 refuses most of a burst of 40: {f:?}");
    assert!(f.timed_out > 0, "prefills queued past 30 s are abandoned: {f:?}");
    let served = result.stacks[0].class(LatencyClass::Interactive).map_or(0.0, |p| p.max_s);
    assert!(served <= 30.0, "no served request waited longer than its client would: {served}");
}

#[test]
fn the_kv_cache_left_by_the_weights_bounds_what_a_replica_holds() {
    use gpuplane_sim::serve::kv_bytes_per_token;
    let config = ServeConfig::default();
    let chat = config.services.iter().find(|s| s.name == "chat-8b").unwrap().clone();
    // Llama 3.1 8B in BF16: 32 layers x 8 KV heads x 128 x (K, V) x 2 bytes = 128 KiB per token.
    assert_eq!(kv_bytes_per_token(&chat), 131_072.0);
    // On an A10 (24 GB x 0.9 - 16.1 GB of weights) that is about 42,000 tokens: a 50,000-token request is
    // refused at once, a 2,000-token one served.
    let mut config = ServeConfig { horizon_s: 200.0, drain_s: 100.0, request_rate_scale: 1.0, ..config };
    config.services = vec![gpuplane_sim::serve::Service { min_replicas: 1, max_replicas: 1, ..chat }];
    config.stacks = vec![bestfit_stack("s", true, false)];
    let requests = vec![
        LlmRequest { at_s: 100.0, context_tokens: 50_000, generated_tokens: 10 },
        LlmRequest { at_s: 101.0, context_tokens: 2_000, generated_tokens: 10 },
    ];
    let result = run(&Setup { config, nodes: vec![gpu_node("a10", "A10", 1)], batch: vec![], requests }, 1).unwrap();
    let f = result.stacks[0].slo["interactive"];
    assert_eq!((f.refused, f.served), (1, 1), "{f:?}");
}
