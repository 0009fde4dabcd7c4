//! The serving reserve: room kept for inference replicas among batch work. Pods below a priority (batch)
//! are placed off the fast GPU models whenever another GPU fits them, and are not placed where that
//! would leave fewer free slots of a replica's shape (on its fast models for an interactive one) than the
//! caller's forecast asks to keep, so a replica that scales up finds room instead of evicting and waiting.

use crate::cluster::{Cluster, ModelSet, NodeId, NodeState, Placement, PodRequest};
use crate::engine::{Decision, Engine};
use crate::filter::{self, Rejection};

/// Replica shapes and how many free slots of each to keep: per shape, the slots each node has now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Slots {
    shapes: Vec<PodRequest>,
    keep: Vec<u32>,
    /// Per shape, per node: replicas of the shape the node could still take.
    on_node: Vec<Vec<u32>>,
    total: Vec<u64>,
}

/// Replicas of `shape` a node could still take: by its GPUs, CPU and memory; 0 when a filter that no
/// amount of free room changes (model, selector, taints) refuses it.
fn slots_on(cluster: &Cluster, node: NodeId, state: &NodeState, shape: &PodRequest) -> u32 {
    let Some(info) = cluster.node_info().get(node) else { return 0 };
    match filter::check(info, state, shape) {
        Ok(()) | Err(Rejection::Cpu | Rejection::Memory | Rejection::Gpu) => {}
        Err(_) => return 0,
    }
    let by = |free: u64, need: u64| free.checked_div(need).unwrap_or(u64::MAX);
    let gpu = if shape.gpu.is_none() {
        u64::MAX
    } else {
        let m = u64::from(shape.gpu.milli_per_gpu.max(1));
        let per_gpu: u64 = state.gpus().iter().map(|&g| u64::from(g) / m).sum();
        per_gpu / u64::from(shape.gpu.count.max(1))
    };
    let n = gpu.min(by(state.cpu_free, shape.cpu_milli)).min(by(state.memory_free, shape.memory_bytes));
    n.min(u64::from(u32::MAX)) as u32
}

impl Slots {
    /// Tracks the free slots of each shape in `cluster`, keeping none yet.
    pub fn new(cluster: &Cluster, shapes: Vec<PodRequest>) -> Self {
        let on_node: Vec<Vec<u32>> = shapes
            .iter()
            .map(|s| cluster.nodes().iter().enumerate().map(|(n, st)| slots_on(cluster, n, st, s)).collect())
            .collect();
        let total = on_node.iter().map(|v| v.iter().map(|&x| u64::from(x)).sum()).collect();
        Slots { keep: vec![0; shapes.len()], shapes, on_node, total }
    }

    /// Sets the slots of shape `i` to keep.
    pub fn set_keep(&mut self, i: usize, slots: u32) {
        if let Some(k) = self.keep.get_mut(i) {
            *k = slots;
        }
    }

    /// Free slots of shape `i` in the cluster as last refreshed.
    pub fn free(&self, i: usize) -> u64 {
        self.total.get(i).copied().unwrap_or(0)
    }

    /// Counts `node`'s slots again after a bind or release there.
    pub fn refresh(&mut self, cluster: &Cluster, node: NodeId) {
        let Some(state) = cluster.nodes().get(node) else { return };
        for (i, shape) in self.shapes.iter().enumerate() {
            let now = slots_on(cluster, node, state, shape);
            let was = std::mem::replace(&mut self.on_node[i][node], now);
            self.total[i] = self.total[i] - u64::from(was) + u64::from(now);
        }
    }

    /// True when binding `pod` at `placement` leaves every shape its slots to keep (or no fewer than now).
    fn allows(&self, cluster: &Cluster, pod: &PodRequest, placement: &Placement) -> bool {
        let Some(state) = cluster.nodes().get(placement.node) else { return false };
        let mut after = state.clone();
        after.cpu_free = after.cpu_free.saturating_sub(pod.cpu_milli);
        after.memory_free = after.memory_free.saturating_sub(pod.memory_bytes);
        for share in &placement.gpus {
            if let Some(g) = after.gpu_free.get_mut(usize::from(share.index)) {
                *g = g.saturating_sub(share.milli);
            }
        }
        self.shapes.iter().enumerate().all(|(i, shape)| {
            if self.keep[i] == 0 {
                return true;
            }
            let was = u64::from(self.on_node[i][placement.node]);
            let now = u64::from(slots_on(cluster, placement.node, &after, shape));
            now >= was || self.total[i] - was + now >= u64::from(self.keep[i])
        })
    }
}

/// What the reserve keeps, and from whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reserve {
    /// The fast models, as a bit set over the cluster's models.
    fast: u64,
    /// Every model of the cluster.
    all: u64,
    /// Pods below this priority are held off.
    below_priority: i32,
    /// Free GPU milli kept on the fast models.
    headroom_milli: u64,
    /// Replica-shaped slots kept anywhere.
    slots: Slots,
}

impl Reserve {
    /// A reserve of the named fast models of `cluster` (names it does not have are ignored) against
    /// pods whose priority is below `below_priority`, with no headroom yet.
    pub fn new(cluster: &Cluster, fast_models: &[String], below_priority: i32) -> Self {
        let mut fast = 0u64;
        for (i, m) in cluster.models().iter().enumerate() {
            if fast_models.contains(m) {
                fast |= 1 << i;
            }
        }
        let all = if cluster.models().len() >= 64 { u64::MAX } else { (1u64 << cluster.models().len()) - 1 };
        Reserve { fast, all, below_priority, headroom_milli: 0, slots: Slots::default() }
    }

    /// A reserve that holds nothing back.
    pub fn none() -> Self {
        Reserve { fast: 0, all: 0, below_priority: i32::MIN, headroom_milli: 0, slots: Slots::default() }
    }

    /// Sets the free GPU milli held-off pods must leave on the fast models.
    pub fn set_headroom(&mut self, milli: u64) {
        self.headroom_milli = milli;
    }

    /// Keeps free slots of replica shapes (see [`Slots`]); the caller refreshes them as nodes change.
    pub fn with_slots(mut self, slots: Slots) -> Self {
        self.slots = slots;
        self
    }

    /// The replica-shaped slots, to refresh and to set what to keep.
    pub fn slots_mut(&mut self) -> &mut Slots {
        &mut self.slots
    }

    /// Free GPU milli on the fast models.
    pub fn free_milli(&self, cluster: &Cluster) -> u64 {
        cluster
            .nodes()
            .iter()
            .filter(|n| n.model.is_some_and(|m| self.fast & (1 << m) != 0))
            .flat_map(|n| n.gpus().iter())
            .map(|&g| u64::from(g))
            .sum()
    }

    /// True when the reserve does not hold `pod` off.
    fn exempt(&self, pod: &PodRequest) -> bool {
        pod.gpu.is_none() || pod.priority >= self.below_priority
    }

    /// `pod` kept off the fast models, when it is held off and accepts a model outside them; `None` when
    /// steering does not change where it may go.
    pub fn steer(&self, pod: &PodRequest) -> Option<PodRequest> {
        if self.fast == 0 || self.exempt(pod) {
            return None;
        }
        let accepted = match pod.models {
            ModelSet::Any => self.all,
            ModelSet::Only(mask) => mask,
        };
        let outside = accepted & !self.fast;
        (outside != 0 && outside != accepted).then(|| PodRequest { models: ModelSet::Only(outside), ..pod.clone() })
    }

    /// `pod` restricted to the fast models it accepts, when that narrows where it may go (a replica that
    /// prefers them asks this first); `None` otherwise.
    pub fn prefer(&self, pod: &PodRequest) -> Option<PodRequest> {
        let accepted = match pod.models {
            ModelSet::Any => self.all,
            ModelSet::Only(mask) => mask,
        };
        let inside = accepted & self.fast;
        (inside != 0 && inside != accepted).then(|| PodRequest { models: ModelSet::Only(inside), ..pod.clone() })
    }

    /// True when `placement` of `pod` leaves the headroom free (always for a pod not held off, or off
    /// the fast models).
    pub fn allows(&self, cluster: &Cluster, pod: &PodRequest, placement: &Placement) -> bool {
        if self.exempt(pod) {
            return true;
        }
        let on_fast =
            cluster.nodes().get(placement.node).and_then(|n| n.model).is_some_and(|m| self.fast & (1 << m) != 0);
        let fast_ok = !on_fast
            || self.headroom_milli == 0
            || self.free_milli(cluster).saturating_sub(u64::from(pod.gpu.total_milli())) >= self.headroom_milli;
        fast_ok && self.slots.allows(cluster, pod, placement)
    }
}

/// Where the reserve lets a pod go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserved {
    /// Here.
    Place(Placement),
    /// It fits, but only into the headroom: it waits.
    Held,
    /// It fits nowhere.
    Unplaced,
}

impl Reserve {
    /// Decides where `pod` goes under the reserve with the caller's `decide`: off the fast models if it fits
    /// there, else anywhere, so long as the placement leaves the reserve's headroom; a held-off pod that would
    /// eat into it waits ([`Reserved::Held`]).
    pub fn decide_with(
        &self,
        cluster: &Cluster,
        pod: &PodRequest,
        decide: &mut dyn FnMut(&PodRequest) -> Option<Placement>,
    ) -> Reserved {
        if self.exempt(pod) {
            return decide(pod).map_or(Reserved::Unplaced, Reserved::Place);
        }
        let mut outcome = Reserved::Unplaced;
        for asked in self.steer(pod).iter().chain([pod]) {
            match decide(asked) {
                Some(p) if self.allows(cluster, pod, &p) => return Reserved::Place(p),
                Some(_) => outcome = Reserved::Held,
                None => {}
            }
        }
        outcome
    }
}

/// Free GPU milli to keep for interactive services: for each (replicas wanted, GPU milli per replica),
/// `coefficient` × √(replicas wanted) replicas, rounded up — the square-root safety margin of a queue served
/// by that many servers.
pub fn headroom_milli(coefficient: f64, services: impl IntoIterator<Item = (u32, u32)>) -> u64 {
    services
        .into_iter()
        .map(|(replicas, milli)| (coefficient * f64::from(replicas).sqrt()).ceil().max(0.0) as u64 * u64::from(milli))
        .sum()
}

impl Engine {
    /// [`Reserve::decide_with`] with this engine's own decision.
    pub fn decide_reserving(&mut self, cluster: &Cluster, pod: &PodRequest, reserve: &Reserve) -> Decision {
        let mut last = None;
        let mut decide = |asked: &PodRequest| match self.decide(cluster, asked) {
            Decision::Place(p) => Some(p),
            unschedulable => {
                last = Some(unschedulable);
                None
            }
        };
        match reserve.decide_with(cluster, pod, &mut decide) {
            Reserved::Place(p) => Decision::Place(p),
            Reserved::Held | Reserved::Unplaced => last.unwrap_or_else(|| Decision::Unschedulable(Default::default())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpuplane_core::{GpuRequest, Pod};

    fn cluster() -> Cluster {
        Cluster::new(&[crate::test_nodes::gpu_node("a-fast", 2, "G3"), crate::test_nodes::gpu_node("b-slow", 2, "T4")])
            .unwrap()
    }

    fn pod(c: &Cluster, priority: i32) -> PodRequest {
        let mut p = c.request(&Pod::with_requests("p", 1000, 0, GpuRequest { count: 1, milli_per_gpu: 1000 }));
        p.priority = priority;
        p
    }

    fn engine() -> Engine {
        Engine::new(crate::EngineConfig {
            policy: crate::Policy::BestFit,
            target: None,
            seed: 1,
            tie_break: crate::TieBreak::LowestName,
        })
        .unwrap()
    }

    #[test]
    fn batch_goes_off_the_fast_models_while_it_fits_elsewhere_and_keeps_the_headroom() {
        let mut c = cluster();
        let mut reserve = Reserve::new(&c, &["G3".to_owned()], 1000);
        reserve.set_headroom(1000);
        let mut e = engine();
        let batch = pod(&c, 0);
        // "a-fast" sorts first, yet batch goes to the T4s while they have room.
        for _ in 0..2 {
            let Decision::Place(p) = e.decide_reserving(&c, &batch, &reserve) else { panic!("fits on b-slow") };
            assert_eq!(p.node, 1);
            c.bind(&batch, &p).unwrap();
        }
        // Then it backfills one G3 and leaves the other free: the headroom of one whole GPU.
        let Decision::Place(p) = e.decide_reserving(&c, &batch, &reserve) else { panic!("backfills a G3") };
        assert_eq!(p.node, 0);
        c.bind(&batch, &p).unwrap();
        assert!(matches!(e.decide_reserving(&c, &batch, &reserve), Decision::Unschedulable(_)));
        // A replica (priority 1000) is not held off.
        assert!(matches!(e.decide_reserving(&c, &pod(&c, 1000), &reserve), Decision::Place(_)));
    }

    #[test]
    fn a_reserve_of_nothing_changes_nothing() {
        let c = cluster();
        let mut e = engine();
        let batch = pod(&c, 0);
        assert_eq!(e.decide_reserving(&c, &batch, &Reserve::none()), e.decide(&c, &batch));
        let mut empty = Reserve::new(&c, &[], 1000);
        empty.set_headroom(4000);
        assert_eq!(e.decide_reserving(&c, &batch, &empty), e.decide(&c, &batch));
    }
}
