//! One simulation run: pods arrive one by one, the engine decides, placed pods are bound, failed pods
//! are dropped. After every arrival the cluster's allocation and fragmentation are sampled against the
//! arrived workload, discretised to whole percent as the FGD artifact does. In defragmentation mode a pod
//! that fits nowhere may move up to a few placed pods (`gpuplane_place::defrag`); the moves are counted.

use std::sync::Arc;
use std::time::Instant;

use gpuplane_core::Pod;
use gpuplane_place::defrag::{Tenancy, place_with_moves};
use gpuplane_place::{Cluster, Decision, Engine, EngineConfig, Policy, TargetWorkload, TieBreak};
use serde::Serialize;

use crate::{SimError, Ties};

/// The state of the cluster sampled at one whole percent of arrived workload.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sample {
    /// Arrived workload: GPU milli requested so far (failed pods included) / cluster GPU milli, in %.
    pub arrived_pct: u32,
    /// Allocated GPU milli / cluster GPU milli, in %.
    pub allocated_gpu_pct: f64,
    /// 100 − allocated, in %.
    pub unallocated_gpu_pct: f64,
    /// Expected fragmented GPU milli / cluster GPU milli, in %.
    pub frag_amount_pct: f64,
    /// Expected fragmented GPU milli / idle GPU milli, in %.
    pub frag_ratio_pct: f64,
}

/// Per-decision time of the engine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct DecisionLatency {
    /// Median, in nanoseconds.
    pub p50_ns: u64,
    /// 99th percentile, in nanoseconds.
    pub p99_ns: u64,
    /// Slowest decision, in nanoseconds.
    pub max_ns: u64,
}

/// Where one arrival went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionRecord {
    /// The pod's name.
    pub pod: String,
    /// Node name and GPU indices, or `None` when the pod failed.
    pub placed: Option<(String, Vec<u8>)>,
}

/// How one run is set up beyond its policy and seed.
#[derive(Debug, Clone)]
pub struct RunOptions<'a> {
    /// How ties are broken.
    pub ties: &'a Ties,
    /// Most pods moved to place one failing pod; 0 is no defragmentation.
    pub defrag: usize,
    /// Keep every decision in [`RunResult::decisions`].
    pub record_decisions: bool,
}

/// What one (policy, seed) run produced.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunResult {
    /// Policy.
    #[serde(serialize_with = "crate::serialize_policy")]
    pub policy: Policy,
    /// Seed of the shuffle, inflation and tie-breaking.
    pub seed: u64,
    /// Most pods moved to place one failing pod; 0 is no defragmentation.
    pub defrag: usize,
    /// Pods moved (migrations) over the run.
    pub migrations: u64,
    /// Pods that arrived.
    pub pods: usize,
    /// Pods placed.
    pub placed: usize,
    /// Pods that failed and were dropped.
    pub failed: usize,
    /// One sample per whole percent of arrived workload, from 0 to the last arrival.
    pub samples: Vec<Sample>,
    /// Engine time per decision.
    pub decision_latency: DecisionLatency,
    /// Wall time of the run, in milliseconds.
    pub wall_ms: f64,
    /// Every arrival's outcome in order, when asked for (not serialised).
    #[serde(skip)]
    pub decisions: Vec<DecisionRecord>,
}

/// Runs one policy over an arrival sequence.
pub fn run(
    cluster: &Cluster,
    arrivals: &[Pod],
    policy: Policy,
    target: &Arc<TargetWorkload>,
    seed: u64,
    options: &RunOptions<'_>,
) -> Result<RunResult, SimError> {
    let started = Instant::now();
    let defrag = options.defrag;
    let mut cluster = cluster.clone();
    let tie_break = match options.ties {
        Ties::ShuffledNames => {
            let names: Vec<&str> = cluster.node_info().iter().map(|n| n.name.as_str()).collect();
            let rank = crate::workload::shuffled_name_rank(&names, seed);
            cluster.set_tie_rank(rank)?;
            TieBreak::LowestName
        }
        Ties::LowestName => TieBreak::LowestName,
        Ties::Random => TieBreak::Random,
        Ties::Order(order) => {
            cluster.set_tie_rank(order_rank(&cluster, order)?)?;
            TieBreak::LowestName
        }
    };
    let mut decisions = Vec::with_capacity(if options.record_decisions { arrivals.len() } else { 0 });
    let mut engine = Engine::new(EngineConfig {
        policy,
        // The gpuplane policy is online: it learns its workload from the arrivals (`observe`), never the
        // whole trace. The others get FGD's target, fixed from the whole trace as the paper does.
        target: (policy != Policy::Gpuplane).then(|| Arc::clone(target)),
        // A stream apart from the shuffle's, so the arrival order does not depend on the policy.
        seed: seed ^ 0x9e37_79b9_7f4a_7c15,
        tie_break,
    })?;
    let total = cluster.total_gpu_milli() as f64;
    if total == 0.0 {
        return Err(SimError::NoGpus);
    }
    let mut node_frag: Vec<f64> = cluster.nodes().iter().map(|n| target.node_fragment(n)).collect();
    let mut frag_sum: f64 = node_frag.iter().sum();
    let mut buckets = Buckets::default();
    let mut arrived: u64 = 0;
    buckets.add(0.0, &cluster, frag_sum, total);
    let mut latencies = Vec::with_capacity(arrivals.len());
    let (mut placed, mut failed, mut migrations) = (0, 0, 0u64);
    let mut tenancy = Tenancy::new(if defrag > 0 { cluster.len() } else { 0 });
    for (id, pod) in arrivals.iter().enumerate() {
        let request = cluster.request(pod);
        arrived += u64::from(pod.gpu.total_milli());
        let t0 = Instant::now();
        engine.observe(&request);
        let decision = engine.decide(&cluster, &request);
        latencies.push(t0.elapsed().as_nanos() as u64);
        match decision {
            Decision::Place(placement) => {
                if options.record_decisions {
                    let node = cluster.node_info()[placement.node].name.clone();
                    let gpus = placement.gpus.iter().map(|g| g.index).collect();
                    decisions.push(DecisionRecord { pod: pod.name.clone(), placed: Some((node, gpus)) });
                }
                cluster.bind(&request, &placement).map_err(|e| SimError::Bind { pod: pod.name.clone(), source: e })?;
                refresh_fragment(target, &cluster, placement.node, &mut node_frag, &mut frag_sum);
                placed += 1;
                if defrag > 0 {
                    tenancy.add(id, request, placement);
                }
            }
            Decision::Unschedulable(_) => {
                let moved = place_with_moves(&mut engine, &mut cluster, &mut tenancy, id, &request, defrag)
                    .map_err(|e| SimError::Bind { pod: pod.name.clone(), source: e })?;
                match &moved {
                    Some(done) => {
                        placed += 1;
                        migrations += done.moves.len() as u64;
                        let touched = std::iter::once(done.placement.node)
                            .chain(done.moves.iter().flat_map(|m| [m.from.node, m.to.node]));
                        for n in touched {
                            refresh_fragment(target, &cluster, n, &mut node_frag, &mut frag_sum);
                        }
                    }
                    None => failed += 1,
                }
                if options.record_decisions {
                    let placed = moved.as_ref().map(|done| {
                        let node = cluster.node_info()[done.placement.node].name.clone();
                        (node, done.placement.gpus.iter().map(|g| g.index).collect())
                    });
                    decisions.push(DecisionRecord { pod: pod.name.clone(), placed });
                }
            }
        }
        buckets.add(100.0 * arrived as f64 / total, &cluster, frag_sum, total);
    }
    Ok(RunResult {
        policy,
        seed,
        defrag,
        migrations,
        pods: arrivals.len(),
        placed,
        failed,
        samples: buckets.finish(),
        decision_latency: latency_stats(&mut latencies),
        wall_ms: started.elapsed().as_secs_f64() * 1000.0,
        decisions,
    })
}

/// Each node's rank in a given order of names (first wins).
fn order_rank(cluster: &Cluster, order: &[String]) -> Result<Vec<u32>, SimError> {
    let position: std::collections::HashMap<&str, u32> =
        order.iter().enumerate().map(|(i, n)| (n.as_str(), i as u32)).collect();
    if position.len() != order.len() || order.len() != cluster.len() {
        return Err(SimError::TieOrder(format!(
            "{} names ({} distinct) for {} nodes",
            order.len(),
            position.len(),
            cluster.len()
        )));
    }
    cluster
        .node_info()
        .iter()
        .map(|n| {
            position.get(n.name.as_str()).copied().ok_or_else(|| SimError::TieOrder(format!("{} is missing", n.name)))
        })
        .collect()
}

/// Measures node `n`'s fragment again after it changed, keeping the cluster's sum in step.
fn refresh_fragment(target: &TargetWorkload, cluster: &Cluster, n: usize, node_frag: &mut [f64], frag_sum: &mut f64) {
    let f = target.node_fragment(&cluster.nodes()[n]);
    *frag_sum += f - node_frag[n];
    node_frag[n] = f;
}

fn latency_stats(ns: &mut [u64]) -> DecisionLatency {
    if ns.is_empty() {
        return DecisionLatency::default();
    }
    ns.sort_unstable();
    let at = |q: f64| ns[((ns.len() - 1) as f64 * q).round() as usize];
    DecisionLatency { p50_ns: at(0.5), p99_ns: at(0.99), max_ns: ns[ns.len() - 1] }
}

/// Running sums per whole percent; events that round to the same percent are averaged.
#[derive(Default)]
struct Buckets {
    sums: Vec<[f64; 4]>,
    counts: Vec<u32>,
}

impl Buckets {
    fn add(&mut self, arrived_pct: f64, cluster: &Cluster, frag_milli: f64, total: f64) {
        let i = arrived_pct.round() as usize;
        if i >= self.sums.len() {
            self.sums.resize(i + 1, [0.0; 4]);
            self.counts.resize(i + 1, 0);
        }
        let allocated = cluster.allocated_gpu_milli() as f64;
        let idle = total - allocated;
        let frag_ratio = if idle > 0.0 { 100.0 * frag_milli / idle } else { 0.0 };
        let s = &mut self.sums[i];
        s[0] += 100.0 * allocated / total;
        s[1] += 100.0 * frag_milli / total;
        s[2] += frag_ratio;
        self.counts[i] += 1;
    }

    /// Averages each percent; a percent with no event takes the mean of its ±1 neighbours, or the
    /// nearest earlier one when both are missing too (a multi-GPU pod can jump several percent).
    fn finish(self) -> Vec<Sample> {
        let mean = |i: usize| -> Option<[f64; 3]> {
            let c = f64::from(*self.counts.get(i)?);
            (c > 0.0).then(|| {
                let s = self.sums[i];
                [s[0] / c, s[1] / c, s[2] / c]
            })
        };
        let mut out: Vec<Sample> = Vec::with_capacity(self.counts.len());
        for i in 0..self.counts.len() {
            let v = mean(i).or_else(|| {
                let prev = i.checked_sub(1).and_then(mean);
                match (prev, mean(i + 1)) {
                    (Some(a), Some(b)) => Some([(a[0] + b[0]) / 2.0, (a[1] + b[1]) / 2.0, (a[2] + b[2]) / 2.0]),
                    (Some(a), None) | (None, Some(a)) => Some(a),
                    (None, None) => None,
                }
            });
            let v = match v {
                Some(v) => v,
                None => match out.last() {
                    Some(last) => [last.allocated_gpu_pct, last.frag_amount_pct, last.frag_ratio_pct],
                    None => [0.0, 0.0, 0.0],
                },
            };
            out.push(Sample {
                arrived_pct: i as u32,
                allocated_gpu_pct: v[0],
                unallocated_gpu_pct: 100.0 - v[0],
                frag_amount_pct: v[1],
                frag_ratio_pct: v[2],
            });
        }
        out
    }
}
