//! The extender over HTTP semantics (in process, through the axum router) with messages shaped as
//! kube-scheduler sends them: filter, prioritize and bind, node-cache-capable and not, and bad input. The
//! extender evaluates the pods of its own store, never the body's copy: every test first puts the pods it
//! names into the store (`extender(.., pods)`, as the watch would).
#![allow(clippy::unwrap_used)] // Helpers too: a failed unwrap is a failed test, with its location.

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use gpuplane_kube::extender::{ExtenderBindingResult, ExtenderFilterResult, HostPriority};
use gpuplane_kube::{BindFailure, BindTarget, Binder, Extender, ExtenderConfig, Snapshot, Warning, router};
use gpuplane_place::{Engine, EngineConfig, Policy, TargetWorkload, TieBreak};
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1 as api;
use serde_json::{Value, json};
use tower::ServiceExt;

fn node(name: &str, gpus: u32, model: &str, taint: bool) -> api::Node {
    let mut n = json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {},
        "status": {"allocatable": {"cpu": "31500m", "memory": "125Gi", "pods": "110"}, "capacity": {"cpu": "32", "memory": "128Gi"}}
    });
    if gpus > 0 {
        n["metadata"]["labels"]["nvidia.com/gpu.product"] = json!(model);
        n["status"]["allocatable"]["nvidia.com/gpu"] = json!(gpus.to_string());
    }
    if taint {
        n["spec"]["taints"] = json!([{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]);
    }
    serde_json::from_value(n).unwrap()
}

fn bound_pod(name: &str, node: &str, milli: u32, assignment: Option<&str>) -> api::Pod {
    let mut p = json!({
        "metadata": {"name": name, "namespace": "serving", "uid": format!("uid-{name}"), "annotations": {"gpuplane.io/gpu-milli": milli.to_string()}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}]},
        "status": {"phase": "Running"}
    });
    if let Some(a) = assignment {
        p["metadata"]["annotations"]["gpuplane.io/gpu-assignment"] = json!(a);
    }
    serde_json::from_value(p).unwrap()
}

/// Two tainted T4 nodes (gpu-t4-a has 400 m free on GPU 0), a CPU-only node, an A100 node.
fn cluster() -> (Snapshot, Vec<Warning>) {
    let nodes = vec![
        node("gpu-t4-a", 2, "T4", true),
        node("gpu-t4-b", 2, "T4", true),
        node("cpu-1", 0, "", false),
        node("gpu-a100-1", 8, "A100", true),
    ];
    let pods = vec![bound_pod("resident", "gpu-t4-a", 600, Some("0:600")), bound_pod("done", "gpu-t4-b", 1000, None)];
    Snapshot::build(&nodes, &pods).unwrap()
}

#[derive(Default, Clone)]
struct Recorder {
    calls: Arc<Mutex<Vec<BindTarget>>>,
    fail: Arc<Mutex<bool>>,
}

impl Binder for Recorder {
    async fn bind(&self, target: BindTarget) -> Result<(), BindFailure> {
        if *self.fail.lock().unwrap() {
            return Err(BindFailure::Conflict(
                "Operation cannot be fulfilled on pods/binding: pod is being deleted".into(),
            ));
        }
        self.calls.lock().unwrap().push(target);
        Ok(())
    }
}

/// The Pod objects of `ExtenderArgs`-shaped JSON pods, for the extender's store.
fn watched(pods: &[Value]) -> Vec<Arc<api::Pod>> {
    pods.iter().map(|p| Arc::new(serde_json::from_value(p.clone()).unwrap())).collect()
}

fn extender(policy: Policy, config: ExtenderConfig, pods: &[Value]) -> (axum::Router, Recorder) {
    let (snapshot, _) = cluster();
    let shape = snapshot.cluster().request(&gpuplane_core::Pod::with_requests(
        "t",
        1000,
        0,
        gpuplane_core::GpuRequest { count: 1, milli_per_gpu: 1000 },
    ));
    let target = Arc::new(TargetWorkload::from_requests([&shape], 0.95).unwrap());
    let engine =
        Engine::new(EngineConfig { policy, target: Some(target), seed: 1, tie_break: TieBreak::LowestName }).unwrap();
    let binder = Recorder::default();
    let ext = Arc::new(Extender::new(snapshot, engine, binder.clone(), config));
    ext.set_pods(watched(pods));
    (router(ext), binder)
}

async fn post(app: &axum::Router, path: &str, body: impl Into<Body>) -> (StatusCode, Vec<u8>) {
    let req = Request::post(path).header("content-type", "application/json").body(body.into()).unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    (status, resp.into_body().collect().await.unwrap().to_bytes().to_vec())
}

fn filter_args() -> Value {
    serde_json::from_str(include_str!("fixtures/extender-filter-args.json")).unwrap()
}

#[test]
fn snapshot_reads_assignments_and_guesses_missing_ones() {
    let (snapshot, warnings) = cluster();
    let a = snapshot.node_id("gpu-t4-a").unwrap();
    assert_eq!(&snapshot.cluster().nodes()[a].gpu_free[..2], &[400, 1000]);
    let b = snapshot.node_id("gpu-t4-b").unwrap();
    assert_eq!(&snapshot.cluster().nodes()[b].gpu_free[..2], &[0, 1000], "the unannotated pod takes GPU 0");
    assert_eq!(warnings, vec![Warning::GuessedAssignment { pod: "serving/done".into() }]);
}

#[test]
fn snapshot_never_double_books() {
    let nodes = vec![node("n", 1, "T4", false)];
    let pods = vec![
        bound_pod("a", "n", 700, Some("0:700")),
        bound_pod("b", "n", 700, Some("0:700")),
        bound_pod("c", "ghost", 100, None),
    ];
    let (snapshot, warnings) = Snapshot::build(&nodes, &pods).unwrap();
    assert_eq!(snapshot.cluster().nodes()[0].gpu_free[0], 300);
    assert!(matches!(&warnings[0], Warning::Conflict { pod, .. } if pod == "serving/b"), "{warnings:?}");
    assert!(matches!(&warnings[1], Warning::UnknownNode { node, .. } if node == "ghost"));
}

#[tokio::test]
async fn filter_with_node_names() {
    let (app, _) = extender(Policy::Fgd, ExtenderConfig::default(), &[filter_args()["Pod"].clone()]);
    let (status, body) = post(&app, "/filter", filter_args().to_string()).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let raw: Value = serde_json::from_slice(&body).unwrap();
    assert!(raw.get("NodeNames").is_some() && raw.get("FailedNodes").is_some(), "PascalCase keys: {raw}");
    let result: ExtenderFilterResult = serde_json::from_value(raw).unwrap();
    assert_eq!(result.node_names.unwrap(), vec!["gpu-t4-a", "gpu-t4-b"]);
    assert!(result.failed_and_unresolvable_nodes["cpu-1"].contains("GPU model"));
    assert!(result.failed_and_unresolvable_nodes["gpu-a100-1"].contains("GPU model"), "the pod accepts T4 or A10 only");
    assert!(result.failed_and_unresolvable_nodes["ghost-node"].contains("unknown"));
    assert_eq!(result.error, "");
}

#[tokio::test]
async fn filter_with_full_nodes_returns_them_unchanged() {
    let (app, _) = extender(Policy::BestFit, ExtenderConfig::default(), &[filter_args()["Pod"].clone()]);
    let mut args = filter_args();
    let items: Vec<Value> = ["gpu-t4-b", "cpu-1"]
        .iter()
        .map(|n| serde_json::to_value(node(n, if *n == "cpu-1" { 0 } else { 2 }, "T4", *n != "cpu-1")).unwrap())
        .collect();
    args["NodeNames"] = Value::Null;
    args["Nodes"] = json!({"metadata": {"resourceVersion": "9"}, "items": items.clone()});
    let (status, body) = post(&app, "/filter", args.to_string()).await;
    assert_eq!(status, StatusCode::OK);
    let raw: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(raw["Nodes"]["items"], json!([items[0].clone()]));
    assert!(raw.get("NodeNames").is_none());
}

#[tokio::test]
async fn prioritize_prefers_filling_the_partly_used_gpu() {
    let mut args = filter_args();
    args["Pod"]["metadata"]["annotations"]["gpuplane.io/gpu-milli"] = json!("400");
    let (app, _) = extender(Policy::Fgd, ExtenderConfig::default(), &[args["Pod"].clone()]);
    let (status, body) = post(&app, "/prioritize", args.to_string()).await;
    assert_eq!(status, StatusCode::OK);
    let list: Vec<HostPriority> = serde_json::from_slice(&body).unwrap();
    let score = |h: &str| list.iter().find(|p| p.host == h).unwrap().score;
    assert!(score("gpu-t4-a") > score("gpu-t4-b"), "{list:?}");
    assert_eq!(score("cpu-1"), 0);
    assert!(list.iter().all(|p| (0..=10).contains(&p.score)));
}

#[tokio::test]
async fn bind_writes_the_assignment_and_never_double_books() {
    let mut first = filter_args();
    first["Pod"]["metadata"]["annotations"]["gpuplane.io/gpu-milli"] = json!("300");
    let mut second = first.clone();
    second["Pod"]["metadata"]["name"] = json!("chat-7b-6f9c8d7b5-zz9p1");
    second["Pod"]["metadata"]["uid"] = json!("uid-second");
    let pods = [first["Pod"].clone(), second["Pod"].clone()];
    let (app, binder) = extender(Policy::BestFit, ExtenderConfig::default(), &pods);
    assert_eq!(post(&app, "/filter", first.to_string()).await.0, StatusCode::OK);
    assert_eq!(post(&app, "/filter", second.to_string()).await.0, StatusCode::OK);

    let bind = |name: &str, uid: &str, node: &str| {
        json!({"PodName": name, "PodNamespace": "serving", "PodUID": uid, "Node": node}).to_string()
    };
    let (status, body) =
        post(&app, "/bind", bind("chat-7b-6f9c8d7b5-x2k4q", "0b7e6f3a-2c1d-4e5f-8a9b-1c2d3e4f5a6b", "gpu-t4-a")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(serde_json::from_slice::<ExtenderBindingResult>(&body).unwrap().error, "");
    let calls = binder.calls.lock().unwrap().clone();
    assert_eq!(calls[0].node, "gpu-t4-a");
    assert_eq!(calls[0].assignment, "0:300", "best fit: the GPU with 400 m free");

    // GPU 0 now has 100 m free and GPU 1 is whole: the second 300 m pod must land on GPU 1.
    let (status, _) = post(&app, "/bind", bind("chat-7b-6f9c8d7b5-zz9p1", "uid-second", "gpu-t4-a")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(binder.calls.lock().unwrap()[1].assignment, "1:300");

    // Binding the same pod again is refused, in `Error` of a 200 (kube-scheduler reads nothing else).
    let (status, body) = post(&app, "/bind", bind("chat-7b-6f9c8d7b5-zz9p1", "uid-second", "gpu-t4-b")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(serde_json::from_slice::<ExtenderBindingResult>(&body).unwrap().error.contains("already bound"));
}

#[tokio::test]
async fn failed_binding_releases_the_reservation() {
    let mut args = filter_args();
    args["Pod"]["metadata"]["annotations"]["gpuplane.io/gpu-milli"] = json!("1000");
    let (app, binder) = extender(Policy::BestFit, ExtenderConfig::default(), &[args["Pod"].clone()]);
    post(&app, "/filter", args.to_string()).await;
    let bind = json!({"PodName": "chat-7b-6f9c8d7b5-x2k4q", "PodNamespace": "serving", "PodUID": "0b7e6f3a-2c1d-4e5f-8a9b-1c2d3e4f5a6b", "Node": "gpu-t4-b"}).to_string();
    *binder.fail.lock().unwrap() = true;
    let (status, body) = post(&app, "/bind", bind.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(serde_json::from_slice::<ExtenderBindingResult>(&body).unwrap().error.contains("being deleted"));
    *binder.fail.lock().unwrap() = false;
    let (status, body) = post(&app, "/bind", bind).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(binder.calls.lock().unwrap()[0].assignment, "1:1000");
}

#[tokio::test]
async fn bad_input_gets_a_4xx_with_a_message() {
    let mut impossible = filter_args();
    impossible["Pod"]["metadata"]["annotations"]["gpuplane.io/gpu-milli"] = json!("1500");
    let config = ExtenderConfig { max_body_bytes: 64 << 10, ..Default::default() };
    let (app, _) = extender(Policy::Fgd, config, &[impossible["Pod"].clone()]);
    let (status, body) = post(&app, "/filter", "{\"Pod\": {").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("line 1 column"), "{}", String::from_utf8_lossy(&body));
    let (status, _) = post(&app, "/filter", json!({"NodeNames": ["a"]}).to_string()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = post(&app, "/filter", vec![b' '; 100 << 10]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let (status, body) = post(&app, "/preempt-everything", "{}").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(String::from_utf8_lossy(&body).contains("unknown extender verb"));
    // A pod no node can take: a 200 that fails every candidate as unresolvable, with the reason.
    let (status, body) = post(&app, "/filter", impossible.to_string()).await;
    assert_eq!(status, StatusCode::OK);
    let result: ExtenderFilterResult = serde_json::from_slice(&body).unwrap();
    assert_eq!(result.error, "");
    assert_eq!(result.node_names.as_deref(), Some(&[][..]));
    let names = impossible["NodeNames"].as_array().unwrap();
    assert_eq!(result.failed_and_unresolvable_nodes.len(), names.len());
    let why = result.failed_and_unresolvable_nodes.values().next().unwrap();
    assert!(why.contains("gpuplane.io/gpu-milli") && why.contains("1500"), "{why}");
    let (status, body) = post(&app, "/prioritize", impossible.to_string()).await;
    assert_eq!(status, StatusCode::OK);
    let list: Vec<HostPriority> = serde_json::from_slice(&body).unwrap();
    assert!(list.len() == names.len() && list.iter().all(|p| p.score == 0), "{list:?}");
    let (status, _) = post(&app, "/bind", "[]").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = post(
        &app,
        "/bind",
        json!({"PodName": "x", "PodNamespace": "y", "PodUID": "z", "Node": "gpu-t4-a"}).to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(serde_json::from_slice::<ExtenderBindingResult>(&body).unwrap().error.contains("(uid z) is unknown"));
}

#[tokio::test]
async fn bind_needs_the_uid_of_a_pod_gpuplane_watches() {
    let args = filter_args();
    let mut anonymous = filter_args();
    anonymous["Pod"]["metadata"]["name"] = json!("anonymous");
    anonymous["Pod"]["metadata"].as_object_mut().unwrap().remove("uid");
    let (app, binder) =
        extender(Policy::BestFit, ExtenderConfig::default(), &[args["Pod"].clone(), anonymous["Pod"].clone()]);
    post(&app, "/filter", args.to_string()).await;
    let name = args["Pod"]["metadata"]["name"].as_str().unwrap();
    let bind = |uid: &str| json!({"PodName": name, "PodNamespace": "serving", "PodUID": uid, "Node": "gpu-t4-b"});
    // No UID: the Binding would carry no precondition.
    let (status, body) = post(&app, "/bind", bind("").to_string()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(serde_json::from_slice::<ExtenderBindingResult>(&body).unwrap().error.contains("PodUID is required"));
    // Another UID under the same name: a pod gpuplane does not know.
    let (_, body) = post(&app, "/bind", bind("uid-someone-else").to_string()).await;
    assert!(serde_json::from_slice::<ExtenderBindingResult>(&body).unwrap().error.contains("is unknown"));
    // A pod without a UID cannot be found, filtered or bound by name.
    let (_, body) = post(&app, "/filter", anonymous.to_string()).await;
    let result: ExtenderFilterResult = serde_json::from_slice(&body).unwrap();
    assert!(result.failed_and_unresolvable_nodes.values().all(|why| why.contains("no pod UID")), "{result:?}");
    let (_, body) = post(
        &app,
        "/bind",
        json!({"PodName": "anonymous", "PodNamespace": "serving", "PodUID": "anything", "Node": "gpu-t4-b"})
            .to_string(),
    )
    .await;
    assert!(serde_json::from_slice::<ExtenderBindingResult>(&body).unwrap().error.contains("is unknown"));
    assert!(binder.calls.lock().unwrap().is_empty(), "nothing was bound");
    let uid = args["Pod"]["metadata"]["uid"].as_str().unwrap();
    let (_, body) = post(&app, "/bind", bind(uid).to_string()).await;
    assert_eq!(serde_json::from_slice::<ExtenderBindingResult>(&body).unwrap().error, "");
    assert_eq!(binder.calls.lock().unwrap()[0].uid, uid);
}

#[tokio::test]
async fn fgd_priorities_span_the_extender_range() {
    // FGD's sigmoid gives most candidates one or two values; the extender spreads them over 0–10.
    let mut args = filter_args();
    args["Pod"]["metadata"]["annotations"]["gpuplane.io/gpu-milli"] = json!("400");
    args["NodeNames"] = json!(["gpu-t4-a", "gpu-t4-b", "gpu-a100-1"]);
    let (app, _) = extender(Policy::Fgd, ExtenderConfig::default(), &[args["Pod"].clone()]);
    let (_, body) = post(&app, "/prioritize", args.to_string()).await;
    let list: Vec<HostPriority> = serde_json::from_slice(&body).unwrap();
    let best = list.iter().map(|p| p.score).max().unwrap();
    let worst = list.iter().map(|p| p.score).min().unwrap();
    assert_eq!((worst, best), (0, 10), "{list:?}");
}

#[tokio::test]
async fn preempt_extends_victims_to_free_the_right_gpu_milli() {
    let nodes = vec![node("t4-1", 1, "T4", false), node("t4-2", 1, "T4", false)];
    let mut batch_a = bound_pod("batch-a", "t4-1", 600, Some("0:600"));
    let mut batch_b = bound_pod("batch-b", "t4-1", 300, Some("0:300"));
    let mut vip = bound_pod("vip", "t4-2", 1000, Some("0:1000"));
    batch_a.spec.as_mut().unwrap().priority = Some(0);
    batch_b.spec.as_mut().unwrap().priority = Some(0);
    vip.spec.as_mut().unwrap().priority = Some(5000);
    let (snapshot, warnings) = Snapshot::build(&nodes, &[batch_a, batch_b, vip]).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let engine =
        Engine::new(EngineConfig { policy: Policy::BestFit, target: None, seed: 1, tie_break: TieBreak::LowestName })
            .unwrap();
    let ext = Arc::new(Extender::new(snapshot, engine, Recorder::default(), ExtenderConfig::default()));
    let mut preemptor = filter_args()["Pod"].clone();
    preemptor["metadata"]["annotations"] = json!({"gpuplane.io/gpu-milli": "500"});
    preemptor["spec"]["priority"] = json!(1000);
    ext.set_pods(watched(std::slice::from_ref(&preemptor)));
    let app = router(ext);
    let args = json!({
        "Pod": preemptor,
        "NodeNameToVictims": null,
        "NodeNameToMetaVictims": {
            "t4-1": {"Pods": [{"UID": "uid-batch-b"}], "NumPDBViolations": 0},
            "t4-2": {"Pods": [], "NumPDBViolations": 0}
        }
    });
    let (status, body) = post(&app, "/preempt", args.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let raw: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        raw,
        json!({"NodeNameToMetaVictims": {"t4-1": {"Pods": [{"UID": "uid-batch-b"}, {"UID": "uid-batch-a"}], "NumPDBViolations": 0}}}),
        "300 m freed by batch-b is not enough for 500 m; batch-a must go too; t4-2 holds a higher-priority pod"
    );
    let (status, _) = post(&app, "/preempt", "{}").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn metrics_count_requests_binds_and_pool_fragmentation() {
    let mut args = filter_args();
    args["Pod"]["metadata"]["annotations"]["gpuplane.io/gpu-milli"] = json!("1000");
    let (app, _) = extender(Policy::Fgd, ExtenderConfig::default(), &[args["Pod"].clone()]);
    post(&app, "/filter", args.to_string()).await;
    let bind = json!({"PodName": "chat-7b-6f9c8d7b5-x2k4q", "PodNamespace": "serving", "PodUID": "0b7e6f3a-2c1d-4e5f-8a9b-1c2d3e4f5a6b", "Node": "gpu-t4-b"});
    post(&app, "/bind", bind.to_string()).await;
    post(&app, "/bind", bind.to_string()).await;
    let resp = app.clone().oneshot(Request::get("/metrics").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    let text = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    for line in [
        r#"gpuplane_requests_total{verb="filter",code="200"} 1"#,
        r#"gpuplane_requests_total{verb="bind",code="200"} 2"#,
        r#"gpuplane_binds_total{result="ok"} 1"#,
        r#"gpuplane_binds_total{result="conflict"} 1"#,
        r#"gpuplane_pool_gpus{model="T4"} 4.0"#,
        // T4 pool: 400 m + a whole GPU free on gpu-t4-a; gpu-t4-b is full after the bind.
        r#"gpuplane_pool_unallocated_gpus{model="T4"} 1.4"#,
        // For a workload of whole-GPU tasks the 400 m partial GPU is fragment, the whole one is not.
        r#"gpuplane_pool_frag_amount_gpus{model="T4"} 0.4"#,
        r#"gpuplane_pool_frag_ratio{model="T4"} 0.2857142857142857"#,
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    assert!(text.contains("gpuplane_request_duration_seconds_bucket"), "{text}");
    assert!(text.trim_end().ends_with("# EOF"));
}

#[tokio::test]
async fn refresh_keeps_bindings_the_watch_has_not_shown_yet() {
    let nodes = vec![node("t4-1", 1, "T4", false)];
    let (snapshot, _) = Snapshot::build(&nodes, &[]).unwrap();
    let engine =
        Engine::new(EngineConfig { policy: Policy::BestFit, target: None, seed: 1, tie_break: TieBreak::LowestName })
            .unwrap();
    let ext = Arc::new(Extender::new(snapshot, engine, Recorder::default(), ExtenderConfig::default()));
    let app = router(Arc::clone(&ext));
    let mut args = filter_args();
    args["Pod"]["metadata"]["annotations"] = json!({"gpuplane.io/gpu-milli": "700"});
    args["NodeNames"] = json!(["t4-1"]);
    ext.set_pods(watched(&[args["Pod"].clone()]));
    post(&app, "/filter", args.to_string()).await;
    let bind = json!({"PodName": "chat-7b-6f9c8d7b5-x2k4q", "PodNamespace": "serving", "PodUID": "0b7e6f3a-2c1d-4e5f-8a9b-1c2d3e4f5a6b", "Node": "t4-1"});
    assert_eq!(post(&app, "/bind", bind.to_string()).await.0, StatusCode::OK);
    let free = |ext: &Extender<Recorder>| ext.snapshot().cluster().nodes()[0].gpu_free[0];

    // The watch caches do not show the binding yet: it is kept.
    ext.refresh(&nodes, &[], std::time::Duration::from_secs(30)).unwrap();
    assert_eq!(free(&ext), 300);
    // Now they do: it is counted once.
    let mut visible = bound_pod("chat-7b-6f9c8d7b5-x2k4q", "t4-1", 700, Some("0:700"));
    visible.metadata.uid = Some("0b7e6f3a-2c1d-4e5f-8a9b-1c2d3e4f5a6b".into());
    ext.refresh(&nodes, &[visible], std::time::Duration::from_secs(30)).unwrap();
    assert_eq!(free(&ext), 300);
    // Deleted later: the GPU is free again, since the in-flight record is gone.
    ext.refresh(&nodes, &[], std::time::Duration::from_secs(30)).unwrap();
    assert_eq!(free(&ext), 1000);
}
