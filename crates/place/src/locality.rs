//! Model locality: a pod's expected startup time on each node, from where its model's bytes are — on
//! the node's own disk, on a peer's, or only at the origin — combined with the policy's score so that
//! a pod goes where its weights are when fragmentation allows, and the decision says why.
//!
//! Combined score per feasible node = (1 − w) × policy score + w × locality score, both 0–100, where
//! the locality score is 100 for the fastest start among the feasible nodes and 0 for the slowest.

use crate::cluster::{Cluster, NodeId, PodRequest};
use crate::engine::{Decision, Engine};
use crate::filter::RejectionCounts;

/// Where a model's bytes are, seen from one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// In the node's own cache.
    Local,
    /// In another node's cache: read over the cluster network.
    Peer,
    /// Only at the origin (object store, model hub).
    Origin,
}

impl Tier {
    fn describe(self) -> &'static str {
        match self {
            Tier::Local => "on local disk",
            Tier::Peer => "on a peer",
            Tier::Origin => "only at the origin",
        }
    }
}

/// Read rates per tier, bytes per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bandwidth {
    /// Reading the node's own cache (NVMe).
    pub local: f64,
    /// Reading a peer's cache over the cluster network.
    pub peer: f64,
    /// Reading the origin.
    pub origin: f64,
}

impl Default for Bandwidth {
    /// 2 GB/s local NVMe, 1.25 GB/s from a peer (10 GbE), 0.3 GB/s from the origin.
    fn default() -> Self {
        Bandwidth { local: 2.0e9, peer: 1.25e9, origin: 0.3e9 }
    }
}

/// The model a pod needs and where it is, per node of the cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Locality {
    /// The model's size in bytes.
    pub model_bytes: u64,
    /// Per node (by index), where the model is.
    pub tiers: Vec<Tier>,
    /// Read rates.
    pub bandwidth: Bandwidth,
}

impl Locality {
    /// Seconds to have the model's bytes on `node`.
    pub fn startup_seconds(&self, node: NodeId) -> f64 {
        let tier = self.tiers.get(node).copied().unwrap_or(Tier::Origin);
        let rate = match tier {
            Tier::Local => self.bandwidth.local,
            Tier::Peer => self.bandwidth.peer,
            Tier::Origin => self.bandwidth.origin,
        };
        self.model_bytes as f64 / rate.max(1.0)
    }

    fn tier(&self, node: NodeId) -> Tier {
        self.tiers.get(node).copied().unwrap_or(Tier::Origin)
    }
}

/// One node's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeTerms {
    /// The node.
    pub node: NodeId,
    /// The policy's score, 0–100.
    pub policy_score: i64,
    /// Where the model is from this node.
    pub tier: Tier,
    /// Expected seconds to load the model.
    pub startup_seconds: f64,
    /// 0–100, 100 for the fastest start among feasible nodes.
    pub locality_score: f64,
    /// The weighted sum.
    pub combined: f64,
}

/// Why a node was chosen: its terms, the best other node's, and the weight.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// The policy's name.
    pub policy: &'static str,
    /// The locality weight.
    pub weight: f64,
    /// The chosen node's terms and name.
    pub chosen: (String, NodeTerms),
    /// The best node not chosen, if any.
    pub runner_up: Option<(String, NodeTerms)>,
}

impl std::fmt::Display for Explanation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let term = |(name, t): &(String, NodeTerms)| {
            format!(
                "{name}: {} score {}, locality {:.0} (model {}, {:.1} s to load) → {:.1}",
                self.policy,
                t.policy_score,
                t.locality_score,
                t.tier.describe(),
                t.startup_seconds,
                t.combined
            )
        };
        write!(f, "chose {}", term(&self.chosen))?;
        if let Some(r) = &self.runner_up {
            write!(f, "; best other {}", term(r))?;
        }
        write!(f, " (locality weight {:.2})", self.weight)
    }
}

impl Engine {
    /// Decides with the model's locality as a second term of weight `weight` (0 to 1; 0 is the policy
    /// alone). Returns the decision and, when a node was chosen, the explanation naming both terms.
    pub fn decide_with_locality(
        &mut self,
        cluster: &Cluster,
        pod: &PodRequest,
        locality: &Locality,
        weight: f64,
    ) -> (Decision, Option<Explanation>) {
        let all: Vec<NodeId> = (0..cluster.len()).collect();
        self.decide_with_locality_among(cluster, pod, &all, locality, weight)
    }

    /// [`Self::decide_with_locality`] among `candidates` only (the nodes the caller's own filters admit).
    pub fn decide_with_locality_among(
        &mut self,
        cluster: &Cluster,
        pod: &PodRequest,
        candidates: &[NodeId],
        locality: &Locality,
        weight: f64,
    ) -> (Decision, Option<Explanation>) {
        let weight = weight.clamp(0.0, 1.0);
        let verdicts = self.evaluate(cluster, pod, candidates);
        let mut rejected = RejectionCounts::default();
        let mut terms: Vec<NodeTerms> = Vec::new();
        for (&node, v) in candidates.iter().zip(verdicts) {
            match v {
                Ok(policy_score) => terms.push(NodeTerms {
                    node,
                    policy_score,
                    tier: locality.tier(node),
                    startup_seconds: locality.startup_seconds(node),
                    locality_score: 0.0,
                    combined: 0.0,
                }),
                Err(r) => rejected.add(r),
            }
        }
        if terms.is_empty() {
            return (Decision::Unschedulable(rejected), None);
        }
        let fastest = terms.iter().map(|t| t.startup_seconds).fold(f64::INFINITY, f64::min);
        let slowest = terms.iter().map(|t| t.startup_seconds).fold(0.0, f64::max);
        for t in &mut terms {
            t.locality_score =
                if slowest > fastest { 100.0 * (slowest - t.startup_seconds) / (slowest - fastest) } else { 100.0 };
            t.combined = (1.0 - weight) * t.policy_score as f64 + weight * t.locality_score;
        }
        let rank = cluster.name_rank();
        terms.sort_by(|a, b| b.combined.total_cmp(&a.combined).then(rank[a.node].cmp(&rank[b.node])));
        let chosen = terms[0].clone();
        let Ok(placement) = self.place_on(cluster, pod, chosen.node) else {
            // The node passed the filters a moment ago on the same cluster; nothing changed in between.
            return (Decision::Unschedulable(rejected), None);
        };
        let name = |t: &NodeTerms| (cluster.node_info()[t.node].name.clone(), t.clone());
        let explanation = Explanation {
            policy: self.policy().name(),
            weight,
            chosen: name(&chosen),
            runner_up: terms.get(1).map(name),
        };
        (Decision::Place(placement), Some(explanation))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{EngineConfig, TieBreak};
    use crate::frag::TargetWorkload;
    use crate::policy::Policy;
    use gpuplane_core::{GpuRequest, Node, Pod};
    use std::sync::Arc;

    fn node(name: &str) -> Node {
        Node {
            name: name.into(),
            cpu_milli: 64_000,
            memory_bytes: 256 << 30,
            gpu_count: 2,
            gpu_model: Some("A100".into()),
            labels: Default::default(),
            taints: vec![],
        }
    }

    fn half(name: &str) -> Pod {
        Pod::with_requests(name, 2_000, 8 << 30, GpuRequest { count: 1, milli_per_gpu: 500 })
    }

    /// Nodes a and b; a already runs a half-GPU pod, so FGD prefers a for another half-GPU pod.
    fn setup() -> (Cluster, Engine, PodRequest) {
        let mut cluster = Cluster::new(&[node("a"), node("b")]).unwrap();
        let request = cluster.request(&half("p"));
        let target = TargetWorkload::from_requests(std::slice::from_ref(&request), 0.95).unwrap();
        let mut engine = Engine::new(EngineConfig {
            policy: Policy::Fgd,
            target: Some(Arc::new(target)),
            seed: 1,
            tie_break: TieBreak::LowestName,
        })
        .unwrap();
        let first = cluster.request(&half("running"));
        let Decision::Place(p) = engine.decide(&cluster, &first) else { panic!() };
        cluster.bind(&first, &p).unwrap();
        (cluster, engine, request)
    }

    fn locality(tiers: Vec<Tier>) -> Locality {
        Locality { model_bytes: 16_000_000_000, tiers, bandwidth: Bandwidth::default() }
    }

    #[test]
    fn the_model_pulls_the_pod_to_its_node_when_fragmentation_allows() {
        let (cluster, mut engine, request) = setup();
        let Decision::Place(alone) = engine.decide(&cluster, &request) else { panic!() };
        let busy = alone.node;
        let other = 1 - busy;
        // Weight 0: the policy alone, same choice as decide.
        let mut tiers = vec![Tier::Origin; 2];
        tiers[other] = Tier::Local;
        let (d, _) = engine.decide_with_locality(&cluster, &request, &locality(tiers.clone()), 0.0);
        assert_eq!(d, Decision::Place(alone.clone()));
        // With the model cached on the other node, the pod goes there; the explanation names both terms.
        let (d, why) = engine.decide_with_locality(&cluster, &request, &locality(tiers), 0.5);
        let Decision::Place(p) = d else { panic!() };
        assert_eq!(p.node, other);
        let why = why.unwrap().to_string();
        assert!(
            why.contains("fgd score") && why.contains("locality 100 (model on local disk, 8.0 s to load)"),
            "{why}"
        );
        assert!(why.contains("best other") && why.contains("only at the origin, 53.3 s"), "{why}");
    }

    #[test]
    fn locality_never_places_a_pod_where_it_does_not_fit() {
        let (mut cluster, mut engine, request) = setup();
        // Fill node b's GPUs entirely, then cache the model there.
        let full =
            cluster.request(&Pod::with_requests("full", 1_000, 1 << 30, GpuRequest { count: 2, milli_per_gpu: 1000 }));
        let b = cluster.node_info().iter().position(|n| n.name == "b").unwrap();
        if let Ok(p) = engine.place_on(&cluster, &full, b) {
            cluster.bind(&full, &p).unwrap();
        }
        let mut tiers = vec![Tier::Origin; 2];
        tiers[b] = Tier::Local;
        let (d, why) = engine.decide_with_locality(&cluster, &request, &locality(tiers), 1.0);
        let Decision::Place(p) = d else { panic!() };
        assert_ne!(p.node, b);
        assert!(why.unwrap().runner_up.is_none(), "b is not feasible, so it is no runner-up");
    }
}
