//! The manifests in deploy/ are valid Kubernetes objects: every document deserialises into its
//! k8s-openapi type and serialises back to the same JSON, so a misspelt or misplaced field (which the
//! typed round trip would drop) fails the test.
#![allow(clippy::unwrap_used)] // Helpers too: a failed unwrap is a failed test, with its location.

use std::path::{Path, PathBuf};

use k8s_openapi::api::{admissionregistration, apps, batch, core, networking, policy, rbac, scheduling};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn manifests() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let mut files = Vec::new();
    let mut dirs = vec![root];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml") && !path.ends_with("kustomization.yaml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn round_trip<T: DeserializeOwned + Serialize>(doc: &Value) -> Value {
    let typed: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{e}: {doc}"));
    serde_json::to_value(typed).unwrap()
}

#[test]
fn every_manifest_is_a_valid_object() {
    let files = manifests();
    assert!(files.len() >= 6, "{files:?}");
    let mut kinds = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for doc in docs {
            let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
            let back = match kind.as_str() {
                "Namespace" => round_trip::<core::v1::Namespace>(&doc),
                "ServiceAccount" => round_trip::<core::v1::ServiceAccount>(&doc),
                "Service" => round_trip::<core::v1::Service>(&doc),
                "ConfigMap" => round_trip::<core::v1::ConfigMap>(&doc),
                "ResourceQuota" => round_trip::<core::v1::ResourceQuota>(&doc),
                "ClusterRole" => round_trip::<rbac::v1::ClusterRole>(&doc),
                "ClusterRoleBinding" => round_trip::<rbac::v1::ClusterRoleBinding>(&doc),
                "Role" => round_trip::<rbac::v1::Role>(&doc),
                "RoleBinding" => round_trip::<rbac::v1::RoleBinding>(&doc),
                "PodDisruptionBudget" => round_trip::<policy::v1::PodDisruptionBudget>(&doc),
                "MutatingWebhookConfiguration" => {
                    round_trip::<admissionregistration::v1::MutatingWebhookConfiguration>(&doc)
                }
                "ValidatingWebhookConfiguration" => {
                    round_trip::<admissionregistration::v1::ValidatingWebhookConfiguration>(&doc)
                }
                "ValidatingAdmissionPolicy" => round_trip::<admissionregistration::v1::ValidatingAdmissionPolicy>(&doc),
                "ValidatingAdmissionPolicyBinding" => {
                    round_trip::<admissionregistration::v1::ValidatingAdmissionPolicyBinding>(&doc)
                }
                "Deployment" => round_trip::<apps::v1::Deployment>(&doc),
                "DaemonSet" => round_trip::<apps::v1::DaemonSet>(&doc),
                "Job" => round_trip::<batch::v1::Job>(&doc),
                "PriorityClass" => round_trip::<scheduling::v1::PriorityClass>(&doc),
                "NetworkPolicy" => round_trip::<networking::v1::NetworkPolicy>(&doc),
                other => panic!("{}: kind {other:?} has no check here", file.display()),
            };
            assert_eq!(
                back,
                doc,
                "{}: {kind} changes in a typed round trip (an unknown or misplaced field?)",
                file.display()
            );
            kinds.push(kind);
        }
    }
    for k in ["Deployment", "ClusterRole", "Service", "ConfigMap", "MutatingWebhookConfiguration", "Role"] {
        assert!(kinds.iter().any(|x| x == k), "no {k} in deploy/");
    }
}

#[test]
fn scheduler_configuration_points_at_the_extender_service() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/extender/kube-scheduler-config.yaml"),
    )
    .unwrap();
    let cm: core::v1::ConfigMap = serde_json::from_value(serde_saphyr::from_str::<Value>(&text).unwrap()).unwrap();
    let embedded = &cm.data.unwrap()["scheduler-config.yaml"];
    let config: Value = serde_saphyr::from_str(embedded).unwrap();
    assert_eq!(config["apiVersion"], "kubescheduler.config.k8s.io/v1");
    let ext = &config["extenders"][0];
    assert_eq!(ext["urlPrefix"], "https://gpuplane-extender.gpuplane-system.svc:8888");
    for verb in ["filterVerb", "prioritizeVerb", "preemptVerb", "bindVerb"] {
        assert!(ext[verb].is_string(), "{verb}");
    }
    assert_eq!(ext["nodeCacheCapable"], true);
    // Only GPU pods go through the extender, over TLS with kube-scheduler's client certificate.
    let managed: Vec<&str> =
        ext["managedResources"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(managed, ["nvidia.com/gpu", "gpuplane.io/gpu-milli"]);
    for file in ["certFile", "keyFile", "caFile"] {
        assert!(ext["tlsConfig"][file].is_string(), "tlsConfig.{file}");
    }
}

fn docs_of(relative: &str) -> Vec<Value> {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy").join(relative)).unwrap();
    serde_saphyr::from_multiple(&text).unwrap()
}

#[test]
fn kustomization_lists_files_that_exist() {
    let docs = docs_of("kustomization.yaml");
    let resources = docs[0]["resources"].as_array().unwrap();
    assert!(resources.len() >= 6);
    for r in resources {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy").join(r.as_str().unwrap());
        assert!(path.is_file(), "{} listed in kustomization.yaml does not exist", path.display());
    }
}

#[test]
fn scheduler_rbac_grants_what_the_scheduler_calls() {
    let docs = docs_of("scheduler/rbac.yaml");
    let granted = |kind: &str, group: &str, resource: &str, verb: &str| {
        docs.iter().filter(|d| d["kind"] == kind).any(|d| {
            d["rules"].as_array().unwrap().iter().any(|r| {
                let has = |field: &str, v: &str| r[field].as_array().unwrap().iter().any(|x| x == v);
                has("apiGroups", group) && has("resources", resource) && has("verbs", verb)
            })
        })
    };
    for (group, resource, verbs) in [
        ("", "nodes", &["list", "watch"][..]),
        ("", "pods", &["list", "watch"]),
        ("", "pods/binding", &["create"]),
        ("", "pods/eviction", &["create"]),
        ("", "pods/status", &["patch"]),
        ("policy", "poddisruptionbudgets", &["list", "watch"]),
    ] {
        for verb in verbs {
            assert!(granted("ClusterRole", group, resource, verb), "{resource} {verb}");
        }
    }
    for verb in ["get", "create", "update"] {
        assert!(granted("Role", "coordination.k8s.io", "leases", verb), "leases {verb}");
    }
    // The GPU assignment goes onto the pod with its Binding: the scheduler never writes a pod itself.
    assert!(!granted("ClusterRole", "", "pods", "patch") && !granted("ClusterRole", "", "pods", "update"));
}

#[test]
fn webhook_configurations_point_at_the_webhook_service_paths() {
    let service = docs_of("webhook/deployment.yaml").into_iter().find(|d| d["kind"] == "Service").unwrap();
    let docs = docs_of("webhook/configuration.yaml");
    let hooks = docs.iter().flat_map(|doc| doc["webhooks"].as_array().unwrap().iter().map(move |hook| (doc, hook)));
    for (doc, hook) in hooks {
        let svc = &hook["clientConfig"]["service"];
        assert_eq!(svc["name"], service["metadata"]["name"]);
        assert_eq!(svc["namespace"], service["metadata"]["namespace"]);
        assert_eq!(svc["port"], service["spec"]["ports"][0]["port"]);
        let expected = if doc["kind"] == "MutatingWebhookConfiguration" { "/mutate" } else { "/validate" };
        assert_eq!(svc["path"], expected);
        assert_eq!(hook["admissionReviewVersions"][0], "v1");
        let excluded = hook["namespaceSelector"]["matchExpressions"][0]["values"].as_array().unwrap();
        assert!(excluded.iter().any(|v| v == "gpuplane-system"), "the webhook must not gate its own namespace");
    }
}

#[test]
fn the_cache_agent_is_reachable_only_as_its_docs_say_and_presents_a_bound_token() {
    let docs = docs_of("cache/daemonset.yaml");
    let of = |kind: &str| docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind}"));
    let policy = of("NetworkPolicy");
    assert_eq!(policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"], "gpuplane-cache");
    assert_eq!(policy["spec"]["ingress"][0]["ports"][0]["port"], 8470);
    let sources: Vec<&Value> = policy["spec"]["ingress"][0]["from"].as_array().unwrap().iter().collect();
    assert_eq!(sources.len(), 3, "peers, the scheduler, model-client namespaces: {sources:?}");
    let binding = of("ClusterRoleBinding");
    assert_eq!(binding["roleRef"]["name"], "system:auth-delegator", "TokenReview needs it");
    let pod = &of("DaemonSet")["spec"]["template"]["spec"];
    let args: Vec<&str> = pod["containers"][0]["args"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    for flag in ["--listen=0.0.0.0:8470", "--peer-token-file=/var/run/secrets/gpuplane/token", "--allow-origin="] {
        assert!(args.iter().any(|a| a.starts_with(flag)), "{flag} missing from {args:?}");
    }
    let token = &pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "peer-token").unwrap()["projected"];
    assert_eq!(token["sources"][0]["serviceAccountToken"]["audience"], "gpuplane-cache");
    // The scheduler presents a token of the same audience when it reads the inventories.
    let scheduler = &docs_of("scheduler/deployment.yaml")[0]["spec"]["template"]["spec"];
    let volume = scheduler["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "cache-agent-token").unwrap();
    assert_eq!(volume["projected"]["sources"][0]["serviceAccountToken"]["audience"], "gpuplane-cache");
}

#[test]
fn the_annotation_policy_guards_every_annotation_gpuplane_reads() {
    use gpuplane_core::manifest::{POD_GPU_COUNT_ANNOTATIONS, POD_GPU_MILLI_ANNOTATIONS, POD_GPU_MODEL_ANNOTATIONS};
    let docs = docs_of("webhook/policy.yaml");
    let policy = docs.iter().find(|d| d["metadata"]["name"] == "gpuplane-pod-annotations").unwrap();
    let variable = |name: &str| -> String {
        let variables = policy["spec"]["variables"].as_array().unwrap();
        variables.iter().find(|v| v["name"] == name).unwrap()["expression"].as_str().unwrap().to_owned()
    };
    let (asked, placed) = (variable("asked"), variable("placed"));
    let read = POD_GPU_COUNT_ANNOTATIONS.iter().chain(POD_GPU_MILLI_ANNOTATIONS).chain(POD_GPU_MODEL_ANNOTATIONS);
    for key in read {
        assert!(asked.contains(&format!("'{key}'")), "{key} is read by gpuplane but not guarded: {asked}");
    }
    for key in
        [gpuplane_kube::assignment::ASSIGNMENT_ANNOTATION, gpuplane_kube::assignment::ASSIGNMENT_UUIDS_ANNOTATION]
    {
        assert!(placed.contains(&format!("'{key}'")), "{key} is not guarded: {placed}");
    }
    // Bound to every namespace, denying.
    let binding = docs.iter().find(|d| d["kind"] == "ValidatingAdmissionPolicyBinding").unwrap();
    assert_eq!(binding["spec"]["validationActions"][0], "Deny");
    assert!(binding["spec"]["matchResources"].is_null(), "the policy binds every namespace");
}
