//! The filters on small hand-made clusters, one rule each; the differential test against kube-scheduler
//! (`crates/cli/tests/parity.rs`) checks them together on generated ones.

use std::sync::Arc;

use k8s_openapi::api::core::v1 as api;
use serde_json::{Value, json};

use super::*;

fn node(name: &str, zone: Option<&str>) -> api::Node {
    let mut labels = json!({"kubernetes.io/hostname": name});
    if let Some(z) = zone {
        labels["zone"] = json!(z);
    }
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels},
        "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "10"}}}))
    .unwrap()
}

fn pod(name: &str, app: &str, spec: Value) -> api::Pod {
    let mut spec = spec;
    spec["containers"] = json!([{"name": "c", "resources": {"requests": {"cpu": "1"}}}]);
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": "ns", "labels": {"app": app}}, "spec": spec}))
        .unwrap()
}

/// Three zones of one node each, plus a node without a zone label.
fn cluster(bound: &[(usize, api::Pod)]) -> Fit {
    let nodes = [node("a", Some("z1")), node("b", Some("z2")), node("c", Some("z3")), node("d", None)];
    let with_taints: Vec<(&api::Node, Vec<Taint>)> = nodes.iter().map(|n| (n, spec_taints(n))).collect();
    let mut fit = Fit::new(&with_taints);
    for (i, (node, p)) in bound.iter().enumerate() {
        fit.add(&format!("ns/b{i}"), *node, Arc::new(PodInfo::of(p).unwrap()));
    }
    fit
}

fn feasible(fit: &Fit, p: &api::Pod) -> Vec<&'static str> {
    let verdicts = fit.filter(&Incoming::of(p, Vec::new()).unwrap()).unwrap();
    ["a", "b", "c", "d"].into_iter().zip(verdicts).filter(|(_, v)| v.is_ok()).map(|(n, _)| n).collect()
}

fn term(key: &str, app: &str) -> Value {
    json!({"topologyKey": key, "labelSelector": {"matchLabels": {"app": app}}})
}

#[test]
fn the_first_pod_of_a_self_affine_group_goes_where_the_topology_key_exists() {
    let affine = pod(
        "p",
        "web",
        json!({"affinity": {"podAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": [term("zone", "web")]}}}),
    );
    assert_eq!(feasible(&cluster(&[]), &affine), ["a", "b", "c"]);
    // Once a web pod runs in z2, only z2.
    assert_eq!(feasible(&cluster(&[(1, pod("w", "web", json!({})))]), &affine), ["b"]);
    // A pod that does not match its own term has nowhere to go alone.
    let other = pod(
        "p",
        "db",
        json!({"affinity": {"podAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": [term("zone", "web")]}}}),
    );
    assert!(feasible(&cluster(&[]), &other).is_empty());
}

#[test]
fn bound_pods_anti_affinity_keeps_matching_pods_out_of_their_domain() {
    let guard = pod(
        "g",
        "db",
        json!({"affinity": {"podAntiAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": [term("zone", "web")]}}}),
    );
    let fit = cluster(&[(0, guard)]);
    assert_eq!(feasible(&fit, &pod("p", "web", json!({}))), ["b", "c", "d"]);
    assert_eq!(feasible(&fit, &pod("p", "cache", json!({}))), ["a", "b", "c", "d"]);
}

#[test]
fn spread_counts_domains_and_honours_min_domains() {
    let spread = |min: Option<i32>| {
        let mut c = json!({"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": {"matchLabels": {"app": "web"}}});
        if let Some(m) = min {
            c["minDomains"] = json!(m);
        }
        pod("p", "web", json!({"topologySpreadConstraints": [c]}))
    };
    let bound = [(0, pod("w0", "web", json!({}))), (1, pod("w1", "web", json!({})))];
    let fit = cluster(&bound);
    // z1 and z2 hold one each, z3 none: only z3 keeps the skew at 1; d has no zone label.
    assert_eq!(feasible(&fit, &spread(None)), ["c"]);
    // Four domains required, three exist: the global minimum is 0, so z1 and z2 (count 1 + 1) exceed it.
    assert_eq!(feasible(&fit, &spread(Some(4))), ["c"]);
    let fit = cluster(&[(0, pod("w0", "web", json!({})))]);
    assert_eq!(feasible(&fit, &spread(Some(4))), ["b", "c"]);
}

#[test]
fn resources_ports_and_pod_count_are_checked_together() {
    let ported = |name: &str| {
        let mut p = serde_json::to_value(pod(name, "web", json!({}))).unwrap();
        p["spec"]["containers"][0]["ports"] = json!([{"containerPort": 80, "hostPort": 80}]);
        serde_json::from_value::<api::Pod>(p).unwrap()
    };
    let fit = cluster(&[(0, ported("x")), (1, pod("big", "db", json!({})))]);
    assert_eq!(feasible(&fit, &ported("p")), ["b", "c", "d"]);
    let mut fit = fit;
    fit.remove("ns/b0");
    assert_eq!(feasible(&fit, &ported("p")), ["a", "b", "c", "d"], "a removed pod frees its port");
    let mut heavy = serde_json::to_value(pod("h", "db", json!({}))).unwrap();
    heavy["spec"]["containers"][0]["resources"]["requests"] = json!({"cpu": "4", "example.com/foo": "1"});
    let heavy: api::Pod = serde_json::from_value(heavy).unwrap();
    let verdicts = fit.filter(&Incoming::of(&heavy, Vec::new()).unwrap()).unwrap();
    assert_eq!(
        verdicts[1],
        Err(vec![Reason::Insufficient(Arc::from("cpu")), Reason::Insufficient(Arc::from("example.com/foo"))])
    );
}

#[test]
fn preferred_node_affinity_scores_and_no_preference_scores_nothing() {
    let fit = cluster(&[]);
    let plain = Incoming::of(&pod("p", "web", json!({})), Vec::new()).unwrap();
    assert!(fit.scores(&plain, &[0, 1, 2, 3], &ScoreWeights::default()).is_none());
    let preferring = pod(
        "p",
        "web",
        json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 10, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z2"]}]}}]}}}),
    );
    let scores =
        fit.scores(&Incoming::of(&preferring, Vec::new()).unwrap(), &[0, 1, 2, 3], &ScoreWeights::default()).unwrap();
    assert_eq!(scores, [0.0, 200.0, 0.0, 0.0], "NodeAffinity weight 2 × 100 on the preferred node");
}

#[test]
fn message_reads_like_kube_schedulers() {
    let reasons =
        BTreeMap::from([("Insufficient cpu".to_owned(), 2), ("node(s) had untolerated taint(s)".to_owned(), 10)]);
    assert_eq!(
        message(12, &reasons),
        "0/12 nodes are available: 10 node(s) had untolerated taint(s), 2 Insufficient cpu."
    );
}
