//! One simulation run: pods arrive one by one, the engine decides, placed pods are bound, failed pods
//! are dropped. After every arrival the cluster's allocation and fragmentation are sampled against the
//! arrived workload, discretised to whole percent as the FGD artifact does. In defragmentation mode a pod
//! that fits nowhere may move up to a few placed pods (`gpuplane_place::defrag`); the moves are counted.
//!
//! In window mode the scheduler waits until `window` pods are pending and places them jointly
//! ([`Engine::decide_window`]); no pod is placed before it arrives. The cluster is sampled after each
//! window, each whole percent interpolated between the windows around it, and every pod's wait for its
//! window to fill is counted, in arrivals.

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
    /// Pods placed jointly per scheduling window; 1 is one pod at a time.
    pub window: usize,
}

/// How long pods waited for their window to fill, in arrivals after their own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct WindowWait {
    /// Median wait.
    pub p50_arrivals: f64,
    /// 99th percentile.
    pub p99_arrivals: f64,
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
    /// Pods placed jointly per window; 1 is one pod at a time.
    pub window: usize,
    /// What the window cost the pods in waiting.
    pub wait: WindowWait,
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
    /// Engine time per decision (in window mode, a window's time divided by its pods).
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
    let window = options.window.max(1);
    let mut node_frag: Vec<f64> = cluster.nodes().iter().map(|n| target.node_fragment(n)).collect();
    let mut frag_sum: f64 = node_frag.iter().sum();
    let mut sampler = if window == 1 { Sampler::Buckets(Buckets::default()) } else { Sampler::Points(Vec::new()) };
    let mut arrived: u64 = 0;
    sampler.add(0.0, &cluster, frag_sum, total);
    let mut latencies = Vec::with_capacity(arrivals.len());
    let mut waits = Vec::with_capacity(if window > 1 { arrivals.len() } else { 0 });
    let (mut placed, mut failed, mut migrations) = (0, 0, 0u64);
    let mut tenancy = Tenancy::new(if defrag > 0 { cluster.len() } else { 0 });
    let mut requests = Vec::with_capacity(window);
    for (first, batch) in arrivals.chunks(window).enumerate().map(|(w, b)| (w * window, b)) {
        requests.clear();
        requests.extend(batch.iter().map(|pod| cluster.request(pod)));
        let t0 = Instant::now();
        for request in &requests {
            engine.observe(request);
        }
        let window_decisions = engine.decide_window(&cluster, &requests);
        let per_pod = t0.elapsed().as_nanos() as u64 / batch.len() as u64;
        latencies.extend(std::iter::repeat_n(per_pod, batch.len()));
        if window > 1 {
            waits.extend((0..batch.len()).map(|k| (batch.len() - 1 - k) as u64));
        }
        for (k, ((pod, request), decision)) in batch.iter().zip(&requests).zip(window_decisions).enumerate() {
            let id = first + k;
            arrived += u64::from(pod.gpu.total_milli());
            match decision {
                Decision::Place(placement) => {
                    if options.record_decisions {
                        let node = cluster.node_info()[placement.node].name.clone();
                        let gpus = placement.gpus.iter().map(|g| g.index).collect();
                        decisions.push(DecisionRecord { pod: pod.name.clone(), placed: Some((node, gpus)) });
                    }
                    cluster
                        .bind(request, &placement)
                        .map_err(|e| SimError::Bind { pod: pod.name.clone(), source: e })?;
                    refresh_fragment(target, &cluster, placement.node, &mut node_frag, &mut frag_sum);
                    placed += 1;
                    if defrag > 0 {
                        tenancy.add(id, request.clone(), placement);
                    }
                }
                Decision::Unschedulable(_) => {
                    let moved = place_with_moves(&mut engine, &mut cluster, &mut tenancy, id, request, defrag)
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
            if window == 1 {
                sampler.add(100.0 * arrived as f64 / total, &cluster, frag_sum, total);
            }
        }
        if window > 1 {
            sampler.add(100.0 * arrived as f64 / total, &cluster, frag_sum, total);
        }
    }
    Ok(RunResult {
        policy,
        seed,
        defrag,
        window,
        wait: wait_stats(&mut waits),
        migrations,
        pods: arrivals.len(),
        placed,
        failed,
        samples: sampler.finish(),
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

fn wait_stats(waits: &mut [u64]) -> WindowWait {
    if waits.is_empty() {
        return WindowWait::default();
    }
    waits.sort_unstable();
    let at = |q: f64| waits[((waits.len() - 1) as f64 * q).round() as usize] as f64;
    WindowWait { p50_arrivals: at(0.5), p99_arrivals: at(0.99) }
}

/// How a run turns cluster states into one sample per whole percent of arrived workload.
enum Sampler {
    /// One pod at a time: every arrival is a state, averaged per percent.
    Buckets(Buckets),
    /// Windows: a state after each window at its exact arrived percent, interpolated to whole percents.
    Points(Vec<(f64, [f64; 3])>),
}

impl Sampler {
    fn add(&mut self, arrived_pct: f64, cluster: &Cluster, frag_milli: f64, total: f64) {
        match self {
            Sampler::Buckets(b) => b.add(arrived_pct, cluster, frag_milli, total),
            Sampler::Points(points) => points.push((arrived_pct, state(cluster, frag_milli, total))),
        }
    }

    fn finish(self) -> Vec<Sample> {
        match self {
            Sampler::Buckets(b) => b.finish(),
            Sampler::Points(points) => interpolate(&points),
        }
    }
}

/// Allocated %, fragmented % of the cluster and fragmented % of the idle GPU milli.
fn state(cluster: &Cluster, frag_milli: f64, total: f64) -> [f64; 3] {
    let allocated = cluster.allocated_gpu_milli() as f64;
    let idle = total - allocated;
    let frag_ratio = if idle > 0.0 { 100.0 * frag_milli / idle } else { 0.0 };
    [100.0 * allocated / total, 100.0 * frag_milli / total, frag_ratio]
}

/// One sample per whole percent from 0 to the last point's, each linearly interpolated between the
/// points on either side of it (points are in increasing arrived order; equal ones keep the last).
fn interpolate(points: &[(f64, [f64; 3])]) -> Vec<Sample> {
    let Some(&(last, _)) = points.last() else { return Vec::new() };
    let mut out = Vec::with_capacity(last as usize + 1);
    let mut j = 0;
    for pct in 0..=(last.round() as u32) {
        let x = f64::from(pct);
        while j + 1 < points.len() && points[j + 1].0 <= x {
            j += 1;
        }
        let (x0, a) = points[j];
        let v = match points.get(j + 1) {
            Some(&(x1, b)) if x1 > x0 && x > x0 => {
                let t = ((x - x0) / (x1 - x0)).min(1.0);
                [a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1]), a[2] + t * (b[2] - a[2])]
            }
            _ => a,
        };
        out.push(Sample {
            arrived_pct: pct,
            allocated_gpu_pct: v[0],
            unallocated_gpu_pct: 100.0 - v[0],
            frag_amount_pct: v[1],
            frag_ratio_pct: v[2],
        });
    }
    out
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
        let [allocated, frag_amount, frag_ratio] = state(cluster, frag_milli, total);
        let s = &mut self.sums[i];
        s[0] += allocated;
        s[1] += frag_amount;
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
