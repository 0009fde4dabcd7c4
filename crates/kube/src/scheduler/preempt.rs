//! Preemption: when a pod fits nowhere, find the node where evicting lower-priority pods makes room
//! with the fewest victims, then the least GPU milli lost, then the lowest victim priority — never
//! taking more pods from a PodDisruptionBudget than it allows. Pure: snapshot in, plan out.

use gpuplane_place::{NodeId, NodeState, PodRequest, filter};

use super::budget::Budget;
use crate::snapshot::{BoundPod, Snapshot};

/// Victim sets up to this size are searched exhaustively on nodes with at most
/// [`EXHAUSTIVE_CANDIDATES`] candidates; larger ones are found greedily (remove, then reprieve).
const EXHAUSTIVE_SIZE: usize = 3;
const EXHAUSTIVE_CANDIDATES: usize = 24;

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

    fn cost(&self, rank: u32) -> (usize, u32, i32, u32) {
        let top = self.victims.iter().map(|v| v.priority).max().unwrap_or(i32::MIN);
        (self.victims.len(), self.gpu_milli_lost(), top, rank)
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

/// The best preemption for `request`, or `None` when no set of lower-priority pods on any node,
/// within the disruption budgets, makes room. `exclude` names pods already being evicted.
/// `allowed` (empty: every node) names the nodes where evictions could help at all: those that failed
/// none of Kubernetes' other filters.
pub fn plan(
    snapshot: &Snapshot,
    request: &PodRequest,
    budgets: &[Budget],
    exclude: &std::collections::HashSet<&str>,
    allowed: &[bool],
) -> Option<Plan> {
    if snapshot.lowest_priority().is_none_or(|lowest| lowest >= request.priority) {
        return None; // No pod of lower priority anywhere: nothing to evict.
    }
    let cluster = snapshot.cluster();
    let mut best: Option<(Plan, (usize, u32, i32, u32))> = None;
    for node in 0..cluster.len() {
        if allowed.get(node) == Some(&false) {
            continue;
        }
        let info = &cluster.node_info()[node];
        let candidates: Vec<&BoundPod> = snapshot
            .pods_on(node)
            .filter(|p| p.request.priority < request.priority && !exclude.contains(p.key.as_str()))
            .collect();
        if candidates.is_empty() {
            continue;
        }
        // Nothing helps if the pod does not fit even with every candidate gone.
        let mut emptied = cluster.nodes()[node].clone();
        candidates.iter().for_each(|p| release_into(&mut emptied, p));
        if filter::check(info, &emptied, request).is_err() {
            continue;
        }
        let limit = best.as_ref().map_or(usize::MAX, |(p, _)| p.victims.len());
        let Some(victims) = smallest_set(&cluster.nodes()[node], info, request, &candidates, budgets, limit) else {
            continue;
        };
        let plan = Plan { node, victims };
        let cost = plan.cost(cluster.name_rank()[node]);
        if best.as_ref().is_none_or(|(_, c)| cost < *c) {
            best = Some((plan, cost));
        }
    }
    best.map(|(p, _)| p)
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

fn fits_without(
    state: &NodeState,
    info: &gpuplane_place::cluster::NodeInfo,
    request: &PodRequest,
    set: &[&BoundPod],
) -> bool {
    let mut s = state.clone();
    set.iter().for_each(|p| release_into(&mut s, p));
    filter::check(info, &s, request).is_ok()
}

/// The cheapest victim set on one node with at most `limit` pods, if any.
fn smallest_set(
    state: &NodeState,
    info: &gpuplane_place::cluster::NodeInfo,
    request: &PodRequest,
    candidates: &[&BoundPod],
    budgets: &[Budget],
    limit: usize,
) -> Option<Vec<Victim>> {
    let cost = |set: &[&BoundPod]| {
        let milli: u32 = set.iter().map(|p| p.request.gpu.total_milli()).sum();
        let top = set.iter().map(|p| p.request.priority).max().unwrap_or(i32::MIN);
        (milli, top)
    };
    if candidates.len() <= EXHAUSTIVE_CANDIDATES {
        for size in 1..=EXHAUSTIVE_SIZE.min(limit).min(candidates.len()) {
            let mut best: Option<(Vec<&BoundPod>, (u32, i32))> = None;
            for_each_combination(candidates.len(), size, &mut |idx| {
                let set: Vec<&BoundPod> = idx.iter().map(|&i| candidates[i]).collect();
                if within_budgets(&set, budgets) && fits_without(state, info, request, &set) {
                    let c = cost(&set);
                    if best.as_ref().is_none_or(|(_, b)| c < *b) {
                        best = Some((set, c));
                    }
                }
            });
            if let Some((set, _)) = best {
                return Some(set.into_iter().map(victim).collect());
            }
        }
        if limit <= EXHAUSTIVE_SIZE {
            return None;
        }
    }
    let set = greedy(state, info, request, candidates, budgets)?;
    (set.len() <= limit).then(|| set.into_iter().map(victim).collect())
}

/// Takes candidates (lowest priority, then most GPU milli, first) until the pod fits, within the
/// budgets; then gives back every victim the pod can do without, highest priority first.
fn greedy<'a>(
    state: &NodeState,
    info: &gpuplane_place::cluster::NodeInfo,
    request: &PodRequest,
    candidates: &[&'a BoundPod],
    budgets: &[Budget],
) -> Option<Vec<&'a BoundPod>> {
    let mut order = candidates.to_vec();
    order.sort_by(|a, b| {
        a.request.priority.cmp(&b.request.priority).then(b.request.gpu.total_milli().cmp(&a.request.gpu.total_milli()))
    });
    let mut set: Vec<&BoundPod> = Vec::new();
    for p in order {
        set.push(p);
        if !within_budgets(&set, budgets) {
            set.pop();
            continue;
        }
        if fits_without(state, info, request, &set) {
            break;
        }
    }
    if !fits_without(state, info, request, &set) {
        return None;
    }
    let mut i = set.len();
    while i > 0 {
        i -= 1;
        let without: Vec<&BoundPod> = set.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, p)| *p).collect();
        if fits_without(state, info, request, &without) {
            set = without;
        }
    }
    Some(set)
}

/// Calls `f` with every `k`-subset of `0..n`, as ascending indices.
fn for_each_combination(n: usize, k: usize, f: &mut dyn FnMut(&[usize])) {
    if k == 0 || k > n {
        return;
    }
    let mut idx: Vec<usize> = (0..k).collect();
    loop {
        f(&idx);
        let mut i = k;
        while i > 0 && idx[i - 1] == n - k + i - 1 {
            i -= 1;
        }
        if i == 0 {
            return;
        }
        idx[i - 1] += 1;
        for j in i..k {
            idx[j] = idx[j - 1] + 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combinations_are_all_visited_once() {
        let mut seen = Vec::new();
        for_each_combination(5, 3, &mut |c| seen.push(c.to_vec()));
        assert_eq!(seen.len(), 10);
        assert_eq!(seen.first().unwrap(), &vec![0, 1, 2]);
        assert_eq!(seen.last().unwrap(), &vec![2, 3, 4]);
        let mut none = 0;
        for_each_combination(2, 3, &mut |_| none += 1);
        assert_eq!(none, 0);
    }
}
