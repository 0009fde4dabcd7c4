//! The parity test's seeded generator: nodes of varied shape, labels and taints; bound pods with ports and
//! anti-affinity; and pods to judge with a random mix of every feature kube-scheduler's filters read.

use rand::RngExt;
use rand::rngs::ChaCha8Rng;
use serde_json::{Value, json};
use std::collections::BTreeSet;

pub const DRA_OBJECTS: &str = "apiVersion: resource.k8s.io/v1
kind: DeviceClass
metadata: {name: gpu.example.com}
spec:
  selectors:
  - cel: {expression: 'device.driver == \"gpu.example.com\"'}
---
apiVersion: resource.k8s.io/v1
kind: ResourceClaim
metadata: {name: gpu-claim, namespace: team-a}
spec:
  devices:
    requests:
    - name: gpu
      exactly: {deviceClassName: gpu.example.com}
";

pub const NAMESPACES: [(&str, &str, &str); 3] =
    [("team-a", "a", "prod"), ("team-b", "b", "prod"), ("team-c", "c", "dev")];
pub const APPS: [&str; 4] = ["web", "db", "llm", "cache"];
pub const ZONE: &str = "topology.kubernetes.io/zone";
pub const HOSTNAME: &str = "kubernetes.io/hostname";

pub fn pick<'a, T>(rng: &mut ChaCha8Rng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

pub fn chance(rng: &mut ChaCha8Rng, p: f64) -> bool {
    rng.random_range(0.0..1.0) < p
}

/// The generated cluster: node objects (with the name of the small node the "Too many pods" pod targets).
pub fn nodes(rng: &mut ChaCha8Rng, count: usize) -> Vec<Value> {
    (0..count)
        .map(|i| {
            let name = format!("pn-{i:03}");
            let gpus = *pick(rng, &[0u32, 0, 4, 8]);
            let mut labels = json!({HOSTNAME: name, "rack": format!("r{}", i % 7),
                "gpuplane.test/mem-gb": (32 * (1 + i % 4)).to_string()});
            if i % 10 != 9 {
                labels[ZONE] = json!(format!("zone-{}", i % 3));
            }
            if chance(rng, 0.7) {
                labels["tier"] = json!(pick(rng, &["gold", "silver"]));
            }
            if gpus > 0 {
                labels["nvidia.com/gpu.product"] = json!(pick(rng, &["A100", "L4"]));
            }
            // The first node is the small one: two pods at most.
            let pods = if i == 0 {
                2
            } else if chance(rng, 0.12) {
                rng.random_range(2..6)
            } else {
                110
            };
            let mut allocatable = json!({"cpu": pick(rng, &["8", "16", "32", "64"]),
                "memory": pick(rng, &["32Gi", "64Gi", "128Gi", "256Gi"]), "pods": pods.to_string(),
                "ephemeral-storage": "100Gi", "nvidia.com/gpu": gpus.to_string()});
            if chance(rng, 0.3) {
                allocatable["example.com/foo"] = json!(rng.random_range(1..4).to_string());
            }
            if chance(rng, 0.3) {
                allocatable["hugepages-2Mi"] = json!("1Gi");
            }
            let mut taints = Vec::new();
            if chance(rng, 0.15) {
                taints.push(json!({"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}));
            }
            if chance(rng, 0.08) {
                taints.push(json!({"key": "maintenance", "effect": "NoExecute"}));
            }
            if chance(rng, 0.15) {
                taints.push(json!({"key": "spot", "value": "true", "effect": "PreferNoSchedule"}));
            }
            json!({
                "metadata": {"name": name, "labels": labels, "annotations": {"kwok.x-k8s.io/node": "fake"}},
                "spec": {"taints": taints, "unschedulable": i != 0 && chance(rng, 0.05)},
                "status": {"allocatable": allocatable, "capacity": allocatable}
            })
        })
        .collect()
}

pub fn label_selector(rng: &mut ChaCha8Rng) -> Value {
    match rng.random_range(0..4) {
        0 => json!({"matchLabels": {"app": pick(rng, &APPS)}}),
        1 => {
            json!({"matchExpressions": [{"key": "app", "operator": "In", "values": [pick(rng, &APPS), pick(rng, &APPS)]}]})
        }
        2 => json!({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": [pick(rng, &APPS)]}]}),
        _ => {
            json!({"matchExpressions": [{"key": "ver", "operator": "Exists"}], "matchLabels": {"app": pick(rng, &APPS)}})
        }
    }
}

/// A required pod (anti-)affinity term: own namespace, a list, or a namespace selector.
pub fn affinity_term(rng: &mut ChaCha8Rng) -> Value {
    let mut term = json!({"topologyKey": pick(rng, &[ZONE, HOSTNAME, "rack"]), "labelSelector": label_selector(rng)});
    match rng.random_range(0..4) {
        0 => term["namespaces"] = json!(["team-a", "team-b"]),
        1 => term["namespaceSelector"] = json!({"matchLabels": {"env": "prod"}}),
        2 => term["namespaceSelector"] = json!({}),
        _ => {}
    }
    term
}

/// Existing pods, bound at creation (`spec.nodeName`): what the filters count.
pub fn existing_pod(rng: &mut ChaCha8Rng, i: usize, node: &Value) -> Value {
    let node_name = node["metadata"]["name"].as_str().unwrap();
    let mut requests =
        json!({"cpu": pick(rng, &["100m", "500m", "1", "2"]), "memory": pick(rng, &["128Mi", "1Gi", "4Gi"])});
    let gpus: u32 = node["status"]["allocatable"]["nvidia.com/gpu"].as_str().unwrap().parse().unwrap();
    if gpus > 0 && chance(rng, 0.4) {
        requests["nvidia.com/gpu"] = json!("1");
    }
    if node["status"]["allocatable"]["example.com/foo"].is_string() && chance(rng, 0.5) {
        requests["example.com/foo"] = json!("1");
    }
    let mut container = json!({"name": "main", "image": "app", "resources": {"requests": requests, "limits": {}}});
    for extended in ["nvidia.com/gpu", "example.com/foo"] {
        if let Some(v) = requests.get(extended) {
            container["resources"]["limits"][extended] = v.clone();
        }
    }
    if chance(rng, 0.1) {
        container["ports"] = json!([{"containerPort": 80, "hostPort": pick(rng, &[8080, 9090])}]);
    }
    let mut spec = json!({"nodeName": node_name, "containers": [container],
        "tolerations": [{"operator": "Exists"}]});
    if chance(rng, 0.12) {
        spec["affinity"] =
            json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [affinity_term(rng)]}});
    }
    let (namespace, ..) = *pick(rng, &NAMESPACES);
    json!({"metadata": {"name": format!("e-{i}"), "namespace": namespace,
        "labels": {"app": pick(rng, &APPS), "ver": pick(rng, &["v1", "v2"])}}, "spec": spec})
}

pub fn node_expression(rng: &mut ChaCha8Rng) -> Value {
    match rng.random_range(0..7) {
        0 => json!({"key": ZONE, "operator": "In", "values": [format!("zone-{}", rng.random_range(0..3))]}),
        1 => json!({"key": ZONE, "operator": "NotIn", "values": ["zone-0"]}),
        2 => json!({"key": "tier", "operator": pick(rng, &["Exists", "DoesNotExist"])}),
        3 => json!({"key": "gpuplane.test/mem-gb", "operator": pick(rng, &["Gt", "Lt"]),
            "values": [pick(rng, &["32", "64", "96"])]}),
        4 => json!({"key": "nvidia.com/gpu.product", "operator": "In", "values": [pick(rng, &["A100", "L4"])]}),
        5 => json!({"key": "rack", "operator": "In", "values": [format!("r{}", rng.random_range(0..7)), "r1"]}),
        _ => json!({"key": "tier", "operator": "NotIn", "values": ["gold"]}),
    }
}

/// Required node affinity: one or two terms (ORed) of expressions, or a term on the node's name.
pub fn node_affinity(rng: &mut ChaCha8Rng, node_names: &[String]) -> Value {
    let terms: Vec<Value> = (0..rng.random_range(1..3))
        .map(|_| {
            if chance(rng, 0.2) {
                let names = [pick(rng, node_names).clone(), pick(rng, node_names).clone()];
                json!({"matchFields": [{"key": "metadata.name", "operator": pick(rng, &["In", "NotIn"]),
                    "values": [names[0]]}], "matchExpressions": [], "_unused": names[1]})
            } else {
                let expressions: Vec<Value> = (0..rng.random_range(1..3)).map(|_| node_expression(rng)).collect();
                json!({"matchExpressions": expressions})
            }
        })
        .map(|mut t| {
            t.as_object_mut().map(|o| o.remove("_unused"));
            t
        })
        .collect();
    json!({"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}})
}

pub fn tolerations(rng: &mut ChaCha8Rng) -> Value {
    let all = [
        json!({"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}),
        json!({"key": "maintenance", "operator": "Exists", "effect": "NoExecute"}),
        json!({"key": "spot", "operator": "Exists"}),
        json!({"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}),
        json!({"key": "dedicated", "operator": "Equal", "value": "cpu"}),
    ];
    if chance(rng, 0.05) {
        return json!([{"operator": "Exists"}]);
    }
    Value::Array(all.into_iter().filter(|_| chance(rng, 0.4)).collect())
}

pub fn spread_constraint(rng: &mut ChaCha8Rng) -> Value {
    let mut c = json!({"maxSkew": rng.random_range(1..3), "topologyKey": pick(rng, &[ZONE, HOSTNAME, "rack"]),
        "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": pick(rng, &APPS)}}});
    if chance(rng, 0.3) {
        c["minDomains"] = json!(rng.random_range(2..6));
    }
    if chance(rng, 0.3) {
        c["nodeAffinityPolicy"] = json!("Ignore");
    }
    if chance(rng, 0.3) {
        c["nodeTaintsPolicy"] = json!("Honor");
    }
    if chance(rng, 0.3) {
        c["matchLabelKeys"] = json!(["ver"]);
    }
    if chance(rng, 0.1) {
        c["labelSelector"] = json!({});
    }
    c
}

/// A pod for both schedulers to judge, with a random mix of every feature the filters read.
pub fn probe_pod(rng: &mut ChaCha8Rng, i: usize, node_names: &[String]) -> Value {
    let mut requests = serde_json::Map::new();
    let mut limits = serde_json::Map::new();
    let cpu = *pick(rng, &["", "100m", "500m", "2", "8", "30"]);
    if !cpu.is_empty() {
        requests.insert("cpu".into(), json!(cpu));
    }
    let memory = *pick(rng, &["", "256Mi", "4Gi", "64Gi", "200Gi"]);
    if !memory.is_empty() {
        requests.insert("memory".into(), json!(memory));
    }
    // Extended resources and hugepages are requested and limited alike, as the API server requires.
    let mut both = |name: &str, value: Value| {
        requests.insert(name.into(), value.clone());
        limits.insert(name.into(), value);
    };
    if chance(rng, 0.15) {
        both("example.com/foo", json!(rng.random_range(1..4).to_string()));
    }
    if chance(rng, 0.2) {
        both("nvidia.com/gpu", json!(pick(rng, &["1", "2", "4", "8"])));
    }
    let hugepages = chance(rng, 0.1);
    if hugepages {
        both("hugepages-2Mi", json!(pick(rng, &["512Mi", "2Gi"])));
    }
    if chance(rng, 0.1) {
        both("ephemeral-storage", json!(pick(rng, &["10Gi", "200Gi"])));
    }
    if hugepages && !requests.contains_key("memory") {
        requests.insert("memory".into(), json!("1Gi"));
        limits.insert("memory".into(), json!("1Gi"));
    }
    let mut main = json!({"name": "main", "image": "app", "resources": {"requests": requests, "limits": limits}});
    if chance(rng, 0.1) {
        let mut port = json!({"containerPort": 80, "hostPort": pick(rng, &[8080, 9090])});
        if chance(rng, 0.3) {
            port["hostIP"] = json!("127.0.0.1");
        }
        if chance(rng, 0.3) {
            port["protocol"] = json!("UDP");
        }
        main["ports"] = json!([port]);
    }
    let mut spec = json!({"schedulerName": "default-scheduler", "containers": [main], "tolerations": tolerations(rng)});
    if chance(rng, 0.15) {
        let restart = if chance(rng, 0.5) { json!("Always") } else { Value::Null };
        let mut init = json!({"name": "init", "image": "app",
            "resources": {"requests": {"cpu": pick(rng, &["1", "4", "16", "40"])}}});
        if !restart.is_null() {
            init["restartPolicy"] = restart;
        }
        spec["initContainers"] = json!([init]);
    }
    if chance(rng, 0.15) {
        spec["nodeSelector"] = if chance(rng, 0.5) { json!({"tier": "gold"}) } else { json!({ZONE: "zone-1"}) };
    }
    let mut affinity = serde_json::Map::new();
    if chance(rng, 0.25) {
        affinity.insert("nodeAffinity".into(), node_affinity(rng, node_names));
    }
    if chance(rng, 0.12) {
        affinity.insert(
            "podAffinity".into(),
            json!({"requiredDuringSchedulingIgnoredDuringExecution": [affinity_term(rng)]}),
        );
    }
    if chance(rng, 0.15) {
        affinity.insert(
            "podAntiAffinity".into(),
            json!({"requiredDuringSchedulingIgnoredDuringExecution": [affinity_term(rng)]}),
        );
    }
    if !affinity.is_empty() {
        spec["affinity"] = Value::Object(affinity);
    }
    if chance(rng, 0.15) {
        let constraints: Vec<Value> = (0..rng.random_range(1..3)).map(|_| spread_constraint(rng)).collect();
        // One constraint per topology key and policy pair, as the API server requires.
        let mut seen = BTreeSet::new();
        let constraints: Vec<Value> =
            constraints.into_iter().filter(|c| seen.insert(c["topologyKey"].to_string())).collect();
        spec["topologySpreadConstraints"] = json!(constraints);
    }
    let (namespace, ..) = *pick(rng, &NAMESPACES);
    if namespace == "team-a" && chance(rng, 0.1) {
        let claim = *pick(rng, &["bound-0", "bound-1", "bound-2", "bound-3", "unbound", "missing"]);
        spec["volumes"] = json!([{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]);
    }
    json!({"metadata": {"name": format!("p-{i}"), "namespace": namespace,
        "labels": {"app": pick(rng, &APPS), "ver": pick(rng, &["v1", "v2"])}}, "spec": spec})
}

/// The five pods the issue names, each of which kube-scheduler refuses, with the substance of its reason.
pub fn refused_pods(small_node: &str) -> Vec<(Value, &'static str)> {
    let pod = |name: &str, spec: Value| json!({"metadata": {"name": name, "namespace": "team-a"}, "spec": spec});
    let pinned = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [small_node]}]}]}}});
    vec![
        (
            pod(
                "five-foo",
                json!({"containers": [{"name": "c", "image": "app", "resources": {
                "requests": {"example.com/foo": "100"}, "limits": {"example.com/foo": "100"}}}]}),
            ),
            "Insufficient example.com/foo",
        ),
        (
            pod(
                "five-pods",
                json!({"affinity": pinned, "tolerations": [{"operator": "Exists"}],
                "containers": [{"name": "c", "image": "app"}]}),
            ),
            "Too many pods",
        ),
        (
            pod(
                "five-claim",
                json!({"containers": [{"name": "c", "image": "app"}],
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "missing"}}]}),
            ),
            "persistentvolumeclaim \"missing\" not found",
        ),
        (
            // 6 + 6 cores on an 8-core node: the sidecar runs beside the main container.
            pod(
                "five-sidecar",
                json!({"nodeSelector": {"gpuplane.test/cores": "8"},
                "tolerations": [{"operator": "Exists"}],
                "initContainers": [{"name": "proxy", "image": "envoy", "restartPolicy": "Always",
                    "resources": {"requests": {"cpu": "6"}}}],
                "containers": [{"name": "c", "image": "app", "resources": {"requests": {"cpu": "6"}}}]}),
            ),
            "Insufficient cpu",
        ),
        (
            pod(
                "five-claims",
                json!({"containers": [{"name": "c", "image": "app"}],
                "resourceClaims": [{"name": "gpu", "resourceClaimName": "gpu-claim"}]}),
            ),
            "ResourceClaim",
        ),
    ]
}
