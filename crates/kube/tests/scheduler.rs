//! The secondary scheduler's state machine, driven with Node, Pod and PodDisruptionBudget objects as the
//! API server returns them: queue order, GPU assignment, failed binds, deletions and cordons in flight,
//! and preemption with disruption budgets. No GPU is ever handed out twice.
#![allow(clippy::unwrap_used)] // Helpers too: a failed unwrap is a failed test, with its location.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gpuplane_kube::metrics::Metrics;
use gpuplane_kube::scheduler::budget::Budget;
use gpuplane_kube::scheduler::{Action, Scheduler, SchedulerConfig, WindowConfig};
use gpuplane_kube::{BindFailure, Snapshot};
use gpuplane_place::{Engine, EngineConfig, Policy, TargetWorkload, TieBreak};
use k8s_openapi::api::core::v1 as api;
use serde_json::json;

fn node(name: &str, gpus: u32, cordoned: bool) -> api::Node {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "nvidia.com/gpu.product": "NVIDIA-A10",
            "gpuplane.io/pool": "gpu"}},
        "spec": {"unschedulable": cordoned, "taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]},
        "status": {"allocatable": {"cpu": "31500m", "memory": "125Gi", "pods": "110", "nvidia.com/gpu": gpus.to_string()},
            "capacity": {"cpu": "32", "memory": "128Gi", "nvidia.com/gpu": gpus.to_string()}}
    }))
    .unwrap()
}

/// A pod of `schedulerName: gpuplane` asking for `milli` of one GPU, pending or bound to `node` with
/// `assignment`.
fn pod(name: &str, priority: i32, milli: u32, bound: Option<(&str, &str)>) -> api::Pod {
    let mut p = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "ml", "uid": format!("uid-{name}"),
            "labels": {"app": name.trim_end_matches(|c: char| c.is_ascii_digit())},
            "annotations": {"gpuplane.io/gpu-milli": milli.to_string()}},
        "spec": {"schedulerName": "gpuplane", "priority": priority,
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [{"name": "main", "image": "vllm/vllm-openai:v0.6.0",
                "resources": {"requests": {"cpu": "2", "memory": "8Gi"}}}]},
        "status": {"phase": "Pending"}
    });
    if let Some((node, assignment)) = bound {
        p["spec"]["nodeName"] = json!(node);
        p["metadata"]["annotations"]["gpuplane.io/gpu-assignment"] = json!(assignment);
        p["status"]["phase"] = json!("Running");
    }
    serde_json::from_value(p).unwrap()
}

fn scheduler(nodes: &[api::Node], pods: &[api::Pod]) -> Scheduler {
    scheduler_with(nodes, pods, SchedulerConfig::default())
}

fn scheduler_with(nodes: &[api::Node], pods: &[api::Pod], config: SchedulerConfig) -> Scheduler {
    let (snapshot, _) = Snapshot::build(nodes, &[]).unwrap();
    let shape = snapshot.cluster().request(&gpuplane_core::Pod::with_requests(
        "t",
        1000,
        0,
        gpuplane_core::GpuRequest { count: 1, milli_per_gpu: 500 },
    ));
    let target = TargetWorkload::from_requests(&[shape], 0.95).unwrap();
    let engine = Engine::new(EngineConfig {
        policy: Policy::Fgd,
        target: Some(Arc::new(target)),
        seed: 1,
        tie_break: TieBreak::LowestName,
    })
    .unwrap();
    let mut s = Scheduler::new(snapshot, engine, config, Arc::new(Metrics::new()));
    assert!(s.rebuild(nodes, pods).unwrap().is_empty());
    s
}

fn bind_of(action: Option<Action>) -> gpuplane_kube::BindTarget {
    match action {
        Some(Action::Bind(t)) => t,
        other => panic!("expected a bind, got {other:?}"),
    }
}

/// Asserts the action reports `pod` unschedulable for `reason`.
fn reported(action: Option<Action>, pod: &str, reason: &str) {
    match action {
        Some(Action::ReportUnschedulable { pod: p, message, .. }) => {
            assert_eq!(p, pod);
            assert_eq!(message, reason);
        }
        other => panic!("expected {pod} reported unschedulable, got {other:?}"),
    }
}

/// The pod as the watch shows it once bound.
fn confirmed(name: &str, priority: i32, milli: u32, target: &gpuplane_kube::BindTarget) -> api::Pod {
    pod(name, priority, milli, Some((&target.node, &target.assignment)))
}

#[test]
fn pending_pods_bind_in_priority_order_without_sharing_a_gpu_twice() {
    let nodes = [node("gpu-1", 1, false)];
    let pods = [pod("batch-0", 1000, 600, None), pod("chat-0", 100_000, 600, None)];
    let mut s = scheduler(&nodes, &pods);
    let now = Instant::now();
    let first = bind_of(s.next(now));
    assert_eq!((first.name.as_str(), first.node.as_str(), first.assignment.as_str()), ("chat-0", "gpu-1", "0:600"));
    assert_eq!(first.uid, "uid-chat-0");
    // 400 m are left: the batch pod waits, and says why once.
    reported(
        s.next(now),
        "ml/batch-0",
        "0/1 nodes are available: 1 Insufficient GPUs (GPU-level fit: too few GPUs with the free share asked).",
    );
    assert_eq!(s.next(now), None);
    assert_eq!(s.queued(), 1);
    assert_eq!(s.snapshot().cluster().allocated_gpu_milli(), 600);
    // An update of the pod from before the binding does not queue it again.
    s.pod_applied(&pod("chat-0", 100_000, 600, None));
    assert_eq!(s.queued(), 1);
    // The watch confirms; nothing changes.
    s.pod_applied(&confirmed("chat-0", 100_000, 600, &first));
    assert_eq!(s.snapshot().cluster().allocated_gpu_milli(), 600);
}

/// Every action the scheduler has now, in order.
fn drain(s: &mut Scheduler, now: Instant) -> Vec<Action> {
    std::iter::from_fn(|| s.next(now)).collect()
}

#[test]
fn cycles_wait_for_their_pods_or_their_time_and_place_jointly_in_priority_order() {
    // Two GPUs, and 400, 400, 600, 600 m asked. Placed as one cycle, the 600s go first and each 400 joins
    // one of them: both GPUs full.
    let window = WindowConfig { pods: 4, wait: Duration::from_millis(500) };
    let nodes = [node("gpu-1", 2, false)];
    let mut s = scheduler_with(&nodes, &[], SchedulerConfig { window, ..SchedulerConfig::default() });
    let t0 = Instant::now();
    for (i, milli) in [400, 400, 600].into_iter().enumerate() {
        s.pod_applied(&pod(&format!("batch-{i}"), 1000, milli, None));
    }
    assert_eq!(s.next(t0), None, "three of four pods: the cycle waits");
    assert_eq!(s.next_wakeup(), Some(t0 + Duration::from_millis(500)));
    s.pod_applied(&pod("batch-3", 1000, 600, None));
    let binds: Vec<_> = drain(&mut s, t0).into_iter().map(|a| bind_of(Some(a))).collect();
    assert_eq!(binds.len(), 4, "the fourth pod completes the cycle: all placed at once");
    let mut per_gpu = [0u32; 2];
    for b in &binds {
        let (gpu, milli) = b.assignment.split_once(':').unwrap();
        per_gpu[gpu.parse::<usize>().unwrap()] += milli.parse::<u32>().unwrap();
    }
    assert_eq!(per_gpu, [1000, 1000]);

    // A lone pod waits out the cycle's time, then goes alone; a higher-priority pod that arrives while a
    // cycle is gathering is placed first in it.
    let nodes = [node("gpu-1", 1, false)];
    let mut s = scheduler_with(&nodes, &[], SchedulerConfig { window, ..SchedulerConfig::default() });
    s.pod_applied(&pod("batch-0", 1000, 700, None));
    assert_eq!(s.next(t0), None);
    s.pod_applied(&pod("chat-0", 100_000, 700, None));
    let due = s.next_wakeup().unwrap();
    assert_eq!(due, t0 + Duration::from_millis(500), "the cycle's clock started with its first pod");
    assert_eq!(s.next(due - Duration::from_millis(1)), None);
    let actions = drain(&mut s, due);
    assert_eq!(bind_of(actions.first().cloned()).name, "chat-0");
    reported(
        actions.get(1).cloned(),
        "ml/batch-0",
        "0/1 nodes are available: 1 Insufficient GPUs (GPU-level fit: too few GPUs with the free share asked).",
    );
}

#[test]
fn a_freed_gpu_lets_the_waiting_pod_in_after_its_backoff() {
    let nodes = [node("gpu-1", 1, false)];
    let running = pod("chat-0", 100_000, 600, Some(("gpu-1", "0:600")));
    let mut s = scheduler(&nodes, &[running.clone(), pod("batch-0", 1000, 600, None)]);
    let t0 = Instant::now();
    reported(
        s.next(t0),
        "ml/batch-0",
        "0/1 nodes are available: 1 Insufficient GPUs (GPU-level fit: too few GPUs with the free share asked).",
    );
    s.pod_deleted(&running);
    assert_eq!(s.next(t0), None, "still in backoff");
    let retry = s.next_wakeup().unwrap();
    assert!(retry <= t0 + Duration::from_secs(1));
    assert_eq!(bind_of(s.next(retry)).name, "batch-0");
}

#[test]
fn failed_binds_release_the_gpus_and_retry_only_when_worth_it() {
    let nodes = [node("gpu-1", 1, false)];
    let t0 = Instant::now();

    // Another scheduler bound it meanwhile: no retry, the GPUs are free again.
    let mut s = scheduler(&nodes, &[pod("a", 0, 1000, None)]);
    bind_of(s.next(t0));
    s.bind_finished("ml/a", Err(BindFailure::Conflict("pod a is already assigned to node gpu-2".into())), t0);
    assert_eq!(s.snapshot().cluster().allocated_gpu_milli(), 0);
    assert_eq!(s.queued(), 0);

    // The pod was deleted in flight (404): same.
    let mut s = scheduler(&nodes, &[pod("a", 0, 1000, None)]);
    bind_of(s.next(t0));
    s.bind_finished("ml/a", Err(BindFailure::Gone("pods \"a\" not found".into())), t0);
    assert_eq!((s.snapshot().cluster().allocated_gpu_milli(), s.queued()), (0, 0));

    // The API server failed: retried after backoff, to the same free GPU.
    let mut s = scheduler(&nodes, &[pod("a", 0, 1000, None)]);
    bind_of(s.next(t0));
    s.bind_finished("ml/a", Err(BindFailure::Other("connection reset".into())), t0);
    assert_eq!(s.snapshot().cluster().allocated_gpu_milli(), 0);
    assert_eq!(s.next(t0), None);
    assert_eq!(bind_of(s.next(t0 + Duration::from_secs(1))).assignment, "0:1000");
}

#[test]
fn a_pod_deleted_in_flight_frees_its_reservation() {
    let nodes = [node("gpu-1", 1, false)];
    let pending = pod("a", 0, 1000, None);
    let mut s = scheduler(&nodes, &[pending.clone(), pod("b", 0, 1000, None)]);
    let t0 = Instant::now();
    assert_eq!(bind_of(s.next(t0)).name, "a");
    s.pod_deleted(&pending);
    assert_eq!(s.snapshot().cluster().allocated_gpu_milli(), 0);
    // b was waiting for room; the deletion is the cluster change it waited for.
    s.bind_finished("ml/a", Ok(()), t0);
    assert_eq!(bind_of(s.next(t0 + Duration::from_secs(1))).name, "b");
}

#[test]
fn cordoned_nodes_get_no_new_pods_and_in_flight_placements_survive_a_rebuild() {
    let t0 = Instant::now();
    let pods = [pod("a", 0, 1000, None), pod("b", 0, 1000, None)];
    let mut s = scheduler(&[node("gpu-1", 1, false), node("gpu-2", 1, false)], &pods);
    let a = bind_of(s.next(t0));
    assert_eq!(a.node, "gpu-1");
    // gpu-2 is cordoned before b is tried; the watch has not shown a's binding yet.
    s.rebuild(&[node("gpu-1", 1, false), node("gpu-2", 1, true)], &pods).unwrap();
    assert_eq!(s.snapshot().cluster().allocated_gpu_milli(), 1000, "a's reservation is kept");
    reported(
        s.next(t0 + Duration::from_secs(120)),
        "ml/b",
        "0/2 nodes are available: 1 Insufficient GPUs (GPU-level fit: too few GPUs with the free share asked), 1 node(s) were unschedulable.",
    );
    s.rebuild(&[node("gpu-1", 1, false), node("gpu-2", 1, false)], &pods).unwrap();
    assert_eq!(bind_of(s.next(t0 + Duration::from_secs(125))).node, "gpu-2");
}

#[test]
fn preemption_takes_the_fewest_pods_with_the_least_gpu_loss_within_budgets() {
    // gpu-a: two 1000 m batch pods. gpu-b: a 600 m batch pod on GPU 0 and a 1000 m one on GPU 1.
    let nodes = [node("gpu-a", 2, false), node("gpu-b", 2, false)];
    let running = vec![
        pod("train-a0", 1000, 1000, Some(("gpu-a", "0:1000"))),
        pod("train-a1", 1000, 1000, Some(("gpu-a", "1:1000"))),
        pod("eval-b0", 1000, 600, Some(("gpu-b", "0:600"))),
        pod("train-b1", 1000, 1000, Some(("gpu-b", "1:1000"))),
    ];
    let mut pods = running.clone();
    pods.push(pod("chat-0", 100_000, 500, None));
    let t0 = Instant::now();

    let mut s = scheduler(&nodes, &pods);
    match s.next(t0) {
        Some(Action::Evict { preemptor, node, victims }) => {
            assert_eq!((preemptor.as_str(), node.as_str()), ("ml/chat-0", "gpu-b"));
            let keys: Vec<_> = victims.iter().map(|v| v.key.as_str()).collect();
            assert_eq!(keys, ["ml/eval-b0"], "one pod, 600 m lost rather than 1000 m");
            assert_eq!(victims[0].uid, "uid-eval-b0");
        }
        other => panic!("expected a preemption, got {other:?}"),
    }
    // While the victim terminates, no second preemption starts.
    assert_eq!(s.next(t0 + Duration::from_secs(30)), None);
    // The victim goes; the preemptor is placed where it made room.
    s.pod_deleted(&running[2]);
    let bound = bind_of(s.next(t0 + Duration::from_secs(30)));
    assert_eq!((bound.name.as_str(), bound.node.as_str(), bound.assignment.as_str()), ("chat-0", "gpu-b", "0:500"));

    // With eval pods protected by a budget that allows no disruption, a train pod goes instead.
    let budget: k8s_openapi::api::policy::v1::PodDisruptionBudget = serde_json::from_value(json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": "eval", "namespace": "ml"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "eval-b"}}},
        "status": {"disruptionsAllowed": 0, "currentHealthy": 1, "desiredHealthy": 1, "expectedPods": 1}
    }))
    .unwrap();
    let mut s = scheduler(&nodes, &pods);
    s.set_budgets(vec![Budget::from_object(&budget).unwrap()]);
    match s.next(t0) {
        Some(Action::Evict { node, victims, .. }) => {
            assert_eq!(node, "gpu-a", "same loss as train-b1, and gpu-a sorts first");
            assert_eq!(victims.len(), 1);
            assert_ne!(victims[0].key, "ml/eval-b0");
        }
        other => panic!("expected a preemption, got {other:?}"),
    }
}

#[test]
fn a_pod_with_preemption_policy_never_waits_and_evicts_nobody() {
    // As kube-scheduler: preemptionPolicy Never (set on the pod from its PriorityClass) keeps the pod's
    // place in the queue by priority, but it never takes a lower-priority pod's GPU.
    let nodes = [node("gpu-a", 1, false)];
    let mut polite = pod("chat-0", 100_000, 1000, None);
    polite.spec.as_mut().unwrap().preemption_policy = Some("Never".into());
    let pods = [pod("train-0", 1000, 1000, Some(("gpu-a", "0:1000"))), polite.clone()];
    let mut s = scheduler(&nodes, &pods);
    reported(
        s.next(Instant::now()),
        "ml/chat-0",
        "0/1 nodes are available: 1 Insufficient GPUs (GPU-level fit: too few GPUs with the free share asked).",
    );
    // The same pod with the default policy preempts.
    polite.spec.as_mut().unwrap().preemption_policy = Some("PreemptLowerPriority".into());
    let mut s = scheduler(&nodes, &[pods[0].clone(), polite]);
    assert!(matches!(s.next(Instant::now()), Some(Action::Evict { .. })));
}

#[test]
fn attack_a_rewritten_assignment_does_not_free_the_gpu_it_holds() {
    // A tenant rewrote its bound pod's assignment from 0:1000 to 0:1. The pod still requests 1000 milli:
    // the snapshot takes the amount from the request, so GPU 0 stays full and nobody else is put on it.
    let nodes = [node("gpu-a", 1, false)];
    let pods = [pod("mine", 0, 1000, Some(("gpu-a", "0:1"))), pod("theirs", 0, 900, None)];
    let mut s = scheduler(&nodes, &[]);
    let warnings = s.rebuild(&nodes, &pods).unwrap();
    assert_eq!(warnings, vec![gpuplane_kube::Warning::GuessedAssignment { pod: "ml/mine".into() }]);
    reported(
        s.next(Instant::now()),
        "ml/theirs",
        "0/1 nodes are available: 1 Insufficient GPUs (GPU-level fit: too few GPUs with the free share asked).",
    );
}

#[test]
fn pods_of_equal_or_higher_priority_are_never_victims() {
    let nodes = [node("gpu-a", 1, false)];
    let pods = [pod("chat-0", 100_000, 1000, Some(("gpu-a", "0:1000"))), pod("chat-1", 100_000, 1000, None)];
    let mut s = scheduler(&nodes, &pods);
    reported(
        s.next(Instant::now()),
        "ml/chat-1",
        "0/1 nodes are available: 1 Insufficient GPUs (GPU-level fit: too few GPUs with the free share asked).",
    );
    assert_eq!(s.queued(), 1);
}

#[test]
fn pods_for_other_schedulers_and_unreadable_pods_are_not_queued() {
    let nodes = [node("gpu-a", 1, false)];
    let mut other = pod("web", 0, 0, None);
    other.spec.as_mut().unwrap().scheduler_name = Some("default-scheduler".into());
    let mut bad = pod("bad", 0, 0, None);
    bad.metadata.annotations.as_mut().unwrap().insert("gpuplane.io/gpu-milli".into(), "lots".into());
    let (snapshot, _) = Snapshot::build(&nodes, &[]).unwrap();
    let engine =
        Engine::new(EngineConfig { policy: Policy::BestFit, target: None, seed: 1, tie_break: TieBreak::LowestName })
            .unwrap();
    let mut s = Scheduler::new(snapshot, engine, SchedulerConfig::default(), Arc::new(Metrics::new()));
    assert_eq!(s.pod_applied(&other), None);
    let warning = s.pod_applied(&bad).unwrap();
    assert!(format!("{warning:?}").contains("gpuplane.io/gpu-milli"), "{warning:?}");
    assert_eq!(s.queued(), 0);
    // The unreadable pod is told why it waits (once), rather than staying Pending without a word.
    match s.next(Instant::now()) {
        Some(Action::ReportUnschedulable { pod, message, .. }) => {
            assert_eq!(pod, "ml/bad");
            assert!(message.contains("cannot schedule") && message.contains("lots"), "{message}");
        }
        other => panic!("expected the unreadable pod reported, got {other:?}"),
    }
    assert_eq!(s.pod_applied(&bad).map(|_| ()), Some(()));
    assert_eq!(s.next(Instant::now()), None, "reported once per UID");
}

#[test]
fn nodes_that_publish_gpu_uuids_get_the_assignment_by_uuid_too() {
    let mut with_uuids = node("gpu-1", 2, false);
    with_uuids.metadata.annotations =
        Some([("gpuplane.io/gpu-uuids".to_owned(), "GPU-0a1b, GPU-2c3d".to_owned())].into_iter().collect());
    let running = pod("chat-0", 100_000, 1000, Some(("gpu-1", "0:1000")));
    let mut s = scheduler(&[with_uuids.clone()], &[running, pod("chat-1", 100_000, 300, None)]);
    let target = bind_of(s.next(Instant::now()));
    assert_eq!((target.assignment.as_str(), target.assignment_uuids.as_str()), ("1:300", "GPU-2c3d:300"));

    // A list that does not match the GPU count is reported, and only the index form is written.
    with_uuids.metadata.annotations =
        Some([("gpuplane.io/gpu-uuids".to_owned(), "GPU-0a1b".to_owned())].into_iter().collect());
    let (_, warnings) = Snapshot::build(&[with_uuids], &[]).unwrap();
    assert!(format!("{warnings:?}").contains("2 distinct GPU UUIDs"), "{warnings:?}");
}

/// `pod` serving `model` (annotation `gpuplane.io/model`).
fn serving(name: &str, model: &str) -> api::Pod {
    let mut p = pod(name, 0, 500, None);
    p.metadata.annotations.get_or_insert_default().insert("gpuplane.io/model".into(), model.into());
    p
}

#[test]
fn a_pod_goes_to_the_node_whose_cache_holds_its_model_when_it_fits_there() {
    use gpuplane_kube::inventory::Inventories;
    use std::collections::HashMap;
    let now = Instant::now();
    let holds_on_b = |s: &mut Scheduler| {
        let mut inventories = Inventories::default();
        inventories.set("b", HashMap::from([("llama-3-8b@v1".to_owned(), 16 << 30)]));
        inventories.set("a", HashMap::from([("other@v1".to_owned(), 1 << 30)]));
        s.set_inventories(inventories);
    };

    // Equal nodes: without a model the policy's tie-break picks a; with the model on b, b wins.
    let mut s = scheduler(&[node("a", 4, false), node("b", 4, false)], &[]);
    holds_on_b(&mut s);
    s.pod_applied(&pod("plain", 0, 500, None));
    assert_eq!(bind_of(s.next(now)).node, "a");
    s.pod_applied(&serving("llm", "llama-3-8b@v1"));
    assert_eq!(bind_of(s.next(now)).node, "b");

    // A model nobody holds leaves the policy's choice alone.
    let mut s = scheduler(&[node("a", 4, false), node("b", 4, false)], &[]);
    holds_on_b(&mut s);
    s.pod_applied(&serving("new", "mistral-7b@v2"));
    assert_eq!(bind_of(s.next(now)).node, "a");

    // b holds the model but has no room: the pod goes where it fits.
    let full: Vec<api::Pod> =
        (0..4).map(|g| pod(&format!("busy{g}"), 0, 1000, Some(("b", &format!("{g}:1000"))))).collect();
    let mut s = scheduler(&[node("a", 4, false), node("b", 4, false)], &full);
    holds_on_b(&mut s);
    s.pod_applied(&serving("llm", "llama-3-8b@v1"));
    assert_eq!(bind_of(s.next(now)).node, "a");

    // Locality weight 0 turns the term off.
    let mut off = SchedulerConfig::default();
    off.locality.weight = 0.0;
    let mut s = scheduler_with(&[node("a", 4, false), node("b", 4, false)], &[], off);
    holds_on_b(&mut s);
    s.pod_applied(&serving("llm", "llama-3-8b@v1"));
    assert_eq!(bind_of(s.next(now)).node, "a");
}

#[test]
fn a_malformed_model_size_is_reported_with_the_pod_and_annotation() {
    let mut s = scheduler(&[node("a", 4, false)], &[]);
    let mut p = serving("llm", "llama-3-8b@v1");
    p.metadata.annotations.get_or_insert_default().insert("gpuplane.io/model-size".into(), "big".into());
    let warning = format!("{:?}", s.pod_applied(&p).expect("a warning"));
    assert!(warning.contains("ml/llm") && warning.contains("gpuplane.io/model-size"), "{warning}");
    assert_eq!(s.queued(), 0);
}

/// Runs the scheduler until it has nothing to do: the pods bound (name → node) and the reports.
fn settle(s: &mut Scheduler) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let now = Instant::now();
    let (mut binds, mut reports) = (BTreeMap::new(), BTreeMap::new());
    while let Some(action) = s.next(now) {
        match action {
            Action::ReportUnschedulable { pod, message, .. } => {
                reports.insert(pod, message);
            }
            Action::Bind(t) => {
                binds.insert(t.name, t.node);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    (binds, reports)
}

fn with(p: api::Pod, path: &[&str], value: serde_json::Value) -> api::Pod {
    let mut v = serde_json::to_value(p).unwrap();
    let mut slot = &mut v;
    for key in path {
        slot = match key.parse::<usize>() {
            Ok(i) => &mut slot[i],
            Err(_) => &mut slot[*key],
        };
    }
    *slot = value;
    serde_json::from_value(v).unwrap()
}

#[test]
fn node_affinity_ports_and_spread_are_evaluated_as_kube_scheduler_does() {
    let nodes = [node("gpu-1", 2, false), node("gpu-2", 2, false)];
    let pinned = with(
        pod("pinned", 0, 500, None),
        &["spec", "affinity"],
        json!({"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["gpu-2"]}]}]}}}),
    );
    let ported = |name: &str| {
        with(
            pod(name, 0, 100, None),
            &["spec", "containers", "0", "ports"],
            json!([{"containerPort": 8000, "hostPort": 8000}]),
        )
    };
    let mut s = scheduler(&nodes, &[pinned, ported("port0"), ported("port1"), ported("port2")]);
    let (binds, reports) = settle(&mut s);
    assert_eq!(binds["pinned"], "gpu-2");
    assert_ne!(binds["port0"], binds["port1"], "one host port per node");
    assert_eq!(
        reports["ml/port2"],
        "0/2 nodes are available: 2 node(s) didn't have free ports for the requested pod ports."
    );
}

#[test]
fn pods_kube_scheduler_refuses_are_refused_with_its_reasons() {
    let nodes = [node("gpu-1", 2, false)];
    let requests =
        |p: api::Pod, r: serde_json::Value| with(p, &["spec", "containers", "0", "resources", "requests"], r);
    let foo = requests(pod("foo", 0, 500, None), json!({"cpu": "1", "example.com/foo": "1"}));
    let claim = with(
        pod("claim", 0, 500, None),
        &["spec", "volumes"],
        json!([{"name": "data",
        "persistentVolumeClaim": {"claimName": "data"}}]),
    );
    let sidecar = with(
        requests(pod("sidecar", 0, 500, None), json!({"cpu": "16"})),
        &["spec", "initContainers"],
        json!([{"name": "proxy", "image": "envoy", "restartPolicy": "Always", "resources": {"requests": {"cpu": "16"}}}]),
    );
    let dra = with(
        pod("dra", 0, 500, None),
        &["spec", "resourceClaims"],
        json!([{"name": "gpu",
        "resourceClaimName": "gpu-claim"}]),
    );
    let mut s = scheduler(&nodes, &[foo, claim, sidecar, dra]);
    let (binds, reports) = settle(&mut s);
    assert!(binds.is_empty(), "{binds:?}");
    assert_eq!(reports["ml/foo"], "0/1 nodes are available: 1 Insufficient example.com/foo.");
    assert_eq!(reports["ml/claim"], "0/1 nodes are available: persistentvolumeclaim \"data\" not found.");
    assert_eq!(reports["ml/sidecar"], "0/1 nodes are available: 1 Insufficient cpu.", "16 + 16 > 31.5 cores");
    assert!(reports["ml/dra"].contains("does not allocate DRA ResourceClaims"), "{reports:?}");

    // allocatable.pods: 2 takes two pods, a third is told "Too many pods".
    let mut small = node("small", 2, false);
    small
        .status
        .as_mut()
        .unwrap()
        .allocatable
        .as_mut()
        .unwrap()
        .insert("pods".into(), k8s_openapi::apimachinery::pkg::api::resource::Quantity("2".into()));
    let mut s = scheduler(&[small], &[pod("p0", 0, 100, None), pod("p1", 0, 100, None), pod("p2", 0, 100, None)]);
    let (binds, reports) = settle(&mut s);
    assert_eq!(binds.len(), 2);
    assert_eq!(reports.values().next().map(String::as_str), Some("0/1 nodes are available: 1 Too many pods."));
}

#[test]
fn gated_pods_wait_for_their_gates_to_go() {
    let gated = with(pod("gated", 0, 500, None), &["spec", "schedulingGates"], json!([{"name": "example.com/quota"}]));
    let mut s = scheduler(&[node("gpu-1", 2, false)], std::slice::from_ref(&gated));
    assert_eq!(s.queued(), 0);
    let (binds, reports) = settle(&mut s);
    assert!(binds.is_empty() && reports.is_empty());
    s.pod_applied(&with(gated, &["spec", "schedulingGates"], json!([])));
    assert_eq!(settle(&mut s).0["gated"], "gpu-1");
}

/// `node`, with another GPU product.
fn node_of(name: &str, product: &str) -> api::Node {
    let mut n = node(name, 1, false);
    n.metadata.labels.as_mut().unwrap().insert("nvidia.com/gpu.product".into(), product.into());
    n
}

/// `pod`, started `age` ago (its `status.startTime`).
fn started(mut p: api::Pod, age: Duration) -> api::Pod {
    let at = std::time::SystemTime::now() - age;
    let secs = at.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let time = k8s_openapi::jiff::Timestamp::from_second(secs).unwrap();
    p.status.as_mut().unwrap().start_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(time));
    p
}

fn serving_config(claim_age: Duration) -> SchedulerConfig {
    SchedulerConfig {
        serving: gpuplane_kube::scheduler::ServingConfig {
            priority: Some(1000),
            interactive_priority: 1000,
            fast_models: vec!["H100".into()],
            headroom: 1.0,
            claim_age,
            ..Default::default()
        },
        ..SchedulerConfig::default()
    }
}

#[test]
fn the_serving_policy_keeps_batch_off_fast_gpus_and_leaves_headroom_for_interactive_replicas() {
    // a-fast (H100) sorts before b-slow (A10); each has one GPU. A chat replica runs on a third node.
    let nodes = [node_of("a-fast", "H100"), node_of("b-slow", "A10"), node_of("c-fast", "H100")];
    let chat = pod("chat-0", 1000, 1000, Some(("c-fast", "0:1000")));
    let t0 = Instant::now();
    // Without the policy the FGD engine puts the batch pod on the first H100.
    let mut s = scheduler(&nodes, &[chat.clone(), pod("train-0", 0, 1000, None)]);
    assert_eq!(bind_of(s.next(t0)).node, "a-fast");
    // With it, the batch pod goes to the A10 while that fits it.
    let mut s = scheduler_with(&nodes, &[chat.clone(), pod("train-0", 0, 1000, None)], serving_config(Duration::ZERO));
    assert_eq!(bind_of(s.next(t0)).node, "b-slow");
    // A second batch pod would take the last free H100, the headroom of one replica (1 × √1) kept for chat.
    let mut s = scheduler_with(
        &nodes,
        &[chat, pod("train-0", 0, 1000, Some(("b-slow", "0:1000"))), pod("train-1", 0, 1000, None)],
        serving_config(Duration::ZERO),
    );
    reported(
        s.next(t0),
        "ml/train-1",
        "gpuplane keeps the free GPUs of the fast models (H100) for interactive replicas (serving headroom); this batch pod waits for another GPU.",
    );
}

#[test]
fn an_interactive_replica_claims_a_fast_gpu_from_a_young_batch_pod_as_serve_sim_does() {
    let nodes = [node_of("a-fast", "H100"), node_of("b-slow", "A10")];
    let young = started(pod("train-0", 0, 1000, Some(("a-fast", "0:1000"))), Duration::from_secs(60));
    let old = started(pod("train-0", 0, 1000, Some(("a-fast", "0:1000"))), Duration::from_secs(3600));
    let t0 = Instant::now();
    // Young: the replica takes the H100 back rather than settle for the free A10.
    let mut s = scheduler_with(
        &nodes,
        &[young.clone(), pod("chat-0", 1000, 1000, None)],
        serving_config(Duration::from_secs(600)),
    );
    match s.next(t0) {
        Some(Action::Evict { node, victims, .. }) => {
            assert_eq!((node.as_str(), victims.len(), victims[0].key.as_str()), ("a-fast", 1, "ml/train-0"))
        }
        other => panic!("expected a claim, got {other:?}"),
    }
    // An hour of work is kept: the replica takes the A10. So it does with claims off (stock semantics).
    for (batch, claim) in [(old, 600), (young, 0)] {
        let config = serving_config(Duration::from_secs(claim));
        let mut s = scheduler_with(&nodes, &[batch, pod("chat-0", 1000, 1000, None)], config);
        assert_eq!(bind_of(s.next(t0)).node, "b-slow");
    }
}
