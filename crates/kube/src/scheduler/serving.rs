//! gpuplane's serving policy in the scheduler — the one serve-sim measures, through the same code
//! (`gpuplane_place::serving` and `reserve`): interactive replicas try the fast GPU models first, may claim a
//! fast GPU from young lower-priority pods, and preempt only when nothing fits; batch pods are kept off the
//! fast models while another GPU fits them, leaving a headroom sized from the replicas there are.

use std::collections::HashMap;
use std::time::Duration;

use gpuplane_place::reserve::headroom_milli;
use gpuplane_place::{PodRequest, Reserve, ServingSteps, VictimChoice};

use crate::snapshot::Snapshot;

/// Settings of the serving policy. With no `priority` every pod is placed as kube-scheduler's steps
/// would place it (where it fits, preempting only when it fits nowhere); victims are still chosen by
/// `victims`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServingConfig {
    /// Pods at or above this priority are serving replicas, exempt from the reserve; GPU pods below it
    /// (batch) are held off the fast models. `None`: no serving policy.
    pub priority: Option<i32>,
    /// Replicas at or above this priority are interactive: they prefer the fast models, may claim them, and
    /// the headroom is kept for them. Never below `priority`.
    pub interactive_priority: i32,
    /// The fast GPU models (node GPU product names).
    pub fast_models: Vec<String>,
    /// Headroom on the fast models: `headroom` × √(interactive replicas) replicas per service.
    pub headroom: f64,
    /// Lower-priority pods younger than this are claimed off a fast GPU for an interactive replica before it
    /// settles for a slower one; zero never claims.
    pub claim_age: Duration,
    /// How victims are chosen and nodes ranked when preempting.
    pub victims: VictimChoice,
}

impl Default for ServingConfig {
    /// No serving policy; victims by the GPU-seconds they would lose.
    fn default() -> Self {
        ServingConfig {
            priority: None,
            interactive_priority: 0,
            fast_models: Vec::new(),
            headroom: 1.0,
            claim_age: Duration::from_secs(600),
            victims: VictimChoice::LeastWorkLost,
        }
    }
}

/// One serving pod as the headroom counts it: the model it names and its request.
pub(super) struct Replica<'a> {
    pub model: Option<&'a str>,
    pub request: &'a PodRequest,
}

impl ServingConfig {
    /// True when the policy is on and `pod` is a GPU pod it holds off the fast models.
    pub(super) fn is_batch(&self, pod: &PodRequest) -> bool {
        self.priority.is_some_and(|p| pod.priority < p) && !pod.gpu.is_none()
    }

    /// True when the policy is on and `pod` is an interactive replica.
    pub(super) fn is_interactive(&self, pod: &PodRequest) -> bool {
        self.priority.is_some_and(|p| pod.priority >= p.max(self.interactive_priority)) && !pod.gpu.is_none()
    }

    /// The steps a replica takes; `preemption` says whether it may evict at all now.
    pub(super) fn steps(&self, preemption: bool) -> ServingSteps {
        ServingSteps { preemption, claim_age_s: self.claim_age.as_secs_f64() }
    }

    /// `pod` narrowed to the fast models it accepts, for an interactive replica to try first; `None` when the
    /// policy is off or that does not narrow where it may go.
    pub(super) fn fast_request(&self, snapshot: &Snapshot, pod: &PodRequest) -> Option<PodRequest> {
        Reserve::new(snapshot.cluster(), &self.fast_models, self.priority?).prefer(pod)
    }

    /// The reserve as the cluster stands, its headroom from the interactive `replicas` (bound and pending):
    /// per service (the model it names and its GPU size), `headroom` × √(replicas) replicas' worth of GPU.
    pub(super) fn reserve<'a>(&self, snapshot: &Snapshot, replicas: impl Iterator<Item = Replica<'a>>) -> Reserve {
        let Some(priority) = self.priority else { return Reserve::none() };
        let mut reserve = Reserve::new(snapshot.cluster(), &self.fast_models, priority);
        let mut services: HashMap<(Option<&str>, u32), u32> = HashMap::new();
        for r in replicas.filter(|r| self.is_interactive(r.request)) {
            *services.entry((r.model, r.request.gpu.total_milli())).or_default() += 1;
        }
        reserve.set_headroom(headroom_milli(self.headroom, services.into_iter().map(|((_, milli), n)| (n, milli))));
        reserve
    }
}
