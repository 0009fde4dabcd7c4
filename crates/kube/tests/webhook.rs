//! The admission webhook on AdmissionReview v1 messages shaped as the API server sends them.
#![allow(clippy::unwrap_used)] // Helpers too: a failed unwrap is a failed test, with its location.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use gpuplane_kube::webhook::{AdmissionReview, GpuQuota, Webhook, WebhookConfig, mutate, router, validate};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

fn review() -> Value {
    serde_json::from_str(include_str!("fixtures/admission-review-gpu-pod.json")).unwrap()
}

fn request(v: &Value) -> gpuplane_kube::webhook::AdmissionRequest {
    serde_json::from_value::<AdmissionReview>(v.clone()).unwrap().request.unwrap()
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
            json!({"op": "add", "path": "/spec/nodeSelector", "value": {"gpuplane.io/pool": "gpu"}}),
            json!({"op": "add", "path": "/spec/tolerations/-", "value": {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}}),
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

#[test]
fn quota_and_visible_devices_are_enforced() {
    let config = WebhookConfig::default();
    let mut quotas = HashMap::new();
    quotas.insert("serving".to_owned(), GpuQuota { hard_milli: 4000, used_milli: 3500 });
    let resp = validate(&config, &quotas, &request(&review()));
    assert!(!resp.allowed);
    let status = resp.status.unwrap();
    assert_eq!(status.code, 403);
    assert!(status.message.contains("uses 3.500 of its 4.000 GPU quota"), "{}", status.message);
    quotas.insert("serving".to_owned(), GpuQuota { hard_milli: 4000, used_milli: 3000 });
    assert!(validate(&config, &quotas, &request(&review())).allowed);

    let mut sneaky = review();
    sneaky["request"]["object"]["spec"]["containers"][0]["resources"] = json!({"requests": {"cpu": "1"}});
    sneaky["request"]["object"]["spec"]["containers"][0]["env"] =
        json!([{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}]);
    let resp = validate(&config, &quotas, &request(&sneaky));
    assert!(!resp.allowed);
    assert!(resp.status.unwrap().message.contains("NVIDIA_VISIBLE_DEVICES=all"));
    let lenient = WebhookConfig { deny_visible_devices_all: false, ..WebhookConfig::default() };
    assert!(validate(&lenient, &quotas, &request(&sneaky)).allowed);
}

#[test]
fn gpu_pods_cannot_choose_their_visible_devices_either() {
    let config = WebhookConfig::default();
    let quotas = HashMap::new();
    let with_env = |env: Value, env_from: Value| {
        let mut r = review();
        r["request"]["object"]["spec"]["containers"][0]["env"] = env;
        r["request"]["object"]["spec"]["containers"][0]["envFrom"] = env_from;
        validate(&config, &quotas, &request(&r))
    };
    let denied = |resp: gpuplane_kube::webhook::AdmissionResponse| {
        assert!(!resp.allowed);
        let status = resp.status.unwrap();
        assert_eq!(status.code, 403);
        status.message
    };
    // The review's pod asks for half a GPU.
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
    assert!(validate(&config, &quotas, &request(&cpu)).allowed);
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
    let app = router(Arc::new(Webhook::default()), 1 << 20);
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

#[test]
fn gpu_quota_counts_shares_of_unfinished_pods_against_unscoped_quotas() {
    let quota = |name: &str, ns: &str, hard: &str, scoped: bool| -> k8s_openapi::api::core::v1::ResourceQuota {
        let mut q = json!({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": name, "namespace": ns},
            "spec": {"hard": {"requests.nvidia.com/gpu": hard, "requests.cpu": "64"}},
            "status": {"hard": {"requests.nvidia.com/gpu": hard}, "used": {"requests.nvidia.com/gpu": "1"}}});
        if scoped {
            q["spec"]["scopeSelector"] =
                json!({"matchExpressions": [{"scopeName": "PriorityClass", "operator": "In", "values": ["batch"]}]});
        }
        serde_json::from_value(q).unwrap()
    };
    let pod = |name: &str, ns: &str, milli: &str, phase: &str| -> k8s_openapi::api::core::v1::Pod {
        serde_json::from_value(
            json!({"metadata": {"name": name, "namespace": ns, "annotations": {"gpuplane.io/gpu-milli": milli}},
            "spec": {"containers": [{"name": "c"}]},
            "status": {"phase": phase}}),
        )
        .unwrap()
    };
    let quotas =
        [quota("gpus", "ml", "4", false), quota("tight", "ml", "2500m", false), quota("batch", "web", "1", true)];
    let pods = [
        pod("a", "ml", "500", "Running"),
        pod("b", "ml", "1000", "Pending"),
        pod("old", "ml", "1000", "Succeeded"),
        pod("w", "web", "1000", "Running"),
        pod("bad", "ml", "half", "Running"),
    ];
    let (found, problems) = gpuplane_kube::webhook::gpu_quotas(&quotas, &pods);
    assert_eq!(found.len(), 1, "the web quota is scoped");
    assert_eq!(found["ml"], GpuQuota { hard_milli: 2500, used_milli: 1500 });
    assert_eq!(problems.len(), 1);
    assert!(problems[0].contains("ml/bad") && problems[0].contains("gpuplane.io/gpu-milli"), "{problems:?}");

    let bad = [quota("x", "ml", "lots", false)];
    let (found, problems) = gpuplane_kube::webhook::gpu_quotas(&bad, &[]);
    assert!(found.is_empty());
    assert!(problems[0].contains("ResourceQuota ml/x") && problems[0].contains("\"lots\""), "{problems:?}");
}
