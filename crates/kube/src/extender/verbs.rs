//! The verbs: each request body read once into the few fields the extender takes (the pod's identity, the
//! candidate nodes, whole Nodes as raw JSON slices), the pod resolved as gpuplane's watch has it, and the
//! answer in kube-scheduler's wire format.

use super::*;

/// A pod in a request body, of which only the identity is read (serde skips the rest without building it).
#[derive(Debug, Default, Deserialize)]
struct PodIn {
    #[serde(default)]
    metadata: Option<MetaIn>,
}

/// `metadata` of a pod or node in a request body: the identity fields only.
#[derive(Debug, Default, Deserialize)]
struct MetaIn {
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    uid: Option<String>,
}

impl PodIn {
    fn identity(self) -> PodIdentity {
        let meta = self.metadata.unwrap_or_default();
        PodIdentity {
            namespace: meta.namespace.unwrap_or_default(),
            name: meta.name.unwrap_or_default(),
            uid: meta.uid.unwrap_or_default(),
        }
    }
}

/// `ExtenderArgs` as the filter and prioritize handlers read it: the pod's identity, and the candidates as
/// names or as the raw JSON of each whole Node, borrowed from the body (no object or `Value` tree is built).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ArgsIn<'a> {
    #[serde(default)]
    pod: Option<PodIn>,
    #[serde(default, borrow)]
    nodes: Option<NodesIn<'a>>,
    #[serde(default)]
    node_names: Option<Vec<String>>,
}

/// A `v1.NodeList` in a request: each item kept as its raw JSON.
#[derive(Deserialize)]
struct NodesIn<'a> {
    #[serde(default, borrow)]
    items: Option<Vec<&'a RawValue>>,
}

/// A Node in a request, of which only the name is read.
#[derive(Deserialize)]
struct NodeIn {
    #[serde(default)]
    metadata: Option<MetaIn>,
}

/// `ExtenderPreemptionArgs` as the preempt handler reads it: identities only, of the preemptor and the victims.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PreemptionArgsIn {
    #[serde(default)]
    pod: Option<PodIn>,
    #[serde(default)]
    node_name_to_victims: Option<BTreeMap<String, VictimsIn>>,
    #[serde(default)]
    node_name_to_meta_victims: Option<BTreeMap<String, MetaVictims>>,
}

/// `Victims` as the preempt handler reads it.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct VictimsIn {
    #[serde(default)]
    pods: Vec<PodIn>,
    #[serde(default, rename = "NumPDBViolations")]
    num_pdb_violations: i64,
}

/// The `ExtenderFilterResult` the filter handler writes: [`ExtenderFilterResult`] with the passing Nodes as
/// the raw JSON slices of the request.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct FilterReply<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    nodes: Option<RawNodeList<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    node_names: Option<Vec<&'a str>>,
    failed_nodes: BTreeMap<&'a str, String>,
    failed_and_unresolvable_nodes: BTreeMap<&'a str, String>,
    error: &'a str,
}

/// The node list of a [`FilterReply`].
#[derive(Serialize)]
struct RawNodeList<'a> {
    items: Vec<&'a RawValue>,
}

impl FilterReply<'_> {
    /// The JSON response, written into a buffer sized for it up front (no doubling of a large body).
    fn into_response(self) -> Response {
        let raw: usize = self.nodes.as_ref().map_or(0, |n| n.items.iter().map(|i| i.get().len() + 1).sum());
        let mut buf = Vec::with_capacity(raw + 256);
        match serde_json::to_writer(&mut buf, &self) {
            Ok(()) => ([(axum::http::header::CONTENT_TYPE, "application/json")], buf).into_response(),
            Err(e) => {
                (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot write ExtenderFilterResult: {e}\n")).into_response()
            }
        }
    }
}

/// The pod and the candidates of a filter or prioritize call, borrowed from the request body.
struct Call<'a> {
    pod: PodIdentity,
    names: Vec<String>,
    /// The Nodes' raw JSON, when the request carried whole Nodes (in the order of `names`).
    nodes: Option<Vec<&'a RawValue>>,
}

impl<'a> Call<'a> {
    /// The 200 of a filter that fails every candidate as unresolvable, with `reason`: what kube-scheduler
    /// reads for a pod that cannot or may not be placed anywhere.
    fn refuse_all(&'a self, reason: &str) -> Response {
        FilterReply {
            failed_and_unresolvable_nodes: self
                .names
                .iter()
                .map(|n| (n.as_str(), format!("gpuplane: {reason}")))
                .collect(),
            node_names: self.nodes.is_none().then(Vec::new),
            nodes: self.nodes.as_ref().map(|_| RawNodeList { items: Vec::new() }),
            failed_nodes: BTreeMap::new(),
            error: "",
        }
        .into_response()
    }

    /// The 200 of a prioritize for a refused pod: every candidate scores 0.
    fn zeros(&self) -> Response {
        let zeros: Vec<HostPriority> =
            self.names.iter().map(|host| HostPriority { host: host.clone(), score: 0 }).collect();
        axum::Json(zeros).into_response()
    }
}

/// A 400: the body is not a message kube-scheduler sends.
struct BadRequest(String);

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        (StatusCode::BAD_REQUEST, self.0).into_response()
    }
}

fn invalid(what: &str, e: impl std::fmt::Display) -> BadRequest {
    BadRequest(format!("invalid {what}: {e}\n"))
}

/// Parses an `ExtenderArgs` body once: the pod's identity and the candidates, nothing else.
/// The most candidate nodes a call may name: four times Kubernetes' largest tested cluster (5,000 nodes).
/// An answer names every candidate, so this bounds the answer as the body limit bounds the request.
pub(super) const MAX_CANDIDATES: usize = 20_000;

fn read_call(body: &[u8]) -> Result<Call<'_>, BadRequest> {
    let args: ArgsIn<'_> = serde_json::from_slice(body).map_err(|e| invalid("ExtenderArgs JSON", e))?;
    let pod = args.pod.ok_or_else(|| invalid("ExtenderArgs", "no Pod"))?.identity();
    let count = args
        .node_names
        .as_ref()
        .map(Vec::len)
        .or_else(|| args.nodes.as_ref().map(|n| n.items.as_ref().map_or(0, Vec::len)));
    if let Some(count) = count.filter(|&c| c > MAX_CANDIDATES) {
        return Err(invalid("ExtenderArgs", format!("{count} candidate nodes; at most {MAX_CANDIDATES}")));
    }
    match (args.node_names, args.nodes) {
        (Some(names), _) => Ok(Call { pod, names, nodes: None }),
        // Without nodeCacheCapable the passing nodes go back as they came: keep their JSON as sent.
        (None, Some(list)) => {
            let items = list.items.unwrap_or_default();
            let mut names = Vec::with_capacity(items.len());
            for (i, raw) in items.iter().enumerate() {
                let node: NodeIn = serde_json::from_str(raw.get())
                    .map_err(|e| invalid(&format!("ExtenderArgs Nodes.items[{i}]"), e))?;
                names.push(node.metadata.and_then(|m| m.name).unwrap_or_default());
            }
            Ok(Call { pod, names, nodes: Some(items) })
        }
        (None, None) => Err(invalid("ExtenderArgs", "neither Nodes nor NodeNames")),
    }
}

/// The pod a filter or prioritize call is about, as gpuplane has it and as the engine reads it; the
/// response refusing it otherwise (`zeros` for prioritize).
async fn evaluated_pod<B: Binder>(
    ext: &Extender<B>,
    call: &Call<'_>,
    zeros: bool,
) -> Result<gpuplane_core::Pod, Response> {
    let refuse = |reason: String| if zeros { call.zeros() } else { call.refuse_all(&reason) };
    let pod = ext.resolve(&call.pod).await.map_err(|r| {
        tracing::debug!(pod = %call.pod.key(), uid = %call.pod.uid, reason = %r, "Pod refused.");
        refuse(r.to_string())
    })?;
    // A pod that asks for something no node has (1500 milli of one GPU, say) fails every node.
    objects::pod(&pod).map_err(|e| refuse(e.to_string()))
}

/// Scores the candidates; `None` for nodes the snapshot lacks.
fn evaluate(inner: &mut Inner, pod: &gpuplane_core::Pod, names: &[String]) -> Vec<Option<Result<i64, Rejection>>> {
    let request = inner.snapshot.cluster().request(pod);
    let ids: Vec<Option<NodeId>> = names.iter().map(|n| inner.snapshot.node_id(n)).collect();
    let known: Vec<NodeId> = ids.iter().flatten().copied().collect();
    let Inner { snapshot, engine, .. } = inner;
    let mut scored = engine.evaluate(snapshot.cluster(), &request, &known).into_iter();
    ids.iter().map(|id| id.and_then(|_| scored.next())).collect()
}

fn reason(r: Rejection) -> (&'static str, bool) {
    // The second value: can evicting pods (preemption) help?
    match r {
        Rejection::GpuModel => ("gpuplane: GPU model not accepted, or no GPU on the node", false),
        Rejection::NodeSelector => ("gpuplane: node selector does not match", false),
        Rejection::Taint => ("gpuplane: untolerated taint", false),
        Rejection::Cpu => ("gpuplane: not enough CPU", true),
        Rejection::Memory => ("gpuplane: not enough memory", true),
        Rejection::Gpu => ("gpuplane: not enough free GPU milli on enough GPUs", true),
    }
}

/// Runs a verb and counts it, with its status and time, in the extender's metrics.
async fn observed<B: Binder>(
    ext: &Extender<B>,
    verb: &'static str,
    answer: impl Future<Output = Response>,
) -> Response {
    let started = Instant::now();
    let response = answer.await;
    ext.metrics.observe_request(verb, response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

pub(super) async fn filter<B: Binder>(State(ext): State<Arc<Extender<B>>>, body: Bytes) -> Response {
    observed(&ext, "filter", filter_inner(&ext, body)).await
}

async fn filter_inner<B: Binder>(ext: &Arc<Extender<B>>, body: Bytes) -> Response {
    let call = match read_call(&body) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let pod = match evaluated_pod(ext, &call, false).await {
        Ok(pod) => pod,
        Err(response) => return response,
    };
    let verdicts = evaluate(&mut ext.lock(), &pod, &call.names);
    let mut reply = FilterReply {
        nodes: None,
        node_names: None,
        failed_nodes: BTreeMap::new(),
        failed_and_unresolvable_nodes: BTreeMap::new(),
        error: "",
    };
    let mut passed = Vec::new();
    for (i, (name, verdict)) in call.names.iter().zip(verdicts).enumerate() {
        match verdict {
            Some(Ok(_)) => passed.push(i),
            Some(Err(r)) => {
                let (text, resolvable) = reason(r);
                let map = if resolvable { &mut reply.failed_nodes } else { &mut reply.failed_and_unresolvable_nodes };
                map.insert(name.as_str(), text.to_owned());
            }
            None => {
                reply
                    .failed_and_unresolvable_nodes
                    .insert(name.as_str(), "gpuplane: node unknown to gpuplane".to_owned());
            }
        }
    }
    match &call.nodes {
        Some(items) => {
            reply.nodes = Some(RawNodeList { items: passed.iter().filter_map(|&i| items.get(i).copied()).collect() })
        }
        None => reply.node_names = Some(passed.iter().map(|&i| call.names[i].as_str()).collect()),
    }
    reply.into_response()
}

pub(super) async fn prioritize<B: Binder>(State(ext): State<Arc<Extender<B>>>, body: Bytes) -> Response {
    observed(&ext, "prioritize", prioritize_inner(&ext, body)).await
}

async fn prioritize_inner<B: Binder>(ext: &Arc<Extender<B>>, body: Bytes) -> Response {
    let call = match read_call(&body) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    // A refused pod has had every node failed by filter; its priorities are all 0.
    let pod = match evaluated_pod(ext, &call, true).await {
        Ok(pod) => pod,
        Err(response) => return response,
    };
    let verdicts = evaluate(&mut ext.lock(), &pod, &call.names);
    let list: Vec<HostPriority> = call
        .names
        .iter()
        .zip(verdicts)
        .map(|(name, v)| HostPriority {
            host: name.clone(),
            score: match v {
                Some(Ok(score)) => score.clamp(0, 100) * MAX_EXTENDER_PRIORITY / 100,
                _ => 0,
            },
        })
        .collect();
    axum::Json(list).into_response()
}

pub(super) async fn bind<B: Binder>(State(ext): State<Arc<Extender<B>>>, body: Bytes) -> Response {
    observed(&ext, "bind", bind_inner(&ext, body)).await
}

async fn bind_inner<B: Binder>(ext: &Arc<Extender<B>>, body: Bytes) -> Response {
    let args: ExtenderBindingArgs = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) => return invalid("ExtenderBindingArgs JSON", e).into_response(),
    };
    let sent = PodIdentity { namespace: args.pod_namespace, name: args.pod_name, uid: args.pod_uid };
    let key = sent.key();
    // kube-scheduler reads `Error` only from a 200: every refusal is a 200 with the reason.
    let refuse = |error: String| {
        ext.metrics.observe_bind("conflict");
        axum::Json(ExtenderBindingResult { error }).into_response()
    };
    // Without the UID the Binding has no precondition: a pod deleted and re-created under the same name
    // would be bound in its place. kube-scheduler always sends it.
    if sent.uid.is_empty() {
        return refuse(format!("pod {key}: PodUID is required"));
    }
    // The pod bound is the one gpuplane's watch (or the API server) has under that UID, of a served
    // scheduler; its tolerations, selector and requests are checked against the node here again.
    let pod = match ext.resolve(&sent).await {
        Ok(pod) => pod,
        Err(r) => {
            tracing::info!(pod = %key, uid = %sent.uid, node = %args.node, reason = %r, "Bind refused.");
            return refuse(r.to_string());
        }
    };
    let domain = match objects::pod(&pod) {
        Ok(d) => d,
        Err(e) => return refuse(format!("pod {key} cannot be placed: {e}")),
    };
    // Choose the GPUs and reserve them in the snapshot before talking to the API server, so a
    // concurrent decision cannot take the same milli.
    let target = {
        let mut inner = ext.lock();
        let request = inner.snapshot.cluster().request(&domain);
        let Some(node) = inner.snapshot.node_id(&args.node) else {
            return refuse(format!("node {} is unknown to gpuplane", args.node));
        };
        let Inner { snapshot, engine, .. } = &mut *inner;
        let placement = match engine.place_on(snapshot.cluster(), &request, node) {
            Ok(p) => p,
            Err(r) => {
                return refuse(format!("pod {key} no longer fits node {}: {}", args.node, reason(r).0));
            }
        };
        let assignment = assignment::format(&placement.gpus);
        let assignment_uuids = assignment::format_uuids(&placement.gpus, snapshot.gpu_uuids(node));
        let in_flight = InFlight {
            uid: sent.uid.clone(),
            node: args.node.clone(),
            request: request.clone(),
            gpus: placement.gpus.clone(),
            since: Instant::now(),
        };
        if let Err(e) = snapshot.assume(&key, &sent.uid, request, placement) {
            return refuse(format!("pod {key}: {e}"));
        }
        inner.in_flight.insert(key.clone(), in_flight);
        BindTarget {
            namespace: sent.namespace,
            name: sent.name,
            uid: sent.uid,
            node: args.node,
            assignment,
            assignment_uuids,
        }
    };
    match ext.binder.bind(target).await {
        Ok(()) => {
            ext.metrics.observe_bind("ok");
            axum::Json(ExtenderBindingResult::default()).into_response()
        }
        Err(e) => {
            tracing::warn!(pod = %key, error = %e, "Binding failed; GPU reservation released.");
            ext.metrics.observe_bind("error");
            // The reservation is undone so the GPUs are free again.
            let mut inner = ext.lock();
            inner.in_flight.remove(&key);
            let _ = inner.snapshot.forget(&key);
            axum::Json(ExtenderBindingResult { error: format!("binding {key} failed: {e}") }).into_response()
        }
    }
}

/// Checks kube-scheduler's proposed victims against GPU-level fit. kube-scheduler does not see GPU shares
/// (they are annotations), so its victims may not free the right GPU milli: on each node gpuplane keeps the
/// proposal if the preemptor then fits, adds lower-priority pods of that node (lowest priority first, most
/// GPU milli first) until it does, or drops the node. Victims gpuplane adds are chosen without
/// PodDisruptionBudget knowledge; the count kube-scheduler sent is passed back unchanged.
pub(super) async fn metrics<B: Binder>(State(ext): State<Arc<Extender<B>>>) -> Response {
    ([(axum::http::header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], ext.metrics_text()).into_response()
}

pub(super) async fn preempt<B: Binder>(State(ext): State<Arc<Extender<B>>>, body: Bytes) -> Response {
    observed(&ext, "preempt", preempt_inner(&ext, body)).await
}

async fn preempt_inner<B: Binder>(ext: &Arc<Extender<B>>, body: Bytes) -> Response {
    let args: PreemptionArgsIn = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) => return invalid("ExtenderPreemptionArgs JSON", e).into_response(),
    };
    let Some(sent) = args.pod.map(PodIn::identity) else {
        return invalid("ExtenderPreemptionArgs", "no Pod").into_response();
    };
    // A refused pod gets no candidates (the result has no field for a reason: it is logged).
    let pod = match ext.resolve(&sent).await {
        Ok(pod) => pod,
        Err(r) => {
            tracing::info!(pod = %sent.key(), uid = %sent.uid, reason = %r, "Preempt refused.");
            return axum::Json(ExtenderPreemptionResult::default()).into_response();
        }
    };
    let domain = match objects::pod(&pod) {
        Ok(d) => d,
        // No eviction makes room for a pod no node can take: no candidates, in a 200 as the protocol wants.
        Err(e) => {
            tracing::debug!(error = %e, "Preempt for a pod that cannot be placed anywhere.");
            return axum::Json(ExtenderPreemptionResult::default()).into_response();
        }
    };
    let mut proposals: BTreeMap<String, (Vec<String>, i64)> = BTreeMap::new();
    for (node, v) in args.node_name_to_meta_victims.unwrap_or_default() {
        proposals.insert(node, (v.pods.into_iter().map(|p| p.uid).collect(), v.num_pdb_violations));
    }
    for (node, v) in args.node_name_to_victims.unwrap_or_default() {
        let uids = v.pods.into_iter().map(|p| p.identity().uid).filter(|u| !u.is_empty()).collect();
        proposals.insert(node, (uids, v.num_pdb_violations));
    }
    let inner = ext.lock();
    let snapshot = &inner.snapshot;
    let request = snapshot.cluster().request(&domain);
    let mut result = ExtenderPreemptionResult::default();
    for (name, (uids, pdb)) in proposals {
        let Some(node) = snapshot.node_id(&name) else { continue };
        if let Some(victims) = victims_that_fit(snapshot, node, &request, &uids) {
            let pods = victims.into_iter().map(|uid| MetaPod { uid }).collect();
            result.node_name_to_meta_victims.insert(name, MetaVictims { pods, num_pdb_violations: pdb });
        }
    }
    axum::Json(result).into_response()
}

/// The victims on `node` after which `request` fits: the proposal, extended if needed; `None` if no set of
/// lower-priority pods makes room.
fn victims_that_fit(
    snapshot: &Snapshot,
    node: NodeId,
    request: &PodRequest,
    proposed: &[String],
) -> Option<Vec<String>> {
    let info = &snapshot.cluster().node_info()[node];
    let mut state = snapshot.cluster().nodes()[node].clone();
    let free = crate::scheduler::preempt::release_into;
    let mut victims = Vec::new();
    for uid in proposed {
        match snapshot.bound_by_uid(uid) {
            Some(pod) if pod.placement.node == node => {
                free(&mut state, pod);
                victims.push(uid.clone());
            }
            // A victim gpuplane does not hold (CPU-only pods bound before it started, say) frees nothing it can count.
            _ => victims.push(uid.clone()),
        }
    }
    if gpuplane_place::filter::check(info, &state, request).is_ok() {
        return Some(victims);
    }
    let mut extra: Vec<&crate::BoundPod> = snapshot
        .pods_on(node)
        .filter(|p| p.request.priority < request.priority && !p.uid.is_empty() && !victims.contains(&p.uid))
        .collect();
    extra.sort_by(|a, b| {
        a.request.priority.cmp(&b.request.priority).then(b.request.gpu.total_milli().cmp(&a.request.gpu.total_milli()))
    });
    for pod in extra {
        free(&mut state, pod);
        victims.push(pod.uid.clone());
        if gpuplane_place::filter::check(info, &state, request).is_ok() {
            return Some(victims);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_filter_reply_is_an_extender_filter_result() {
        let raw = RawValue::from_string(r#"{"metadata":{"name":"n"}}"#.to_owned()).unwrap();
        let reply = FilterReply {
            nodes: Some(RawNodeList { items: vec![&raw] }),
            node_names: None,
            failed_nodes: [("a", "cpu".to_owned())].into(),
            failed_and_unresolvable_nodes: [("b", "taint".to_owned())].into(),
            error: "",
        };
        let read: ExtenderFilterResult = serde_json::from_slice(&serde_json::to_vec(&reply).unwrap()).unwrap();
        assert_eq!(read.nodes.unwrap().items, vec![json!({"metadata": {"name": "n"}})]);
        assert_eq!(
            (read.failed_nodes["a"].as_str(), read.failed_and_unresolvable_nodes["b"].as_str()),
            ("cpu", "taint")
        );
        assert_eq!(read.node_names, None);
    }
}
