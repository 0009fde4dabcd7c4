//! How a serving replica is placed — the steps the simulator and `gpuplane scheduler` both take: where it
//! fits without evicting anyone (its fast GPU models first, when it has them), then gpuplane's claim (a fast
//! GPU taken back from lower-priority pods younger than the claim age), then anywhere it fits, and only
//! when nothing fits, preemption.

use crate::cluster::{Cluster, NodeId, Placement, PodRequest};
use crate::defrag::{PodId, Tenancy};
use crate::preempt::{Evictable, Preemption};

/// The serving steps a stack takes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServingSteps {
    /// Whether a replica that fits nowhere may evict lower-priority pods.
    pub preemption: bool,
    /// Pods younger than this (seconds) are taken off a fast GPU for a replica before it settles for a
    /// slower one; 0 never claims.
    pub claim_age_s: f64,
}

/// What to do for a replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Bind it here.
    Place(Placement),
    /// Evict these pods from `node`; the replica goes there once they are gone.
    Evict {
        /// The node that will have room.
        node: NodeId,
        /// The pods to evict.
        victims: Vec<PodId>,
        /// True when this is gpuplane's claim of a fast GPU rather than a preemption of last resort.
        claim: bool,
    },
    /// It fits nowhere, even by evicting: it waits for room.
    Wait,
}

impl ServingSteps {
    /// The step for `request`; `fast` is the same request restricted to the GPU models it prefers (or `None`),
    /// `decide` the caller's placement decision for a request (its policy, scores and filters), `preemption`
    /// whom the caller may evict and how it chooses.
    pub fn step(
        &self,
        cluster: &Cluster,
        tenancy: &Tenancy,
        request: &PodRequest,
        fast: Option<&PodRequest>,
        decide: &mut dyn FnMut(&PodRequest) -> Option<Placement>,
        preemption: &Preemption<'_>,
    ) -> Step {
        if let Some(p) = fast.and_then(&mut *decide) {
            return Step::Place(p);
        }
        if self.preemption
            && self.claim_age_s > 0.0
            && let Some(f) = fast
        {
            let now = preemption.now_s;
            let young = |id: PodId| -> Option<Evictable> {
                (preemption.evictable)(id).filter(|e| now - e.started_s < self.claim_age_s)
            };
            let claim = Preemption { evictable: &young, ..*preemption };
            if let Some((node, victims)) = claim.plan(cluster, tenancy, f) {
                return Step::Evict { node, victims, claim: true };
            }
        }
        if let Some(p) = decide(request) {
            return Step::Place(p);
        }
        if self.preemption
            && let Some((node, victims)) = preemption.plan(cluster, tenancy, request)
        {
            return Step::Evict { node, victims, claim: false };
        }
        Step::Wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{GpuShare, ModelSet};
    use crate::preempt::VictimChoice;
    use gpuplane_core::{GpuRequest, Pod};

    /// Node `fast` (one G3) holds batch pod 0 started at `started`; node `slow` (one T4) is free.
    fn setup(started: f64) -> (Cluster, Tenancy, PodRequest, PodRequest, impl Fn(PodId) -> Option<Evictable>) {
        let mut cluster =
            Cluster::new(&[crate::test_nodes::gpu_node("fast", 1, "G3"), crate::test_nodes::gpu_node("slow", 1, "T4")])
                .unwrap();
        let batch = cluster.request(&Pod::with_requests("b", 1000, 0, GpuRequest { count: 1, milli_per_gpu: 1000 }));
        let placement = Placement { node: 0, gpus: vec![GpuShare { index: 0, milli: 1000 }] };
        cluster.bind(&batch, &placement).unwrap();
        let mut tenancy = Tenancy::new(2);
        tenancy.add(0, batch.clone(), placement);
        let mut replica = batch.clone();
        replica.priority = 1000;
        let g3 = cluster.models().iter().position(|m| m == "G3").unwrap();
        let fast = PodRequest { models: ModelSet::Only(1 << g3), ..replica.clone() };
        (cluster, tenancy, replica, fast, move |_| Some(Evictable { priority: 0, started_s: started }))
    }

    fn decide(cluster: &Cluster) -> impl FnMut(&PodRequest) -> Option<Placement> + '_ {
        let mut engine = crate::Engine::new(crate::EngineConfig {
            policy: crate::Policy::BestFit,
            target: None,
            seed: 1,
            tie_break: crate::TieBreak::LowestName,
        })
        .unwrap();
        move |r| match engine.decide(cluster, r) {
            crate::Decision::Place(p) => Some(p),
            crate::Decision::Unschedulable(_) => None,
        }
    }

    #[test]
    fn a_young_batch_pod_is_claimed_off_a_fast_gpu_an_old_one_is_not() {
        for (started, claimed) in [(950.0, true), (100.0, false)] {
            let (cluster, tenancy, replica, fast, evictable) = setup(started);
            let p = Preemption::everywhere(&evictable, 1000.0, VictimChoice::LeastWorkLost);
            let steps = ServingSteps { preemption: true, claim_age_s: 600.0 };
            let step = steps.step(&cluster, &tenancy, &replica, Some(&fast), &mut decide(&cluster), &p);
            if claimed {
                assert_eq!(step, Step::Evict { node: 0, victims: vec![0], claim: true });
            } else {
                // The old pod keeps its GPU; the replica takes the free slower one.
                assert!(matches!(step, Step::Place(ref pl) if pl.node == 1), "{step:?}");
            }
            // Stock semantics (no claim): the free slower GPU, never an eviction.
            let stock = ServingSteps { preemption: true, claim_age_s: 0.0 };
            let step = stock.step(&cluster, &tenancy, &replica, Some(&fast), &mut decide(&cluster), &p);
            assert!(matches!(step, Step::Place(ref pl) if pl.node == 1), "{step:?}");
        }
    }

    #[test]
    fn preemption_comes_only_when_nothing_fits() {
        let (mut cluster, mut tenancy, replica, _, evictable) = setup(0.0);
        // Fill the slow GPU too, with a pod started later (less work done).
        let batch = cluster.request(&Pod::with_requests("b", 1000, 0, GpuRequest { count: 1, milli_per_gpu: 1000 }));
        let placement = Placement { node: 1, gpus: vec![GpuShare { index: 0, milli: 1000 }] };
        cluster.bind(&batch, &placement).unwrap();
        tenancy.add(1, batch, placement);
        let started =
            |id: PodId| evictable(id).map(|e| Evictable { started_s: if id == 1 { 900.0 } else { 0.0 }, ..e });
        let p = Preemption::everywhere(&started, 1000.0, VictimChoice::LeastWorkLost);
        let steps = ServingSteps { preemption: true, claim_age_s: 0.0 };
        let step = steps.step(&cluster, &tenancy, &replica, None, &mut decide(&cluster), &p);
        assert_eq!(step, Step::Evict { node: 1, victims: vec![1], claim: false });
        let never = ServingSteps { preemption: false, claim_age_s: 600.0 };
        assert_eq!(never.step(&cluster, &tenancy, &replica, None, &mut decide(&cluster), &p), Step::Wait);
    }
}
