//! Inter-pod affinity as kube-scheduler's InterPodAffinity filter evaluates it: the incoming pod's required
//! affinity and anti-affinity terms against the pods already bound, and the bound pods' required
//! anti-affinity against the incoming pod. One pass over the bound pods per decision, not one per node.

use std::collections::{HashMap, HashSet};

use k8s_openapi::api::core::v1 as api;

use super::labels::{Labels, Selector};

/// A pod affinity term, with the namespaces it looks in resolved against the pod that carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    namespaces: Vec<String>,
    namespace_selector: Option<Selector>,
    selector: Option<Selector>,
    /// The node label whose value is the term's domain.
    pub topology_key: String,
}

impl Term {
    /// Compiles a term of a pod in `namespace`: no namespaces and no namespace selector mean the pod's own;
    /// `matchLabelKeys` and `mismatchLabelKeys` are merged into the selector from the pod's labels (the API
    /// server does so when the pod is created; doing it again changes nothing).
    pub fn compile(t: &api::PodAffinityTerm, namespace: &str, pod_labels: &Labels) -> Result<Term, String> {
        let mut selector = Selector::compile(t.label_selector.as_ref())?;
        if let Some(s) = selector.as_mut() {
            let keys = t.match_label_keys.iter().flatten();
            s.require(keys.filter_map(|k| pod_labels.get(k).map(|v| (k.clone(), v.clone()))));
        }
        let namespace_selector = Selector::compile(t.namespace_selector.as_ref())?;
        let mut namespaces = t.namespaces.clone().unwrap_or_default();
        if namespaces.is_empty() && namespace_selector.is_none() {
            namespaces.push(namespace.to_owned());
        }
        Ok(Term { namespaces, namespace_selector, selector, topology_key: t.topology_key.clone() })
    }

    /// True when a pod in `namespace` (whose namespace carries `namespace_labels`) with `labels` matches.
    pub fn matches(&self, namespace: &str, namespace_labels: &Labels, labels: &Labels) -> bool {
        let in_namespace = self.namespaces.iter().any(|n| n == namespace)
            || self.namespace_selector.as_ref().is_some_and(|s| s.matches(namespace_labels));
        in_namespace && self.selector.as_ref().is_some_and(|s| s.matches(labels))
    }
}

/// The required and preferred terms of a pod's `podAffinity` and `podAntiAffinity`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodTerms {
    /// Required affinity: every term must find a matching pod in the node's domain.
    pub affinity: Vec<Term>,
    /// Required anti-affinity: no term may find a matching pod in the node's domain.
    pub anti_affinity: Vec<Term>,
    /// Preferred affinity, weighted.
    pub preferred: Vec<(i32, Term)>,
    /// Preferred anti-affinity, weighted.
    pub preferred_anti: Vec<(i32, Term)>,
}

impl PodTerms {
    /// Reads the pod's affinity.
    pub fn of(spec: &api::PodSpec, namespace: &str, labels: &Labels) -> Result<PodTerms, String> {
        let mut out = PodTerms::default();
        let Some(a) = spec.affinity.as_ref() else { return Ok(out) };
        let compile = |t: &api::PodAffinityTerm| Term::compile(t, namespace, labels);
        let weighted = |w: &api::WeightedPodAffinityTerm| Ok((w.weight, compile(&w.pod_affinity_term)?));
        let required = |terms: Option<&Vec<api::PodAffinityTerm>>| -> Result<Vec<Term>, String> {
            terms.into_iter().flatten().map(compile).collect()
        };
        let preferred = |terms: Option<&Vec<api::WeightedPodAffinityTerm>>| -> Result<Vec<(i32, Term)>, String> {
            terms.into_iter().flatten().map(weighted).collect()
        };
        if let Some(p) = &a.pod_affinity {
            out.affinity = required(p.required_during_scheduling_ignored_during_execution.as_ref())?;
            out.preferred = preferred(p.preferred_during_scheduling_ignored_during_execution.as_ref())?;
        }
        if let Some(p) = &a.pod_anti_affinity {
            out.anti_affinity = required(p.required_during_scheduling_ignored_during_execution.as_ref())?;
            out.preferred_anti = preferred(p.preferred_during_scheduling_ignored_during_execution.as_ref())?;
        }
        Ok(out)
    }
}

/// A node label pair: a topology domain.
pub type Domain = (String, String);

/// What the bound pods say about the incoming pod's domains, computed once per decision.
#[derive(Debug, Default)]
pub struct AffinityState {
    /// Domains holding a pod that matches every required affinity term, with their counts.
    pub affinity: HashMap<Domain, u32>,
    /// Domains holding a pod that matches a required anti-affinity term.
    pub anti: HashSet<Domain>,
    /// Domains where a bound pod's required anti-affinity matches the incoming pod.
    pub existing_anti: HashSet<Domain>,
    /// Whether the incoming pod matches all its own affinity terms (the first pod of a group may then go
    /// anywhere the topology keys exist).
    pub self_match: bool,
}

/// Whether a node passes the inter-pod affinity checks; the reason otherwise.
pub fn check(state: &AffinityState, terms: &PodTerms, node_labels: &Labels) -> Result<(), &'static str> {
    let domain = |key: &str| node_labels.get(key).map(|v| (key.to_owned(), v.clone()));
    if !terms.affinity.is_empty() {
        let mut pods_exist = true;
        for t in &terms.affinity {
            let Some(d) = domain(&t.topology_key) else { return Err("node(s) didn't match pod affinity rules") };
            if state.affinity.get(&d).copied().unwrap_or(0) == 0 {
                pods_exist = false;
            }
        }
        // The first pod of a group with affinity to itself: no pod in the cluster matches, the pod matches
        // its own terms, and the node has every topology key.
        let first_of_group = state.affinity.is_empty() && state.self_match;
        if !(pods_exist || first_of_group) {
            return Err("node(s) didn't match pod affinity rules");
        }
    }
    for t in &terms.anti_affinity {
        if domain(&t.topology_key).is_some_and(|d| state.anti.contains(&d)) {
            return Err("node(s) didn't match pod anti-affinity rules");
        }
    }
    if state.existing_anti.iter().any(|(k, v)| node_labels.get(k) == Some(v)) {
        return Err("node(s) didn't satisfy existing pods anti-affinity rules");
    }
    Ok(())
}
