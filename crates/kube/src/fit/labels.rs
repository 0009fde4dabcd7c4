//! Label selectors (`metav1.LabelSelector`) and node selectors (`nodeSelector`, required and preferred
//! node affinity terms) compiled once per pod and matched as kube-scheduler matches them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1 as api;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Labels of a node, pod or namespace.
pub type Labels = BTreeMap<String, String>;

/// A selector operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// The label is present with one of the values.
    In,
    /// The label is absent, or present with none of the values.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
    /// The label is an integer greater than the value (node selectors only).
    Gt,
    /// The label is an integer less than the value (node selectors only).
    Lt,
}

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// Label key (or, in a node selector's `matchFields`, the field: `metadata.name`).
    pub key: String,
    /// The operator.
    pub op: Op,
    /// The values.
    pub values: Vec<String>,
}

impl Requirement {
    fn parse(key: &str, operator: &str, values: &[String], node: bool) -> Result<Self, String> {
        let op = match operator {
            "In" => Op::In,
            "NotIn" => Op::NotIn,
            "Exists" => Op::Exists,
            "DoesNotExist" => Op::DoesNotExist,
            "Gt" if node => Op::Gt,
            "Lt" if node => Op::Lt,
            other => return Err(format!("operator {other:?} of key {key:?} is not a selector operator")),
        };
        let ok = match op {
            Op::In | Op::NotIn => !values.is_empty(),
            Op::Exists | Op::DoesNotExist => values.is_empty(),
            Op::Gt | Op::Lt => values.len() == 1 && values[0].parse::<i64>().is_ok(),
        };
        if !ok {
            return Err(format!("operator {operator} of key {key:?} does not take the values {values:?}"));
        }
        Ok(Requirement { key: key.to_owned(), op, values: values.to_vec() })
    }

    /// True when `value` (the label's value, if present) satisfies the requirement.
    pub fn matches(&self, value: Option<&str>) -> bool {
        match (self.op, value) {
            (Op::In, Some(v)) => self.values.iter().any(|x| x == v),
            (Op::In, None) => false,
            (Op::NotIn, Some(v)) => !self.values.iter().any(|x| x == v),
            (Op::NotIn, None) => true,
            (Op::Exists, v) => v.is_some(),
            (Op::DoesNotExist, v) => v.is_none(),
            (Op::Gt | Op::Lt, None) => false,
            (op, Some(v)) => {
                let (Ok(label), Ok(bound)) = (v.parse::<i64>(), self.values[0].parse::<i64>()) else { return false };
                if op == Op::Gt { label > bound } else { label < bound }
            }
        }
    }
}

/// A compiled label selector. `None` where one is used stands for the nil selector, which matches nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

impl Selector {
    /// Compiles a `metav1.LabelSelector`; `Ok(None)` for a nil selector (matches nothing).
    pub fn compile(selector: Option<&LabelSelector>) -> Result<Option<Selector>, String> {
        let Some(s) = selector else { return Ok(None) };
        let mut requirements = Vec::new();
        for (k, v) in s.match_labels.iter().flatten() {
            requirements.push(Requirement { key: k.clone(), op: Op::In, values: vec![v.clone()] });
        }
        for e in s.match_expressions.iter().flatten() {
            requirements.push(Requirement::parse(&e.key, &e.operator, e.values.as_deref().unwrap_or_default(), false)?);
        }
        Ok(Some(Selector { requirements }))
    }

    /// True when every requirement holds.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| r.matches(labels.get(&r.key).map(String::as_str)))
    }

    /// True for the empty selector `{}` (it matches every object).
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Adds `key In (value)` for each pair (`matchLabelKeys` merged into the selector).
    pub fn require(&mut self, pairs: impl IntoIterator<Item = (String, String)>) {
        for (key, value) in pairs {
            let r = Requirement { key, op: Op::In, values: vec![value] };
            if !self.requirements.contains(&r) {
                self.requirements.push(r);
            }
        }
    }
}

/// One node selector term: its expressions on labels and its fields (`metadata.name`), all required.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeTerm {
    expressions: Vec<Requirement>,
    fields: Vec<Requirement>,
}

impl NodeTerm {
    /// Compiles a term; an unknown operator or field is an error.
    pub fn compile(t: &api::NodeSelectorTerm) -> Result<NodeTerm, String> {
        let expressions = t
            .match_expressions
            .iter()
            .flatten()
            .map(|e| Requirement::parse(&e.key, &e.operator, e.values.as_deref().unwrap_or_default(), true))
            .collect::<Result<Vec<_>, _>>()?;
        let mut fields = Vec::new();
        for f in t.match_fields.iter().flatten() {
            if f.key != "metadata.name" {
                return Err(format!("matchFields key {:?} is not metadata.name", f.key));
            }
            let r = Requirement::parse(&f.key, &f.operator, f.values.as_deref().unwrap_or_default(), true)?;
            if !matches!(r.op, Op::In | Op::NotIn) || r.values.len() != 1 {
                return Err("matchFields takes In or NotIn with one node name".to_owned());
            }
            fields.push(r);
        }
        Ok(NodeTerm { expressions, fields })
    }

    /// Compiles a term an object other than a pod carries (a volume's node affinity); one that cannot be
    /// read matches no node.
    pub fn compile_lenient(t: &api::NodeSelectorTerm) -> NodeTerm {
        NodeTerm::compile(t).unwrap_or(NodeTerm { expressions: Vec::new(), fields: Vec::new() })
    }

    /// True when the node satisfies the term; a term with no requirement matches no node.
    pub fn matches(&self, name: &str, labels: &Labels) -> bool {
        if self.expressions.is_empty() && self.fields.is_empty() {
            return false;
        }
        self.expressions.iter().all(|r| r.matches(labels.get(&r.key).map(String::as_str)))
            && self.fields.iter().all(|r| r.matches(Some(name)))
    }
}

/// What a pod requires of a node's labels: its `nodeSelector` and its required node affinity (terms ORed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequiredNode {
    selector: Labels,
    terms: Option<Vec<NodeTerm>>,
}

impl RequiredNode {
    /// Reads `spec.nodeSelector` and `spec.affinity.nodeAffinity.requiredDuringScheduling…`.
    pub fn of(spec: &api::PodSpec) -> Result<RequiredNode, String> {
        let terms = spec
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref())
            .map(|r| r.node_selector_terms.iter().map(NodeTerm::compile).collect::<Result<Vec<_>, _>>())
            .transpose()?;
        Ok(RequiredNode { selector: spec.node_selector.clone().unwrap_or_default(), terms })
    }

    /// True when the node carries the selector's labels and matches one of the terms (if any).
    pub fn matches(&self, name: &str, labels: &Labels) -> bool {
        self.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.terms.as_ref().is_none_or(|terms| terms.iter().any(|t| t.matches(name, labels)))
    }

    /// True when the pod has required node affinity terms (beyond a plain node selector).
    pub fn has_terms(&self) -> bool {
        self.terms.is_some()
    }

    /// True when the pod constrains nodes by label at all.
    pub fn is_empty(&self) -> bool {
        self.selector.is_empty() && self.terms.is_none()
    }
}

/// The preferred node affinity terms with their weights.
pub fn preferred_node_terms(spec: &api::PodSpec) -> Result<Vec<(i32, NodeTerm)>, String> {
    spec.affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| a.preferred_during_scheduling_ignored_during_execution.as_ref())
        .into_iter()
        .flatten()
        .map(|p| Ok((p.weight, NodeTerm::compile(&p.preference)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn operators_match_as_kubernetes_does() {
        let r = |op: &str, values: &[&str]| {
            let values: Vec<String> = values.iter().map(|v| (*v).to_owned()).collect();
            Requirement::parse("k", op, &values, true).unwrap()
        };
        assert!(r("NotIn", &["a"]).matches(None));
        assert!(!r("In", &["a"]).matches(None));
        assert!(r("Gt", &["3"]).matches(Some("4")) && !r("Gt", &["3"]).matches(Some("3")));
        assert!(!r("Lt", &["3"]).matches(Some("x")), "a label that is not an integer never matches Gt/Lt");
        assert!(Requirement::parse("k", "Exists", &["a".to_owned()], true).is_err());
        assert!(Requirement::parse("k", "Gt", &["3".to_owned()], false).is_err(), "Gt is for node selectors");
    }

    #[test]
    fn an_empty_selector_matches_all_and_a_nil_one_nothing() {
        let empty = Selector::compile(Some(&LabelSelector::default())).unwrap().unwrap();
        assert!(empty.is_empty() && empty.matches(&labels(&[("a", "b")])));
        assert!(Selector::compile(None).unwrap().is_none());
    }

    #[test]
    fn an_empty_node_term_matches_no_node() {
        let term = NodeTerm::compile(&api::NodeSelectorTerm::default()).unwrap();
        assert!(!term.matches("n", &labels(&[])));
    }
}
