//! End to end against a real Kubernetes control plane (`scripts/controlplane`): etcd, kube-apiserver with
//! PodSecurity, ResourceQuota and the admission webhooks, kube-controller-manager, and kwok playing the
//! kubelets of the 1,213 openb GPU nodes. Every assertion reads objects back from the API server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // A test: a failure should stop it loudly.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use gpuplane_core::openb::{read_nodes, read_pods};
use gpuplane_kube::objects::api_node;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;

/// Pods of the openb default trace sent through the secondary scheduler (file order).
const PODS: usize = 400;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A control plane started by `scripts/controlplane start` in a temporary directory, stopped on drop.
struct ControlPlane {
    dir: tempfile::TempDir,
}

impl ControlPlane {
    fn start() -> ControlPlane {
        let dir = tempfile::tempdir().unwrap();
        let plane = ControlPlane { dir };
        let status = Command::new(repo().join("scripts/controlplane"))
            .arg("start")
            .arg(plane.dir.path())
            .status()
            .expect("scripts/controlplane runs");
        assert!(status.success(), "scripts/controlplane start failed; logs in its directory");
        plane
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    async fn client(&self) -> Client {
        let kubeconfig = Kubeconfig::read_from(self.kubeconfig()).unwrap();
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.unwrap();
        Client::try_from(config).unwrap()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/controlplane")).arg("stop").arg(self.dir.path()).status();
    }
}

/// A child process killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn control_plane_scenarios() {
    let started = Instant::now();
    let plane = ControlPlane::start();
    let up = started.elapsed();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let client = plane.client().await;
        let t = Instant::now();
        openb_nodes_become_ready(&client).await;
        eprintln!("e2e: 1213 kwok GPU nodes Ready in {:.1} s", t.elapsed().as_secs_f64());
        let t = Instant::now();
        secondary_scheduler_places_like_the_simulator(&plane, &client).await;
        eprintln!("e2e: secondary scheduler scenario in {:.1} s", t.elapsed().as_secs_f64());
    });
    let summary =
        format!("start-up {:.1} s, scenarios {:.1} s", up.as_secs_f64(), (started.elapsed() - up).as_secs_f64());
    eprintln!("e2e: control plane {summary}");
    // scripts/test prints this after the run, with the e2e share of its time.
    std::fs::write(Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-timings.txt"), format!("{summary}\n")).unwrap();
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
        allocatable.insert("pods".to_owned(), k8s_openapi::apimachinery::pkg::api::resource::Quantity("110".into()));
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
/// `gpuplane sim --replay` makes for the same pods in the same order.
async fn secondary_scheduler_places_like_the_simulator(plane: &ControlPlane, client: &Client) {
    let file = repo().join("data/openb/openb_pod_list_default.csv");
    let trace: Vec<_> =
        read_pods("trace", std::fs::File::open(&file).unwrap()).unwrap().into_iter().take(PODS).collect();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace = serde_json::from_value(json!({"metadata": {"name": "openb", "labels": {
        "pod-security.kubernetes.io/enforce": "restricted"}}}))
    .unwrap();
    namespaces.create(&PostParams::default(), &namespace).await.unwrap();
    wait_for("the default ServiceAccount in openb", Duration::from_secs(60), || async {
        let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.clone(), "openb");
        accounts.get_opt("default").await.unwrap().is_some()
    })
    .await;

    // The same pods as an openb CSV, named as the Pod objects, for the simulator.
    let work = tempfile::tempdir().unwrap();
    let mut csv = String::from("name,cpu_milli,memory_mib,num_gpu,gpu_milli\n");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "openb");
    let objects: Vec<Pod> = trace
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let p = &t.pod;
            let name = format!("p-{i:04}");
            let milli = if p.gpu.count == 0 { 0 } else { p.gpu.milli_per_gpu };
            csv.push_str(&format!("{name},{},{},{},{milli}\n", p.cpu_milli, p.memory_bytes >> 20, p.gpu.count));
            let annotations = if p.gpu.count == 0 {
                json!({})
            } else {
                json!({"gpuplane.io/gpu-count": p.gpu.count.to_string(), "gpuplane.io/gpu-milli": milli.to_string()})
            };
            serde_json::from_value(json!({
                "metadata": {"name": name, "annotations": annotations},
                "spec": {
                    "schedulerName": "gpuplane",
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 1000,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "main", "image": "registry.invalid/openb:1",
                        "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
                        "resources": {"requests": {"cpu": format!("{}m", p.cpu_milli),
                                                   "memory": format!("{}Mi", p.memory_bytes >> 20)}}
                    }]
                }
            }))
            .unwrap()
        })
        .collect();
    for object in &objects {
        pods.create(&PostParams::default(), object).await.expect("a restricted-compliant pod is admitted");
    }
    let csv_path = work.path().join("pods.csv");
    std::fs::write(&csv_path, csv).unwrap();

    // The scheduler starts after every pod exists, so its queue holds them in list (name) order, and its
    // FGD workload is theirs, as the simulator's is.
    let _scheduler = Running(
        Command::new(env!("CARGO_BIN_EXE_gpuplane"))
            .args(["scheduler", "--policy", "fgd", "--lease-name", "", "--metrics-listen", "127.0.0.1:0"])
            .args(["--locality-weight", "0"])
            .env("KUBECONFIG", plane.kubeconfig())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(work.path().join("scheduler.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for("every pod bound", Duration::from_secs(240), || async {
        let list = pods.list(&ListParams::default()).await.unwrap();
        list.items.iter().filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()).count() == PODS
    })
    .await;

    // Read back: node and GPU shares of every pod; no GPU above 1000 milli.
    let mut placed: HashMap<String, (String, Vec<(u8, u16)>)> = HashMap::new();
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
    let mut same = 0;
    let mut first_difference = None;
    for line in decisions.lines().skip(1) {
        let cols: Vec<&str> = line.split(',').collect();
        let (pod, node, gpus) = (cols[3], cols[4], cols[5]);
        let sim_gpus: Vec<u8> = gpus.split(|c: char| !c.is_ascii_digit()).filter_map(|g| g.parse().ok()).collect();
        let (live_node, live_shares) = &placed[pod];
        let live_gpus: Vec<u8> = live_shares.iter().map(|s| s.0).collect();
        if live_node == node && live_gpus == sim_gpus {
            same += 1;
        } else if first_difference.is_none() {
            first_difference = Some(format!("{pod}: scheduler {live_node} {live_gpus:?}, sim {node} {sim_gpus:?}"));
        }
    }
    eprintln!("e2e: {same} of {PODS} placements identical to gpuplane sim's; worst GPU {worst} milli");
    let log = std::fs::read_to_string(work.path().join("scheduler.log")).unwrap_or_default();
    let binds: Vec<&str> = log.lines().filter(|l| l.contains("Binding")).take(5).collect();
    assert_eq!(same, PODS, "first difference: {first_difference:?}; the scheduler's first binds: {binds:#?}");
}

/// Polls `check` every 250 ms until it holds, or fails after `limit`.
async fn wait_for<F, Fut>(what: &str, limit: Duration, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
