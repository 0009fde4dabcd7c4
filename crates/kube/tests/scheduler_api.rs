//! `gpuplane scheduler` against kube-rs's mock service standing in for the API server: it lists and
//! watches Nodes, Pods, PodDisruptionBudgets, Namespaces and volume objects, binds a pending pod (one Binding carrying the assignment), does
//! not retry a binding the API server refused as a conflict, evicts a victim for a higher-priority pod,
//! hands the Lease over between replicas, keeps renewing it while a slow cluster loads, and writes
//! nothing once it is lost.
#![allow(clippy::unwrap_used)] // Helpers too: a failed unwrap is a failed test, with its location.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{Method, Request, Response, StatusCode};
use gpuplane_kube::scheduler::leader::{LeaderElector, Leadership, LeaseConfig};
use gpuplane_kube::scheduler::run::{InventoryPolling, RunConfig, serve_scheduler};
use gpuplane_kube::scheduler::{SchedulerConfig, queue::QueueConfig};
use gpuplane_place::Policy;
use http_body_util::BodyExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tower_test::mock;

fn node(name: &str, gpus: u32) -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "resourceVersion": "5", "labels": {"nvidia.com/gpu.product": "NVIDIA-A10"}},
        "spec": {},
        "status": {"allocatable": {"cpu": "31500m", "memory": "125Gi", "pods": "110", "nvidia.com/gpu": gpus.to_string()}}})
}

fn pod(name: &str, priority: i32, bound: Option<&str>) -> Value {
    let mut p = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "ml", "uid": format!("uid-{name}"), "resourceVersion": "7"},
        "spec": {"schedulerName": "gpuplane", "priority": priority,
            "containers": [{"name": "main", "image": "vllm/vllm-openai:v0.6.0",
                "resources": {"requests": {"cpu": "1", "memory": "4Gi", "nvidia.com/gpu": "1"},
                              "limits": {"nvidia.com/gpu": "1"}}}]},
        "status": {"phase": "Pending"}});
    if let Some(assignment) = bound {
        p["spec"]["nodeName"] = json!("gpu-1");
        p["metadata"]["annotations"] = json!({"gpuplane.io/gpu-assignment": assignment});
        p["status"]["phase"] = json!("Running");
    }
    p
}

fn list(kind: &str, items: &[Value]) -> Value {
    json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": "10"}, "items": items})
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    let outcome = if code < 300 { "Success" } else { "Failure" };
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": outcome, "reason": reason,
           "message": message, "code": code})
}

/// A JSON answer of the fake API server.
fn response(code: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap())
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

/// What the fake API server saw: method, path and query, JSON body.
type Seen = (Method, String, Value);

/// Answers list, watch (held open), patch, binding and eviction calls; reports writes on `seen`.
fn fake_api(
    nodes: Vec<Value>,
    pods: Vec<Value>,
    binding: Arc<Mutex<Vec<(u16, Value)>>>,
) -> (kube::Client, mpsc::UnboundedReceiver<Seen>) {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some((req, send)) = handle.next_request().await {
            let method = req.method().clone();
            let uri = req.uri().to_string();
            let bytes = req.into_body().collect().await.unwrap().to_bytes();
            let body: Value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
            let path = uri.split('?').next().unwrap().to_owned();
            if uri.contains("watch=true") {
                held.push(send); // A watch with no events yet.
                continue;
            }
            let (code, reply) = match (method.clone(), path.as_str()) {
                (Method::GET, "/api/v1/nodes") => (200, list("NodeList", &nodes)),
                (Method::GET, "/api/v1/pods") => (200, list("PodList", &pods)),
                (Method::GET, "/apis/policy/v1/poddisruptionbudgets") => (200, list("PodDisruptionBudgetList", &[])),
                (Method::GET, "/api/v1/namespaces") => (200, list("NamespaceList", &[])),
                (Method::GET, "/api/v1/persistentvolumeclaims") => (200, list("PersistentVolumeClaimList", &[])),
                (Method::GET, "/api/v1/persistentvolumes") => (200, list("PersistentVolumeList", &[])),
                (Method::GET, "/apis/storage.k8s.io/v1/storageclasses") => (200, list("StorageClassList", &[])),
                (Method::POST, p) if p.ends_with("/events") => (201, body.clone()),
                (Method::PATCH, p) if p.starts_with("/api/v1/namespaces/ml/pods/") => {
                    let name = p.rsplit('/').next().unwrap();
                    (200, pod(name, 0, None))
                }
                (Method::POST, p) if p.ends_with("/binding") => {
                    let mut answers = binding.lock().unwrap();
                    if answers.len() > 1 { answers.remove(0) } else { answers[0].clone() }
                }
                (Method::POST, p) if p.ends_with("/eviction") => (201, status(201, "", "")),
                _ => (404, status(404, "NotFound", &format!("{method} {uri} is not served by this fake"))),
            };
            if method != Method::GET {
                let _ = tx.send((method, uri, body));
            }
            send.send_response(response(code, &reply));
        }
    });
    (kube::Client::new(service, "default"), rx)
}

fn config() -> RunConfig {
    RunConfig {
        policy: Policy::Fgd,
        scheduler: SchedulerConfig { queue: QueueConfig::default(), ..SchedulerConfig::default() },
        lease: None,
        metrics_listen: "127.0.0.1:0".parse().unwrap(),
        // No cache agent among the pods: the poller runs and finds none.
        inventory: Some(InventoryPolling::default()),
    }
}

async fn next_write(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(Duration::from_secs(20), rx.recv()).await.expect("no write within 20 s").unwrap()
}

/// Starts the scheduler; the returned sender stops it.
fn start(
    client: kube::Client,
) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<Result<(), gpuplane_kube::serve::ServeError>>) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve_scheduler(client, config(), None, async move {
        let _ = stopped.await;
    }));
    (stop, task)
}

#[tokio::test]
async fn watches_then_binds_a_pending_pod_with_its_assignment() {
    let answers = Arc::new(Mutex::new(vec![(201, status(201, "", ""))]));
    let (client, mut writes) = fake_api(vec![node("gpu-1", 2)], vec![pod("chat-0", 100, None)], answers);
    let (stop, task) = start(client);

    // One write: the Binding carries the assignment, which the API server copies onto the pod.
    let (method, uri, body) = next_write(&mut writes).await;
    assert_eq!(body["metadata"]["annotations"], json!({"gpuplane.io/gpu-assignment": "0:1000"}));
    assert_eq!((method, uri.split('?').next().unwrap()), (Method::POST, "/api/v1/namespaces/ml/pods/chat-0/binding"));
    assert_eq!(body["target"], json!({"apiVersion": "v1", "kind": "Node", "name": "gpu-1"}));
    assert_eq!(body["metadata"]["uid"], json!("uid-chat-0"));

    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

/// Counts the binding calls for chat-0 within 3 s (a retry after a failed bind comes after 1 s).
async fn bindings_within_3s(first_answer: (u16, Value)) -> usize {
    let answers = Arc::new(Mutex::new(vec![first_answer, (201, status(201, "", ""))]));
    let (client, mut writes) = fake_api(vec![node("gpu-1", 1)], vec![pod("chat-0", 100, None)], answers);
    let (stop, task) = start(client);
    let mut bindings = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while let Ok(Some((_, uri, _))) = tokio::time::timeout_at(deadline, writes.recv()).await {
        if uri.contains("/binding") {
            bindings += 1;
        }
    }
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    bindings
}

#[tokio::test]
async fn a_binding_conflict_is_not_retried_but_a_server_error_is() {
    let conflict = status(
        409,
        "Conflict",
        "Operation cannot be fulfilled on pods/binding \"chat-0\": pod chat-0 is already assigned to node \"gpu-2\"",
    );
    assert_eq!(bindings_within_3s((409, conflict)).await, 1, "the pod is someone else's now");
    let unavailable = status(503, "ServiceUnavailable", "etcdserver: request timed out");
    assert_eq!(bindings_within_3s((503, unavailable)).await, 2, "retried after its backoff");
}

#[tokio::test]
async fn a_high_priority_pod_evicts_a_batch_pod_through_the_eviction_api() {
    let answers = Arc::new(Mutex::new(vec![(201, status(201, "", ""))]));
    let pods = vec![pod("batch-0", 1000, Some("0:1000")), pod("chat-0", 100_000, None)];
    let (client, mut writes) = fake_api(vec![node("gpu-1", 1)], pods, answers);
    let (stop, task) = start(client);
    let (method, uri, body) = next_write(&mut writes).await;
    assert_eq!((method, uri.split('?').next().unwrap()), (Method::POST, "/api/v1/namespaces/ml/pods/batch-0/eviction"));
    assert_eq!((&body["apiVersion"], &body["kind"]), (&json!("policy/v1"), &json!("Eviction")));
    assert_eq!(body["deleteOptions"]["preconditions"]["uid"], json!("uid-batch-0"));
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

fn lease(holder: &str, renew: &str, transitions: i32, version: &str) -> Value {
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "gpuplane-scheduler", "namespace": "gpuplane", "resourceVersion": version},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "renewTime": renew,
                 "acquireTime": "2026-11-28T09:00:00.000000Z", "leaseTransitions": transitions}})
}

/// A Lease endpoint that answers GETs with `current` and PUTs with 200 (or 409 when `conflict`),
/// recording each PUT body and making it the current lease.
fn lease_api(current: Arc<Mutex<Value>>, conflict: bool) -> (kube::Client, mpsc::UnboundedReceiver<Value>) {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let method = req.method().clone();
            assert!(req.uri().path().ends_with("/namespaces/gpuplane/leases/gpuplane-scheduler"), "{}", req.uri());
            let bytes = req.into_body().collect().await.unwrap().to_bytes();
            let (code, reply) = if method == Method::PUT {
                let body: Value = serde_json::from_slice(&bytes).unwrap();
                tx.send(body.clone()).unwrap();
                if conflict {
                    (
                        409,
                        status(
                            409,
                            "Conflict",
                            "the object has been modified; please apply your changes to the latest version",
                        ),
                    )
                } else {
                    *current.lock().unwrap() = body.clone();
                    (200, body)
                }
            } else {
                (200, current.lock().unwrap().clone())
            };
            send.send_response(response(code, &reply));
        }
    });
    (kube::Client::new(service, "default"), rx)
}

fn elector(client: kube::Client, identity: &str) -> LeaderElector {
    let api: kube::Api<Lease> = kube::Api::namespaced(client, "gpuplane");
    LeaderElector::new(api, LeaseConfig::new("gpuplane-scheduler", identity))
}

#[tokio::test(start_paused = true)]
async fn the_lease_passes_to_another_replica_only_after_it_expired_unrenewed() {
    let current = Arc::new(Mutex::new(lease("scheduler-a", "2026-11-28T09:00:00.000000Z", 0, "100")));
    let (client, mut puts) = lease_api(Arc::clone(&current), false);
    let mut b = elector(client, "scheduler-b");

    assert_eq!(b.try_acquire_or_renew().await.unwrap(), Leadership::Follower("scheduler-a".into()));
    // a renews: the record changes, so b's wait starts again.
    tokio::time::advance(Duration::from_secs(10)).await;
    *current.lock().unwrap() = lease("scheduler-a", "2026-11-28T09:00:10.000000Z", 0, "101");
    assert_eq!(b.try_acquire_or_renew().await.unwrap(), Leadership::Follower("scheduler-a".into()));
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(b.try_acquire_or_renew().await.unwrap(), Leadership::Follower("scheduler-a".into()));
    assert!(puts.try_recv().is_err(), "no write while a's lease is live");
    // a stopped renewing 15 s ago by b's clock: b takes over.
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(b.try_acquire_or_renew().await.unwrap(), Leadership::Leader);
    let put = puts.recv().await.unwrap();
    assert_eq!(put["spec"]["holderIdentity"], json!("scheduler-b"));
    assert_eq!(put["spec"]["leaseTransitions"], json!(1));
    assert_eq!(put["metadata"]["resourceVersion"], json!("101"), "optimistic concurrency on the version read");

    // a comes back: it sees b's lease and follows.
    let (client_a, _puts_a) = lease_api(Arc::clone(&current), false);
    let mut a = elector(client_a, "scheduler-a");
    assert_eq!(a.try_acquire_or_renew().await.unwrap(), Leadership::Follower("scheduler-b".into()));

    // b shuts down and releases the lease: a takes it at once.
    b.release().await.unwrap();
    assert_eq!(puts.recv().await.unwrap()["spec"].get("holderIdentity"), None);
    assert_eq!(a.try_acquire_or_renew().await.unwrap(), Leadership::Leader);
    assert_eq!(current.lock().unwrap()["spec"]["leaseTransitions"], json!(2));
}

#[tokio::test(start_paused = true)]
async fn of_two_replicas_racing_for_an_expired_lease_the_one_that_loses_the_write_follows() {
    let current = Arc::new(Mutex::new(lease("", "2026-11-28T09:00:00.000000Z", 3, "200")));
    let (client, mut puts) = lease_api(current, true);
    let mut c = elector(client, "scheduler-c");
    assert_eq!(c.try_acquire_or_renew().await.unwrap(), Leadership::Follower(String::new()));
    assert_eq!(puts.recv().await.unwrap()["spec"]["holderIdentity"], json!("scheduler-c"));
}

#[tokio::test]
async fn a_pod_that_fits_nowhere_is_told_why_on_its_status() {
    let answers = Arc::new(Mutex::new(vec![(201, status(201, "", ""))]));
    let (client, mut writes) = fake_api(vec![node("cpu-1", 0)], vec![pod("chat-0", 100, None)], answers);
    let (stop, task) = start(client);
    let (method, uri, body) = next_write(&mut writes).await;
    assert_eq!((method, uri.split('?').next().unwrap()), (Method::PATCH, "/api/v1/namespaces/ml/pods/chat-0/status"));
    let condition = &body["status"]["conditions"][0];
    assert_eq!((&condition["type"], &condition["status"]), (&json!("PodScheduled"), &json!("False")));
    assert_eq!(condition["reason"], "Unschedulable");
    assert_eq!(condition["message"], "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.");
    // And a FailedScheduling event on the pod, as kube-scheduler records one.
    let (method, uri, body) = next_write(&mut writes).await;
    assert_eq!((method, uri.split('?').next().unwrap()), (Method::POST, "/api/v1/namespaces/ml/events"));
    assert_eq!((&body["reason"], &body["type"]), (&json!("FailedScheduling"), &json!("Warning")));
    assert_eq!(body["involvedObject"]["uid"], "uid-chat-0");
    assert_eq!(body["message"], "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.");
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

/// An API server whose pod list takes `load` to answer, with a Lease that "scheduler-b" takes over at
/// `takeover` (GETs show b's record from then on and PUTs conflict). Reports lease PUTs and every other
/// write, with the (paused) time they came at.
fn slow_cluster_with_lease(
    load: Duration,
    takeover: Option<Duration>,
) -> (kube::Client, mpsc::UnboundedReceiver<(Duration, Method, String)>) {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let (tx, rx) = mpsc::unbounded_channel();
    let started = tokio::time::Instant::now();
    tokio::spawn(async move {
        let mut held = Vec::new();
        let mut current: Option<Value> = None;
        while let Some((req, send)) = handle.next_request().await {
            let (method, uri) = (req.method().clone(), req.uri().to_string());
            let bytes = req.into_body().collect().await.unwrap().to_bytes();
            let path = uri.split('?').next().unwrap().to_owned();
            let at = started.elapsed();
            let taken = takeover.is_some_and(|t| at >= t);
            if uri.contains("watch=true") {
                held.push(send);
                continue;
            }
            if method != Method::GET {
                let _ = tx.send((at, method.clone(), path.clone()));
            }
            let lease_path = "/apis/coordination.k8s.io/v1/namespaces/gpuplane/leases";
            let (code, reply) = match (method.clone(), path.as_str()) {
                (Method::GET, p) if p.starts_with(lease_path) => match (&current, taken) {
                    (_, true) => (200, lease("scheduler-b", "2026-11-28T09:00:30.000000Z", 1, "900")),
                    (Some(l), false) => (200, l.clone()),
                    (None, false) => (404, status(404, "NotFound", "leases \"gpuplane-scheduler\" not found")),
                },
                (Method::POST | Method::PUT, p) if p.starts_with(lease_path) && !taken => {
                    let mut body: Value = serde_json::from_slice(&bytes).unwrap();
                    body["metadata"]["resourceVersion"] = json!(format!("{}", at.as_millis()));
                    current = Some(body.clone());
                    (200, body)
                }
                (Method::PUT, p) if p.starts_with(lease_path) => (409, status(409, "Conflict", "modified")),
                (Method::GET, "/api/v1/pods") => {
                    // The slow initial list: answered later, while other calls go on.
                    tokio::spawn(async move {
                        tokio::time::sleep(load).await;
                        send.send_response(response(200, &list("PodList", &[pod("chat-0", 100, None)])));
                    });
                    continue;
                }
                (Method::GET, "/api/v1/nodes") => (200, list("NodeList", &[node("gpu-1", 2)])),
                (Method::GET, "/apis/policy/v1/poddisruptionbudgets") => (200, list("PodDisruptionBudgetList", &[])),
                (Method::GET, "/api/v1/namespaces") => (200, list("NamespaceList", &[])),
                (Method::GET, "/api/v1/persistentvolumeclaims") => (200, list("PersistentVolumeClaimList", &[])),
                (Method::GET, "/api/v1/persistentvolumes") => (200, list("PersistentVolumeList", &[])),
                (Method::GET, "/apis/storage.k8s.io/v1/storageclasses") => (200, list("StorageClassList", &[])),
                (Method::POST, p) if p.ends_with("/events") => (201, json!({})),
                (Method::POST, p) if p.ends_with("/binding") => (201, status(201, "", "")),
                _ => (404, status(404, "NotFound", &format!("{method} {uri} is not served by this fake"))),
            };
            send.send_response(response(code, &reply));
        }
    });
    (kube::Client::new(service, "default"), rx)
}

fn start_leading(
    client: kube::Client,
) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<Result<(), gpuplane_kube::serve::ServeError>>) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = RunConfig {
        lease: Some(("gpuplane".to_owned(), LeaseConfig::new("gpuplane-scheduler", "scheduler-a"))),
        inventory: None,
        ..config()
    };
    let task = tokio::spawn(serve_scheduler(client, config, None, async move {
        let _ = stopped.await;
    }));
    (stop, task)
}

#[tokio::test(start_paused = true)]
async fn a_new_leader_keeps_renewing_its_lease_while_a_slow_cluster_loads() {
    let (client, mut writes) = slow_cluster_with_lease(Duration::from_secs(30), None);
    let (stop, task) = start_leading(client);
    let mut renewals_while_loading = 0;
    let mut bound_at = None;
    while bound_at.is_none() {
        let (at, method, path) =
            tokio::time::timeout(Duration::from_secs(60), writes.recv()).await.expect("a write").unwrap();
        if path.contains("/leases") && method == Method::PUT && at < Duration::from_secs(30) {
            renewals_while_loading += 1;
        }
        if path.ends_with("/binding") {
            bound_at = Some(at);
        }
    }
    // Renewal every 2 s from acquiring at 0 s: 14 within the 30 s the pod list took, not 0.
    assert!(renewals_while_loading >= 12, "{renewals_while_loading} renewals while loading");
    assert!(bound_at >= Some(Duration::from_secs(30)));
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_leader_that_lost_its_lease_while_loading_writes_nothing_more() {
    // b takes the lease at 5 s, while a is still loading (the list answers at 30 s).
    let (client, mut writes) = slow_cluster_with_lease(Duration::from_secs(30), Some(Duration::from_secs(5)));
    let (_stop, task) = start_leading(client);
    let ended = tokio::time::timeout(Duration::from_secs(60), task).await.expect("the scheduler stops").unwrap();
    assert!(
        matches!(ended, Err(gpuplane_kube::serve::ServeError::Leadership(_))),
        "ends for the lost lease: {ended:?}"
    );
    tokio::time::sleep(Duration::from_secs(60)).await;
    let mut after = Vec::new();
    while let Ok((at, method, path)) = writes.try_recv() {
        if !path.contains("/leases") || at >= Duration::from_secs(8) {
            after.push((at, method, path));
        }
    }
    assert!(after.is_empty(), "writes other than the lease's before the takeover was seen: {after:?}");
}
