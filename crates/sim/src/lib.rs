//! The trace-driven simulator. It replays a pod trace against a cluster through the placement engine
//! with the FGD paper's protocol (seeded shuffle, workload inflation, one arrival at a time, failures
//! dropped) and aggregates allocation and fragmentation over seeds. Runs go in parallel with rayon.
#![forbid(unsafe_code)]

pub mod export;
pub mod run;
pub mod serve;
pub mod sweep;
pub mod variant;
pub mod workload;
pub mod yardstick;

use std::sync::Arc;
use std::time::Instant;

use gpuplane_core::{Node, Pod};
use gpuplane_place::{BindError, Cluster, ClusterError, EngineError, Policy, TargetWorkload, WorkloadError};
use rayon::prelude::*;
use serde::{Serialize, Serializer};
use thiserror::Error;

pub use run::{DecisionLatency, RunResult, Sample, WindowWait};

pub use gpuplane_place::frag::TARGET_COVERAGE;

/// Why a simulation could not run.
#[derive(Debug, Error)]
pub enum SimError {
    /// The pod trace is empty.
    #[error("the trace has no pods")]
    EmptyTrace,
    /// No policy or no seed to run.
    #[error("nothing to run: give at least one policy and one seed")]
    NothingToRun,
    /// The cluster has no GPU.
    #[error("the cluster has no GPUs; the simulation measures GPU allocation")]
    NoGpus,
    /// The tune ratio is not a positive number up to [`MAX_TUNE`].
    #[error("tune ratio must be a number above 0 and at most {MAX_TUNE}, got {0}")]
    Tune(f64),
    /// A node named in a tie order is not in the cluster, or a node is missing from it.
    #[error("the tie order must name every node of the cluster once: {0}")]
    TieOrder(String),
    /// The cluster could not be built.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The engine could not be built.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A window size of 0 or above [`MAX_WINDOW`], or no window size at all.
    #[error("window sizes must be 1 to {MAX_WINDOW} pods, got {0:?}")]
    Window(Vec<usize>),
    /// The target workload could not be built.
    #[error(transparent)]
    Workload(#[from] WorkloadError),
    /// The engine proposed a placement the cluster refused: a bug, reported rather than hidden.
    #[error("placement of pod {pod} was refused: {source}")]
    Bind {
        /// The pod.
        pod: String,
        /// Why the bind was refused.
        source: BindError,
    },
}

/// How ties between equally scored nodes are broken in a run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Ties {
    /// As the FGD paper's simulator: the smallest node name after every name was prefixed with a
    /// seeded random permutation index, i.e. a random node order drawn once per seed.
    #[default]
    ShuffledNames,
    /// The smallest node name as given.
    LowestName,
    /// A uniformly random tied node at every decision, as stock kube-scheduler.
    Random,
    /// A given node order, first name wins: to replay another simulator's run exactly.
    Order(Vec<String>),
}

/// The largest inflation ratio: arrivals asking for 10 times the cluster's GPUs fill it many times over,
/// and a larger ratio would only make memory grow (every seed's arrivals are held at once).
pub const MAX_TUNE: f64 = 10.0;

/// The largest scheduling window, in pods: a window is placed on a scratch copy of the cluster, and
/// beyond a few thousand pods the wait, not the packing, is what a user would notice.
pub const MAX_WINDOW: usize = 4096;

/// An experiment: every policy × every seed on one trace and one cluster.
#[derive(Debug, Clone)]
pub struct Experiment {
    /// Cluster nodes.
    pub nodes: Vec<Node>,
    /// The original trace (before inflation).
    pub trace: Vec<Pod>,
    /// Policies to compare.
    pub policies: Vec<Policy>,
    /// Seeds; each seed gives one arrival order shared by every policy.
    pub seeds: Vec<u64>,
    /// Workload inflation: arrived GPU requests reach `tune` × cluster GPU capacity.
    pub tune: f64,
    /// How ties between equally scored nodes are broken.
    pub ties: Ties,
    /// Replay the trace as given: no shuffle, no inflation or trimming (`tune` is ignored).
    pub replay: bool,
    /// Keep every run's decisions ([`RunResult::decisions`]).
    pub record_decisions: bool,
    /// When above 0, every policy also runs in defragmentation mode, moving at most this many placed
    /// pods to place one that fits nowhere.
    pub defrag: usize,
    /// Window sizes to run every policy with (pods placed jointly; 1 is one pod at a time).
    pub windows: Vec<usize>,
    /// The trace's mean time between pod creations, in seconds, to state window waits in time.
    pub arrival_gap_s: Option<f64>,
}

/// Median, minimum and maximum of one metric over seeds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    /// Median (mean of the two middle values for an even count).
    pub median: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
}

impl Spread {
    /// The spread of a non-empty list of values.
    pub fn of(values: &mut [f64]) -> Option<Spread> {
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let median = if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 };
        Some(Spread { median, min: values[0], max: values[n - 1] })
    }
}

/// One whole percent of arrived workload, aggregated over seeds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CurvePoint {
    /// Arrived workload, in %.
    pub arrived_pct: u32,
    /// Unallocated GPUs, in % of the cluster's GPUs.
    pub unallocated_gpu_pct: Spread,
    /// Fragmented GPUs, in % of the cluster's GPUs.
    pub frag_amount_pct: Spread,
    /// Fragmented share of idle GPUs, in %.
    pub frag_ratio_pct: Spread,
    /// Seeds that reached this percent.
    pub seeds: usize,
}

/// Every run of one policy, aggregated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicySummary {
    /// Policy.
    #[serde(serialize_with = "serialize_policy")]
    pub policy: Policy,
    /// Most pods moved per failing pod; 0 is no defragmentation.
    pub defrag: usize,
    /// Pods placed jointly per window; 1 is one pod at a time.
    pub window: usize,
    /// Each run's median and 99th-percentile wait for the window to fill, in arrivals, over seeds.
    pub wait_p50_arrivals: Spread,
    /// See `wait_p50_arrivals`.
    pub wait_p99_arrivals: Spread,
    /// Pods moved over a run, over seeds.
    pub migrations: Spread,
    /// Median, min and max over seeds at each arrived percent.
    pub curve: Vec<CurvePoint>,
    /// Pods that failed, over seeds.
    pub failed_pods: Spread,
    /// The worst 99th-percentile decision time over seeds, in nanoseconds.
    pub decision_p99_ns: u64,
    /// The median decision time, median over seeds, in nanoseconds.
    pub decision_p50_ns: u64,
}

/// How a (policy, defragmentation, window) variant is named: `FGD`, `gpuplane + defrag ≤2`,
/// `gpuplane · window 64`.
pub fn label(policy: Policy, defrag: usize, window: usize) -> String {
    let mut label = policy.title().to_owned();
    if defrag > 0 {
        label += &format!(" + defrag ≤{defrag}");
    }
    if window > 1 {
        label += &format!(" · window {window}");
    }
    label
}

/// Its machine name: `fgd`, `gpuplane+defrag2`, `gpuplane+window64`.
pub fn key(policy: Policy, defrag: usize, window: usize) -> String {
    let mut key = policy.name().to_owned();
    if defrag > 0 {
        key += &format!("+defrag{defrag}");
    }
    if window > 1 {
        key += &format!("+window{window}");
    }
    key
}

impl PolicySummary {
    /// The row's name in tables and charts.
    pub fn label(&self) -> String {
        label(self.policy, self.defrag, self.window)
    }

    /// The row's machine name in CSV files.
    pub fn key(&self) -> String {
        key(self.policy, self.defrag, self.window)
    }

    /// The curve point at an arrived percent, if some seed reached it.
    pub fn at(&self, arrived_pct: u32) -> Option<&CurvePoint> {
        self.curve.iter().find(|p| p.arrived_pct == arrived_pct)
    }
}

/// The cluster the experiment ran on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterSummary {
    /// Nodes.
    pub nodes: usize,
    /// GPUs.
    pub gpus: u64,
    /// CPU, in milli-cores.
    pub cpu_milli: u64,
}

/// The target workload FGD and the fragmentation metric use.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetSummary {
    /// Distinct task shapes in the trace.
    pub distinct_shapes: usize,
    /// Shapes kept.
    pub kept_shapes: usize,
    /// Share of trace tasks the kept shapes cover.
    pub coverage: f64,
}

/// The relaxed-problem yardsticks over seeds, as % of the cluster's GPUs left free.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Yardsticks {
    /// First-fit decreasing, knowing every pod in advance.
    pub offline_first_fit_decreasing_pct: Spread,
    /// Best fit in arrival order.
    pub online_best_fit_pct: Spread,
}

/// Everything an experiment produced.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExperimentResult {
    /// The cluster.
    pub cluster: ClusterSummary,
    /// Pods in the original trace.
    pub trace_pods: usize,
    /// The target workload.
    pub target_workload: TargetSummary,
    /// Tune ratio.
    pub tune: f64,
    /// Seeds.
    pub seeds: Vec<u64>,
    /// Per policy, in the order asked.
    pub policies: Vec<PolicySummary>,
    /// How well the arrived GPU-sharing pods could be packed on a relaxed problem (no nodes, no CPU), as
    /// unallocated GPU %: offline first-fit decreasing and online best fit (see [`yardstick`]); `None`
    /// without sharing pods.
    pub yardsticks: Option<Yardsticks>,
    /// The trace's mean time between pod creations, in seconds, when it has creation times: a wait of
    /// k arrivals is about k times this at the trace's own pace.
    pub arrival_gap_s: Option<f64>,
    /// Every run.
    pub runs: Vec<RunResult>,
    /// Wall time of the whole experiment, in milliseconds.
    pub wall_ms: f64,
}

pub(crate) fn serialize_policy<S: Serializer>(p: &Policy, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(p.name())
}

/// Runs every policy × seed in parallel and aggregates. `on_run` is called as each run finishes.
pub fn run_experiment(exp: &Experiment, on_run: &(dyn Fn(&RunResult) + Sync)) -> Result<ExperimentResult, SimError> {
    let started = Instant::now();
    if exp.trace.is_empty() {
        return Err(SimError::EmptyTrace);
    }
    if exp.policies.is_empty() || exp.seeds.is_empty() {
        return Err(SimError::NothingToRun);
    }
    let tune_ok = exp.tune.is_finite() && exp.tune > 0.0 && exp.tune <= MAX_TUNE;
    if !exp.replay && !tune_ok {
        return Err(SimError::Tune(exp.tune));
    }
    let cluster = Cluster::new(&exp.nodes)?;
    if cluster.total_gpu_milli() == 0 {
        return Err(SimError::NoGpus);
    }
    let requests: Vec<_> = exp.trace.iter().map(|p| cluster.request(p)).collect();
    let target = Arc::new(TargetWorkload::from_requests(&requests, TARGET_COVERAGE)?);
    let arrivals: Vec<Vec<Pod>> = exp
        .seeds
        .par_iter()
        .map(|&seed| {
            if exp.replay {
                exp.trace.clone()
            } else {
                workload::arrivals(&exp.trace, exp.tune, cluster.total_gpu_milli(), seed)
            }
        })
        .collect();
    if exp.windows.is_empty() || exp.windows.iter().any(|&w| w == 0 || w > MAX_WINDOW) {
        return Err(SimError::Window(exp.windows.clone()));
    }
    let modes: Vec<usize> = if exp.defrag > 0 { vec![0, exp.defrag] } else { vec![0] };
    let variants: Vec<(Policy, usize, usize)> = modes
        .iter()
        .flat_map(|&d| exp.windows.iter().flat_map(move |&w| exp.policies.iter().map(move |&p| (p, d, w))))
        .collect();
    let jobs: Vec<(Policy, usize, usize, usize)> =
        variants.iter().flat_map(|&(p, d, w)| (0..exp.seeds.len()).map(move |s| (p, d, w, s))).collect();
    let runs: Vec<RunResult> = jobs
        .par_iter()
        .map(|&(policy, defrag, window, s)| {
            let options = run::RunOptions { ties: &exp.ties, defrag, record_decisions: exp.record_decisions, window };
            let result = run::run(&cluster, &arrivals[s], policy, &target, exp.seeds[s], &options)?;
            on_run(&result);
            Ok(result)
        })
        .collect::<Result<_, SimError>>()?;
    let policies = variants
        .iter()
        .map(|&(p, d, w)| summarise(p, d, w, runs.iter().filter(|r| r.policy == p && r.defrag == d && r.window == w)))
        .collect();
    let capacity = cluster.total_gpu_milli();
    let share_sets: Vec<Vec<u16>> = arrivals.iter().map(|a| yardstick::arrived_shares(a, capacity)).collect();
    let pct = |waste: u64| 100.0 * waste as f64 / capacity as f64;
    let yardsticks = share_sets.iter().any(|s| !s.is_empty()).then(|| {
        let mut offline: Vec<f64> = share_sets.iter().map(|s| pct(yardstick::first_fit_decreasing_waste(s))).collect();
        let mut online: Vec<f64> = share_sets.iter().map(|s| pct(yardstick::online_best_fit_waste(s))).collect();
        (Spread::of(&mut offline), Spread::of(&mut online))
    });
    let yardsticks = match yardsticks {
        Some((Some(offline), Some(online))) => {
            Some(Yardsticks { offline_first_fit_decreasing_pct: offline, online_best_fit_pct: online })
        }
        _ => None,
    };
    Ok(ExperimentResult {
        cluster: ClusterSummary {
            nodes: cluster.len(),
            gpus: cluster.total_gpu_milli() / 1000,
            cpu_milli: exp.nodes.iter().map(|n| n.cpu_milli).sum(),
        },
        trace_pods: exp.trace.len(),
        target_workload: TargetSummary {
            distinct_shapes: target.distinct_shapes(),
            kept_shapes: target.shapes().len(),
            coverage: target.coverage(),
        },
        tune: exp.tune,
        seeds: exp.seeds.clone(),
        policies,
        yardsticks,
        arrival_gap_s: exp.arrival_gap_s,
        runs,
        wall_ms: started.elapsed().as_secs_f64() * 1000.0,
    })
}

fn summarise<'a>(
    policy: Policy,
    defrag: usize,
    window: usize,
    runs: impl Iterator<Item = &'a RunResult>,
) -> PolicySummary {
    let runs: Vec<&RunResult> = runs.collect();
    let longest = runs.iter().map(|r| r.samples.len()).max().unwrap_or(0);
    let mut curve = Vec::with_capacity(longest);
    for pct in 0..longest {
        let at: Vec<&Sample> = runs.iter().filter_map(|r| r.samples.get(pct)).collect();
        let spread = |f: fn(&Sample) -> f64| Spread::of(&mut at.iter().map(|s| f(s)).collect::<Vec<_>>());
        if let (Some(u), Some(a), Some(r)) =
            (spread(|s| s.unallocated_gpu_pct), spread(|s| s.frag_amount_pct), spread(|s| s.frag_ratio_pct))
        {
            curve.push(CurvePoint {
                arrived_pct: pct as u32,
                unallocated_gpu_pct: u,
                frag_amount_pct: a,
                frag_ratio_pct: r,
                seeds: at.len(),
            });
        }
    }
    let zero = Spread { median: 0.0, min: 0.0, max: 0.0 };
    let p50s = Spread::of(&mut runs.iter().map(|r| r.decision_latency.p50_ns as f64).collect::<Vec<_>>());
    let over_seeds = |f: fn(&RunResult) -> f64| Spread::of(&mut runs.iter().map(|r| f(r)).collect::<Vec<_>>());
    PolicySummary {
        policy,
        defrag,
        window,
        wait_p50_arrivals: over_seeds(|r| r.wait.p50_arrivals).unwrap_or(zero),
        wait_p99_arrivals: over_seeds(|r| r.wait.p99_arrivals).unwrap_or(zero),
        migrations: Spread::of(&mut runs.iter().map(|r| r.migrations as f64).collect::<Vec<_>>()).unwrap_or(zero),
        curve,
        failed_pods: Spread::of(&mut runs.iter().map(|r| r.failed as f64).collect::<Vec<_>>()).unwrap_or(zero),
        decision_p99_ns: runs.iter().map(|r| r.decision_latency.p99_ns).max().unwrap_or(0),
        decision_p50_ns: p50s.map_or(0, |s| s.median as u64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_uses_the_mean_of_the_middle_pair() {
        let s = Spread::of(&mut [4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 4.0));
        assert!(Spread::of(&mut []).is_none());
    }
}
