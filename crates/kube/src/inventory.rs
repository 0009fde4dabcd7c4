//! Which models each node's cache agent holds — read from the agents' `GET /models` — and, for a pod
//! that names its model, where that model is seen from every node: the [`Locality`] the placement
//! engine weighs against its fragmentation score.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use gpuplane_core::Quantity;
use gpuplane_place::{Bandwidth, Locality, Tier};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1 as api;
use serde::Deserialize;
use thiserror::Error;

use crate::objects::{ObjectError, pod_key};
use crate::snapshot::Snapshot;

/// The pod annotation naming the model the pod serves, as the cache agent names it (`llama-3-8b@v1`).
pub const MODEL_ANNOTATION: &str = "gpuplane.io/model";
/// The pod annotation giving the model's size as a quantity (`16Gi`); optional when an agent holds it.
pub const MODEL_SIZE_ANNOTATION: &str = "gpuplane.io/model-size";
/// The label the cache agent's pods carry (`deploy/cache/daemonset.yaml`).
pub const AGENT_LABEL: (&str, &str) = ("app.kubernetes.io/name", "gpuplane-cache");
/// The agent container port name whose number is used, when the pod declares it.
pub const AGENT_PORT_NAME: &str = "api";
/// Largest inventory body read from an agent.
const MAX_INVENTORY_BYTES: usize = 8 << 20;

/// The model a pod needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRef {
    /// Its name.
    pub name: String,
    /// Its size in bytes, when the pod says.
    pub bytes: Option<u64>,
}

/// The model a pod names in its annotations, if any.
pub fn model_of(p: &api::Pod) -> Result<Option<ModelRef>, ObjectError> {
    let annotations = p.metadata.annotations.as_ref();
    let get = |k: &str| annotations.and_then(|a| a.get(k)).map(|v| v.trim());
    let error = |field: &str, value: &str, expected: &str| ObjectError {
        kind: "Pod",
        name: pod_key(p),
        field: format!("metadata.annotations[{field}]"),
        value: value.to_owned(),
        expected: expected.to_owned(),
    };
    let Some(name) = get(MODEL_ANNOTATION) else {
        if let Some(size) = get(MODEL_SIZE_ANNOTATION) {
            return Err(error(MODEL_SIZE_ANNOTATION, size, &format!("to come with {MODEL_ANNOTATION}")));
        }
        return Ok(None);
    };
    if name.is_empty() {
        return Err(error(MODEL_ANNOTATION, name, "a model name such as llama-3-8b@v1"));
    }
    let bytes = match get(MODEL_SIZE_ANNOTATION) {
        None => None,
        Some(size) => {
            let q = Quantity::parse_non_negative(size)
                .map_err(|e| error(MODEL_SIZE_ANNOTATION, size, &format!("a byte quantity such as 16Gi ({e})")))?;
            Some(u64::try_from(q.value()).unwrap_or(0))
        }
    };
    Ok(Some(ModelRef { name: name.to_owned(), bytes }))
}

/// Models per node, as the nodes' agents last reported them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventories {
    by_node: HashMap<String, HashMap<String, u64>>,
}

impl Inventories {
    /// Sets what the agent on `node` holds: model name → bytes.
    pub fn set(&mut self, node: &str, models: HashMap<String, u64>) {
        self.by_node.insert(node.to_owned(), models);
    }

    /// Nodes with a known inventory.
    pub fn nodes(&self) -> usize {
        self.by_node.len()
    }

    /// Where `model` is, seen from each node of the snapshot. `None` when no agent holds it: then every
    /// node reads it from the origin and locality cannot tell nodes apart.
    pub fn locality(&self, model: &ModelRef, snapshot: &Snapshot, bandwidth: Bandwidth) -> Option<Locality> {
        let held: Vec<(&str, u64)> = self
            .by_node
            .iter()
            .filter_map(|(node, models)| models.get(&model.name).map(|&b| (node.as_str(), b)))
            .collect();
        let known_bytes = held.iter().map(|&(_, b)| b).max()?;
        let tiers = (0..snapshot.cluster().len())
            .map(|i| {
                let name = snapshot.node_name(i);
                if held.iter().any(|&(n, _)| n == name) { Tier::Local } else { Tier::Peer }
            })
            .collect();
        Some(Locality { model_bytes: model.bytes.unwrap_or(known_bytes), tiers, bandwidth })
    }
}

/// An inventory that could not be read.
#[derive(Debug, Error)]
pub enum InventoryError {
    /// No connection or no answer in time.
    #[error("cache agent {addr}: {message}")]
    Unreachable {
        /// The agent.
        addr: SocketAddr,
        /// What happened.
        message: String,
    },
    /// An answer that is not an inventory.
    #[error("cache agent {addr}: GET /models answered {what}; expected 200 with the agent's inventory JSON")]
    Malformed {
        /// The agent.
        addr: SocketAddr,
        /// What came back.
        what: String,
    },
}

/// The part of the agent's `GET /models` answer placement needs (`crates/cache`, `Inventory`).
#[derive(Debug, Deserialize)]
struct AgentInventory {
    models: Vec<AgentModel>,
}

#[derive(Debug, Deserialize)]
struct AgentModel {
    model: String,
    bytes: u64,
}

/// Parses an agent's `GET /models` body into model name → bytes.
pub fn parse(addr: SocketAddr, body: &[u8]) -> Result<HashMap<String, u64>, InventoryError> {
    let inventory: AgentInventory = serde_json::from_slice(body)
        .map_err(|e| InventoryError::Malformed { addr, what: format!("a body that does not parse ({e})") })?;
    Ok(inventory.models.into_iter().map(|m| (m.model, m.bytes)).collect())
}

/// A cache agent found among the pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    /// The node it runs on.
    pub node: String,
    /// Where its API listens.
    pub addr: SocketAddr,
}

/// The running cache agents among `pods`: labelled [`AGENT_LABEL`], bound, with a pod IP; the port is
/// the container port named [`AGENT_PORT_NAME`] or `default_port`.
pub fn agents<'a>(pods: impl IntoIterator<Item = &'a api::Pod>, default_port: u16) -> Vec<Agent> {
    pods.into_iter()
        .filter(|p| {
            p.metadata.labels.as_ref().and_then(|l| l.get(AGENT_LABEL.0)).map(String::as_str) == Some(AGENT_LABEL.1)
        })
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .filter_map(|p| {
            let node = p.spec.as_ref()?.node_name.clone()?;
            let ip: IpAddr = p.status.as_ref()?.pod_ip.as_deref()?.parse().ok()?;
            let port = p
                .spec
                .as_ref()?
                .containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|port| port.name.as_deref() == Some(AGENT_PORT_NAME))
                .and_then(|port| u16::try_from(port.container_port).ok())
                .unwrap_or(default_port);
            Some(Agent { node, addr: SocketAddr::new(ip, port) })
        })
        .collect()
}

/// Reads one agent's inventory over HTTP, within `timeout`, presenting `token` when given.
pub async fn fetch(
    addr: SocketAddr,
    timeout: Duration,
    token: Option<&str>,
) -> Result<HashMap<String, u64>, InventoryError> {
    let unreachable = |message: String| InventoryError::Unreachable { addr, message };
    let read = async {
        let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| unreachable(e.to_string()))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(connection);
        let mut request = hyper::Request::get("/models")
            .header(hyper::header::HOST, addr.to_string())
            .header(hyper::header::ACCEPT, "application/json");
        if let Some(t) = token {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let request = request.body(Empty::<Bytes>::new()).map_err(|e| unreachable(e.to_string()))?;
        let response = sender.send_request(request).await.map_err(|e| unreachable(e.to_string()))?;
        let status = response.status();
        if status != hyper::StatusCode::OK {
            return Err(InventoryError::Malformed { addr, what: format!("status {status}") });
        }
        let body = Limited::new(response.into_body(), MAX_INVENTORY_BYTES)
            .collect()
            .await
            .map_err(|e| InventoryError::Malformed { addr, what: format!("an unreadable body ({e})") })?
            .to_bytes();
        parse(addr, &body)
    };
    tokio::time::timeout(timeout, read).await.map_err(|_| unreachable(format!("no answer within {timeout:?}")))?
}

/// Reads every agent's inventory concurrently. Agents that fail are left out (their nodes count as not
/// holding anything) and returned with the reason.
pub async fn fetch_all(
    agents: &[Agent],
    timeout: Duration,
    token: Option<&str>,
) -> (Inventories, Vec<(Agent, InventoryError)>) {
    let results =
        futures::future::join_all(agents.iter().map(|a| async move { (a, fetch(a.addr, timeout, token).await) })).await;
    let mut inventories = Inventories::default();
    let mut failed = Vec::new();
    for (agent, result) in results {
        match result {
            Ok(models) => inventories.set(&agent.node, models),
            Err(e) => failed.push((agent.clone(), e)),
        }
    }
    (inventories, failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(annotations: &[(&str, &str)]) -> api::Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "serving",
                "annotations": annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<HashMap<_, _>>()},
        }))
        .expect("pod")
    }

    #[test]
    fn reads_the_model_and_its_size() {
        assert_eq!(model_of(&pod(&[])).expect("ok"), None);
        assert_eq!(
            model_of(&pod(&[(MODEL_ANNOTATION, "llama-3-8b@v1"), (MODEL_SIZE_ANNOTATION, "16Gi")])).expect("ok"),
            Some(ModelRef { name: "llama-3-8b@v1".into(), bytes: Some(16 << 30) })
        );
        let e = model_of(&pod(&[(MODEL_ANNOTATION, "m"), (MODEL_SIZE_ANNOTATION, "lots")])).expect_err("bad size");
        assert!(e.to_string().contains("gpuplane.io/model-size") && e.to_string().contains("serving/p"), "{e}");
        let e = model_of(&pod(&[(MODEL_SIZE_ANNOTATION, "1Gi")])).expect_err("size alone");
        assert!(e.to_string().contains("to come with gpuplane.io/model"), "{e}");
    }

    #[test]
    fn parses_the_agents_inventory_and_names_the_agent_on_garbage() {
        let addr: SocketAddr = "10.0.0.7:8470".parse().expect("addr");
        let body = br#"{"used_bytes": 10, "budget_bytes": 100, "models": [
            {"model": "a@1", "bytes": 6, "files": 2, "last_used": 1, "pinned_by": []}]}"#;
        assert_eq!(parse(addr, body).expect("parses"), HashMap::from([("a@1".to_owned(), 6)]));
        let e = parse(addr, b"<html>").expect_err("not json");
        assert!(e.to_string().contains("10.0.0.7:8470"), "{e}");
    }

    #[test]
    fn finds_running_agents_and_their_port() {
        let agent = |name: &str, phase: &str, ip: Option<&str>, port: Option<i32>| -> api::Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "gpuplane-cache"}},
                "spec": {"nodeName": format!("node-{name}"), "containers": [{"name": "agent",
                    "ports": port.map(|p| vec![serde_json::json!({"name": "api", "containerPort": p})]).unwrap_or_default()}]},
                "status": {"phase": phase, "podIP": ip},
            }))
            .expect("pod")
        };
        let other: api::Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web"}, "spec": {"nodeName": "n", "containers": []},
            "status": {"phase": "Running", "podIP": "10.0.0.9"}}))
        .expect("pod");
        let pods = [
            agent("a", "Running", Some("10.0.0.1"), Some(9000)),
            agent("b", "Running", Some("10.0.0.2"), None),
            agent("c", "Pending", None, None),
            other,
        ];
        assert_eq!(
            agents(&pods, 8470),
            vec![
                Agent { node: "node-a".into(), addr: "10.0.0.1:9000".parse().expect("addr") },
                Agent { node: "node-b".into(), addr: "10.0.0.2:8470".parse().expect("addr") },
            ]
        );
    }
}
