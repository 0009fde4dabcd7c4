//! The kube-rs binder against kube-rs's mock service: the requests it sends are checked as the API
//! server would receive them, and the API server's refusals come back as bind errors.
#![allow(clippy::unwrap_used)] // Helpers too: a failed unwrap is a failed test, with its location.

use axum::http::{Method, Request, Response, StatusCode};
use gpuplane_kube::client::KubeBinder;
use gpuplane_kube::{BindFailure, BindTarget, Binder};
use http_body_util::BodyExt;
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock;

fn target() -> BindTarget {
    BindTarget {
        namespace: "serving".into(),
        name: "chat-0".into(),
        uid: "uid-chat-0".into(),
        node: "gpu-a100-1".into(),
        assignment: "3:250".into(),
        assignment_uuids: "GPU-5f3c0a4e-8a1d-2b7e-9c41-0d2e6f7a8b90:250".into(),
    }
}

async fn body_json(req: Request<Body>) -> (Method, String, Option<String>, Value) {
    let method = req.method().clone();
    let uri = req.uri().to_string();
    let content_type = req.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
    let bytes = req.into_body().collect().await.unwrap().to_bytes();
    (method, uri, content_type, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn binds_with_the_assignment_in_the_binding_itself() {
    // One write: the API server copies the Binding's annotations onto the pod as it sets the node, so no
    // separate PATCH can leave an assignment without a binding, or rewrite a bound pod's.
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        let (req, send) = handle.next_request().await.unwrap();
        let (method, uri, _, body) = body_json(req).await;
        assert_eq!(method, Method::POST);
        assert!(uri.starts_with("/api/v1/namespaces/serving/pods/chat-0/binding"), "{uri}");
        assert_eq!(body["kind"], "Binding");
        assert_eq!(body["metadata"]["uid"], "uid-chat-0");
        assert_eq!(
            body["metadata"]["annotations"],
            json!({"gpuplane.io/gpu-assignment": "3:250",
                   "gpuplane.io/gpu-assignment-uuids": "GPU-5f3c0a4e-8a1d-2b7e-9c41-0d2e6f7a8b90:250"})
        );
        assert_eq!(body["target"], json!({"apiVersion": "v1", "kind": "Node", "name": "gpu-a100-1"}));
        let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201});
        send.send_response(
            Response::builder()
                .status(StatusCode::CREATED)
                .body(Body::from(serde_json::to_vec(&status).unwrap()))
                .unwrap(),
        );
        assert!(handle.next_request().await.is_none(), "nothing after the binding");
    });
    let client = kube::Client::new(service, "default");
    KubeBinder::new(client, "gpuplane").bind(target()).await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn a_conflict_from_the_api_server_is_a_bind_error() {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        let (_, send) = handle.next_request().await.unwrap();
        let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "pod chat-0 is already assigned to node \"gpu-a100-2\"", "reason": "Conflict", "code": 409});
        send.send_response(
            Response::builder()
                .status(StatusCode::CONFLICT)
                .body(Body::from(serde_json::to_vec(&status).unwrap()))
                .unwrap(),
        );
    });
    let client = kube::Client::new(service, "default");
    let err = KubeBinder::new(client, "gpuplane").bind(target()).await.unwrap_err();
    assert!(matches!(err, BindFailure::Conflict(_)), "{err:?}");
    let err = err.to_string();
    assert!(err.contains("Conflict (409)") && err.contains("already assigned"), "{err}");
    server.await.unwrap();
}
