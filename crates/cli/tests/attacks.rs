//! The attacks of an outside review of gpuplane's Kubernetes side, each replayed on a real control plane
//! of its own (`scripts/controlplane`, a few kwok GPU nodes) with deploy/'s manifests: the admission
//! policies (deploy/webhook/policy.yaml), the webhook configurations (deploy/webhook/configuration.yaml,
//! pointed at `gpuplane webhook` on 127.0.0.1) and the RBAC of every component. Tenants act as user
//! `alice`, who holds the `edit` role in her namespace only. docs/security.md lists attack, defence and
//! test; each test runs alone by name (`cargo test --test attacks attack_3`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // A test: a failure should stop it loudly.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

mod support;
use support::*;

/// The tenant's user name; she may edit her own namespace and nothing else.
const TENANT: &str = "alice";

/// Creates `namespace` (Pod Security "restricted" when `restricted`, none otherwise) and gives the tenant
/// the `edit` role in it, and the right to add debug containers.
async fn tenant_namespace(client: &Client, namespace: &str, restricted: bool) {
    if restricted {
        restricted_namespace(client, namespace).await;
    } else {
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        let object = serde_json::from_value(json!({"metadata": {"name": namespace}})).unwrap();
        namespaces.create(&PostParams::default(), &object).await.unwrap();
    }
    let bindings: Api<k8s_openapi::api::rbac::v1::RoleBinding> = Api::namespaced(client.clone(), namespace);
    let binding = serde_json::from_value(json!({
        "metadata": {"name": "tenant-edit"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": TENANT}]
    }))
    .unwrap();
    bindings.create(&PostParams::default(), &binding).await.unwrap();
    // As a team that may debug its own pods (`kubectl debug`) has it.
    let roles: Api<k8s_openapi::api::rbac::v1::Role> = Api::namespaced(client.clone(), namespace);
    let role = serde_json::from_value(json!({
        "metadata": {"name": "debug"},
        "rules": [{"apiGroups": [""], "resources": ["pods/ephemeralcontainers"], "verbs": ["patch", "update"]}]
    }))
    .unwrap();
    roles.create(&PostParams::default(), &role).await.unwrap();
    let binding = serde_json::from_value(json!({
        "metadata": {"name": "tenant-debug"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "debug"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": TENANT}]
    }))
    .unwrap();
    bindings.create(&PostParams::default(), &binding).await.unwrap();
}

/// A pod of the tenant's, restricted-compliant, with `annotations` and `resources`; `gated` holds it back
/// from scheduling.
fn tenant_pod(name: &str, annotations: Value, resources: Value, gated: bool) -> Pod {
    let mut pod = json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "main", "image": "registry.invalid/serve:1",
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
                "resources": resources
            }]
        }
    });
    if gated {
        pod["spec"]["schedulingGates"] = json!([{"name": "example.com/hold"}]);
    }
    serde_json::from_value(pod).unwrap()
}

/// A tenant pod asking `milli` of one GPU by annotation, as the review's attack did.
fn share_pod(name: &str, milli: u32, gated: bool) -> Pod {
    let annotations = json!({"gpuplane.io/gpu-milli": milli.to_string()});
    tenant_pod(name, annotations, json!({"requests": {"cpu": "1", "memory": "1Gi"}}), gated)
}

/// `gpuplane webhook` replicas on 127.0.0.1 behind a round-robin TCP proxy (a new connection goes to the
/// next replica, as a Service does), registered through deploy/'s webhook configurations, and deploy/'s
/// admission policies. Stops the replicas and the proxy on drop.
struct Admission {
    _replicas: Vec<Running>,
    proxy: tokio::task::JoinHandle<()>,
    /// Connections per replica.
    connections: Arc<Vec<AtomicUsize>>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.proxy.abort();
    }
}

impl Admission {
    async fn install(plane: &ControlPlane, client: &Client, replicas: usize, work: &std::path::Path) -> Admission {
        plane.apply("deploy/webhook/policy.yaml");
        let ports: Vec<u16> = (0..replicas).map(|_| free_port()).collect();
        let running = ports
            .iter()
            .enumerate()
            .map(|(i, port)| {
                let mut command = gpuplane(plane, &work.join(format!("webhook-{i}.log")));
                command
                    .args(["webhook", "--listen", &format!("127.0.0.1:{port}")])
                    .arg("--tls-cert")
                    .arg(tls_fixture("cert-1.pem"))
                    .arg("--tls-key")
                    .arg(tls_fixture("key-1.pem"));
                Running::spawn(command)
            })
            .collect();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front = listener.local_addr().unwrap().port();
        let connections: Arc<Vec<AtomicUsize>> = Arc::new(ports.iter().map(|_| AtomicUsize::new(0)).collect());
        let counts = Arc::clone(&connections);
        let proxy = tokio::spawn(async move {
            let mut next = 0;
            while let Ok((mut inbound, _)) = listener.accept().await {
                let i = next % ports.len();
                next += 1;
                counts[i].fetch_add(1, Ordering::Relaxed);
                let port = ports[i];
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        register_webhooks(plane, client, front).await;
        Admission { _replicas: running, proxy, connections }
    }

    fn connections(&self) -> Vec<usize> {
        self.connections.iter().map(|c| c.load(Ordering::Relaxed)).collect()
    }
}

/// deploy/webhook/configuration.yaml as written, but calling `https://127.0.0.1:{port}` with the test CA.
async fn register_webhooks(plane: &ControlPlane, client: &Client, port: u16) {
    let file = repo().join("deploy/webhook/configuration.yaml");
    // One JSON object per YAML document.
    let json = plane.kubectl(&["create", "--dry-run=client", "-o", "json", "-f", file.to_str().unwrap()]);
    let objects: Vec<Value> = serde_json::Deserializer::from_str(&json).into_iter().map(Result::unwrap).collect();
    let ca = {
        use std::io::Read;
        let mut pem = Vec::new();
        std::fs::File::open(tls_fixture("ca.pem")).unwrap().read_to_end(&mut pem).unwrap();
        k8s_openapi::ByteString(pem)
    };
    let ca = serde_json::to_value(ca).unwrap();
    assert_eq!(objects.len(), 2, "{json}");
    for mut object in objects {
        for hook in object["webhooks"].as_array_mut().unwrap() {
            let path = hook["clientConfig"]["service"]["path"].as_str().unwrap().to_owned();
            hook["clientConfig"] = json!({"url": format!("https://127.0.0.1:{port}{path}"), "caBundle": ca});
        }
        let request = match object["kind"].as_str().unwrap() {
            "MutatingWebhookConfiguration" => {
                let api: Api<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration> =
                    Api::all(client.clone());
                api.create(&PostParams::default(), &serde_json::from_value(object).unwrap()).await.map(|_| ())
            }
            _ => {
                let api: Api<k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration> =
                    Api::all(client.clone());
                api.create(&PostParams::default(), &serde_json::from_value(object).unwrap()).await.map(|_| ())
            }
        };
        request.expect("deploy/'s webhook configuration is accepted by the API server");
    }
}

/// Waits until the admission chain is live: a GPU pod is steered by the webhook, and the annotation
/// policy refuses a pod created with an assignment (both as server-side dry runs in `namespace`).
async fn admission_ready(client: &Client, namespace: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let dry = PostParams { dry_run: true, ..Default::default() };
    wait_for("the webhook steering GPU pods", Duration::from_secs(60), || async {
        let created = pods.create(&dry, &share_pod("probe", 100, true)).await;
        created.is_ok_and(|p| p.spec.and_then(|s| s.scheduler_name).as_deref() == Some("gpuplane"))
    })
    .await;
    wait_for("the annotation policy enforced", Duration::from_secs(60), || async {
        let mut probe = share_pod("probe", 100, true);
        probe.metadata.annotations.as_mut().unwrap().insert("gpuplane.io/gpu-assignment".into(), "0:100".into());
        pods.create(&dry, &probe).await.is_err_and(|e| e.to_string().contains("gpu-assignment"))
    })
    .await;
}

/// What the admission attacks start from: GPU pool nodes, the tenant's namespace, deploy/'s admission
/// (policies and `replicas` webhook replicas), ready; the tenant's view of her pods.
struct Tenancy {
    client: Client,
    work: tempfile::TempDir,
    admission: Admission,
    alice: Api<Pod>,
}

impl Tenancy {
    async fn start(
        plane: &ControlPlane,
        nodes: &[&str],
        gpus: u32,
        namespace: &str,
        restricted: bool,
        replicas: usize,
    ) -> Tenancy {
        let client = plane.client().await;
        let work = tempfile::tempdir().unwrap();
        if !nodes.is_empty() {
            kwok_gpu_nodes(&client, nodes, gpus, true).await;
        }
        tenant_namespace(&client, namespace, restricted).await;
        let admission = Admission::install(plane, &client, replicas, work.path()).await;
        admission_ready(&client, namespace).await;
        let alice = Api::namespaced(plane.client_as(TENANT, &["system:authenticated"]).await, namespace);
        Tenancy { client, work, admission, alice }
    }
}

/// A ResourceQuota of `milli` milli-GPUs on the device plugin's resource in `namespace`.
async fn gpu_quota(client: &Client, namespace: &str, milli: u32) {
    let quotas: Api<k8s_openapi::api::core::v1::ResourceQuota> = Api::namespaced(client.clone(), namespace);
    let quota = serde_json::from_value(json!({"metadata": {"name": "gpus"},
        "spec": {"hard": {"requests.gpuplane.io/gpu-milli": milli.to_string()}}}))
    .unwrap();
    quotas.create(&PostParams::default(), &quota).await.unwrap();
    // The quota controller fills in status.used; until then the API server refuses quota'd creates.
    wait_for("the quota's status", Duration::from_secs(60), || async {
        quotas.get("gpus").await.unwrap().status.and_then(|s| s.used).is_some()
    })
    .await;
}

/// `gpuplane scheduler` (no leader election) against the control plane.
fn scheduler(plane: &ControlPlane, work: &std::path::Path) -> Running {
    let mut command = gpuplane(plane, &work.join("scheduler.log"));
    command.args(SCHEDULER).args(["--lease-name", ""]);
    Running::spawn(command)
}

/// GPU milli per (node, GPU index) over the bound pods of `namespace`, from their assignment annotations.
async fn milli_per_gpu(client: &Client, namespace: &str) -> std::collections::BTreeMap<(String, String), u32> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut per_gpu = std::collections::BTreeMap::new();
    for p in pods.list(&ListParams::default()).await.unwrap().items {
        let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.clone()) else { continue };
        let assignment = p.metadata.annotations.unwrap_or_default().remove("gpuplane.io/gpu-assignment");
        for pair in assignment.unwrap_or_default().split(',').filter(|s| !s.is_empty()) {
            let (index, milli) = pair.split_once(':').unwrap();
            *per_gpu.entry((node.clone(), index.to_owned())).or_insert(0) += milli.parse::<u32>().unwrap();
        }
    }
    per_gpu
}

fn bound(p: &Pod) -> bool {
    p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()
}

/// Attack 1: four pods admitted at 250 milli under a one-GPU quota, then `kubectl annotate --overwrite
/// gpuplane.io/gpu-milli=1000` and the scheduling gates removed, were four whole GPUs. Now the share is in
/// the pods' requests (quota counts it, a fifth pod is refused), the edit is refused by the API server's
/// policy, and once scheduled the four pods hold 1000 milli between them.
#[test]
fn attack_1_annotation_edits_after_admission_do_not_raise_the_gpu_share() {
    let plane = ControlPlane::start();
    runtime().block_on(async {
        let Tenancy { client, work, alice, admission: _admission } =
            Tenancy::start(&plane, &["gpu-1", "gpu-2"], 4, "tenant", true, 1).await;
        gpu_quota(&client, "tenant", 1000).await;
        for i in 0..4 {
            alice.create(&PostParams::default(), &share_pod(&format!("quarter-{i}"), 250, true)).await.unwrap();
        }
        let fifth = alice.create(&PostParams::default(), &share_pod("quarter-4", 250, true)).await.unwrap_err();
        assert!(fifth.to_string().contains("exceeded quota"), "{fifth}");
        // Whole GPUs asked the NVIDIA way count in the same budget (the webhook writes them as milli-GPUs).
        let whole = tenant_pod("whole", json!({}), json!({"limits": {"nvidia.com/gpu": "4"}}), true);
        let refused = alice.create(&PostParams::default(), &whole).await.unwrap_err();
        assert!(refused.to_string().contains("exceeded quota"), "{refused}");
        for i in 0..4 {
            let edit = json!({"metadata": {"annotations": {"gpuplane.io/gpu-milli": "1000"}}});
            let refused =
                alice.patch(&format!("quarter-{i}"), &PatchParams::default(), &Patch::Merge(&edit)).await.unwrap_err();
            assert!(refused.to_string().contains("cannot change after the pod is created"), "{refused}");
            let ungate = json!({"spec": {"schedulingGates": null}});
            alice.patch(&format!("quarter-{i}"), &PatchParams::default(), &Patch::Merge(&ungate)).await.unwrap();
        }
        let _scheduler = scheduler(&plane, work.path());
        wait_for("the four pods bound", Duration::from_secs(60), || async {
            alice.list(&ListParams::default()).await.unwrap().items.iter().filter(|p| bound(p)).count() == 4
        })
        .await;
        let per_gpu = milli_per_gpu(&client, "tenant").await;
        assert_eq!(per_gpu.values().sum::<u32>(), 1000, "{per_gpu:?}");
        eprintln!("attack 1: annotation edits refused; 4 × 250 milli bound ({per_gpu:?}); the fifth refused by quota");
    });
}

/// Attack 2: a tenant rewrote its bound pod's `gpuplane.io/gpu-assignment` to `0:1`, and the scheduler then
/// put another 900-milli pod on the same GPU. Now the rewrite is refused, and so is creating a pod that
/// carries an assignment of its own; the next pod goes to another GPU.
#[test]
fn attack_2_a_bound_pods_assignment_cannot_be_rewritten() {
    let plane = ControlPlane::start();
    runtime().block_on(async {
        let Tenancy { client, work, alice, admission: _admission } =
            Tenancy::start(&plane, &["gpu-1"], 2, "tenant", true, 1).await;
        let _scheduler = scheduler(&plane, work.path());
        alice.create(&PostParams::default(), &share_pod("mine", 1000, false)).await.unwrap();
        wait_for("the tenant's pod bound", Duration::from_secs(60), || async {
            bound(&alice.get("mine").await.unwrap())
        })
        .await;
        let rewrite = json!({"metadata": {"annotations": {"gpuplane.io/gpu-assignment": "0:1"}}});
        let refused = alice.patch("mine", &PatchParams::default(), &Patch::Merge(&rewrite)).await.unwrap_err();
        assert!(refused.to_string().contains("gpuplane.io/gpu-assignment"), "{refused}");
        // Nor as cluster admin: the API server's policy binds everyone; only a Binding writes it.
        let admin: Api<Pod> = Api::namespaced(client.clone(), "tenant");
        assert!(admin.patch("mine", &PatchParams::default(), &Patch::Merge(&rewrite)).await.is_err());
        // Nor through the status subresource, which the scheduler may patch (pod conditions).
        plane.apply("deploy/extender/namespace.yaml");
        plane.apply("deploy/scheduler/rbac.yaml");
        let scheduler_sa = plane.client_as_service_account("gpuplane-system", "gpuplane-scheduler").await;
        let as_scheduler: Api<Pod> = Api::namespaced(scheduler_sa, "tenant");
        let refused =
            as_scheduler.patch_status("mine", &PatchParams::default(), &Patch::Merge(&rewrite)).await.unwrap_err();
        assert!(refused.to_string().contains("gpuplane.io/gpu-assignment"), "{refused}");
        let mut forged = share_pod("forged", 900, false);
        forged.metadata.annotations.as_mut().unwrap().insert("gpuplane.io/gpu-assignment".into(), "1:1".into());
        let refused = alice.create(&PostParams::default(), &forged).await.unwrap_err();
        assert!(refused.to_string().contains("cannot be created with them"), "{refused}");
        alice.create(&PostParams::default(), &share_pod("theirs", 900, false)).await.unwrap();
        wait_for("the second pod bound", Duration::from_secs(60), || async {
            bound(&alice.get("theirs").await.unwrap())
        })
        .await;
        let per_gpu = milli_per_gpu(&client, "tenant").await;
        assert!(per_gpu.values().all(|&m| m <= 1000), "a GPU over-allocated: {per_gpu:?}");
        eprintln!("attack 2: assignment rewrite and forged assignment refused; GPUs {per_gpu:?}");
    });
}

/// Attack 3: behind deploy/'s two webhook replicas, 50 concurrent half-GPU creates at a 10-GPU quota
/// admitted 40 (the ledger was per-replica memory). Now three replicas behind a round-robin proxy, and the
/// API server's own ResourceQuota counts the share: exactly 20 admitted.
#[test]
fn attack_3_gpu_quota_is_exact_with_three_webhook_replicas() {
    let plane = ControlPlane::start();
    runtime().block_on(async {
        let Tenancy { client, admission, alice, .. } = Tenancy::start(&plane, &[], 0, "tenant", true, 3).await;
        gpu_quota(&client, "tenant", 10_000).await;
        let before = admission.connections();
        let results = stream::iter((0..50).map(|i| {
            let alice = alice.clone();
            async move { alice.create(&PostParams::default(), &share_pod(&format!("half-{i:02}"), 500, true)).await }
        }))
        .buffer_unordered(50)
        .collect::<Vec<_>>()
        .await;
        let admitted = results.iter().filter(|r| r.is_ok()).count();
        let refusal = results.iter().find_map(|r| r.as_ref().err()).map(ToString::to_string).unwrap_or_default();
        let existing = alice.list(&ListParams::default()).await.unwrap().items.len();
        let spread: Vec<usize> = admission.connections().iter().zip(&before).map(|(a, b)| a - b).collect();
        eprintln!("attack 3: {admitted} of 50 admitted at a 10-GPU quota; connections per replica {spread:?}");
        assert_eq!((admitted, existing), (20, 20), "refusal: {refusal}");
        assert!(refusal.contains("exceeded quota"), "{refusal}");
        assert!(spread.iter().filter(|&&n| n > 0).count() >= 2, "the creates reached one replica only: {spread:?}");
    });
}

/// Attack 4: `kubectl debug POD --env=NVIDIA_VISIBLE_DEVICES=all` was admitted: `pods/ephemeralcontainers`
/// was not in the webhook's rules. Now the ephemeral container is refused (a plain one is not).
#[test]
fn attack_4_an_ephemeral_container_cannot_choose_visible_devices() {
    let plane = ControlPlane::start();
    runtime().block_on(async {
        let Tenancy { work, alice, admission: _admission, .. } =
            Tenancy::start(&plane, &["gpu-1"], 1, "tenant", true, 1).await;
        let _scheduler = scheduler(&plane, work.path());
        alice.create(&PostParams::default(), &share_pod("serving", 500, false)).await.unwrap();
        wait_for("the pod bound", Duration::from_secs(60), || async { bound(&alice.get("serving").await.unwrap()) })
            .await;
        let debug = |env: Value| {
            json!({"spec": {"ephemeralContainers": [{
                "name": "debugger", "image": "registry.invalid/busybox:1", "env": env,
                "securityContext": {"runAsNonRoot": true, "allowPrivilegeEscalation": false,
                                    "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
            }]}})
        };
        let sneaky = debug(json!([{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}]));
        let refused = alice
            .patch_subresource("ephemeralcontainers", "serving", &PatchParams::default(), &Patch::Strategic(&sneaky))
            .await
            .unwrap_err();
        assert!(refused.to_string().contains("NVIDIA_VISIBLE_DEVICES=all"), "{refused}");
        let plain = debug(json!([]));
        alice
            .patch_subresource("ephemeralcontainers", "serving", &PatchParams::default(), &Patch::Strategic(&plain))
            .await
            .expect("a debug container without GPU variables is admitted");
        eprintln!("attack 4: ephemeral container with NVIDIA_VISIBLE_DEVICES=all refused; a plain one admitted");
    });
}

/// Attack 5: a pod without GPU requests that added the pool's toleration and selector landed on a GPU node,
/// where an envFrom ConfigMap, a CUDA image, a CDI annotation or a hostPath showed it every GPU. Now such a
/// pod is refused, as are CDI annotations and device host paths; a MIG slice counts as a GPU request.
/// The webhook being down blocks GPU pods only.
#[test]
fn attack_5_a_pod_without_gpus_cannot_reach_gpu_nodes() {
    let plane = ControlPlane::start();
    runtime().block_on(async {
        // Without Pod Security, so that gpuplane's refusal is the one that shows (restricted refuses hostPath).
        let Tenancy { admission, alice, .. } = Tenancy::start(&plane, &["gpu-1"], 1, "open", false, 1).await;
        let cpu = |name: &str, spec: Value| -> Pod {
            let mut pod = json!({"metadata": {"name": name}, "spec": {"containers": [{"name": "main",
                "image": "registry.invalid/cuda:12", "resources": {"requests": {"cpu": "1"}}}]}});
            for (k, v) in spec.as_object().unwrap() {
                pod["spec"][k] = v.clone();
            }
            serde_json::from_value(pod).unwrap()
        };
        let attempts = [
            (
                "tolerates",
                cpu(
                    "toleration",
                    json!({"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                           "nodeSelector": {"gpuplane.io/pool": "gpu"}}),
                ),
            ),
            ("tolerates", cpu("everything", json!({"tolerations": [{"operator": "Exists"}]}))),
            ("GPU device nodes", cpu("host-dev", json!({"volumes": [{"name": "d", "hostPath": {"path": "/dev"}}]}))),
        ];
        for (why, pod) in attempts {
            let name = pod.metadata.name.clone().unwrap();
            let refused = alice.create(&PostParams::default(), &pod).await.unwrap_err();
            assert!(refused.to_string().contains(why), "{name}: {refused}");
        }
        // Tolerations can be added to a pod after creation: refused too.
        alice.create(&PostParams::default(), &cpu("later", json!({}))).await.unwrap();
        let add = json!([{"op": "add", "path": "/spec/tolerations/-", "value": {"key": "nvidia.com/gpu", "operator": "Exists"}}]);
        let refused = alice
            .patch("later", &PatchParams::default(), &Patch::Json::<()>(serde_json::from_value(add).unwrap()))
            .await
            .unwrap_err();
        assert!(refused.to_string().contains("tolerates the GPU pool's taint"), "{refused}");
        let mut cdi = cpu("cdi", json!({}));
        cdi.metadata.annotations = Some(labels(&[("cdi.k8s.io/gpu", "nvidia.com/gpu=all")]));
        assert!(alice.create(&PostParams::default(), &cdi).await.unwrap_err().to_string().contains("CDI"));
        // A MIG slice is a GPU request: the pod may go to the pool.
        let mig = cpu(
            "mig",
            json!({"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                   "containers": [{"name": "main", "image": "registry.invalid/cuda:12",
                                   "resources": {"limits": {"nvidia.com/mig-1g.10gb": "1"}}}]}),
        );
        alice.create(&PostParams::default(), &mig).await.expect("a MIG pod may tolerate the pool");
        alice.create(&PostParams::default(), &cpu("web", json!({}))).await.expect("an ordinary pod is admitted");

        // Webhook down: ordinary pods are still created; GPU pods are not.
        drop(admission);
        let dry = PostParams { dry_run: true, ..Default::default() };
        wait_for("the webhook gone", Duration::from_secs(30), || async {
            alice.create(&dry, &share_pod("down-probe", 100, true)).await.is_err()
        })
        .await;
        alice.create(&PostParams::default(), &cpu("web-2", json!({}))).await.expect("CPU pods never wait on gpuplane");
        let refused = alice.create(&PostParams::default(), &share_pod("gpu-down", 500, true)).await.unwrap_err();
        assert!(refused.to_string().contains("failed calling webhook"), "{refused}");
        eprintln!(
            "attack 5: pool routes refused, MIG pod admitted; webhook down: CPU pod admitted, GPU pod refused"
        );
    });
}

/// Attack 7: the scheduler and the extender held cluster-wide `patch pods` they never used (with the
/// scheduler's token a kube-system pod's image was changed), and the node agent on every GPU node held
/// cluster-wide `patch pods` and `patch nodes`. Now each ServiceAccount's permissions, as `kubectl auth
/// can-i --list` prints them, are exactly an allow-list, and the node agent's token, bound to its pod, can
/// change its own node and the pods on it only.
#[test]
fn attack_7_service_accounts_hold_only_what_they_use() {
    let plane = ControlPlane::start();
    runtime().block_on(async {
        let client = plane.client().await;
        kwok_gpu_nodes(&client, &["gpu-1", "gpu-2"], 1, true).await;
        for file in [
            "deploy/extender/namespace.yaml",
            "deploy/node/namespace.yaml",
            "deploy/scheduler/rbac.yaml",
            "deploy/webhook/rbac.yaml",
            "deploy/extender/rbac.yaml",
            "deploy/cache/daemonset.yaml",
            "deploy/node/daemonset.yaml",
            "deploy/webhook/policy.yaml",
        ] {
            plane.apply(file);
        }
        // In the account's own namespace, so that its Roles there are listed too.
        let rules = |account: &str| -> std::collections::BTreeSet<String> {
            let namespace = account.split(':').nth(2).unwrap();
            let out = plane.kubectl(&["auth", "can-i", "--list", "-n", namespace, &format!("--as={account}")]);
            out.lines().skip(1).map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect()
        };
        // What every service account may do (self reviews, discovery): not gpuplane's to grant.
        let granted = |account: &str| -> Vec<String> {
            let namespace = account.split(':').nth(2).unwrap();
            let base = rules(&format!("system:serviceaccount:{namespace}:nobody"));
            rules(account).difference(&base).cloned().collect()
        };
        let expected: [(&str, &[&str]); 5] = [
            (
                "system:serviceaccount:gpuplane-system:gpuplane-scheduler",
                &[
                    "leases.coordination.k8s.io [] [] [create]",
                    "leases.coordination.k8s.io [] [gpuplane-scheduler] [get update]",
                    "nodes [] [] [get list watch]",
                    "pods/binding [] [] [create]",
                    "pods/eviction [] [] [create]",
                    "pods/status [] [] [patch]",
                    "pods [] [] [get list watch]",
                    "poddisruptionbudgets.policy [] [] [get list watch]",
                    "events [] [] [create]",
                    "namespaces [] [] [list watch]",
                    "persistentvolumeclaims [] [] [list watch]",
                    "persistentvolumes [] [] [list watch]",
                    "storageclasses.storage.k8s.io [] [] [list watch]",
                ],
            ),
            (
                "system:serviceaccount:gpuplane-system:gpuplane-extender",
                &["nodes [] [] [list watch]", "pods/binding [] [] [create]", "pods [] [] [get list watch]"],
            ),
            ("system:serviceaccount:gpuplane-system:gpuplane-webhook", &[]),
            (
                "system:serviceaccount:gpuplane-node:gpuplane-node",
                &["nodes [] [] [patch]", "pods [] [] [get list watch patch]"],
            ),
            (
                "system:serviceaccount:gpuplane-node:gpuplane-cache",
                &[
                    "pods [] [] [list]",
                    "subjectaccessreviews.authorization.k8s.io [] [] [create]",
                    "tokenreviews.authentication.k8s.io [] [] [create]",
                ],
            ),
        ];
        let mut report = Vec::new();
        for (account, allowed) in expected {
            let mut want: Vec<String> = allowed.iter().map(|s| (*s).to_owned()).collect();
            want.sort();
            let mut got = granted(account);
            got.sort();
            assert_eq!(got, want, "{account}: permissions beyond the allow-list, or missing");
            report.push(format!("{account}: {}", got.len()));
        }
        let (_, scheduler, _) = plane.kubectl_any(&[
            "auth",
            "can-i",
            "patch",
            "pods",
            "-n",
            "kube-system",
            "--as=system:serviceaccount:gpuplane-system:gpuplane-scheduler",
        ]);
        assert_eq!(scheduler.trim(), "no");

        // The node agent's token, bound to a pod on gpu-1, as the kubelet mounts it.
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
        let agent_pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "agent", "namespace": "gpuplane-node"},
            "spec": {"serviceAccountName": "gpuplane-node", "nodeName": "gpu-1",
                     "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                     "containers": [{"name": "plugin", "image": "registry.invalid/gpuplane:1"}]}
        }))
        .unwrap();
        let pods: Api<Pod> = Api::namespaced(client.clone(), "gpuplane-node");
        let agent_pod = pods.create(&PostParams::default(), &agent_pod).await.unwrap();
        let victim: Pod = serde_json::from_value(json!({
            "metadata": {"name": "victim", "namespace": "gpuplane-node"},
            "spec": {"nodeName": "gpu-2", "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}], "containers": [{"name": "main", "image": "registry.invalid/app:1"}]}
        }))
        .unwrap();
        pods.create(&PostParams::default(), &victim).await.unwrap();
        let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(client.clone(), "gpuplane-node");
        let request = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "agent", "uid": agent_pod.metadata.uid}}});
        let token: Value =
            accounts.create_subresource("token", "gpuplane-node", &PostParams::default(), &request).await.unwrap();
        let agent = plane.client_with_token(token["status"]["token"].as_str().unwrap()).await;
        let agent_nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(agent.clone());
        let agent_pods: Api<Pod> = Api::namespaced(agent.clone(), "gpuplane-node");
        let annotate = json!({"metadata": {"annotations": {"gpuplane.io/gpu-uuids": "GPU-1"}}});
        agent_nodes.patch("gpu-1", &PatchParams::default(), &Patch::Merge(&annotate)).await.expect("its own node");
        let other = agent_nodes.patch("gpu-2", &PatchParams::default(), &Patch::Merge(&annotate)).await.unwrap_err();
        assert!(other.to_string().contains("only its own node"), "{other}");
        let uncordon = json!({"spec": {"taints": []}});
        assert!(agent_nodes.patch("gpu-1", &PatchParams::default(), &Patch::Merge(&uncordon)).await.is_err());
        let allocated = json!({"metadata": {"annotations": {"gpuplane.io/gpu-allocated": "true"}}});
        agent_pods.patch("agent", &PatchParams::default(), &Patch::Merge(&allocated)).await.expect("a pod on its node");
        let other = agent_pods.patch("victim", &PatchParams::default(), &Patch::Merge(&allocated)).await.unwrap_err();
        assert!(other.to_string().contains("only the pods bound to its node"), "{other}");
        let untouched = nodes.get("gpu-2").await.unwrap().metadata.annotations.unwrap_or_default();
        assert!(!untouched.contains_key("gpuplane.io/gpu-uuids"), "the node agent annotated another node");
        eprintln!("attack 7: allow-lists hold ({}); the node agent is confined to gpu-1", report.join(", "));
    });
}

/// Attack 8: a pod with `preemptionPolicy: Never` (from its PriorityClass) evicted a lower-priority pod.
/// Now it waits, as with kube-scheduler, and the lower-priority pod keeps running; a pod of the same
/// priority that may preempt does evict it.
#[test]
fn attack_8_preemption_policy_never_is_honoured() {
    let plane = ControlPlane::start();
    runtime().block_on(async {
        let client = plane.client().await;
        let work = tempfile::tempdir().unwrap();
        kwok_gpu_nodes(&client, &["gpu-1"], 1, true).await;
        tenant_namespace(&client, "tenant", true).await;
        let classes: Api<k8s_openapi::api::scheduling::v1::PriorityClass> = Api::all(client.clone());
        for (name, value, policy) in [
            ("low", 1000, "PreemptLowerPriority"),
            ("polite", 100_000, "Never"),
            ("urgent", 100_000, "PreemptLowerPriority"),
        ] {
            let class =
                serde_json::from_value(json!({"metadata": {"name": name}, "value": value, "preemptionPolicy": policy}))
                    .unwrap();
            classes.create(&PostParams::default(), &class).await.unwrap();
        }
        let _scheduler = scheduler(&plane, work.path());
        let pods: Api<Pod> = Api::namespaced(client.clone(), "tenant");
        let pod = |name: &str, class: &str| -> Pod {
            let mut p = share_pod(name, 1000, false);
            let spec = p.spec.as_mut().unwrap();
            spec.priority_class_name = Some(class.to_owned());
            spec.scheduler_name = Some("gpuplane".to_owned());
            spec.tolerations =
                Some(vec![serde_json::from_value(json!({"key": "nvidia.com/gpu", "operator": "Exists"})).unwrap()]);
            p
        };
        pods.create(&PostParams::default(), &pod("batch", "low")).await.unwrap();
        wait_for("the batch pod bound", Duration::from_secs(60), || async { bound(&pods.get("batch").await.unwrap()) })
            .await;
        pods.create(&PostParams::default(), &pod("polite", "polite")).await.unwrap();
        wait_for("the polite pod told why it waits", Duration::from_secs(60), || async {
            let p = pods.get("polite").await.unwrap();
            let conditions = p.status.and_then(|s| s.conditions).unwrap_or_default();
            conditions.iter().any(|c| c.type_ == "PodScheduled" && c.status == "False")
        })
        .await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let batch = pods.get("batch").await.unwrap();
        assert!(batch.metadata.deletion_timestamp.is_none(), "a preemptionPolicy: Never pod evicted the batch pod");
        pods.delete("polite", &Default::default()).await.unwrap();
        pods.create(&PostParams::default(), &pod("urgent", "urgent")).await.unwrap();
        wait_for("the batch pod evicted by the urgent one", Duration::from_secs(60), || async {
            pods.get_opt("batch").await.unwrap().is_none_or(|p| p.metadata.deletion_timestamp.is_some())
        })
        .await;
        eprintln!("attack 8: preemptionPolicy Never waited without evicting; PreemptLowerPriority evicted");
    });
}
