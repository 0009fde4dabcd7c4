//! The admission webhook on AdmissionReview v1 messages shaped as the API server sends them: steering,
//! the GPU share written into requests, pool isolation and the routes to a GPU around the device plugin.
#![allow(clippy::unwrap_used)] // Helpers too: a failed unwrap is a failed test, with its location.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use gpuplane_kube::webhook::{AdmissionResponse, AdmissionReview, Webhook, WebhookConfig, mutate, router, validate};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

fn review() -> Value {
    serde_json::from_str(include_str!("fixtures/admission-review-gpu-pod.json")).unwrap()
}

fn request(v: &Value) -> gpuplane_kube::webhook::AdmissionRequest {
    serde_json::from_str::<AdmissionReview>(&v.to_string()).unwrap().request.unwrap()
}

fn patch_of(resp: &gpuplane_kube::webhook::AdmissionResponse) -> Vec<Value> {
    let bytes = STANDARD.decode(resp.patch.as_ref().unwrap()).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[test]
fn gpu_pod_is_steered_into_the_pool() {
    let resp = mutate(&WebhookConfig::default(), &request(&review()));
    assert!(resp.allowed);
    assert_eq!(resp.uid, "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(resp.patch_type.as_deref(), Some("JSONPatch"));
    let patch = patch_of(&resp);
    assert_eq!(
        patch,
        vec![
            // One GPU budget: nvidia.com/gpu written as the milli-GPUs gpuplane's device plugin serves.
            json!({"op": "remove", "path": "/spec/containers/0/resources/requests/nvidia.com~1gpu"}),
            json!({"op": "add", "path": "/spec/containers/0/resources/requests/gpuplane.io~1gpu-milli", "value": "1000"}),
            json!({"op": "remove", "path": "/spec/containers/0/resources/limits/nvidia.com~1gpu"}),
            json!({"op": "add", "path": "/spec/containers/0/resources/limits/gpuplane.io~1gpu-milli", "value": "1000"}),
            json!({"op": "add", "path": "/spec/nodeSelector", "value": {"gpuplane.io/pool": "gpu"}}),
            json!({"op": "add", "path": "/spec/tolerations/-", "value": {"key": "nvidia.com/gpu", "operator": "Exists"}}),
            json!({"op": "add", "path": "/spec/schedulerName", "value": "gpuplane"}),
            json!({"op": "add", "path": "/spec/priorityClassName", "value": "gpuplane-interactive"}),
            json!({"op": "add", "path": "/spec/priority", "value": 100000}),
        ]
    );
}

#[test]
fn pod_without_gpu_is_left_alone_and_never_tolerates_the_pool() {
    let mut r = review();
    let c = &mut r["request"]["object"]["spec"]["containers"][0]["resources"];
    *c = json!({"requests": {"cpu": "1", "memory": "1Gi"}});
    let resp = mutate(&WebhookConfig::default(), &request(&r));
    assert!(resp.allowed && resp.patch.is_none());
}

#[test]
fn a_custom_scheduler_and_existing_selector_are_respected() {
    let mut r = review();
    r["request"]["object"]["spec"]["schedulerName"] = json!("volcano");
    r["request"]["object"]["spec"]["nodeSelector"] = json!({"gpuplane.io/pool": "gpu", "zone/a": "x"});
    r["request"]["object"]["spec"]["tolerations"] = json!([{"key": "nvidia.com/gpu", "operator": "Exists"}]);
    r["request"]["object"]["metadata"]["labels"] = json!({});
    let resp = mutate(&WebhookConfig::default(), &request(&r));
    assert!(resp.allowed);
    assert!(
        resp.patch.is_none(),
        "nothing to change: {:?}",
        resp.patch.map(|_| patch_of(&mutate(&WebhookConfig::default(), &request(&r))))
    );
}

/// The validating answer's denial message, or a panic if the review was admitted.
fn denied(resp: AdmissionResponse) -> String {
    assert!(!resp.allowed, "admitted");
    let status = resp.status.unwrap();
    assert_eq!(status.code, 403);
    status.message
}

#[test]
fn visible_devices_all_is_denied_on_a_pod_without_gpus() {
    let config = WebhookConfig::default();
    assert!(validate(&config, &request(&review())).allowed);
    let mut sneaky = review();
    sneaky["request"]["object"]["spec"]["containers"][0]["resources"] = json!({"requests": {"cpu": "1"}});
    sneaky["request"]["object"]["spec"]["containers"][0]["env"] =
        json!([{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}]);
    assert!(denied(validate(&config, &request(&sneaky))).contains("NVIDIA_VISIBLE_DEVICES=all"));
    let lenient = WebhookConfig { deny_visible_devices_all: false, ..WebhookConfig::default() };
    assert!(validate(&lenient, &request(&sneaky)).allowed);
}

#[test]
fn gpu_pods_cannot_choose_their_visible_devices_either() {
    let config = WebhookConfig::default();
    let with_env = |env: Value, env_from: Value| {
        let mut r = review();
        r["request"]["object"]["spec"]["containers"][0]["env"] = env;
        r["request"]["object"]["spec"]["containers"][0]["envFrom"] = env_from;
        validate(&config, &request(&r))
    };
    // The review's pod asks for a GPU.
    for value in ["all", "0,1,2,3,4,5,6,7", "GPU-5f3c0b55"] {
        let message = denied(with_env(json!([{"name": "NVIDIA_VISIBLE_DEVICES", "value": value}]), json!([])));
        assert!(message.contains(&format!("NVIDIA_VISIBLE_DEVICES={value}")), "{message}");
    }
    let from_field =
        json!([{"name": "NVIDIA_VISIBLE_DEVICES", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]);
    assert!(denied(with_env(from_field, json!([]))).contains("valueFrom"));
    let message = denied(with_env(json!([]), json!([{"configMapRef": {"name": "gpu-env"}}])));
    assert!(message.contains("envFrom ConfigMap \"gpu-env\""), "{message}");
    assert!(denied(with_env(json!([]), json!([{"secretRef": {"name": "s"}, "prefix": "NVIDIA_"}]))).contains("Secret"));
    // Harmless: hiding GPUs, or a prefix that cannot spell the name.
    assert!(with_env(json!([{"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"}]), json!([])).allowed);
    assert!(with_env(json!([]), json!([{"configMapRef": {"name": "app"}, "prefix": "APP_"}])).allowed);
    // A pod without GPUs may take envFrom sources as they are.
    let mut cpu = review();
    cpu["request"]["object"]["spec"]["containers"][0]["resources"] = json!({"requests": {"cpu": "1"}});
    cpu["request"]["object"]["metadata"]["annotations"] = json!({});
    cpu["request"]["object"]["spec"]["containers"][0]["envFrom"] = json!([{"configMapRef": {"name": "app"}}]);
    assert!(validate(&config, &request(&cpu)).allowed);
}

#[test]
fn updates_are_never_patched() {
    let mut update = review();
    update["request"]["operation"] = json!("UPDATE");
    let resp = mutate(&WebhookConfig::default(), &request(&update));
    assert!(resp.allowed);
    assert!(resp.patch.is_none(), "an UPDATE got a patch");
}

#[test]
fn malformed_pod_is_denied_with_a_reason() {
    let mut r = review();
    r["request"]["object"]["metadata"]["annotations"] = json!({"gpuplane.io/gpu-milli": "2000"});
    r["request"]["object"]["spec"]["containers"][0]["resources"] = json!({});
    let resp = mutate(&WebhookConfig::default(), &request(&r));
    assert!(!resp.allowed);
    assert!(resp.status.unwrap().message.contains("gpuplane.io/gpu-milli"));
}

#[test]
fn a_model_size_that_is_not_a_quantity_is_denied_naming_the_annotation() {
    let mut r = review();
    r["request"]["object"]["metadata"]["annotations"] =
        json!({"gpuplane.io/model": "llama-3-8b@v1", "gpuplane.io/model-size": "16 gigs"});
    let resp = mutate(&WebhookConfig::default(), &request(&r));
    assert!(!resp.allowed);
    let message = resp.status.unwrap().message;
    assert!(message.contains("gpuplane.io/model-size") && message.contains("16 gigs"), "{message}");
    r["request"]["object"]["metadata"]["annotations"]["gpuplane.io/model-size"] = json!("16Gi");
    assert!(mutate(&WebhookConfig::default(), &request(&r)).allowed);
}

async fn post(app: &axum::Router, path: &str, body: impl Into<Body>) -> (StatusCode, Vec<u8>) {
    let req = Request::post(path).header("content-type", "application/json").body(body.into()).unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    (status, resp.into_body().collect().await.unwrap().to_bytes().to_vec())
}

#[tokio::test]
async fn http_round_trip_and_bad_input() {
    let app = router(Arc::new(Webhook::new(WebhookConfig::default())), 1 << 20);
    let (status, body) = post(&app, "/mutate", review().to_string()).await;
    assert_eq!(status, StatusCode::OK);
    let out: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(out["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(out["kind"], "AdmissionReview");
    assert_eq!(out["response"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(out["response"]["patchType"], "JSONPatch");
    let (status, _) = post(&app, "/validate", review().to_string()).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = post(&app, "/mutate", "{not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("invalid AdmissionReview JSON"));
    let (status, _) = post(&app, "/mutate", json!({"kind": "AdmissionReview"}).to_string()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Another version is refused, not answered as v1.
    let mut bogus = review();
    bogus["apiVersion"] = json!("bogus/v9");
    let (status, body) = post(&app, "/validate", bogus.to_string()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("bogus/v9"));
    let (status, _) = post(&app, "/validate", vec![b' '; 2 << 20]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let (status, _) = post(&app, "/convert", "{}").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// The review with a pod that asks half a GPU by annotation alone, as tenants write it.
fn annotated_share() -> Value {
    let mut r = review();
    r["request"]["object"]["metadata"]["annotations"] = json!({"gpuplane.io/gpu-milli": "500"});
    r["request"]["object"]["spec"]["containers"][0]["resources"] = json!({"requests": {"cpu": "4"}});
    r
}

/// The pod after the mutating webhook's patch, as the API server would apply it.
fn patched(r: &Value) -> Value {
    let mut out = r.clone();
    let resp = mutate(&WebhookConfig::default(), &request(r));
    for op in patch_of(&resp) {
        let path: Vec<String> =
            op["path"].as_str().unwrap()[1..].split('/').map(|p| p.replace("~1", "/").replace("~0", "~")).collect();
        let mut at = &mut out["request"]["object"];
        for part in &path[..path.len() - 1] {
            at = match part.parse::<usize>() {
                Ok(i) => &mut at[i],
                Err(_) => &mut at[part.as_str()],
            };
        }
        let last = path.last().unwrap();
        if op["op"] == "remove" {
            at.as_object_mut().unwrap().remove(last.as_str());
        } else if last == "-" {
            at.as_array_mut().unwrap().push(op["value"].clone());
        } else {
            at[last.as_str()] = op["value"].clone();
        }
    }
    out
}

#[test]
fn a_share_asked_by_annotation_is_written_into_the_requests_where_quota_counts_it() {
    let r = annotated_share();
    let patch = patch_of(&mutate(&WebhookConfig::default(), &request(&r)));
    assert_eq!(
        patch[0],
        json!({"op": "add", "path": "/spec/containers/0/resources/requests/gpuplane.io~1gpu-milli", "value": "500"})
    );
    assert_eq!(
        patch[1],
        json!({"op": "add", "path": "/spec/containers/0/resources/limits", "value": {"gpuplane.io/gpu-milli": "500"}})
    );
    let after = patched(&r);
    let resources = &after["request"]["object"]["spec"]["containers"][0]["resources"];
    assert_eq!(
        resources,
        &json!({"requests": {"cpu": "4", "gpuplane.io/gpu-milli": "500"}, "limits": {"gpuplane.io/gpu-milli": "500"}})
    );
    // Patched, it passes validation; unpatched (the mutating webhook skipped), it is refused: its share
    // would not be counted by ResourceQuota.
    assert!(validate(&WebhookConfig::default(), &request(&after)).allowed);
    let message = denied(validate(&WebhookConfig::default(), &request(&r)));
    assert!(message.contains("by annotation only") && message.contains("ResourceQuota"), "{message}");
    // Two whole GPUs by annotation, on a container without resources: 2000 milli.
    let mut two = annotated_share();
    two["request"]["object"]["metadata"]["annotations"] = json!({"gpuplane.io/gpu-count": "2"});
    two["request"]["object"]["spec"]["containers"][0].as_object_mut().unwrap().remove("resources");
    let after = patched(&two);
    assert_eq!(
        after["request"]["object"]["spec"]["containers"][0]["resources"]["requests"]["gpuplane.io/gpu-milli"],
        "2000"
    );
}

#[test]
fn annotations_that_disagree_with_the_requests_are_refused() {
    let mut r = annotated_share();
    r["request"]["object"]["spec"]["containers"][0]["resources"] =
        json!({"requests": {"gpuplane.io/gpu-milli": "250"}, "limits": {"gpuplane.io/gpu-milli": "250"}});
    let message = denied(validate(&WebhookConfig::default(), &request(&r)));
    assert!(message.contains("500 milli") && message.contains("250"), "{message}");
}

/// A pod without GPUs, with `edit` applied to its spec.
fn cpu_pod(edit: impl FnOnce(&mut Value)) -> gpuplane_kube::webhook::AdmissionRequest {
    let mut r = review();
    r["request"]["object"]["spec"]["containers"][0]["resources"] = json!({"requests": {"cpu": "1"}});
    edit(&mut r["request"]["object"]["spec"]);
    request(&r)
}

#[test]
fn attack_a_pod_without_gpus_cannot_reach_the_gpu_pool() {
    let config = WebhookConfig::default();
    assert!(validate(&config, &cpu_pod(|_| {})).allowed, "an ordinary pod");
    let routes = [
        (
            json!({"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}),
            "tolerates",
        ),
        (json!({"tolerations": [{"operator": "Exists"}]}), "tolerates"),
        (
            json!({"tolerations": [{"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoExecute"}]}),
            "tolerates",
        ),
        (json!({"nodeSelector": {"gpuplane.io/pool": "gpu"}}), "selects"),
        (
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "gpuplane.io/pool", "operator": "In", "values": ["gpu"]}]}]}}}}),
            "node affinity",
        ),
    ];
    for (fields, why) in routes {
        let req = cpu_pod(|spec| {
            for (k, v) in fields.as_object().unwrap() {
                spec[k] = v.clone();
            }
        });
        let message = denied(validate(&config, &req));
        assert!(message.contains("asks for no GPU") && message.contains(why), "{why}: {message}");
    }
    // A pod asking a MIG slice or another vendor's GPU is a GPU pod: it may tolerate the pool.
    for resource in ["nvidia.com/mig-1g.10gb", "amd.com/gpu", "gpuplane.io/gpu"] {
        let req = cpu_pod(|spec| {
            spec["containers"][0]["resources"]["limits"] = json!({resource: "1"});
            spec["tolerations"] = json!([{"key": "nvidia.com/gpu", "operator": "Exists"}]);
        });
        assert!(validate(&config, &req).allowed, "{resource}");
    }
}

#[test]
fn attack_no_pod_reaches_a_gpu_around_the_device_plugin() {
    let config = WebhookConfig::default();
    let mut cdi = review();
    cdi["request"]["object"]["metadata"]["annotations"] = json!({"cdi.k8s.io/gpu": "nvidia.com/gpu=all"});
    assert!(denied(validate(&config, &request(&cdi))).contains("CDI"));
    for path in ["/dev/nvidia0", "/dev", "/", "/opt/../dev/dri"] {
        let req = cpu_pod(|spec| spec["volumes"] = json!([{"name": "d", "hostPath": {"path": path}}]));
        assert!(denied(validate(&config, &req)).contains("GPU device nodes"), "{path}");
    }
    let models = cpu_pod(|spec| spec["volumes"] = json!([{"name": "m", "hostPath": {"path": "/data/models"}}]));
    assert!(validate(&config, &models).allowed);
    // Privileged sees every device: refused on a GPU pod (a pod without GPUs does not run on the pool).
    let mut privileged = review();
    privileged["request"]["object"]["spec"]["containers"][0]["securityContext"] = json!({"privileged": true});
    assert!(denied(validate(&config, &request(&privileged))).contains("privileged"));
    // A GPU pod created already bound skips gpuplane's assignment; the kubelet's mirror pods may.
    let mut bound = review();
    bound["request"]["object"]["spec"]["nodeName"] = json!("gpu-1");
    assert!(denied(validate(&config, &request(&bound))).contains("spec.nodeName"));
    bound["request"]["userInfo"]["groups"] = json!(["system:nodes", "system:authenticated"]);
    assert!(validate(&config, &request(&bound)).allowed);
}

#[test]
fn attack_an_ephemeral_container_cannot_choose_visible_devices() {
    // `kubectl debug POD --env=NVIDIA_VISIBLE_DEVICES=all`: an UPDATE of pods/ephemeralcontainers whose
    // object is the whole pod.
    let mut r = review();
    r["request"]["operation"] = json!("UPDATE");
    r["request"]["subResource"] = json!("ephemeralcontainers");
    r["request"]["object"]["spec"]["nodeName"] = json!("gpu-1");
    r["request"]["object"]["spec"]["ephemeralContainers"] = json!([{"name": "debugger", "image": "busybox",
        "env": [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}]}]);
    let message = denied(validate(&WebhookConfig::default(), &request(&r)));
    assert!(message.contains("\"debugger\"") && message.contains("NVIDIA_VISIBLE_DEVICES=all"), "{message}");
    r["request"]["object"]["spec"]["ephemeralContainers"][0]["env"] = json!([]);
    r["request"]["object"]["spec"]["ephemeralContainers"][0]["securityContext"] = json!({"privileged": true});
    assert!(denied(validate(&WebhookConfig::default(), &request(&r))).contains("privileged"));
    r["request"]["object"]["spec"]["ephemeralContainers"][0]["securityContext"] = json!({});
    assert!(validate(&WebhookConfig::default(), &request(&r)).allowed, "a plain debug container");
    // Other updates are not this webhook's: the API server's policy guards the pod's annotations.
    r["request"]["subResource"] = Value::Null;
    r["request"]["object"]["spec"]["ephemeralContainers"][0]["securityContext"] = json!({"privileged": true});
    assert!(validate(&WebhookConfig::default(), &request(&r)).allowed);
}

#[test]
fn attack_whole_gpus_are_counted_in_the_one_gpu_budget() {
    // nvidia.com/gpu on a pod gpuplane schedules becomes gpuplane.io/gpu-milli, which the quota counts.
    let after = patched(&review());
    let resources = &after["request"]["object"]["spec"]["containers"][0]["resources"];
    assert_eq!(resources["requests"], json!({"cpu": "4", "memory": "24Gi", "gpuplane.io/gpu-milli": "1000"}));
    assert_eq!(resources["limits"], json!({"memory": "24Gi", "gpuplane.io/gpu-milli": "1000"}));
    assert!(validate(&WebhookConfig::default(), &request(&after)).allowed);
    // A pod of another scheduler keeps its request (that scheduler's pool serves it).
    let mut other = review();
    other["request"]["object"]["spec"]["schedulerName"] = json!("volcano");
    assert!(patch_of(&mutate(&WebhookConfig::default(), &request(&other))).iter().all(|op| op["op"] != "remove"));
    // A GPU resource gpuplane's pool does not serve is refused on a pod gpuplane schedules.
    for resource in ["nvidia.com/gpu", "nvidia.com/mig-1g.10gb", "amd.com/gpu"] {
        let mut r = review();
        r["request"]["object"]["spec"]["schedulerName"] = json!("gpuplane");
        r["request"]["object"]["spec"]["containers"][0]["resources"] = json!({"limits": {resource: "1"}});
        let message = denied(validate(&WebhookConfig::default(), &request(&r)));
        assert!(message.contains(resource) && message.contains("does not serve"), "{resource}: {message}");
    }
}

#[test]
fn attack_a_pod_cannot_gain_a_way_to_the_pool_by_update() {
    let update = |old: Value, new: Value| {
        let mut r = review();
        r["request"]["operation"] = json!("UPDATE");
        let base = r["request"]["object"].clone();
        for (field, spec) in [("object", new), ("oldObject", old)] {
            r["request"][field] = base.clone();
            r["request"][field]["spec"]["containers"][0]["resources"] = json!({"requests": {"cpu": "1"}});
            for (k, v) in spec.as_object().unwrap() {
                r["request"][field]["spec"][k] = v.clone();
            }
        }
        validate(&WebhookConfig::default(), &request(&r))
    };
    let toleration = json!({"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]});
    let message = denied(update(json!({}), toleration.clone()));
    assert!(message.contains("tolerates the GPU pool's taint"), "{message}");
    let selector = json!({"nodeSelector": {"gpuplane.io/pool": "gpu"}});
    assert!(denied(update(json!({}), selector)).contains("selects"));
    // A pod that had the toleration before gpuplane came keeps being updatable (labels, finalizers).
    assert!(update(toleration.clone(), toleration).allowed);
    assert!(update(json!({}), json!({"nodeSelector": {"zone": "a"}})).allowed);
}

#[test]
fn attack_no_volume_is_mounted_where_the_runtime_reads_a_device_list() {
    for path in [
        "/var/run/nvidia-container-devices/all",
        "/run/nvidia-container-devices",
        "/var/run//nvidia-container-devices/x",
    ] {
        let mut r = review();
        r["request"]["object"]["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "d", "mountPath": path}]);
        let message = denied(validate(&WebhookConfig::default(), &request(&r)));
        assert!(message.contains("device list"), "{path}: {message}");
    }
}

#[test]
fn a_review_over_the_body_limit_is_refused_unread() {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        let app = router(Arc::new(Webhook::new(WebhookConfig::default())), 1 << 16);
        let (status, _) = post(&app, "/mutate", vec![b' '; 1 << 17]).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        let (status, _) = post(&app, "/mutate", review().to_string()).await;
        assert_eq!(status, StatusCode::OK);
    });
}
