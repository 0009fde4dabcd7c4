//! The admission webhook on AdmissionReview v1 messages shaped as the API server sends them.
#![allow(clippy::unwrap_used)] // Helpers too: a failed unwrap is a failed test, with its location.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use gpuplane_kube::webhook::{
    AdmissionReview, GpuQuota, QuotaLedger, QuotaView, Webhook, WebhookConfig, mutate, router, validate,
};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

fn review() -> Value {
    serde_json::from_str(include_str!("fixtures/admission-review-gpu-pod.json")).unwrap()
}

fn request(v: &Value) -> gpuplane_kube::webhook::AdmissionRequest {
    serde_json::from_value::<AdmissionReview>(v.clone()).unwrap().request.unwrap()
}

/// A ledger fresh now, with these quotas and no pods counted by name.
fn ledger(quotas: &[(&str, GpuQuota)]) -> QuotaLedger {
    let mut ledger = QuotaLedger::default();
    let view =
        QuotaView { quotas: quotas.iter().map(|(n, q)| ((*n).to_owned(), *q)).collect(), counted: Default::default() };
    ledger.refresh(view, Instant::now());
    ledger
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
    let mut quotas = ledger(&[("serving", GpuQuota { hard_milli: 4000, used_milli: 3500 })]);
    let resp = validate(&config, &mut quotas, &request(&review()), Instant::now());
    assert!(!resp.allowed);
    let status = resp.status.unwrap();
    assert_eq!(status.code, 403);
    assert!(status.message.contains("uses 3.500 of its 4.000 GPU quota"), "{}", status.message);
    let mut quotas = ledger(&[("serving", GpuQuota { hard_milli: 4000, used_milli: 3000 })]);
    assert!(validate(&config, &mut quotas, &request(&review()), Instant::now()).allowed);

    let mut sneaky = review();
    sneaky["request"]["object"]["spec"]["containers"][0]["resources"] = json!({"requests": {"cpu": "1"}});
    sneaky["request"]["object"]["spec"]["containers"][0]["env"] =
        json!([{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}]);
    let resp = validate(&config, &mut quotas, &request(&sneaky), Instant::now());
    assert!(!resp.allowed);
    assert!(resp.status.unwrap().message.contains("NVIDIA_VISIBLE_DEVICES=all"));
    let lenient = WebhookConfig { deny_visible_devices_all: false, ..WebhookConfig::default() };
    assert!(validate(&lenient, &mut quotas, &request(&sneaky), Instant::now()).allowed);
}

#[test]
fn gpu_pods_cannot_choose_their_visible_devices_either() {
    let config = WebhookConfig::default();
    let quotas = std::cell::RefCell::new(ledger(&[]));
    let with_env = |env: Value, env_from: Value| {
        let mut r = review();
        r["request"]["object"]["spec"]["containers"][0]["env"] = env;
        r["request"]["object"]["spec"]["containers"][0]["envFrom"] = env_from;
        validate(&config, &mut quotas.borrow_mut(), &request(&r), Instant::now())
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
    assert!(validate(&config, &mut quotas.borrow_mut(), &request(&cpu), Instant::now()).allowed);
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
    let app = router(Arc::new(Webhook::new(WebhookConfig::default(), ledger(&[]))), 1 << 20);
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
    assert_eq!(found.quotas.len(), 1, "the web quota is scoped");
    assert_eq!(found.quotas["ml"], GpuQuota { hard_milli: 2500, used_milli: 1500 });
    let mut counted: Vec<&str> = found.counted.iter().map(String::as_str).collect();
    counted.sort();
    assert_eq!(counted, ["ml/a", "ml/b"]);
    assert_eq!(problems.len(), 1);
    assert!(problems[0].contains("ml/bad") && problems[0].contains("gpuplane.io/gpu-milli"), "{problems:?}");

    let bad = [quota("x", "ml", "lots", false)];
    let (found, problems) = gpuplane_kube::webhook::gpu_quotas(&bad, &[]);
    assert!(found.quotas.is_empty());
    assert!(problems[0].contains("ResourceQuota ml/x") && problems[0].contains("\"lots\""), "{problems:?}");
}

/// The review's pod in namespace serving, under another name, asking for half a GPU.
fn half_gpu_pod(name: &str) -> Value {
    let mut r = review();
    r["request"]["object"]["spec"]["containers"][0]["resources"] =
        json!({"requests": {"cpu": "1", "gpuplane.io/gpu-milli": "500"}, "limits": {"gpuplane.io/gpu-milli": "500"}});
    r["request"]["uid"] = json!(format!("uid-{name}"));
    r["request"]["name"] = json!(name);
    r["request"]["object"]["metadata"]["name"] = json!(name);
    r
}

#[tokio::test]
async fn of_ten_concurrent_half_gpu_pods_only_as_many_as_the_quota_holds_are_admitted() {
    // 3.5 of 4 GPUs in use: room for one half-GPU pod.
    let hook = Arc::new(Webhook::new(
        WebhookConfig::default(),
        ledger(&[("serving", GpuQuota { hard_milli: 4000, used_milli: 3500 })]),
    ));
    let app = router(Arc::clone(&hook), 1 << 20);
    let reviews = (0..10).map(|i| {
        let app = app.clone();
        tokio::spawn(async move { post(&app, "/validate", half_gpu_pod(&format!("burst-{i}")).to_string()).await })
    });
    let mut admitted = 0;
    for review in reviews {
        let (status, body) = review.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        let out: Value = serde_json::from_slice(&body).unwrap();
        admitted += usize::from(out["response"]["allowed"] == json!(true));
    }
    assert_eq!(admitted, 1, "0.5 GPU of quota left");

    // The watch now shows the admitted pod (counted in its use): still full, and no double count.
    let admitted_name = (0..10).map(|i| format!("serving/burst-{i}")).collect::<std::collections::HashSet<_>>();
    let view = QuotaView {
        quotas: HashMap::from([("serving".to_owned(), GpuQuota { hard_milli: 4000, used_milli: 4000 })]),
        counted: admitted_name,
    };
    hook.ledger.lock().unwrap().refresh(view, Instant::now());
    let (_, body) = post(&app, "/validate", half_gpu_pod("late").to_string()).await;
    let out: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(out["response"]["allowed"], json!(false));
    assert!(out["response"]["status"]["message"].as_str().unwrap().contains("uses 4.000 of its 4.000"), "{out}");

    let metrics = hook.metrics.encode();
    assert!(metrics.contains(r#"gpuplane_webhook_reviews_total{path="validate",outcome="allowed"} 1"#), "{metrics}");
    assert!(
        metrics.contains(r#"gpuplane_webhook_reviews_total{path="validate",outcome="denied_403"} 10"#),
        "{metrics}"
    );
}

#[test]
fn an_admitted_pod_stops_counting_once_the_watch_shows_it_or_after_its_ttl() {
    let config = WebhookConfig::default();
    let start = Instant::now();
    let mut quotas = ledger(&[("serving", GpuQuota { hard_milli: 1000, used_milli: 0 })]);
    assert!(validate(&config, &mut quotas, &request(&half_gpu_pod("a")), start).allowed);
    assert!(validate(&config, &mut quotas, &request(&half_gpu_pod("b")), start).allowed);
    assert!(!validate(&config, &mut quotas, &request(&half_gpu_pod("c")), start).allowed, "1.0 of 1.0 admitted");
    // b's create failed after admission (another webhook denied it): it never shows; after the TTL it is
    // no longer counted, while a (shown by the watch) is, once.
    let view = QuotaView {
        quotas: HashMap::from([("serving".to_owned(), GpuQuota { hard_milli: 1000, used_milli: 500 })]),
        counted: ["serving/a".to_owned()].into(),
    };
    quotas.refresh(view, start);
    assert!(!validate(&config, &mut quotas, &request(&half_gpu_pod("c")), start).allowed);
    let later = start + gpuplane_kube::webhook::ADMITTED_TTL + Duration::from_secs(1);
    quotas.confirm_fresh(later);
    assert!(validate(&config, &mut quotas, &request(&half_gpu_pod("c")), later).allowed);
    // A dry run is answered but reserves nothing.
    let mut dry = half_gpu_pod("d");
    dry["request"]["dryRun"] = json!(true);
    let mut fresh = ledger(&[("serving", GpuQuota { hard_milli: 500, used_milli: 0 })]);
    assert!(validate(&config, &mut fresh, &request(&dry), start).allowed);
    assert!(validate(&config, &mut fresh, &request(&half_gpu_pod("e")), start).allowed);
}

#[tokio::test]
async fn gpu_pods_are_refused_and_healthz_fails_while_the_quota_view_is_stale() {
    let config = WebhookConfig::default();
    // Never listed: refused, with the reason.
    let mut unsynced = QuotaLedger::default();
    let resp = validate(&config, &mut unsynced, &request(&review()), Instant::now());
    assert!(!resp.allowed);
    let status = resp.status.unwrap();
    assert_eq!(status.code, 503);
    assert!(status.message.contains("have not listed yet"), "{}", status.message);
    // Listed, then the API server stopped answering for longer than the limit.
    let mut quiet = QuotaLedger::new(Duration::from_secs(30));
    let then = Instant::now();
    quiet.refresh(QuotaView::default(), then);
    assert!(validate(&config, &mut quiet, &request(&review()), then + Duration::from_secs(29)).allowed);
    let resp = validate(&config, &mut quiet, &request(&review()), then + Duration::from_secs(31));
    assert!(resp.status.unwrap().message.contains("has not answered for 31 s"));
    // Pods without GPUs are not quota-checked and still admitted.
    let mut cpu = review();
    cpu["request"]["object"]["spec"]["containers"][0]["resources"] = json!({"requests": {"cpu": "1"}});
    cpu["request"]["object"]["metadata"]["annotations"] = json!({});
    assert!(validate(&config, &mut quiet, &request(&cpu), then + Duration::from_secs(31)).allowed);

    let app = router(Arc::new(Webhook::new(config.clone(), QuotaLedger::default())), 1 << 20);
    let resp = app.clone().oneshot(Request::get("/healthz").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let app = router(Arc::new(Webhook::new(config, ledger(&[]))), 1 << 20);
    let resp = app.clone().oneshot(Request::get("/healthz").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}
