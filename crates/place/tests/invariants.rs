//! Property tests of the engine's invariants over random clusters and pods, for every policy:
//! no GPU ever above 1000 milli, no node above its CPU or memory, a pod placed only where every
//! filter passes, and "unschedulable" only when no node passes; and with defragmentation, the cluster
//! always equals the sum of where the tenancy says each pod is.

use std::collections::BTreeMap;
use std::sync::Arc;

use gpuplane_core::{GpuRequest, Node, Pod, Taint, TaintEffect, Toleration, TolerationOperator};
use gpuplane_place::defrag::{Tenancy, place_with_moves};
use gpuplane_place::filter;
use gpuplane_place::{Cluster, Decision, Engine, EngineConfig, Policy, TargetWorkload, TieBreak};
use proptest::prelude::*;

const MODELS: [&str; 3] = ["A100", "T4", "L4"];

fn node_strategy() -> impl Strategy<Value = (u64, u64, u8, usize, bool)> {
    (1_000u64..64_000, 1u64..256, 0u8..=8, 0usize..3, any::<bool>())
}

fn pod_strategy() -> impl Strategy<Value = (u64, u64, u8, u16, Option<usize>, bool)> {
    (0u64..16_000, 0u64..64, 0u8..=8, 1u16..=1000, proptest::option::of(0usize..3), any::<bool>())
}

fn build_node(i: usize, (cpu, mem_gib, gpus, model, tainted): (u64, u64, u8, usize, bool)) -> Node {
    let mut labels = BTreeMap::new();
    labels.insert("pool".to_owned(), if i.is_multiple_of(2) { "gpu" } else { "general" }.to_owned());
    Node {
        name: format!("node-{i:03}"),
        cpu_milli: cpu,
        memory_bytes: mem_gib << 30,
        gpu_count: gpus,
        gpu_model: (gpus > 0).then(|| MODELS[model].to_owned()),
        labels,
        taints: if tainted {
            vec![Taint { key: "gpu".into(), value: "true".into(), effect: TaintEffect::NoSchedule }]
        } else {
            vec![]
        },
    }
}

fn build_pod(
    i: usize,
    (cpu, mem_gib, count, milli, model, tolerates): (u64, u64, u8, u16, Option<usize>, bool),
) -> Pod {
    // Only single-GPU pods may share a device.
    let gpu = match count {
        0 => GpuRequest::NONE,
        1 => GpuRequest { count: 1, milli_per_gpu: milli },
        n => GpuRequest { count: n, milli_per_gpu: 1000 },
    };
    let mut pod = Pod::with_requests(format!("pod-{i}"), cpu, mem_gib << 29, gpu);
    if let Some(m) = model {
        pod.gpu_models = vec![MODELS[m].to_owned()];
    }
    if tolerates {
        pod.tolerations = vec![Toleration {
            key: "gpu".into(),
            operator: TolerationOperator::Exists,
            value: String::new(),
            effect: None,
        }];
    }
    if i.is_multiple_of(7) {
        pod.node_selector.insert("pool".into(), "gpu".into());
    }
    pod
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn no_overallocation_and_filters_always_hold(
        nodes in prop::collection::vec(node_strategy(), 1..12),
        pods in prop::collection::vec(pod_strategy(), 1..80),
        seed in any::<u64>(),
        random_ties in any::<bool>(),
    ) {
        let nodes: Vec<Node> = nodes.into_iter().enumerate().map(|(i, n)| build_node(i, n)).collect();
        let pods: Vec<Pod> = pods.into_iter().enumerate().map(|(i, p)| build_pod(i, p)).collect();
        let base = Cluster::new(&nodes).unwrap();
        let requests: Vec<_> = pods.iter().map(|p| base.request(p)).collect();
        let target = Arc::new(TargetWorkload::from_requests(&requests, 0.95).unwrap());
        for policy in Policy::ALL {
            let mut cluster = base.clone();
            let tie_break = if random_ties { TieBreak::Random } else { TieBreak::LowestName };
            let mut engine = Engine::new(EngineConfig { policy, target: Some(Arc::clone(&target)), seed, tie_break }).unwrap();
            // An independent ledger of what was handed out, per node and GPU.
            let mut used_gpu = vec![[0u32; 8]; nodes.len()];
            let mut used_cpu = vec![0u64; nodes.len()];
            let mut used_mem = vec![0u64; nodes.len()];
            for req in &requests {
                engine.observe(req);
                match engine.decide(&cluster, req) {
                    Decision::Place(p) => {
                        let n = p.node;
                        prop_assert!(filter::check(&cluster.node_info()[n], &cluster.nodes()[n], req).is_ok(),
                            "{policy:?} placed on a node that fails a filter");
                        prop_assert_eq!(p.gpus.len(), if req.gpu.is_none() { 0 } else { usize::from(req.gpu.count) });
                        cluster.bind(req, &p).unwrap();
                        for share in &p.gpus {
                            used_gpu[n][usize::from(share.index)] += u32::from(share.milli);
                        }
                        used_cpu[n] += req.cpu_milli;
                        used_mem[n] += req.memory_bytes;
                    }
                    Decision::Unschedulable(counts) => {
                        prop_assert_eq!(counts.total() as usize, nodes.len());
                        for (info, node) in cluster.node_info().iter().zip(cluster.nodes()) {
                            prop_assert!(filter::check(info, node, req).is_err(),
                                "{policy:?} gave up although node {} fits", info.name);
                        }
                    }
                }
            }
            for (i, node) in nodes.iter().enumerate() {
                let state = &cluster.nodes()[i];
                prop_assert!(used_cpu[i] <= node.cpu_milli);
                prop_assert!(used_mem[i] <= node.memory_bytes);
                prop_assert_eq!(state.cpu_free, node.cpu_milli - used_cpu[i]);
                for (g, &used) in used_gpu[i].iter().enumerate().take(usize::from(node.gpu_count)) {
                    prop_assert!(used <= 1000, "GPU over-allocated");
                    prop_assert_eq!(u32::from(state.gpu_free[g]), 1000 - used);
                }
            }
        }
    }

    #[test]
    fn release_restores_the_node(
        nodes in prop::collection::vec(node_strategy(), 1..6),
        pods in prop::collection::vec(pod_strategy(), 1..30),
    ) {
        let nodes: Vec<Node> = nodes.into_iter().enumerate().map(|(i, n)| build_node(i, n)).collect();
        let mut cluster = Cluster::new(&nodes).unwrap();
        let before: Vec<_> = cluster.nodes().to_vec();
        let mut engine = Engine::new(EngineConfig { policy: Policy::BestFit, target: None, seed: 1, tie_break: TieBreak::LowestName }).unwrap();
        let mut placed = Vec::new();
        for (i, p) in pods.into_iter().enumerate() {
            let req = cluster.request(&build_pod(i, p));
            if let Decision::Place(p) = engine.decide(&cluster, &req) {
                cluster.bind(&req, &p).unwrap();
                placed.push((req, p));
            }
        }
        for (req, p) in placed.iter().rev() {
            cluster.release(req, p).unwrap();
        }
        for (a, b) in before.iter().zip(cluster.nodes()) {
            prop_assert_eq!((a.cpu_free, a.memory_free, a.gpu_free, a.gpu_pods_by_class), (b.cpu_free, b.memory_free, b.gpu_free, b.gpu_pods_by_class));
        }
        // Releasing twice is refused rather than over-freeing.
        if let Some((req, p)) = placed.first()
            && (!req.gpu.is_none() || req.cpu_milli > 0)
        {
            prop_assert!(cluster.release(req, p).is_err());
        }
    }

    #[test]
    fn defragmentation_moves_pods_without_losing_or_overallocating_any(
        nodes in prop::collection::vec(node_strategy(), 1..8),
        pods in prop::collection::vec(pod_strategy(), 1..60),
        max_moves in 1usize..4,
    ) {
        let nodes: Vec<Node> = nodes.into_iter().enumerate().map(|(i, n)| build_node(i, n)).collect();
        let mut cluster = Cluster::new(&nodes).unwrap();
        let mut engine = Engine::new(EngineConfig { policy: Policy::Gpuplane, target: None, seed: 1, tie_break: TieBreak::LowestName }).unwrap();
        let mut tenancy = Tenancy::new(nodes.len());
        let mut placed = Vec::new();
        for (id, p) in pods.into_iter().enumerate() {
            let req = cluster.request(&build_pod(id, p));
            engine.observe(&req);
            match engine.decide(&cluster, &req) {
                Decision::Place(p) => {
                    cluster.bind(&req, &p).unwrap();
                    tenancy.add(id, req, p);
                    placed.push(id);
                }
                Decision::Unschedulable(_) => {
                    if let Some(done) = place_with_moves(&mut engine, &mut cluster, &mut tenancy, id, &req, max_moves).unwrap() {
                        prop_assert!(done.moves.len() <= max_moves);
                        placed.push(id);
                    }
                }
            }
        }
        // Rebuild the cluster from the tenancy alone: it must match, pod for pod.
        let mut rebuilt = Cluster::new(&nodes).unwrap();
        for &id in &placed {
            let (req, p) = tenancy.get(id).expect("every placed pod is somewhere");
            prop_assert!(tenancy.on_node(p.node).contains(&id));
            rebuilt.bind(req, p).unwrap();
        }
        for (a, b) in rebuilt.nodes().iter().zip(cluster.nodes()) {
            prop_assert_eq!((a.cpu_free, a.memory_free, a.gpu_free), (b.cpu_free, b.memory_free, b.gpu_free));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A window's placements pass every filter on the snapshot as the window leaves it, fit together
    /// whichever order they are bound in, never place less GPU milli than the window in arrival order
    /// (the candidate one pod at a time would give; the pods here share one priority), and leave the
    /// caller's snapshot untouched.
    #[test]
    fn window_placements_fit_together_in_any_order(
        nodes in prop::collection::vec(node_strategy(), 1..10),
        pods in prop::collection::vec(pod_strategy(), 1..60),
        window in 1usize..24,
        seed in any::<u64>(),
    ) {
        let nodes: Vec<Node> = nodes.into_iter().enumerate().map(|(i, n)| build_node(i, n)).collect();
        let pods: Vec<Pod> = pods.into_iter().enumerate().map(|(i, p)| build_pod(i, p)).collect();
        let base = Cluster::new(&nodes).unwrap();
        let requests: Vec<_> = pods.iter().map(|p| base.request(p)).collect();
        let target = Arc::new(TargetWorkload::from_requests(&requests, 0.95).unwrap());
        for policy in [Policy::BestFit, Policy::Fgd, Policy::Gpuplane] {
            let config = || EngineConfig { policy, target: Some(Arc::clone(&target)), seed, tie_break: TieBreak::LowestName };
            let mut engine = Engine::new(config()).unwrap();
            let mut one_by_one = Engine::new(config()).unwrap();
            let mut cluster = base.clone();
            for batch in requests.chunks(window) {
                batch.iter().for_each(|r| engine.observe(r));
                let before = cluster.nodes().to_vec();
                let decisions = engine.decide_window(&cluster, batch);
                prop_assert_eq!(cluster.nodes(), &before[..]);
                prop_assert_eq!(decisions.len(), batch.len());
                // Arrival order on a copy: what the window must at least match in GPU milli placed.
                let mut alone = cluster.clone();
                let mut alone_milli = 0u64;
                for r in batch {
                    one_by_one.observe(r);
                    if let Decision::Place(p) = one_by_one.decide(&alone, r) {
                        alone.bind(r, &p).unwrap();
                        alone_milli += u64::from(r.gpu.total_milli());
                    }
                }
                let mut window_milli = 0u64;
                // Bind backwards: any order must fit.
                for (r, d) in batch.iter().zip(&decisions).rev() {
                    if let Decision::Place(p) = d {
                        prop_assert_eq!(p.gpus.len(), if r.gpu.is_none() { 0 } else { usize::from(r.gpu.count) });
                        cluster.bind(r, p).unwrap();
                        window_milli += u64::from(r.gpu.total_milli());
                    }
                }
                if policy != Policy::Gpuplane {
                    // Neither learns from arrivals, so the window's arrival-order candidate is exactly
                    // the one-by-one run (gpuplane's window has observed the whole batch first).
                    prop_assert!(window_milli >= alone_milli, "window placed {window_milli} < {alone_milli}");
                }
            }
        }
    }
}

/// `state` with what `victims` hold (from `tenancy`) given back.
fn without(state: &gpuplane_place::NodeState, tenancy: &Tenancy, victims: &[usize]) -> gpuplane_place::NodeState {
    let mut s = state.clone();
    for &v in victims {
        let Some((r, p)) = tenancy.get(v) else { continue };
        s.cpu_free += r.cpu_milli;
        s.memory_free += r.memory_bytes;
        for share in &p.gpus {
            s.gpu_free[usize::from(share.index)] += share.milli;
        }
    }
    s
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Preemption, for both ways of choosing victims: every victim is a listed pod of lower priority on the
    /// chosen node, the victims stay within the budget, the preemptor fits once they are gone and did not
    /// before, and no victim could be spared; with no budget and nothing planned, no node would have room
    /// even with every candidate gone.
    #[test]
    fn preemption_plans_only_needed_victims_within_the_budget(
        nodes in prop::collection::vec(node_strategy(), 1..8),
        pods in prop::collection::vec((pod_strategy(), 0i32..3, 0u32..1000, any::<bool>(), any::<bool>()), 1..60),
        preemptor in pod_strategy(),
        allowed in 0usize..3,
        least_work in any::<bool>(),
    ) {
        use gpuplane_place::{Evictable, Preemption, VictimChoice};
        let nodes: Vec<Node> = nodes.into_iter().enumerate().map(|(i, n)| build_node(i, n)).collect();
        let mut cluster = Cluster::new(&nodes).unwrap();
        let mut engine = Engine::new(EngineConfig { policy: Policy::BestFit, target: None, seed: 1, tie_break: TieBreak::LowestName }).unwrap();
        let mut tenancy = Tenancy::new(nodes.len());
        let mut info = Vec::new();
        for (i, (p, priority, started, listed, budgeted)) in pods.into_iter().enumerate() {
            let mut req = cluster.request(&build_pod(i, p));
            req.priority = priority;
            if let Decision::Place(placement) = engine.decide(&cluster, &req) {
                cluster.bind(&req, &placement).unwrap();
                tenancy.add(info.len(), req, placement);
                info.push((Evictable { priority, started_s: f64::from(started) }, listed, budgeted));
            }
        }
        let mut pod = cluster.request(&build_pod(999, preemptor));
        pod.priority = 3;
        let evictable = |id: usize| info.get(id).filter(|(_, listed, _)| *listed).map(|(e, _, _)| *e);
        let budget = |set: &[usize]| set.iter().filter(|&&id| info[id].2).count() <= allowed;
        let choice = if least_work { VictimChoice::LeastWorkLost } else { VictimChoice::KubeScheduler };
        for (within, limited) in [(&budget as &dyn Fn(&[usize]) -> bool, true), (&|_: &[usize]| true, false)] {
            let p = Preemption { evictable: &evictable, within_budgets: within, nodes: None, now_s: 1000.0, choice };
            match p.plan(&cluster, &tenancy, &pod) {
                Some((node, victims)) => {
                    prop_assert!(!victims.is_empty());
                    let (ni, state) = (&cluster.node_info()[node], &cluster.nodes()[node]);
                    prop_assert!(filter::check(ni, state, &pod).is_err(), "the pod fitted without evicting");
                    for &v in &victims {
                        prop_assert!(tenancy.on_node(node).contains(&v), "victim on another node");
                        prop_assert!(evictable(v).is_some_and(|e| e.priority < pod.priority));
                        let spared: Vec<usize> = victims.iter().copied().filter(|&x| x != v).collect();
                        prop_assert!(filter::check(ni, &without(state, &tenancy, &spared), &pod).is_err(),
                            "victim {} could have been spared", v);
                    }
                    prop_assert!(filter::check(ni, &without(state, &tenancy, &victims), &pod).is_ok());
                    prop_assert!(within(&victims), "the budget is exceeded");
                }
                None if !limited => {
                    for (node, (ni, state)) in cluster.node_info().iter().zip(cluster.nodes()).enumerate() {
                        if filter::check(ni, state, &pod).is_ok() {
                            continue; // It fits there as things are: no preemption needed.
                        }
                        let all: Vec<usize> = tenancy.on_node(node).iter().copied()
                            .filter(|&v| evictable(v).is_some_and(|e| e.priority < pod.priority)).collect();
                        prop_assert!(all.is_empty() || filter::check(ni, &without(state, &tenancy, &all), &pod).is_err(),
                            "node {} would have room with every candidate gone", ni.name);
                    }
                }
                None => {}
            }
        }
    }
}
