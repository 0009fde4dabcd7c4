//! `gpuplane node`: the device plugin on a GPU node (see docs/device-plugin.md). It reads the node's
//! GPUs from an inventory file, watches the pods bound to the node, registers with the kubelet and
//! hands each container the GPUs the scheduler assigned to its pod.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use gpuplane_device::inventory::read_inventory;
use gpuplane_device::plugin::{AssignedPod, GpuPlugin, PodSource, Sharing};
use gpuplane_device::{kubelet, nvml};
use gpuplane_kube::node_pods;
use gpuplane_kube::serve::{ServeError, shutdown_signal};
use k8s_openapi::api::core::v1 as api;
use kube::runtime::reflector::Store;

use crate::service;

/// How often NVML is asked whether each GPU still answers.
const HEALTH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Arguments of `gpuplane node`.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// This node's name (in a DaemonSet: --node-name=$(NODE_NAME) from the downward API)
    #[arg(long)]
    node_name: String,
    /// GPU inventory file: the node's GPUs in assignment-index order with UUID, model and memory; when
    /// not given, the GPUs are discovered through NVML
    #[arg(long, value_name = "FILE")]
    inventory: Option<PathBuf>,
    /// The kubelet's device plugin folder
    #[arg(long, default_value = "/var/lib/kubelet/device-plugins", value_name = "DIR")]
    plugin_dir: PathBuf,
    /// How containers share a GPU: time-slicing (visible devices only) or mps (thread and memory limits)
    #[arg(long, value_enum, default_value_t = SharingArg::TimeSlicing)]
    sharing: SharingArg,
    /// Log format: text or json
    #[arg(long, default_value = "text")]
    log_format: String,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SharingArg {
    /// Only NVIDIA_VISIBLE_DEVICES.
    TimeSlicing,
    /// Also CUDA_MPS_ACTIVE_THREAD_PERCENTAGE and CUDA_MPS_PINNED_DEVICE_MEM_LIMIT from the share.
    Mps,
}

/// The node's pods from a reflector store; allocations are recorded on the pod in the background.
struct ClusterPods {
    store: Store<api::Pod>,
    client: kube::Client,
}

impl PodSource for ClusterPods {
    fn assigned_pods(&self) -> Result<Vec<AssignedPod>, String> {
        Ok(node_pods::assigned(&self.store.state())
            .into_iter()
            .map(|p| AssignedPod {
                key: p.key,
                assignment: p.assignment,
                requested_milli: p.requested_milli,
                allocated: p.allocated,
            })
            .collect())
    }

    fn mark_allocated(&self, key: &str) -> Result<(), String> {
        let (client, key) = (self.client.clone(), key.to_owned());
        tokio::spawn(async move {
            if let Err(e) = node_pods::mark_allocated(client, &key).await {
                tracing::warn!(pod = %key, error = %e, "could not record the allocation on the pod");
            }
        });
        Ok(())
    }
}

/// Runs `gpuplane node`.
pub fn run(args: NodeArgs) -> Result<()> {
    let gpus = match &args.inventory {
        Some(path) => {
            let shown = path.display().to_string();
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {shown}"))?;
            read_inventory(&shown, &text)?
        }
        None => nvml::discover().context("no --inventory given and NVML discovery failed")?,
    };
    service::init_logging(&args.log_format);
    let uuids: Vec<String> = gpus.iter().map(|g| g.uuid.clone()).collect();
    let models: Vec<String> = gpus.iter().map(|g| g.model.clone()).collect();
    let sharing = match args.sharing {
        SharingArg::TimeSlicing => Sharing::TimeSlicing,
        SharingArg::Mps => Sharing::Mps,
    };
    service::runtime()?.block_on(async move {
        let client = kube::Client::try_default().await.map_err(ServeError::Client)?;
        if let Err(e) = node_pods::publish_gpus(client.clone(), &args.node_name, &uuids, &models).await {
            tracing::warn!(node = %args.node_name, error = %e, "could not publish the GPU UUIDs and model on the node");
        }
        let store = node_pods::watch_node(client.clone(), &args.node_name);
        let count = gpus.len();
        let mig: Vec<bool> = gpus.iter().map(|g| g.mig_enabled).collect();
        let plugin = GpuPlugin::new(gpus, Arc::new(ClusterPods { store, client }), sharing);
        // With NVML, a GPU that stops answering turns unhealthy (and back when it answers again).
        if let Ok(probe) = nvml::HealthProbe::open() {
            let plugin = plugin.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(HEALTH_INTERVAL).await;
                    for (i, ok) in probe.check(count).into_iter().enumerate() {
                        plugin.set_health(i, ok && !mig[i]);
                    }
                }
            });
        }
        kubelet::run(plugin, args.plugin_dir, shutdown_signal()).await?;
        anyhow::Ok(())
    })
}
