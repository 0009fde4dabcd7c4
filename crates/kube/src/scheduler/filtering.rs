//! Between Kubernetes' filters (`crate::fit`) and the engine: which nodes a pending pod may go to, which of
//! them preemption may free, and the message kube-scheduler would write when none can take it.

use std::collections::BTreeMap;

use gpuplane_place::{NodeId, Rejection, RejectionCounts};

use crate::fit::{self, Incoming, Reason};
use crate::snapshot::Snapshot;

/// What Kubernetes' filters said of a pod.
#[derive(Debug, Clone, Default)]
pub(super) struct Filtered {
    /// Nodes that passed every filter, in id order.
    pub candidates: Vec<NodeId>,
    /// Whether every node passed (the engine may then decide over the whole cluster).
    pub all: bool,
    /// Per node: whether evicting lower-priority pods could make it feasible (it failed no filter, or only
    /// for CPU, memory or GPUs, which a preemption plan frees).
    pub preemptible: Vec<bool>,
    /// The reasons of the nodes that failed, kept for the message (counted only when one is written).
    pub failed: Vec<Vec<Reason>>,
}

impl Filtered {
    /// True when every node that failed, failed only for what the engine checks itself (CPU, memory, GPUs,
    /// taints, the node selector): the engine alone can then place the pod, jointly with others.
    pub fn engine_decides(&self) -> bool {
        let engine_checks = |r: &Reason| match r {
            Reason::Insufficient(name) => PREEMPTIBLE.contains(&&**name),
            Reason::Text(t) => ENGINE_TEXTS.contains(t),
        };
        self.failed.iter().flatten().all(engine_checks)
    }
}

/// Filter reasons the engine's own filters also give (cordoning is one of its taints).
const ENGINE_TEXTS: [&str; 3] = [
    "node(s) had untolerated taint(s)",
    "node(s) were unschedulable",
    "node(s) didn't match Pod's node affinity/selector",
];

/// Resources a preemption plan frees (it weighs victims' CPU, memory and GPU shares).
const PREEMPTIBLE: [&str; 4] = ["cpu", "memory", "nvidia.com/gpu", "gpuplane.io/gpu-milli"];

/// Runs the filters; `Err` is a reason no node can take the pod now (a missing claim, a refusal).
pub(super) fn filter(snapshot: &Snapshot, pod: &Incoming) -> Result<Filtered, String> {
    let verdicts = snapshot.fit().filter(pod)?;
    let mut out = Filtered { all: true, ..Filtered::default() };
    out.preemptible.reserve(verdicts.len());
    for (node, verdict) in verdicts.into_iter().enumerate() {
        match verdict {
            Ok(()) => {
                out.candidates.push(node);
                out.preemptible.push(true);
            }
            Err(reasons) => {
                out.all = false;
                let freed = |r: &Reason| matches!(r, Reason::Insufficient(name) if PREEMPTIBLE.contains(&&**name));
                out.preemptible.push(reasons.iter().all(freed));
                out.failed.push(reasons);
            }
        }
    }
    Ok(out)
}

/// The engine's rejection in kube-scheduler's words.
fn rejection_text(r: Rejection) -> &'static str {
    match r {
        Rejection::GpuModel => "node(s) had no GPU of a model the pod accepts",
        Rejection::NodeSelector => "node(s) didn't match Pod's node affinity/selector",
        Rejection::Taint => "node(s) had untolerated taint(s)",
        Rejection::Cpu => "Insufficient cpu",
        Rejection::Memory => "Insufficient memory",
        Rejection::Gpu => "Insufficient GPUs (GPU-level fit: too few GPUs with the free share asked)",
    }
}

/// "0/N nodes are available: …" from the filters' reasons and the engine's rejections of the candidates.
pub(super) fn message(total: usize, filtered: &Filtered, engine: Option<&RejectionCounts>) -> String {
    // A handful of distinct reasons over many nodes: counted in a short list, written out once each.
    let mut counted: Vec<(&Reason, u32)> = Vec::new();
    for r in filtered.failed.iter().flatten() {
        match counted.iter_mut().find(|(seen, _)| *seen == r) {
            Some((_, n)) => *n += 1,
            None => counted.push((r, 1)),
        }
    }
    let mut reasons: BTreeMap<String, u32> = BTreeMap::new();
    for (r, n) in counted {
        *reasons.entry(r.to_string()).or_insert(0) += n;
    }
    if let Some(counts) = engine {
        for r in Rejection::ALL {
            if counts.get(r) > 0 {
                *reasons.entry(rejection_text(r).to_owned()).or_insert(0) += counts.get(r);
            }
        }
    }
    fit::message(total, &reasons)
}

/// The message for a pod no node can take before any node is looked at.
pub(super) fn refusal(total: usize, why: &str) -> String {
    format!("0/{total} nodes are available: {why}.")
}

/// The nodes gpuplane's scheduler would choose among for a pending pod, by name — Kubernetes' filters, then
/// the engine's (GPU model and GPU-level fit) — or the message it would report when there are none. The
/// parity test compares these with the nodes kube-scheduler's own filters pass.
pub fn feasible_nodes(
    snapshot: &Snapshot,
    engine: &mut gpuplane_place::Engine,
    pod: &k8s_openapi::api::core::v1::Pod,
) -> Result<Vec<String>, String> {
    let total = snapshot.cluster().len();
    let domain = crate::objects::pod(pod).map_err(|e| e.to_string())?;
    let incoming = Incoming::of(pod, domain.tolerations.clone())?;
    let filtered = filter(snapshot, &incoming).map_err(|why| refusal(total, &why))?;
    let request = snapshot.cluster().request(&domain);
    let verdicts = engine.evaluate(snapshot.cluster(), &request, &filtered.candidates);
    let mut rejected = RejectionCounts::default();
    let mut feasible = Vec::new();
    for (&node, verdict) in filtered.candidates.iter().zip(verdicts) {
        match verdict {
            Ok(_) => feasible.push(snapshot.node_name(node).to_owned()),
            Err(r) => rejected.add(r),
        }
    }
    if feasible.is_empty() {
        return Err(message(total, &filtered, Some(&rejected)));
    }
    Ok(feasible)
}
