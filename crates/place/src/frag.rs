//! GPU fragmentation as FGD defines it (Weng et al., USENIX ATC '23): for a target workload of task
//! shapes with popularities, the expected free GPU milli on a node that the next task could not use.
//! `docs/fgd.md` gives the definitions; the cases follow the reference simulator's `GetNodePodFrag`.

use std::collections::HashMap;

use thiserror::Error;

use crate::cluster::{NodeState, PodRequest, Shape};

/// Share of tasks the target workload's shapes cover: FGD's `podPopularityThreshold` of 95 %.
pub const TARGET_COVERAGE: f64 = 0.95;

/// One shape of the target workload and its popularity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WeightedShape {
    /// The task shape.
    pub shape: Shape,
    /// Popularity, summing to 1 over the workload.
    pub weight: f64,
    /// How many tasks of the source had this shape.
    pub count: u64,
}

/// The target workload M: the most popular task shapes, renormalised.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetWorkload {
    shapes: Vec<WeightedShape>,
    distinct_shapes: usize,
    covered_tasks: u64,
    total_tasks: u64,
}

/// Why a target workload could not be built.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WorkloadError {
    /// No tasks to learn from.
    #[error("the target workload needs at least one task")]
    Empty,
    /// Coverage outside (0, 1].
    #[error("coverage must be in (0, 1], got {0}")]
    Coverage(String),
}

impl TargetWorkload {
    /// Groups tasks by exact shape, keeps the most common shapes until they cover at least `coverage`
    /// of the tasks (FGD uses 0.95), and renormalises their popularities.
    ///
    /// Equal counts are ordered by shape, larger first, as the reference simulator does.
    pub fn from_requests<'a>(
        tasks: impl IntoIterator<Item = &'a PodRequest>,
        coverage: f64,
    ) -> Result<Self, WorkloadError> {
        let mut counts: HashMap<Shape, f64> = HashMap::new();
        for t in tasks {
            *counts.entry(t.shape()).or_default() += 1.0;
        }
        Self::from_counts(&counts, coverage)
    }

    /// As [`Self::from_requests`], from (possibly fractional, decayed) counts per shape.
    pub fn from_counts(counts: &HashMap<Shape, f64>, coverage: f64) -> Result<Self, WorkloadError> {
        if !(coverage > 0.0 && coverage <= 1.0) {
            return Err(WorkloadError::Coverage(coverage.to_string()));
        }
        let total: f64 = counts.values().filter(|c| c.is_finite() && **c > 0.0).sum();
        if total <= 0.0 {
            return Err(WorkloadError::Empty);
        }
        let mut ranked: Vec<(Shape, f64)> =
            counts.iter().filter(|(_, c)| c.is_finite() && **c > 0.0).map(|(s, c)| (*s, *c)).collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
        let distinct_shapes = ranked.len();
        let wanted = coverage * total;
        let mut covered = 0.0;
        let mut kept = 0;
        while covered < wanted && kept < ranked.len() {
            covered += ranked[kept].1;
            kept += 1;
        }
        // Divided as the reference simulator divides (share of all tasks, then renormalised by the kept
        // share; no renormalisation when every shape is kept), so the weights agree to the last bit.
        let kept_share = covered / total;
        let all_kept = kept == ranked.len();
        let shapes = ranked[..kept]
            .iter()
            .map(|&(shape, count)| {
                let weight = if all_kept { count / total } else { (count / total) / kept_share };
                WeightedShape { shape, weight, count: count.round() as u64 }
            })
            .collect();
        Ok(TargetWorkload {
            shapes,
            distinct_shapes,
            covered_tasks: covered.round() as u64,
            total_tasks: total.round() as u64,
        })
    }

    /// Builds a workload from explicit shapes and weights (weights are renormalised).
    pub fn from_weights(shapes: &[(Shape, f64)]) -> Result<Self, WorkloadError> {
        let sum: f64 = shapes.iter().map(|s| s.1).sum();
        if shapes.is_empty() || sum.is_nan() || sum <= 0.0 {
            return Err(WorkloadError::Empty);
        }
        Ok(TargetWorkload {
            shapes: shapes.iter().map(|&(shape, w)| WeightedShape { shape, weight: w / sum, count: 0 }).collect(),
            distinct_shapes: shapes.len(),
            covered_tasks: 0,
            total_tasks: 0,
        })
    }

    /// The same shapes with each popularity multiplied by `factor(shape)` and renormalised (a factor
    /// that is not finite and positive leaves the shape's popularity as it was).
    pub fn scaled_by(&self, factor: impl Fn(&Shape) -> f64) -> TargetWorkload {
        let mut scaled = self.clone();
        for s in &mut scaled.shapes {
            let f = factor(&s.shape);
            if f.is_finite() && f > 0.0 {
                s.weight *= f;
            }
        }
        let sum: f64 = scaled.shapes.iter().map(|s| s.weight).sum();
        for s in &mut scaled.shapes {
            s.weight /= sum;
        }
        scaled
    }

    /// Total variation distance between two workloads' shape popularities: ½ Σ |p_m − q_m| over the
    /// shapes of either (0 = the same mix, 1 = nothing in common).
    pub fn distance(&self, other: &TargetWorkload) -> f64 {
        let mut diff: HashMap<Shape, f64> = HashMap::with_capacity(self.shapes.len() + other.shapes.len());
        for s in &self.shapes {
            *diff.entry(s.shape).or_default() += s.weight;
        }
        for s in &other.shapes {
            *diff.entry(s.shape).or_default() -= s.weight;
        }
        diff.values().map(|d| d.abs()).sum::<f64>() / 2.0
    }

    /// The kept shapes, most popular first.
    pub fn shapes(&self) -> &[WeightedShape] {
        &self.shapes
    }

    /// Distinct shapes in the source tasks.
    pub fn distinct_shapes(&self) -> usize {
        self.distinct_shapes
    }

    /// Share of the source tasks the kept shapes cover.
    pub fn coverage(&self) -> f64 {
        if self.total_tasks == 0 { 1.0 } else { self.covered_tasks as f64 / self.total_tasks as f64 }
    }

    /// Expected fragment of a node, in milli-GPUs: Σ_m p_m · F_n(m).
    #[inline]
    pub fn node_fragment(&self, node: &NodeState) -> f64 {
        self.fragment_of(node.cpu_free, node.gpus(), node.model)
    }

    /// Expected fragment of a node state given as parts.
    #[inline]
    pub fn fragment_of(&self, cpu_free: u64, gpus: &[u16], model: Option<u8>) -> f64 {
        let free: u32 = gpus.iter().map(|&g| u32::from(g)).sum();
        if free == 0 {
            return 0.0;
        }
        let mut buckets = [0.0f64; FragCase::COUNT];
        for s in &self.shapes {
            let (case, frag) = shape_case(cpu_free, gpus, free, model, &s.shape);
            buckets[case as usize] += s.weight * f64::from(frag);
        }
        buckets.iter().sum()
    }
}

impl FragProfile {
    /// The node's free GPU milli after `changes` (per GPU: free before, free after).
    fn free_after(&self, changes: &[(u16, u16)]) -> u32 {
        self.free_total - changes.iter().map(|&(b, a)| u32::from(b) - u32::from(a)).sum::<u32>()
    }
}

/// The cases of the reference simulator's `GetNodePodFrag`, in the order it sums their buckets (its
/// "satisfied" case adds only the too-small GPUs, to the lack-GPU bucket).
#[derive(Debug, Clone, Copy)]
enum FragCase {
    LackBoth,
    LackGpu,
    LackCpu,
    CpuTaskFits,
    CpuTaskLacksCpu,
    NoAccess,
}

impl FragCase {
    const COUNT: usize = 6;
}

/// Per-shape counts of one node state, from which the fragment after a small change (one or a few
/// GPUs losing milli, the CPU shrinking) follows in O(shapes) instead of O(shapes × GPUs).
#[derive(Debug, Clone, Default)]
pub struct FragProfile {
    /// Per target shape: can the shape use this node's GPUs at all (asks for GPUs, accepts the model),
    /// how many GPUs have at least its per-GPU demand free, the free milli of the other GPUs, and how
    /// many per-GPU shares of it the GPUs hold in all (a GPU with 1000 free holds three 320 m shares).
    per_shape: Vec<(bool, u8, u32, u32)>,
    free_total: u32,
}

impl TargetWorkload {
    /// Fills `profile` for a node state and returns the node's fragment (same value as
    /// [`TargetWorkload::fragment_of`]).
    pub fn profile(&self, cpu_free: u64, gpus: &[u16], model: Option<u8>, profile: &mut FragProfile) -> f64 {
        profile.per_shape.clear();
        profile.free_total = gpus.iter().map(|&g| u32::from(g)).sum();
        for s in &self.shapes {
            let usable = !s.shape.gpu.is_none() && s.shape.models.accepts(model);
            let demand = s.shape.gpu.milli_per_gpu;
            let (mut fitting, mut too_small, mut shares) = (0u8, 0u32, 0u32);
            for &g in gpus {
                if g >= demand {
                    fitting += 1;
                } else {
                    too_small += u32::from(g);
                }
                shares += u32::from(g).checked_div(u32::from(demand)).unwrap_or(0);
            }
            profile.per_shape.push((usable, fitting, too_small, shares));
        }
        self.fragment_with(profile, cpu_free, &[])
    }

    /// The fragment of the profiled node after the GPUs in `changes` go from `(free before, free after)`
    /// and the free CPU becomes `cpu_free`.
    pub fn fragment_with(&self, profile: &FragProfile, cpu_free: u64, changes: &[(u16, u16)]) -> f64 {
        let free_total = profile.free_after(changes);
        if free_total == 0 {
            return 0.0;
        }
        // The reference simulator adds each shape's fragment into a bucket per case (lack both, lack GPU,
        // lack CPU, CPU task fits, CPU task lacks CPU, wrong model) and then sums the buckets. The same
        // order of additions gives the same last bits: a node whose fragment does not change scores
        // exactly 50, not 49 for a rounding residue of -3e-13.
        let mut buckets = [0.0f64; FragCase::COUNT];
        for (s, &(usable, fitting, too_small, _)) in self.shapes.iter().zip(&profile.per_shape) {
            let (case, frag) = if s.shape.gpu.is_none() {
                let fits = cpu_free >= s.shape.cpu_milli;
                (if fits { FragCase::CpuTaskFits } else { FragCase::CpuTaskLacksCpu }, free_total)
            } else if !usable {
                (FragCase::NoAccess, free_total)
            } else {
                let (fitting, too_small) = fit_after(s.shape.gpu.milli_per_gpu, fitting, too_small, changes);
                gpu_case(&s.shape, fitting, too_small, cpu_free, free_total)
            };
            buckets[case as usize] += s.weight * f64::from(frag);
        }
        buckets.iter().sum()
    }
}

impl TargetWorkload {
    /// The packed fragment of the profiled node after `changes` (see [`FragProfile`]): per shape m, the
    /// free milli left over when the node is filled with as many tasks of m as its GPUs and its CPU
    /// allow, Σ_m p_m · (free − k_m · count_m · milli_m). FGD's fragment asks whether the next task
    /// fits; this one asks how much a stream of such tasks would leave unused — the 190 m a lone 810 m
    /// task leaves on its GPU, and the GPUs a node's CPU can no longer feed.
    pub fn packed_fragment_with(&self, profile: &FragProfile, cpu_free: u64, changes: &[(u16, u16)]) -> f64 {
        let free_total = profile.free_after(changes);
        if free_total == 0 {
            return 0.0;
        }
        let mut sum = 0.0;
        for (s, &(usable, _, _, shares)) in self.shapes.iter().zip(&profile.per_shape) {
            let frag = if !usable {
                free_total
            } else {
                let shares = shares_after(s.shape.gpu.milli_per_gpu, shares, changes);
                packed_left(&s.shape, shares, cpu_free, free_total)
            };
            sum += s.weight * f64::from(frag);
        }
        sum
    }
}

impl TargetWorkload {
    /// `fgd_weight` × [`TargetWorkload::fragment_with`] + [`TargetWorkload::packed_fragment_with`] in one
    /// pass over the shapes (the gpuplane policy's fragment), summed plainly rather than per case.
    pub fn combined_fragment_with(
        &self,
        profile: &FragProfile,
        cpu_free: u64,
        changes: &[(u16, u16)],
        fgd_weight: f64,
    ) -> f64 {
        let free_total = profile.free_after(changes);
        if free_total == 0 {
            return 0.0;
        }
        let mut sum = 0.0;
        for (s, &(usable, fitting, too_small, shares)) in self.shapes.iter().zip(&profile.per_shape) {
            let (fgd, packed) = if !usable {
                (free_total, free_total)
            } else {
                let demand = s.shape.gpu.milli_per_gpu;
                let (fitting, too_small) = fit_after(demand, fitting, too_small, changes);
                let fgd = gpu_case(&s.shape, fitting, too_small, cpu_free, free_total).1;
                (fgd, packed_left(&s.shape, shares_after(demand, shares, changes), cpu_free, free_total))
            };
            sum += s.weight * (fgd_weight * f64::from(fgd) + f64::from(packed));
        }
        sum
    }
}

/// A shape's fitting GPUs and too-small free milli after GPUs go from `(free before, free after)`.
#[inline]
fn fit_after(demand: u16, mut fitting: u8, mut too_small: u32, changes: &[(u16, u16)]) -> (u8, u32) {
    for &(before, after) in changes {
        if before >= demand {
            if after < demand {
                fitting -= 1;
                too_small += u32::from(after);
            }
        } else {
            too_small -= u32::from(before - after);
        }
    }
    (fitting, too_small)
}

/// The reference's case for a GPU shape the node's model accepts, and its fragment.
#[inline]
fn gpu_case(shape: &Shape, fitting: u8, too_small: u32, cpu_free: u64, free_total: u32) -> (FragCase, u32) {
    match (fitting >= shape.gpu.count, cpu_free >= shape.cpu_milli) {
        (true, true) => (FragCase::LackGpu, too_small),
        (true, false) => (FragCase::LackCpu, free_total),
        (false, true) => (FragCase::LackGpu, free_total),
        (false, false) => (FragCase::LackBoth, free_total),
    }
}

/// The packed fragment of one usable shape: free milli left once the node holds as many of its tasks as
/// `shares` (per-GPU shares after the changes) and the CPU allow.
#[inline]
fn packed_left(shape: &Shape, shares: u32, cpu_free: u64, free_total: u32) -> u32 {
    let by_gpu = u64::from(shares / u32::from(shape.gpu.count.max(1)));
    let by_cpu = cpu_free.checked_div(shape.cpu_milli).unwrap_or(u64::MAX);
    let used = by_gpu.min(by_cpu).saturating_mul(u64::from(shape.gpu.total_milli()));
    free_total - u32::try_from(used.min(u64::from(free_total))).unwrap_or(free_total)
}

/// A shape's per-GPU shares after the changes.
#[inline]
fn shares_after(demand: u16, mut shares: u32, changes: &[(u16, u16)]) -> u32 {
    let d = u32::from(demand);
    for &(before, after) in changes {
        shares -= u32::from(before) / d - u32::from(after) / d;
    }
    shares
}

/// F_n(m): the free milli of a node that a task of shape m cannot use.
///
/// If the task cannot run on the node at all (no GPU asked, wrong model, too few fitting GPUs, too
/// little CPU), every free milli is a fragment; if it can, only the GPUs with less free than the task's
/// per-GPU demand are.
#[inline]
pub fn shape_fragment(cpu_free: u64, gpus: &[u16], free_total: u32, model: Option<u8>, shape: &Shape) -> u32 {
    shape_case(cpu_free, gpus, free_total, model, shape).1
}

/// The case of [`shape_fragment`] and the fragment, as the reference simulator buckets them.
#[inline]
fn shape_case(cpu_free: u64, gpus: &[u16], free_total: u32, model: Option<u8>, shape: &Shape) -> (FragCase, u32) {
    let cpu_fits = cpu_free >= shape.cpu_milli;
    if shape.gpu.is_none() {
        return (if cpu_fits { FragCase::CpuTaskFits } else { FragCase::CpuTaskLacksCpu }, free_total);
    }
    if !shape.models.accepts(model) {
        return (FragCase::NoAccess, free_total);
    }
    let demand = shape.gpu.milli_per_gpu;
    let fitting = gpus.iter().filter(|&&g| g >= demand).count() as u8;
    let too_small = gpus.iter().filter(|&&g| g < demand).map(|&g| u32::from(g)).sum();
    gpu_case(shape, fitting, too_small, cpu_free, free_total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ModelSet;
    use gpuplane_core::GpuRequest;

    fn shape(cpu: u64, count: u8, milli: u16) -> Shape {
        Shape { cpu_milli: cpu, gpu: GpuRequest { count, milli_per_gpu: milli }, models: ModelSet::Any }
    }

    #[test]
    fn scaled_by_renormalises_and_ignores_bad_factors() {
        let a = Shape { cpu_milli: 1, gpu: GpuRequest { count: 1, milli_per_gpu: 1000 }, models: ModelSet::Any };
        let b = Shape { cpu_milli: 2, ..a };
        let c = Shape { cpu_milli: 3, ..a };
        let w = TargetWorkload::from_weights(&[(a, 1.0), (b, 1.0), (c, 2.0)]).unwrap();
        let scaled = w.scaled_by(|s| match s.cpu_milli {
            1 => 3.0,
            2 => f64::NAN,
            _ => 0.0,
        });
        let weights: Vec<f64> = scaled.shapes().iter().map(|s| s.weight).collect();
        // 0.25·3, 0.25 (NaN ignored), 0.5 (0 ignored), over 1.5.
        assert_eq!(weights, vec![0.75 / 1.5, 0.25 / 1.5, 0.5 / 1.5]);
        assert_eq!(scaled.shapes().len(), 3);
    }

    #[test]
    fn fragment_cases_follow_the_definition() {
        let gpus = [1000, 300, 0, 700];
        let free = 2000;
        // CPU-only task: every free milli is a fragment, whether it fits or not.
        assert_eq!(shape_fragment(10_000, &gpus, free, Some(0), &shape(1000, 0, 0)), 2000);
        // Task fits: GPUs with less than 500 free are fragments (300), the rest is usable.
        assert_eq!(shape_fragment(10_000, &gpus, free, Some(0), &shape(1000, 1, 500)), 300);
        // Task fits on GPUs, but the node lacks CPU: all is fragment.
        assert_eq!(shape_fragment(500, &gpus, free, Some(0), &shape(1000, 1, 500)), 2000);
        // Two whole GPUs wanted, only one is free.
        assert_eq!(shape_fragment(10_000, &gpus, free, Some(0), &shape(1000, 2, 1000)), 2000);
        // Wrong model.
        let only_model_1 = Shape { models: ModelSet::Only(0b10), ..shape(1000, 1, 500) };
        assert_eq!(shape_fragment(10_000, &gpus, free, Some(0), &only_model_1), 2000);
        assert_eq!(shape_fragment(10_000, &gpus, free, Some(1), &only_model_1), 300);
    }

    #[test]
    fn profile_updates_match_a_full_recount() {
        let shapes = [
            (shape(2000, 1, 1000), 0.4),
            (shape(1000, 1, 300), 0.3),
            (shape(500, 0, 0), 0.2),
            (shape(4000, 2, 1000), 0.1),
        ];
        let w = TargetWorkload::from_weights(&shapes).unwrap();
        let gpus = [1000u16, 700, 300, 0];
        let mut profile = FragProfile::default();
        let before = w.profile(8000, &gpus, Some(0), &mut profile);
        assert_eq!(before, w.fragment_of(8000, &gpus, Some(0)));
        for (i, demand, cpu) in [(0usize, 300u16, 3000u64), (1, 500, 7000), (2, 300, 0), (0, 1000, 6000)] {
            let mut after = gpus;
            after[i] -= demand;
            let incremental = w.fragment_with(&profile, cpu, &[(gpus[i], after[i])]);
            let combined = w.combined_fragment_with(&profile, cpu, &[(gpus[i], after[i])], 8.0);
            let separate = 8.0 * incremental + w.packed_fragment_with(&profile, cpu, &[(gpus[i], after[i])]);
            assert!((combined - separate).abs() < 1e-6 * separate.max(1.0), "{combined} vs {separate}");
            assert_eq!(incremental, w.fragment_of(cpu, &after, Some(0)), "GPU {i} minus {demand}, CPU {cpu}");
        }
    }

    #[test]
    fn workload_keeps_top_shapes_until_coverage() {
        let mk = |cpu, n| {
            (0..n).map(move |_| PodRequest {
                cpu_milli: cpu,
                memory_bytes: 0,
                gpu: GpuRequest { count: 1, milli_per_gpu: 500 },
                models: ModelSet::Any,
                priority: 0,
                constraints: None,
            })
        };
        let tasks: Vec<PodRequest> = mk(1000, 60).chain(mk(2000, 30)).chain(mk(3000, 6)).chain(mk(4000, 4)).collect();
        let w = TargetWorkload::from_requests(&tasks, 0.95).unwrap();
        assert_eq!(w.shapes().len(), 3, "60+30 < 95, 60+30+6 >= 95");
        assert!((w.shapes()[0].weight - 60.0 / 96.0).abs() < 1e-12);
        assert_eq!(w.distinct_shapes(), 4);
        assert!(TargetWorkload::from_requests(&tasks[..0], 0.95).is_err());
    }
}
