//! Reading a live cluster as maturity evidence, against kube-rs's mock service: every resource is
//! listed once, a CRD the cluster does not serve is skipped, a refused list names its kind, and the
//! objects feed the assessment like manifests do.
#![allow(clippy::unwrap_used)]

use axum::http::{Request, Response, StatusCode};
use gpuplane_kube::evidence::{RESOURCES, read_cluster};
use kube::client::Body;
use serde_json::json;
use tower_test::mock;

fn list(kind: &str, items: serde_json::Value) -> Response<Body> {
    let body = json!({"apiVersion": "v1", "kind": format!("{kind}List"), "metadata": {"resourceVersion": "1"}, "items": items});
    Response::builder().body(Body::from(serde_json::to_vec(&body).unwrap())).unwrap()
}

fn status(code: u16, reason: &str) -> Response<Body> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": reason, "code": code, "message": reason});
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap())
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap()
}

#[tokio::test]
async fn every_resource_is_listed_once_and_a_missing_crd_is_skipped() {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        let mut paths = Vec::new();
        for _ in 0..RESOURCES.len() {
            let (req, send) = handle.next_request().await.unwrap();
            let path = req.uri().path().to_owned();
            let response = match path.as_str() {
                "/api/v1/namespaces" => list(
                    "Namespace",
                    json!([{"metadata": {"name": "ml", "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}]),
                ),
                "/apis/apps/v1/deployments" => list(
                    "Deployment",
                    json!([{"metadata": {"name": "llm", "namespace": "ml"}, "spec": {"template": {"spec": {"containers": [
                        {"name": "server", "image": "vllm", "resources": {"limits": {"nvidia.com/gpu": "1"}}}
                    ]}}}}]),
                ),
                "/apis/kyverno.io/v1/clusterpolicies" => status(404, "NotFound"),
                _ => list("Any", json!([])),
            };
            paths.push(path);
            send.send_response(response);
        }
        paths
    });
    let client = kube::Client::new(service, "default");
    let evidence = read_cluster(&client, "cluster").await.unwrap();
    let paths = server.await.unwrap();
    assert_eq!(paths.len(), RESOURCES.len());
    assert!(paths.contains(&"/apis/monitoring.coreos.com/v1/prometheusrules".to_owned()));
    assert_eq!(evidence.skipped, ["ClusterPolicy (kyverno.io/v1)"]);
    assert_eq!(evidence.objects.len(), 2);
    let deployment = evidence.objects.iter().find(|o| o.kind() == "Deployment").unwrap();
    assert_eq!(deployment.value["apiVersion"], "apps/v1");
    assert_eq!(deployment.describe(), "cluster Deployment/ml/llm");
    assert!(deployment.pod_spec().is_some());

    // The objects are evidence like manifests: the GPU namespace has no GPU quota.
    let inputs = gpuplane_assess::Inputs { manifests: evidence.objects, ..Default::default() };
    let assessment = gpuplane_assess::assess(&gpuplane_assess::Model::builtin().unwrap(), &inputs).unwrap();
    let quota = assessment.checks.iter().find(|c| c.id == "gpu.quota").unwrap();
    assert_eq!(quota.status, gpuplane_assess::assess::Status::Fail);
    assert_eq!(quota.missing, ["namespace ml"]);
    let psa = assessment.checks.iter().find(|c| c.id == "governance.pod-security-baseline").unwrap();
    assert_eq!(psa.evidence, ["cluster Namespace/ml"]);
}

#[tokio::test]
async fn a_refused_list_names_the_kind() {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        let (_, send) = handle.next_request().await.unwrap();
        send.send_response(status(403, "Forbidden"));
    });
    let client = kube::Client::new(service, "default");
    let err = read_cluster(&client, "cluster").await.unwrap_err().to_string();
    assert!(err.starts_with("listing Namespace (v1) from the cluster:"), "{err}");
}
