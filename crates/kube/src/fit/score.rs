//! The scores of kube-scheduler's default profile that express a pod's preferences — TaintToleration
//! (PreferNoSchedule), NodeAffinity (preferred terms), PodTopologySpread (ScheduleAnyway) and InterPodAffinity
//! (the pod's preferred terms) — each normalised to 0–100 over the feasible nodes as kube-scheduler does,
//! weighted like a KubeSchedulerConfiguration profile and added to the GPU policy's score.

use std::collections::HashMap;
use std::str::FromStr;

use gpuplane_core::TaintEffect;
use gpuplane_place::NodeId;

use super::spread::Constraint;
use super::{Fit, Incoming};

/// Weights of the scores, as a profile's `plugins.score.enabled[].weight`; `gpu` weighs gpuplane's placement
/// policy (fragmentation) against them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreWeights {
    /// TaintToleration (kube-scheduler's default 3).
    pub taint_toleration: f64,
    /// NodeAffinity (default 2).
    pub node_affinity: f64,
    /// PodTopologySpread (default 2).
    pub pod_topology_spread: f64,
    /// InterPodAffinity (default 2).
    pub inter_pod_affinity: f64,
    /// gpuplane's policy score (default 5: fragmentation outweighs any single preference, not all of them).
    pub gpu: f64,
}

impl Default for ScoreWeights {
    fn default() -> Self {
        ScoreWeights {
            taint_toleration: 3.0,
            node_affinity: 2.0,
            pod_topology_spread: 2.0,
            inter_pod_affinity: 2.0,
            gpu: 5.0,
        }
    }
}

impl FromStr for ScoreWeights {
    type Err = String;

    /// `TaintToleration=3,NodeAffinity=2,PodTopologySpread=2,InterPodAffinity=2,GpuPlacement=5`; names left
    /// out keep their defaults.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut w = ScoreWeights::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part.split_once('=').ok_or_else(|| format!("{part:?} is not NAME=WEIGHT"))?;
            let value: f64 = value
                .trim()
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| format!("weight of {name} is {value:?}; expected a number ≥ 0"))?;
            let slot = match name.trim() {
                "TaintToleration" => &mut w.taint_toleration,
                "NodeAffinity" => &mut w.node_affinity,
                "PodTopologySpread" => &mut w.pod_topology_spread,
                "InterPodAffinity" => &mut w.inter_pod_affinity,
                "GpuPlacement" => &mut w.gpu,
                other => {
                    return Err(format!(
                        "unknown score {other:?}; one of TaintToleration, NodeAffinity, PodTopologySpread, \
                         InterPodAffinity, GpuPlacement"
                    ));
                }
            };
            *slot = value;
        }
        Ok(w)
    }
}

/// Scales scores so the largest is 100 (all 0 when the largest is 0); `reverse` makes the smallest best.
fn normalise(scores: &mut [f64], reverse: bool) {
    let max = scores.iter().copied().fold(0.0, f64::max);
    for s in scores.iter_mut() {
        *s = if max > 0.0 { 100.0 * *s / max } else { 0.0 };
        if reverse {
            *s = 100.0 - *s;
        }
    }
}

impl Fit {
    /// The weighted sum of the preference scores for each candidate, or `None` when all candidates score the
    /// same (the GPU policy alone then decides).
    pub fn scores(&self, pod: &Incoming, candidates: &[NodeId], w: &ScoreWeights) -> Option<Vec<f64>> {
        let prefer_no_schedule =
            candidates.iter().any(|&c| self.nodes[c].taints.iter().any(|t| t.effect == TaintEffect::PreferNoSchedule));
        if !pod.has_preferences() && !prefer_no_schedule {
            return None;
        }
        let mut total = vec![0.0; candidates.len()];
        let mut add = |weight: f64, scores: Vec<f64>| {
            for (t, s) in total.iter_mut().zip(scores) {
                *t += weight * s;
            }
        };
        if prefer_no_schedule {
            let mut s: Vec<f64> = candidates
                .iter()
                .map(|&c| {
                    let taints = self.nodes[c].taints.iter().filter(|t| t.effect == TaintEffect::PreferNoSchedule);
                    taints.filter(|t| !pod.tolerations.iter().any(|tol| tol.tolerates(t))).count() as f64
                })
                .collect();
            normalise(&mut s, true);
            add(w.taint_toleration, s);
        }
        if !pod.preferred_node.is_empty() {
            let mut s: Vec<f64> = candidates
                .iter()
                .map(|&c| {
                    let n = &self.nodes[c];
                    let matched = pod.preferred_node.iter().filter(|(_, t)| t.matches(&n.name, &n.labels));
                    matched.map(|(weight, _)| f64::from(*weight)).sum()
                })
                .collect();
            normalise(&mut s, false);
            add(w.node_affinity, s);
        }
        let soft: Vec<&Constraint> = pod.spread.iter().filter(|c| !c.hard).collect();
        if !soft.is_empty() {
            add(w.pod_topology_spread, self.spread_scores(pod, &soft, candidates));
        }
        if !pod.terms.preferred.is_empty() || !pod.terms.preferred_anti.is_empty() {
            add(w.inter_pod_affinity, self.affinity_scores(pod, candidates));
        }
        let first = total.first().copied().unwrap_or(0.0);
        total.iter().any(|t| (t - first).abs() > 1e-9).then_some(total)
    }

    fn spread_scores(&self, pod: &Incoming, soft: &[&Constraint], candidates: &[NodeId]) -> Vec<f64> {
        let state = self.spread_state(pod, soft);
        // kube-scheduler weighs each constraint by log(domains among the candidates + 2).
        let weights: Vec<f64> = soft
            .iter()
            .map(|c| {
                let mut domains: Vec<&String> =
                    candidates.iter().filter_map(|&n| self.nodes[n].labels.get(&c.topology_key)).collect();
                domains.sort();
                domains.dedup();
                ((domains.len() + 2) as f64).ln()
            })
            .collect();
        let raw: Vec<Option<f64>> = candidates
            .iter()
            .map(|&n| {
                let labels = &self.nodes[n].labels;
                let mut score = 0.0;
                for (i, c) in soft.iter().enumerate() {
                    let count = state.count(i, &c.topology_key, labels)?;
                    score += count as f64 * weights[i] + f64::from(c.max_skew - 1);
                }
                Some(score)
            })
            .collect();
        let max = raw.iter().flatten().copied().fold(0.0, f64::max);
        let min = raw.iter().flatten().copied().fold(f64::INFINITY, f64::min);
        raw.into_iter()
            .map(|s| match s {
                None => 0.0,
                Some(_) if max == 0.0 => 100.0,
                Some(s) => 100.0 * (max + min - s) / max,
            })
            .collect()
    }

    fn affinity_scores(&self, pod: &Incoming, candidates: &[NodeId]) -> Vec<f64> {
        let none = Default::default();
        let mut by_domain: HashMap<(String, String), f64> = HashMap::new();
        let terms = pod.terms.preferred.iter().map(|(w, t)| (f64::from(*w), t));
        let terms: Vec<(f64, &super::affinity::Term)> =
            terms.chain(pod.terms.preferred_anti.iter().map(|(w, t)| (-f64::from(*w), t))).collect();
        for (node, info) in self.bound.values() {
            let ns = self.namespaces.get(&info.namespace).unwrap_or(&none);
            for (w, t) in &terms {
                if t.matches(&info.namespace, ns, &info.labels)
                    && let Some(v) = self.nodes[*node].labels.get(&t.topology_key)
                {
                    *by_domain.entry((t.topology_key.clone(), v.clone())).or_insert(0.0) += w;
                }
            }
        }
        let raw: Vec<f64> = candidates
            .iter()
            .map(|&n| {
                let labels = &self.nodes[n].labels;
                by_domain.iter().filter(|((k, v), _)| labels.get(k) == Some(v)).map(|(_, s)| s).sum()
            })
            .collect();
        let max = raw.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let min = raw.iter().copied().fold(f64::INFINITY, f64::min);
        raw.into_iter().map(|s| if max > min { 100.0 * (s - min) / (max - min) } else { 0.0 }).collect()
    }
}
