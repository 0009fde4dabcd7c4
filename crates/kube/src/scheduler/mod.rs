//! The secondary scheduler for pods with `schedulerName: gpuplane`, as a pure state machine: watch
//! events go in ([`Scheduler::pod_applied`], [`Scheduler::pod_deleted`], [`Scheduler::rebuild`]),
//! actions come out ([`Scheduler::next`]: bind a pod, or evict victims for a preemptor), and their
//! outcomes go back in. [`run`] drives it against the API server; tests drive it directly.
//!
//! With a window ([`WindowConfig`]), pods are placed in cycles: once `pods` are ready, or the first of
//! them has waited `wait`, the highest-priority ready pods (at most `pods`) are placed jointly by
//! [`Engine::decide_window`]. Pods naming a model are placed one at a time, with model locality.

pub mod budget;
mod filtering;
pub mod leader;
pub mod preempt;
pub mod queue;
pub mod run;
pub mod serving;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gpuplane_place::{Bandwidth, ClusterError, Decision, Engine, GpuShare, Placement, PodRequest, Reserved, Step};
use k8s_openapi::api::core::v1 as api;

use crate::assignment;
use crate::extender::{BindFailure, BindTarget};
use crate::fit::{self, Incoming, ScoreWeights};
use crate::inventory::{self, Inventories, ModelRef};
use crate::metrics::Metrics;
use crate::objects;
use crate::snapshot::{Snapshot, Warning};
use budget::Budget;
pub use filtering::feasible_nodes;
use preempt::Victim;
use queue::{QueueConfig, Queued, SchedulingQueue};
pub use serving::ServingConfig;

/// Settings of the scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// The `spec.schedulerName` this scheduler serves.
    pub scheduler_name: String,
    /// Backoff settings.
    pub queue: QueueConfig,
    /// Whether higher-priority pods may evict lower-priority ones.
    pub preemption: bool,
    /// How long a preemptor waits for its victims to go before it may preempt again.
    pub preemption_timeout: Duration,
    /// How much a pod's model locality counts against the policy's score.
    pub locality: LocalityConfig,
    /// Scheduling cycles: how many pending pods are placed jointly, and how long the first waits.
    pub window: WindowConfig,
    /// Weights of kube-scheduler's preference scores against the GPU policy's.
    pub scores: ScoreWeights,
    /// gpuplane's serving policy (off unless a serving priority is set) and the choice of victims.
    pub serving: ServingConfig,
}

/// Scheduling cycles. A cycle takes the highest-priority ready pods, at most `pods` of them, as soon as
/// `pods` are ready or the first ready pod has waited `wait`; a higher-priority pod joins the cycle being
/// gathered ahead of the others, so it never waits for a lower-priority window to be placed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowConfig {
    /// Most pods placed jointly; 1 places each pod as it comes (no cycles).
    pub pods: usize,
    /// Longest a ready pod waits for its cycle to fill.
    pub wait: Duration,
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig { pods: 1, wait: Duration::ZERO }
    }
}

/// The locality term: for a pod naming its model (`gpuplane.io/model`), nodes whose cache agent holds the
/// model score higher, by the expected time to load it (see `gpuplane_place::locality`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LocalityConfig {
    /// Weight of locality in the combined score, 0 (policy alone) to 1.
    pub weight: f64,
    /// Read rates of the local disk, a peer and the origin.
    pub bandwidth: Bandwidth,
}

impl Default for LocalityConfig {
    /// Weight 0.3: a node holding the model wins over a node the policy scores up to 43 points higher
    /// (0.3 × 100 / 0.7), so the cache decides between near-equal placements and fragmentation decides
    /// otherwise.
    fn default() -> Self {
        LocalityConfig { weight: 0.3, bandwidth: Bandwidth::default() }
    }
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            scheduler_name: "gpuplane".to_owned(),
            queue: QueueConfig::default(),
            preemption: true,
            preemption_timeout: Duration::from_secs(120),
            locality: LocalityConfig::default(),
            window: WindowConfig::default(),
            scores: ScoreWeights::default(),
            serving: ServingConfig::default(),
        }
    }
}

/// What the scheduler wants done in the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write the GPU assignment annotation, then bind (see [`crate::Binder`]).
    Bind(BindTarget),
    /// Evict these pods (Eviction API, so the API server checks disruption budgets again) to make room
    /// for `preemptor` on `node`.
    Evict {
        /// `namespace/name` of the pod that will take the room.
        preemptor: String,
        /// Node name.
        node: String,
        /// The pods to evict.
        victims: Vec<Victim>,
    },
    /// Tell the pod's owner why it waits: condition `PodScheduled=False`, reason `Unschedulable`, as
    /// kube-scheduler reports it (`kubectl describe pod` shows it). Sent when the reason changes.
    ReportUnschedulable {
        /// `namespace/name`.
        pod: String,
        /// The pod's UID (the event names it).
        uid: String,
        /// Such as "0/12 nodes are available: 4 Insufficient cpu, 8 node(s) had untolerated taint(s)."
        message: String,
    },
}

/// A pending pod of ours.
#[derive(Debug, Clone)]
struct Pending {
    pod: gpuplane_core::Pod,
    /// What it asks of the cluster as the snapshot reads it.
    request: PodRequest,
    uid: String,
    /// The model it serves, if it names one.
    model: Option<ModelRef>,
    /// The last reason reported on the pod.
    reported: Option<String>,
    /// False for `preemptionPolicy: Never`: the pod waits for room and never evicts anyone.
    may_preempt: bool,
    /// The pod as Kubernetes' filters and scores read it.
    incoming: Arc<Incoming>,
}

/// A placement the scheduler made that the watch has not shown yet.
#[derive(Debug, Clone)]
struct InFlight {
    uid: String,
    node: String,
    request: PodRequest,
    gpus: Vec<GpuShare>,
    /// The pod as it was queued, to queue it again if the bind fails.
    pending: Pending,
    attempts: u32,
}

/// Victims being evicted for a preemptor.
#[derive(Debug, Clone)]
struct Preempting {
    victims: Vec<String>,
    since: Instant,
}

/// The scheduler's state: the snapshot, the queue, bindings in flight and preemptions under way.
pub struct Scheduler {
    config: SchedulerConfig,
    snapshot: Snapshot,
    engine: Engine,
    queue: SchedulingQueue,
    pending: HashMap<String, Pending>,
    in_flight: HashMap<String, InFlight>,
    preempting: HashMap<String, Preempting>,
    /// Pods refused for constraints gpuplane does not evaluate, by key: the UID told why.
    refused: HashMap<String, String>,
    /// Refusals not yet reported on the pod.
    refusals: Vec<(String, String, String)>,
    budgets: Vec<Budget>,
    inventories: Inventories,
    metrics: Arc<Metrics>,
    /// Actions of a cycle not handed out yet.
    actions: std::collections::VecDeque<Action>,
    /// When the cycle being gathered saw its first ready pod.
    gathering_since: Option<Instant>,
    /// Namespaces' labels and the cluster's volumes, for Kubernetes' filters (kept across rebuilds).
    namespaces: HashMap<String, fit::labels::Labels>,
    volumes: fit::volumes::Volumes,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("nodes", &self.snapshot.cluster().len())
            .field("queued", &self.queue.len())
            .field("in_flight", &self.in_flight.len())
            .field("preempting", &self.preempting.len())
            .finish()
    }
}

impl Scheduler {
    /// A scheduler over a snapshot of the cluster; call [`Self::rebuild`] or [`Self::pod_applied`]
    /// to queue the pending pods.
    pub fn new(snapshot: Snapshot, engine: Engine, config: SchedulerConfig, metrics: Arc<Metrics>) -> Self {
        Scheduler {
            queue: SchedulingQueue::new(config.queue),
            config,
            snapshot,
            engine,
            pending: HashMap::new(),
            in_flight: HashMap::new(),
            preempting: HashMap::new(),
            refused: HashMap::new(),
            refusals: Vec::new(),
            budgets: Vec::new(),
            inventories: Inventories::default(),
            metrics,
            actions: std::collections::VecDeque::new(),
            gathering_since: None,
            namespaces: HashMap::new(),
            volumes: Default::default(),
        }
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The engine (for its target workload).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Pods waiting to be scheduled.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// When the next waiting pod becomes ready, or the cycle being gathered is due, for the driver's timer.
    pub fn next_wakeup(&self) -> Option<Instant> {
        let cycle = self.gathering_since.map(|since| since + self.config.window.wait);
        match (self.queue.next_wakeup(), cycle) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Replaces what the nodes' cache agents hold.
    pub fn set_inventories(&mut self, inventories: Inventories) {
        self.inventories = inventories;
    }

    /// Replaces the namespaces' labels (affinity terms' namespace selectors read them).
    pub fn set_namespaces(&mut self, namespaces: &[api::Namespace]) {
        self.namespaces = namespaces
            .iter()
            .map(|n| (n.metadata.name.clone().unwrap_or_default(), n.metadata.labels.clone().unwrap_or_default()))
            .collect();
        self.snapshot.fit_mut().set_namespaces(self.namespaces.clone());
        self.queue.cluster_changed();
    }

    /// Replaces the claims, volumes and storage classes.
    pub fn set_volumes(&mut self, volumes: fit::volumes::Volumes) {
        self.volumes = volumes;
        self.snapshot.fit_mut().set_volumes(self.volumes.clone());
        self.queue.cluster_changed();
    }

    /// Replaces the disruption budgets.
    pub fn set_budgets(&mut self, budgets: Vec<Budget>) {
        self.budgets = budgets;
    }

    fn is_ours(&self, p: &api::Pod) -> bool {
        p.spec.as_ref().and_then(|s| s.scheduler_name.as_deref()) == Some(self.config.scheduler_name.as_str())
    }

    /// A Pod object was added or changed.
    pub fn pod_applied(&mut self, p: &api::Pod) -> Option<Warning> {
        let key = objects::pod_key(p);
        let node_name = p.spec.as_ref().and_then(|s| s.node_name.as_deref()).filter(|n| !n.is_empty());
        if objects::is_terminal(p) {
            self.unqueue(&key);
            self.in_flight.remove(&key);
            self.release(&key);
            return None;
        }
        if let Some(node_name) = node_name {
            self.unqueue(&key);
            if let Some(b) = self.in_flight.remove(&key) {
                if b.node == node_name && b.uid == p.metadata.uid.clone().unwrap_or_default() {
                    // Our binding, now confirmed by the watch; the snapshot already holds it. Keep the labels.
                    return None;
                }
                // Bound elsewhere (by someone else): drop our reservation, take theirs.
                self.release(&key);
            }
            return self.snapshot.observe_bound(p).1;
        }
        // Pending. A pod the snapshot holds with the same UID is one whose binding the watch has not shown yet.
        let uid = p.metadata.uid.clone().unwrap_or_default();
        let held =
            self.snapshot.binding(&key).is_some() && self.snapshot.bound_by_uid(&uid).is_some_and(|b| b.key == key);
        if !self.is_ours(p) || p.metadata.deletion_timestamp.is_some() || self.in_flight.contains_key(&key) || held {
            if p.metadata.deletion_timestamp.is_some() {
                self.unqueue(&key);
            }
            return None;
        }
        if p.spec.as_ref().and_then(|s| s.scheduling_gates.as_ref()).is_some_and(|g| !g.is_empty()) {
            // As kube-scheduler: a gated pod is not tried until its gates are removed (an update then queues it).
            self.unqueue(&key);
            return None;
        }
        let read = objects::pod(p).and_then(|pod| {
            let incoming = Incoming::of(p, pod.tolerations.clone()).map_err(|e| objects::ObjectError {
                kind: "Pod",
                name: key.clone(),
                field: "spec".to_owned(),
                value: String::new(),
                expected: e,
            })?;
            Ok((pod, inventory::model_of(p)?, incoming))
        });
        match read {
            Ok((pod, model, incoming)) => {
                self.queue.add(&key, pod.priority);
                if !self.pending.contains_key(&key) {
                    // An arrival: the gpuplane policy learns its workload from these.
                    self.engine.observe(&self.snapshot.cluster().request(&pod));
                }
                let reported = self.pending.remove(&key).and_then(|p| p.reported);
                // As kube-scheduler: the Priority admission plugin copies the PriorityClass's policy here.
                let may_preempt = p.spec.as_ref().and_then(|s| s.preemption_policy.as_deref()) != Some("Never");
                let incoming = Arc::new(incoming);
                let request = self.snapshot.cluster().request(&pod);
                self.pending.insert(key, Pending { pod, request, uid, model, reported, may_preempt, incoming });
                self.metrics.set_queue_depth(self.queue.len());
                None
            }
            Err(e) => {
                // Never silently pending: the pod is told what gpuplane cannot read, once per UID.
                self.unqueue(&key);
                if self.refused.get(&key) != Some(&uid) {
                    self.refused.insert(key.clone(), uid.clone());
                    self.refusals.push((key, uid, format!("gpuplane cannot schedule this pod: {e}")));
                }
                Some(Warning::Unreadable(e))
            }
        }
    }

    /// A Pod object was deleted.
    pub fn pod_deleted(&mut self, p: &api::Pod) {
        let key = objects::pod_key(p);
        self.refused.remove(&key);
        self.unqueue(&key);
        self.in_flight.remove(&key);
        self.preempting.remove(&key);
        self.release(&key);
    }

    fn unqueue(&mut self, key: &str) {
        self.queue.remove(key);
        self.pending.remove(key);
        self.metrics.set_queue_depth(self.queue.len());
    }

    /// Frees what a pod held: waiting pods may fit now.
    fn release(&mut self, key: &str) {
        if matches!(self.snapshot.forget(key), Ok(true)) {
            self.queue.cluster_changed();
            for p in self.preempting.values_mut() {
                p.victims.retain(|v| v != key);
            }
        }
    }

    /// Rebuilds the snapshot from every Node and Pod object (after a node changed, or a watch
    /// re-listed): placements in flight are kept, the queue is made to match the pending pods.
    pub fn rebuild(&mut self, nodes: &[api::Node], pods: &[api::Pod]) -> Result<Vec<Warning>, ClusterError> {
        let (mut snapshot, mut warnings) = Snapshot::build(nodes, pods)?;
        let present: HashMap<String, &api::Pod> = pods.iter().map(|p| (objects::pod_key(p), p)).collect();
        self.in_flight.retain(|key, b| {
            if !present.contains_key(key) || snapshot.binding(key).is_some() {
                return false;
            }
            let Some(node) = snapshot.node_id(&b.node) else { return false };
            let placement = Placement { node, gpus: b.gpus.clone() };
            let info = Some(b.pending.incoming.info());
            snapshot.assume_pod(key, &b.uid, b.request.clone(), placement, info).is_ok()
        });
        snapshot.fit_mut().set_namespaces(self.namespaces.clone());
        snapshot.fit_mut().set_volumes(self.volumes.clone());
        self.snapshot = snapshot;
        let stale: Vec<String> = self.pending.keys().filter(|k| !present.contains_key(*k)).cloned().collect();
        for key in stale {
            self.unqueue(&key);
        }
        // Pending pods join the queue in the order they were created (then by name), not in the order a
        // store hands them out, so the same pods always queue, and place, the same way.
        let mut by_creation: Vec<&api::Pod> = pods.iter().collect();
        by_creation.sort_by_cached_key(|p| (p.metadata.creation_timestamp.clone(), objects::pod_key(p)));
        for p in by_creation {
            let unbound = p.spec.as_ref().and_then(|s| s.node_name.as_deref()).is_none_or(str::is_empty);
            if unbound {
                warnings.extend(self.pod_applied(p));
            } else {
                self.unqueue(&objects::pod_key(p));
            }
        }
        let snapshot = &self.snapshot;
        for p in self.preempting.values_mut() {
            p.victims.retain(|v| snapshot.binding(v).is_some());
        }
        self.queue.cluster_changed();
        Ok(warnings)
    }

    /// The next action, if a pod is ready: pods are tried in priority order until one can be bound or
    /// can preempt; the ones that fit nowhere go back to wait.
    pub fn next(&mut self, now: Instant) -> Option<Action> {
        if let Some((pod, uid, message)) = self.refusals.pop() {
            return Some(Action::ReportUnschedulable { pod, uid, message });
        }
        if let Some(action) = self.actions.pop_front() {
            return Some(action);
        }
        if self.config.window.pods > 1 {
            return self.next_in_cycles(now);
        }
        while let Some(queued) = self.queue.pop(now) {
            let Some(mut pending) = self.pending.remove(&queued.key) else { continue };
            let started = Instant::now();
            if let Some(action) = self.attempt(&queued, &mut pending, now, started) {
                if let Action::Evict { .. } | Action::ReportUnschedulable { .. } = action {
                    // The pod waits: for its victims to go (being of higher priority it runs first then),
                    // or for room.
                    self.pending.insert(queued.key.clone(), pending);
                    self.queue.requeue_unschedulable(queued, now);
                }
                self.metrics.set_queue_depth(self.queue.len());
                return Some(action);
            }
            self.pending.insert(queued.key.clone(), pending);
            self.queue.requeue_unschedulable(queued, now);
        }
        self.metrics.set_queue_depth(self.queue.len());
        None
    }

    /// Window mode: gathers ready pods into a cycle and, once it is due, places them jointly; the
    /// cycle's actions are handed out one per call.
    fn next_in_cycles(&mut self, now: Instant) -> Option<Action> {
        let window = self.config.window;
        let ready = self.queue.ready(now);
        if ready == 0 {
            self.gathering_since = None;
            self.metrics.set_queue_depth(self.queue.len());
            return None;
        }
        let since = *self.gathering_since.get_or_insert(now);
        if ready < window.pods && now < since + window.wait {
            return None;
        }
        self.gathering_since = None;
        let started = Instant::now();
        let mut cycle: Vec<(Queued, Pending, filtering::Filtered)> = Vec::with_capacity(window.pods.min(ready));
        while cycle.len() < window.pods {
            let Some(queued) = self.queue.pop(now) else { break };
            let Some(mut pending) = self.pending.remove(&queued.key) else { continue };
            let filtered = filtering::filter(&self.snapshot, &pending.incoming);
            let joint = match &filtered {
                Ok(f) => f.engine_decides() && !pending.incoming.has_constraints(),
                Err(_) => false,
            };
            if !joint || (pending.model.is_some() && self.config.locality.weight > 0.0) {
                // Model locality, Kubernetes' constraints and preferences are weighed one pod at a time; such a
                // pod keeps its place in the order.
                let action = self.attempt(&queued, &mut pending, now, started);
                self.settle(queued, pending, action, now);
                continue;
            }
            cycle.push((queued, pending, filtered.unwrap_or_default()));
        }
        let requests: Vec<PodRequest> = cycle.iter().map(|(_, p, _)| self.snapshot.cluster().request(&p.pod)).collect();
        let decisions = self.engine.decide_window(self.snapshot.cluster(), &requests);
        for (((queued, mut pending, filtered), request), decision) in cycle.into_iter().zip(requests).zip(decisions) {
            // The joint placement weighed CPU, memory and GPUs; the pods placed before this one may have taken
            // what else the node had (pods, ports, other resources): the node is checked again.
            if let Decision::Place(p) = &decision
                && !matches!(self.snapshot.fit().filter(&pending.incoming).map(|v| v[p.node].is_ok()), Ok(true))
            {
                self.settle(queued, pending, None, now);
                continue;
            }
            let action = self.act(&queued, &mut pending, request, decision, None, &filtered, now, started);
            self.settle(queued, pending, action, now);
        }
        self.metrics.set_queue_depth(self.queue.len());
        self.actions.pop_front()
    }

    /// What follows an attempt, as [`Scheduler::next`] does it for one pod: a bind goes out; a pod that
    /// preempts or fits nowhere goes back to wait (its report or eviction goes out).
    fn settle(&mut self, queued: Queued, pending: Pending, action: Option<Action>, now: Instant) {
        let waits = !matches!(action, Some(Action::Bind(_)));
        if waits {
            self.pending.insert(queued.key.clone(), pending);
            self.queue.requeue_unschedulable(queued, now);
        }
        self.actions.extend(action);
    }

    fn attempt(&mut self, queued: &Queued, pending: &mut Pending, now: Instant, started: Instant) -> Option<Action> {
        let request = self.snapshot.cluster().request(&pending.pod);
        let filtered = match filtering::filter(&self.snapshot, &pending.incoming) {
            Ok(f) => f,
            Err(why) => {
                // No node can take the pod whatever is evicted (a missing claim, a refusal): it is told why.
                self.metrics.observe_decision("unschedulable", started.elapsed().as_secs_f64());
                let message = filtering::refusal(self.snapshot.cluster().len(), &why);
                return self.report(queued, pending, message);
            }
        };
        let weight = self.config.locality.weight;
        let locality = pending
            .model
            .as_ref()
            .filter(|_| weight > 0.0)
            .and_then(|m| self.inventories.locality(m, &self.snapshot, self.config.locality.bandwidth));
        let serving = &self.config.serving;
        let reserve = serving
            .is_batch(&request)
            .then(|| serving.reserve(&self.snapshot, replicas(&self.snapshot, &self.pending)));
        let may_preempt = self.may_preempt_now(&queued.key, pending.may_preempt, now);
        let cluster = self.snapshot.cluster();
        let (fit, scores, engine) = (self.snapshot.fit(), &self.config.scores, &mut self.engine);
        let mut last: Option<Decision> = None;
        let mut explanation = None;
        // The policy's decision for a request (the pod's own, or narrowed to some GPU models), among the nodes
        // Kubernetes' filters passed.
        let mut decide = |request: &PodRequest| -> Option<Placement> {
            let (decision, why) = if filtered.candidates.is_empty() {
                (Decision::Unschedulable(Default::default()), None)
            } else if let Some(l) = &locality {
                engine.decide_with_locality_among(cluster, request, &filtered.candidates, l, weight)
            } else {
                match fit.scores(&pending.incoming, &filtered.candidates, scores) {
                    // The engine's own filters reject every node Kubernetes' did (CPU, memory, GPUs, taints,
                    // selector): it decides over the whole cluster exactly as the simulator does, and its choice
                    // is kept if Kubernetes' filters passed it (they count pods the engine cannot read, too).
                    None if filtered.engine_decides() => match engine.decide(cluster, request) {
                        Decision::Place(p) if filtered.candidates.binary_search(&p.node).is_ok() => {
                            (Decision::Place(p), None)
                        }
                        _ => (engine.decide_among(cluster, request, &filtered.candidates, None, scores.gpu), None),
                    },
                    extra => {
                        let extra = extra.as_deref();
                        (engine.decide_among(cluster, request, &filtered.candidates, extra, scores.gpu), None)
                    }
                }
            };
            match decision {
                Decision::Place(p) => {
                    explanation = why;
                    Some(p)
                }
                unschedulable => {
                    last = Some(unschedulable);
                    None
                }
            }
        };
        let wanted = |d: Option<Placement>, last: Option<Decision>| match d {
            Some(p) => Decision::Place(p),
            None => last.unwrap_or_else(|| Decision::Unschedulable(Default::default())),
        };
        let decision = if serving.is_interactive(&request) {
            let fast = serving.fast_request(&self.snapshot, &request);
            let steps = serving.steps(may_preempt);
            let busy = being_evicted(&self.preempting);
            let candidates = preempt::Candidates {
                budgets: &self.budgets,
                exclude: &busy,
                allowed: &filtered.preemptible,
                now_s: epoch_s(),
                choice: serving.victims,
            };
            let step = candidates.with(&self.snapshot, &request, |tenancy, preemption, pods| {
                match steps.step(cluster, tenancy, &request, fast.as_ref(), &mut decide, preemption) {
                    Step::Place(p) => Ok(p),
                    Step::Evict { node, victims, .. } => Err(Some(preempt::plan_of(node, &victims, pods))),
                    Step::Wait => Err(None),
                }
            });
            match step {
                Ok(p) => Decision::Place(p),
                Err(Some(plan)) => {
                    self.metrics.observe_decision("preempting", started.elapsed().as_secs_f64());
                    return Some(self.start_preemption(&queued.key, plan, now));
                }
                Err(None) => {
                    let counts = match last {
                        Some(Decision::Unschedulable(c)) => c,
                        _ => Default::default(),
                    };
                    self.metrics.observe_decision("unschedulable", started.elapsed().as_secs_f64());
                    let message = filtering::message(self.snapshot.cluster().len(), &filtered, Some(&counts));
                    return self.report(queued, pending, message);
                }
            }
        } else if let Some(reserve) = &reserve {
            let placed = match reserve.decide_with(cluster, &request, &mut decide) {
                Reserved::Place(p) => Some(p),
                Reserved::Unplaced => None,
                Reserved::Held => {
                    // It fits, but only into the headroom kept for interactive replicas: it waits, told so.
                    self.metrics.observe_decision("unschedulable", started.elapsed().as_secs_f64());
                    let message = format!(
                        "gpuplane keeps the free GPUs of the fast models ({}) for interactive replicas (serving \
                     headroom); this batch pod waits for another GPU.",
                        serving.fast_models.join(", ")
                    );
                    return self.report(queued, pending, message);
                }
            };
            wanted(placed, last)
        } else {
            let placed = decide(&request);
            wanted(placed, last)
        };
        self.act(queued, pending, request, decision, explanation, &filtered, now, started)
    }

    /// Tells the pod why it waits, unless that is what it was last told.
    fn report(&mut self, queued: &Queued, pending: &mut Pending, message: String) -> Option<Action> {
        tracing::debug!(pod = %queued.key, reason = %message, "Pod does not fit; waiting for a cluster change.");
        if pending.reported.as_deref() == Some(message.as_str()) {
            return None;
        }
        pending.reported = Some(message.clone());
        Some(Action::ReportUnschedulable { pod: queued.key.clone(), uid: pending.uid.clone(), message })
    }

    /// Turns a decision into an action: a placement is assumed in the snapshot and bound; a pod that
    /// fits nowhere may preempt, or is told why it waits.
    #[allow(clippy::too_many_arguments)]
    fn act(
        &mut self,
        queued: &Queued,
        pending: &mut Pending,
        request: PodRequest,
        decision: Decision,
        explanation: Option<gpuplane_place::Explanation>,
        filtered: &filtering::Filtered,
        now: Instant,
        started: Instant,
    ) -> Option<Action> {
        let key = queued.key.as_str();
        match decision {
            Decision::Place(placement) => {
                if let Some(why) = explanation {
                    tracing::info!(pod = key, model = pending.model.as_ref().map(|m| m.name.as_str()), "{why}");
                }
                let node = self.snapshot.node_name(placement.node).to_owned();
                let gpus = placement.gpus.clone();
                let assignment_uuids = assignment::format_uuids(&gpus, self.snapshot.gpu_uuids(placement.node));
                let info = Some(pending.incoming.info());
                if self.snapshot.assume_pod(key, &pending.uid, request.clone(), placement, info).is_err() {
                    // Cannot happen for a placement the engine just made on this snapshot; treat as no room.
                    return None;
                }
                self.preempting.remove(key);
                self.metrics.observe_decision("placed", started.elapsed().as_secs_f64());
                let (namespace, name) = key.split_once('/').unwrap_or(("default", key));
                let target = BindTarget {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    uid: pending.uid.clone(),
                    node: node.clone(),
                    assignment: assignment::format(&gpus),
                    assignment_uuids,
                };
                self.in_flight.insert(
                    key.to_owned(),
                    InFlight {
                        uid: pending.uid.clone(),
                        node,
                        request,
                        gpus,
                        pending: Pending { reported: None, ..pending.clone() },
                        attempts: queued.attempts,
                    },
                );
                Some(Action::Bind(target))
            }
            Decision::Unschedulable(counts) => {
                let action = self.try_preempt(key, &request, pending.may_preempt, &filtered.preemptible, now);
                let result = if action.is_some() { "preempting" } else { "unschedulable" };
                self.metrics.observe_decision(result, started.elapsed().as_secs_f64());
                if action.is_some() {
                    return action;
                }
                let message = filtering::message(self.snapshot.cluster().len(), filtered, Some(&counts));
                self.report(queued, pending, message)
            }
        }
    }

    /// Starts a preemption for `key` unless one is under way or the pod may not preempt
    /// (`preemptionPolicy: Never`); the preemptor waits in the queue (it is put back by the caller) and runs
    /// first once its victims are gone.
    fn try_preempt(
        &mut self,
        key: &str,
        request: &PodRequest,
        may_preempt: bool,
        preemptible: &[bool],
        now: Instant,
    ) -> Option<Action> {
        if !self.may_preempt_now(key, may_preempt, now) {
            return None;
        }
        let busy = being_evicted(&self.preempting);
        let candidates = preempt::Candidates {
            budgets: &self.budgets,
            exclude: &busy,
            allowed: preemptible,
            now_s: epoch_s(),
            choice: self.config.serving.victims,
        };
        let plan = candidates.plan(&self.snapshot, request)?;
        Some(self.start_preemption(key, plan, now))
    }

    /// Whether `key` may start a preemption now: preemption is on, the pod's policy allows it, and no
    /// preemption of its own is under way (its victims still going, for up to the preemption timeout).
    fn may_preempt_now(&self, key: &str, may_preempt: bool, now: Instant) -> bool {
        let under_way = self
            .preempting
            .get(key)
            .is_some_and(|p| !p.victims.is_empty() && now.duration_since(p.since) < self.config.preemption_timeout);
        self.config.preemption && may_preempt && !under_way
    }

    /// Records `key`'s preemption under way and the evictions to make.
    fn start_preemption(&mut self, key: &str, plan: preempt::Plan, now: Instant) -> Action {
        let node = self.snapshot.node_name(plan.node).to_owned();
        self.preempting.insert(
            key.to_owned(),
            Preempting { victims: plan.victims.iter().map(|v| v.key.clone()).collect(), since: now },
        );
        self.metrics.observe_preemption(plan.victims.len());
        Action::Evict { preemptor: key.to_owned(), node, victims: plan.victims }
    }

    /// The outcome of an [`Action::Bind`]. On success the reservation stays until the watch shows the
    /// pod bound; on failure it is released, and the pod is queued again unless it is gone or was bound
    /// by someone else.
    pub fn bind_finished(&mut self, key: &str, result: Result<(), BindFailure>, now: Instant) {
        let outcome = match &result {
            Ok(()) => "ok",
            Err(BindFailure::Gone(_)) => "gone",
            Err(BindFailure::Conflict(_)) => "conflict",
            Err(BindFailure::Other(_)) => "error",
        };
        self.metrics.observe_bind(outcome);
        let Err(failure) = result else { return };
        let Some(b) = self.in_flight.remove(key) else { return };
        let _ = self.snapshot.forget(key);
        tracing::warn!(pod = key, node = %b.node, error = %failure, "Binding failed; GPU reservation released.");
        if let BindFailure::Other(_) = failure {
            let priority = b.pending.pod.priority;
            self.pending.insert(key.to_owned(), b.pending);
            self.queue.requeue_after_error(Queued { key: key.to_owned(), priority, attempts: b.attempts }, now);
            self.metrics.set_queue_depth(self.queue.len());
        }
    }

    /// The outcome of evicting one victim of `preemptor`'s preemption. A refused eviction (a budget the
    /// API server enforces, say) ends the preemption, so the preemptor may look for another plan.
    pub fn eviction_finished(&mut self, preemptor: &str, victim: &str, result: Result<(), BindFailure>) {
        match result {
            Ok(()) | Err(BindFailure::Gone(_)) => {}
            Err(e) => {
                tracing::warn!(pod = preemptor, victim, error = %e, "Eviction refused; preemption abandoned.");
                self.preempting.remove(preemptor);
                self.queue.cluster_changed();
            }
        }
    }
}

/// Pods already being evicted, as a set: a plan looks each pod of each node up in it.
fn being_evicted(preempting: &HashMap<String, Preempting>) -> std::collections::HashSet<&str> {
    preempting.values().flat_map(|p| p.victims.iter().map(String::as_str)).collect()
}

/// Seconds since the epoch, the clock pods' `status.startTime` is on (the work a victim has done).
fn epoch_s() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// The serving pods the headroom is counted from: bound ones, and those waiting.
fn replicas<'a>(
    snapshot: &'a Snapshot,
    pending: &'a HashMap<String, Pending>,
) -> impl Iterator<Item = serving::Replica<'a>> + 'a {
    let bound = (0..snapshot.cluster().len()).flat_map(|n| snapshot.pods_on(n));
    let bound = bound.map(|p| serving::Replica { model: p.model.as_deref(), request: &p.request });
    let waiting = pending
        .values()
        .map(|p| serving::Replica { model: p.model.as_ref().map(|m| m.name.as_str()), request: &p.request });
    bound.chain(waiting)
}
