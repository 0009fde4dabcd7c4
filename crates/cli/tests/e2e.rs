//! End to end against a real Kubernetes control plane (`scripts/controlplane`): etcd, kube-apiserver with
//! PodSecurity, ResourceQuota and the admission webhooks, kube-controller-manager, and kwok playing the
//! kubelets of the 1,213 openb GPU nodes. Every assertion reads objects back from the API server.
//! Scenarios, in order: the secondary scheduler against `gpuplane sim`; two scheduler replicas with the
//! leader SIGKILLed mid-burst; preemption within a PodDisruptionBudget; the serving policy (headroom and
//! claim, `e2e/serving.rs`); stock kube-scheduler calling the
//! extender over TLS with a client certificate; the webhook through real webhook configurations;
//! `kubectl apply -k deploy/` under Pod Security.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // A test: a failure should stop it loudly.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use gpuplane_core::openb::{read_nodes, read_pods};
use gpuplane_kube::objects::api_node;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::Client;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

mod support;
use support::*;
#[path = "e2e/serving.rs"]
mod serving;

/// Pods of the openb default trace sent through the secondary scheduler (file order).
const PODS: usize = 400;

/// `gpuplane extender` on 127.0.0.1:`port` over HTTPS, accepting only clients of the fixture client CA.
fn extender(plane: &ControlPlane, port: u16, log: &Path) -> Running {
    let mut command = gpuplane(plane, log);
    command
        .args(["extender", "--policy", "fgd", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--tls-cert")
        .arg(tls_fixture("cert-1.pem"))
        .arg("--tls-key")
        .arg(tls_fixture("key-1.pem"))
        .arg("--client-ca")
        .arg(tls_fixture("client-ca.pem"))
        // The fixture client certificate kube-scheduler presents has CN kube-scheduler.
        .args(["--client-identity", "kube-scheduler"]);
    Running::spawn(command)
}

/// A KubeSchedulerConfiguration for the test control plane — the default profile, no leader election — and
/// with an extender port, deploy/'s extender settings (managedResources, HTTPS with a client certificate).
fn kube_scheduler_config(plane: &ControlPlane, extender_port: Option<u16>) -> String {
    let mut config = format!(
        "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\nclientConnection:\n  kubeconfig: {}\nleaderElection:\n  leaderElect: false\n",
        plane.kubeconfig().display()
    );
    if let Some(port) = extender_port {
        config.push_str(&format!(
            "extenders:\n- urlPrefix: https://127.0.0.1:{port}\n  filterVerb: filter\n  prioritizeVerb: prioritize\n  preemptVerb: preempt\n  bindVerb: bind\n  weight: 5\n  nodeCacheCapable: true\n  ignorable: false\n  httpTimeout: 5s\n  managedResources:\n  - {{name: nvidia.com/gpu, ignoredByScheduler: false}}\n  - {{name: gpuplane.io/gpu-milli, ignoredByScheduler: false}}\n  tlsConfig:\n    certFile: {}\n    keyFile: {}\n    caFile: {}\n",
            tls_fixture("client-cert.pem").display(),
            tls_fixture("client-key.pem").display(),
            tls_fixture("ca.pem").display()
        ));
    }
    config
}

#[test]
fn control_plane_scenarios() {
    let started = Instant::now();
    let plane = ControlPlane::start();
    let up = started.elapsed();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let client = plane.client().await;
        timed("1213 kwok GPU nodes Ready", openb_nodes_become_ready(&client)).await;
        timed(
            "secondary scheduler in 16-pod cycles scenario",
            secondary_scheduler_places_like_the_simulator(&plane, &client, 16),
        )
        .await;
        empty_namespace(&client, "openb-w16").await;
        timed("secondary scheduler scenario", secondary_scheduler_places_like_the_simulator(&plane, &client, 1)).await;
        timed("leader failover scenario", a_killed_leader_is_replaced_without_double_binding(&plane, &client)).await;
        timed("preemption scenario", an_interactive_pod_preempts_batch_within_its_disruption_budget(&plane, &client))
            .await;
        // The headroom counts every interactive pod of the cluster: the preemption scenario's go first.
        empty_namespace(&client, "preempt").await;
        timed(
            "serving policy scenario",
            serving::the_serving_policy_keeps_headroom_and_claims_fast_gpus(&plane, &client),
        )
        .await;
        timed("extender scenario", stock_scheduler_with_the_extender_over_tls(&plane, &client)).await;
        timed("admission webhook scenario", the_webhook_through_real_webhook_configurations(&plane, &client)).await;
        // Last: it registers the webhook, whose Service has no endpoints here.
        timed("kubectl apply -k deploy/ scenario", deploy_is_admitted_under_pod_security(&plane, &client)).await;
    });
    let summary =
        format!("start-up {:.1} s, scenarios {:.1} s", up.as_secs_f64(), (started.elapsed() - up).as_secs_f64());
    eprintln!("e2e: control plane {summary}");
    // scripts/test prints this after the run, with the e2e share of its time.
    std::fs::write(Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-timings.txt"), format!("{summary}\n")).unwrap();
}

/// `scripts/bench-controlplane`: pods/s and time from creation to bound for a burst of openb pods on the
/// 1,213 kwok nodes, for stock kube-scheduler (default profile, as shipped; then with its API client's rate
/// limit raised), kube-scheduler with the gpuplane extender (deploy/'s settings, over TLS), and `gpuplane
/// scheduler` — one control plane, one run, the cluster emptied between them. Not part of `scripts/test`: it is a measurement.
#[test]
#[ignore = "a benchmark: run by scripts/bench-controlplane"]
fn control_plane_benchmark() {
    let pods_per_run: usize = std::env::var("GPUPLANE_BENCH_PODS").ok().and_then(|v| v.parse().ok()).unwrap_or(5000);
    let plane = ControlPlane::start();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let client = plane.client().await;
        openb_nodes_become_ready(&client).await;
        let file = repo().join("data/openb/openb_pod_list_default.csv");
        let trace: Vec<_> =
            read_pods("trace", std::fs::File::open(&file).unwrap()).unwrap().into_iter().take(pods_per_run).collect();
        let work = tempfile::tempdir().unwrap();
        let mut rows = Vec::new();
        // Each scheduler under the same API client limits: kube-scheduler's defaults (50 requests/s, burst
        // 100), then both raised to 1,000/s, burst 2,000 (clientConnection.qps/burst; gpuplane's
        // --kube-api-qps/--kube-api-burst).
        let modes = [
            "kube-scheduler, client QPS 50 burst 100 (its default)",
            "gpuplane scheduler, client QPS 50 burst 100",
            "kube-scheduler, client QPS 1000 burst 2000",
            "kube-scheduler + gpuplane extender, client QPS 1000 burst 2000",
            "gpuplane scheduler, client QPS 1000 burst 2000",
        ];
        // GPUPLANE_BENCH_MODES picks modes by substring, separated by ';' (all by default).
        let picked = std::env::var("GPUPLANE_BENCH_MODES").unwrap_or_default();
        let picked: Vec<&str> = picked.split(';').map(str::trim).filter(|m| !m.is_empty()).collect();
        let modes = modes.into_iter().filter(|m| picked.is_empty() || picked.iter().any(|p| m.contains(p)));
        for mode in modes {
            let (scheduler_name, _running) = start_for_benchmark(&plane, mode, work.path());
            let namespace = format!("bench-{}", rows.len());
            let row = burst(&client, &namespace, &trace, scheduler_name).await;
            eprintln!(
                "bench: {mode}: {} of {} bound in {:.1} s: {:.1} pods/s, creation to bound p50 {:.2} s, p99 {:.2} s",
                row.bound, row.pods, row.seconds, row.pods_per_second, row.p50, row.p99
            );
            rows.push((mode, row));
            empty_namespace(&client, &namespace).await;
        }
        println!("| scheduler | pods bound | seconds | pods/s | creation → bound p50 | p99 |");
        println!("| --- | ---: | ---: | ---: | ---: | ---: |");
        for (mode, r) in &rows {
            println!(
                "| {mode} | {} of {} | {:.1} | {:.1} | {:.2} s | {:.2} s |",
                r.bound, r.pods, r.seconds, r.pods_per_second, r.p50, r.p99
            );
        }
    });
}

/// One benchmark run's figures.
struct BurstResult {
    pods: usize,
    bound: usize,
    seconds: f64,
    pods_per_second: f64,
    p50: f64,
    p99: f64,
}

/// Starts the scheduler of a benchmark mode; the scheduler name its pods use, and what to stop after.
fn start_for_benchmark(plane: &ControlPlane, mode: &str, work: &Path) -> (&'static str, Vec<Running>) {
    let log = work.join(format!("{}.log", mode.replace([' ', ','], "-")));
    // As large clusters often run it: the API client's default 50 requests/s (burst 100) raised.
    let raise =
        |config: String| config.replace("clientConnection:\n", "clientConnection:\n  qps: 1000\n  burst: 2000\n");
    match mode {
        "kube-scheduler, client QPS 50 burst 100 (its default)" => {
            ("default-scheduler", vec![kube_scheduler(plane, &kube_scheduler_config(plane, None), work, &log)])
        }
        "kube-scheduler, client QPS 1000 burst 2000" => {
            ("default-scheduler", vec![kube_scheduler(plane, &raise(kube_scheduler_config(plane, None)), work, &log)])
        }
        "kube-scheduler + gpuplane extender, client QPS 1000 burst 2000" => {
            let port = free_port();
            let extender = extender(plane, port, &work.join("extender.log"));
            let config = raise(kube_scheduler_config(plane, Some(port)));
            ("default-scheduler", vec![extender, kube_scheduler(plane, &config, work, &log)])
        }
        "gpuplane scheduler, client QPS 50 burst 100" => {
            let mut command = gpuplane(plane, &log);
            let defaults = SCHEDULER.map(|a| match a {
                "1000" => "50",
                "2000" => "100",
                other => other,
            });
            command.args(defaults).args(["--lease-name", ""]).env("RUST_LOG", "warn");
            ("gpuplane", vec![Running::spawn(command)])
        }
        _ => {
            let mut command = gpuplane(plane, &log);
            command.args(SCHEDULER).args(["--lease-name", ""]).env("RUST_LOG", "warn");
            ("gpuplane", vec![Running::spawn(command)])
        }
    }
}

/// Creates `trace` as pods in a new namespace (32 creates in flight) once a warm-up pod shows the scheduler
/// is running, and times each pod from its create call's return to the watch showing it bound.
async fn burst(
    client: &Client,
    namespace: &str,
    trace: &[gpuplane_core::openb::TracePod],
    scheduler: &str,
) -> BurstResult {
    use std::sync::{Arc, Mutex};
    restricted_namespace(client, namespace).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let bound_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let seen = Arc::clone(&bound_at);
    let watch = tokio::spawn(kube::runtime::watcher(pods.clone(), kube::runtime::watcher::Config::default()).for_each(
        move |event| {
            if let Ok(kube::runtime::watcher::Event::Apply(p) | kube::runtime::watcher::Event::InitApply(p)) = event
                && p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()
            {
                seen.lock().unwrap().entry(p.metadata.name.clone().unwrap()).or_insert_with(Instant::now);
            }
            futures::future::ready(())
        },
    ));
    let warm = openb_pods(&trace[..1], "warm", scheduler, true);
    pods.create(&PostParams::default(), &warm[0]).await.unwrap();
    wait_for("the warm-up pod bound", Duration::from_secs(180), || async {
        bound_at.lock().unwrap().contains_key("warm-0000")
    })
    .await;

    let objects = openb_pods(trace, "b", scheduler, true);
    let started = Instant::now();
    let created: HashMap<String, Instant> = stream::iter(objects.into_iter().map(|object| {
        let pods = pods.clone();
        async move {
            let name = object.metadata.name.clone().unwrap();
            pods.create(&PostParams::default(), &object).await.unwrap();
            (name, Instant::now())
        }
    }))
    .buffer_unordered(32)
    .collect()
    .await;
    // Done when every pod is bound, or nothing more was bound for 20 s (the rest fits nowhere).
    let mut last = (0, Instant::now());
    loop {
        let bound = bound_at.lock().unwrap().len() - 1;
        if bound != last.0 {
            last = (bound, Instant::now());
        }
        if bound == trace.len() || last.1.elapsed() > Duration::from_secs(20) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    watch.abort();
    let bound_at = bound_at.lock().unwrap();
    let mut waits: Vec<f64> = created
        .iter()
        .filter_map(|(name, at)| bound_at.get(name).map(|b| b.saturating_duration_since(*at).as_secs_f64()))
        .collect();
    waits.sort_by(f64::total_cmp);
    let end = bound_at.iter().filter(|(n, _)| n.as_str() != "warm-0000").map(|(_, t)| *t).max().unwrap_or(started);
    let seconds = end.duration_since(started).as_secs_f64();
    let quantile =
        |q: f64| waits.get(((waits.len() as f64 * q).ceil() as usize).saturating_sub(1)).copied().unwrap_or(f64::NAN);
    BurstResult {
        pods: trace.len(),
        bound: waits.len(),
        seconds,
        pods_per_second: waits.len() as f64 / seconds,
        p50: quantile(0.5),
        p99: quantile(0.99),
    }
}

/// Deletes every pod of the namespace at once (no grace period) and waits until they are gone.
async fn empty_namespace(client: &Client, namespace: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let now = kube::api::DeleteParams { grace_period_seconds: Some(0), ..Default::default() };
    // Thousands of pods in one call can outlast the API server's request timeout: repeat until none is left.
    wait_for("the benchmark's pods deleted", Duration::from_secs(600), || async {
        let _ = pods.delete_collection(&now, &ListParams::default().limit(500)).await;
        pods.list(&ListParams::default().limit(1)).await.is_ok_and(|l| l.items.is_empty())
    })
    .await;
}

/// Creates the openb GPU nodes as kwok nodes and waits until the node lifecycle controller sees them
/// Ready and untainted.
async fn openb_nodes_become_ready(client: &Client) {
    let file = repo().join("data/openb/openb_node_list_gpu_node.csv");
    let nodes = read_nodes("nodes", std::fs::File::open(&file).unwrap()).unwrap();
    let api: Api<Node> = Api::all(client.clone());
    stream::iter(nodes.iter().map(|n| {
        let mut object = api_node(n);
        object.metadata.annotations = Some(BTreeMap::from([("kwok.x-k8s.io/node".to_owned(), "fake".to_owned())]));
        let status = object.status.get_or_insert_with(Default::default);
        let allocatable = status.allocatable.get_or_insert_with(Default::default);
        allocatable.insert("pods".to_owned(), Quantity("110".into()));
        // As the device plugin advertises it: 1000 milli-GPUs per GPU.
        if n.gpu_count > 0 {
            allocatable
                .insert("gpuplane.io/gpu-milli".to_owned(), Quantity(format!("{}", u32::from(n.gpu_count) * 1000)));
        }
        status.capacity = Some(allocatable.clone());
        let api = api.clone();
        async move { api.create(&PostParams::default(), &object).await }
    }))
    .buffer_unordered(16)
    .try_collect::<Vec<_>>()
    .await
    .expect("every node is created");
    wait_for("1213 nodes Ready without taints", Duration::from_secs(180), || async {
        let list = api.list(&ListParams::default()).await.unwrap();
        let ready = list
            .items
            .iter()
            .filter(|n| {
                let conditions = n.status.as_ref().and_then(|s| s.conditions.as_ref());
                let ready = conditions.is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                let untainted = n.spec.as_ref().and_then(|s| s.taints.as_ref()).is_none_or(|t| t.is_empty());
                ready && untainted
            })
            .count();
        ready == nodes.len()
    })
    .await;
}

/// The first [`PODS`] pods of the openb default trace, created pending with `schedulerName: gpuplane` in a
/// namespace that enforces Pod Security "restricted", then placed by `gpuplane scheduler --policy fgd`:
/// every pod bound, no GPU given more than 1000 milli, and every placement (node and GPU indices) the one
/// `gpuplane sim --replay` makes for the same pods in the same order. With `window` above 1 the scheduler
/// places them in cycles of `window` pods (`--window`; the pods all exist before it starts, so every cycle
/// but the last is full) and the simulator in windows of as many (`sim --window`), in namespace
/// `openb-w{window}`.
async fn secondary_scheduler_places_like_the_simulator(plane: &ControlPlane, client: &Client, window: usize) {
    let file = repo().join("data/openb/openb_pod_list_default.csv");
    let trace: Vec<_> =
        read_pods("trace", std::fs::File::open(&file).unwrap()).unwrap().into_iter().take(PODS).collect();
    let namespace = if window > 1 { format!("openb-w{window}") } else { "openb".to_owned() };
    restricted_namespace(client, &namespace).await;

    // The same pods as an openb CSV, named as the Pod objects, for the simulator.
    let work = tempfile::tempdir().unwrap();
    let mut csv = String::from("name,cpu_milli,memory_mib,num_gpu,gpu_milli\n");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let objects = openb_pods(&trace, "p", "gpuplane", false);
    for (object, t) in objects.iter().zip(&trace) {
        let p = &t.pod;
        let milli = if p.gpu.count == 0 { 0 } else { p.gpu.milli_per_gpu };
        let name = object.metadata.name.as_deref().unwrap();
        csv.push_str(&format!("{name},{},{},{},{milli}\n", p.cpu_milli, p.memory_bytes >> 20, p.gpu.count));
    }
    create_all(&pods, &objects).await;
    let csv_path = work.path().join("pods.csv");
    std::fs::write(&csv_path, csv).unwrap();

    // The scheduler starts after every pod exists, so its queue holds them in list (name) order, and its
    // FGD workload is theirs, as the simulator's is.
    let mut scheduler = gpuplane(plane, &work.path().join("scheduler.log"));
    scheduler.args(SCHEDULER).args(["--lease-name", ""]);
    scheduler.args(["--window", &window.to_string(), "--window-ms", "2000"]);
    let _scheduler = Running::spawn(scheduler);
    wait_for("every pod bound", Duration::from_secs(240), || async {
        let list = pods.list(&ListParams::default()).await.unwrap();
        list.items.iter().filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()).count() == PODS
    })
    .await;

    // Read back: node and GPU shares of every pod; no GPU above 1000 milli.
    let mut placed: Placements = HashMap::new();
    let mut per_gpu: HashMap<(String, u8), u32> = HashMap::new();
    for p in pods.list(&ListParams::default()).await.unwrap().items {
        let name = p.metadata.name.clone().unwrap();
        let node = p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap();
        let annotation = p.metadata.annotations.as_ref().and_then(|a| a.get("gpuplane.io/gpu-assignment")).cloned();
        let shares: Vec<(u8, u16)> = annotation
            .filter(|a| !a.is_empty())
            .map(|a| {
                a.split(',')
                    .map(|pair| {
                        let (index, milli) = pair.split_once(':').unwrap();
                        (index.parse().unwrap(), milli.parse().unwrap())
                    })
                    .collect()
            })
            .unwrap_or_default();
        for &(index, milli) in &shares {
            *per_gpu.entry((node.clone(), index)).or_default() += u32::from(milli);
        }
        placed.insert(name, (node, shares));
    }
    let worst = per_gpu.values().max().copied().unwrap_or(0);
    assert!(worst <= 1000, "a GPU holds {worst} milli");

    // The simulator on the same pods in the same order, ties to the lowest node name as the scheduler's.
    let out = work.path().join("sim");
    let status = Command::new(env!("CARGO_BIN_EXE_gpuplane"))
        .args(["sim", "--replay", "--policy", "fgd", "--seeds", "1", "--tie-break", "lowest-name", "--decisions"])
        .args(["--window", &format!("1,{window}")])
        .arg("--trace")
        .arg(&csv_path)
        .arg("--out")
        .arg(&out)
        .args(["--format", "json"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let decisions = std::fs::read_to_string(out.join("decisions.csv")).unwrap();
    // Rows `policy,seed,index,pod,node,gpus`; the windowed run is keyed `fgd+window{W}`.
    let key = if window > 1 { format!("fgd+window{window}") } else { "fgd".to_owned() };
    let rows: Vec<Vec<&str>> = decisions.lines().skip(1).map(|l| l.split(',').collect()).collect();
    let one_at_a_time: HashMap<&str, (&str, &str)> =
        rows.iter().filter(|c| c[0] == "fgd").map(|c| (c[3], (c[4], c[5]))).collect();
    let mut same = 0;
    let mut unlike_one_at_a_time = 0;
    let mut first_difference = None;
    for cols in rows.iter().filter(|c| c[0] == key) {
        let (pod, node, gpus) = (cols[3], cols[4], cols[5]);
        if one_at_a_time.get(pod) != Some(&(node, gpus)) {
            unlike_one_at_a_time += 1;
        }
        let sim_gpus: Vec<u8> = gpus.split(|c: char| !c.is_ascii_digit()).filter_map(|g| g.parse().ok()).collect();
        let (live_node, live_shares) = &placed[pod];
        let live_gpus: Vec<u8> = live_shares.iter().map(|s| s.0).collect();
        if live_node == node && live_gpus == sim_gpus {
            same += 1;
        } else if first_difference.is_none() {
            first_difference = Some(format!("{pod}: scheduler {live_node} {live_gpus:?}, sim {node} {sim_gpus:?}"));
        }
    }
    if window > 1 {
        // The cycles must matter: otherwise this would only repeat the one-at-a-time scenario.
        eprintln!("e2e: window {window}: {unlike_one_at_a_time} of {PODS} placements differ from one pod at a time");
        assert!(unlike_one_at_a_time > 0, "the windowed placements are the one-at-a-time ones");
    }
    eprintln!("e2e: window {window}: {same} of {PODS} placements identical to gpuplane sim's; worst GPU {worst} milli");
    let log = std::fs::read_to_string(work.path().join("scheduler.log")).unwrap_or_default();
    let binds: Vec<&str> = log.lines().filter(|l| l.contains("Binding")).take(5).collect();
    assert_eq!(same, PODS, "first difference: {first_difference:?}; the scheduler's first binds: {binds:#?}");
}

/// Pending Pod objects for openb trace rows, named `{prefix}-{i:04}`, restricted-compliant, asking for GPU
/// shares by annotation and, with `device_resource`, also by the device plugin's `gpuplane.io/gpu-milli`.
fn openb_pods(
    trace: &[gpuplane_core::openb::TracePod],
    prefix: &str,
    scheduler: &str,
    device_resource: bool,
) -> Vec<Pod> {
    trace
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let p = &t.pod;
            let milli = if p.gpu.count == 0 { 0 } else { p.gpu.milli_per_gpu };
            let annotations = if p.gpu.count == 0 {
                json!({})
            } else {
                json!({"gpuplane.io/gpu-count": p.gpu.count.to_string(), "gpuplane.io/gpu-milli": milli.to_string()})
            };
            let mut requests =
                json!({"cpu": format!("{}m", p.cpu_milli), "memory": format!("{}Mi", p.memory_bytes >> 20)});
            if device_resource && p.gpu.count > 0 {
                requests["gpuplane.io/gpu-milli"] = json!((u32::from(p.gpu.count) * u32::from(milli)).to_string());
            }
            let mut limits = json!({});
            if let Some(r) = requests.get("gpuplane.io/gpu-milli") {
                // Extended resources must be requested and limited alike.
                limits["gpuplane.io/gpu-milli"] = r.clone();
            }
            serde_json::from_value(json!({
                "metadata": {"name": format!("{prefix}-{i:04}"), "annotations": annotations},
                "spec": {
                    "schedulerName": scheduler,
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 1000,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "main", "image": "registry.invalid/openb:1",
                        "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
                        "resources": {"requests": requests, "limits": limits}
                    }]
                }
            }))
            .unwrap()
        })
        .collect()
}

/// Creates the pods in order (one at a time, so creation order is list order).
async fn create_all(pods: &Api<Pod>, objects: &[Pod]) {
    for object in objects {
        pods.create(&PostParams::default(), object).await.expect("a restricted-compliant pod is admitted");
    }
}

/// Node name and GPU shares (index, milli) of bound pods, by `namespace/name`.
type Placements = HashMap<String, (String, Vec<(u8, u16)>)>;

/// Node name and GPU shares of every bound pod in the cluster, by `namespace/name`.
async fn placements(client: &Client) -> Placements {
    let all: Api<Pod> = Api::all(client.clone());
    let mut placed = HashMap::new();
    for p in all.list(&ListParams::default()).await.unwrap().items {
        let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.clone()) else { continue };
        let key = format!("{}/{}", p.metadata.namespace.clone().unwrap_or_default(), p.metadata.name.clone().unwrap());
        let annotation = p.metadata.annotations.as_ref().and_then(|a| a.get("gpuplane.io/gpu-assignment")).cloned();
        let shares: Vec<(u8, u16)> = annotation
            .filter(|a| !a.is_empty())
            .map(|a| {
                a.split(',')
                    .map(|pair| {
                        let (index, milli) = pair.split_once(':').unwrap();
                        (index.parse().unwrap(), milli.parse().unwrap())
                    })
                    .collect()
            })
            .unwrap_or_default();
        placed.insert(key, (node, shares));
    }
    placed
}

/// The fullest GPU in the cluster, in milli.
fn fullest_gpu(placed: &Placements) -> u32 {
    let mut per_gpu: HashMap<(&str, u8), u32> = HashMap::new();
    for (node, shares) in placed.values() {
        for &(index, milli) in shares {
            *per_gpu.entry((node.as_str(), index)).or_default() += u32::from(milli);
        }
    }
    per_gpu.values().max().copied().unwrap_or(0)
}

/// Two `gpuplane scheduler` replicas on one Lease; the leader is killed with SIGKILL while a burst of pods
/// is being bound. Every pod ends bound, no assignment is ever rewritten (each is compared with the first
/// one seen), no GPU goes above 1000 milli, and the time until the other replica binds is reported.
async fn a_killed_leader_is_replaced_without_double_binding(plane: &ControlPlane, client: &Client) {
    const BURST: usize = 300;
    let file = repo().join("data/openb/openb_pod_list_default.csv");
    let trace: Vec<_> =
        read_pods("trace", std::fs::File::open(&file).unwrap()).unwrap().into_iter().skip(PODS).take(BURST).collect();
    restricted_namespace(client, "failover").await;
    let work = tempfile::tempdir().unwrap();
    let replica = |identity: &str| {
        let mut command = gpuplane(plane, &work.path().join(format!("{identity}.log")));
        command.args(SCHEDULER).args(["--lease-namespace", "default", "--identity", identity]);
        Running::spawn(command)
    };
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let holder = || async {
        let lease = leases.get_opt("gpuplane-scheduler").await.unwrap();
        lease.and_then(|l| l.spec).and_then(|s| s.holder_identity).unwrap_or_default()
    };
    let mut a = replica("replica-a");
    wait_for("replica-a to lead", Duration::from_secs(60), || async { holder().await == "replica-a" }).await;
    let _b = replica("replica-b");

    let pods: Api<Pod> = Api::namespaced(client.clone(), "failover");
    let objects = openb_pods(&trace, "f", "gpuplane", false);
    let creating = {
        let pods = pods.clone();
        tokio::spawn(async move { create_all(&pods, &objects).await })
    };
    let bound_in_namespace = |placed: &Placements| placed.keys().filter(|k| k.starts_with("failover/")).count();
    let mut first_seen: Placements = HashMap::new();
    let mut remember = |placed: &Placements| {
        for (k, v) in placed {
            let seen = first_seen.entry(k.clone()).or_insert_with(|| v.clone());
            assert_eq!(seen, v, "{k} was placed again after it was bound");
        }
    };
    // Kill the leader once a third of the burst is bound.
    loop {
        let placed = placements(client).await;
        remember(&placed);
        if bound_in_namespace(&placed) >= BURST / 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.0.kill().unwrap(); // SIGKILL: no release of the Lease, no goodbye.
    let killed = Instant::now();
    let before = bound_in_namespace(&placements(client).await);
    let mut took_over = None;
    let mut resumed = None;
    let started = Instant::now();
    loop {
        let placed = placements(client).await;
        remember(&placed);
        let bound = bound_in_namespace(&placed);
        if took_over.is_none() && holder().await == "replica-b" {
            took_over = Some(killed.elapsed());
        }
        if resumed.is_none() && bound > before {
            resumed = Some(killed.elapsed());
        }
        if bound == BURST {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(240), "{bound} of {BURST} bound 240 s after the kill");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    creating.await.unwrap();
    let worst = fullest_gpu(&placements(client).await);
    assert!(worst <= 1000, "a GPU holds {worst} milli");
    eprintln!(
        "e2e: leader killed with {before} of {BURST} bound; replica-b took the Lease after {:.1} s and bound again \
         after {:.1} s; {BURST} pods bound once each, assignments never rewritten, fullest GPU {worst} milli",
        took_over.unwrap_or_default().as_secs_f64(),
        resumed.unwrap_or_default().as_secs_f64()
    );
}

/// Two one-GPU kwok nodes set apart by a label and a taint, both GPUs held by batch pods under a
/// PodDisruptionBudget that lets one of them go. Two interactive pods (higher priority) arrive: one batch pod
/// is evicted through the Eviction API and the first interactive pod bound in its place; the second
/// interactive pod stays pending, because evicting the other batch pod would break the budget.
async fn an_interactive_pod_preempts_batch_within_its_disruption_budget(plane: &ControlPlane, client: &Client) {
    let nodes: Api<Node> = Api::all(client.clone());
    for name in ["pre-1", "pre-2"] {
        let node = pool_gpu_node(name, "preempt", "A10");
        nodes.create(&PostParams::default(), &node).await.unwrap();
    }
    let classes: Api<k8s_openapi::api::scheduling::v1::PriorityClass> = Api::all(client.clone());
    for (name, value) in [("e2e-batch", 1000), ("e2e-interactive", 100_000)] {
        let class = serde_json::from_value(json!({"metadata": {"name": name}, "value": value})).unwrap();
        classes.create(&PostParams::default(), &class).await.unwrap();
    }
    restricted_namespace(client, "preempt").await;
    let budgets: Api<k8s_openapi::api::policy::v1::PodDisruptionBudget> = Api::namespaced(client.clone(), "preempt");
    let budget = serde_json::from_value(
        json!({"metadata": {"name": "batch"}, "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "batch"}}}}),
    )
    .unwrap();
    budgets.create(&PostParams::default(), &budget).await.unwrap();
    let pod = |name: &str, app: &str, class: &str| -> Pod {
        let mut pod = pool_gpu_pod(name, "preempt", class);
        pod.metadata.labels = Some([("app".to_owned(), app.to_owned())].into());
        pod
    };
    let work = tempfile::tempdir().unwrap();
    let mut scheduler = gpuplane(plane, &work.path().join("scheduler.log"));
    scheduler.args(SCHEDULER).args(["--lease-name", ""]);
    let _scheduler = Running::spawn(scheduler);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "preempt");
    for name in ["batch-1", "batch-2"] {
        pods.create(&PostParams::default(), &pod(name, "batch", "e2e-batch")).await.unwrap();
    }
    let running = |p: &Pod| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
    wait_for("both batch pods running and the budget allowing one disruption", Duration::from_secs(90), || async {
        let list = pods.list(&ListParams::default()).await.unwrap();
        let allowed = budgets.get("batch").await.unwrap().status.map_or(0, |s| s.disruptions_allowed);
        list.items.iter().filter(|p| running(p)).count() == 2 && allowed == 1
    })
    .await;
    for name in ["chat-1", "chat-2"] {
        pods.create(&PostParams::default(), &pod(name, "chat", "e2e-interactive")).await.unwrap();
    }
    let bound = |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
    wait_for("an interactive pod bound in a batch pod's place", Duration::from_secs(90), || async {
        let list = pods.list(&ListParams::default()).await.unwrap();
        list.items.iter().filter(|p| p.metadata.labels.as_ref().unwrap()["app"] == "chat" && bound(p)).count() == 1
    })
    .await;
    // Give the second interactive pod time to try: the budget must hold it off.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let list = pods.list(&ListParams::default()).await.unwrap();
    let of = |app: &str| -> Vec<&Pod> {
        list.items
            .iter()
            .filter(|p| p.metadata.labels.as_ref().unwrap()["app"] == app && p.metadata.deletion_timestamp.is_none())
            .collect()
    };
    let (batch, chat) = (of("batch"), of("chat"));
    assert_eq!(
        batch.len(),
        1,
        "the budget lets exactly one batch pod go: {:?}",
        batch.iter().map(|p| &p.metadata.name).collect::<Vec<_>>()
    );
    assert!(running(batch[0]));
    assert_eq!(chat.iter().filter(|p| bound(p)).count(), 1, "one interactive pod in the freed GPU, no more");
    let (Some(winner), Some(waiting)) = (chat.iter().find(|p| bound(p)), chat.iter().find(|p| !bound(p))) else {
        panic!("expected one bound and one pending interactive pod")
    };
    let batch_node = batch[0].spec.as_ref().unwrap().node_name.clone().unwrap();
    assert_ne!(winner.spec.as_ref().unwrap().node_name.as_ref(), Some(&batch_node));
    eprintln!(
        "e2e: {} preempted one batch pod and runs on {}; {} waits, the budget protecting {}",
        winner.metadata.name.as_deref().unwrap(),
        winner.spec.as_ref().unwrap().node_name.as_deref().unwrap(),
        waiting.metadata.name.as_deref().unwrap(),
        batch[0].metadata.name.as_deref().unwrap()
    );
}

/// Stock kube-scheduler (default profile) with deploy/'s extender settings — managedResources, bind and
/// preempt verbs, TLS with a client certificate — calling `gpuplane extender` on 127.0.0.1. GPU pods ask
/// for the device plugin's `gpuplane.io/gpu-milli`; every pod ends bound, every GPU pod with an assignment
/// the extender wrote in its Binding, and no GPU above 1000 milli.
async fn stock_scheduler_with_the_extender_over_tls(plane: &ControlPlane, client: &Client) {
    const N: usize = 300;
    let file = repo().join("data/openb/openb_pod_list_default.csv");
    let trace: Vec<_> =
        read_pods("trace", std::fs::File::open(&file).unwrap()).unwrap().into_iter().skip(PODS + 300).take(N).collect();
    restricted_namespace(client, "extender").await;
    let work = tempfile::tempdir().unwrap();
    let port = free_port();
    let _extender = extender(plane, port, &work.path().join("extender.log"));
    wait_for("the extender to listen", Duration::from_secs(120), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
    })
    .await;
    let config = kube_scheduler_config(plane, Some(port));
    let _kube_scheduler = kube_scheduler(plane, &config, work.path(), &work.path().join("kube-scheduler.log"));

    let pods: Api<Pod> = Api::namespaced(client.clone(), "extender");
    let objects = openb_pods(&trace, "x", "default-scheduler", true);
    create_all(&pods, &objects).await;
    wait_for("every pod bound by kube-scheduler", Duration::from_secs(240), || async {
        let list = pods.list(&ListParams::default()).await.unwrap();
        list.items.iter().filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()).count() == N
    })
    .await;
    let placed = placements(client).await;
    let mut gpu_pods = 0;
    for (i, t) in trace.iter().enumerate() {
        let (_, shares) = &placed[&format!("extender/x-{i:04}")];
        if t.pod.gpu.count > 0 {
            gpu_pods += 1;
            assert_eq!(shares.len(), usize::from(t.pod.gpu.count), "x-{i:04}: {shares:?}");
            assert!(shares.iter().all(|s| s.1 == t.pod.gpu.milli_per_gpu), "x-{i:04}: {shares:?}");
        } else {
            assert!(shares.is_empty(), "x-{i:04} asks for no GPU but got {shares:?}");
        }
    }
    let worst = fullest_gpu(&placed);
    assert!(worst <= 1000, "a GPU holds {worst} milli");
    let log = std::fs::read_to_string(work.path().join("extender.log")).unwrap_or_default();
    eprintln!(
        "e2e: kube-scheduler + extender (TLS, client certificate) bound {N} pods, {gpu_pods} with GPU assignments; \
         fullest GPU {worst} milli; extender log lines {}",
        log.lines().count()
    );
}

/// `kubectl apply -k deploy/ --server-side` against a cluster with Pod Security admission: applied
/// without a Pod Security warning, and a pod of every Deployment and DaemonSet template is admitted
/// (server-side dry run) in its namespace — the node agents' host mounts in gpuplane-node, the rest in the
/// restricted gpuplane-system.
async fn deploy_is_admitted_under_pod_security(plane: &ControlPlane, client: &Client) {
    let out = Command::new(plane.binary("kubectl"))
        .arg("--kubeconfig")
        .arg(plane.kubeconfig())
        .args(["apply", "--server-side", "--field-manager", "gpuplane-e2e", "-k"])
        .arg(repo().join("deploy"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kubectl apply -k deploy/ failed: {stderr}");
    assert!(!stderr.contains("PodSecurity"), "Pod Security warnings: {stderr}");
    let applied = String::from_utf8_lossy(&out.stdout).lines().count();

    let mut templates = Vec::new();
    for namespace in ["gpuplane-system", "gpuplane-node"] {
        let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(client.clone(), namespace);
        for d in deployments.list(&ListParams::default()).await.unwrap().items {
            templates.push((namespace, d.metadata.name.unwrap(), d.spec.unwrap().template));
        }
        let daemons: Api<k8s_openapi::api::apps::v1::DaemonSet> = Api::namespaced(client.clone(), namespace);
        for d in daemons.list(&ListParams::default()).await.unwrap().items {
            templates.push((namespace, d.metadata.name.unwrap(), d.spec.unwrap().template));
        }
    }
    let names: Vec<&str> = templates.iter().map(|t| t.1.as_str()).collect();
    for expected in ["gpuplane-scheduler", "gpuplane-webhook", "gpuplane-cache", "gpuplane-node"] {
        assert!(names.contains(&expected), "{expected} not applied: {names:?}");
    }
    for (namespace, name, template) in templates {
        let pod = Pod {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(format!("{name}-dry-run")),
                namespace: Some(namespace.to_owned()),
                labels: template.metadata.and_then(|m| m.labels),
                ..Default::default()
            },
            spec: template.spec,
            status: None,
        };
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let dry_run = PostParams { dry_run: true, ..Default::default() };
        if let Err(e) = pods.create(&dry_run, &pod).await {
            panic!("a pod of {namespace}/{name} is not admitted: {e}");
        }
    }
    eprintln!("e2e: kubectl apply -k deploy/ --server-side applied {applied} objects; every workload's pod admitted");
}

/// A pod in namespace `tenant` asking for half a GPU by annotation, with an optional NVIDIA_VISIBLE_DEVICES.
fn tenant_pod(name: &str, visible_devices: Option<&str>, gpu: bool) -> Pod {
    let env = visible_devices.map_or(json!([]), |v| json!([{"name": "NVIDIA_VISIBLE_DEVICES", "value": v}]));
    let annotations = if gpu { json!({"gpuplane.io/gpu-milli": "500"}) } else { json!({}) };
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "main", "image": "registry.invalid/serve:1", "env": env,
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
                "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}
            }]
        }
    }))
    .unwrap()
}

/// `gpuplane webhook` on 127.0.0.1 over TLS, registered through Mutating- and ValidatingWebhookConfigurations
/// with its CA bundle (failurePolicy Fail, namespace `tenant` only): a GPU pod created without any
/// scheduling fields comes back steered into the pool; NVIDIA_VISIBLE_DEVICES=all is refused on GPU and CPU
/// pods; and of ten half-GPU pods created at once against 0.5 GPU of quota left, exactly one exists.
async fn the_webhook_through_real_webhook_configurations(plane: &ControlPlane, client: &Client) {
    use k8s_openapi::api::admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration};
    restricted_namespace(client, "tenant").await;
    let quotas: Api<k8s_openapi::api::core::v1::ResourceQuota> = Api::namespaced(client.clone(), "tenant");
    let quota = serde_json::from_value(
        json!({"metadata": {"name": "gpus"}, "spec": {"hard": {"requests.gpuplane.io/gpu-milli": "2000"}}}),
    )
    .unwrap();
    quotas.create(&PostParams::default(), &quota).await.unwrap();

    let work = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut webhook = gpuplane(plane, &work.path().join("webhook.log"));
    webhook
        .args(["webhook", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--tls-cert")
        .arg(tls_fixture("cert-1.pem"))
        .arg("--tls-key")
        .arg(tls_fixture("key-1.pem"));
    let _webhook = Running::spawn(webhook);
    let ca = k8s_openapi::ByteString(std::fs::read(tls_fixture("ca.pem")).unwrap());
    let hook = |name: &str, path: &str| {
        json!({
            "name": name, "admissionReviewVersions": ["v1"], "sideEffects": "None", "failurePolicy": "Fail",
            "timeoutSeconds": 5,
            "clientConfig": {"url": format!("https://127.0.0.1:{port}{path}")},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"],
                       "scope": "Namespaced"}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "tenant"}}
        })
    };
    let mut mutating: MutatingWebhookConfiguration = serde_json::from_value(
        json!({"metadata": {"name": "gpuplane-e2e"}, "webhooks": [hook("mutate.gpuplane.io", "/mutate")]}),
    )
    .unwrap();
    for w in mutating.webhooks.iter_mut().flatten() {
        w.client_config.ca_bundle = Some(ca.clone());
    }
    let mut validating: ValidatingWebhookConfiguration = serde_json::from_value(
        json!({"metadata": {"name": "gpuplane-e2e"}, "webhooks": [hook("validate.gpuplane.io", "/validate")]}),
    )
    .unwrap();
    for w in validating.webhooks.iter_mut().flatten() {
        w.client_config.ca_bundle = Some(ca.clone());
    }
    let mutating_api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let validating_api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    mutating_api.create(&PostParams::default(), &mutating).await.unwrap();
    validating_api.create(&PostParams::default(), &validating).await.unwrap();

    // Steering. failurePolicy Fail: creates fail until the webhook listens.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "tenant");
    let started = Instant::now();
    let steered = loop {
        match pods.create(&PostParams::default(), &tenant_pod("steered", None, true)).await {
            Ok(p) => break p,
            Err(e) => {
                assert!(started.elapsed() < Duration::from_secs(60), "the webhook never admitted a pod: {e}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };
    let spec = steered.spec.unwrap();
    assert_eq!(spec.scheduler_name.as_deref(), Some("gpuplane"));
    assert_eq!(spec.node_selector.unwrap_or_default().get("gpuplane.io/pool").map(String::as_str), Some("gpu"));
    assert!(spec.tolerations.unwrap_or_default().iter().any(|t| t.key.as_deref() == Some("nvidia.com/gpu")));

    // The visible-devices rule, on a GPU pod and on a pod without GPUs.
    for (name, gpu) in [("sneaky-gpu", true), ("sneaky-cpu", false)] {
        let err = pods.create(&PostParams::default(), &tenant_pod(name, Some("all"), gpu)).await.unwrap_err();
        assert!(err.to_string().contains("NVIDIA_VISIBLE_DEVICES=all"), "{err}");
    }

    // Quota: 0.5 used by "steered"; two more make 1.5 of 2; then ten at once for the last 0.5.
    for name in ["half-1", "half-2"] {
        pods.create(&PostParams::default(), &tenant_pod(name, None, true)).await.unwrap();
    }
    let burst = stream::iter((0..10).map(|i| {
        let pods = pods.clone();
        async move { pods.create(&PostParams::default(), &tenant_pod(&format!("burst-{i}"), None, true)).await }
    }))
    .buffer_unordered(10)
    .collect::<Vec<_>>()
    .await;
    let created = burst.iter().filter(|r| r.is_ok()).count();
    let refusal = burst.iter().find_map(|r| r.as_ref().err()).map(ToString::to_string).unwrap_or_default();
    let existing = pods.list(&ListParams::default()).await.unwrap().items.len();
    assert_eq!(created, 1, "ten concurrent half-GPU creates with 0.5 GPU of quota left; refusal: {refusal}");
    assert_eq!(existing, 4);
    // The webhook wrote each share into the pod's requests, where the API server's ResourceQuota counts it.
    assert!(refusal.contains("exceeded quota"), "{refusal}");
    mutating_api.delete("gpuplane-e2e", &Default::default()).await.unwrap();
    validating_api.delete("gpuplane-e2e", &Default::default()).await.unwrap();
    eprintln!(
        "e2e: webhook steered a GPU pod, refused NVIDIA_VISIBLE_DEVICES=all twice, admitted 1 of 10 concurrent half-GPU pods at 1.5 of 2 GPUs"
    );
}
