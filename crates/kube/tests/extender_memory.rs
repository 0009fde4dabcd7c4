//! What one large extender request costs in memory. kube-scheduler without `nodeCacheCapable` sends every
//! candidate as a whole Node; for 5,000 kubelet-reported Nodes that is tens of MB per call, and parsing it
//! into Node objects and a `serde_json::Value` tree (as the extender once did) took about 60 times the body.
//! Here the body's size is measured against the default limit, and the extender's peak memory on it — the
//! high-water mark of resident memory (`VmHWM`, reset through `/proc/self/clear_refs`) — against a bound the
//! old way of parsing exceeds on the same kind of body. Each measurement runs in a fresh child process (this
//! test binary again): in a process that has freed many small allocations the allocator reuses them, and new
//! allocations would not show in its resident memory.
#![allow(clippy::unwrap_used)] // A failed unwrap is a failed test, with its location.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use gpuplane_kube::extender::{DEFAULT_MAX_BODY_BYTES, ExtenderArgs};
use gpuplane_kube::{BindFailure, BindTarget, Binder, Extender, ExtenderConfig, Snapshot, router};
use gpuplane_place::{Engine, EngineConfig, Policy, TieBreak};
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1 as api;
use serde_json::{Value, json};
use tower::ServiceExt;

/// Nodes in the cluster the default body limit is sized for.
const NODES: usize = 5_000;
/// Peak memory of a request may grow by this factor of the body's size (plus [`SLACK`]): the body itself
/// is not counted (it is allocated before the reset); the reply, when every Node passes, is as large again.
const FACTOR: usize = 2;
/// Fixed allowance on top of [`FACTOR`]: the names, the candidate list, allocator slack.
const SLACK: usize = 32 << 20;

struct NoBinder;

impl Binder for NoBinder {
    async fn bind(&self, _: BindTarget) -> Result<(), BindFailure> {
        Ok(())
    }
}

/// A GPU Node as the kubelet reports it and kube-scheduler's cache holds it: 50 images (the kubelet's
/// default `nodeStatusMaxImages`), the usual labels and annotations, and the managedFields of the kubelet,
/// kube-controller-manager and kubeadm (kube-scheduler versions that keep them send them too).
fn kubelet_node(i: usize) -> Value {
    let name = format!("gpu-node-{i:05}.us-east-1.compute.internal");
    let images: Vec<Value> = (0..50)
        .map(|k| {
            json!({"names": [format!("registry.example.com/team-{k}/image-{k}@sha256:{:064x}", i * 50 + k),
                             format!("registry.example.com/team-{k}/image-{k}:v1.{k}.{}", i % 97)],
                   "sizeBytes": 100_000_000 + k * 7919})
        })
        .collect();
    let uuids: Vec<String> = (0..8).map(|g| format!("GPU-{i:08x}-{g:04x}-4a1b-9c2d-{:012x}", i * 8 + g)).collect();
    let condition = |kind: &str, status: &str, reason: &str, message: &str| {
        json!({"type": kind, "status": status, "lastHeartbeatTime": "2026-12-01T10:00:00Z",
               "lastTransitionTime": "2026-11-01T10:00:00Z", "reason": reason, "message": message})
    };
    let managed = |manager: &str, operation: &str, sub: Option<&str>, fields: Value| {
        let mut m = json!({"manager": manager, "operation": operation, "apiVersion": "v1",
                           "time": "2026-12-01T10:00:00Z", "fieldsType": "FieldsV1", "fieldsV1": fields});
        if let Some(s) = sub {
            m["subresource"] = json!(s);
        }
        m
    };
    let resources = json!({"cpu": "96", "memory": "1056561520Ki", "ephemeral-storage": "3750000000Ki",
                           "hugepages-1Gi": "0", "hugepages-2Mi": "0", "pods": "110", "nvidia.com/gpu": "8",
                           "gpuplane.io/gpu-milli": "8000"});
    json!({
        "metadata": {
            "name": name, "uid": format!("{i:08x}-7d3c-4f2a-9b1e-{:012x}", i), "resourceVersion": format!("{}", 9_000_000 + i),
            "creationTimestamp": "2026-11-01T10:00:00Z",
            "labels": {
                "beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/instance-type": "p4d.24xlarge",
                "beta.kubernetes.io/os": "linux", "failure-domain.beta.kubernetes.io/region": "us-east-1",
                "failure-domain.beta.kubernetes.io/zone": "us-east-1a", "kubernetes.io/arch": "amd64",
                "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                "node.kubernetes.io/instance-type": "p4d.24xlarge", "topology.kubernetes.io/region": "us-east-1",
                "topology.kubernetes.io/zone": "us-east-1a", "nvidia.com/gpu.product": "A100-SXM4-40GB",
                "nvidia.com/gpu.count": "8", "nvidia.com/gpu.memory": "40960", "nvidia.com/cuda.driver.major": "550",
                "nvidia.com/cuda.driver.minor": "127", "nvidia.com/gpu.family": "ampere", "gpuplane.io/pool": "gpu"
            },
            "annotations": {
                "node.alpha.kubernetes.io/ttl": "0", "volumes.kubernetes.io/controller-managed-attach-detach": "true",
                "kubeadm.alpha.kubernetes.io/cri-socket": "unix:///var/run/containerd/containerd.sock",
                "csi.volume.kubernetes.io/nodeid": format!("{{\"ebs.csi.aws.com\":\"i-{i:017x}\"}}"),
                "gpuplane.io/gpu-uuids": uuids.join(",")
            },
            "managedFields": [
                managed("kubelet", "Update", None, json!({"f:metadata": {"f:annotations": {".": {},
                    "f:node.alpha.kubernetes.io/ttl": {}, "f:volumes.kubernetes.io/controller-managed-attach-detach": {}},
                    "f:labels": {".": {}, "f:beta.kubernetes.io/arch": {}, "f:beta.kubernetes.io/os": {},
                    "f:kubernetes.io/arch": {}, "f:kubernetes.io/hostname": {}, "f:kubernetes.io/os": {}}},
                    "f:spec": {"f:providerID": {}}})),
                managed("kube-controller-manager", "Update", None, json!({"f:spec": {"f:podCIDR": {}, "f:podCIDRs": {".": {}, "v:\"10.64.12.0/24\"": {}}}})),
                managed("kubelet", "Update", Some("status"), json!({"f:status": {"f:allocatable": {"f:cpu": {},
                    "f:ephemeral-storage": {}, "f:memory": {}, "f:nvidia.com/gpu": {}, "f:gpuplane.io/gpu-milli": {}},
                    "f:capacity": {"f:cpu": {}, "f:ephemeral-storage": {}, "f:memory": {}, "f:nvidia.com/gpu": {}},
                    "f:conditions": {"k:{\"type\":\"DiskPressure\"}": {"f:lastHeartbeatTime": {}, "f:lastTransitionTime": {}, "f:message": {}, "f:reason": {}, "f:status": {}},
                    "k:{\"type\":\"MemoryPressure\"}": {"f:lastHeartbeatTime": {}, "f:lastTransitionTime": {}, "f:message": {}, "f:reason": {}, "f:status": {}},
                    "k:{\"type\":\"PIDPressure\"}": {"f:lastHeartbeatTime": {}, "f:lastTransitionTime": {}, "f:message": {}, "f:reason": {}, "f:status": {}},
                    "k:{\"type\":\"Ready\"}": {"f:lastHeartbeatTime": {}, "f:lastTransitionTime": {}, "f:message": {}, "f:reason": {}, "f:status": {}}},
                    "f:images": {}, "f:nodeInfo": {"f:bootID": {}, "f:containerRuntimeVersion": {}, "f:kernelVersion": {},
                    "f:kubeProxyVersion": {}, "f:kubeletVersion": {}, "f:machineID": {}, "f:operatingSystem": {},
                    "f:osImage": {}, "f:systemUUID": {}}}})),
                managed("kubeadm", "Update", None, json!({"f:metadata": {"f:annotations": {"f:kubeadm.alpha.kubernetes.io/cri-socket": {}}}}))
            ]
        },
        "spec": {"podCIDR": "10.64.12.0/24", "podCIDRs": ["10.64.12.0/24"],
                 "providerID": format!("aws:///us-east-1a/i-{i:017x}"),
                 "taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]},
        "status": {
            "capacity": resources, "allocatable": resources,
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                condition("Ready", "True", "KubeletReady", "kubelet is posting ready status")
            ],
            "addresses": [{"type": "InternalIP", "address": format!("10.0.{}.{}", i / 250, i % 250)},
                          {"type": "InternalDNS", "address": name}, {"type": "Hostname", "address": name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {"machineID": format!("{i:032x}"), "systemUUID": format!("ec2{i:05x}-1c2d-3e4f-5a6b-7c8d9e0f1a2b"),
                         "bootID": format!("{i:08x}-0b1c-2d3e-4f5a-6b7c8d9e0f1a"), "kernelVersion": "6.1.112-124.190.amzn2023.x86_64",
                         "osImage": "Amazon Linux 2023.6.20241031", "containerRuntimeVersion": "containerd://1.7.23",
                         "kubeletVersion": "v1.33.1", "kubeProxyVersion": "v1.33.1", "operatingSystem": "linux",
                         "architecture": "amd64"},
            "images": images,
            "runtimeHandlers": [{"name": "nvidia", "features": {"recursiveReadOnlyMounts": true, "userNamespaces": true}},
                                {"name": "runc", "features": {"recursiveReadOnlyMounts": true, "userNamespaces": true}}]
        }
    })
}

/// A pending pod of one whole GPU that tolerates the pool's taint, as kube-scheduler would send it.
fn gpu_pod() -> Value {
    json!({
        "metadata": {"name": "train-0", "namespace": "ml", "uid": "uid-train-0"},
        "spec": {"schedulerName": "default-scheduler",
                 "containers": [{"name": "main", "resources": {"requests": {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "1"}}}],
                 "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
        "status": {"phase": "Pending"}
    })
}

/// The `ExtenderArgs` of `nodes` whole Nodes for [`gpu_pod`].
fn whole_nodes_args(nodes: &[Value]) -> String {
    json!({"Pod": gpu_pod(), "Nodes": {"metadata": {"resourceVersion": "9000001"}, "items": nodes}, "NodeNames": null})
        .to_string()
}

/// The process's resident set and its high-water mark, in bytes.
fn rss_and_peak() -> (usize, usize) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse::<usize>().unwrap() * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// How far `work` raises the process's peak resident memory above what it holds when `work` starts.
fn peak_growth<T>(work: impl FnOnce() -> T) -> (usize, T) {
    // Writing 5 resets VmHWM to the current RSS (Linux 4.0 and later).
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let (before, _) = rss_and_peak();
    let out = work();
    let (_, peak) = rss_and_peak();
    (peak.saturating_sub(before), out)
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// Which measurement a child process makes, and on which body file.
const PROBE: &str = "GPUPLANE_EXTENDER_MEMORY_PROBE";
const TEST: &str = "a_5000_node_request_fits_the_default_limit_and_costs_about_its_size";

/// Runs this test again in a child process that makes measurement `kind` on the body in `file`; the
/// peak growth it reports, in bytes.
fn measure_in_child(kind: &str, file: &std::path::Path) -> usize {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST, "--nocapture", "--test-threads", "1"])
        .env(PROBE, format!("{kind}:{}", file.display()))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{kind} probe failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    // The harness prints the test's name on the same line, before the test's own output.
    let value = stdout.split("peak-growth=").nth(1).and_then(|rest| rest.split_whitespace().next());
    value.unwrap_or_else(|| panic!("no peak-growth in:\n{stdout}")).parse().unwrap()
}

/// The child's side: reads the body, builds what the measurement needs, then measures only the work.
fn probe(spec: &str) {
    let (kind, file) = spec.split_once(':').unwrap();
    let body = std::fs::read(file).unwrap();
    let growth = match kind {
        "extender" => {
            // A snapshot of the same node names, built from small Node objects (little heap left behind).
            let nodes: Vec<api::Node> = (0..NODES)
                .map(|i| {
                    let name = format!("gpu-node-{i:05}.us-east-1.compute.internal");
                    serde_json::from_value(json!({
                        "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": "A100-SXM4-40GB"}},
                        "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]},
                        "status": {"allocatable": {"cpu": "96", "memory": "1056561520Ki", "pods": "110", "nvidia.com/gpu": "8"}}
                    }))
                    .unwrap()
                })
                .collect();
            let (snapshot, _) = Snapshot::build(&nodes, &[]).unwrap();
            drop(nodes);
            let engine = Engine::new(EngineConfig {
                policy: Policy::BestFit,
                target: None,
                seed: 1,
                tie_break: TieBreak::LowestName,
            })
            .unwrap();
            let ext = Arc::new(Extender::new(snapshot, engine, NoBinder, ExtenderConfig::default()));
            ext.set_pods([Arc::new(serde_json::from_value(gpu_pod()).unwrap())]);
            let app = router(ext);
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let (growth, passed) = peak_growth(|| {
                runtime.block_on(async {
                    let request =
                        Request::post("/filter").header("content-type", "application/json").body(Body::from(body));
                    let response = app.clone().oneshot(request.unwrap()).await.unwrap();
                    assert_eq!(response.status(), StatusCode::OK);
                    let reply = response.into_body().collect().await.unwrap().to_bytes();
                    // Every Node passes: the reply is as large as the request.
                    let needle = b"\"kubeletVersion\":\"v1.33.1\"";
                    reply.windows(needle.len()).filter(|w| w == needle).count()
                })
            });
            assert_eq!(passed, NODES, "every Node passes and is sent back");
            growth
        }
        "old" => {
            let (growth, _) = peak_growth(|| {
                let typed: ExtenderArgs = serde_json::from_slice(&body).unwrap();
                let tree: Value = serde_json::from_slice(&body).unwrap();
                (typed.nodes.map(|n| n.items.len()), tree.get("Nodes").is_some())
            });
            growth
        }
        other => panic!("unknown probe {other}"),
    };
    println!("peak-growth={growth}");
}

#[test]
fn a_5000_node_request_fits_the_default_limit_and_costs_about_its_size() {
    if let Ok(spec) = std::env::var(PROBE) {
        return probe(&spec);
    }
    let nodes: Vec<Value> = (0..NODES).map(kubelet_node).collect();
    let body = whole_nodes_args(&nodes);
    let per_node = body.len() / NODES;
    eprintln!(
        "ExtenderArgs with {NODES} whole Nodes: {} bytes ({:.1} MiB, {per_node} bytes per Node); default limit {} bytes ({:.0} MiB)",
        body.len(),
        mib(body.len()),
        DEFAULT_MAX_BODY_BYTES,
        mib(DEFAULT_MAX_BODY_BYTES)
    );
    assert!(body.len() * 3 / 2 <= DEFAULT_MAX_BODY_BYTES, "the default limit leaves less than half again as much room");
    let dir = tempfile::tempdir().unwrap();
    let (full, quarter) = (dir.path().join("full.json"), dir.path().join("quarter.json"));
    std::fs::write(&full, &body).unwrap();
    let small = whole_nodes_args(&nodes[..NODES / 4]);
    std::fs::write(&quarter, &small).unwrap();
    let (size, small) = (body.len(), small.len());
    drop((body, nodes));

    let growth = measure_in_child("extender", &full);
    eprintln!("extender filter of {:.1} MiB: peak grew by {:.1} MiB", mib(size), mib(growth));
    assert!(growth <= FACTOR * size + SLACK, "peak grew by {:.1} MiB for a {:.1} MiB body", mib(growth), mib(size));

    // The probe can fail: parsing as the extender once did (typed, then as a Value tree) exceeds the same
    // bound on a quarter of the body.
    let old = measure_in_child("old", &quarter);
    eprintln!("typed + Value parse of {:.1} MiB: peak grew by {:.1} MiB", mib(small), mib(old));
    assert!(old > FACTOR * small + SLACK, "the old parse stayed within the bound: the probe measures nothing");
}
