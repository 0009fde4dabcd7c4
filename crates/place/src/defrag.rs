//! Defragmentation, a mode apart from the policies: when a pod fits nowhere, move at most a few placed
//! pods (each move is a migration: the pod restarts elsewhere) so that it fits. Moves are all or
//! nothing, and the caller counts every one as a cost.

use std::collections::HashMap;

use crate::cluster::{BindError, Cluster, NodeId, Placement, PodRequest};
use crate::engine::{Decision, Engine};
use crate::filter::{self, Rejection};

/// The caller's name for a placed pod.
pub type PodId = usize;

/// Nodes whose pods are examined per failing pod, those closest to fitting first.
const SCANNED: usize = 48;
/// Nodes tried per failing pod, those needing the fewest moves first.
const CANDIDATES: usize = 8;

/// Which placed pod is where: what defragmentation may move.
#[derive(Debug, Clone, Default)]
pub struct Tenancy {
    pods: HashMap<PodId, (PodRequest, Placement)>,
    by_node: Vec<Vec<PodId>>,
}

impl Tenancy {
    /// An empty tenancy for a cluster of `nodes` nodes.
    pub fn new(nodes: usize) -> Self {
        Tenancy { pods: HashMap::new(), by_node: vec![Vec::new(); nodes] }
    }

    /// Records a bound pod.
    pub fn add(&mut self, id: PodId, pod: PodRequest, placement: Placement) {
        if let Some(list) = self.by_node.get_mut(placement.node) {
            list.push(id);
        }
        self.pods.insert(id, (pod, placement));
    }

    /// Forgets a pod, returning it and where it was.
    pub fn remove(&mut self, id: PodId) -> Option<(PodRequest, Placement)> {
        let (pod, placement) = self.pods.remove(&id)?;
        if let Some(list) = self.by_node.get_mut(placement.node) {
            list.retain(|&p| p != id);
        }
        Some((pod, placement))
    }

    /// The pods on a node.
    pub fn on_node(&self, node: NodeId) -> &[PodId] {
        self.by_node.get(node).map_or(&[], Vec::as_slice)
    }

    /// A placed pod and where it is.
    pub fn get(&self, id: PodId) -> Option<&(PodRequest, Placement)> {
        self.pods.get(&id)
    }
}

/// One migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    /// The pod moved.
    pub pod: PodId,
    /// Where it was.
    pub from: Placement,
    /// Where it went.
    pub to: Placement,
}

/// A pod placed after moving others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defragmented {
    /// Where the pod went.
    pub placement: Placement,
    /// The pods moved to make room, in order.
    pub moves: Vec<Move>,
}

/// Places `pod` (as `id`) by moving at most `max_moves` placed pods elsewhere, when it fits nowhere as
/// things are. Per candidate node it picks the pods whose removal frees a fitting GPU set (and the CPU
/// and memory) with the fewest moves, places the pod there, and re-places the moved pods with `engine`
/// anywhere they fit. On success `cluster` and `tenancy` hold the result; on `Ok(None)` nothing changed.
/// An error means the cluster refused a change it had just reported possible: a bug, not a full cluster.
pub fn place_with_moves(
    engine: &mut Engine,
    cluster: &mut Cluster,
    tenancy: &mut Tenancy,
    id: PodId,
    pod: &PodRequest,
    max_moves: usize,
) -> Result<Option<Defragmented>, BindError> {
    if max_moves == 0 {
        return Ok(None);
    }
    // A cheap first cut: nodes that lack at most `max_moves` fitting GPUs, those closest to fitting first.
    let demand = pod.gpu.milli_per_gpu;
    let mut rough: Vec<_> = cluster
        .nodes()
        .iter()
        .enumerate()
        .filter(|(_, n)| pod.gpu.is_none() || (pod.gpu.count <= n.gpu_count && pod.models.accepts(n.model)))
        .filter_map(|(id, n)| {
            let fitting = n.gpus().iter().filter(|&&g| g >= demand).count();
            let missing = usize::from(pod.gpu.count).saturating_sub(fitting);
            let closest = n.gpus().iter().copied().filter(|&g| g < demand).max().unwrap_or(0);
            (missing <= max_moves).then_some((missing, std::cmp::Reverse((closest, n.cpu_free)), id))
        })
        .collect();
    rough.sort_unstable();
    let mut candidates: Vec<(usize, u64, NodeId, Vec<PodId>)> = rough
        .iter()
        .take(SCANNED)
        .filter_map(|&(_, _, n)| {
            victims(cluster, tenancy, n, pod, &|_| true).filter(|v| v.len() <= max_moves).map(|v| (v, n))
        })
        .map(|(v, n)| {
            let milli: u64 =
                v.iter().filter_map(|p| tenancy.get(*p)).map(|(r, _)| u64::from(r.gpu.total_milli())).sum();
            (v.len(), milli, n, v)
        })
        .collect();
    candidates.sort_unstable();
    // A failed attempt puts everything back, so the victims found above still hold for the next node.
    for (_, _, node, chosen) in candidates.iter().take(CANDIDATES) {
        if let Some(done) = try_node(engine, cluster, tenancy, id, pod, *node, chosen)? {
            return Ok(Some(done));
        }
    }
    Ok(None)
}

/// The pods to move off `node` so that `pod` fits there, taken only among those `movable` allows, or
/// `None` when no removal helps (wrong model, selector, taints, too few GPUs).
fn victims(
    cluster: &Cluster,
    tenancy: &Tenancy,
    node: NodeId,
    pod: &PodRequest,
    movable: &dyn Fn(PodId) -> bool,
) -> Option<Vec<PodId>> {
    let info = &cluster.node_info()[node];
    let state = &cluster.nodes()[node];
    match filter::check(info, state, pod) {
        Ok(()) => return Some(Vec::new()),
        Err(Rejection::Cpu | Rejection::Memory | Rejection::Gpu) => {}
        Err(_) => return None,
    }
    if usize::from(pod.gpu.count) > usize::from(state.gpu_count) {
        return None;
    }
    let here: Vec<PodId> = tenancy.on_node(node).iter().copied().filter(|&p| movable(p)).collect();
    // Milli used per GPU, and the pods on each.
    let mut on_gpu: Vec<Vec<PodId>> = vec![Vec::new(); usize::from(state.gpu_count)];
    for &p in &here {
        if let Some((_, placement)) = tenancy.get(p) {
            for share in &placement.gpus {
                if let Some(list) = on_gpu.get_mut(usize::from(share.index)) {
                    list.push(p);
                }
            }
        }
    }
    let mut chosen: Vec<PodId> = Vec::new();
    let take = |chosen: &mut Vec<PodId>, p: PodId| {
        if !chosen.contains(&p) {
            chosen.push(p);
        }
    };
    if !pod.gpu.is_none() {
        let demand = pod.gpu.milli_per_gpu;
        // Per GPU: the pods to move for it to hold `demand`, smallest pods first.
        let mut per_gpu: Vec<(usize, u32, Vec<PodId>)> = Vec::new();
        for (i, pods) in on_gpu.iter().enumerate() {
            let mut free = u32::from(state.gpu_free[i]);
            let mut sorted: Vec<(u32, PodId)> =
                pods.iter().filter_map(|&p| tenancy.get(p).map(|(r, _)| (u32::from(r.gpu.milli_per_gpu), p))).collect();
            sorted.sort_unstable();
            let mut moved = Vec::new();
            for (milli, p) in sorted.into_iter().rev() {
                if free >= u32::from(demand) {
                    break;
                }
                free += milli;
                moved.push(p);
            }
            if free >= u32::from(demand) {
                let cost: u32 = moved.iter().filter_map(|p| tenancy.get(*p)).map(|(r, _)| r.gpu.total_milli()).sum();
                per_gpu.push((moved.len(), cost, moved));
            }
        }
        per_gpu.sort_by_key(|(n, cost, _)| (*n, *cost));
        if per_gpu.len() < usize::from(pod.gpu.count) {
            return None;
        }
        for (_, _, moved) in per_gpu.into_iter().take(usize::from(pod.gpu.count)) {
            for p in moved {
                take(&mut chosen, p);
            }
        }
    }
    // Then CPU and memory: the largest CPU users not chosen yet.
    let freed = |chosen: &[PodId]| -> (u64, u64) {
        chosen
            .iter()
            .filter_map(|p| tenancy.get(*p))
            .fold((0, 0), |(c, m), (r, _)| (c + r.cpu_milli, m + r.memory_bytes))
    };
    let mut rest: Vec<PodId> = here.iter().copied().filter(|p| !chosen.contains(p)).collect();
    rest.sort_by_key(|p| std::cmp::Reverse(tenancy.get(*p).map_or(0, |(r, _)| r.cpu_milli)));
    for p in rest {
        let (cpu, memory) = freed(&chosen);
        if state.cpu_free + cpu >= pod.cpu_milli && state.memory_free + memory >= pod.memory_bytes {
            break;
        }
        chosen.push(p);
    }
    let (cpu, memory) = freed(&chosen);
    (state.cpu_free + cpu >= pod.cpu_milli && state.memory_free + memory >= pod.memory_bytes).then_some(chosen)
}

/// Moves `chosen` off `node`, places `pod` there and the moved pods anywhere; undoes everything if
/// any of them no longer fits.
fn try_node(
    engine: &mut Engine,
    cluster: &mut Cluster,
    tenancy: &mut Tenancy,
    id: PodId,
    pod: &PodRequest,
    node: NodeId,
    chosen: &[PodId],
) -> Result<Option<Defragmented>, BindError> {
    let mut lifted: Vec<(PodId, PodRequest, Placement)> = Vec::new();
    for &p in chosen {
        if let Some((r, placement)) = tenancy.remove(p) {
            cluster.release(&r, &placement)?;
            lifted.push((p, r, placement));
        }
    }
    let undo = |cluster: &mut Cluster, tenancy: &mut Tenancy, lifted: Vec<(PodId, PodRequest, Placement)>| {
        for (p, r, placement) in lifted {
            cluster.bind(&r, &placement)?;
            tenancy.add(p, r, placement);
        }
        Ok::<_, BindError>(None)
    };
    let Ok(placement) = engine.place_on(cluster, pod, node) else {
        return undo(cluster, tenancy, lifted);
    };
    cluster.bind(pod, &placement)?;
    let mut moves: Vec<Move> = Vec::new();
    for (p, r, from) in &lifted {
        match engine.decide(cluster, r) {
            Decision::Place(to) => {
                cluster.bind(r, &to)?;
                moves.push(Move { pod: *p, from: from.clone(), to });
            }
            Decision::Unschedulable(_) => {
                // Moves were made in `lifted` order: take them back, then the pod.
                for (m, (_, moved, _)) in moves.iter().zip(&lifted) {
                    cluster.release(moved, &m.to)?;
                }
                cluster.release(pod, &placement)?;
                return undo(cluster, tenancy, lifted);
            }
        }
    }
    for ((p, r, _), m) in lifted.into_iter().zip(&moves) {
        tenancy.add(p, r, m.to.clone());
    }
    tenancy.add(id, pod.clone(), placement.clone());
    Ok(Some(Defragmented { placement, moves }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{EngineConfig, TieBreak};
    use crate::policy::Policy;
    use gpuplane_core::{GpuRequest, Node, Pod};

    fn node(name: &str, gpus: u8) -> Node {
        crate::test_nodes::gpu_node(name, gpus, "T4")
    }

    #[test]
    fn a_whole_gpu_pod_gets_room_by_moving_one_sharing_pod_and_everything_is_accounted() {
        // Two 1-GPU nodes each with a 300 m pod: a whole-GPU pod fits nowhere until one moves.
        let mut cluster = Cluster::new(&[node("a", 1), node("b", 1)]).unwrap();
        let mut engine = Engine::new(EngineConfig {
            policy: Policy::BestFit,
            target: None,
            seed: 1,
            tie_break: TieBreak::LowestName,
        })
        .unwrap();
        let mut tenancy = Tenancy::new(2);
        let small = cluster.request(&Pod::with_requests("s", 1000, 0, GpuRequest { count: 1, milli_per_gpu: 300 }));
        for (id, n) in [(0, 0), (1, 1)] {
            let p = engine.place_on(&cluster, &small, n).unwrap();
            cluster.bind(&small, &p).unwrap();
            tenancy.add(id, small.clone(), p);
        }
        let whole = cluster.request(&Pod::with_requests("w", 1000, 0, GpuRequest { count: 1, milli_per_gpu: 1000 }));
        assert!(matches!(engine.decide(&cluster, &whole), Decision::Unschedulable(_)));
        assert_eq!(place_with_moves(&mut engine, &mut cluster, &mut tenancy, 2, &whole, 0).unwrap(), None);

        let done = place_with_moves(&mut engine, &mut cluster, &mut tenancy, 2, &whole, 1).unwrap().unwrap();
        assert_eq!(done.moves.len(), 1);
        assert_ne!(done.moves[0].to.node, done.placement.node);
        assert_eq!(cluster.allocated_gpu_milli(), 1600);
        assert_eq!(tenancy.on_node(done.placement.node), &[2]);
        assert_eq!(tenancy.on_node(done.moves[0].to.node).len(), 2);

        // A second whole-GPU pod cannot get room: nothing changes.
        let before = cluster.clone();
        assert_eq!(place_with_moves(&mut engine, &mut cluster, &mut tenancy, 3, &whole, 2).unwrap(), None);
        let free = |c: &Cluster| c.nodes().iter().map(|n| (n.cpu_free, n.gpu_free)).collect::<Vec<_>>();
        assert_eq!(free(&cluster), free(&before), "an attempt that fails leaves every node as it was");
    }
}
