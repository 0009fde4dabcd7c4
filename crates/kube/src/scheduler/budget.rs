//! PodDisruptionBudgets as preemption sees them: which pods a budget selects (its label selector,
//! `matchLabels` and `matchExpressions`) and how many more of them may be disrupted now
//! (`status.disruptionsAllowed`, kept by the disruption controller).

use std::collections::BTreeMap;

use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use thiserror::Error;

/// A budget that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("PodDisruptionBudget {name}: field `{field}` is {value:?}; expected {expected}")]
pub struct BudgetError {
    /// `namespace/name`.
    pub name: String,
    /// Field path.
    pub field: String,
    /// The value found.
    pub value: String,
    /// What was expected.
    pub expected: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Requirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        }
    }
}

/// One budget: the pods it protects and how many of them may still go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// `namespace/name`.
    pub name: String,
    /// Namespace of the pods it selects.
    pub namespace: String,
    requirements: Option<Vec<Requirement>>,
    /// `status.disruptionsAllowed`.
    pub disruptions_allowed: u32,
}

impl Budget {
    /// Reads a PodDisruptionBudget. A budget without a status yet allows no disruption.
    pub fn from_object(pdb: &PodDisruptionBudget) -> Result<Budget, BudgetError> {
        let namespace = pdb.metadata.namespace.clone().unwrap_or_else(|| "default".to_owned());
        let name = format!("{namespace}/{}", pdb.metadata.name.as_deref().unwrap_or(""));
        let selector = pdb.spec.as_ref().and_then(|s| s.selector.as_ref());
        let requirements = selector.map(|s| requirements(&name, s)).transpose()?;
        let allowed = pdb.status.as_ref().map_or(0, |s| s.disruptions_allowed);
        Ok(Budget { name, namespace, requirements, disruptions_allowed: u32::try_from(allowed).unwrap_or(0) })
    }

    /// Whether the budget protects a pod of `namespace` with `labels`. A budget without a selector
    /// selects nothing; an empty selector selects every pod of its namespace (policy/v1).
    pub fn selects(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        namespace == self.namespace
            && self.requirements.as_ref().is_some_and(|reqs| reqs.iter().all(|r| r.matches(labels)))
    }
}

fn requirements(name: &str, selector: &LabelSelector) -> Result<Vec<Requirement>, BudgetError> {
    let mut out: Vec<Requirement> =
        selector.match_labels.iter().flatten().map(|(k, v)| Requirement::In(k.clone(), vec![v.clone()])).collect();
    for (i, e) in selector.match_expressions.iter().flatten().enumerate() {
        let values = e.values.clone().unwrap_or_default();
        let field = format!("spec.selector.matchExpressions[{i}]");
        let err = |field: String, value: &str, expected: &str| BudgetError {
            name: name.to_owned(),
            field,
            value: value.to_owned(),
            expected: expected.to_owned(),
        };
        let r = match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return Err(err(format!("{field}.values"), "[]", "at least one value for In and NotIn"));
            }
            "In" => Requirement::In(e.key.clone(), values),
            "NotIn" => Requirement::NotIn(e.key.clone(), values),
            "Exists" => Requirement::Exists(e.key.clone()),
            "DoesNotExist" => Requirement::DoesNotExist(e.key.clone()),
            other => return Err(err(format!("{field}.operator"), other, "In, NotIn, Exists or DoesNotExist")),
        };
        out.push(r);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pdb(json: serde_json::Value) -> PodDisruptionBudget {
        serde_json::from_value(json).unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn selects_by_labels_and_expressions_in_its_namespace() {
        let b = Budget::from_object(&pdb(serde_json::json!({
            "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": "train", "namespace": "ml"},
            "spec": {"minAvailable": 2, "selector": {
                "matchLabels": {"app": "train"},
                "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["canary"]}]}},
            "status": {"disruptionsAllowed": 1, "currentHealthy": 3, "desiredHealthy": 2, "expectedPods": 3}
        })))
        .unwrap();
        assert_eq!(b.disruptions_allowed, 1);
        assert!(b.selects("ml", &labels(&[("app", "train")])));
        assert!(!b.selects("ml", &labels(&[("app", "train"), ("tier", "canary")])));
        assert!(!b.selects("other", &labels(&[("app", "train")])));
        assert!(!b.selects("ml", &labels(&[("app", "chat")])));
    }

    #[test]
    fn empty_selector_selects_all_and_missing_selector_none() {
        let all = Budget::from_object(&pdb(serde_json::json!({
            "metadata": {"name": "all", "namespace": "ml"}, "spec": {"selector": {}}
        })))
        .unwrap();
        assert!(all.selects("ml", &labels(&[])));
        assert_eq!(all.disruptions_allowed, 0, "no status yet: nothing may be disrupted");
        let none =
            Budget::from_object(&pdb(serde_json::json!({"metadata": {"name": "n", "namespace": "ml"}, "spec": {}})))
                .unwrap();
        assert!(!none.selects("ml", &labels(&[])));
    }

    #[test]
    fn a_bad_operator_is_named() {
        let e = Budget::from_object(&pdb(serde_json::json!({
            "metadata": {"name": "x", "namespace": "ml"},
            "spec": {"selector": {"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["b"]}]}}
        })))
        .unwrap_err();
        assert_eq!(e.field, "spec.selector.matchExpressions[0].operator");
        assert!(e.to_string().contains("In, NotIn, Exists or DoesNotExist"), "{e}");
    }
}
