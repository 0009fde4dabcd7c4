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
    Insufficient(Arc<str>),
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
        Ok(PodInfo::with_terms(p)?.0)
    }

    /// The pod and all its affinity terms, compiled once (a pending pod needs both).
    fn with_terms(p: &api::Pod) -> Result<(PodInfo, PodTerms), String> {
        let spec = p.spec.as_ref().ok_or("the pod has no spec")?;
        let namespace = p.metadata.namespace.clone().unwrap_or_else(|| "default".to_owned());
        let labels = p.metadata.labels.clone().unwrap_or_default();
        let terms = PodTerms::of(spec, &namespace, &labels)?;
        let info = PodInfo {
            requests: requests::pod_requests(spec)?,
            ports: host_ports(spec),
            anti_affinity: terms.anti_affinity.clone(),
            terminating: p.metadata.deletion_timestamp.is_some(),
            namespace,
            labels,
        };
        Ok((info, terms))
    }
}

/// A pod to place, with everything its filters and scores read compiled once.
#[derive(Debug, Clone)]
pub struct Incoming {
    name: String,
    info: Arc<PodInfo>,
    volumes: Vec<api::Volume>,
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
        let (info, terms) = PodInfo::with_terms(p)?;
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
            terms,
            spread: spread::constraints(spec, &info.labels)?,
            // Only the volumes VolumeBinding reads: claims and generic ephemeral volumes.
            volumes: spec
                .volumes
                .iter()
                .flatten()
                .filter(|v| v.persistent_volume_claim.is_some() || v.ephemeral.is_some())
                .cloned()
                .collect(),
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
            || self.required_node.has_terms()
            || !self.terms.affinity.is_empty()
            || !self.terms.anti_affinity.is_empty()
            || !self.info.anti_affinity.is_empty()
            || !self.spread.is_empty()
            || !self.info.ports.is_empty()
            || !self.volumes.is_empty()
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
    /// Allocatable and requested amounts, indexed as [`Fit::resources`]; `pods` apart.
    allocatable: Vec<i64>,
    requested: Vec<i64>,
    pods_allowed: i64,
    pods: u32,
    ports: Vec<HostPort>,
}

/// The cluster as kube-scheduler's filters see it, node ids as the engine's.
#[derive(Debug, Clone, Default)]
pub struct Fit {
    nodes: Vec<NodeView>,
    /// The resource names some node has allocatable, in the order of the nodes' amount vectors.
    resources: Vec<Arc<str>>,
    resource_index: HashMap<String, usize>,
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
        let allocatable: Vec<Resources> =
            nodes.iter().map(|(n, _)| requests::node_allocatable(n).unwrap_or_default()).collect();
        let mut resource_index = HashMap::new();
        let mut resources: Vec<Arc<str>> = Vec::new();
        for name in allocatable.iter().flat_map(|a| a.0.keys()).filter(|k| *k != "pods") {
            resource_index.entry(name.clone()).or_insert_with(|| {
                resources.push(Arc::from(name.as_str()));
                resources.len() - 1
            });
        }
        let views = nodes
            .iter()
            .zip(&allocatable)
            .map(|((n, taints), alloc)| {
                let spec = n.spec.as_ref();
                let mut amounts = vec![0; resources.len()];
                for (name, v) in &alloc.0 {
                    if let Some(&i) = resource_index.get(name) {
                        amounts[i] = *v;
                    }
                }
                NodeView {
                    name: n.metadata.name.clone().unwrap_or_default(),
                    labels: n.metadata.labels.clone().unwrap_or_default(),
                    // The Node reader adds cordoning as a taint; NodeUnschedulable checks it apart.
                    taints: taints.iter().filter(|t| **t != Taint::unschedulable()).cloned().collect(),
                    unschedulable: spec.and_then(|s| s.unschedulable) == Some(true),
                    allocatable: amounts,
                    requested: vec![0; resources.len()],
                    pods_allowed: alloc.get("pods"),
                    pods: 0,
                    ports: Vec::new(),
                }
            })
            .collect();
        Fit { nodes: views, resources, resource_index, ..Fit::default() }
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
        for (name, v) in &info.requests.0 {
            if let Some(&i) = self.resource_index.get(name) {
                view.requested[i] = view.requested[i].saturating_add(*v);
            }
        }
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
        for (name, v) in &info.requests.0 {
            if let Some(&i) = self.resource_index.get(name) {
                view.requested[i] = view.requested[i].saturating_sub(*v);
            }
        }
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
        let bound_volumes = self.volumes.prefilter(&pod.info.namespace, &pod.name, &pod.volumes)?;
        let hard: Vec<&Constraint> = pod.spread.iter().filter(|c| c.hard).collect();
        let spread = (!hard.is_empty()).then(|| self.spread_state(pod, &hard));
        let affinity = self.affinity_state(pod);
        let wanted = self.wanted(&pod.info.requests);
        let verdicts = self
            .nodes
            .iter()
            .map(|n| {
                self.static_checks(pod, n, &wanted)?;
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
    fn static_checks(&self, pod: &Incoming, n: &NodeView, wanted: &[Wanted]) -> Verdict {
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
        fits(wanted, n)
    }

    /// The pod's requests against the node vectors' indices (`None`: a resource no node has).
    fn wanted(&self, requests: &Resources) -> Vec<Wanted> {
        requests
            .0
            .iter()
            .filter(|(name, amount)| **amount > 0 && *name != "pods")
            .map(|(name, &amount)| match self.resource_index.get(name) {
                Some(&i) => (Some(i), amount, Arc::clone(&self.resources[i])),
                None => (None, amount, Arc::from(name.as_str())),
            })
            .collect()
    }

    /// Matching pods per domain for the given constraints, over the nodes they count.
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

/// One resource a pod requests: its index in the nodes' vectors, the amount, the name.
type Wanted = (Option<usize>, i64, Arc<str>);

/// NodeResourcesFit: the pod count, then every resource the pod requests.
fn fits(wanted: &[Wanted], n: &NodeView) -> Verdict {
    let too_many = i64::from(n.pods) + 1 > n.pods_allowed;
    let short = |(i, amount, _): &&Wanted| *amount > i.map_or(0, |i| n.allocatable[i] - n.requested[i]);
    if !too_many && !wanted.iter().any(|w| short(&w)) {
        return Ok(());
    }
    let mut reasons = Vec::new();
    if too_many {
        reasons.push(Reason::Text("Too many pods"));
    }
    reasons.extend(wanted.iter().filter(short).map(|(_, _, name)| Reason::Insufficient(Arc::clone(name))));
    Err(reasons)
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
