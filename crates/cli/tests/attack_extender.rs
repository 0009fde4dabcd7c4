//! An attack on `gpuplane extender` against a real control plane: a caller holding a client certificate
//! from the trusted CA sends `/filter` a fabricated pod — a real pod's UID, but tolerations for everything
//! and kube-scheduler's name — then `/bind`s it to a tainted GPU node. The extender must evaluate and bind
//! the pod as the API server has it (a pod of another scheduler, or one that tolerates no taint), leave it
//! unbound and say why; and a certificate the trusted CA signed for another name (a kubelet's) must not
//! get a handshake at all. Every verdict is read back from the API server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // A test: a failure should stop it loudly.

// The shared harness: first, as every attack test has it (inner doc and attributes must precede items).
mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use support::*;

#[path = "../../kube/tests/support/test_ca.rs"]
mod test_ca;

/// An HTTPS client that trusts the extender's serving CA and presents `cert`/`key`.
fn https_client(cert: &Path, key: &Path) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(tls_fixture("ca.pem")).unwrap()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_file(cert).unwrap()],
            PrivateKeyDer::from_pem_file(key).unwrap(),
        )
        .unwrap();
    reqwest::Client::builder().use_preconfigured_tls(config).timeout(Duration::from_secs(10)).build().unwrap()
}

/// POSTs `body` to the extender's `verb`; the JSON answer (the status must be 200: kube-scheduler reads
/// nothing else).
async fn post(client: &reqwest::Client, port: u16, verb: &str, body: &Value) -> Value {
    let request = client.post(format!("https://127.0.0.1:{port}/{verb}")).header("content-type", "application/json");
    let response = request.body(body.to_string()).send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(status, 200, "/{verb}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("/{verb} answered {text:?}: {e}"))
}

/// A pending CPU pod of `scheduler` that tolerates nothing (and passes Pod Security "restricted").
fn cpu_pod(name: &str, scheduler: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "attack"},
        "spec": {"schedulerName": scheduler, "securityContext": {"runAsNonRoot": true, "runAsUser": 1000,
                 "seccompProfile": {"type": "RuntimeDefault"}},
                 "containers": [{"name": "main", "image": "registry.invalid/app:1",
                                 "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                                 "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]}
    }))
    .unwrap()
}

/// The pod as the attacker sends it: `real`'s identity, kube-scheduler's name, and tolerations for every
/// taint.
fn fabricated(real: &Pod) -> Value {
    json!({
        "metadata": {"name": real.metadata.name, "namespace": "attack", "uid": real.metadata.uid},
        "spec": {"schedulerName": "default-scheduler", "tolerations": [{"operator": "Exists"}],
                 "containers": [{"name": "main", "resources": {"requests": {"cpu": "100m"}}}]}
    })
}

/// Runs the attacker's filter-then-bind of `real` onto gpu-1; the filter's and the bind's answers.
async fn filter_then_bind(client: &reqwest::Client, port: u16, real: &Pod) -> (Value, Value) {
    let filter = post(client, port, "filter", &json!({"Pod": fabricated(real), "NodeNames": ["gpu-1"]})).await;
    let bind =
        json!({"PodName": real.metadata.name, "PodNamespace": "attack", "PodUID": real.metadata.uid, "Node": "gpu-1"});
    (filter, post(client, port, "bind", &bind).await)
}

/// Asserts the filter failed gpu-1 as unresolvable and the bind was refused, both saying `why`.
fn refused(filter: &Value, bind: &Value, why: &str) {
    assert_eq!(filter["NodeNames"], json!([]), "gpu-1 passed the filter: {filter}");
    let reason = filter["FailedAndUnresolvableNodes"]["gpu-1"].as_str().unwrap_or_default();
    assert!(reason.contains(why), "filter reason {reason:?} does not say {why:?}");
    let error = bind["Error"].as_str().unwrap_or_default();
    assert!(error.contains(why), "bind error {error:?} does not say {why:?}");
}

#[test]
fn attack_extender_binds_only_its_schedulers_pods_as_the_api_server_has_them() {
    let plane = ControlPlane::start();
    runtime().block_on(async {
        let client = plane.client().await;
        kwok_gpu_nodes(&client, &["gpu-1"], 1, true).await;
        restricted_namespace(&client, "attack").await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), "attack");
        // Another scheduler's CPU pod, in the watch before the extender starts.
        let batch = pods.create(&PostParams::default(), &cpu_pod("batch", "other")).await.unwrap();

        // The client CA file trusts the fixture client CA and a cluster CA that also signs kubelets.
        let work = tempfile::tempdir().unwrap();
        let cluster = test_ca::TestCa::new("attack test cluster CA");
        let bundle = work.path().join("client-cas.pem");
        let pems = [std::fs::read(tls_fixture("client-ca.pem")).unwrap(), std::fs::read(cluster.ca()).unwrap()];
        std::fs::write(&bundle, pems.concat()).unwrap();
        let port = free_port();
        let log = work.path().join("extender.log");
        let mut command = gpuplane(&plane, &log);
        command
            .args(["extender", "--policy", "fgd", "--listen", &format!("127.0.0.1:{port}"), "--refresh-ms", "200"])
            .arg("--tls-cert")
            .arg(tls_fixture("cert-1.pem"))
            .arg("--tls-key")
            .arg(tls_fixture("key-1.pem"))
            .arg("--client-ca")
            .arg(&bundle)
            .args(["--client-identity", "kube-scheduler"]);
        let _extender = Running::spawn(command);
        let scheduler = https_client(&tls_fixture("client-cert.pem"), &tls_fixture("client-key.pem"));
        wait_for("the extender to serve kube-scheduler's certificate", Duration::from_secs(120), || async {
            let url = format!("https://127.0.0.1:{port}/healthz");
            scheduler.get(&url).send().await.is_ok_and(|r| r.status() == 200)
        })
        .await;

        // 1. Another scheduler's pod, presented as kube-scheduler's and tolerating everything.
        let (filter, bind) = filter_then_bind(&scheduler, port, &batch).await;
        refused(&filter, &bind, "spec.schedulerName \"other\"");

        // 2. kube-scheduler's own pod that tolerates no taint, created after the extender started (read
        //    through the watch or from the API server), presented as tolerating everything.
        let web = pods.create(&PostParams::default(), &cpu_pod("web", "default-scheduler")).await.unwrap();
        let (filter, bind) = filter_then_bind(&scheduler, port, &web).await;
        refused(&filter, &bind, "untolerated taint");

        // 3. A UID no pod has, under a real pod's name.
        let mut ghost = web.clone();
        ghost.metadata.uid = Some("00000000-0000-0000-0000-000000000000".into());
        let (filter, bind) = filter_then_bind(&scheduler, port, &ghost).await;
        refused(&filter, &bind, "has uid");

        for name in ["batch", "web"] {
            let pod = pods.get(name).await.unwrap();
            let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
            assert_eq!(node, None, "attack/{name} was bound by the attacker");
            let annotations = pod.metadata.annotations.unwrap_or_default();
            assert!(!annotations.contains_key("gpuplane.io/gpu-assignment"), "attack/{name}: {annotations:?}");
        }

        // 4. A certificate the trusted cluster CA signed for a kubelet: no handshake, no answer.
        let (cert, key) = cluster.client("kubelet", "/CN=system:node:gpu-1/O=system:nodes", &[]);
        let kubelet = https_client(&cert, &key);
        let stolen = kubelet
            .post(format!("https://127.0.0.1:{port}/bind"))
            .body(json!({"PodName": "batch", "PodNamespace": "attack", "PodUID": batch.metadata.uid, "Node": "gpu-1"}).to_string())
            .send()
            .await;
        assert!(stolen.is_err(), "a kubelet's certificate was served: {stolen:?}");
        let error = format!("{:?}", stolen.unwrap_err());
        assert!(error.contains("AccessDenied"), "the handshake did not end in access_denied: {error}");
        // The same CA's certificate for the pinned name is served: the name, not the CA, was refused.
        let (cert, key) = cluster.client("scheduler", "/CN=kube-scheduler", &[]);
        let ok = https_client(&cert, &key).get(format!("https://127.0.0.1:{port}/healthz")).send().await.unwrap();
        assert_eq!(ok.status(), 200);
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("names none of the accepted client identities"), "extender log:\n{text}");
        assert!(pods.get("batch").await.unwrap().spec.unwrap().node_name.is_none());
        eprintln!("attack: fabricated pods refused (other scheduler, untolerated taint, unknown UID); kubelet certificate refused in the handshake");
    });
}
