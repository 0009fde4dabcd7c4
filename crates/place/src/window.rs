//! Joint placement of a window of pending pods. The engine places the window several ways on scratch
//! copies of the snapshot — in arrival order (what one pod at a time would do), hardest first, and with
//! only the GPU-sharing pods largest first — and keeps the assignment that places the most GPU milli and
//! then leaves the least fragmentation by the policy's own measure; one pass of re-placing each pod with
//! the rest of the window in view improves it further when it can. Pure like [`Engine::decide`]: the
//! caller's cluster is not changed, and the decisions bind in any order.

use std::cmp::Reverse;

use crate::cluster::{Cluster, ModelSet, NodeId, PodRequest};
use crate::engine::{Decision, Engine};
use crate::filter::RejectionCounts;

/// An order to place a window's pods in (indices into the window).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowOrder {
    /// As they arrived: one pod at a time, on the window's snapshot.
    Arrival,
    /// Hardest first: higher priority, then the largest GPU demand (first-fit decreasing: multi- and
    /// whole-GPU pods before the shares that fill around them), then the fewest acceptable GPU
    /// models, then more CPU, then arrival.
    Hardest,
    /// The GPU-sharing pods largest first in the places sharing pods hold in the arrival order; every
    /// other pod where it arrived. Priority is kept: shares are reordered within one priority only.
    SharesDecreasing,
}

impl WindowOrder {
    /// Every order, in the order they are tried (the first wins a tie).
    pub const ALL: [WindowOrder; 3] = [WindowOrder::Arrival, WindowOrder::SharesDecreasing, WindowOrder::Hardest];

    /// The window's pod indices in this order.
    pub fn of(self, pods: &[PodRequest]) -> Vec<usize> {
        let mut order: Vec<usize> = (0..pods.len()).collect();
        match self {
            WindowOrder::Arrival => order.sort_by_key(|&i| (Reverse(pods[i].priority), i)),
            WindowOrder::Hardest => order.sort_by_key(|&i| {
                let p = &pods[i];
                let models = match p.models {
                    ModelSet::Any => u32::MAX,
                    ModelSet::Only(mask) => mask.count_ones(),
                };
                (Reverse(p.priority), Reverse(p.gpu.total_milli()), models, Reverse(p.cpu_milli), i)
            }),
            WindowOrder::SharesDecreasing => {
                order.sort_by_key(|&i| (Reverse(pods[i].priority), i));
                // Each maximal run of one priority: its sharing pods, largest first, take the run's
                // sharing slots.
                let mut start = 0;
                while start < order.len() {
                    let priority = pods[order[start]].priority;
                    let end = start + order[start..].iter().take_while(|&&i| pods[i].priority == priority).count();
                    let slots: Vec<usize> = (start..end).filter(|&k| pods[order[k]].gpu.is_sharing()).collect();
                    let mut shares: Vec<usize> = slots.iter().map(|&k| order[k]).collect();
                    shares.sort_by_key(|&i| (Reverse(pods[i].gpu.milli_per_gpu), i));
                    for (&k, i) in slots.iter().zip(shares) {
                        order[k] = i;
                    }
                    start = end;
                }
            }
        }
        order
    }
}

/// How a window's assignment is judged: GPU milli placed per priority, highest priority first, then the
/// fragmentation left.
type Score = (Vec<u64>, f64);

/// Whether `a` beats `b`: more milli placed at the highest priority where they differ (a window never
/// trades an important pod for more of the others), or as much everywhere with less fragmentation.
fn better(a: &Score, b: &Score) -> bool {
    a.0 > b.0 || (a.0 == b.0 && a.1 < b.1 - 1e-9)
}

/// One way of placing a window, on its own scratch copy of the cluster.
struct Candidate {
    cluster: Cluster,
    decisions: Vec<Decision>,
    /// GPU milli placed per priority rank (0: the window's highest priority).
    placed: Vec<u64>,
    touched: Vec<NodeId>,
}

/// Each pod's priority rank in the window: 0 for the highest priority present, 1 for the next, ...; and
/// the number of ranks.
fn priority_ranks(pods: &[PodRequest]) -> (Vec<usize>, usize) {
    let mut levels: Vec<i32> = pods.iter().map(|p| p.priority).collect();
    levels.sort_unstable_by(|a, b| b.cmp(a));
    levels.dedup();
    let ranks = pods.iter().map(|p| levels.iter().position(|&l| l == p.priority).unwrap_or(0)).collect();
    (ranks, levels.len())
}

impl Engine {
    /// Decides where each pod of a window goes, jointly (see the module). Returns the decisions in the
    /// order of `pods`. The placements fit together, so the caller may bind them in any order; a pod
    /// that fits nowhere once the others are placed is unschedulable in this window. A window of one
    /// is [`Engine::decide`].
    pub fn decide_window(&mut self, cluster: &Cluster, pods: &[PodRequest]) -> Vec<Decision> {
        if let [pod] = pods {
            return vec![self.decide(cluster, pod)];
        }
        let hardest = WindowOrder::Hardest.of(pods);
        let mut orders: Vec<Vec<usize>> = Vec::with_capacity(WindowOrder::ALL.len());
        for order in WindowOrder::ALL.map(|o| if o == WindowOrder::Hardest { hardest.clone() } else { o.of(pods) }) {
            if !orders.contains(&order) {
                orders.push(order);
            }
        }
        let ranks = priority_ranks(pods);
        let mut candidates: Vec<Candidate> =
            orders.iter().map(|order| self.place_in_order(cluster, pods, &ranks, order)).collect();
        // Most GPU milli placed first; then the least fragmentation over every node any candidate
        // touched (the others are alike in all of them); the earlier order on a tie.
        let mut touched: Vec<NodeId> = candidates.iter().flat_map(|c| c.touched.iter().copied()).collect();
        touched.sort_unstable();
        touched.dedup();
        let mut best: Option<(usize, Score)> = None;
        for (k, c) in candidates.iter().enumerate() {
            let score = self.objective(c, &touched);
            if best.as_ref().is_none_or(|(_, b)| better(&score, b)) {
                best = Some((k, score));
            }
        }
        let k = best.map_or(0, |(k, _)| k);
        let chosen = candidates.swap_remove(k);
        // One pass of re-placement, kept only if it does better by the same measure.
        let improved = self.replace_each(&chosen, pods, &ranks.0, &hardest);
        touched.extend(improved.touched.iter().copied());
        touched.sort_unstable();
        touched.dedup();
        let (before, after) = (self.objective(&chosen, &touched), self.objective(&improved, &touched));
        if better(&after, &before) { improved.decisions } else { chosen.decisions }
    }

    /// GPU milli placed per priority, and the fragmentation (by the policy's measure; 0 for policies
    /// without one) summed over `nodes`, of a candidate's cluster.
    fn objective(&mut self, c: &Candidate, nodes: &[NodeId]) -> Score {
        let fragment = nodes.iter().map(|&n| self.node_fragment(&c.cluster.nodes()[n]).unwrap_or(0.0)).sum();
        (c.placed.clone(), fragment)
    }

    /// The window re-placed pod by pod in `order` (hardest first): each placed pod is taken out and placed again by the
    /// policy with every other pod of the window in place (where it was, if nothing better is found); then
    /// each pod that was not placed is tried once more.
    fn replace_each(&mut self, from: &Candidate, pods: &[PodRequest], ranks: &[usize], order: &[usize]) -> Candidate {
        let mut next = Candidate {
            cluster: from.cluster.clone(),
            decisions: from.decisions.clone(),
            placed: from.placed.clone(),
            touched: Vec::new(),
        };
        for &i in order {
            let Decision::Place(old) = next.decisions[i].clone() else { continue };
            if next.cluster.release(&pods[i], &old).is_err() {
                continue;
            }
            match self.decide(&next.cluster, &pods[i]) {
                Decision::Place(new) if next.cluster.bind(&pods[i], &new).is_ok() => {
                    next.touched.push(new.node);
                    next.decisions[i] = Decision::Place(new);
                }
                // Back where it was: the release just made that room.
                _ => {
                    if next.cluster.bind(&pods[i], &old).is_err() {
                        next.decisions[i] = Decision::Unschedulable(RejectionCounts::default());
                        next.placed[ranks[i]] -= u64::from(pods[i].gpu.total_milli());
                    }
                }
            }
        }
        for &i in order {
            if matches!(next.decisions[i], Decision::Place(_)) {
                continue;
            }
            let decision = self.decide(&next.cluster, &pods[i]);
            if let Decision::Place(p) = &decision
                && next.cluster.bind(&pods[i], p).is_ok()
            {
                next.touched.push(p.node);
                next.placed[ranks[i]] += u64::from(pods[i].gpu.total_milli());
                next.decisions[i] = decision;
            }
        }
        next
    }

    /// Places the window's pods one by one in `order` on a scratch copy of `cluster`.
    fn place_in_order(
        &mut self,
        cluster: &Cluster,
        pods: &[PodRequest],
        (ranks, levels): &(Vec<usize>, usize),
        order: &[usize],
    ) -> Candidate {
        let mut scratch = cluster.clone();
        let mut decisions = vec![Decision::Unschedulable(RejectionCounts::default()); pods.len()];
        let (mut placed, mut touched) = (vec![0u64; *levels], Vec::with_capacity(order.len()));
        for &i in order {
            let decision = self.decide(&scratch, &pods[i]);
            if let Decision::Place(placement) = &decision {
                // The placement passed the engine's own filters on `scratch`; were it refused, the pod is
                // reported as not placed rather than over-committed.
                if scratch.bind(&pods[i], placement).is_err() {
                    continue;
                }
                placed[ranks[i]] += u64::from(pods[i].gpu.total_milli());
                touched.push(placement.node);
            }
            decisions[i] = decision;
        }
        Candidate { cluster: scratch, decisions, placed, touched }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{EngineConfig, TieBreak};
    use crate::policy::Policy;
    use crate::test_nodes::gpu_node;
    use gpuplane_core::{GpuRequest, Node, Pod};

    fn node(name: &str, gpus: u8) -> Node {
        gpu_node(name, gpus, "T4")
    }

    fn share(cluster: &Cluster, name: &str, milli: u16) -> PodRequest {
        cluster.request(&Pod::with_requests(name, 1_000, 1 << 30, GpuRequest { count: 1, milli_per_gpu: milli }))
    }

    fn engine(policy: Policy) -> Engine {
        Engine::new(EngineConfig { policy, target: None, seed: 7, tie_break: TieBreak::LowestName })
            .expect("no target needed")
    }

    /// Binds each decision in the given order and returns the GPUs left with free milli.
    fn bind_all(cluster: &mut Cluster, pods: &[PodRequest], decisions: &[Decision], order: &[usize]) -> usize {
        for &i in order {
            if let Decision::Place(p) = &decisions[i] {
                cluster.bind(&pods[i], p).expect("window placements fit together");
            }
        }
        cluster.nodes().iter().flat_map(|n| n.gpus().iter()).filter(|&&f| f > 0).count()
    }

    #[test]
    fn a_window_packs_what_one_pod_at_a_time_cannot() {
        // Two GPUs. One at a time, best fit puts both 400s on one GPU and only one 600 fits after them;
        // the window places the 600s first and pairs each with a 400.
        let mut cluster = Cluster::new(&[node("a", 2)]).expect("one node");
        let pods: Vec<PodRequest> =
            [400, 400, 600, 600].iter().enumerate().map(|(i, &m)| share(&cluster, &format!("p{i}"), m)).collect();
        let mut one = engine(Policy::BestFit);
        let mut alone = cluster.clone();
        let mut placed_alone = 0;
        for pod in &pods {
            if let Decision::Place(p) = one.decide(&alone, pod) {
                alone.bind(pod, &p).expect("fits");
                placed_alone += 1;
            }
        }
        assert_eq!(placed_alone, 3);
        let decisions = engine(Policy::BestFit).decide_window(&cluster, &pods);
        assert!(decisions.iter().all(|d| matches!(d, Decision::Place(_))), "{decisions:?}");
        // Any binding order works, backwards included, and the cluster ends full.
        assert_eq!(bind_all(&mut cluster, &pods, &decisions, &[3, 2, 1, 0]), 0);
    }

    #[test]
    fn the_window_leaves_the_callers_cluster_alone_and_a_window_of_one_is_decide() {
        let cluster = Cluster::new(&[node("a", 1), node("b", 2)]).expect("two nodes");
        let pod = share(&cluster, "p", 300);
        let before = cluster.nodes().to_vec();
        let one = engine(Policy::Gpuplane).decide_window(&cluster, std::slice::from_ref(&pod));
        assert_eq!(one, vec![engine(Policy::Gpuplane).decide(&cluster, &pod)]);
        let pods = vec![pod.clone(), share(&cluster, "q", 800)];
        let _ = engine(Policy::Gpuplane).decide_window(&cluster, &pods);
        assert_eq!(cluster.nodes(), &before[..]);
    }

    #[test]
    fn priority_comes_before_size_and_a_full_window_refuses_the_rest() {
        // One GPU: the high-priority 300 is placed before the 900, which then no longer fits.
        let cluster = Cluster::new(&[node("a", 1)]).expect("one node");
        let mut big = share(&cluster, "big", 900);
        big.priority = 0;
        let mut urgent = share(&cluster, "urgent", 300);
        urgent.priority = 1000;
        let pods = vec![big, urgent];
        assert_eq!(WindowOrder::Hardest.of(&pods), vec![1, 0]);
        let decisions = engine(Policy::BestFit).decide_window(&cluster, &pods);
        assert!(matches!(decisions[1], Decision::Place(_)));
        assert!(matches!(decisions[0], Decision::Unschedulable(_)));
    }

    #[test]
    fn an_assignment_never_wins_by_trading_a_more_important_pod_for_more_of_the_others() {
        // Ranks: the window's highest priority first.
        let cluster = Cluster::new(&[node("a", 1)]).expect("one node");
        let mut pods = vec![share(&cluster, "b", 100), share(&cluster, "a", 100), share(&cluster, "c", 100)];
        (pods[0].priority, pods[1].priority, pods[2].priority) = (0, 1000, 0);
        assert_eq!(priority_ranks(&pods), (vec![1, 0, 1], 2));
        // 600 m of the important pods beats 900 m of the others with 400 m of important ones.
        assert!(better(&(vec![600, 0], 50.0), &(vec![400, 900], 0.0)));
        assert!(!better(&(vec![400, 900], 0.0), &(vec![600, 0], 50.0)));
        // Equal placements: less fragmentation wins; a tie keeps the earlier.
        assert!(better(&(vec![600, 100], 10.0), &(vec![600, 100], 20.0)));
        assert!(!better(&(vec![600, 100], 10.0), &(vec![600, 100], 10.0)));
    }

    #[test]
    fn the_order_is_largest_demand_then_fewest_models_then_arrival() {
        let cluster = Cluster::new(&[node("a", 8)]).expect("one node");
        let whole = |n: &str, count: u8| {
            cluster.request(&Pod::with_requests(n, 1_000, 1 << 30, GpuRequest { count, milli_per_gpu: 1000 }))
        };
        let mut pinned = share(&cluster, "pinned", 500);
        pinned.models = ModelSet::Only(1);
        let pods =
            vec![share(&cluster, "s", 500), whole("one", 1), pinned, whole("four", 4), share(&cluster, "t", 500)];
        assert_eq!(WindowOrder::Hardest.of(&pods), vec![3, 1, 2, 0, 4]);
        assert_eq!(WindowOrder::SharesDecreasing.of(&pods), vec![0, 1, 2, 3, 4]);
    }
}
