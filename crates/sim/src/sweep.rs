//! A robustness sweep: every policy over a grid of generated trace variants ([`crate::variant`]), the
//! unallocated GPU % at 100 % arrived workload per policy (median and spread over seeds). Two planes:
//! model-constrained × multi-GPU share, and GPU-sharing × CPU-only share; the other shares stay at the
//! base trace's.

use gpuplane_core::Node;
use gpuplane_core::openb::TracePod;
use gpuplane_place::Policy;

use crate::variant::{self, Targets, VariantError};
use crate::{Experiment, SimError, Spread, Ties, run_experiment};

/// One grid axis: what it sets and its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Axis {
    /// Share of GPU pods with a GPU-model constraint.
    ModelConstrained,
    /// Share of GPU milli asked by multi-GPU pods.
    MultiGpu,
    /// Share of GPU milli asked by sharing pods.
    Sharing,
    /// Share of pods that ask for no GPU.
    CpuOnly,
}

impl Axis {
    /// The column name.
    pub fn name(self) -> &'static str {
        match self {
            Axis::ModelConstrained => "model_constrained",
            Axis::MultiGpu => "multi_gpu",
            Axis::Sharing => "sharing",
            Axis::CpuOnly => "cpu_only",
        }
    }

    fn set(self, targets: &mut Targets, value: f64) {
        match self {
            Axis::ModelConstrained => targets.model_constrained = Some(value),
            Axis::MultiGpu => targets.multi_gpu = Some(value),
            Axis::Sharing => targets.sharing = Some(value),
            Axis::CpuOnly => targets.cpu_only = Some(value),
        }
    }
}

/// A plane of the grid: every pair of values of two axes.
#[derive(Debug, Clone, PartialEq)]
pub struct Plane {
    /// Rows.
    pub rows: (Axis, Vec<f64>),
    /// Columns.
    pub cols: (Axis, Vec<f64>),
}

/// The default grid: model-constrained 0–40 % × multi-GPU 0–60 %, sharing 0–100 % × CPU-only 0–30 %.
pub fn default_planes() -> Vec<Plane> {
    vec![
        Plane {
            rows: (Axis::ModelConstrained, vec![0.0, 0.1, 0.2, 0.3, 0.4]),
            cols: (Axis::MultiGpu, vec![0.0, 0.2, 0.4, 0.6]),
        },
        Plane {
            rows: (Axis::Sharing, vec![0.0, 0.25, 0.5, 0.75, 1.0]),
            cols: (Axis::CpuOnly, vec![0.0, 0.1, 0.2, 0.3]),
        },
    ]
}

/// What a sweep runs on.
#[derive(Debug, Clone)]
pub struct SweepConfig {
    /// The base trace the variants are derived from.
    pub base: Vec<TracePod>,
    /// The cluster.
    pub nodes: Vec<Node>,
    /// GPU-model constraints new constraints are drawn from.
    pub spec_pool: Vec<Vec<String>>,
    /// Policies.
    pub policies: Vec<Policy>,
    /// Run seeds (also the variant seed is derived from the grid point).
    pub seeds: Vec<u64>,
    /// Seed of the variant draws.
    pub variant_seed: u64,
    /// Inflation.
    pub tune: f64,
    /// The planes.
    pub planes: Vec<Plane>,
}

/// One grid point's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Index of the plane.
    pub plane: usize,
    /// Row and column values.
    pub at: (f64, f64),
    /// Pods in the generated variant.
    pub pods: usize,
    /// Per policy (in the order asked): unallocated GPU % at 100 % arrived, over seeds.
    pub unallocated: Vec<(Policy, Spread)>,
}

/// Why a sweep stopped.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// A variant could not be derived.
    #[error("variant {axis_a}={a}, {axis_b}={b}: {source}")]
    Variant {
        /// Row axis.
        axis_a: &'static str,
        /// Row value.
        a: f64,
        /// Column axis.
        axis_b: &'static str,
        /// Column value.
        b: f64,
        /// Why.
        source: VariantError,
    },
    /// A simulation failed.
    #[error(transparent)]
    Sim(#[from] SimError),
}

/// Runs the sweep; `on_point` is called as each grid point finishes.
pub fn run(config: &SweepConfig, on_point: &dyn Fn(&Point)) -> Result<Vec<Point>, SweepError> {
    let mut points = Vec::new();
    for (plane_no, plane) in config.planes.iter().enumerate() {
        for &a in &plane.rows.1 {
            for &b in &plane.cols.1 {
                let mut targets = Targets::default();
                plane.rows.0.set(&mut targets, a);
                plane.cols.0.set(&mut targets, b);
                let pods =
                    variant::derive(&config.base, &targets, &config.spec_pool, &config.nodes, config.variant_seed)
                        .map_err(|source| SweepError::Variant {
                            axis_a: plane.rows.0.name(),
                            a,
                            axis_b: plane.cols.0.name(),
                            b,
                            source,
                        })?;
                let exp = Experiment {
                    nodes: config.nodes.clone(),
                    trace: pods.iter().map(|p| p.pod.clone()).collect(),
                    policies: config.policies.clone(),
                    seeds: config.seeds.clone(),
                    tune: config.tune,
                    ties: Ties::ShuffledNames,
                    replay: false,
                    record_decisions: false,
                    defrag: 0,
                    windows: vec![1],
                    arrival_gap_s: None,
                };
                let result = run_experiment(&exp, &|_| {})?;
                let unallocated = result
                    .policies
                    .iter()
                    .filter_map(|p| p.at(100).map(|c| (p.policy, c.unallocated_gpu_pct)))
                    .collect();
                let point = Point { plane: plane_no, at: (a, b), pods: pods.len(), unallocated };
                on_point(&point);
                points.push(point);
            }
        }
    }
    Ok(points)
}

impl Point {
    /// The median of a policy, if it ran and reached 100 %.
    pub fn median(&self, policy: Policy) -> Option<f64> {
        self.unallocated.iter().find(|(p, _)| *p == policy).map(|(_, s)| s.median)
    }
}
