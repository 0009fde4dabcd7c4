//! The wire format of `k8s.io/kube-scheduler/extender/v1`: the Go types carry no JSON tags, so the keys are
//! the PascalCase field names. These are the messages as kube-scheduler sends and reads them; what the
//! extender itself takes from a request is narrower (`verbs.rs`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1 as api;
use serde::{Deserialize, Serialize};

/// Highest score an extender may give (`MaxExtenderPriority`); kube-scheduler multiplies it by the
/// extender's weight and by 10.
pub const MAX_EXTENDER_PRIORITY: i64 = 10;

/// A `v1.NodeList` as it travels inside extender messages (only `items` is read).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeList {
    /// The nodes.
    #[serde(default)]
    pub items: Vec<api::Node>,
}

/// `ExtenderArgs`: the pod and the candidate nodes, as full objects or (nodeCacheCapable) names. This is
/// the whole message, for clients; the handlers read only the pod's identity and the candidates from it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExtenderArgs {
    /// The pod being scheduled.
    #[serde(default)]
    pub pod: Option<api::Pod>,
    /// Candidate nodes, when the extender is not node-cache capable.
    #[serde(default)]
    pub nodes: Option<NodeList>,
    /// Candidate node names, when it is.
    #[serde(default)]
    pub node_names: Option<Vec<String>>,
}

/// `ExtenderFilterResult`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ExtenderFilterResult {
    /// Nodes that passed, when the request carried full nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<NodeListOut>,
    /// Names of nodes that passed, when the request carried names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_names: Option<Vec<String>>,
    /// Nodes that failed, with the reason; preemption may help.
    #[serde(default)]
    pub failed_nodes: BTreeMap<String, String>,
    /// Nodes that failed in a way preemption cannot fix.
    #[serde(default)]
    pub failed_and_unresolvable_nodes: BTreeMap<String, String>,
    /// A failure of the whole call.
    #[serde(default)]
    pub error: String,
}

/// The node list of a filter result (kept as raw JSON so the nodes go back exactly as they came).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct NodeListOut {
    /// The nodes that passed.
    pub items: Vec<serde_json::Value>,
}

/// `HostPriority`: one node's score, 0 to [`MAX_EXTENDER_PRIORITY`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct HostPriority {
    /// Node name.
    pub host: String,
    /// Score.
    pub score: i64,
}

/// `ExtenderBindingArgs`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct ExtenderBindingArgs {
    /// Pod name.
    pub pod_name: String,
    /// Pod namespace.
    pub pod_namespace: String,
    /// Pod UID.
    #[serde(rename = "PodUID")]
    pub pod_uid: String,
    /// The node kube-scheduler chose.
    pub node: String,
}

/// `ExtenderBindingResult`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct ExtenderBindingResult {
    /// Empty on success.
    #[serde(default)]
    pub error: String,
}

/// `ExtenderPreemptionArgs`: the preemptor and, per node, the victims kube-scheduler proposes (as full
/// pods, or as UIDs when the extender is node-cache capable). The whole message, for clients; the handler
/// reads only UIDs (and the preemptor's namespace/name) from it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExtenderPreemptionArgs {
    /// The pod that wants to run.
    #[serde(default)]
    pub pod: Option<api::Pod>,
    /// Proposed victims per node, as pods.
    #[serde(default)]
    pub node_name_to_victims: Option<BTreeMap<String, Victims>>,
    /// Proposed victims per node, as UIDs.
    #[serde(default)]
    pub node_name_to_meta_victims: Option<BTreeMap<String, MetaVictims>>,
}

/// `Victims`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Victims {
    /// The pods to evict.
    #[serde(default)]
    pub pods: Vec<api::Pod>,
    /// PodDisruptionBudgets those evictions would violate.
    #[serde(default, rename = "NumPDBViolations")]
    pub num_pdb_violations: i64,
}

/// `MetaVictims`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct MetaVictims {
    /// The pods to evict, by UID.
    #[serde(default)]
    pub pods: Vec<MetaPod>,
    /// PodDisruptionBudgets those evictions would violate.
    #[serde(default, rename = "NumPDBViolations")]
    pub num_pdb_violations: i64,
}

/// `MetaPod`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MetaPod {
    /// Pod UID.
    #[serde(rename = "UID")]
    pub uid: String,
}

/// `ExtenderPreemptionResult`: the nodes where preemption works, with the victims it takes there.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct ExtenderPreemptionResult {
    /// Victims per node.
    #[serde(default)]
    pub node_name_to_meta_victims: BTreeMap<String, MetaVictims>,
}
