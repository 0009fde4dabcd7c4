//! Resource amounts as kube-scheduler's NodeResourcesFit counts them: a pod's effective requests
//! (regular containers summed, sidecars — restartable init containers — added, other init containers as a
//! floor, pod-level requests and overhead) and a node's allocatable, for every resource name.

use std::collections::BTreeMap;

use gpuplane_core::Quantity;
use k8s_openapi::api::core::v1 as api;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as ApiQuantity;

/// Amounts by resource name: `cpu` in milli-cores, every other resource in whole units (bytes, devices,
/// pods), rounded up as Kubernetes' `Value` rounds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources(pub BTreeMap<String, i64>);

impl Resources {
    /// The amount of one resource (0 when absent).
    pub fn get(&self, name: &str) -> i64 {
        self.0.get(name).copied().unwrap_or(0)
    }

    fn add(&mut self, other: &Resources) {
        for (k, v) in &other.0 {
            let slot = self.0.entry(k.clone()).or_insert(0);
            *slot = slot.saturating_add(*v);
        }
    }

    fn subtract(&mut self, other: &Resources) {
        for (k, v) in &other.0 {
            let slot = self.0.entry(k.clone()).or_insert(0);
            *slot = slot.saturating_sub(*v);
        }
    }

    fn max(&mut self, other: &Resources) {
        for (k, v) in &other.0 {
            let slot = self.0.entry(k.clone()).or_insert(0);
            *slot = (*slot).max(*v);
        }
    }

    /// Adds a pod's requests to a node's (a pod bound there).
    pub fn plus(&mut self, pod: &Resources) {
        self.add(pod);
    }

    /// Takes a pod's requests from a node's (a pod gone from there).
    pub fn minus(&mut self, pod: &Resources) {
        self.subtract(pod);
    }
}

/// Reads a resource list; `field` names it in errors.
pub fn read_list(list: Option<&BTreeMap<String, ApiQuantity>>, field: &str) -> Result<Resources, String> {
    let mut out = Resources::default();
    for (name, q) in list.into_iter().flatten() {
        let parsed = Quantity::parse_non_negative(&q.0)
            .map_err(|e| format!("field `{field}.{name}` is {:?}: not a non-negative quantity ({e})", q.0))?;
        out.0.insert(name.clone(), if name == "cpu" { parsed.milli_value() } else { parsed.value() });
    }
    Ok(out)
}

/// A pod's effective requests, as `k8s.io/component-helpers/resource.PodRequests` computes them for the
/// scheduler (and the kubelet admits the pod).
pub fn pod_requests(spec: &api::PodSpec) -> Result<Resources, String> {
    // The API server defaults a request from its limit; an object that did not pass through it is read so too.
    let requests = |c: &api::Container, field: String| -> Result<Resources, String> {
        let r = c.resources.as_ref();
        let mut out = read_list(r.and_then(|r| r.requests.as_ref()), &format!("{field}.resources.requests"))?;
        for (name, v) in read_list(r.and_then(|r| r.limits.as_ref()), &format!("{field}.resources.limits"))?.0 {
            out.0.entry(name).or_insert(v);
        }
        Ok(out)
    };
    let mut total = Resources::default();
    for c in &spec.containers {
        total.add(&requests(c, format!("spec.containers[{}]", c.name))?);
    }
    let mut sidecars = Resources::default();
    let mut init_floor = Resources::default();
    for c in spec.init_containers.iter().flatten() {
        let own = requests(c, format!("spec.initContainers[{}]", c.name))?;
        if c.restart_policy.as_deref() == Some("Always") {
            // A sidecar runs beside everything after it: it adds to the total and to every later init step.
            total.add(&own);
            sidecars.add(&own);
            init_floor.max(&sidecars);
        } else {
            let mut step = own;
            step.add(&sidecars);
            init_floor.max(&step);
        }
    }
    total.max(&init_floor);
    // Pod-level resources (PodLevelResources, on by default since 1.34) replace the containers' cpu and memory.
    let pod_level = read_list(spec.resources.as_ref().and_then(|r| r.requests.as_ref()), "spec.resources.requests")?;
    for name in ["cpu", "memory"] {
        if let Some(v) = pod_level.0.get(name) {
            total.0.insert(name.to_owned(), *v);
        }
    }
    total.add(&read_list(spec.overhead.as_ref(), "spec.overhead")?);
    Ok(total)
}

/// A node's allocatable (`status.allocatable` only, as kube-scheduler reads it).
pub fn node_allocatable(node: &api::Node) -> Result<Resources, String> {
    read_list(node.status.as_ref().and_then(|s| s.allocatable.as_ref()), "status.allocatable")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> api::PodSpec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn sidecars_add_and_init_containers_set_a_floor() {
        let s = spec(serde_json::json!({
            "initContainers": [
                {"name": "side", "restartPolicy": "Always", "resources": {"requests": {"cpu": "500m"}}},
                {"name": "setup", "resources": {"requests": {"cpu": "3", "example.com/foo": "1"}}}
            ],
            "containers": [{"name": "main", "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}],
            "overhead": {"cpu": "100m"}
        }));
        let r = pod_requests(&s).unwrap();
        // max(1 + 0.5, 3 + 0.5) + 0.1
        assert_eq!(r.get("cpu"), 3_600);
        assert_eq!(r.get("memory"), 1 << 30);
        assert_eq!(r.get("example.com/foo"), 1);
    }

    #[test]
    fn a_sidecar_after_the_main_sum_is_added_not_maxed() {
        let s = spec(serde_json::json!({
            "initContainers": [{"name": "side", "restartPolicy": "Always", "resources": {"requests": {"cpu": "2"}}}],
            "containers": [{"name": "main", "resources": {"requests": {"cpu": "2"}}}]
        }));
        assert_eq!(pod_requests(&s).unwrap().get("cpu"), 4_000);
    }

    #[test]
    fn a_bad_quantity_names_its_field() {
        let s = spec(serde_json::json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "-1"}}}]}));
        let e = pod_requests(&s).unwrap_err();
        assert!(e.contains("spec.containers[c].resources.requests.cpu"), "{e}");
    }
}
