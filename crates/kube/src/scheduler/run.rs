//! Drives the [`Scheduler`] against the API server: wins the Lease, watches Nodes, Pods,
//! PodDisruptionBudgets, Namespaces and the volume objects (claims, volumes, classes) into reflector stores, feeds their events to the state machine one at a time,
//! and carries out its actions (bind, evict) concurrently, feeding the outcomes back. Reads the cache
//! agents' inventories every few seconds for the locality term. Serves `/metrics` and `/healthz` meanwhile.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use gpuplane_place::{Policy, TargetWorkload};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1 as api;
use k8s_openapi::api::policy::v1::Eviction;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{DeleteOptions, ObjectMeta, Preconditions};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::budget::Budget;
use super::leader::{Fence, LeaderElector, LeaseConfig, spawn_keeper};
use super::preempt::Victim;
use super::{Action, Scheduler, SchedulerConfig};
use crate::client::{KubeBinder, failure, not_leader};
use crate::extender::{BindFailure, Binder};
use crate::fit::volumes::Volumes;
use crate::inventory::{self, Inventories};
use crate::metrics::{Metrics, OPENMETRICS_CONTENT_TYPE};
use crate::serve::{ServeError, live_engine, log_warnings, owned, target_from, unfinished_pods};
use crate::snapshot::Snapshot;

/// Settings of `gpuplane scheduler`.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Placement policy.
    pub policy: Policy,
    /// Scheduler settings.
    pub scheduler: SchedulerConfig,
    /// The Lease to hold, and its namespace; `None` runs without leader election (one replica only).
    pub lease: Option<(String, LeaseConfig)>,
    /// Where `/metrics` and `/healthz` are served.
    pub metrics_listen: SocketAddr,
    /// How the cache agents' inventories are read; `None` leaves locality out.
    pub inventory: Option<InventoryPolling>,
}

/// Reading the cache agents' `GET /models`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventoryPolling {
    /// A file holding the bearer token presented to the agents (a projected ServiceAccount token with
    /// the agents' audience), read again every round as the kubelet rotates it.
    pub token_file: Option<std::path::PathBuf>,
    /// Time between rounds.
    pub interval: Duration,
    /// Time allowed per agent per round.
    pub timeout: Duration,
    /// The agent's port when its pod does not name a container port `api`.
    pub default_port: u16,
}

impl Default for InventoryPolling {
    fn default() -> Self {
        InventoryPolling {
            token_file: None,
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            default_port: 8470,
        }
    }
}

/// A watch event, as the loop needs it.
enum Input {
    /// A node changed: the snapshot is rebuilt (once per batch).
    Nodes,
    /// A pod was added or changed.
    PodApplied(Box<api::Pod>),
    /// A pod was deleted.
    PodDeleted(Box<api::Pod>),
    /// The pod watch re-listed: deletions during the gap have no event, so rebuild.
    PodsRelisted,
    /// A PodDisruptionBudget changed.
    Budgets,
    /// A round of cache agent inventories.
    Inventories(Inventories),
    /// A namespace changed (its labels count for affinity terms' namespace selectors).
    Namespaces,
    /// A claim, volume or storage class changed.
    Volumes,
}

/// What a finished action reports.
enum Outcome {
    Bind { key: String, result: Result<(), BindFailure> },
    Evict { preemptor: String, victim: String, result: Result<(), BindFailure> },
    Reported,
}

fn spawn_watch<K, F>(api: Api<K>, config: watcher::Config, tx: mpsc::UnboundedSender<Input>, map: F) -> Store<K>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
    F: Fn(watcher::Event<K>) -> Option<Input> + Send + 'static,
{
    let (store, writer) = reflector::store::<K>();
    tokio::spawn(watcher(api, config).default_backoff().reflect(writer).for_each(move |event| {
        if let Ok(e) = event
            && let Some(input) = map(e)
        {
            // The loop has stopped when the receiver is gone; nothing left to tell.
            let _ = tx.send(input);
        }
        futures::future::ready(())
    }));
    store
}

/// Watches the cluster and schedules until `shutdown` completes or leadership is lost.
pub async fn serve_scheduler(
    client: Client,
    config: RunConfig,
    fallback_target: Option<TargetWorkload>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let mut elector = config
        .lease
        .clone()
        .map(|(namespace, lease)| LeaderElector::new(Api::<Lease>::namespaced(client.clone(), &namespace), lease));
    let metrics = Arc::new(Metrics::new());
    let listener = tokio::net::TcpListener::bind(config.metrics_listen)
        .await
        .map_err(|source| ServeError::Io { addr: config.metrics_listen, source })?;
    let metrics_server = tokio::spawn(serve_metrics(listener, Arc::clone(&metrics)));
    tokio::pin!(shutdown);

    let mut fence = Fence::open();
    let mut keeper = None;
    if let Some(mut elector) = elector.take() {
        tracing::info!(lease = %elector.config().name, identity = %elector.config().identity, "Waiting for the lease.");
        fence = Fence::closed();
        tokio::select! {
            acquired = elector.acquire(&fence) => acquired?,
            () = &mut shutdown => { metrics_server.abort(); return Ok(()) }
        }
        tracing::info!(lease = %elector.config().name, "Lease acquired; scheduling.");
        keeper = Some(spawn_keeper(elector, fence.clone()));
    }
    // Renewal runs in its own task; losing the lease ends scheduling wherever it is (loading the cluster
    // included), and the fence has already stopped every write that had not been sent.
    let work = schedule(client, &config, fallback_target, Arc::clone(&metrics), fence, shutdown);
    let result = match keeper.as_mut() {
        Some(keeper) => tokio::select! {
            result = work => result,
            lost = keeper.lost() => Err(ServeError::Leadership(lost)),
        },
        None => work.await,
    };
    if let (Some(keeper), true) = (keeper, result.is_ok())
        && let Err(e) = keeper.release().await
    {
        tracing::warn!(error = %e, "Lease not released; the next leader waits for it to expire.");
    }
    metrics_server.abort();
    result
}

async fn serve_metrics(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    use axum::response::IntoResponse;
    let app =
        axum::Router::new()
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let m = Arc::clone(&metrics);
                    async move {
                        ([(axum::http::header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], m.encode()).into_response()
                    }
                }),
            )
            .route("/healthz", axum::routing::get(|| async { "ok" }));
    crate::server::serve(listener, None, app, crate::server::Limits::default(), std::future::pending()).await;
}

async fn schedule(
    client: Client,
    config: &RunConfig,
    fallback_target: Option<TargetWorkload>,
    metrics: Arc<Metrics>,
    fence: Fence,
    mut shutdown: Pin<&mut (impl Future<Output = ()> + Send)>,
) -> Result<(), ServeError> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let nodes = spawn_watch(Api::<api::Node>::all(client.clone()), watcher::Config::default(), tx.clone(), |_| {
        Some(Input::Nodes)
    });
    let pods = spawn_watch(Api::<api::Pod>::all(client.clone()), unfinished_pods(), tx.clone(), |e| match e {
        watcher::Event::Apply(p) | watcher::Event::InitApply(p) => Some(Input::PodApplied(Box::new(p))),
        watcher::Event::Delete(p) => Some(Input::PodDeleted(Box::new(p))),
        watcher::Event::InitDone => Some(Input::PodsRelisted),
        watcher::Event::Init => None,
    });
    let budgets =
        spawn_watch(Api::<PodDisruptionBudget>::all(client.clone()), watcher::Config::default(), tx.clone(), |_| {
            Some(Input::Budgets)
        });
    let namespaces =
        spawn_watch(Api::<api::Namespace>::all(client.clone()), watcher::Config::default(), tx.clone(), |_| {
            Some(Input::Namespaces)
        });
    let claims = spawn_watch(
        Api::<api::PersistentVolumeClaim>::all(client.clone()),
        watcher::Config::default(),
        tx.clone(),
        |_| Some(Input::Volumes),
    );
    let volumes =
        spawn_watch(Api::<api::PersistentVolume>::all(client.clone()), watcher::Config::default(), tx.clone(), |_| {
            Some(Input::Volumes)
        });
    let classes = spawn_watch(Api::<StorageClass>::all(client.clone()), watcher::Config::default(), tx.clone(), |_| {
        Some(Input::Volumes)
    });
    let _poller =
        config.inventory.clone().map(|polling| AbortOnDrop(tokio::spawn(poll_inventories(pods.clone(), polling, tx))));
    nodes.wait_until_ready().await.map_err(|_| ServeError::NotReady("Node"))?;
    pods.wait_until_ready().await.map_err(|_| ServeError::NotReady("Pod"))?;
    budgets.wait_until_ready().await.map_err(|_| ServeError::NotReady("PodDisruptionBudget"))?;
    namespaces.wait_until_ready().await.map_err(|_| ServeError::NotReady("Namespace"))?;
    claims.wait_until_ready().await.map_err(|_| ServeError::NotReady("PersistentVolumeClaim"))?;
    volumes.wait_until_ready().await.map_err(|_| ServeError::NotReady("PersistentVolume"))?;
    classes.wait_until_ready().await.map_err(|_| ServeError::NotReady("StorageClass"))?;
    let read_volumes = || Volumes::new(&owned(&claims), &owned(&volumes), &owned(&classes));

    let (node_objects, pod_objects) = (owned(&nodes), owned(&pods));
    let (snapshot, _) = Snapshot::build(&node_objects, &pod_objects)?;
    let target = Arc::new(target_from(&pod_objects, &snapshot, fallback_target)?);
    let engine = live_engine(config.policy, target)?;
    let mut scheduler = Scheduler::new(snapshot, engine, config.scheduler.clone(), Arc::clone(&metrics));
    log_warnings(&scheduler.rebuild(&node_objects, &pod_objects)?);
    scheduler.set_budgets(read_budgets(&budgets));
    scheduler.set_namespaces(&owned(&namespaces));
    scheduler.set_volumes(read_volumes());
    tracing::info!(
        nodes = scheduler.snapshot().cluster().len(),
        pending = scheduler.queued(),
        policy = config.policy.name(),
        scheduler_name = %config.scheduler.scheduler_name,
        "Cluster state loaded."
    );

    let binder = KubeBinder::new(client.clone(), "gpuplane-scheduler").fenced(fence.clone());
    let mut running: JoinSet<Outcome> = JoinSet::new();
    let mut pools_updated = Instant::now() - Duration::from_secs(60);
    loop {
        let now = Instant::now();
        while let Some(action) = scheduler.next(now) {
            start(&mut running, &client, &binder, &fence, action);
        }
        if pools_updated.elapsed() >= Duration::from_secs(5) {
            metrics.set_pools(scheduler.snapshot().cluster(), scheduler.engine().target().map(|t| t.as_ref()));
            pools_updated = Instant::now();
        }
        let wake = scheduler
            .next_wakeup()
            .map_or_else(|| tokio::time::Instant::now() + Duration::from_secs(5), tokio::time::Instant::from_std);
        tokio::select! {
            biased;
            () = &mut shutdown => return Ok(()),
            Some(done) = running.join_next(), if !running.is_empty() => {
                if let Ok(outcome) = done {
                    finish(&mut scheduler, outcome);
                }
            }
            Some(first) = rx.recv() => {
                let mut rebuild = false;
                let mut budgets_changed = false;
                let (mut namespaces_changed, mut volumes_changed) = (false, false);
                let mut batch = vec![first];
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                for input in batch {
                    match input {
                        Input::Nodes | Input::PodsRelisted => rebuild = true,
                        Input::Budgets => budgets_changed = true,
                        Input::Namespaces => namespaces_changed = true,
                        Input::Volumes => volumes_changed = true,
                        Input::Inventories(i) => scheduler.set_inventories(i),
                        Input::PodApplied(p) if !rebuild => log_warnings(&Vec::from_iter(scheduler.pod_applied(&p))),
                        Input::PodDeleted(p) if !rebuild => scheduler.pod_deleted(&p),
                        // A rebuild from the stores follows and covers these.
                        Input::PodApplied(_) | Input::PodDeleted(_) => {}
                    }
                }
                if rebuild {
                    match scheduler.rebuild(&owned(&nodes), &owned(&pods)) {
                        Ok(w) => log_warnings(&w),
                        Err(e) => tracing::error!(error = %e, "Snapshot not rebuilt; keeping the previous one."),
                    }
                }
                if budgets_changed {
                    scheduler.set_budgets(read_budgets(&budgets));
                }
                if namespaces_changed {
                    scheduler.set_namespaces(&owned(&namespaces));
                }
                if volumes_changed {
                    scheduler.set_volumes(read_volumes());
                }
            }
            () = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// A spawned task that stops when the guard is dropped (when scheduling ends, however it ends).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads the inventories of the cache agents found in the pod store, every `polling.interval`.
async fn poll_inventories(pods: Store<api::Pod>, polling: InventoryPolling, tx: mpsc::UnboundedSender<Input>) {
    let mut ticks = tokio::time::interval(polling.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = (usize::MAX, usize::MAX);
    loop {
        ticks.tick().await;
        let agents = inventory::agents(pods.state().iter().map(|p| p.as_ref()), polling.default_port);
        let token = polling.token_file.as_ref().and_then(|path| match std::fs::read_to_string(path) {
            Ok(t) => Some(t.trim().to_owned()),
            Err(e) => {
                tracing::warn!(token = %path.display(), error = %e, "Cache agent token not readable.");
                None
            }
        });
        let (inventories, failed) = inventory::fetch_all(&agents, polling.timeout, token.as_deref()).await;
        for (agent, error) in &failed {
            tracing::debug!(node = %agent.node, %error, "Cache inventory not read; the node counts as holding no model.");
        }
        if last != (agents.len(), failed.len()) {
            last = (agents.len(), failed.len());
            tracing::info!(agents = agents.len(), unreadable = failed.len(), "Cache inventories read.");
        }
        if tx.send(Input::Inventories(inventories)).is_err() {
            return;
        }
    }
}

fn read_budgets(store: &Store<PodDisruptionBudget>) -> Vec<Budget> {
    store
        .state()
        .iter()
        .filter_map(|pdb| match Budget::from_object(pdb) {
            Ok(b) => Some(b),
            Err(e) => {
                // Unreadable, so it protects nothing gpuplane can see; the API server still enforces it on eviction.
                tracing::warn!(error = %e, "PodDisruptionBudget ignored by preemption planning.");
                None
            }
        })
        .collect()
}

fn start(running: &mut JoinSet<Outcome>, client: &Client, binder: &KubeBinder, fence: &Fence, action: Action) {
    match action {
        Action::Bind(target) => {
            let binder = binder.clone();
            tracing::info!(pod = %format!("{}/{}", target.namespace, target.name), node = %target.node,
                gpus = %target.assignment, "Binding.");
            running.spawn(async move {
                let key = format!("{}/{}", target.namespace, target.name);
                Outcome::Bind { key, result: binder.bind(target).await }
            });
        }
        Action::ReportUnschedulable { pod, uid, message } => {
            let client = client.clone();
            let fence = fence.clone();
            running.spawn(async move {
                if !fence.holds() {
                    return Outcome::Reported;
                }
                if let Err(e) = report_unschedulable(client.clone(), &pod, &message).await {
                    tracing::debug!(%pod, error = %e, "PodScheduled condition not written.");
                }
                if let Err(e) = record_failed_scheduling(client, &pod, &uid, &message).await {
                    tracing::debug!(%pod, error = %e, "FailedScheduling event not written.");
                }
                Outcome::Reported
            });
        }
        Action::Evict { preemptor, node, victims } => {
            tracing::info!(pod = %preemptor, %node, victims = ?victims.iter().map(|v| &v.key).collect::<Vec<_>>(),
                "Preempting.");
            for victim in victims {
                let client = client.clone();
                let preemptor = preemptor.clone();
                let fence = fence.clone();
                running.spawn(async move {
                    let result = if fence.holds() { evict(client, &victim).await } else { Err(not_leader()) };
                    Outcome::Evict { preemptor, victim: victim.key, result }
                });
            }
        }
    }
}

/// Evicts one pod through the Eviction API (the API server enforces disruption budgets), with its UID
/// as a precondition so a replacement with the same name is left alone. The `policy/v1` Eviction is
/// posted as k8s-openapi serialises it (`deleteOptions`): kube-rs's own `evict` writes the field as
/// `delete_options`, which the API server does not read.
pub async fn evict(client: Client, victim: &Victim) -> Result<(), BindFailure> {
    let (namespace, name) = victim.key.split_once('/').unwrap_or(("default", victim.key.as_str()));
    let pods: Api<api::Pod> = Api::namespaced(client, namespace);
    let preconditions =
        (!victim.uid.is_empty()).then(|| Preconditions { uid: Some(victim.uid.clone()), ..Default::default() });
    let eviction = Eviction {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..Default::default()
        },
        delete_options: Some(DeleteOptions { preconditions, ..Default::default() }),
    };
    pods.create_subresource::<_, serde_json::Value>("eviction", name, &PostParams::default(), &eviction)
        .await
        .map(|_| ())
        .map_err(|e| failure(format!("evicting pod {}", victim.key), e))
}

/// Sets the pod's `PodScheduled` condition to False with the reason, by a strategic merge patch of its
/// status (conditions merge by type, so other conditions stay).
pub async fn report_unschedulable(client: Client, pod: &str, message: &str) -> Result<(), kube::Error> {
    let (namespace, name) = pod.split_once('/').unwrap_or(("default", pod));
    let pods: Api<api::Pod> = Api::namespaced(client, namespace);
    let now = k8s_openapi::jiff::Timestamp::now().round(k8s_openapi::jiff::Unit::Second).unwrap_or_default();
    let patch = serde_json::json!({"status": {"conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": message, "lastTransitionTime": now.to_string(),
    }]}});
    pods.patch_status(
        name,
        &PatchParams { field_manager: Some("gpuplane-scheduler".to_owned()), ..Default::default() },
        &Patch::Strategic(&patch),
    )
    .await
    .map(|_| ())
}

/// Records a `FailedScheduling` Warning event on the pod, as kube-scheduler does (`kubectl describe pod` and
/// `kubectl get events` show it).
pub async fn record_failed_scheduling(client: Client, pod: &str, uid: &str, message: &str) -> Result<(), kube::Error> {
    let (namespace, name) = pod.split_once('/').unwrap_or(("default", pod));
    let uid = Some(uid.to_owned()).filter(|u| !u.is_empty());
    let now = k8s_openapi::jiff::Timestamp::now();
    let time = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now);
    let event = api::Event {
        metadata: ObjectMeta {
            name: Some(format!("{name}.{:x}", now.as_nanosecond())),
            namespace: Some(namespace.to_owned()),
            ..Default::default()
        },
        involved_object: api::ObjectReference {
            api_version: Some("v1".to_owned()),
            kind: Some("Pod".to_owned()),
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            uid,
            ..Default::default()
        },
        reason: Some("FailedScheduling".to_owned()),
        message: Some(message.to_owned()),
        type_: Some("Warning".to_owned()),
        count: Some(1),
        first_timestamp: Some(time.clone()),
        last_timestamp: Some(time),
        source: Some(api::EventSource { component: Some("gpuplane-scheduler".to_owned()), host: None }),
        reporting_component: Some("gpuplane-scheduler".to_owned()),
        ..Default::default()
    };
    Api::<api::Event>::namespaced(client, namespace).create(&PostParams::default(), &event).await.map(|_| ())
}

fn finish(scheduler: &mut Scheduler, outcome: Outcome) {
    match outcome {
        Outcome::Bind { key, result } => scheduler.bind_finished(&key, result, Instant::now()),
        Outcome::Evict { preemptor, victim, result } => scheduler.eviction_finished(&preemptor, &victim, result),
        Outcome::Reported => {}
    }
}
