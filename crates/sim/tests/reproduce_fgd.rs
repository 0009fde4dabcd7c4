//! A reduced run of the FGD paper's default experiment (3 seeds instead of 10) against the published
//! medians, with tolerances that a wrong scorer, GPU choice, tie-break or inflation fails.

use std::path::PathBuf;

use gpuplane_core::openb::{read_nodes, read_pods};
use gpuplane_place::Policy;
use gpuplane_sim::{Experiment, ExperimentResult, Ties, run_experiment};

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/openb").join(name)
}

fn run(policies: &[Policy], seeds: &[u64]) -> ExperimentResult {
    run_with(policies, seeds, 0)
}

fn run_with(policies: &[Policy], seeds: &[u64], defrag: usize) -> ExperimentResult {
    let nodes_path = data("openb_node_list_gpu_node.csv");
    let trace_path = data("openb_pod_list_default.csv");
    let nodes =
        read_nodes("nodes", std::fs::File::open(nodes_path).expect("bundled node list")).expect("valid node list");
    let trace = read_pods("trace", std::fs::File::open(trace_path).expect("bundled trace"))
        .expect("valid trace")
        .into_iter()
        .map(|p| p.pod)
        .collect();
    let exp = Experiment {
        nodes,
        trace,
        policies: policies.to_vec(),
        seeds: seeds.to_vec(),
        tune: 1.3,
        ties: Ties::default(),
        replay: false,
        record_decisions: false,
        defrag,
        windows: vec![1],
        arrival_gap_s: None,
    };
    run_experiment(&exp, &|_| {}).expect("experiment runs")
}

fn unallocated_at(result: &ExperimentResult, policy: Policy, pct: u32) -> f64 {
    let p = result.policies.iter().find(|p| p.policy == policy).expect("policy was run");
    p.at(pct).expect("percent reached").unallocated_gpu_pct.median
}

#[test]
fn default_trace_matches_the_paper() {
    let result = run(&Policy::ALL, &[42, 43, 44]);
    assert_eq!(result.cluster.gpus, 6212);
    assert_eq!(result.trace_pods, 8152);
    assert_eq!(result.target_workload.kept_shapes, 35);
    assert_eq!(result.target_workload.distinct_shapes, 91);
    // Inflation to 1.3 × 6,212 GPUs gives about 10,866 pods (the exact count depends on the draws).
    for r in &result.runs {
        assert!((10_700..11_000).contains(&r.pods), "{} pods after inflation", r.pods);
    }

    // Published medians at 100 % arrived workload and the allowed distance.
    let expected = [
        (Policy::Random, 13.75, 1.0),
        (Policy::DotProd, 9.44, 0.5),
        (Policy::GpuClustering, 8.42, 1.0),
        (Policy::GpuPacking, 8.19, 1.0),
        (Policy::BestFit, 7.09, 0.5),
        (Policy::Fgd, 4.77, 0.3),
    ];
    for (policy, paper, tolerance) in expected {
        let got = unallocated_at(&result, policy, 100);
        assert!(
            (got - paper).abs() <= tolerance,
            "{policy}: {got:.2} % unallocated at 100 %, paper {paper} ± {tolerance}"
        );
    }
    // The ranking: FGD < BestFit < Packing, Clustering < DotProd < Random.
    let u = |p| unallocated_at(&result, p, 100);
    assert!(u(Policy::Fgd) < u(Policy::BestFit));
    assert!(u(Policy::BestFit) < u(Policy::GpuPacking).min(u(Policy::GpuClustering)));
    assert!(u(Policy::GpuPacking).max(u(Policy::GpuClustering)) < u(Policy::DotProd));
    assert!(u(Policy::DotProd) < u(Policy::Random));
    // Up to 90 % every non-random policy places everything (the ideal line).
    for policy in [Policy::DotProd, Policy::BestFit, Policy::Fgd] {
        let got = unallocated_at(&result, policy, 90);
        assert!((got - 10.0).abs() < 0.2, "{policy}: {got:.2} at 90 %");
    }

    // FGD's fragmentation during the fill, as % of cluster GPUs.
    let fgd = result.policies.iter().find(|p| p.policy == Policy::Fgd).unwrap();
    for (pct, paper) in [(50, 8.95), (80, 5.97), (90, 5.01)] {
        let got = fgd.at(pct).unwrap().frag_amount_pct.median;
        assert!((got - paper).abs() <= 0.7, "FGD frag amount at {pct} %: {got:.2}, paper {paper}");
    }
    // An empty cluster already counts the CPU-only tasks' share of idle GPUs as fragmented (≈ 13.9 %).
    let empty = fgd.at(0).unwrap().frag_ratio_pct.median;
    assert!((empty - 13.9).abs() < 0.3, "frag ratio of the empty cluster: {empty:.2}");
}

#[test]
fn runs_are_reproducible() {
    let a = run(&[Policy::Fgd, Policy::Random], &[7]);
    let b = run(&[Policy::Fgd, Policy::Random], &[7]);
    for (x, y) in a.runs.iter().zip(&b.runs) {
        assert_eq!(x.samples, y.samples, "{} seed {}", x.policy, x.seed);
    }
}

#[test]
fn the_online_gpuplane_policy_leaves_fewer_gpus_unallocated_than_fgd_and_defrag_does_not_cost() {
    let result = run_with(&[Policy::Fgd, Policy::Gpuplane], &[42, 43, 44], 2);
    let at = |policy: Policy, defrag: usize| {
        let p = result.policies.iter().find(|p| p.policy == policy && p.defrag == defrag).expect("variant was run");
        (p.at(100).expect("100 % reached").unallocated_gpu_pct.median, p.migrations.median)
    };
    let (fgd, _) = at(Policy::Fgd, 0);
    let (online, moved) = at(Policy::Gpuplane, 0);
    let (defragmented, migrations) = at(Policy::Gpuplane, 2);
    assert!(online < 0.97 * fgd, "gpuplane {online:.2} % against FGD {fgd:.2} % unallocated at 100 %");
    assert_eq!(moved, 0.0, "without defragmentation nothing moves");
    // Moving at most two pods per failing pod buys little once placement is good: it must not cost.
    assert!(defragmented <= online + 0.05, "defragmentation {defragmented:.2} % against {online:.2} %");
    assert!(migrations > 0.0);
}
