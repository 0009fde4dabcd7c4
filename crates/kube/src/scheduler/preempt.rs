//! Preemption: when a pod fits nowhere, the node where evicting lower-priority pods makes room and whom,
//! by `gpuplane_place::preempt` — the decision the simulator takes — over the snapshot's bound pods, never
//! taking more pods from a PodDisruptionBudget than it allows. Pure: snapshot in, plan out.

use std::collections::HashSet;

use gpuplane_place::defrag::Tenancy;
use gpuplane_place::{Evictable, NodeId, NodeState, PodRequest, Preemption, VictimChoice};

use super::budget::Budget;
use crate::snapshot::{BoundPod, Snapshot};

/// A pod to evict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Victim {
    /// `namespace/name`.
    pub key: String,
    /// UID (the eviction's precondition).
    pub uid: String,
    /// Its priority.
    pub priority: i32,
    /// GPU milli it holds.
    pub gpu_milli: u32,
}

/// Where to preempt and whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The node that will have room.
    pub node: NodeId,
    /// The pods to evict there.
    pub victims: Vec<Victim>,
}

impl Plan {
    /// GPU milli the victims hold.
    pub fn gpu_milli_lost(&self) -> u32 {
        self.victims.iter().map(|v| v.gpu_milli).sum()
    }
}

/// Adds back to `state` what `pod` holds.
pub fn release_into(state: &mut NodeState, pod: &BoundPod) {
    state.cpu_free += pod.request.cpu_milli;
    state.memory_free += pod.request.memory_bytes;
    for share in &pod.placement.gpus {
        state.gpu_free[usize::from(share.index)] += share.milli;
    }
}

/// Whom a preemption may take and how it chooses: not the pods already being evicted (`exclude`), never
/// beyond the disruption budgets, only on the nodes where evictions could help at all (`allowed`, empty: every
/// node — those that failed none of Kubernetes' other filters). `now_s` (seconds since the epoch) weighs the
/// work a victim has done since its `status.startTime`; a pod with none has done none.
pub struct Candidates<'a> {
    /// The disruption budgets.
    pub budgets: &'a [Budget],
    /// Pods already being evicted.
    pub exclude: &'a HashSet<&'a str>,
    /// Nodes where evictions may help; empty: every node.
    pub allowed: &'a [bool],
    /// Seconds since the epoch.
    pub now_s: f64,
    /// How victims are valued and nodes ranked.
    pub choice: VictimChoice,
}

impl Candidates<'_> {
    /// The candidates for `request` in the engine's terms — every bound pod of lower priority not excluded,
    /// numbered, in a tenancy — and the preemption over them, handed to `f` with the pods by number.
    pub fn with<R>(
        &self,
        snapshot: &Snapshot,
        request: &PodRequest,
        f: impl FnOnce(&Tenancy, &Preemption<'_>, &[&BoundPod]) -> R,
    ) -> R {
        let cluster = snapshot.cluster();
        let mut tenancy = Tenancy::new(cluster.len());
        let mut pods: Vec<&BoundPod> = Vec::new();
        for node in 0..cluster.len() {
            for p in snapshot.pods_on(node) {
                if p.request.priority < request.priority && !self.exclude.contains(p.key.as_str()) {
                    tenancy.add(pods.len(), p.request.clone(), p.placement.clone());
                    pods.push(p);
                }
            }
        }
        let now_s = self.now_s;
        let evictable = |id: usize| {
            pods.get(id)
                .map(|p| Evictable { priority: p.request.priority, started_s: p.started_s.map_or(now_s, |t| t as f64) })
        };
        let within = |set: &[usize]| {
            let set: Vec<&BoundPod> = set.iter().filter_map(|&id| pods.get(id).copied()).collect();
            within_budgets(&set, self.budgets)
        };
        let nodes = (!self.allowed.is_empty()).then_some(self.allowed);
        let preemption =
            Preemption { evictable: &evictable, within_budgets: &within, nodes, now_s, choice: self.choice };
        f(&tenancy, &preemption, &pods)
    }

    /// The preemption for `request`, or `None` when no set of lower-priority pods on any node, within the
    /// disruption budgets, makes room.
    pub fn plan(&self, snapshot: &Snapshot, request: &PodRequest) -> Option<Plan> {
        if snapshot.lowest_priority().is_none_or(|lowest| lowest >= request.priority) {
            return None; // No pod of lower priority anywhere: nothing to evict.
        }
        self.with(snapshot, request, |tenancy, preemption, pods| {
            let (node, victims) = preemption.plan(snapshot.cluster(), tenancy, request)?;
            Some(plan_of(node, &victims, pods))
        })
    }
}

/// The plan evicting `victims` (numbered as [`Candidates::with`] numbers them) on `node`.
pub fn plan_of(node: NodeId, victims: &[usize], pods: &[&BoundPod]) -> Plan {
    Plan { node, victims: victims.iter().filter_map(|&id| pods.get(id)).map(|p| victim(p)).collect() }
}

fn victim(p: &BoundPod) -> Victim {
    Victim {
        key: p.key.clone(),
        uid: p.uid.clone(),
        priority: p.request.priority,
        gpu_milli: p.request.gpu.total_milli(),
    }
}

fn namespace(key: &str) -> &str {
    key.split_once('/').map_or("default", |(ns, _)| ns)
}

/// Whether evicting `set` stays within every budget.
fn within_budgets(set: &[&BoundPod], budgets: &[Budget]) -> bool {
    budgets.iter().all(|b| {
        let taken = set.iter().filter(|p| b.selects(namespace(&p.key), &p.labels)).count();
        taken <= b.disruptions_allowed as usize
    })
}
