//! `gpuplane lint`: workload rules for GPU pools that mainstream scanners do not have (a container
//! reaching GPUs through `NVIDIA_VISIBLE_DEVICES` without a GPU limit, GPU requests without limits,
//! privileged GPU containers, NVIDIA device and runtime-socket host paths, GPU namespaces without a GPU
//! quota, GPU tolerations without GPU requests) and the common baseline, as findings with stable ids.

use std::collections::HashSet;

use gpuplane_assess::objects::KubeObject;
use serde_json::Value;

use crate::finding::{Finding, Level, Severity};

/// A rule: id, short description, help (why it matters and how to fix it), level.
pub struct Rule {
    /// Stable id.
    pub id: &'static str,
    /// One line.
    pub short: &'static str,
    /// Why, and how to fix.
    pub help: &'static str,
    /// SARIF level.
    pub level: Level,
}

/// Every rule.
pub const RULES: [Rule; 11] = [
    Rule {
        id: "GPU001",
        short: "NVIDIA_VISIBLE_DEVICES set on a container without a GPU limit",
        help: "CUDA images and pod specs that set NVIDIA_VISIBLE_DEVICES (often to `all`) let the NVIDIA runtime expose GPUs the kubelet never allocated to the container: it can use every GPU of the node while the scheduler counts none. Remove the variable and request GPUs through resources.limits (nvidia.com/gpu); on the nodes, run the device plugin with DEVICE_LIST_STRATEGY=volume-mounts and set accept-nvidia-visible-devices-envvar-when-unprivileged = false in the NVIDIA Container Toolkit.",
        level: Level::Error,
    },
    Rule {
        id: "GPU002",
        short: "GPU requested without an equal limit",
        help: "Extended resources such as nvidia.com/gpu are allocated from limits; a request without the same limit is rejected by the API server or, in templates, silently lost. Set resources.limits to the GPU count and leave the request out or equal to it.",
        level: Level::Error,
    },
    Rule {
        id: "GPU003",
        short: "Privileged GPU container",
        help: "A privileged container sees every device of the node, so its GPU limit no longer confines it, and it can reach the driver and other tenants' memory. Drop privileged: true; GPU workloads need only their GPU limit.",
        level: Level::Error,
    },
    Rule {
        id: "GPU004",
        short: "hostPath to NVIDIA device files",
        help: "Mounting /dev/nvidia* from the host bypasses the device plugin: the pod reaches GPUs that are allocated to others. Request GPUs through resources.limits instead.",
        level: Level::Error,
    },
    Rule {
        id: "GPU005",
        short: "hostPath to a container runtime socket",
        help: "A pod with the containerd, CRI-O or Docker socket can start privileged containers on the node, GPUs included: it owns the node. Remove the mount; use the Kubernetes API for what it was for.",
        level: Level::Error,
    },
    Rule {
        id: "GPU006",
        short: "Namespace runs GPU workloads without a GPU ResourceQuota",
        help: "Without a quota on requests.nvidia.com/gpu one tenant can take every GPU of a shared pool. Add a ResourceQuota with hard: {requests.nvidia.com/gpu: N} to each namespace that runs GPU workloads.",
        level: Level::Warning,
    },
    Rule {
        id: "GPU007",
        short: "Tolerates the GPU taint without requesting a GPU",
        help: "GPU nodes are tainted so that only GPU pods land there; a pod that tolerates the taint without a GPU request takes CPU and memory from GPU nodes and strands their GPUs. Remove the toleration, or request a GPU (a limit, or gpuplane's gpuplane.io/gpu-milli annotation). DaemonSets are exempt: node agents run on GPU nodes by design.",
        level: Level::Warning,
    },
    Rule {
        id: "K8S001",
        short: "Privileged container",
        help: "Privileged containers run with every capability and every host device. Remove privileged: true (Pod Security baseline forbids it).",
        level: Level::Error,
    },
    Rule {
        id: "K8S002",
        short: "Host namespaces shared",
        help: "hostNetwork, hostPID or hostIPC share the node's namespaces with the pod. Remove them (Pod Security baseline forbids them).",
        level: Level::Error,
    },
    Rule {
        id: "K8S003",
        short: "Capabilities added beyond NET_BIND_SERVICE",
        help: "Added capabilities such as SYS_ADMIN or NET_RAW widen what a compromised container can do. Drop ALL and add only NET_BIND_SERVICE when a low port is needed (Pod Security restricted).",
        level: Level::Warning,
    },
    Rule {
        id: "K8S004",
        short: "Container without CPU and memory limits",
        help: "Without limits one container can starve its neighbours on a shared node. Set resources.limits.cpu and resources.limits.memory.",
        level: Level::Warning,
    },
];

fn rule(id: &str) -> &'static Rule {
    RULES.iter().find(|r| r.id == id).unwrap_or(&RULES[0])
}

const GPU_RESOURCES: [&str; 2] = ["nvidia.com/gpu", "gpuplane.io/gpu-milli"];

fn has_gpu(resources: Option<&Value>) -> bool {
    resources
        .and_then(Value::as_object)
        .is_some_and(|m| m.keys().any(|k| GPU_RESOURCES.contains(&k.as_str()) || k.starts_with("nvidia.com/mig-")))
}

fn containers(spec: &Value) -> Vec<&Value> {
    ["initContainers", "containers"]
        .iter()
        .filter_map(|key| spec.get(*key).and_then(Value::as_array))
        .flatten()
        .collect()
}

fn container_gpu(c: &Value) -> bool {
    has_gpu(c.pointer("/resources/limits")) || has_gpu(c.pointer("/resources/requests"))
}

fn truthy(v: Option<&Value>) -> bool {
    v.and_then(Value::as_bool).unwrap_or(false)
}

struct Linter<'o> {
    object: &'o KubeObject,
    /// The lines of the file the object is in, when it can be read: findings point at the field's line.
    lines: Option<&'o [String]>,
    out: Vec<Finding>,
}

/// The line of the field a finding is about: from the object's first line, the next line holding each
/// needle in turn (the container's name, then the field), within the object's document.
fn locate(lines: &[String], from: usize, needles: &[&str]) -> Option<usize> {
    let mut line = from.max(1);
    for needle in needles {
        let found = lines
            .iter()
            .enumerate()
            .skip(line - 1)
            .take_while(|(i, l)| *i + 1 == line || !(l.trim_end() == "---" || l.starts_with("--- ")))
            .find(|(_, l)| l.contains(needle))?;
        line = found.0 + 1;
    }
    Some(line)
}

impl Linter<'_> {
    fn report(&mut self, id: &str, container: Option<&str>, detail: String) {
        self.report_at(id, container, detail, &[]);
    }

    /// Reports a finding at the line of its field, found by `needles` (after the container's name).
    fn report_at(&mut self, id: &str, container: Option<&str>, detail: String, needles: &[&str]) {
        let r = rule(id);
        let object = self.object;
        let place = match container {
            Some(c) => {
                format!("{} {}/{} container {c}", object.kind(), object.namespace().unwrap_or("default"), object.name())
            }
            None => format!("{} {}/{}", object.kind(), object.namespace().unwrap_or("default"), object.name()),
        };
        let message = format!("{place}: {detail}");
        let mut path: Vec<&str> = Vec::new();
        if let Some(c) = container {
            path.extend(["containers", c]);
        }
        path.extend(needles);
        let line = self.lines.and_then(|l| locate(l, object.line, &path)).unwrap_or(object.line);
        let finding = Finding::new(TOOL, id, r.level, Severity::from_level(r.level), &object.source, line, message);
        // The object and container identify the finding wherever the document moves in the file.
        self.out.push(Finding { fingerprint: format!("{id}:{place}"), ..finding });
    }
}

/// Lints objects; namespace-level rules look at all of them together.
pub fn lint(objects: &[KubeObject]) -> Vec<Finding> {
    let mut findings = Vec::new();
    let quota_namespaces: HashSet<&str> = objects
        .iter()
        .filter(|o| o.kind() == "ResourceQuota" && has_gpu_quota(&o.value))
        .filter_map(|o| o.namespace())
        .collect();
    let mut reported_namespaces = HashSet::new();
    // Each file once, for the lines of the fields (objects read from a repository name `repo:path`, which
    // is no file here: those keep the object's line).
    let mut files: std::collections::HashMap<&str, Option<Vec<String>>> = std::collections::HashMap::new();
    for object in objects {
        files.entry(object.source.as_str()).or_insert_with(|| {
            std::fs::read_to_string(&object.source).ok().map(|t| t.lines().map(str::to_owned).collect())
        });
    }
    for object in objects {
        let Some(spec) = object.pod_spec() else { continue };
        let lines = files.get(object.source.as_str()).and_then(|l| l.as_deref());
        let mut l = Linter { object, lines, out: Vec::new() };
        // gpuplane's scheduler also takes fractional GPUs from the pod annotation gpuplane.io/gpu-milli.
        let annotated = pod_annotations(object).is_some_and(|a| a.get("gpuplane.io/gpu-milli").is_some());
        let pod_gpu = annotated || containers(spec).iter().any(|c| container_gpu(c));
        for flag in ["hostNetwork", "hostPID", "hostIPC"] {
            if truthy(spec.get(flag)) {
                l.report_at("K8S002", None, format!("{flag}: true"), &[flag]);
            }
        }
        for volume in spec.get("volumes").and_then(Value::as_array).into_iter().flatten() {
            let Some(path) = volume.pointer("/hostPath/path").and_then(Value::as_str) else { continue };
            if path.starts_with("/dev/nvidia") {
                l.report_at("GPU004", None, format!("hostPath {path}"), &["volumes", path]);
            }
            let sockets = ["containerd.sock", "docker.sock", "crio.sock", "/run/containerd", "/var/run/docker"];
            if sockets.iter().any(|s| path.contains(s)) {
                l.report_at("GPU005", None, format!("hostPath {path}"), &["volumes", path]);
            }
        }
        let tolerates_gpu = spec.get("tolerations").and_then(Value::as_array).into_iter().flatten().any(|t| {
            t.get("key")
                .and_then(Value::as_str)
                .is_some_and(|k| k.contains("nvidia.com/gpu") || k.contains("gpuplane.io/gpu"))
        });
        // Node agents (device plugins, exporters, caches) run as DaemonSets on GPU nodes by design.
        if tolerates_gpu && !pod_gpu && object.kind() != "DaemonSet" {
            l.report_at("GPU007", None, "tolerates the GPU taint but requests no GPU".into(), &["tolerations"]);
        }
        for c in containers(spec) {
            let name = c.get("name").and_then(Value::as_str).unwrap_or("?");
            let gpu = container_gpu(c);
            let visible = c.get("env").and_then(Value::as_array).into_iter().flatten().find_map(|e| {
                (e.get("name").and_then(Value::as_str) == Some("NVIDIA_VISIBLE_DEVICES"))
                    .then(|| e.get("value").and_then(Value::as_str).unwrap_or(""))
            });
            if let Some(value) = visible
                && !has_gpu(c.pointer("/resources/limits"))
                && !matches!(value, "void" | "none" | "")
            {
                let detail = format!("NVIDIA_VISIBLE_DEVICES={value} without a GPU limit");
                l.report_at("GPU001", Some(name), detail, &["NVIDIA_VISIBLE_DEVICES"]);
            }
            for key in GPU_RESOURCES {
                let request = c.pointer("/resources/requests").and_then(|r| r.get(key));
                let limit = c.pointer("/resources/limits").and_then(|r| r.get(key));
                if let Some(request) = request
                    && limit.is_none_or(|l| l.to_string().trim_matches('"') != request.to_string().trim_matches('"'))
                {
                    l.report_at(
                        "GPU002",
                        Some(name),
                        format!(
                            "requests {key}: {request} with limit {}",
                            limit.map_or("none".into(), Value::to_string)
                        ),
                        &["requests", key],
                    );
                }
            }
            let privileged = truthy(c.pointer("/securityContext/privileged"));
            if privileged {
                l.report_at("K8S001", Some(name), "securityContext.privileged: true".into(), &["privileged"]);
                if gpu || visible.is_some() {
                    l.report_at("GPU003", Some(name), "privileged container with GPU access".into(), &["privileged"]);
                }
            }
            let added: Vec<&str> = c
                .pointer("/securityContext/capabilities/add")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .filter(|cap| *cap != "NET_BIND_SERVICE")
                .collect();
            if !added.is_empty() {
                l.report_at("K8S003", Some(name), format!("capabilities added: {}", added.join(", ")), &["add"]);
            }
            let limits = c.pointer("/resources/limits");
            let missing: Vec<&str> =
                ["cpu", "memory"].into_iter().filter(|k| limits.and_then(|l| l.get(*k)).is_none()).collect();
            if !missing.is_empty() {
                l.report("K8S004", Some(name), format!("no {} limit", missing.join(" or ")));
            }
        }
        let namespace = object.namespace().unwrap_or("default");
        if pod_gpu && !quota_namespaces.contains(namespace) && reported_namespaces.insert(namespace.to_owned()) {
            l.report("GPU006", None, format!("namespace {namespace} has no ResourceQuota on GPUs"));
        }
        findings.extend(l.out);
    }
    findings
}

fn pod_annotations(object: &KubeObject) -> Option<&Value> {
    let pointer = match object.kind() {
        "Pod" => "/metadata/annotations",
        "CronJob" => "/spec/jobTemplate/spec/template/metadata/annotations",
        _ => "/spec/template/metadata/annotations",
    };
    object.value.pointer(pointer)
}

fn has_gpu_quota(quota: &Value) -> bool {
    quota.pointer("/spec/hard").and_then(Value::as_object).is_some_and(|hard| {
        hard.keys().any(|k| {
            let k = k.strip_prefix("requests.").or_else(|| k.strip_prefix("limits.")).unwrap_or(k);
            GPU_RESOURCES.contains(&k)
        })
    })
}

/// The tool name lint findings carry (and their SARIF run's driver name).
pub const TOOL: &str = "gpuplane-lint";

/// The lint rules for a SARIF run: id, short description, help.
pub fn sarif_rules() -> Vec<(String, String, String)> {
    RULES.iter().map(|r| (r.id.to_owned(), r.short.to_owned(), r.help.to_owned())).collect()
}
