//! Where the unallocated GPUs are when the arrived workload reaches 100 % of the cluster: partly used
//! GPUs by how much they have free, whole free GPUs, and free milli on nodes whose CPU is used up; and
//! the failed pods by kind; and two yardsticks for the GPU-sharing pods alone, on a relaxed problem (one
//! pool of 1,000-milli GPUs, no nodes, no CPU): first-fit decreasing, knowing them all in advance, and
//! online best fit in arrival order. `docs/placement-policy.md` quotes both.
//!
//! `cargo run --release -p gpuplane-sim --example waste -- [fgd|gpuplane|…] [trace.csv] [seed]`
#![allow(clippy::expect_used)] // A command-line study: a bad argument or file ends it with the message.

use std::collections::BTreeMap;
use std::sync::Arc;

use gpuplane_core::openb::{read_nodes, read_pods};
use gpuplane_place::{Cluster, Decision, Engine, EngineConfig, Policy, TargetWorkload, TieBreak};
use gpuplane_sim::{TARGET_COVERAGE, workload, yardstick};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let policy: Policy = args.get(1).map_or(Ok(Policy::Fgd), |p| p.parse()).expect("a policy name");
    let trace = args.get(2).map_or("data/openb/openb_pod_list_default.csv", String::as_str);
    let seed: u64 = args.get(3).map_or(Ok(42), |s| s.parse()).expect("a seed");
    let open = |path: &str| std::fs::File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let nodes = read_nodes("nodes", open("data/openb/openb_node_list_gpu_node.csv")).expect("node list");
    let pods: Vec<_> = read_pods(trace, open(trace)).expect("trace").into_iter().map(|t| t.pod).collect();
    let mut cluster = Cluster::new(&nodes).expect("cluster");
    // Ties as `gpuplane sim` breaks them by default: a node order drawn per seed.
    let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    cluster.set_tie_rank(workload::shuffled_name_rank(&names, seed)).expect("tie order");
    let requests: Vec<_> = pods.iter().map(|p| cluster.request(p)).collect();
    let target = Arc::new(TargetWorkload::from_requests(&requests, TARGET_COVERAGE).expect("workload"));
    let engine_target = (policy != Policy::Gpuplane).then(|| Arc::clone(&target));
    let mut engine = Engine::new(EngineConfig { policy, target: engine_target, seed, tie_break: TieBreak::LowestName })
        .expect("engine");
    let total = cluster.total_gpu_milli();

    let mut failed: BTreeMap<String, (u32, u64)> = BTreeMap::new();
    let mut arrived = 0u64;
    let mut shares: Vec<u16> = Vec::new();
    for pod in workload::arrivals(&pods, 1.3, total, seed) {
        arrived += u64::from(pod.gpu.total_milli());
        if arrived > total {
            break;
        }
        let request = cluster.request(&pod);
        if request.gpu.is_sharing() {
            shares.push(request.gpu.milli_per_gpu);
        }
        engine.observe(&request);
        match engine.decide(&cluster, &request) {
            Decision::Place(p) => cluster.bind(&request, &p).expect("the engine's placement binds"),
            Decision::Unschedulable(_) => {
                let kind = match (request.gpu.count, request.gpu.milli_per_gpu) {
                    (0, _) => "CPU only".to_owned(),
                    (1, m) if m < 1000 => "GPU-sharing".to_owned(),
                    (n, _) => format!("{n} whole GPUs"),
                };
                let entry = failed.entry(kind).or_default();
                entry.0 += 1;
                entry.1 += u64::from(request.gpu.total_milli());
            }
        }
    }

    let (mut partial, mut whole, mut starved) = (BTreeMap::<u16, u32>::new(), 0u32, 0u64);
    for n in cluster.nodes() {
        for &g in n.gpus() {
            match g {
                1000 => whole += 1,
                1..=999 => *partial.entry(g / 10 * 10).or_default() += 1,
                _ => {}
            }
        }
        if n.cpu_free < 4000 {
            starved += n.gpus().iter().map(|&g| u64::from(g)).sum::<u64>();
        }
    }
    let unallocated = total - cluster.allocated_gpu_milli();
    println!(
        "{} on {trace}, seed {seed}: {:.2} % of {} GPUs unallocated at 100 % arrived workload",
        policy.title(),
        100.0 * unallocated as f64 / total as f64,
        total / 1000
    );
    let mut by_waste: Vec<(u64, u16, u32)> =
        partial.iter().map(|(&f, &c)| (u64::from(f) * u64::from(c), f, c)).collect();
    by_waste.sort_unstable_by(|a, b| b.cmp(a));
    let online = yardstick::online_best_fit_waste(&shares);
    let offline = yardstick::first_fit_decreasing_waste(&shares);
    println!(
        "offline yardstick: first-fit decreasing packs the {} arrived sharing pods on whole GPUs leaving {:.1} GPUs' \
         worth free ({:.2} % of the cluster)",
        shares.len(),
        offline as f64 / 1000.0,
        100.0 * offline as f64 / total as f64
    );
    println!(
        "online yardstick: best fit in arrival order, same pods and relaxation, leaves {:.1} GPUs' worth free \
         ({:.2} % of the cluster)",
        online as f64 / 1000.0,
        100.0 * online as f64 / total as f64
    );
    println!("partly used GPUs, by free milli (tens), largest waste first:");
    for (milli, free, count) in by_waste.iter().take(10) {
        println!("  {free:>3}–{:>3} m free: {count:>4} GPUs, {:.1} GPUs' worth", free + 9, *milli as f64 / 1000.0);
    }
    let partial_milli: u64 = by_waste.iter().map(|w| w.0).sum();
    println!("  all partly used GPUs: about {:.0} GPUs' worth", partial_milli as f64 / 1000.0);
    println!("whole free GPUs: {whole}");
    println!("free milli on nodes with under 4 cores free: {:.0} GPUs' worth", starved as f64 / 1000.0);
    println!("failed pods up to 100 %:");
    for (kind, (count, milli)) in failed {
        println!("  {kind}: {count} pods, {:.0} GPUs", milli as f64 / 1000.0);
    }
}
