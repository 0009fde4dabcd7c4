//! Pod topology spread as kube-scheduler's PodTopologySpread evaluates it: for each `DoNotSchedule`
//! constraint the matching pods are counted per domain over the eligible nodes (nodeAffinityPolicy,
//! nodeTaintsPolicy), and a node passes when its domain's count plus the pod itself exceeds the global
//! minimum (0 below `minDomains` domains) by at most `maxSkew`. `ScheduleAnyway` constraints only score.

use std::collections::HashMap;

use k8s_openapi::api::core::v1 as api;

use super::labels::{Labels, Selector};

/// One compiled constraint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    /// Largest allowed difference between a domain's count and the smallest.
    pub max_skew: i32,
    /// The node label whose values are the domains.
    pub topology_key: String,
    /// Pods counted (in the pod's namespace); `None` counts none.
    pub selector: Option<Selector>,
    /// Below this many eligible domains, the global minimum is taken as 0.
    pub min_domains: i32,
    /// Only nodes matching the pod's node selector and required affinity count (`Honor`, the default).
    pub honor_node_affinity: bool,
    /// Only nodes whose taints the pod tolerates count (`Honor`; `Ignore` is the default).
    pub honor_taints: bool,
    /// `DoNotSchedule` (a filter) rather than `ScheduleAnyway` (a score).
    pub hard: bool,
}

/// The pod's constraints, `matchLabelKeys` merged into their selectors.
pub fn constraints(spec: &api::PodSpec, labels: &Labels) -> Result<Vec<Constraint>, String> {
    let mut out = Vec::new();
    for c in spec.topology_spread_constraints.iter().flatten() {
        let mut selector = Selector::compile(c.label_selector.as_ref())?;
        if let Some(s) = selector.as_mut() {
            let keys = c.match_label_keys.iter().flatten();
            s.require(keys.filter_map(|k| labels.get(k).map(|v| (k.clone(), v.clone()))));
        }
        let hard = match c.when_unsatisfiable.as_str() {
            "DoNotSchedule" => true,
            "ScheduleAnyway" => false,
            other => return Err(format!("whenUnsatisfiable {other:?} is neither DoNotSchedule nor ScheduleAnyway")),
        };
        out.push(Constraint {
            max_skew: c.max_skew,
            topology_key: c.topology_key.clone(),
            selector,
            min_domains: c.min_domains.unwrap_or(1),
            honor_node_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
            honor_taints: c.node_taints_policy.as_deref() == Some("Honor"),
            hard,
        });
    }
    Ok(out)
}

/// Matching pods per domain for each constraint, over the eligible nodes.
#[derive(Debug, Default)]
pub struct SpreadState {
    counts: Vec<HashMap<String, i64>>,
    minimum: Vec<i64>,
    self_match: Vec<bool>,
}

/// A node as the spread counting sees it.
pub struct NodeSample<'a> {
    /// Its labels.
    pub labels: &'a Labels,
    /// Whether it matches the pod's node selector and required node affinity.
    pub affinity_ok: bool,
    /// Whether the pod tolerates its NoSchedule/NoExecute taints.
    pub taints_ok: bool,
    /// How many of its pods each constraint's selector matches (same namespace, not terminating).
    pub matching: Vec<i64>,
}

impl SpreadState {
    /// Counts per domain. Only nodes carrying every constraint's topology key count at all.
    pub fn build<'a>(
        constraints: &[&Constraint],
        pod_labels: &Labels,
        nodes: impl Iterator<Item = NodeSample<'a>>,
    ) -> Self {
        let mut counts = vec![HashMap::new(); constraints.len()];
        for n in nodes {
            if !constraints.iter().all(|c| n.labels.contains_key(&c.topology_key)) {
                continue;
            }
            for (i, c) in constraints.iter().enumerate() {
                if (c.honor_node_affinity && !n.affinity_ok) || (c.honor_taints && !n.taints_ok) {
                    continue;
                }
                let value = n.labels[&c.topology_key].clone();
                *counts[i].entry(value).or_insert(0) += n.matching[i];
            }
        }
        let minimum =
            constraints
                .iter()
                .zip(&counts)
                .map(|(c, m)| {
                    if (m.len() as i64) < i64::from(c.min_domains) { 0 } else { m.values().copied().min().unwrap_or(0) }
                })
                .collect();
        let self_match =
            constraints.iter().map(|c| c.selector.as_ref().is_some_and(|s| s.matches(pod_labels))).collect();
        SpreadState { counts, minimum, self_match }
    }

    /// Whether a node passes every constraint, or the reason it fails.
    pub fn check(&self, constraints: &[&Constraint], node_labels: &Labels) -> Result<(), &'static str> {
        for (i, c) in constraints.iter().enumerate() {
            let Some(value) = node_labels.get(&c.topology_key) else {
                return Err("node(s) didn't match pod topology spread constraints (missing required label)");
            };
            let count = self.counts[i].get(value).copied().unwrap_or(0);
            let skew = count + i64::from(self.self_match[i]) - self.minimum[i];
            if skew > i64::from(c.max_skew) {
                return Err("node(s) didn't match pod topology spread constraints");
            }
        }
        Ok(())
    }

    /// The count of the node's domain for constraint `i` (for scoring), if it has the key.
    pub fn count(&self, i: usize, key: &str, node_labels: &Labels) -> Option<i64> {
        node_labels.get(key).map(|v| self.counts[i].get(v).copied().unwrap_or(0))
    }
}

/// Pods a constraint's selector counts: same namespace, not terminating, and a non-empty selector that
/// matches (an empty selector counts none, as kube-scheduler's `countPodsMatchSelector`).
pub fn counts_pod(c: &Constraint, namespace: &str, pod_namespace: &str, terminating: bool, labels: &Labels) -> bool {
    namespace == pod_namespace
        && !terminating
        && c.selector.as_ref().is_some_and(|s| !s.is_empty() && s.matches(labels))
}
