//! The device plugin service: advertises `gpuplane.io/gpu-milli` (one device per milli-GPU, 1,000 per
//! GPU) and, when the kubelet allocates N of them to a container, hands it the GPUs the scheduler
//! assigned to the pod on this node that asked for N — by UUID in `NVIDIA_VISIBLE_DEVICES` and as the NVIDIA
//! Container Toolkit's volume-mount device list (which it reads when told to ignore the variable, so that
//! a container cannot pick GPUs by its own environment), with CUDA MPS limits sized from the share when
//! MPS is on. The kubelet picks arbitrary device IDs; the assignment
//! annotation, not the IDs, says which GPUs the container gets, so placement and allocation agree.

use std::collections::{BTreeMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use gpuplane_place::assignment;
use tokio::sync::watch;
use tokio_stream::Stream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::WatchStream;
use tonic::{Request, Response, Status};

use crate::api::device_plugin_server::DevicePlugin;
use crate::api::{
    AllocateRequest, AllocateResponse, ContainerAllocateResponse, ContainerPreferredAllocationResponse, Device,
    DevicePluginOptions, Empty, ListAndWatchResponse, Mount, PreStartContainerRequest, PreStartContainerResponse,
    PreferredAllocationRequest, PreferredAllocationResponse,
};
use crate::inventory::Gpu;

/// Where the NVIDIA Container Toolkit reads a container's device list from mounts
/// (`accept-nvidia-visible-devices-as-volume-mounts`).
pub const VOLUME_MOUNT_DEVICE_LIST: &str = "/var/run/nvidia-container-devices";

/// The extended resource the plugin advertises: milli-GPUs.
pub const RESOURCE_NAME: &str = "gpuplane.io/gpu-milli";
/// Device health values of the API.
pub const HEALTHY: &str = "Healthy";
/// Device health values of the API.
pub const UNHEALTHY: &str = "Unhealthy";

const NO_POD: &str = "no pod on this node";
/// Tries of Allocate while the pod list catches up with a bind.
const ALLOCATE_RETRIES: u32 = 10;
const ALLOCATE_RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(100);

/// A pod on this node that the scheduler gave GPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignedPod {
    /// `namespace/name`.
    pub key: String,
    /// The `gpuplane.io/gpu-assignment` value.
    pub assignment: String,
    /// `gpuplane.io/gpu-milli` the pod's containers request in all.
    pub requested_milli: u64,
    /// Already handed its GPUs (by this plugin or an earlier run of it).
    pub allocated: bool,
}

/// Where the plugin learns which pods on its node have assignments (the API server in a cluster).
pub trait PodSource: Send + Sync + 'static {
    /// Pods bound to this node with an assignment, oldest first.
    fn assigned_pods(&self) -> Result<Vec<AssignedPod>, String>;
    /// Records that a pod got its GPUs, so that a restarted plugin does not hand them out again.
    fn mark_allocated(&self, key: &str) -> Result<(), String>;
}

/// How containers share a GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sharing {
    /// Time-slicing: only the visible devices are set.
    #[default]
    TimeSlicing,
    /// CUDA MPS: a shared GPU also gets a thread percentage and a pinned memory limit from its share.
    Mps,
}

/// The plugin: the node's GPUs, their health, and the pods it has served.
#[derive(Clone)]
pub struct GpuPlugin {
    gpus: Arc<Vec<Gpu>>,
    health: watch::Sender<Vec<bool>>,
    pods: Arc<dyn PodSource>,
    sharing: Sharing,
    served: Arc<Mutex<HashSet<String>>>,
}

impl GpuPlugin {
    /// A plugin for these GPUs, healthy except those in MIG mode (milli shares cannot address MIG
    /// instances, so nothing is allocated on them).
    pub fn new(gpus: Vec<Gpu>, pods: Arc<dyn PodSource>, sharing: Sharing) -> Self {
        for gpu in gpus.iter().filter(|g| g.mig_enabled) {
            tracing::warn!(gpu = gpu.index, uuid = %gpu.uuid, "MIG mode is on; the GPU is reported unhealthy");
        }
        let (health, _) = watch::channel(gpus.iter().map(|g| !g.mig_enabled).collect());
        GpuPlugin { gpus: Arc::new(gpus), health, pods, sharing, served: Arc::default() }
    }

    /// Marks a GPU healthy or not; ListAndWatch streams send the new device list.
    pub fn set_health(&self, index: usize, healthy: bool) {
        self.health.send_if_modified(|h| match h.get_mut(index) {
            Some(slot) if *slot != healthy => {
                *slot = healthy;
                true
            }
            _ => false,
        });
    }

    /// The device list for a health state: 1,000 devices per GPU, `<uuid>-<n>`.
    pub fn devices(&self, health: &[bool]) -> Vec<Device> {
        self.gpus
            .iter()
            .zip(health)
            .flat_map(|(gpu, &ok)| {
                (0..1000).map(move |n| Device {
                    id: format!("{}-{n}", gpu.uuid),
                    health: if ok { HEALTHY } else { UNHEALTHY }.to_owned(),
                    topology: None,
                })
            })
            .collect()
    }

    /// What one container asking for `milli` devices gets: the oldest unserved pod that asked for
    /// exactly that much, with its assigned GPUs.
    pub fn allocate_container(&self, milli: u64) -> Result<ContainerAllocateResponse, Status> {
        let pods =
            self.pods.assigned_pods().map_err(|e| Status::unavailable(format!("listing this node's pods: {e}")))?;
        let mut served = self.served.lock().map_err(|_| Status::internal("allocation state poisoned"))?;
        let pod = pods
            .into_iter()
            .find(|p| !p.allocated && p.requested_milli == milli && !served.contains(&p.key))
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "{NO_POD} waits for {milli} {RESOURCE_NAME} with a {} annotation; was it scheduled by gpuplane?",
                    assignment::ASSIGNMENT_ANNOTATION
                ))
            })?;
        let shares = assignment::parse(&pod.assignment)
            .map_err(|e| Status::failed_precondition(format!("pod {}: {e}", pod.key)))?;
        let health = self.health.borrow().clone();
        let mut uuids = Vec::new();
        let mut envs = BTreeMap::new();
        for share in &shares {
            let gpu = self.gpus.get(usize::from(share.index)).ok_or_else(|| {
                Status::failed_precondition(format!(
                    "pod {}: stale assignment {:?} names GPU {}, but this node has {} GPUs",
                    pod.key,
                    pod.assignment,
                    share.index,
                    self.gpus.len()
                ))
            })?;
            if !health.get(usize::from(share.index)).copied().unwrap_or(false) {
                return Err(Status::failed_precondition(format!(
                    "pod {}: assigned GPU {} ({}) is unhealthy",
                    pod.key, share.index, gpu.uuid
                )));
            }
            uuids.push(gpu.uuid.clone());
            if self.sharing == Sharing::Mps && share.milli < 1000 {
                let percent = u32::from(share.milli).div_ceil(10);
                envs.insert("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE".to_owned(), percent.to_string());
                let mib = gpu.memory_mib * u64::from(share.milli) / 1000;
                envs.insert("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT".to_owned(), format!("{}={mib}M", gpu.uuid));
            }
        }
        envs.insert("NVIDIA_VISIBLE_DEVICES".to_owned(), uuids.join(","));
        envs.insert("GPUPLANE_GPU_ASSIGNMENT".to_owned(), pod.assignment.clone());
        // The toolkit's volume-mounts strategy: one empty mount per device under its device-list directory.
        let mounts = uuids
            .iter()
            .map(|uuid| Mount {
                container_path: format!("{VOLUME_MOUNT_DEVICE_LIST}/{uuid}"),
                host_path: "/dev/null".to_owned(),
                read_only: true,
            })
            .collect();
        self.pods.mark_allocated(&pod.key).map_err(|e| Status::unavailable(format!("pod {}: {e}", pod.key)))?;
        served.insert(pod.key);
        Ok(ContainerAllocateResponse { envs: envs.into_iter().collect(), mounts, ..Default::default() })
    }
}

type DeviceStream = Pin<Box<dyn Stream<Item = Result<ListAndWatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl DevicePlugin for GpuPlugin {
    async fn get_device_plugin_options(&self, _: Request<Empty>) -> Result<Response<DevicePluginOptions>, Status> {
        Ok(Response::new(DevicePluginOptions { pre_start_required: false, get_preferred_allocation_available: false }))
    }

    type ListAndWatchStream = DeviceStream;

    async fn list_and_watch(&self, _: Request<Empty>) -> Result<Response<Self::ListAndWatchStream>, Status> {
        let plugin = self.clone();
        let updates = WatchStream::new(self.health.subscribe())
            .map(move |health| Ok(ListAndWatchResponse { devices: plugin.devices(&health) }));
        Ok(Response::new(Box::pin(updates)))
    }

    async fn get_preferred_allocation(
        &self,
        _: Request<PreferredAllocationRequest>,
    ) -> Result<Response<PreferredAllocationResponse>, Status> {
        // Not advertised in the options: any devices will do, the assignment decides the GPUs.
        Ok(Response::new(PreferredAllocationResponse {
            container_responses: Vec::<ContainerPreferredAllocationResponse>::new(),
        }))
    }

    async fn allocate(&self, request: Request<AllocateRequest>) -> Result<Response<AllocateResponse>, Status> {
        let mut container_responses = Vec::new();
        for container in &request.into_inner().container_requests {
            let milli = container.devices_ids.len() as u64;
            // The pod list may lag the bind that made the kubelet call: look again for a moment.
            let mut tries = 0;
            let response = loop {
                match self.allocate_container(milli) {
                    Err(e)
                        if e.code() == tonic::Code::FailedPrecondition
                            && tries < ALLOCATE_RETRIES
                            && e.message().starts_with(NO_POD) =>
                    {
                        tries += 1;
                        tokio::time::sleep(ALLOCATE_RETRY_DELAY).await;
                    }
                    other => break other?,
                }
            };
            container_responses.push(response);
        }
        Ok(Response::new(AllocateResponse { container_responses }))
    }

    async fn pre_start_container(
        &self,
        _: Request<PreStartContainerRequest>,
    ) -> Result<Response<PreStartContainerResponse>, Status> {
        Ok(Response::new(PreStartContainerResponse {}))
    }
}
