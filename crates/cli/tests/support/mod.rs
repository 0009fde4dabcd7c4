//! The harness the end-to-end and attack tests share: a real control plane started by
//! `scripts/controlplane` (stopped on drop), clients as the admin, as an impersonated user or with a
//! token, kwok GPU nodes, gpuplane's processes, and polling.
#![allow(dead_code)] // Each test binary uses a different part of the harness.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::api::{Api, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A control plane started by `scripts/controlplane start` in a temporary directory, stopped on drop.
pub struct ControlPlane {
    dir: tempfile::TempDir,
}

impl ControlPlane {
    pub fn start() -> ControlPlane {
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

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// A binary the harness built (kubectl, ...).
    pub fn binary(&self, name: &str) -> PathBuf {
        let out = Command::new(repo().join("scripts/controlplane")).arg("build").output().unwrap();
        assert!(out.status.success());
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()).join(name)
    }

    async fn config(&self) -> Config {
        let kubeconfig = Kubeconfig::read_from(self.kubeconfig()).unwrap();
        Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.unwrap()
    }

    /// A cluster-admin client.
    pub async fn client(&self) -> Client {
        Client::try_from(self.config().await).unwrap()
    }

    /// A client that acts as `user` in `groups` (impersonation by the admin: the API server authorizes
    /// and admits every request as that user).
    pub async fn client_as(&self, user: &str, groups: &[&str]) -> Client {
        let mut config = self.config().await;
        config.auth_info.impersonate = Some(user.to_owned());
        config.auth_info.impersonate_groups = Some(groups.iter().map(|g| (*g).to_owned()).collect());
        Client::try_from(config).unwrap()
    }

    /// A client that acts as service account `namespace/name`.
    pub async fn client_as_service_account(&self, namespace: &str, name: &str) -> Client {
        let user = format!("system:serviceaccount:{namespace}:{name}");
        let group = format!("system:serviceaccounts:{namespace}");
        self.client_as(&user, &["system:serviceaccounts", &group, "system:authenticated"]).await
    }

    /// A client that presents `token` instead of the admin's.
    pub async fn client_with_token(&self, token: &str) -> Client {
        let mut config = self.config().await;
        config.auth_info.token = Some(token.to_owned().into());
        config.auth_info.token_file = None;
        Client::try_from(config).unwrap()
    }

    /// Runs kubectl against the control plane as the admin; its output, or a panic with its error.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let (success, stdout, stderr) = self.kubectl_any(args);
        assert!(success, "kubectl {args:?} failed: {stderr}");
        stdout
    }

    /// Runs kubectl as the admin whatever its exit status (`auth can-i` answers "no" with status 1):
    /// success, standard output, standard error.
    pub fn kubectl_any(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(self.binary("kubectl"))
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .output()
            .unwrap();
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    }

    /// `kubectl apply --server-side` of a file of the repository (path relative to it).
    pub fn apply(&self, path: &str) -> String {
        let file = repo().join(path);
        self.kubectl(&["apply", "--server-side", "--field-manager", "gpuplane-e2e", "-f", file.to_str().unwrap()])
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/controlplane")).arg("stop").arg(self.dir.path()).status();
    }
}

/// A child process killed on drop.
pub struct Running(pub Child);

impl Running {
    pub fn spawn(mut command: Command) -> Running {
        Running(command.spawn().unwrap())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The gpuplane binary against the test control plane, its standard error in `log`.
pub fn gpuplane(plane: &ControlPlane, log: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gpuplane"));
    command.env("KUBECONFIG", plane.kubeconfig()).stdout(Stdio::null()).stderr(std::fs::File::create(log).unwrap());
    command
}

/// `gpuplane scheduler` as the scenarios run it: FGD, metrics on a free port, no locality term, and the API
/// client limits the benchmark gives kube-scheduler too (1,000 requests/s, burst 2,000).
pub const SCHEDULER: [&str; 11] = [
    "scheduler",
    "--policy",
    "fgd",
    "--metrics-listen",
    "127.0.0.1:0",
    "--locality-weight",
    "0",
    "--kube-api-qps",
    "1000",
    "--kube-api-burst",
    "2000",
];

/// The TLS material of the webhook server tests: a certificate for 127.0.0.1, and the client CA.
pub fn tls_fixture(name: &str) -> PathBuf {
    repo().join("crates/kube/tests/fixtures/tls").join(name)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Creates a namespace that enforces Pod Security "restricted" and waits for its default ServiceAccount.
pub async fn restricted_namespace(client: &Client, name: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace = serde_json::from_value(json!({"metadata": {"name": name, "labels": {
        "pod-security.kubernetes.io/enforce": "restricted"}}}))
    .unwrap();
    namespaces.create(&PostParams::default(), &namespace).await.unwrap();
    wait_for("the default ServiceAccount", Duration::from_secs(60), || async {
        let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.clone(), name);
        accounts.get_opt("default").await.unwrap().is_some()
    })
    .await;
}

/// Creates kwok nodes of `gpus` GPUs each (labels `gpuplane.io/pool: gpu` and a GPU model, the pool's
/// taint `nvidia.com/gpu` with both NoSchedule and NoExecute when `pool`), each advertising
/// `nvidia.com/gpu` and the device plugin's `gpuplane.io/gpu-milli`, and waits until they are Ready.
pub async fn kwok_gpu_nodes(client: &Client, names: &[&str], gpus: u32, pool: bool) {
    let nodes: Api<Node> = Api::all(client.clone());
    for name in names {
        let resources = json!({"cpu": "32", "memory": "128Gi", "pods": "110", "nvidia.com/gpu": gpus.to_string(),
                               "gpuplane.io/gpu-milli": (gpus * 1000).to_string()});
        let (labels, taints) = if pool {
            (
                json!({"gpuplane.io/pool": "gpu", "nvidia.com/gpu.product": "A100"}),
                json!([{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"},
                       {"key": "nvidia.com/gpu", "value": "present", "effect": "NoExecute"}]),
            )
        } else {
            (json!({"nvidia.com/gpu.product": "A100"}), json!([]))
        };
        let node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels, "annotations": {"kwok.x-k8s.io/node": "fake"}},
            "spec": {"taints": taints},
            "status": {"allocatable": resources, "capacity": resources}
        }))
        .unwrap();
        nodes.create(&PostParams::default(), &node).await.unwrap();
    }
    wait_for("the kwok nodes Ready", Duration::from_secs(120), || async {
        let list = nodes.list(&ListParams::default()).await.unwrap();
        names.iter().all(|name| {
            list.items.iter().any(|n| {
                let conditions = n.status.as_ref().and_then(|s| s.conditions.as_ref());
                n.metadata.name.as_deref() == Some(*name)
                    && conditions.is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                    && n.spec
                        .as_ref()
                        .and_then(|s| s.taints.as_ref())
                        .is_none_or(|t| t.iter().all(|t| !t.key.starts_with("node.kubernetes.io/")))
            })
        })
    })
    .await;
}

/// Labels for a pod's metadata, from pairs.
pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// Runs a scenario and prints how long it took.
pub async fn timed(what: &str, scenario: impl std::future::Future<Output = ()>) {
    let started = Instant::now();
    scenario.await;
    eprintln!("e2e: {what} in {:.1} s", started.elapsed().as_secs_f64());
}

/// Polls `check` every 250 ms until it holds, or fails after `limit`.
pub async fn wait_for<F, Fut>(what: &str, limit: Duration, check: F)
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

/// A multi-threaded runtime of two workers, as the scenarios run on.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// The stock kube-scheduler of the harness's build with `config` (written to `work`), logging to `log`.
pub fn kube_scheduler(plane: &ControlPlane, config: &str, work: &Path, log: &Path) -> Running {
    let path = work.join(format!("kube-scheduler-{}.yaml", free_port()));
    std::fs::write(&path, config).unwrap();
    let mut command = Command::new(plane.binary("kube-scheduler"));
    command
        .arg("--config")
        .arg(&path)
        .args(["--bind-address", "127.0.0.1", "--secure-port", &free_port().to_string()])
        .arg("--authentication-kubeconfig")
        .arg(plane.kubeconfig())
        .arg("--authorization-kubeconfig")
        .arg(plane.kubeconfig())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    Running::spawn(command)
}

/// A one-GPU kwok node in pool `pool` (label `e2e/pool`, taint `e2e/<pool>`), its GPU a `product`.
pub fn pool_gpu_node(name: &str, pool: &str, product: &str) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"e2e/pool": pool, "nvidia.com/gpu.product": product},
                     "annotations": {"kwok.x-k8s.io/node": "fake"}},
        "spec": {"taints": [{"key": format!("e2e/{pool}"), "value": "yes", "effect": "NoSchedule"}]},
        "status": {"allocatable": {"cpu": "32", "memory": "128Gi", "pods": "110", "nvidia.com/gpu": "1",
                                    "gpuplane.io/gpu-milli": "1000"},
                   "capacity": {"cpu": "32", "memory": "128Gi", "pods": "110", "nvidia.com/gpu": "1",
                                "gpuplane.io/gpu-milli": "1000"}}
    }))
    .unwrap()
}

/// A whole-GPU pod for `gpuplane scheduler` in priority class `class`, confined to pool `pool` (as
/// [`pool_gpu_node`] makes it), restricted under Pod Security.
pub fn pool_gpu_pod(name: &str, pool: &str, class: &str) -> k8s_openapi::api::core::v1::Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": {"gpuplane.io/gpu-count": "1", "gpuplane.io/gpu-milli": "1000"}},
        "spec": {
            "schedulerName": "gpuplane", "priorityClassName": class,
            "nodeSelector": {"e2e/pool": pool},
            "tolerations": [{"key": format!("e2e/{pool}"), "operator": "Exists", "effect": "NoSchedule"}],
            "securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "main", "image": "registry.invalid/serve:1",
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
                "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}]
        }
    }))
    .unwrap()
}
