//! Nodes, GPUs, pods, taints and tolerations: the cluster objects the placement engine reasons about,
//! reduced to what scheduling needs. GPU shares are in milli-GPUs: 1000 is one whole device.

use std::collections::BTreeMap;

/// One whole GPU in milli-GPU units.
pub const MILLI_PER_GPU: u32 = 1000;
/// The most GPUs a node may carry.
pub const MAX_GPUS_PER_NODE: usize = 8;

/// A node as the scheduler sees it at start: capacity, GPU devices, labels and taints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Node name, unique in the cluster.
    pub name: String,
    /// Allocatable CPU in milli-cores.
    pub cpu_milli: u64,
    /// Allocatable memory in bytes.
    pub memory_bytes: u64,
    /// Number of GPU devices (0 for a CPU-only node).
    pub gpu_count: u8,
    /// GPU model of every device on the node (a node carries one model), if it has GPUs.
    pub gpu_model: Option<String>,
    /// Node labels, for node selectors.
    pub labels: BTreeMap<String, String>,
    /// Node taints.
    pub taints: Vec<Taint>,
}

/// What a pod asks of GPUs: `count` devices with `milli_per_gpu` of each.
///
/// A share below one GPU (`milli_per_gpu < 1000`) is only valid with `count == 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct GpuRequest {
    /// Number of devices.
    pub count: u8,
    /// Milli-GPUs taken from each device, 1..=1000 (0 when `count` is 0).
    pub milli_per_gpu: u16,
}

impl GpuRequest {
    /// No GPU at all.
    pub const NONE: GpuRequest = GpuRequest { count: 0, milli_per_gpu: 0 };

    /// Total milli-GPUs over all devices.
    pub fn total_milli(&self) -> u32 {
        u32::from(self.count) * u32::from(self.milli_per_gpu)
    }

    /// True when the pod shares one device with others.
    pub fn is_sharing(&self) -> bool {
        self.count == 1 && u32::from(self.milli_per_gpu) < MILLI_PER_GPU
    }

    /// True when the pod asks for no GPU.
    pub fn is_none(&self) -> bool {
        self.count == 0 || self.milli_per_gpu == 0
    }
}

/// A pod waiting to be placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    /// Pod name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// CPU request in milli-cores.
    pub cpu_milli: u64,
    /// Memory request in bytes.
    pub memory_bytes: u64,
    /// GPU request.
    pub gpu: GpuRequest,
    /// GPU models the pod accepts; empty means any model.
    pub gpu_models: Vec<String>,
    /// Scheduling priority; higher is more important.
    pub priority: i32,
    /// Labels every candidate node must carry.
    pub node_selector: BTreeMap<String, String>,
    /// Taints the pod tolerates.
    pub tolerations: Vec<Toleration>,
}

impl Pod {
    /// A pod in the `default` namespace with only resource requests set.
    pub fn with_requests(name: impl Into<String>, cpu_milli: u64, memory_bytes: u64, gpu: GpuRequest) -> Self {
        Pod {
            name: name.into(),
            namespace: "default".to_owned(),
            cpu_milli,
            memory_bytes,
            gpu,
            gpu_models: Vec::new(),
            priority: 0,
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
        }
    }

    /// True when the pod accepts GPUs of this model.
    pub fn accepts_model(&self, model: Option<&str>) -> bool {
        self.gpu_models.is_empty() || model.is_some_and(|m| self.gpu_models.iter().any(|a| a == m))
    }
}

/// The effect of a taint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaintEffect {
    /// New pods that do not tolerate the taint are not scheduled.
    NoSchedule,
    /// The scheduler tries to avoid the node; it is not a filter.
    PreferNoSchedule,
    /// Like `NoSchedule`, and running pods are evicted.
    NoExecute,
}

impl TaintEffect {
    /// The spellings [`TaintEffect::parse`] accepts, for error messages.
    pub const EXPECTED: &'static str = "NoSchedule, PreferNoSchedule or NoExecute";

    /// Parses the Kubernetes spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "NoSchedule" => Some(TaintEffect::NoSchedule),
            "PreferNoSchedule" => Some(TaintEffect::PreferNoSchedule),
            "NoExecute" => Some(TaintEffect::NoExecute),
            _ => None,
        }
    }
}

/// A node taint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taint {
    /// Taint key.
    pub key: String,
    /// Taint value (may be empty).
    pub value: String,
    /// Taint effect.
    pub effect: TaintEffect,
}

impl Taint {
    /// The taint kube-scheduler treats a cordoned node (`spec.unschedulable: true`) as carrying.
    pub fn unschedulable() -> Taint {
        Taint {
            key: "node.kubernetes.io/unschedulable".to_owned(),
            value: String::new(),
            effect: TaintEffect::NoSchedule,
        }
    }
}

/// How a toleration compares values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TolerationOperator {
    /// Key and value must match.
    Equal,
    /// Only the key must match (or any key when the key is empty).
    Exists,
}

impl TolerationOperator {
    /// Parses the Kubernetes spelling; an absent operator means `Equal`, as in the API.
    pub fn parse(s: Option<&str>) -> Option<Self> {
        match s {
            None | Some("Equal") => Some(TolerationOperator::Equal),
            Some("Exists") => Some(TolerationOperator::Exists),
            Some(_) => None,
        }
    }
}

/// A pod toleration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toleration {
    /// Key to match; empty with `Exists` tolerates every taint.
    pub key: String,
    /// Comparison.
    pub operator: TolerationOperator,
    /// Value to match with `Equal`.
    pub value: String,
    /// Effect to match; `None` matches every effect.
    pub effect: Option<TaintEffect>,
}

impl Toleration {
    /// Kubernetes `Toleration.ToleratesTaint`.
    pub fn tolerates(&self, taint: &Taint) -> bool {
        if self.effect.is_some_and(|e| e != taint.effect) {
            return false;
        }
        if self.key.is_empty() {
            return self.operator == TolerationOperator::Exists;
        }
        if self.key != taint.key {
            return false;
        }
        match self.operator {
            TolerationOperator::Exists => true,
            TolerationOperator::Equal => self.value == taint.value,
        }
    }
}

/// True when every `NoSchedule`/`NoExecute` taint of the node is tolerated
/// (the TaintToleration filter of kube-scheduler).
pub fn tolerates_all(tolerations: &[Toleration], taints: &[Taint]) -> bool {
    taints
        .iter()
        .filter(|t| t.effect != TaintEffect::PreferNoSchedule)
        .all(|t| tolerations.iter().any(|tol| tol.tolerates(t)))
}

/// True when the node carries every label of the selector.
pub fn selector_matches(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str, value: &str, effect: TaintEffect) -> Taint {
        Taint { key: key.into(), value: value.into(), effect }
    }

    #[test]
    fn toleration_matching_follows_kubernetes() {
        let gpu = taint("nvidia.com/gpu", "present", TaintEffect::NoSchedule);
        let exact = Toleration {
            key: "nvidia.com/gpu".into(),
            operator: TolerationOperator::Equal,
            value: "present".into(),
            effect: Some(TaintEffect::NoSchedule),
        };
        assert!(exact.tolerates(&gpu));
        let wrong_value = Toleration { value: "absent".into(), ..exact.clone() };
        assert!(!wrong_value.tolerates(&gpu));
        let exists_any_effect =
            Toleration { operator: TolerationOperator::Exists, value: String::new(), effect: None, ..exact.clone() };
        assert!(exists_any_effect.tolerates(&gpu));
        let wrong_effect = Toleration { effect: Some(TaintEffect::NoExecute), ..exact.clone() };
        assert!(!wrong_effect.tolerates(&gpu));
        let wildcard =
            Toleration { key: String::new(), operator: TolerationOperator::Exists, value: String::new(), effect: None };
        assert!(wildcard.tolerates(&gpu));
        let empty_key_equal =
            Toleration { key: String::new(), operator: TolerationOperator::Equal, value: String::new(), effect: None };
        assert!(!empty_key_equal.tolerates(&gpu));
    }

    #[test]
    fn prefer_no_schedule_is_not_a_filter() {
        let soft = taint("spot", "", TaintEffect::PreferNoSchedule);
        let hard = taint("dedicated", "llm", TaintEffect::NoSchedule);
        assert!(tolerates_all(&[], std::slice::from_ref(&soft)));
        assert!(!tolerates_all(&[], &[soft, hard]));
    }

    #[test]
    fn gpu_request_classes() {
        assert!(GpuRequest { count: 1, milli_per_gpu: 500 }.is_sharing());
        assert!(!GpuRequest { count: 2, milli_per_gpu: 1000 }.is_sharing());
        assert_eq!(GpuRequest { count: 4, milli_per_gpu: 1000 }.total_milli(), 4000);
        assert!(GpuRequest::NONE.is_none());
    }
}
