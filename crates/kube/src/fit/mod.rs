//! Kubernetes scheduling semantics for gpuplane's own scheduler: the filters of kube-scheduler's default
//! profile, with its reasons (NodeUnschedulable, TaintToleration, NodeAffinity, NodePorts, NodeResourcesFit
//! for every resource, VolumeBinding, PodTopologySpread, InterPodAffinity), and the scores of its
//! preferences. Pure and synchronous: the scheduler hands it the cluster's objects and asks, per pod,
//! which nodes are feasible and why the others are not; GPU-level fit is the engine's (`gpuplane_place`).

pub mod affinity;
pub mod labels;
pub mod requests;
mod score;
pub mod spread;
pub mod volumes;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use gpuplane_core::{Taint, TaintEffect, Toleration};
use gpuplane_place::NodeId;
use k8s_openapi::api::core::v1 as api;

use affinity::{AffinityState, PodTerms};
use labels::{Labels, NodeTerm, RequiredNode};
use requests::Resources;
pub use score::ScoreWeights;
use spread::{Constraint, NodeSample, SpreadState};
use volumes::Volumes;

/// Why a node cannot take a pod, in kube-scheduler's words (`kubectl describe pod` shows them counted).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// A fixed reason text.
    Text(&'static str),
    /// `Insufficient <resource>`.
    Insufficient(String),
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Text(t) => f.write_str(t),
            Reason::Insufficient(r) => write!(f, "Insufficient {r}"),
        }
    }
}

/// A node's verdict for a pod: feasible, or the reasons of the first filter it failed.
pub type Verdict = Result<(), Vec<Reason>>;

/// A host port a container asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HostPort {
    ip: String,
    protocol: String,
    port: i32,
}

impl HostPort {
    fn conflicts(&self, other: &HostPort) -> bool {
        self.port == other.port
            && self.protocol == other.protocol
            && (self.ip == other.ip || self.ip == "0.0.0.0" || other.ip == "0.0.0.0")
    }
}

/// What the filters need of a bound pod.
#[derive(Debug, Clone)]
pub struct PodInfo {
    namespace: String,
    labels: Labels,
    requests: Resources,
    ports: Vec<HostPort>,
    anti_affinity: Vec<affinity::Term>,
    terminating: bool,
}

impl PodInfo {
    /// Reads a pod; an error names the field (the API server validates these fields, so only an object
    /// gpuplane reads differently fails).
    pub fn of(p: &api::Pod) -> Result<PodInfo, String> {
        let spec = p.spec.as_ref().ok_or("the pod has no spec")?;
        let namespace = p.metadata.namespace.clone().unwrap_or_else(|| "default".to_owned());
        let labels = p.metadata.labels.clone().unwrap_or_default();
        let anti_affinity = PodTerms::of(spec, &namespace, &labels)?.anti_affinity;
        Ok(PodInfo {
            requests: requests::pod_requests(spec)?,
            ports: host_ports(spec),
            anti_affinity,
            terminating: p.metadata.deletion_timestamp.is_some(),
            namespace,
            labels,
        })
    }
}

/// A pod to place, with everything its filters and scores read compiled once.
#[derive(Debug, Clone)]
pub struct Incoming {
    name: String,
    info: Arc<PodInfo>,
    spec_volumes: api::PodSpec,
    tolerations: Vec<Toleration>,
    required_node: RequiredNode,
    preferred_node: Vec<(i32, NodeTerm)>,
    terms: PodTerms,
    spread: Vec<Constraint>,
    /// Set when gpuplane refuses the pod outright (DRA claims).
    refusal: Option<String>,
}

impl Incoming {
    /// Compiles a pending pod; `tolerations` as the Pod reader parsed them.
    pub fn of(p: &api::Pod, tolerations: Vec<Toleration>) -> Result<Incoming, String> {
        let info = PodInfo::of(p)?;
        let spec = p.spec.as_ref().ok_or("the pod has no spec")?;
        let refusal = spec.resource_claims.as_ref().filter(|c| !c.is_empty()).map(|claims| {
            let names: Vec<&str> = claims.iter().map(|c| c.name.as_str()).collect();
            format!(
                "gpuplane does not allocate DRA ResourceClaims (spec.resourceClaims: {}); it will not bind this pod \
                 with its claims unallocated — schedule it with kube-scheduler",
                names.join(", ")
            )
        });
        Ok(Incoming {
            name: p.metadata.name.clone().unwrap_or_default(),
            required_node: RequiredNode::of(spec)?,
            preferred_node: labels::preferred_node_terms(spec)?,
            terms: PodTerms::of(spec, &info.namespace, &info.labels)?,
            spread: spread::constraints(spec, &info.labels)?,
            spec_volumes: api::PodSpec { volumes: spec.volumes.clone(), ..Default::default() },
            tolerations,
            refusal,
            info: Arc::new(info),
        })
    }

    /// What the filters need of the pod once it is bound.
    pub fn info(&self) -> Arc<PodInfo> {
        Arc::clone(&self.info)
    }

    /// True when the pod has constraints or preferences beyond resources, selector and taints: pod
    /// (anti-)affinity, topology spread, preferred node affinity, host ports or volumes.
    pub fn has_constraints(&self) -> bool {
        self.has_preferences()
            || !self.terms.affinity.is_empty()
            || !self.terms.anti_affinity.is_empty()
            || !self.info.anti_affinity.is_empty()
            || !self.spread.is_empty()
            || !self.info.ports.is_empty()
            || self.spec_volumes.volumes.as_ref().is_some_and(|v| !v.is_empty())
    }

    /// True when the pod has preferences kube-scheduler scores (node or pod affinity, soft spread).
    fn has_preferences(&self) -> bool {
        !self.preferred_node.is_empty()
            || !self.terms.preferred.is_empty()
            || !self.terms.preferred_anti.is_empty()
            || self.spread.iter().any(|c| !c.hard)
    }
}

/// A node as the filters see it.
#[derive(Debug, Clone)]
struct NodeView {
    name: String,
    labels: Labels,
    taints: Vec<Taint>,
    unschedulable: bool,
    allocatable: Resources,
    requested: Resources,
    pods: u32,
    ports: Vec<HostPort>,
}

/// The cluster as kube-scheduler's filters see it, node ids as the engine's.
#[derive(Debug, Clone, Default)]
pub struct Fit {
    nodes: Vec<NodeView>,
    bound: HashMap<String, (NodeId, Arc<PodInfo>)>,
    /// The bound pods with required anti-affinity terms: the only ones a pod without affinity terms of its own
    /// must be checked against, so its decision stays linear in the nodes.
    with_anti_affinity: BTreeSet<String>,
    namespaces: HashMap<String, Labels>,
    volumes: Volumes,
}

impl Fit {
    /// The nodes, in the engine's order; their taints as the Node reader parsed them.
    /// A node whose allocatable cannot be read offers nothing.
    pub fn new(nodes: &[(&api::Node, Vec<Taint>)]) -> Fit {
        let views = nodes
            .iter()
            .map(|(n, taints)| {
                let spec = n.spec.as_ref();
                NodeView {
                    name: n.metadata.name.clone().unwrap_or_default(),
                    labels: n.metadata.labels.clone().unwrap_or_default(),
                    // The Node reader adds cordoning as a taint; NodeUnschedulable checks it apart.
                    taints: taints.iter().filter(|t| **t != Taint::unschedulable()).cloned().collect(),
                    unschedulable: spec.and_then(|s| s.unschedulable) == Some(true),
                    allocatable: requests::node_allocatable(n).unwrap_or_default(),
                    requested: Resources::default(),
                    pods: 0,
                    ports: Vec::new(),
                }
            })
            .collect();
        Fit { nodes: views, ..Fit::default() }
    }

    /// Replaces the namespaces' labels (namespace selectors of affinity terms read them).
    pub fn set_namespaces(&mut self, namespaces: HashMap<String, Labels>) {
        self.namespaces = namespaces;
    }

    /// Replaces the claims, volumes and classes.
    pub fn set_volumes(&mut self, volumes: Volumes) {
        self.volumes = volumes;
    }

    /// A pod bound to `node` (replacing any earlier record of the key).
    pub fn add(&mut self, key: &str, node: NodeId, info: Arc<PodInfo>) {
        self.remove(key);
        let Some(view) = self.nodes.get_mut(node) else { return };
        view.requested.plus(&info.requests);
        view.pods += 1;
        view.ports.extend(info.ports.iter().cloned());
        if !info.anti_affinity.is_empty() {
            self.with_anti_affinity.insert(key.to_owned());
        }
        self.bound.insert(key.to_owned(), (node, info));
    }

    /// A bound pod gone.
    pub fn remove(&mut self, key: &str) {
        let Some((node, info)) = self.bound.remove(key) else { return };
        self.with_anti_affinity.remove(key);
        let view = &mut self.nodes[node];
        view.requested.minus(&info.requests);
        view.pods = view.pods.saturating_sub(1);
        for p in &info.ports {
            if let Some(i) = view.ports.iter().position(|q| q == p) {
                view.ports.swap_remove(i);
            }
        }
    }

    /// Every node's verdict for the pod, or why no node can take it (a refusal, a missing claim).
    pub fn filter(&self, pod: &Incoming) -> Result<Vec<Verdict>, String> {
        if let Some(r) = &pod.refusal {
            return Err(r.clone());
        }
        let bound_volumes = self.volumes.prefilter(&pod.info.namespace, &pod.name, &pod.spec_volumes)?;
        let hard: Vec<&Constraint> = pod.spread.iter().filter(|c| c.hard).collect();
        let spread = (!hard.is_empty()).then(|| self.spread_state(pod, &hard));
        let affinity = self.affinity_state(pod);
        let verdicts = self
            .nodes
            .iter()
            .map(|n| {
                self.static_checks(pod, n)?;
                self.volumes.check(&bound_volumes, &n.name, &n.labels).map_err(|r| vec![Reason::Text(r)])?;
                if let Some(s) = &spread {
                    s.check(&hard, &n.labels).map_err(|r| vec![Reason::Text(r)])?;
                }
                affinity::check(&affinity, &pod.terms, &n.labels).map_err(|r| vec![Reason::Text(r)])
            })
            .collect();
        Ok(verdicts)
    }

    /// The checks that read only the node and the pod: unschedulable, taints, node affinity, ports, resources.
    fn static_checks(&self, pod: &Incoming, n: &NodeView) -> Verdict {
        let text = |t: &'static str| Err(vec![Reason::Text(t)]);
        if n.unschedulable && !pod.tolerations.iter().any(|t| t.tolerates(&Taint::unschedulable())) {
            return text("node(s) were unschedulable");
        }
        if !gpuplane_core::resources::tolerates_all(&pod.tolerations, &n.taints) {
            return text("node(s) had untolerated taint(s)");
        }
        if !pod.required_node.matches(&n.name, &n.labels) {
            return text("node(s) didn't match Pod's node affinity/selector");
        }
        if pod.info.ports.iter().any(|p| n.ports.iter().any(|q| p.conflicts(q))) {
            return text("node(s) didn't have free ports for the requested pod ports");
        }
        fits(&pod.info.requests, n)
    }

    fn spread_state(&self, pod: &Incoming, hard: &[&Constraint]) -> SpreadState {
        let mut matching = vec![vec![0i64; hard.len()]; self.nodes.len()];
        for (node, info) in self.bound.values() {
            for (i, c) in hard.iter().enumerate() {
                if spread::counts_pod(c, &info.namespace, &pod.info.namespace, info.terminating, &info.labels) {
                    matching[*node][i] += 1;
                }
            }
        }
        let samples = self.nodes.iter().zip(matching).map(|(n, matching)| NodeSample {
            labels: &n.labels,
            affinity_ok: pod.required_node.matches(&n.name, &n.labels),
            taints_ok: gpuplane_core::resources::tolerates_all(&pod.tolerations, &n.taints),
            matching,
        });
        SpreadState::build(hard, &pod.info.labels, samples)
    }

    fn affinity_state(&self, pod: &Incoming) -> AffinityState {
        let mut state = AffinityState::default();
        let none = Labels::new();
        let ns_labels = |ns: &str| self.namespaces.get(ns).unwrap_or(&none);
        let terms = &pod.terms;
        let domain = |node: NodeId, key: &str| self.nodes[node].labels.get(key).map(|v| (key.to_owned(), v.clone()));
        let all = !terms.affinity.is_empty() || !terms.anti_affinity.is_empty();
        let bound: Box<dyn Iterator<Item = &(NodeId, Arc<PodInfo>)>> = if all {
            Box::new(self.bound.values())
        } else {
            Box::new(self.with_anti_affinity.iter().filter_map(|k| self.bound.get(k)))
        };
        for (node, info) in bound {
            let node = *node;
            let labels = ns_labels(&info.namespace);
            if !terms.affinity.is_empty()
                && terms.affinity.iter().all(|t| t.matches(&info.namespace, labels, &info.labels))
            {
                for t in &terms.affinity {
                    if let Some(d) = domain(node, &t.topology_key) {
                        *state.affinity.entry(d).or_insert(0) += 1;
                    }
                }
            }
            for t in &terms.anti_affinity {
                if t.matches(&info.namespace, labels, &info.labels) {
                    state.anti.extend(domain(node, &t.topology_key));
                }
            }
            for t in &info.anti_affinity {
                if t.matches(&pod.info.namespace, ns_labels(&pod.info.namespace), &pod.info.labels) {
                    state.existing_anti.extend(domain(node, &t.topology_key));
                }
            }
        }
        let own = ns_labels(&pod.info.namespace);
        state.self_match = terms.affinity.iter().all(|t| t.matches(&pod.info.namespace, own, &pod.info.labels));
        state
    }

    /// Node names by id, for messages.
    pub fn node_name(&self, node: NodeId) -> &str {
        &self.nodes[node].name
    }

    /// How many nodes the filters see.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when there are no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// NodeResourcesFit: the pod count, then every resource the pod requests.
fn fits(request: &Resources, n: &NodeView) -> Verdict {
    let mut reasons = Vec::new();
    if i64::from(n.pods) + 1 > n.allocatable.get("pods") {
        reasons.push(Reason::Text("Too many pods"));
    }
    for (name, &amount) in &request.0 {
        if amount > 0 && amount > n.allocatable.get(name) - n.requested.get(name) {
            reasons.push(Reason::Insufficient(name.clone()));
        }
    }
    if reasons.is_empty() { Ok(()) } else { Err(reasons) }
}

/// The host ports of the containers that run for the pod's whole life (sidecars and regular containers).
fn host_ports(spec: &api::PodSpec) -> Vec<HostPort> {
    let sidecars = spec.init_containers.iter().flatten().filter(|c| c.restart_policy.as_deref() == Some("Always"));
    sidecars
        .chain(&spec.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.host_port.is_some_and(|h| h > 0))
        .map(|p| HostPort {
            ip: p.host_ip.clone().filter(|ip| !ip.is_empty()).unwrap_or_else(|| "0.0.0.0".to_owned()),
            protocol: p.protocol.clone().filter(|p| !p.is_empty()).unwrap_or_else(|| "TCP".to_owned()),
            port: p.host_port.unwrap_or(0),
        })
        .collect()
}

/// kube-scheduler's message for an unschedulable pod: "0/N nodes are available: " and each reason with the
/// number of nodes that gave it, sorted, then ".".
pub fn message(total: usize, reasons: &BTreeMap<String, u32>) -> String {
    let mut parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    format!("0/{total} nodes are available: {}.", parts.join(", "))
}

/// Taints of a node's spec, for tests and callers that do not run the Node reader.
pub fn spec_taints(n: &api::Node) -> Vec<Taint> {
    n.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|t| {
            Some(Taint {
                key: t.key.clone(),
                value: t.value.clone().unwrap_or_default(),
                effect: TaintEffect::parse(&t.effect)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
