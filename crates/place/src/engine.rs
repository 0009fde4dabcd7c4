//! The placement engine: a pure state machine in the raft-rs "Ready" habit. The caller hands it a
//! cluster snapshot and a pod; it hands back a [`Decision`] and changes nothing in the cluster. The
//! caller binds the placement (see [`Cluster::bind`]) and the engine's memo follows the node stamps.

use std::collections::HashMap;
use std::sync::Arc;

use gpuplane_core::MILLI_PER_GPU;
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

use crate::cluster::{Cluster, GpuShare, NodeId, NodeInfo, NodeState, Placement, PodRequest, Shape};
use crate::filter::{self, Rejection, RejectionCounts};
use crate::frag::{FragProfile, TargetWorkload};
use crate::policy::{self, Policy};

/// The engine's answer for one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Place the pod here.
    Place(Placement),
    /// No node passes every filter; how many nodes each filter rejected.
    Unschedulable(RejectionCounts),
}

/// Which node wins among nodes with the same best score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TieBreak {
    /// The node with the lexicographically smallest name: reproducible, and what the FGD paper's
    /// simulator does (its `selectHost` replaces kube-scheduler's reservoir sampling with this).
    #[default]
    LowestName,
    /// A uniformly random node among the tied ones, as stock kube-scheduler does.
    Random,
}

/// How an engine is set up.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The scoring policy.
    pub policy: Policy,
    /// The target workload FGD scores against (required for FGD, ignored otherwise).
    pub target: Option<Arc<TargetWorkload>>,
    /// Seed of the random stream (the Random policy, random tie-breaking).
    pub seed: u64,
    /// How ties between equally scored nodes are broken.
    pub tie_break: TieBreak,
}

/// Why an engine could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// FGD without a target workload.
    #[error("the fgd policy needs a target workload")]
    MissingTarget,
}

/// Never a valid node stamp: marks an empty memo slot.
const STALE: u64 = u64::MAX;

/// FGD's memo: per pod shape, each node's score and chosen GPU, valid while the node's stamp is
/// unchanged; and each node's fragment profile (shared by all shapes), valid under the same rule.
#[derive(Debug, Default)]
struct FgdMemo {
    cluster_id: u64,
    /// Per node: the state stamp and weights generation its profile and fragment were measured at,
    /// the fragment, and the profile (which depends on the shapes, not on their weights).
    profiles: Vec<(u64, u64, f64, FragProfile)>,
    /// Generation of the workload's weights; bumped by [`FgdMemo::reweigh`].
    weights: u64,
    shape_index: HashMap<Shape, usize>,
    by_shape: Vec<Vec<(u64, i64, i8)>>,
    /// Scores by node state: nodes in the same state (an idle node of a type, early on most of them)
    /// score alike, so re-scoring the cluster for a shape computes each distinct state once.
    by_state: HashMap<StateKey, (i64, i8)>,
}

impl FgdMemo {
    /// The workload's weights changed, its shapes did not: profiles stay, fragments and scores go.
    fn reweigh(&mut self) {
        self.weights += 1;
        for scores in &mut self.by_shape {
            scores.iter_mut().for_each(|s| s.0 = STALE);
        }
        self.by_state.clear();
    }
}

/// A shape slot and everything a node's score depends on: free CPU, free milli per GPU, GPUs, model.
type StateKey = (usize, u64, [u16; 8], u8, Option<u8>);

/// Most node states remembered before the state memo starts again.
const STATE_MEMO_LIMIT: usize = 1 << 18;

/// The workload the gpuplane policy learns from arrivals: decayed counts per shape, turned into a
/// target workload at doubling intervals early on, then every [`LEARN_REFRESH`] arrivals.
#[derive(Debug, Default)]
struct Learned {
    counts: HashMap<Shape, f64>,
    seen: u64,
    refreshed_at: u64,
}

/// The gpuplane policy's fragment is FGD's times this plus the packed fragment (see
/// [`TargetWorkload::packed_fragment_with`]): FGD's term keeps whole nodes and GPUs free for the shapes
/// that need them, the packed term counts what a stream of tasks would leave unused.
const PACKED_FGD_WEIGHT: f64 = 8.0;
/// The gpuplane policy's score unit, in milli-GPUs of combined fragment (about 22 milli of FGD's
/// fragment alone). This and the scarcity constants were chosen on generated trace variants only
/// (docs/trace-variants.md).
const PACKED_SCORE_STEP: f64 = 200.0;

/// How strongly the gpuplane policy weighs a shape by the scarcity of nodes it fits on.
const SCARCITY_EXPONENT: f64 = 1.5;
/// A shape counts as fitting on at least 1/SCARCITY_CAP of the nodes, so that one which fits almost
/// nowhere cannot drown every other shape's weight.
const SCARCITY_CAP: f64 = 50.0;
/// Decisions between two weighings of scarcity (adopted only when the weights moved by LEARN_DRIFT).
const SCARCITY_REFRESH: u64 = 256;
/// Arrivals between two rebuilds of the learned workload once past the first ones.
const LEARN_REFRESH: u64 = 256;
/// How far (total variation distance between shape popularities) the learned workload must move
/// before the engine adopts it and re-scores the cluster.
const LEARN_DRIFT: f64 = 0.05;
/// Half-life of an arrival's weight in the learned workload, in arrivals.
const LEARN_HALF_LIFE: f64 = 4096.0;

/// The placement engine for one policy.
#[derive(Debug)]
pub struct Engine {
    policy: Policy,
    /// The workload: given (FGD), or learned from arrivals (gpuplane).
    target: Option<Arc<TargetWorkload>>,
    /// What fragmentation is scored against: the workload, for gpuplane with each shape weighted by
    /// how few nodes it fits on now (see [`scarcity_weighted`]).
    scoring: Option<Arc<TargetWorkload>>,
    /// The cluster `scoring` was built for (0: rebuild before the next decision).
    scoring_for: u64,
    /// Decisions since gpuplane last weighed its shapes' scarcity.
    since_weighed: u64,
    tie_break: TieBreak,
    rng: ChaCha8Rng,
    fgd: FgdMemo,
    learned: Learned,
    scores: Vec<(NodeId, i64)>,
    ties: Vec<NodeId>,
    /// A profile to measure one node's fragment in without allocating.
    scratch_profile: FragProfile,
}

impl Engine {
    /// Builds an engine.
    pub fn new(config: EngineConfig) -> Result<Self, EngineError> {
        if config.policy == Policy::Fgd && config.target.is_none() {
            return Err(EngineError::MissingTarget);
        }
        // A target given to the gpuplane policy is its history so far (the pods already in the cluster):
        // new arrivals add to it instead of replacing it.
        let mut learned = Learned::default();
        if let (Policy::Gpuplane, Some(prior)) = (config.policy, &config.target) {
            for s in prior.shapes() {
                *learned.counts.entry(s.shape).or_default() +=
                    if s.count > 0 { s.count as f64 } else { s.weight * 100.0 };
            }
            learned.seen = learned.counts.values().sum::<f64>().round() as u64;
            learned.refreshed_at = learned.seen;
        }
        Ok(Engine {
            policy: config.policy,
            target: config.target,
            scoring: None,
            scoring_for: 0,
            since_weighed: 0,
            tie_break: config.tie_break,
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            fgd: FgdMemo::default(),
            learned,
            scores: Vec::new(),
            ties: Vec::new(),
            scratch_profile: FragProfile::default(),
        })
    }

    /// The policy this engine scores with.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// The target workload fragmentation is measured against, if the engine has one.
    pub fn target(&self) -> Option<&Arc<TargetWorkload>> {
        self.target.as_ref()
    }

    /// Tells the engine a pod arrived (once per pod, before its first decision). The gpuplane policy
    /// learns its target workload from these; the other policies ignore them.
    pub fn observe(&mut self, pod: &PodRequest) {
        if self.policy != Policy::Gpuplane {
            return;
        }
        let learned = &mut self.learned;
        *learned.counts.entry(pod.shape()).or_default() += 1.0;
        learned.seen += 1;
        let since = learned.seen - learned.refreshed_at;
        if since >= learned.refreshed_at.clamp(1, LEARN_REFRESH) {
            let decay = 0.5f64.powf(since as f64 / LEARN_HALF_LIFE);
            learned.counts.values_mut().for_each(|c| *c *= decay);
            learned.counts.retain(|_, c| *c > 1e-6);
            learned.refreshed_at = learned.seen;
            if let Ok(target) = TargetWorkload::from_counts(&learned.counts, crate::frag::TARGET_COVERAGE) {
                // Every memoised score was measured against the old workload, and re-scoring the whole
                // cluster for every shape is what a refresh costs: adopt the new workload only when it
                // has moved by more than LEARN_DRIFT (always early on, rarely once the mix is known).
                let moved = self.target.as_ref().is_none_or(|old| old.distance(&target) > LEARN_DRIFT);
                if moved {
                    self.target = Some(Arc::new(target));
                    self.scoring_for = 0;
                }
            }
        }
    }

    /// Decides where `pod` goes in `cluster`. Does not change the cluster.
    pub fn decide(&mut self, cluster: &Cluster, pod: &PodRequest) -> Decision {
        let memo_slot = self.prepare(cluster, pod);
        let mut rejected = RejectionCounts::default();
        self.scores.clear();
        for (id, (info, node)) in cluster.node_info().iter().zip(cluster.nodes()).enumerate() {
            if let Err(r) = filter::check(info, node, pod) {
                rejected.add(r);
                continue;
            }
            let score = self.policy_score(memo_slot, id, info, node, pod);
            self.scores.push((id, score));
        }
        if self.scores.is_empty() {
            return Decision::Unschedulable(rejected);
        }
        if self.policy == Policy::BestFit {
            normalise(&mut self.scores);
        }
        let chosen = self.pick_best(cluster.name_rank());
        let gpus = self.choose_gpus(memo_slot, chosen, &cluster.nodes()[chosen], pod);
        Decision::Place(Placement { node: chosen, gpus })
    }

    /// Filters and scores only the given nodes, as a scheduler extender is asked to: each verdict is the
    /// policy's score (0–100, higher is better) or the first filter the node failed. Random scores every
    /// feasible node 0: its choice is a draw, not an order.
    pub fn evaluate(
        &mut self,
        cluster: &Cluster,
        pod: &PodRequest,
        candidates: &[NodeId],
    ) -> Vec<Result<i64, Rejection>> {
        let memo_slot = self.prepare(cluster, pod);
        self.scores.clear();
        let mut verdicts = Vec::with_capacity(candidates.len());
        for &id in candidates {
            let verdict = if id < cluster.len() {
                self.score_node(cluster, memo_slot, id, pod)
            } else {
                Err(Rejection::GpuModel)
            };
            if let Ok(score) = verdict {
                self.scores.push((id, score));
            }
            verdicts.push(verdict);
        }
        // FGD's sigmoid saturates: over a large cluster most candidates share two or three values. Like
        // BestFit's and gpuplane's raw scores, its scores are spread over 0–100 across the candidates.
        if matches!(self.policy, Policy::BestFit | Policy::Fgd | Policy::Gpuplane) {
            normalise(&mut self.scores);
            let mut normalised = self.scores.iter().map(|s| s.1);
            for v in verdicts.iter_mut().filter(|v| v.is_ok()) {
                *v = Ok(normalised.next().unwrap_or(0));
            }
        }
        verdicts
    }

    /// Decides among `candidates` only (the nodes the caller's own filters admit), by
    /// `policy_weight × policy score` (0–100 over the feasible candidates, as [`Self::evaluate`]) plus the
    /// caller's `extra` score of each candidate (same order), if any; ties go to the lowest name. The
    /// rejections count the candidates the engine's filters refused.
    pub fn decide_among(
        &mut self,
        cluster: &Cluster,
        pod: &PodRequest,
        candidates: &[NodeId],
        extra: Option<&[f64]>,
        policy_weight: f64,
    ) -> Decision {
        let verdicts = self.evaluate(cluster, pod, candidates);
        let rank = cluster.name_rank();
        let mut rejected = RejectionCounts::default();
        let mut best: Option<(f64, NodeId)> = None;
        for (i, (&node, verdict)) in candidates.iter().zip(verdicts).enumerate() {
            match verdict {
                Err(r) => rejected.add(r),
                Ok(score) => {
                    let total = policy_weight * score as f64 + extra.and_then(|e| e.get(i)).copied().unwrap_or(0.0);
                    let better = best.is_none_or(|(b, n)| total > b || (total == b && rank[node] < rank[n]));
                    if better {
                        best = Some((total, node));
                    }
                }
            }
        }
        let Some((_, node)) = best else { return Decision::Unschedulable(rejected) };
        match self.place_on(cluster, pod, node) {
            Ok(placement) => Decision::Place(placement),
            Err(r) => {
                rejected.add(r);
                Decision::Unschedulable(rejected)
            }
        }
    }

    /// The GPUs the pod would take on a node the caller has chosen, or the filter it fails there.
    pub fn place_on(&mut self, cluster: &Cluster, pod: &PodRequest, node: NodeId) -> Result<Placement, Rejection> {
        let memo_slot = self.prepare(cluster, pod);
        if node >= cluster.len() {
            return Err(Rejection::GpuModel);
        }
        self.score_node(cluster, memo_slot, node, pod)?;
        let gpus = self.choose_gpus(memo_slot, node, &cluster.nodes()[node], pod);
        Ok(Placement { node, gpus })
    }

    fn prepare(&mut self, cluster: &Cluster, pod: &PodRequest) -> Option<usize> {
        if !matches!(self.policy, Policy::Fgd | Policy::Gpuplane) {
            return None;
        }
        let gpuplane = self.policy == Policy::Gpuplane;
        if self.scoring_for != cluster.id() {
            // A new cluster or a new workload: every memoised profile and score goes.
            self.scoring = match &self.target {
                Some(t) if gpuplane => Some(Arc::new(scarcity_weighted(t, cluster))),
                t => t.clone(),
            };
            self.scoring_for = cluster.id();
            self.since_weighed = 0;
            self.fgd.profiles.clear();
        } else if gpuplane {
            self.since_weighed += 1;
            if self.since_weighed >= SCARCITY_REFRESH {
                self.since_weighed = 0;
                if let (Some(t), Some(current)) = (&self.target, &self.scoring) {
                    // Same shapes, new weights: the nodes' profiles stay, their fragments and scores go.
                    let weighed = scarcity_weighted(t, cluster);
                    if current.distance(&weighed) > LEARN_DRIFT {
                        self.scoring = Some(Arc::new(weighed));
                        self.fgd.reweigh();
                    }
                }
            }
        }
        Some(self.fgd_prepare(cluster, pod.shape()))
    }

    /// Runs the filters on one node and, if it passes, the policy's score.
    #[inline]
    fn score_node(
        &mut self,
        cluster: &Cluster,
        memo_slot: Option<usize>,
        id: NodeId,
        pod: &PodRequest,
    ) -> Result<i64, Rejection> {
        let (info, node) = (&cluster.node_info()[id], &cluster.nodes()[id]);
        filter::check(info, node, pod)?;
        Ok(self.policy_score(memo_slot, id, info, node, pod))
    }

    /// The policy's score of a node that passed the filters.
    #[inline]
    fn policy_score(
        &mut self,
        memo_slot: Option<usize>,
        id: NodeId,
        info: &NodeInfo,
        node: &NodeState,
        pod: &PodRequest,
    ) -> i64 {
        match self.policy {
            Policy::Random => 0,
            Policy::LeastAllocated => policy::least_allocated_score(info, node, pod),
            Policy::DotProd => policy::dot_product_score(node, pod),
            Policy::GpuClustering => policy::gpu_clustering_score(node, pod),
            Policy::GpuPacking => policy::gpu_packing_score(node, pod),
            Policy::BestFit => policy::best_fit_raw_score(node, pod),
            Policy::Fgd | Policy::Gpuplane => self.fgd_score(memo_slot.unwrap_or(0), id, node, pod).0,
        }
    }

    /// The highest score wins. Random draws uniformly among all feasible nodes; otherwise ties go
    /// by the configured [`TieBreak`].
    fn pick_best(&mut self, name_rank: &[u32]) -> NodeId {
        if self.policy == Policy::Random {
            return self.scores[self.rng.random_range(0..self.scores.len())].0;
        }
        let best = self.scores.iter().map(|s| s.1).max().unwrap_or(0);
        let tied = self.scores.iter().filter(|s| s.1 == best).map(|s| s.0);
        match self.tie_break {
            TieBreak::LowestName => tied.min_by_key(|&id| name_rank[id]).unwrap_or(0),
            TieBreak::Random => {
                self.ties.clear();
                self.ties.extend(tied);
                self.ties[self.rng.random_range(0..self.ties.len())]
            }
        }
    }

    fn choose_gpus(
        &mut self,
        memo_slot: Option<usize>,
        id: NodeId,
        node: &NodeState,
        pod: &PodRequest,
    ) -> Vec<GpuShare> {
        if pod.gpu.is_none() {
            return Vec::new();
        }
        let milli = pod.gpu.milli_per_gpu;
        if u32::from(milli) >= MILLI_PER_GPU {
            return policy::lowest_full_gpus(node, pod.gpu)
                .into_iter()
                .map(|index| GpuShare { index, milli })
                .collect();
        }
        let index = match self.policy {
            Policy::Random => {
                let fitting: Vec<u8> =
                    (0..node.gpu_count).filter(|&i| node.gpu_free[usize::from(i)] >= milli).collect();
                fitting[self.rng.random_range(0..fitting.len())]
            }
            Policy::Fgd | Policy::Gpuplane => {
                let gpu = self.fgd_score(memo_slot.unwrap_or(0), id, node, pod).1;
                u8::try_from(gpu).unwrap_or(0)
            }
            Policy::LeastAllocated => policy::first_fit_gpu(node, milli).unwrap_or(0),
            _ => policy::best_fit_gpu(node, milli).unwrap_or(0),
        };
        vec![GpuShare { index, milli }]
    }

    /// The fragment the policy minimises, of one node as it stands, in milli-GPUs: FGD's expected
    /// fragment, or gpuplane's combined one, against the workload the engine scores with. `None` for the
    /// policies that measure no fragmentation, or before the engine has decided on this cluster.
    pub(crate) fn node_fragment(&mut self, node: &NodeState) -> Option<f64> {
        if !matches!(self.policy, Policy::Fgd | Policy::Gpuplane) {
            return None;
        }
        let target = self.scoring.as_ref()?;
        let mut profile = std::mem::take(&mut self.scratch_profile);
        target.profile(node.cpu_free, node.gpus(), node.model, &mut profile);
        let fragment = if self.policy == Policy::Gpuplane {
            target.combined_fragment_with(&profile, node.cpu_free, &[], PACKED_FGD_WEIGHT)
        } else {
            target.fragment_with(&profile, node.cpu_free, &[])
        };
        self.scratch_profile = profile;
        Some(fragment)
    }

    /// Resets the memo for a new cluster and returns the memo slot of a shape.
    fn fgd_prepare(&mut self, cluster: &Cluster, shape: Shape) -> usize {
        let memo = &mut self.fgd;
        if memo.cluster_id != cluster.id() || memo.profiles.len() != cluster.len() {
            memo.cluster_id = cluster.id();
            memo.profiles = vec![(STALE, 0, 0.0, FragProfile::default()); cluster.len()];
            memo.shape_index.clear();
            memo.by_shape.clear();
            memo.by_state.clear();
        }
        let next = memo.by_shape.len();
        let slot = *memo.shape_index.entry(shape).or_insert(next);
        if slot == next {
            memo.by_shape.push(vec![(STALE, 0, -1); cluster.len()]);
        }
        slot
    }

    /// FGD's score of a node for a pod, and the GPU index it would use for a sharing pod (-1 otherwise).
    fn fgd_score(&mut self, slot: usize, id: NodeId, node: &NodeState, pod: &PodRequest) -> (i64, i8) {
        let (stamp, score, gpu) = self.fgd.by_shape[slot][id];
        if stamp == node.stamp {
            return (score, gpu);
        }
        let key: StateKey = (slot, node.cpu_free, node.gpu_free, node.gpu_count, node.model);
        if let Some(&(score, gpu)) = self.fgd.by_state.get(&key) {
            self.fgd.by_shape[slot][id] = (node.stamp, score, gpu);
            return (score, gpu);
        }
        let target = match &self.scoring {
            Some(t) => Arc::clone(t),
            None => return (0, -1),
        };
        let packed = self.policy == Policy::Gpuplane;
        let cpu_after = node.cpu_free.saturating_sub(pod.cpu_milli);
        let weights = self.fgd.weights;
        let (stamp, measured_with, before, profile) = &mut self.fgd.profiles[id];
        if *stamp != node.stamp {
            *before = target.profile(node.cpu_free, node.gpus(), node.model, profile);
        }
        if packed && (*stamp != node.stamp || *measured_with != weights) {
            *before = target.combined_fragment_with(profile, node.cpu_free, &[], PACKED_FGD_WEIGHT);
        }
        *stamp = node.stamp;
        *measured_with = weights;
        let (before, profile) = (*before, &*profile);
        let fragment_after = |changes: &[(u16, u16)]| {
            if packed {
                target.combined_fragment_with(profile, cpu_after, changes, PACKED_FGD_WEIGHT)
            } else {
                target.fragment_with(profile, cpu_after, changes)
            }
        };
        // FGD scores ⌊100 · sigmoid⌋; gpuplane ranks by the combined fragment removed, in steps of
        // PACKED_SCORE_STEP so that near-equal nodes tie and the tie-break packs them in order.
        let score_of = |removed: f64| {
            if packed { (removed / PACKED_SCORE_STEP).round() as i64 } else { sigmoid_score(removed) }
        };
        let gpus = node.gpus();
        let (score, gpu) = if pod.gpu.is_sharing() {
            // Try each fitting GPU; equal free milli give equal outcomes, so each value is scored once.
            let demand = pod.gpu.milli_per_gpu;
            let mut best: Option<(i64, i8)> = None;
            let mut tried: [u16; 8] = [u16::MAX; 8];
            let mut tried_len = 0;
            for (i, &free) in gpus.iter().enumerate() {
                if free < demand || tried[..tried_len].contains(&free) {
                    continue;
                }
                tried[tried_len] = free;
                tried_len += 1;
                let s = score_of(before - fragment_after(&[(free, free - demand)]));
                if best.is_none_or(|b| s > b.0) {
                    best = Some((s, i as i8));
                }
            }
            best.unwrap_or((0, -1))
        } else {
            let after = policy::gpus_after_packing(node, pod.gpu);
            let mut changes = [(0u16, 0u16); 8];
            let mut n = 0;
            for (&b, &a) in gpus.iter().zip(&after) {
                if b != a {
                    changes[n] = (b, a);
                    n += 1;
                }
            }
            (score_of(before - fragment_after(&changes[..n])), -1)
        };
        self.fgd.by_shape[slot][id] = (node.stamp, score, gpu);
        if self.fgd.by_state.len() >= STATE_MEMO_LIMIT {
            self.fgd.by_state.clear();
        }
        self.fgd.by_state.insert(key, (score, gpu));
        (score, gpu)
    }
}

/// The workload with each shape's popularity multiplied by (nodes ÷ nodes the shape fits on now)^1.5,
/// a shape counting as fitting on at least 1/[`SCARCITY_CAP`] of the nodes, and renormalised.
///
/// FGD weighs a shape by how often it arrives. A shape that fits on few nodes — an 8-GPU task once
/// whole nodes are rare, a task that accepts only a GPU model the cluster has little of — needs those
/// nodes more than its popularity says; weighed by scarcity, the fragment it would see counts in
/// proportion, and other pods leave its nodes alone while there is a choice.
fn scarcity_weighted(workload: &TargetWorkload, cluster: &Cluster) -> TargetWorkload {
    let nodes = cluster.len() as f64;
    workload.scaled_by(|shape| {
        let fits = cluster
            .nodes()
            .iter()
            .filter(|n| {
                (shape.gpu.is_none() || (n.gpu_count > 0 && shape.models.accepts(n.model)))
                    && n.cpu_free >= shape.cpu_milli
                    && n.gpu_fits(shape.gpu)
            })
            .count() as f64;
        (nodes / fits.max(nodes / SCARCITY_CAP)).powf(SCARCITY_EXPONENT)
    })
}

/// ⌊100 · sigmoid(Δ / 1000)⌋ where Δ is the fragmentation removed, in milli-GPUs.
#[inline]
fn sigmoid_score(removed_milli: f64) -> i64 {
    let x = removed_milli / 1000.0;
    (100.0 / (1.0 + (-x).exp())) as i64
}

/// Min–max normalisation to 0..=100 over the feasible nodes (all equal → all 0).
fn normalise(scores: &mut [(NodeId, i64)]) {
    let lo = scores.iter().map(|s| s.1).min().unwrap_or(0);
    let hi = scores.iter().map(|s| s.1).max().unwrap_or(0);
    for s in scores.iter_mut() {
        s.1 = if hi == lo { 0 } else { (s.1 - lo) * 100 / (hi - lo) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ModelSet;
    use gpuplane_core::{GpuRequest, Node, Pod};

    use crate::test_nodes::gpu_node;

    fn engine(policy: Policy, target: Option<TargetWorkload>) -> Engine {
        Engine::new(EngineConfig { policy, target: target.map(Arc::new), seed: 7, tie_break: TieBreak::LowestName })
            .unwrap()
    }

    #[test]
    fn unschedulable_reports_filter_counts() {
        let cluster = Cluster::new(&[gpu_node("a", 2, "T4"), gpu_node("b", 8, "G2")]).unwrap();
        let mut pod = Pod::with_requests("p", 1000, 1 << 30, GpuRequest { count: 4, milli_per_gpu: 1000 });
        pod.gpu_models = vec!["T4".into()];
        let req = cluster.request(&pod);
        let Decision::Unschedulable(counts) = engine(Policy::BestFit, None).decide(&cluster, &req) else {
            panic!("a 4-GPU T4 pod fits nowhere");
        };
        assert_eq!(counts.to_string(), "0/2 nodes are available: 1 gpu-model, 1 gpu");
    }

    #[test]
    fn fgd_avoids_breaking_a_whole_gpu_for_a_small_share() {
        // Node a has a GPU with 500 free: a 500 m pod fills it exactly. Node b is empty:
        // placing there would leave 500 m that the 1000 m tasks of the workload cannot use.
        let mut cluster = Cluster::new(&[gpu_node("a", 2, "T4"), gpu_node("b", 2, "T4")]).unwrap();
        let half = cluster.request(&Pod::with_requests("h", 1000, 0, GpuRequest { count: 1, milli_per_gpu: 500 }));
        cluster.bind(&half, &Placement { node: 0, gpus: vec![GpuShare { index: 1, milli: 500 }] }).unwrap();
        let whole = Shape { cpu_milli: 1000, gpu: GpuRequest { count: 1, milli_per_gpu: 1000 }, models: ModelSet::Any };
        let target = TargetWorkload::from_weights(&[(whole, 0.5), (half.shape(), 0.5)]).unwrap();
        let mut e = engine(Policy::Fgd, Some(target));
        let d = e.decide(&cluster, &half);
        assert_eq!(d, Decision::Place(Placement { node: 0, gpus: vec![GpuShare { index: 1, milli: 500 }] }));
    }

    #[test]
    fn same_seed_same_decisions() {
        let nodes: Vec<Node> = (0..20).map(|i| gpu_node(&format!("n{i}"), 8, "G2")).collect();
        let run = |seed| {
            let mut cluster = Cluster::new(&nodes).unwrap();
            let mut e = Engine::new(EngineConfig {
                policy: Policy::Random,
                target: None,
                seed,
                tie_break: TieBreak::LowestName,
            })
            .unwrap();
            let pod = cluster.request(&Pod::with_requests("p", 1000, 0, GpuRequest { count: 1, milli_per_gpu: 300 }));
            let mut out = Vec::new();
            for _ in 0..50 {
                if let Decision::Place(p) = e.decide(&cluster, &pod) {
                    cluster.bind(&pod, &p).unwrap();
                    out.push(p);
                }
            }
            out
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn gpuplane_learns_its_workload_from_the_arrivals_it_observes() {
        let mut cluster = Cluster::new(&[gpu_node("a", 2, "T4"), gpu_node("b", 2, "T4")]).unwrap();
        let mut e = engine(Policy::Gpuplane, None);
        assert!(e.target().is_none(), "online: nothing is known before the first arrival");
        let whole = cluster.request(&Pod::with_requests("w", 1000, 0, GpuRequest { count: 1, milli_per_gpu: 1000 }));
        let half = cluster.request(&Pod::with_requests("h", 1000, 0, GpuRequest { count: 1, milli_per_gpu: 500 }));
        e.observe(&whole);
        assert_eq!(e.target().unwrap().shapes().len(), 1);
        e.observe(&half);
        assert_eq!(e.target().unwrap().shapes().len(), 2);
        // With whole-GPU tasks expected, a half-GPU task goes where half a GPU is already taken.
        cluster.bind(&half, &Placement { node: 1, gpus: vec![GpuShare { index: 0, milli: 500 }] }).unwrap();
        let Decision::Place(p) = e.decide(&cluster, &half) else { panic!("room on both nodes") };
        assert_eq!((p.node, p.gpus[0].index), (1, 0));
        // The other policies ignore arrivals.
        let mut fgd = engine(Policy::BestFit, None);
        fgd.observe(&whole);
        assert!(fgd.target().is_none());
    }

    #[test]
    fn scarcity_weighs_a_shape_by_the_nodes_it_fits_on() {
        let mut nodes: Vec<Node> = (0..3).map(|i| gpu_node(&format!("t{i}"), 2, "T4")).collect();
        nodes.push(gpu_node("v", 2, "V100"));
        let cluster = Cluster::new(&nodes).unwrap();
        let any = Shape { cpu_milli: 1000, gpu: GpuRequest { count: 1, milli_per_gpu: 1000 }, models: ModelSet::Any };
        let mut v100 = Pod::with_requests("v", 1000, 0, GpuRequest { count: 1, milli_per_gpu: 1000 });
        v100.gpu_models = vec!["V100".into()];
        let v100 = cluster.request(&v100).shape();
        let workload = TargetWorkload::from_weights(&[(any, 0.5), (v100, 0.5)]).unwrap();
        // `any` fits on 4 of 4 nodes (×1), `v100` on 1 of 4 (×4^1.5 = 8): weights 1/9 and 8/9.
        let weighted = scarcity_weighted(&workload, &cluster);
        let weight = |shape| weighted.shapes().iter().find(|s| s.shape == shape).unwrap().weight;
        assert!((weight(any) - 1.0 / 9.0).abs() < 1e-12);
        assert!((weight(v100) - 8.0 / 9.0).abs() < 1e-12);
        // A shape that fits nowhere counts as fitting on 1/SCARCITY_CAP of the nodes.
        let eight = Shape { cpu_milli: 1000, gpu: GpuRequest { count: 8, milli_per_gpu: 1000 }, models: ModelSet::Any };
        let workload = TargetWorkload::from_weights(&[(any, 0.5), (eight, 0.5)]).unwrap();
        let weighted = scarcity_weighted(&workload, &cluster);
        let cap = SCARCITY_CAP.powf(SCARCITY_EXPONENT);
        assert!(
            (weighted.shapes().iter().find(|s| s.shape == eight).unwrap().weight - cap / (cap + 1.0)).abs() < 1e-12
        );
    }

    #[test]
    fn gpuplane_leaves_a_scarce_model_to_the_pods_that_can_use_only_it() {
        // Node "a" is the only V100 and comes first by name; half the arrivals accept only V100.
        let mut nodes = vec![gpu_node("a", 2, "V100")];
        nodes.extend((0..3).map(|i| gpu_node(&format!("t{i}"), 2, "T4")));
        let cluster = Cluster::new(&nodes).unwrap();
        let any = cluster.request(&Pod::with_requests("w", 1000, 0, GpuRequest { count: 1, milli_per_gpu: 1000 }));
        let mut v100 = Pod::with_requests("v", 1000, 0, GpuRequest { count: 1, milli_per_gpu: 1000 });
        v100.gpu_models = vec!["V100".into()];
        let v100 = cluster.request(&v100);
        let mut e = engine(Policy::Gpuplane, None);
        for _ in 0..8 {
            e.observe(&any);
            e.observe(&v100);
        }
        let Decision::Place(p) = e.decide(&cluster, &any) else { panic!("room everywhere") };
        assert_ne!(cluster.node_info()[p.node].name, "a", "an unconstrained pod takes a T4");
        let Decision::Place(p) = e.decide(&cluster, &v100) else { panic!("room on the V100") };
        assert_eq!(cluster.node_info()[p.node].name, "a");
    }

    #[test]
    fn fgd_requires_a_target_workload() {
        let err =
            Engine::new(EngineConfig { policy: Policy::Fgd, target: None, seed: 0, tie_break: TieBreak::LowestName })
                .unwrap_err();
        assert_eq!(err, EngineError::MissingTarget);
    }
}
