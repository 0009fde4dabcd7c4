//! The extender's verbs end to end through its router, with a recording binder and pods in its store.
#![allow(clippy::unwrap_used)] // A failed unwrap is a failed test, with its location.

use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use axum::http::Request;
use gpuplane_place::{EngineConfig, Policy, TieBreak};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::*;

#[derive(Default, Clone)]
struct Recorder(Arc<Mutex<Vec<BindTarget>>>);

impl Binder for Recorder {
    async fn bind(&self, target: BindTarget) -> Result<(), BindFailure> {
        self.0.lock().unwrap().push(target);
        Ok(())
    }
}

/// The API server of a test: one pod, or a failure; counts the reads.
#[derive(Clone)]
struct ApiServer {
    pod: Option<Value>,
    fail: bool,
    reads: Arc<AtomicUsize>,
}

impl PodLookup for ApiServer {
    fn get<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Arc<api::Pod>>, LookupError>> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        let found =
            self.pod.as_ref().filter(|p| p["metadata"]["namespace"] == namespace && p["metadata"]["name"] == name);
        let answer = match (self.fail, found) {
            (true, _) => Err(LookupError("connection refused".into())),
            (false, found) => Ok(found.map(|p| Arc::new(serde_json::from_value(p.clone()).unwrap()))),
        };
        Box::pin(async move { answer })
    }
}

/// A tainted one-GPU node `gpu-1` (the GPU pool) and an untainted CPU node `cpu-1`.
fn nodes() -> Vec<Value> {
    let node = |name: &str, gpu: bool| {
        let mut n = json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": {},
            "status": {"allocatable": {"cpu": "32", "memory": "128Gi", "pods": "110"}}
        });
        if gpu {
            n["metadata"]["labels"]["nvidia.com/gpu.product"] = json!("A100");
            n["status"]["allocatable"]["nvidia.com/gpu"] = json!("1");
            n["spec"]["taints"] = json!([{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]);
        }
        n
    };
    vec![node("gpu-1", true), node("cpu-1", false)]
}

/// A pending CPU pod without tolerations, of `scheduler`.
fn pod(name: &str, uid: &str, scheduler: &str) -> Value {
    json!({
        "metadata": {"name": name, "namespace": "team", "uid": uid},
        "spec": {"schedulerName": scheduler, "containers": [{"name": "c", "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}]},
        "status": {"phase": "Pending"}
    })
}

/// The pod as an attacker sends it: the real identity, a spec that tolerates everything and is not even
/// a valid PodSpec (the extender must not read it at all).
fn fabricated(name: &str, uid: &str) -> Value {
    json!({
        "metadata": {"name": name, "namespace": "team", "uid": uid, "annotations": {"gpuplane.io/gpu-milli": "100"}},
        "spec": {"schedulerName": "default-scheduler", "tolerations": [{"operator": "Exists"}], "containers": "not a list"}
    })
}

fn extender(watched: &[Value], config: ExtenderConfig) -> (Arc<Extender<Recorder>>, Recorder) {
    let nodes: Vec<api::Node> = nodes().into_iter().map(|n| serde_json::from_value(n).unwrap()).collect();
    let (snapshot, _) = Snapshot::build(&nodes, &[]).unwrap();
    let engine =
        Engine::new(EngineConfig { policy: Policy::BestFit, target: None, seed: 1, tie_break: TieBreak::LowestName })
            .unwrap();
    let binder = Recorder::default();
    let ext = Arc::new(Extender::new(snapshot, engine, binder.clone(), config));
    ext.set_pods(watched.iter().map(|p| Arc::new(serde_json::from_value(p.clone()).unwrap())));
    (ext, binder)
}

async fn post(ext: &Arc<Extender<Recorder>>, path: &str, body: impl Into<Body>) -> (StatusCode, Value) {
    let request = Request::post(path).header("content-type", "application/json").body(body.into()).unwrap();
    let response = router(Arc::clone(ext)).oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into())))
}

fn filter_body(pod: &Value, nodes: &[&str]) -> String {
    json!({"Pod": pod, "NodeNames": nodes}).to_string()
}

fn bind_body(name: &str, uid: &str, node: &str) -> String {
    json!({"PodName": name, "PodNamespace": "team", "PodUID": uid, "Node": node}).to_string()
}

/// Asserts a filter answer fails every one of `nodes` as unresolvable, each reason containing `why`.
fn refused_everywhere(answer: &Value, nodes: &[&str], why: &str) {
    assert_eq!(answer["NodeNames"], json!([]), "{answer}");
    let failed = answer["FailedAndUnresolvableNodes"].as_object().unwrap();
    assert_eq!(failed.len(), nodes.len(), "{answer}");
    assert!(failed.values().all(|r| r.as_str().unwrap().contains(why)), "expected {why:?} in {answer}");
}

#[tokio::test]
async fn a_fabricated_body_is_evaluated_as_the_watched_pod() {
    let (ext, binder) = extender(&[pod("victim", "uid-victim", "default-scheduler")], ExtenderConfig::default());
    let (status, answer) =
        post(&ext, "/filter", filter_body(&fabricated("victim", "uid-victim"), &["gpu-1", "cpu-1"])).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["NodeNames"], json!(["cpu-1"]), "the watched pod tolerates nothing: {answer}");
    assert_eq!(answer["FailedAndUnresolvableNodes"]["gpu-1"], json!("gpuplane: untolerated taint"));
    let (_, answer) = post(&ext, "/bind", bind_body("victim", "uid-victim", "gpu-1")).await;
    assert!(answer["Error"].as_str().unwrap().contains("untolerated taint"), "{answer}");
    assert!(binder.0.lock().unwrap().is_empty(), "bound to the tainted node");
    // Where the watched pod fits, it is bound as the watch has it: CPU only, no GPU assignment.
    let (_, answer) = post(&ext, "/bind", bind_body("victim", "uid-victim", "cpu-1")).await;
    assert_eq!(answer["Error"], json!(""), "{answer}");
    let bound = binder.0.lock().unwrap().clone();
    assert_eq!((bound[0].node.as_str(), bound[0].assignment.as_str()), ("cpu-1", ""));
}

#[tokio::test]
async fn an_unknown_uid_is_refused_by_every_verb() {
    let (ext, binder) = extender(&[], ExtenderConfig::default());
    let body = filter_body(&fabricated("ghost", "uid-ghost"), &["gpu-1", "cpu-1"]);
    let (status, answer) = post(&ext, "/filter", body.clone()).await;
    assert_eq!(status, StatusCode::OK);
    refused_everywhere(&answer, &["gpu-1", "cpu-1"], "pod team/ghost (uid uid-ghost) is unknown");
    let (_, answer) = post(&ext, "/prioritize", body).await;
    assert_eq!(answer, json!([{"Host": "gpu-1", "Score": 0}, {"Host": "cpu-1", "Score": 0}]));
    let (_, answer) = post(&ext, "/bind", bind_body("ghost", "uid-ghost", "cpu-1")).await;
    assert!(answer["Error"].as_str().unwrap().contains("is unknown"), "{answer}");
    let preempt = json!({"Pod": fabricated("ghost", "uid-ghost"), "NodeNameToMetaVictims": {"cpu-1": {"Pods": [], "NumPDBViolations": 0}}});
    let (_, answer) = post(&ext, "/preempt", preempt.to_string()).await;
    assert_eq!(answer, json!({"NodeNameToMetaVictims": {}}));
    let (_, answer) = post(&ext, "/filter", filter_body(&json!({"metadata": {"name": "x"}}), &["cpu-1"])).await;
    refused_everywhere(&answer, &["cpu-1"], "no pod UID");
    assert!(binder.0.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_pod_the_watch_has_not_shown_is_read_once_and_only_with_its_uid() {
    let reads = Arc::new(AtomicUsize::new(0));
    let server = |pod: Option<Value>, fail: bool| ApiServer { pod, fail, reads: Arc::clone(&reads) };
    let fresh = pod("fresh", "uid-fresh", "default-scheduler");

    let (ext, _) = extender(&[], ExtenderConfig::default());
    let ext = Arc::new(Arc::into_inner(ext).unwrap().with_pod_lookup(server(Some(fresh.clone()), false)));
    // The API server's pod of that name has another UID: a replaced pod, or a made-up UID.
    let (_, answer) = post(&ext, "/filter", filter_body(&fabricated("fresh", "uid-made-up"), &["cpu-1"])).await;
    refused_everywhere(&answer, &["cpu-1"], "has uid uid-fresh at the API server, not uid-made-up");
    assert_eq!(reads.swap(0, Ordering::SeqCst), 1);
    // The right UID: read once, then filter, prioritize and bind all use that copy.
    let (_, answer) = post(&ext, "/filter", filter_body(&fabricated("fresh", "uid-fresh"), &["gpu-1", "cpu-1"])).await;
    assert_eq!(answer["NodeNames"], json!(["cpu-1"]), "{answer}");
    post(&ext, "/prioritize", filter_body(&fabricated("fresh", "uid-fresh"), &["cpu-1"])).await;
    let (_, answer) = post(&ext, "/bind", bind_body("fresh", "uid-fresh", "gpu-1")).await;
    assert!(answer["Error"].as_str().unwrap().contains("untolerated taint"), "{answer}");
    assert_eq!(reads.swap(0, Ordering::SeqCst), 1, "one read for three verbs");

    let (ext, _) = extender(&[], ExtenderConfig::default());
    let ext = Arc::new(Arc::into_inner(ext).unwrap().with_pod_lookup(server(None, true)));
    let (_, answer) = post(&ext, "/bind", bind_body("fresh", "uid-fresh", "cpu-1")).await;
    assert!(answer["Error"].as_str().unwrap().contains("reading it from the API server failed: connection refused"));
}

#[tokio::test]
async fn pods_of_other_schedulers_are_refused_naming_their_scheduler() {
    let config =
        ExtenderConfig { scheduler_names: vec!["default-scheduler".into(), "gpu".into()], ..Default::default() };
    let (ext, binder) = extender(&[pod("batch", "uid-batch", "other"), pod("mine", "uid-mine", "gpu")], config);
    let why =
        "pod team/batch has spec.schedulerName \"other\"; this extender serves only pods of default-scheduler, gpu";
    let body = filter_body(&fabricated("batch", "uid-batch"), &["gpu-1", "cpu-1"]);
    let (_, answer) = post(&ext, "/filter", body.clone()).await;
    refused_everywhere(&answer, &["gpu-1", "cpu-1"], why);
    let (_, answer) = post(&ext, "/prioritize", body).await;
    assert!(answer.as_array().unwrap().iter().all(|p| p["Score"] == 0), "{answer}");
    let (_, answer) = post(&ext, "/bind", bind_body("batch", "uid-batch", "cpu-1")).await;
    assert_eq!(answer["Error"], json!(why));
    let preempt = json!({"Pod": fabricated("batch", "uid-batch"), "NodeNameToMetaVictims": {"cpu-1": {"Pods": []}}});
    assert_eq!(post(&ext, "/preempt", preempt.to_string()).await.1, json!({"NodeNameToMetaVictims": {}}));
    assert!(binder.0.lock().unwrap().is_empty());
    // A pod of a configured scheduler is served.
    let (_, answer) = post(&ext, "/bind", bind_body("mine", "uid-mine", "cpu-1")).await;
    assert_eq!(answer["Error"], json!(""), "{answer}");
}

#[tokio::test]
async fn a_known_uid_under_another_name_is_refused() {
    let (ext, binder) = extender(&[pod("victim", "uid-victim", "default-scheduler")], ExtenderConfig::default());
    let (_, answer) = post(&ext, "/filter", filter_body(&fabricated("mine", "uid-victim"), &["cpu-1"])).await;
    refused_everywhere(&answer, &["cpu-1"], "uid uid-victim is pod team/victim, not team/mine");
    let (_, answer) = post(&ext, "/bind", bind_body("mine", "uid-victim", "cpu-1")).await;
    assert!(answer["Error"].as_str().unwrap().contains("is pod team/victim, not team/mine"), "{answer}");
    assert!(binder.0.lock().unwrap().is_empty());
}

/// `ExtenderArgs` with whole Nodes (nodeCacheCapable false): `count` copies of the two test nodes, each
/// padded with a label of `pad` bytes, named `gpu-1`/`cpu-1` so the snapshot knows them.
fn whole_nodes_body(pod: &Value, count: usize, pad: usize) -> String {
    let mut items = Vec::new();
    for _ in 0..count {
        for mut node in nodes() {
            node["metadata"]["labels"]["padding"] = json!("x".repeat(pad));
            items.push(node);
        }
    }
    json!({"Pod": pod, "Nodes": {"items": items}, "NodeNames": null}).to_string()
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_and_just_under_it_are_served() {
    let limit = 256 << 10;
    let config = ExtenderConfig { max_body_bytes: limit, ..Default::default() };
    let (ext, _) = extender(&[pod("victim", "uid-victim", "default-scheduler")], config);
    let who = fabricated("victim", "uid-victim");
    let near = whole_nodes_body(&who, 55, 2000);
    assert!(near.len() < limit && near.len() > limit * 9 / 10, "{} bytes", near.len());
    let (status, answer) = post(&ext, "/filter", near.clone()).await;
    assert_eq!(status, StatusCode::OK);
    // The passing nodes come back byte for byte as they were sent (here: every cpu-1 copy).
    let sent: Value = serde_json::from_str(&near).unwrap();
    let cpu: Vec<&Value> = sent["Nodes"]["items"].as_array().unwrap().iter().skip(1).step_by(2).collect();
    assert_eq!(answer["Nodes"]["items"].as_array().unwrap().iter().collect::<Vec<_>>(), cpu);
    let over = whole_nodes_body(&who, 70, 2000);
    assert!(over.len() > limit);
    assert_eq!(post(&ext, "/filter", over).await.0, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn a_call_naming_more_candidates_than_any_cluster_has_is_refused() {
    // The answer names every candidate: 4 million names would be a 500 MB answer.
    let (ext, _) = extender(&[pod("victim", "uid-victim", "default-scheduler")], ExtenderConfig::default());
    let names: Vec<String> = (0..=super::verbs::MAX_CANDIDATES).map(|i| format!("n-{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let (status, answer) = post(&ext, "/filter", filter_body(&fabricated("victim", "uid-victim"), &names)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
}
