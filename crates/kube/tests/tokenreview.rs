//! The TokenReview client against an API server stand-in that answers `tokenreviews` as the real one
//! does: the review carries the token and our audience, a pod-bound token comes back with its pod and
//! node, answers are cached (one API call for repeated requests), and a refusal or a wrong audience
//! is no user.
#![allow(clippy::unwrap_used)] // Helpers too: a failed unwrap is a failed test, with its location.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Json;
use axum::extract::State;
use gpuplane_kube::tokenreview::TokenReviewer;
use serde_json::{Value, json};

async fn review(State(calls): State<Arc<AtomicUsize>>, Json(body): Json<Value>) -> Json<Value> {
    calls.fetch_add(1, Ordering::Relaxed);
    assert_eq!(body["kind"], "TokenReview");
    let token = body["spec"]["token"].as_str().unwrap_or_default();
    let audiences = body["spec"]["audiences"].clone();
    let status = match token {
        "pod-token" => json!({"authenticated": true, "audiences": audiences, "user": {
            "username": "system:serviceaccount:serving:chat",
            "groups": ["system:serviceaccounts"],
            "extra": {"authentication.kubernetes.io/pod-name": ["chat-0"], "authentication.kubernetes.io/node-name": ["gpu-7"]}}}),
        // Valid, but for the API server's own audience only.
        "api-token" => json!({"authenticated": true, "audiences": ["https://kubernetes.default.svc"],
            "user": {"username": "system:serviceaccount:serving:chat"}}),
        _ => json!({"authenticated": false, "error": "invalid bearer token"}),
    };
    let mut answer = body.clone();
    answer["status"] = status;
    Json(answer)
}

#[tokio::test]
async fn reviews_tokens_for_our_audience_and_caches_the_answers() {
    let calls = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new()
        .route("/apis/authentication.k8s.io/v1/tokenreviews", axum::routing::post(review))
        .with_state(Arc::clone(&calls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let reviewer = TokenReviewer::new(client, vec!["gpuplane-cache".into()]);

    let user = reviewer.review("pod-token").await.unwrap().unwrap();
    assert_eq!(user.username, "system:serviceaccount:serving:chat");
    assert_eq!((user.pod().as_deref(), user.node().as_deref()), (Some("serving/chat-0"), Some("gpu-7")));
    for _ in 0..5 {
        assert!(reviewer.review("pod-token").await.unwrap().is_some());
    }
    assert_eq!(calls.load(Ordering::Relaxed), 1, "answers are cached");
    assert!(reviewer.review("made-up").await.unwrap().is_none());
    assert!(reviewer.review("api-token").await.unwrap().is_none(), "a token for another audience");
    assert_eq!(calls.load(Ordering::Relaxed), 3);

    // The API server unreachable: an error, never a user.
    let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let config = kube::Config::new(format!("http://{gone}").parse().unwrap());
    let offline = TokenReviewer::new(kube::Client::try_from(config).unwrap(), vec!["gpuplane-cache".into()]);
    assert!(offline.review("pod-token").await.is_err());
}
