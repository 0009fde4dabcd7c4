//! Cost of Kubernetes' filters per decision as the cluster grows: a plain pod, and a pod with required
//! pod anti-affinity and a hard zone spread, on clusters of 300 and 1,200 nodes with four bound pods a node
//! (a tenth of them with anti-affinity of their own). Linear filters take about 4× as long on the larger
//! cluster; a decision quadratic in the cluster would take 16×. The ratios are printed after the groups.
#![allow(clippy::unwrap_used)] // A benchmark: a failed unwrap stops it with its location.

use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, criterion_group};
use gpuplane_kube::fit::{Fit, Incoming, PodInfo, spec_taints};
use k8s_openapi::api::core::v1 as api;
use serde_json::json;

fn cluster(nodes: usize) -> Fit {
    let objects: Vec<api::Node> = (0..nodes)
        .map(|i| {
            serde_json::from_value(json!({"metadata": {"name": format!("n{i}"), "labels": {
                "kubernetes.io/hostname": format!("n{i}"), "topology.kubernetes.io/zone": format!("z{}", i % 8)}},
                "status": {"allocatable": {"cpu": "64", "memory": "256Gi", "pods": "110", "nvidia.com/gpu": "8"}}}))
            .unwrap()
        })
        .collect();
    let with_taints: Vec<(&api::Node, _)> = objects.iter().map(|n| (n, spec_taints(n))).collect();
    let mut fit = Fit::new(&with_taints);
    for i in 0..nodes * 4 {
        let mut spec = json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "1", "memory": "2Gi"}}}]});
        if i % 10 == 0 {
            spec["affinity"] = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"topologyKey": "kubernetes.io/hostname",
                 "labelSelector": {"matchLabels": {"app": format!("a{}", i % 50)}}}]}});
        }
        let pod: api::Pod = serde_json::from_value(json!({"metadata": {"name": format!("p{i}"), "namespace": "ns",
            "labels": {"app": format!("a{}", i % 50)}}, "spec": spec}))
        .unwrap();
        fit.add(&format!("ns/p{i}"), i % nodes, Arc::new(PodInfo::of(&pod).unwrap()));
    }
    fit
}

fn incoming(constrained: bool) -> Incoming {
    let mut spec =
        json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "2", "nvidia.com/gpu": "1"}}}]});
    if constrained {
        let selector = json!({"matchLabels": {"app": "vllm"}});
        spec["affinity"] = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"topologyKey": "kubernetes.io/hostname", "labelSelector": selector}]}});
        spec["topologySpreadConstraints"] = json!([{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "DoNotSchedule", "labelSelector": selector}]);
    }
    let pod: api::Pod = serde_json::from_value(
        json!({"metadata": {"name": "new", "namespace": "ns", "labels": {"app": "vllm"}}, "spec": spec}),
    )
    .unwrap();
    Incoming::of(&pod, Vec::new()).unwrap()
}

fn filters(c: &mut Criterion) {
    let mut group = c.benchmark_group("fit_filter");
    for nodes in [300, 1_200] {
        let fit = cluster(nodes);
        for (name, pod) in [("plain", incoming(false)), ("anti_affinity_and_spread", incoming(true))] {
            group.bench_function(format!("{name}/{nodes}_nodes"), |b| b.iter(|| fit.filter(&pod).map(|v| v.len())));
        }
    }
    group.finish();
}

/// Mean time of one filter call, in microseconds.
fn mean_micros(fit: &Fit, pod: &Incoming) -> f64 {
    let rounds = 200;
    let started = Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(fit.filter(pod).map(|v| v.len()).unwrap_or(0));
    }
    started.elapsed().as_secs_f64() * 1e6 / f64::from(rounds)
}

/// The growth from 300 to 1,200 nodes, measured in one run.
fn ratios() {
    let (small, large) = (cluster(300), cluster(1_200));
    for (name, pod) in [("plain", incoming(false)), ("anti-affinity + spread", incoming(true))] {
        let (a, b) = (mean_micros(&small, &pod), mean_micros(&large, &pod));
        println!(
            "fit filter, {name}: {a:.0} µs at 300 nodes, {b:.0} µs at 1,200 nodes: {:.1}× for 4× the cluster",
            b / a
        );
    }
}

criterion_group!(benches, filters);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    ratios();
}
