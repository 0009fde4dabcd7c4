//! Running the extender and the admission webhook against a live cluster: reflector stores watch the
//! objects they need (the kube-rs reflector pattern), their state is rebuilt when the objects change,
//! and the HTTP APIs are served until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use gpuplane_place::{Engine, EngineConfig, EngineError, Policy, TargetWorkload, TieBreak, WorkloadError};
use k8s_openapi::api::core::v1 as api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use thiserror::Error;

use crate::client::KubeBinder;
use crate::objects;
use crate::{Extender, ExtenderConfig, Snapshot, router};

/// Settings of `gpuplane extender`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Placement policy.
    pub policy: Policy,
    /// How often the snapshot is rebuilt when the watch caches changed.
    pub refresh_every: Duration,
    /// How long a binding gpuplane made is kept while the watch caches do not show it.
    pub in_flight_ttl: Duration,
    /// Connections, header and lifetime limits of the HTTP server.
    pub limits: crate::server::Limits,
    /// HTTPS (and client certificates, if it asks for them); `None` serves plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The extender's body limit and the schedulers whose pods it serves.
    pub extender: ExtenderConfig,
}

/// Why the extender stopped.
#[derive(Debug, Error)]
pub enum ServeError {
    /// No usable kubeconfig or in-cluster service account.
    #[error("cannot reach the Kubernetes API (no usable kubeconfig or in-cluster service account)")]
    Client(#[source] kube::Error),
    /// A watch cache never became ready.
    #[error("the {0} watch stopped before its first list completed")]
    NotReady(&'static str),
    /// The cluster state could not be turned into a snapshot.
    #[error(transparent)]
    Cluster(#[from] gpuplane_place::ClusterError),
    /// The engine could not be built.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The target workload could not be built.
    #[error(transparent)]
    Workload(#[from] WorkloadError),
    /// The TLS certificate or key cannot be used.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The scheduler lost its lease.
    #[error(transparent)]
    Leadership(#[from] crate::scheduler::leader::LeaderError),
    /// Listening or serving failed.
    #[error("serving on {addr}")]
    Io {
        /// The listen address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

pub(crate) fn owned<K>(store: &Store<K>) -> Vec<K>
where
    K: Clone + kube::Resource + 'static,
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    store.state().iter().map(|k| (**k).clone()).collect()
}

/// The watch of pods that still hold resources (not Succeeded, not Failed).
pub(crate) fn unfinished_pods() -> watcher::Config {
    watcher::Config::default().fields("status.phase!=Succeeded,status.phase!=Failed")
}

/// Watches `api` into a reflector store, counting every event in `changes` (a rebuild loop compares
/// the count with the one it last applied).
fn counted_watch<K>(api: Api<K>, config: watcher::Config, changes: &Arc<AtomicU64>) -> Store<K>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (store, writer) = reflector::store::<K>();
    let changes = Arc::clone(changes);
    tokio::spawn(watcher(api, config).default_backoff().reflect(writer).for_each(move |_| {
        changes.fetch_add(1, Ordering::Relaxed);
        futures::future::ready(())
    }));
    store
}

/// Learns the target workload from the pods in the cluster; `fallback` when they ask for no GPU.
pub(crate) fn target_from(
    pods: &[api::Pod],
    snapshot: &Snapshot,
    fallback: Option<TargetWorkload>,
) -> Result<TargetWorkload, WorkloadError> {
    let requests: Vec<_> =
        pods.iter().filter_map(|p| objects::pod(p).ok()).map(|p| snapshot.cluster().request(&p)).collect();
    if requests.iter().any(|r| !r.gpu.is_none()) {
        return TargetWorkload::from_requests(&requests, 0.95);
    }
    fallback.ok_or(WorkloadError::Empty)
}

/// The engine of a component serving a live cluster: ties to the lowest node name, so that the same
/// cluster state always gives the same placement.
pub(crate) fn live_engine(policy: Policy, target: Arc<TargetWorkload>) -> Result<Engine, EngineError> {
    Engine::new(EngineConfig { policy, target: Some(target), seed: 1, tie_break: TieBreak::LowestName })
}

/// Connects with the default kubeconfig (or the in-cluster service account) and serves the extender.
pub async fn run_extender(config: ServeConfig, fallback_target: Option<TargetWorkload>) -> Result<(), ServeError> {
    let client = Client::try_default().await.map_err(ServeError::Client)?;
    serve_extender(client, config, fallback_target).await
}

/// Watches the cluster and serves the extender until a shutdown signal.
pub async fn serve_extender(
    client: Client,
    config: ServeConfig,
    fallback_target: Option<TargetWorkload>,
) -> Result<(), ServeError> {
    let changes = Arc::new(AtomicU64::new(0));
    let nodes = counted_watch(Api::<api::Node>::all(client.clone()), watcher::Config::default(), &changes);
    let pods = counted_watch(Api::<api::Pod>::all(client.clone()), unfinished_pods(), &changes);
    nodes.wait_until_ready().await.map_err(|_| ServeError::NotReady("Node"))?;
    pods.wait_until_ready().await.map_err(|_| ServeError::NotReady("Pod"))?;

    let (node_objects, pod_objects) = (owned(&nodes), owned(&pods));
    let (snapshot, warnings) = Snapshot::build(&node_objects, &pod_objects)?;
    log_warnings(&warnings);
    let target = Arc::new(target_from(&pod_objects, &snapshot, fallback_target)?);
    tracing::info!(
        nodes = snapshot.cluster().len(),
        gpus = snapshot.cluster().total_gpu_milli() / 1000,
        shapes = target.shapes().len(),
        policy = config.policy.name(),
        "Cluster state loaded."
    );
    let engine = live_engine(config.policy, target)?;
    let binder = KubeBinder::new(client.clone(), "gpuplane");
    // The verbs evaluate the pods of this watch (by UID), never the copy a request carries.
    let lookup = WatchThenApi { pods: pods.clone(), client };
    let extender = Arc::new(Extender::new(snapshot, engine, binder, config.extender.clone()).with_pod_lookup(lookup));
    extender.set_pods(pods.state());
    tracing::info!(schedulers = ?config.extender.scheduler_names, "Serving the pods of these schedulers only.");

    let refresher = Arc::clone(&extender);
    let seen_changes = Arc::clone(&changes);
    tokio::spawn(async move {
        let mut applied = 0;
        let mut tick = tokio::time::interval(config.refresh_every);
        loop {
            tick.tick().await;
            let now = seen_changes.load(Ordering::Relaxed);
            if now == applied {
                continue;
            }
            applied = now;
            refresher.set_pods(pods.state());
            // A cluster that cannot be read keeps the previous snapshot; the next change retries.
            match refresher.refresh(&owned(&nodes), &owned(&pods), config.in_flight_ttl) {
                Ok(warnings) => log_warnings(&warnings),
                Err(e) => tracing::error!(error = %e, "Snapshot not rebuilt; keeping the previous one."),
            }
        }
    });

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Io { addr: config.listen, source })?;
    crate::server::serve(listener, config.tls, router(extender), config.limits, shutdown_signal()).await;
    Ok(())
}

/// Finds a pod the extender's UID index does not hold yet: in the reflector store (updated on every watch
/// event, before the next rebuild), else with one GET from the API server.
struct WatchThenApi {
    pods: Store<api::Pod>,
    client: Client,
}

/// How long the extender waits for the API server's answer about one pod (kube-scheduler's extender
/// `httpTimeout` is typically 5 s).
const POD_GET_TIMEOUT: Duration = Duration::from_secs(2);

impl crate::extender::PodLookup for WatchThenApi {
    fn get<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Option<Arc<api::Pod>>, crate::extender::LookupError>> {
        Box::pin(async move {
            let key = reflector::ObjectRef::new(name).within(namespace);
            if let Some(pod) = self.pods.get(&key) {
                return Ok(Some(pod));
            }
            let api: Api<api::Pod> = Api::namespaced(self.client.clone(), namespace);
            match tokio::time::timeout(POD_GET_TIMEOUT, api.get_opt(name)).await {
                Ok(Ok(pod)) => Ok(pod.map(Arc::new)),
                Ok(Err(e)) => Err(crate::extender::LookupError(format!("GET pod {namespace}/{name}: {e}"))),
                Err(_) => Err(crate::extender::LookupError(format!(
                    "GET pod {namespace}/{name}: no answer within {POD_GET_TIMEOUT:?}"
                ))),
            }
        })
    }
}

/// Logs what the snapshot had to skip or guess; each warning once per rebuild.
pub(crate) fn log_warnings(warnings: &[crate::Warning]) {
    for w in warnings {
        match w {
            crate::Warning::Unreadable(e) => tracing::warn!(error = %e, "Object left out of the snapshot."),
            crate::Warning::UnknownNode { pod, node } => {
                tracing::warn!(%pod, %node, "Pod bound to a node gpuplane does not know.")
            }
            crate::Warning::GuessedAssignment { pod } => {
                tracing::info!(%pod, "Bound GPU pod without an assignment annotation; lowest-index GPUs assumed.")
            }
            crate::Warning::Conflict { pod, reason } => {
                tracing::warn!(%pod, %reason, "Bound pod does not fit its node next to the others; left out.")
            }
        }
    }
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => futures::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = futures::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// Settings of `gpuplane webhook`.
#[derive(Debug, Clone)]
pub struct WebhookServeConfig {
    /// Address to listen on (HTTPS).
    pub listen: SocketAddr,
    /// PEM certificate chain.
    pub cert: std::path::PathBuf,
    /// PEM private key.
    pub key: std::path::PathBuf,
    /// Largest AdmissionReview accepted, in bytes.
    pub max_body_bytes: usize,
    /// How pods are steered and checked.
    pub webhook: crate::webhook::WebhookConfig,
    /// Connections, header and lifetime limits of the HTTPS server.
    pub limits: crate::server::Limits,
}

/// Serves the admission webhook over TLS until `shutdown` completes. It needs no API access: every
/// decision is made from the review alone.
pub async fn serve_webhook(
    config: WebhookServeConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    let tls = crate::tls::server_config(config.cert.clone(), config.key.clone())?;
    let webhook = Arc::new(crate::webhook::Webhook::new(config.webhook.clone()));
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Io { addr: config.listen, source })?;
    tracing::info!(listen = %config.listen, "Admission webhook serving over TLS.");
    let app = crate::webhook::router(webhook, config.max_body_bytes);
    crate::server::serve(listener, Some(tls), app, config.limits, shutdown).await;
    Ok(())
}
