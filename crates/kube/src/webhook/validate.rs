//! The validating review: pool isolation and the routes to a GPU around the device plugin. A pod without
//! GPUs may not tolerate, select or name its way onto the GPU pool; no pod chooses its own visible devices,
//! asks the runtime for devices (CDI annotations) or mounts them from the host; a GPU pod carries its share
//! in its requests (where ResourceQuota counts it), is not privileged, and is placed by gpuplane.

use gpuplane_core::manifest::NODE_GPU_MILLI_RESOURCE;
use gpuplane_core::{Pod, TaintEffect, Toleration, TolerationOperator};
use k8s_openapi::api::core::v1 as api;

use super::{AdmissionRequest, AdmissionResponse, WebhookConfig, allow, deny, pod_of};
use crate::objects;

/// The variable through which the NVIDIA container runtime exposes GPUs to a container.
const VISIBLE_DEVICES: &str = "NVIDIA_VISIBLE_DEVICES";

/// Whether a resource name asks for a GPU or a part of one: NVIDIA's whole GPUs, MIG slices
/// (`nvidia.com/mig-1g.10gb`) and renamed shared GPUs (`nvidia.com/gpu.shared`), gpuplane's, AMD's,
/// Intel's, and any vendor's resource whose name says `gpu`.
pub fn is_gpu_resource(name: &str) -> bool {
    let Some((domain, resource)) = name.split_once('/') else { return false };
    matches!(domain, "nvidia.com" | "gpuplane.io" | "amd.com" | "gpu.intel.com" | "habana.ai")
        && (resource.starts_with("gpu") || resource.starts_with("mig-") || domain == "gpu.intel.com")
        || resource.contains("gpu")
}

/// The GPU resources the containers (init containers too) request or limit.
fn gpu_resources(spec: &api::PodSpec) -> impl Iterator<Item = &String> {
    let containers = spec.containers.iter().chain(spec.init_containers.iter().flatten());
    containers
        .filter_map(|c| c.resources.as_ref())
        .flat_map(|r| r.requests.iter().flatten().chain(r.limits.iter().flatten()))
        .map(|(name, _)| name)
        .filter(|name| is_gpu_resource(name))
}

/// The containers of every kind, by name: containers, init containers, ephemeral containers.
fn all_containers(
    spec: &api::PodSpec,
) -> impl Iterator<Item = (&String, &Option<Vec<api::EnvVar>>, &Option<Vec<api::EnvFromSource>>, bool)> {
    let privileged = |s: &Option<api::SecurityContext>| s.as_ref().and_then(|s| s.privileged) == Some(true);
    let regular = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .map(move |c| (&c.name, &c.env, &c.env_from, privileged(&c.security_context)));
    let ephemeral = spec
        .ephemeral_containers
        .iter()
        .flatten()
        .map(move |c| (&c.name, &c.env, &c.env_from, privileged(&c.security_context)));
    regular.chain(ephemeral)
}

/// Why a pod may not set `NVIDIA_VISIBLE_DEVICES` as it does, if it may not.
///
/// The device plugin sets the variable to the GPUs gpuplane assigned; a value of the pod's own would expose
/// other GPUs of the node (`all`, `0,1,…`), to a GPU pod as to one without GPUs. Only `void` and `none` (no
/// GPU) are harmless. A value from `valueFrom`, or from an `envFrom` source whose prefix could spell the name,
/// cannot be checked at admission: it is refused too — `envFrom` only on GPU pods, where the device plugin's
/// value is at stake (a prefix, or listing the variables one by one, keeps such a source usable).
fn visible_devices_override(spec: &api::PodSpec, asks_gpu: bool) -> Option<String> {
    for (name, env, env_from, _) in all_containers(spec) {
        for e in env.iter().flatten().filter(|e| e.name == VISIBLE_DEVICES) {
            if e.value_from.is_some() {
                return Some(format!(
                    "container {name:?} sets {VISIBLE_DEVICES} from valueFrom, which cannot be checked at admission"
                ));
            }
            let value = e.value.as_deref().unwrap_or("").trim();
            if !matches!(value, "" | "void" | "none") {
                let why = if asks_gpu {
                    "the device plugin sets it to the GPUs gpuplane assigned"
                } else {
                    "the pod requests no GPU"
                };
                return Some(format!(
                    "container {name:?} sets {VISIBLE_DEVICES}={value}, which would expose GPUs of the node ({why}); only void or none are allowed"
                ));
            }
        }
        if asks_gpu {
            for source in env_from.iter().flatten() {
                let prefix = source.prefix.as_deref().unwrap_or("");
                let from = match (&source.config_map_ref, &source.secret_ref) {
                    (Some(c), _) => format!("ConfigMap {:?}", c.name),
                    (None, Some(s)) => format!("Secret {:?}", s.name),
                    (None, None) => continue,
                };
                if VISIBLE_DEVICES.starts_with(prefix) {
                    return Some(format!(
                        "container {name:?} takes envFrom {from} with prefix {prefix:?}, which could set {VISIBLE_DEVICES} on a GPU pod; use a prefix or list the variables"
                    ));
                }
            }
        }
    }
    None
}

/// Whether mounting this host path gives a container GPU device nodes: the root or `/dev` whole, NVIDIA's,
/// DRM's, AMD's (`kfd`), accelerators' and VFIO's device nodes, or the NVIDIA driver's runtime directory.
fn is_device_path(path: &str) -> bool {
    // Made absolute and lexically clean (`//`, `.` and `..` resolved), as the kubelet would mount it.
    let path = format!("/{}", gpuplane_core::path::lexical(path));
    let under = |dir: &str| path == dir || path.starts_with(&format!("{dir}/"));
    path == "/"
        || path == "/dev"
        || path.starts_with("/dev/nvidia")
        || ["/dev/dri", "/dev/kfd", "/dev/accel", "/dev/vfio", "/run/nvidia", "/var/run/nvidia"].into_iter().any(under)
}

/// Routes to a GPU around the device plugin: CDI annotations, host device mounts, privileged containers on a
/// pod that runs on GPU nodes.
fn device_route(pod: &api::Pod, spec: &api::PodSpec, asks_gpu: bool) -> Option<String> {
    let annotations = pod.metadata.annotations.iter().flatten();
    if let Some((key, _)) = annotations.into_iter().find(|(k, _)| k.starts_with("cdi.k8s.io/")) {
        return Some(format!(
            "annotation {key} asks the container runtime for devices (CDI); GPUs are handed out by the device plugin only"
        ));
    }
    for volume in spec.volumes.iter().flatten() {
        if let Some(host) = volume.host_path.as_ref().filter(|h| is_device_path(&h.path)) {
            return Some(format!(
                "volume {:?} mounts host path {:?}, which holds GPU device nodes; GPUs are handed out by the device plugin only",
                volume.name, host.path
            ));
        }
    }
    let mounts =
        spec.containers.iter().chain(spec.init_containers.iter().flatten()).map(|c| (&c.name, &c.volume_mounts));
    let ephemeral = spec.ephemeral_containers.iter().flatten().map(|c| (&c.name, &c.volume_mounts));
    for (name, mounts) in mounts.chain(ephemeral) {
        for mount in mounts.iter().flatten() {
            let path = format!("/{}", gpuplane_core::path::lexical(&mount.mount_path));
            if ["/var/run/nvidia-container-devices", "/run/nvidia-container-devices"]
                .iter()
                .any(|dir| path == *dir || path.starts_with(&format!("{dir}/")))
            {
                return Some(format!(
                    "container {name:?} mounts a volume at {}, where the NVIDIA runtime reads a device list; only the device plugin may put one there",
                    mount.mount_path
                ));
            }
        }
    }
    if asks_gpu && let Some((name, ..)) = all_containers(spec).find(|c| c.3) {
        return Some(format!("container {name:?} is privileged on a GPU pod, which would see every GPU of the node"));
    }
    None
}

/// How a pod without GPUs would reach the GPU pool, if it would: a toleration of the pool's taint, the
/// pool's node selector, or a required node affinity on the pool's label.
fn pool_route(config: &WebhookConfig, domain: &Pod, spec: &api::PodSpec) -> Option<String> {
    // Whatever value the pool's taint carries: a toleration of its key (or of every key) may be one of it.
    let pool_toleration = |t: &&Toleration| {
        let key = t.key == config.pool_taint_key || (t.key.is_empty() && t.operator == TolerationOperator::Exists);
        key && matches!(t.effect, None | Some(TaintEffect::NoSchedule | TaintEffect::NoExecute))
    };
    if let Some(t) = domain.tolerations.iter().find(pool_toleration) {
        let key = &config.pool_taint_key;
        return Some(if t.key.is_empty() {
            format!("tolerates every taint, the GPU pool's {key} among them")
        } else {
            format!("tolerates the GPU pool's taint {key}")
        });
    }
    if let Some(key) = config.pool_selector.keys().find(|k| domain.node_selector.contains_key(*k)) {
        return Some(format!("selects the GPU pool's label {key}"));
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref());
    let keys =
        required.into_iter().flat_map(|r| &r.node_selector_terms).flat_map(|t| t.match_expressions.iter().flatten());
    if let Some(e) = keys.into_iter().find(|e| config.pool_selector.contains_key(&e.key)) {
        return Some(format!("requires the GPU pool's label {} in its node affinity", e.key));
    }
    None
}

/// Why a GPU pod's share cannot be counted by ResourceQuota, if it cannot: asked by annotation alone, or
/// annotations that disagree with the requests.
fn uncounted_share(pod: &api::Pod, domain: &Pod) -> Option<String> {
    if domain.gpu.is_none() {
        return None;
    }
    if !objects::asks_gpu_by_resource(pod) {
        return Some(
            "asks for GPUs by annotation only; the share must be in its resource requests (gpuplane.io/gpu-milli), \
             where ResourceQuota counts it — the mutating webhook writes it there, so it did not see this pod"
                .to_owned(),
        );
    }
    match objects::annotated_gpu(pod) {
        Ok(annotated) if annotated.is_none() || annotated == domain.gpu => None,
        Ok(annotated) => Some(format!(
            "its GPU-share annotations ask for {} milli on each of {} GPUs but its requests for {} on each of {}",
            annotated.milli_per_gpu, annotated.count, domain.gpu.milli_per_gpu, domain.gpu.count
        )),
        Err(e) => Some(e.to_string()),
    }
}

/// Which update a review is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Update {
    /// The pod itself: tolerations may be added, a gated pod's node selector and affinity changed.
    Pod,
    /// `kubectl debug`: an ephemeral container added.
    EphemeralContainers,
}

/// The validating review: pod CREATEs and UPDATEs, and `pods/ephemeralcontainers` UPDATEs; anything else is
/// admitted.
pub fn validate(config: &WebhookConfig, req: &AdmissionRequest) -> AdmissionResponse {
    let update = match (req.operation.as_str(), req.sub_resource.as_deref()) {
        ("CREATE", None) => None,
        ("UPDATE", Some("ephemeralcontainers")) => Some(Update::EphemeralContainers),
        ("UPDATE", None) => Some(Update::Pod),
        _ => return allow(&req.uid),
    };
    let (pod, domain) = match pod_of(req) {
        Ok(Some(p)) => p,
        Ok(None) => return allow(&req.uid),
        Err(message) => return deny(&req.uid, 400, message),
    };
    let Some(spec) = pod.spec.as_ref() else { return allow(&req.uid) };
    let asks_gpu = !domain.gpu.is_none() || gpu_resources(spec).next().is_some();
    let visible = |spec| if config.deny_visible_devices_all { visible_devices_override(spec, asks_gpu) } else { None };
    let refused_pool = || {
        (!asks_gpu).then(|| pool_route(config, &domain, spec)).flatten().map(|how| {
            format!(
                "asks for no GPU but {how}; pods without GPUs stay off the GPU pool (its namespace may be \
                 exempted by its webhook configuration)"
            )
        })
    };
    let problem = if update == Some(Update::Pod) {
        // A pod may gain tolerations after creation, and a node selector or affinity while gated: refused
        // when the update opens a way to the pool the pod did not have (so a pod admitted before gpuplane
        // can still be labelled, or have its finalizers removed).
        let old = req.old_object.as_ref().and_then(|o| super::pod_object(o).ok().flatten());
        let had_route = old.as_ref().is_some_and(|old| match (objects::pod(old), old.spec.as_ref()) {
            (Ok(domain), Some(spec)) => pool_route(config, &domain, spec).is_some(),
            _ => false,
        });
        if had_route { None } else { refused_pool() }
    } else if update == Some(Update::EphemeralContainers) {
        // `kubectl debug` adds an ephemeral container to a running pod: its environment and privileges are
        // checked as a container's at creation would be.
        visible(spec).or_else(|| {
            let privileged = spec
                .ephemeral_containers
                .iter()
                .flatten()
                .find(|c| c.security_context.as_ref().and_then(|s| s.privileged) == Some(true));
            privileged.filter(|_| asks_gpu).map(|c| {
                format!(
                    "ephemeral container {:?} is privileged on a GPU pod, which would see every GPU of the node",
                    c.name
                )
            })
        })
    } else {
        let bypass = spec.node_name.as_deref().is_some_and(|n| !n.is_empty())
            && asks_gpu
            && !req.user_info.groups.iter().any(|g| g == "system:nodes");
        visible(spec)
            .or_else(|| device_route(&pod, spec, asks_gpu))
            .or_else(refused_pool)
            .or_else(|| uncounted_share(&pod, &domain))
            .or_else(|| {
                // On gpuplane's pool the device plugin serves gpuplane.io/gpu-milli alone (the mutating webhook
                // writes nvidia.com/gpu as it); another GPU resource would be neither placed nor counted.
                let ours = spec.scheduler_name.as_deref() == Some(config.scheduler_name.as_str());
                let foreign = gpu_resources(spec).find(|name| *name != NODE_GPU_MILLI_RESOURCE);
                foreign.filter(|_| ours).map(|name| {
                    format!(
                        "asks for {name}, which gpuplane's pool does not serve; gpuplane places GPUs as \
                         {NODE_GPU_MILLI_RESOURCE} (schedule this pod with the scheduler of the pool that has {name})"
                    )
                })
            })
            .or_else(|| {
                bypass.then(|| {
                    "is a GPU pod created with spec.nodeName, which would skip gpuplane's GPU assignment; let the \
                     scheduler place it"
                        .to_owned()
                })
            })
    };
    match problem {
        Some(message) => deny(&req.uid, 403, format!("gpuplane: pod {}: {message}", objects::pod_key(&pod))),
        None => allow(&req.uid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_resources_are_known_by_vendor_and_by_name() {
        for name in [
            "nvidia.com/gpu",
            "nvidia.com/mig-1g.10gb",
            "nvidia.com/gpu.shared",
            "gpuplane.io/gpu-milli",
            "amd.com/gpu",
        ] {
            assert!(is_gpu_resource(name), "{name}");
        }
        for name in ["gpu.intel.com/i915", "example.com/vgpu"] {
            assert!(is_gpu_resource(name), "{name}");
        }
        for name in ["cpu", "memory", "nvidia.com/foo", "hugepages-2Mi", "example.com/fpga"] {
            assert!(!is_gpu_resource(name), "{name}");
        }
    }

    #[test]
    fn host_paths_are_judged_after_cleaning() {
        for path in
            ["/dev", "/dev/", "//dev", "/dev/nvidia0", "/dev/nvidiactl", "/opt/../dev/nvidia-uvm", "/", "/dev/dri"]
        {
            assert!(is_device_path(path), "{path}");
        }
        for path in ["/data/models", "/var/lib/kubelet", "/devices", "/dev2"] {
            assert!(!is_device_path(path), "{path}");
        }
    }
}
