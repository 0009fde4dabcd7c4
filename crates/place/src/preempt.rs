//! Preemption: where evicting lower-priority pods makes room for a pod that fits nowhere, and whom.
//! Victims are chosen per node as kube-scheduler's DefaultPreemption does (evict every candidate, then
//! reprieve the most valuable first while the pod still fits); nodes are ranked either as kube-scheduler
//! ranks them or by the work the evictions throw away.

use crate::cluster::{Cluster, NodeId, NodeState, PodRequest};
use crate::defrag::{PodId, Tenancy};
use crate::filter::{self, Rejection};

/// What the caller knows of a placed pod that preemption may evict.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evictable {
    /// Its priority: only pods below the preemptor's are candidates.
    pub priority: i32,
    /// When it started, seconds on the caller's clock.
    pub started_s: f64,
}

/// How victims are valued and nodes ranked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VictimChoice {
    /// kube-scheduler's DefaultPreemption: on each node the higher-priority, then the older pods are
    /// reprieved first; among nodes, the lowest highest victim priority, then the smallest sum of
    /// priorities, then the fewest victims, then the latest start among the highest-priority victims.
    #[default]
    KubeScheduler,
    /// gpuplane: the pods with the most GPU-seconds done (then the most GPU held) are reprieved first; among
    /// nodes, the lowest highest victim priority, then the fewest GPU-seconds of work thrown away, then the
    /// fewest victims, then the least GPU taken from them.
    LeastWorkLost,
}

/// How a node's victims rank: highest victim priority, the choice's main cost, victims, its tie-break
/// cost, and the node's name rank; smaller is better.
type Rank = (i32, f64, usize, f64, u32);

/// What a preemption may do: whom it may evict, within which disruption budgets, on which nodes.
pub struct Preemption<'a> {
    /// The pods that may be evicted, with what the choice weighs; `None` for pods it must not touch.
    pub evictable: &'a dyn Fn(PodId) -> Option<Evictable>,
    /// Whether evicting this set of pods stays within every disruption budget. The Eviction API refuses
    /// an eviction beyond a budget, so a victim set that exceeds one is never planned.
    pub within_budgets: &'a dyn Fn(&[PodId]) -> bool,
    /// Nodes where evictions may help (those that failed no filter but resources); `None`: every node.
    pub nodes: Option<&'a [bool]>,
    /// The caller's clock in seconds (for the work a pod has done).
    pub now_s: f64,
    /// How victims are valued and nodes ranked.
    pub choice: VictimChoice,
}

impl<'a> Preemption<'a> {
    /// A preemption of the pods `evictable` lists, with no disruption budget, on every node.
    pub fn everywhere(evictable: &'a dyn Fn(PodId) -> Option<Evictable>, now_s: f64, choice: VictimChoice) -> Self {
        Preemption { evictable, within_budgets: &|_| true, nodes: None, now_s, choice }
    }

    /// Where to preempt for `pod` and whom to evict, or `None` when no eviction of lower-priority pods
    /// that `evictable` lists makes room on any allowed node within the budgets. Ties go to the node
    /// listed first by name.
    pub fn plan(&self, cluster: &Cluster, tenancy: &Tenancy, pod: &PodRequest) -> Option<(NodeId, Vec<PodId>)> {
        let rank = cluster.name_rank();
        let mut best: Option<(Rank, NodeId, Vec<PodId>)> = None;
        for (node, &name_rank) in rank.iter().enumerate().take(cluster.len()) {
            if self.nodes.is_some_and(|allowed| allowed.get(node) != Some(&true)) {
                continue;
            }
            let Some(victims) = self.victims_on(cluster, tenancy, node, pod) else { continue };
            if victims.is_empty() {
                continue; // The pod fits as things are: not a preemption.
            }
            let key = self.rank(tenancy, &victims, name_rank);
            let better = best.as_ref().is_none_or(|(k, _, _)| {
                key.0
                    .cmp(&k.0)
                    .then(key.1.total_cmp(&k.1))
                    .then(key.2.cmp(&k.2))
                    .then(key.3.total_cmp(&k.3))
                    .then(key.4.cmp(&k.4))
                    .is_lt()
            });
            if better {
                best = Some((key, node, victims.into_iter().map(|(p, _)| p).collect()));
            }
        }
        best.map(|(_, node, victims)| (node, victims))
    }

    fn rank(&self, tenancy: &Tenancy, victims: &[(PodId, Evictable)], name_rank: u32) -> Rank {
        let top = victims.iter().map(|(_, e)| e.priority).max().unwrap_or(i32::MIN);
        match self.choice {
            VictimChoice::KubeScheduler => {
                // Priorities are shifted to be positive before summing, as kube-scheduler does.
                let sum: f64 = victims.iter().map(|(_, e)| f64::from(e.priority) + 2_147_483_648.0).sum();
                let earliest = victims
                    .iter()
                    .filter(|(_, e)| e.priority == top)
                    .map(|(_, e)| e.started_s)
                    .fold(f64::INFINITY, f64::min);
                (top, sum, victims.len(), -earliest, name_rank)
            }
            VictimChoice::LeastWorkLost => {
                let lost: f64 = victims.iter().map(|(p, e)| work_done(tenancy, *p, e, self.now_s)).sum();
                let milli: u32 = victims.iter().map(|(p, _)| gpu_milli(tenancy, *p)).sum();
                (top, lost, victims.len(), f64::from(milli), name_rank)
            }
        }
    }

    /// The pods to evict on `node` for `pod` to fit, or `None` when evicting every candidate does not make
    /// room, the node fails a filter eviction cannot change, or the victims would exceed a budget. Empty
    /// when the pod fits already.
    ///
    /// As kube-scheduler's DefaultPreemption: every candidate is removed, then reprieved in order of value
    /// while the pod still fits — first those whose eviction would exceed a budget, then the others.
    fn victims_on(
        &self,
        cluster: &Cluster,
        tenancy: &Tenancy,
        node: NodeId,
        pod: &PodRequest,
    ) -> Option<Vec<(PodId, Evictable)>> {
        let info = &cluster.node_info()[node];
        let mut state = cluster.nodes()[node].clone();
        match filter::check(info, &state, pod) {
            Ok(()) => return Some(Vec::new()),
            Err(Rejection::Cpu | Rejection::Memory | Rejection::Gpu) => {}
            Err(_) => return None,
        }
        let mut candidates: Vec<(PodId, Evictable)> = tenancy
            .on_node(node)
            .iter()
            .filter_map(|&p| (self.evictable)(p).filter(|e| e.priority < pod.priority).map(|e| (p, e)))
            .collect();
        if candidates.is_empty() {
            return None;
        }
        for (p, _) in &candidates {
            change(&mut state, tenancy, *p, true);
        }
        if filter::check(info, &state, pod).is_err() {
            return None;
        }
        // The most valuable first: they are reprieved while the pod still fits without them.
        let now_s = self.now_s;
        match self.choice {
            VictimChoice::KubeScheduler => {
                candidates.sort_by(|a, b| b.1.priority.cmp(&a.1.priority).then(a.1.started_s.total_cmp(&b.1.started_s)))
            }
            VictimChoice::LeastWorkLost => candidates.sort_by(|a, b| {
                b.1.priority
                    .cmp(&a.1.priority)
                    .then(work_done(tenancy, b.0, &b.1, now_s).total_cmp(&work_done(tenancy, a.0, &a.1, now_s)))
                    .then(gpu_milli(tenancy, b.0).cmp(&gpu_milli(tenancy, a.0)))
            }),
        }
        // Those whose eviction, on top of the more valuable ones', would exceed a budget are tried first.
        let mut within: Vec<PodId> = Vec::new();
        let (mut violating, mut rest) = (Vec::new(), Vec::new());
        for c in candidates {
            within.push(c.0);
            if (self.within_budgets)(&within) {
                rest.push(c);
            } else {
                within.pop();
                violating.push(c);
            }
        }
        let mut victims = Vec::new();
        for (p, e) in violating.into_iter().chain(rest) {
            change(&mut state, tenancy, p, false);
            if filter::check(info, &state, pod).is_err() {
                change(&mut state, tenancy, p, true);
                victims.push((p, e));
            }
        }
        let ids: Vec<PodId> = victims.iter().map(|(p, _)| *p).collect();
        (self.within_budgets)(&ids).then_some(victims)
    }
}

/// GPU-seconds pod `p` has run by `now_s`: what evicting it throws away.
fn work_done(tenancy: &Tenancy, p: PodId, e: &Evictable, now_s: f64) -> f64 {
    tenancy.get(p).map_or(0.0, |(r, _)| f64::from(r.gpu.total_milli()) / 1000.0 * (now_s - e.started_s).max(0.0))
}

/// GPU milli pod `p` holds.
fn gpu_milli(tenancy: &Tenancy, p: PodId) -> u32 {
    tenancy.get(p).map_or(0, |(r, _)| r.gpu.total_milli())
}

/// Gives back to `state` what `p` holds (`free`), or takes it again.
fn change(state: &mut NodeState, tenancy: &Tenancy, p: PodId, free: bool) {
    let Some((request, placement)) = tenancy.get(p) else { return };
    if free {
        state.cpu_free += request.cpu_milli;
        state.memory_free += request.memory_bytes;
    } else {
        state.cpu_free = state.cpu_free.saturating_sub(request.cpu_milli);
        state.memory_free = state.memory_free.saturating_sub(request.memory_bytes);
    }
    for share in &placement.gpus {
        if let Some(g) = state.gpu_free.get_mut(usize::from(share.index)) {
            *g = if free { g.saturating_add(share.milli) } else { g.saturating_sub(share.milli) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{GpuShare, Placement};
    use gpuplane_core::{GpuRequest, Pod};

    fn node(name: &str, gpus: u8) -> gpuplane_core::Node {
        crate::test_nodes::gpu_node(name, gpus, "T4")
    }

    /// Binds `pods` (id, request, node, GPU index) into a fresh cluster of one-GPU nodes `a`, `b`, `c`.
    fn setup(pods: &[(PodId, &PodRequest, NodeId)]) -> (Cluster, Tenancy) {
        let mut cluster = Cluster::new(&[node("a", 1), node("b", 1), node("c", 1)]).unwrap();
        let mut tenancy = Tenancy::new(3);
        for &(id, pod, n) in pods {
            let placement = Placement { node: n, gpus: vec![GpuShare { index: 0, milli: pod.gpu.milli_per_gpu }] };
            cluster.bind(pod, &placement).unwrap();
            tenancy.add(id, pod.clone(), placement);
        }
        (cluster, tenancy)
    }

    fn preemption(
        cluster: &Cluster,
        tenancy: &Tenancy,
        pod: &PodRequest,
        evictable: &dyn Fn(PodId) -> Option<Evictable>,
        now_s: f64,
        choice: VictimChoice,
    ) -> Option<(NodeId, Vec<PodId>)> {
        Preemption::everywhere(evictable, now_s, choice).plan(cluster, tenancy, pod)
    }

    /// One node, one GPU holding two 500 m pods (ids 0 and 1), and a 500 m preemptor of priority 10.
    fn two_halves() -> (Cluster, Tenancy, PodRequest) {
        let mut cluster = Cluster::new(&[node("a", 1)]).unwrap();
        let half = cluster.request(&Pod::with_requests("h", 1000, 0, GpuRequest { count: 1, milli_per_gpu: 500 }));
        let mut tenancy = Tenancy::new(1);
        for id in 0..2 {
            let placement = Placement { node: 0, gpus: vec![GpuShare { index: 0, milli: 500 }] };
            cluster.bind(&half, &placement).unwrap();
            tenancy.add(id, half.clone(), placement);
        }
        (cluster, tenancy, PodRequest { priority: 10, ..half })
    }

    fn requests(cluster_nodes: usize) -> (PodRequest, PodRequest) {
        let c = Cluster::new(&(0..cluster_nodes).map(|i| node(&format!("n{i}"), 1)).collect::<Vec<_>>()).unwrap();
        let half = c.request(&Pod::with_requests("h", 1000, 0, GpuRequest { count: 1, milli_per_gpu: 500 }));
        let mut whole = c.request(&Pod::with_requests("w", 1000, 0, GpuRequest { count: 1, milli_per_gpu: 1000 }));
        whole.priority = 1000;
        (half, whole)
    }

    #[test]
    fn only_lower_priority_pods_the_caller_lists_are_evicted_and_as_few_as_kube_scheduler_would() {
        let (half, whole) = requests(3);
        let (cluster, tenancy) = setup(&[(0, &half, 0), (1, &half, 0), (2, &whole, 1), (3, &whole, 2)]);
        let low = |id: PodId| Some(Evictable { priority: 0, started_s: id as f64 });
        // b's one victim beats a's two; d (id 3) is protected.
        let listed = |id: PodId| (id != 3).then(|| low(id)).flatten();
        for choice in [VictimChoice::KubeScheduler, VictimChoice::LeastWorkLost] {
            assert_eq!(preemption(&cluster, &tenancy, &whole, &listed, 10.0, choice), Some((1, vec![2])));
        }
        // Equal priority is not lower: nothing to evict.
        let equal = |_| Some(Evictable { priority: 1000, started_s: 0.0 });
        assert_eq!(preemption(&cluster, &tenancy, &whole, &equal, 10.0, VictimChoice::KubeScheduler), None);
        assert_eq!(preemption(&cluster, &tenancy, &whole, &|_| None, 10.0, VictimChoice::KubeScheduler), None);
    }

    #[test]
    fn kube_scheduler_takes_the_youngest_victims_and_gpuplane_the_least_work() {
        // a: one whole-GPU pod started at 0; b: one started at 50; c: two half pods started at 90.
        let (half, whole) = requests(3);
        let mut batch_whole = whole.clone();
        batch_whole.priority = 0;
        let (cluster, tenancy) = setup(&[(0, &batch_whole, 0), (1, &batch_whole, 1), (2, &half, 2), (3, &half, 2)]);
        let started = [0.0, 50.0, 90.0, 90.0];
        let info = |id: PodId| Some(Evictable { priority: 0, started_s: started[id] });
        // kube-scheduler: fewest victims first (a or b), then the latest start: b.
        assert_eq!(
            preemption(&cluster, &tenancy, &whole, &info, 100.0, VictimChoice::KubeScheduler),
            Some((1, vec![1]))
        );
        // gpuplane: c's two pods lost 10 GPU-seconds, b's pod 50.
        let (node, mut v) = preemption(&cluster, &tenancy, &whole, &info, 100.0, VictimChoice::LeastWorkLost).unwrap();
        v.sort_unstable();
        assert_eq!((node, v), (2, vec![2, 3]));
    }

    #[test]
    fn the_most_valuable_pods_are_reprieved_when_fewer_victims_suffice() {
        // One node, one GPU: two 500 m pods; a 500 m preemptor needs one of them gone.
        let (cluster, tenancy, pre) = two_halves();
        let started = [5.0, 60.0];
        let info = |id: PodId| Some(Evictable { priority: 0, started_s: started[id] });
        for choice in [VictimChoice::KubeScheduler, VictimChoice::LeastWorkLost] {
            // The older pod (more done, more important to kube-scheduler) stays.
            assert_eq!(preemption(&cluster, &tenancy, &pre, &info, 100.0, choice), Some((0, vec![1])));
        }
    }

    #[test]
    fn a_budget_is_never_exceeded_and_its_pods_are_reprieved_first() {
        // One node, one GPU: two 500 m pods; a 500 m preemptor needs one of them gone.
        let (cluster, tenancy, pre) = two_halves();
        // Pod 1 is the less valuable (younger), but a budget allowing no disruption protects it: pod 0 goes.
        let started = [5.0, 60.0];
        let info = |id: PodId| Some(Evictable { priority: 0, started_s: started[id] });
        let budget = |set: &[PodId]| !set.contains(&1);
        for choice in [VictimChoice::KubeScheduler, VictimChoice::LeastWorkLost] {
            let p = Preemption { evictable: &info, within_budgets: &budget, nodes: None, now_s: 100.0, choice };
            assert_eq!(p.plan(&cluster, &tenancy, &pre), Some((0, vec![0])));
        }
        // A whole-GPU preemptor needs both gone: the budget forbids it, so nothing is planned.
        let mut whole = c_whole(&cluster);
        whole.priority = 10;
        let p = Preemption {
            evictable: &info,
            within_budgets: &budget,
            nodes: None,
            now_s: 100.0,
            choice: VictimChoice::KubeScheduler,
        };
        assert_eq!(p.plan(&cluster, &tenancy, &whole), None);
        // Nor on a node the caller rules out.
        let p = Preemption { within_budgets: &|_| true, nodes: Some(&[false]), ..p };
        assert_eq!(p.plan(&cluster, &tenancy, &whole), None);
    }

    fn c_whole(c: &Cluster) -> PodRequest {
        c.request(&Pod::with_requests("w", 1000, 0, GpuRequest { count: 1, milli_per_gpu: 1000 }))
    }
}
