//! The device plugin against a kubelet registration server, both over real unix sockets in a temporary
//! plugin folder and the same gRPC API the kubelet uses: registration, ListAndWatch updates on a health
//! change, Allocate for a sharing and a multi-GPU pod, clear failures for unknown and stale
//! assignments, and re-registration after a kubelet restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gpuplane_device::api::device_plugin_client::DevicePluginClient;
use gpuplane_device::api::registration_server::{Registration, RegistrationServer};
use gpuplane_device::api::{AllocateRequest, ContainerAllocateRequest, Empty, RegisterRequest};
use gpuplane_device::inventory::Gpu;
use gpuplane_device::kubelet::{self, KUBELET_SOCKET, PLUGIN_SOCKET, unix_channel};
use gpuplane_device::plugin::{AssignedPod, GpuPlugin, HEALTHY, PodSource, Sharing, UNHEALTHY};
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

struct FakeKubelet {
    registered: mpsc::UnboundedSender<RegisterRequest>,
}

#[tonic::async_trait]
impl Registration for FakeKubelet {
    async fn register(&self, request: Request<RegisterRequest>) -> Result<Response<Empty>, Status> {
        let _ = self.registered.send(request.into_inner());
        Ok(Response::new(Empty {}))
    }
}

/// Serves a kubelet registration socket until the returned sender is dropped or fired.
fn start_kubelet(dir: &Path, registered: mpsc::UnboundedSender<RegisterRequest>) -> tokio::sync::oneshot::Sender<()> {
    let path = dir.join(KUBELET_SOCKET);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let (stop, on_stop) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RegistrationServer::new(FakeKubelet { registered }))
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                let _ = on_stop.await;
            }),
    );
    stop
}

struct Pods {
    pods: Mutex<Vec<AssignedPod>>,
}

impl PodSource for Pods {
    fn assigned_pods(&self) -> Result<Vec<AssignedPod>, String> {
        Ok(self.pods.lock().unwrap().clone())
    }
    fn mark_allocated(&self, key: &str) -> Result<(), String> {
        self.pods.lock().unwrap().iter_mut().filter(|p| p.key == key).for_each(|p| p.allocated = true);
        Ok(())
    }
}

fn pod(key: &str, assignment: &str, requested_milli: u64) -> AssignedPod {
    AssignedPod { key: key.into(), assignment: assignment.into(), requested_milli, allocated: false }
}

fn gpus() -> Vec<Gpu> {
    (0..2)
        .map(|i| Gpu {
            index: i,
            uuid: format!("GPU-0000000{i}-aaaa"),
            model: "A100".into(),
            memory_mib: 40_960,
            mig_enabled: false,
        })
        .collect()
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f).await.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

fn devices(n: usize) -> ContainerAllocateRequest {
    ContainerAllocateRequest { devices_ids: (0..n).map(|i| format!("GPU-00000000-aaaa-{i}")).collect() }
}

#[tokio::test]
async fn registers_lists_allocates_and_re_registers_after_a_kubelet_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (registered, mut registrations) = mpsc::unbounded_channel();
    let kubelet_stop = start_kubelet(dir.path(), registered.clone());

    let pods = Arc::new(Pods {
        pods: Mutex::new(vec![
            pod("ml/share", "1:250", 250),
            pod("ml/pair", "0:1000,1:1000", 2000),
            pod("ml/stale", "5:500", 500),
        ]),
    });
    let plugin = GpuPlugin::new(gpus(), pods.clone(), Sharing::Mps);
    let (stop, on_stop) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(kubelet::run(plugin.clone(), dir.path().to_path_buf(), async {
        let _ = on_stop.await;
    }));

    // Registration: version, our socket, our resource.
    let first = within("registration", registrations.recv()).await.unwrap();
    assert_eq!(first.version, "v1beta1");
    assert_eq!(first.endpoint, PLUGIN_SOCKET);
    assert_eq!(first.resource_name, "gpuplane.io/gpu-milli");

    // ListAndWatch: 1,000 healthy devices per GPU, then GPU 1 turns unhealthy.
    let mut client = DevicePluginClient::new(unix_channel(&dir.path().join(PLUGIN_SOCKET)).await.unwrap());
    let mut stream = client.list_and_watch(Empty {}).await.unwrap().into_inner();
    let list = within("a device list", stream.message()).await.unwrap().unwrap();
    assert_eq!(list.devices.len(), 2000);
    assert!(list.devices.iter().all(|d| d.health == HEALTHY));
    plugin.set_health(1, false);
    let list = within("an updated device list", stream.message()).await.unwrap().unwrap();
    let unhealthy: Vec<_> = list.devices.iter().filter(|d| d.health == UNHEALTHY).collect();
    assert_eq!(unhealthy.len(), 1000);
    assert!(unhealthy.iter().all(|d| d.id.starts_with("GPU-00000001-aaaa-")));
    plugin.set_health(1, true);
    within("the recovered list", stream.message()).await.unwrap().unwrap();

    // A sharing pod: exactly its GPU by UUID, MPS sized from 250 milli of 40 GiB.
    let response =
        client.allocate(AllocateRequest { container_requests: vec![devices(250)] }).await.unwrap().into_inner();
    let envs = &response.container_responses[0].envs;
    assert_eq!(envs["NVIDIA_VISIBLE_DEVICES"], "GPU-00000001-aaaa");
    assert_eq!(envs["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"], "25");
    assert_eq!(envs["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"], "GPU-00000001-aaaa=10240M");
    assert_eq!(envs["GPUPLANE_GPU_ASSIGNMENT"], "1:250");

    // A two-GPU pod: both UUIDs, no MPS limits for whole GPUs.
    let response =
        client.allocate(AllocateRequest { container_requests: vec![devices(2000)] }).await.unwrap().into_inner();
    let envs = &response.container_responses[0].envs;
    assert_eq!(envs["NVIDIA_VISIBLE_DEVICES"], "GPU-00000000-aaaa,GPU-00000001-aaaa");
    assert!(!envs.contains_key("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"));
    // The same GPUs as the toolkit's volume-mount device list, for nodes that ignore the variable.
    let mounts: Vec<(&str, &str, bool)> = response.container_responses[0]
        .mounts
        .iter()
        .map(|m| (m.container_path.as_str(), m.host_path.as_str(), m.read_only))
        .collect();
    assert_eq!(
        mounts,
        [
            ("/var/run/nvidia-container-devices/GPU-00000000-aaaa", "/dev/null", true),
            ("/var/run/nvidia-container-devices/GPU-00000001-aaaa", "/dev/null", true)
        ]
    );
    assert!(pods.assigned_pods().unwrap().iter().filter(|p| p.allocated).count() == 2);

    // The sharing pod was served: the same request again finds no pod.
    let err = client.allocate(AllocateRequest { container_requests: vec![devices(250)] }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("no pod on this node waits for 250"), "{}", err.message());
    // A stale assignment names the pod and the GPU it cannot find.
    let err = client.allocate(AllocateRequest { container_requests: vec![devices(500)] }).await.unwrap_err();
    assert!(err.message().contains("ml/stale") && err.message().contains("GPU 5"), "{}", err.message());

    // Kubelet restart: it removes every socket in the folder and comes back.
    drop(kubelet_stop);
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    let _kubelet_again = start_kubelet(dir.path(), registered);
    let again = within("re-registration", registrations.recv()).await.unwrap();
    assert_eq!(again.endpoint, PLUGIN_SOCKET);
    assert!(dir.path().join(PLUGIN_SOCKET).exists(), "the plugin serves its socket again");
    let mut client = DevicePluginClient::new(unix_channel(&dir.path().join(PLUGIN_SOCKET)).await.unwrap());
    let options = client.get_device_plugin_options(Empty {}).await.unwrap().into_inner();
    assert!(!options.pre_start_required);

    stop.send(()).unwrap();
    within("the plugin to stop", running).await.unwrap().unwrap();
}

#[test]
fn a_gpu_in_mig_mode_is_never_allocated() {
    let mut gpus = gpus();
    gpus[1].mig_enabled = true;
    let pods = Arc::new(Pods { pods: Mutex::new(vec![pod("ml/share", "1:250", 250)]) });
    let plugin = GpuPlugin::new(gpus, pods, Sharing::TimeSlicing);
    let list = plugin.devices(&[true, false]);
    assert_eq!(list.iter().filter(|d| d.health == UNHEALTHY).count(), 1000);
    let err = plugin.allocate_container(250).unwrap_err();
    assert!(err.message().contains("unhealthy"), "{}", err.message());
}

#[tokio::test]
async fn registration_without_a_kubelet_names_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let err = kubelet::register(dir.path()).await.unwrap_err().to_string();
    assert!(err.contains("kubelet.sock"), "{err}");
}
