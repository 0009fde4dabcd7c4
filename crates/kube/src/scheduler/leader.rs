//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does it: the
//! holder renews `renewTime` every few seconds; another replica takes the lease over only after it has
//! seen the same record unchanged for a whole `leaseDurationSeconds` by its own clock (so clock skew
//! between replicas does not matter), and writes with the lease's resourceVersion, so of two replicas
//! racing for it exactly one wins.
//!
//! Renewal runs in its own task ([`spawn_keeper`]), so no scheduling work can delay it, and every write
//! the leader makes first checks a [`Fence`]: leadership counts only until the renew deadline after the
//! start of the last successful renewal, which ends before any other replica may take the lease over.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use thiserror::Error;
use tokio::time::Instant;

/// Lease settings (client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retry).
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// The Lease object's name.
    pub name: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// How long a lease lasts without renewal.
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it gives up leadership.
    pub renew_deadline: Duration,
    /// How often to try to acquire or renew.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// Defaults for a lease `name` held as `identity`.
    pub fn new(name: impl Into<String>, identity: impl Into<String>) -> Self {
        LeaseConfig {
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Who holds the lease after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leadership {
    /// This replica.
    Leader,
    /// Another replica (its identity, if known).
    Follower(String),
}

/// Why leadership ended or could not be tried.
#[derive(Debug, Error)]
pub enum LeaderError {
    /// The API server refused or failed a lease call.
    #[error("lease {name}")]
    Api {
        /// The lease name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The lease was not renewed within the renew deadline, or another replica took it.
    #[error("lost the lease {name} (now held by {holder:?}); stopping so that only one replica schedules")]
    Lost {
        /// The lease name.
        name: String,
        /// Its holder now, if known.
        holder: String,
    },
}

/// The lease record as last seen, and when it was first seen in that state.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Observed {
    holder: String,
    renew_time: Option<MicroTime>,
    transitions: i32,
}

/// Tries to acquire and renew one Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
    observed: Option<(Observed, Instant)>,
}

impl std::fmt::Debug for LeaderElector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderElector").field("config", &self.config).finish()
    }
}

fn micro_now() -> MicroTime {
    MicroTime(Timestamp::now())
}

impl LeaderElector {
    /// An elector for the lease in `api`'s namespace.
    pub fn new(api: Api<Lease>, config: LeaseConfig) -> Self {
        LeaderElector { api, config, observed: None }
    }

    /// The settings.
    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    fn err(&self, source: kube::Error) -> LeaderError {
        LeaderError::Api { name: self.config.name.clone(), source }
    }

    /// One attempt: create the lease if there is none, renew it if held, take it over if it expired.
    pub async fn try_acquire_or_renew(&mut self) -> Result<Leadership, LeaderError> {
        let now = Instant::now();
        let Some(mut lease) = self.api.get_opt(&self.config.name).await.map_err(|e| self.err(e))? else {
            return self.create().await;
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let record = Observed {
            holder: spec.holder_identity.clone().unwrap_or_default(),
            renew_time: spec.renew_time.clone(),
            transitions: spec.lease_transitions.unwrap_or(0),
        };
        let first_seen = match &self.observed {
            Some((seen, at)) if *seen == record => *at,
            _ => now,
        };
        self.observed = Some((record.clone(), first_seen));
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.config.lease_duration, Duration::from_secs);
        let ours = record.holder == self.config.identity;
        let expired = record.holder.is_empty() || now.duration_since(first_seen) >= duration;
        if !ours && !expired {
            return Ok(Leadership::Follower(record.holder));
        }
        let stamp = micro_now();
        let mut next = spec;
        if !ours {
            next.holder_identity = Some(self.config.identity.clone());
            next.acquire_time = Some(stamp.clone());
            next.lease_transitions = Some(record.transitions + 1);
        }
        next.renew_time = Some(stamp);
        next.lease_duration_seconds = Some(secs(self.config.lease_duration));
        lease.spec = Some(next);
        // `replace` sends the resourceVersion read above: a concurrent writer makes this a 409.
        match self.api.replace(&self.config.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(Leadership::Leader),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Leadership::Follower(String::new())),
            Err(e) => Err(self.err(e)),
        }
    }

    async fn create(&mut self) -> Result<Leadership, LeaderError> {
        let stamp = micro_now();
        let lease = Lease {
            metadata: ObjectMeta { name: Some(self.config.name.clone()), ..Default::default() },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.config.identity.clone()),
                lease_duration_seconds: Some(secs(self.config.lease_duration)),
                acquire_time: Some(stamp.clone()),
                renew_time: Some(stamp),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        match self.api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(Leadership::Leader),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Leadership::Follower(String::new())),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Gives the lease up (on shutdown), so another replica takes over at once instead of after the
    /// lease duration.
    pub async fn release(&mut self) -> Result<(), LeaderError> {
        let Some(mut lease) = self.api.get_opt(&self.config.name).await.map_err(|e| self.err(e))? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else { return Ok(()) };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(micro_now());
        self.api.replace(&self.config.name, &PostParams::default(), &lease).await.map(|_| ()).map_err(|e| self.err(e))
    }

    /// Waits until this replica holds the lease; the fence then holds until the renew deadline.
    pub async fn acquire(&mut self, fence: &Fence) -> Result<(), LeaderError> {
        loop {
            let attempt = Instant::now();
            match self.try_acquire_or_renew().await {
                Ok(Leadership::Leader) => {
                    fence.extend(attempt + self.config.renew_deadline);
                    return Ok(());
                }
                Ok(Leadership::Follower(holder)) => {
                    tracing::debug!(lease = %self.config.name, %holder, "Another replica leads; waiting.");
                }
                Err(e) => tracing::warn!(error = %e, "Lease not acquired; retrying."),
            }
            tokio::time::sleep(self.config.retry_period).await;
        }
    }

    /// Renews the lease every retry period, moving the fence forward after each renewal; returns when
    /// leadership is lost (another holder, or no successful renewal within the renew deadline), with the
    /// fence already closed.
    pub async fn keep(&mut self, fence: &Fence) -> LeaderError {
        let mut last_renewed = Instant::now();
        loop {
            tokio::time::sleep(self.config.retry_period).await;
            let attempt = Instant::now();
            match self.try_acquire_or_renew().await {
                Ok(Leadership::Leader) => {
                    last_renewed = attempt;
                    fence.extend(attempt + self.config.renew_deadline);
                }
                Ok(Leadership::Follower(holder)) if !holder.is_empty() => {
                    fence.close();
                    return LeaderError::Lost { name: self.config.name.clone(), holder };
                }
                Ok(Leadership::Follower(_)) => {}
                Err(e) => tracing::warn!(error = %e, "Lease not renewed; retrying."),
            }
            if last_renewed.elapsed() > self.config.renew_deadline {
                fence.close();
                return LeaderError::Lost { name: self.config.name.clone(), holder: String::new() };
            }
        }
    }
}

/// Whether this replica may write now. A leader's fence holds until the renew deadline after the start
/// of its last successful renewal: another replica takes over only after it has seen that renewal's
/// record unchanged for a whole lease duration, which is longer, so the two never write in the same
/// moment. Writes check it just before they are sent; a lost lease closes it for good.
#[derive(Debug, Clone)]
pub struct Fence(Option<Arc<Mutex<Option<Instant>>>>);

impl Fence {
    /// A fence that is closed until [`LeaderElector::acquire`] opens it.
    pub fn closed() -> Fence {
        Fence(Some(Arc::new(Mutex::new(None))))
    }

    /// No leader election (a single replica, or a stateless extender): always open.
    pub fn open() -> Fence {
        Fence(None)
    }

    /// True while this replica may write.
    pub fn holds(&self) -> bool {
        match &self.0 {
            None => true,
            Some(until) => until.lock().map(|u| u.is_some_and(|u| Instant::now() < u)).unwrap_or(false),
        }
    }

    fn extend(&self, until: Instant) {
        if let Some(slot) = &self.0
            && let Ok(mut u) = slot.lock()
        {
            *u = Some(u.map_or(until, |old| old.max(until)));
        }
    }

    fn close(&self) {
        if let Some(slot) = &self.0
            && let Ok(mut u) = slot.lock()
        {
            *u = None;
        }
    }
}

/// The renewal task of a leader: renews until the lease is lost or [`Keeper::release`] is called.
#[derive(Debug)]
pub struct Keeper {
    task: Option<tokio::task::JoinHandle<(LeaderElector, Option<LeaderError>)>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Starts renewing a lease that `elector` has just acquired (with `fence`), in a task of its own.
pub fn spawn_keeper(mut elector: LeaderElector, fence: Fence) -> Keeper {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let lost = tokio::select! {
            lost = elector.keep(&fence) => Some(lost),
            _ = stopped => None,
        };
        fence.close();
        (elector, lost)
    });
    Keeper { task: Some(task), stop: Some(stop) }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        // Renewal must not outlive the scheduling it guards.
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl Keeper {
    /// Completes when leadership is lost, with the reason (and never again after that).
    pub async fn lost(&mut self) -> LeaderError {
        let Some(task) = self.task.as_mut() else { return std::future::pending().await };
        let outcome = task.await;
        self.task = None;
        match outcome {
            Ok((_, Some(lost))) => lost,
            // The task ended without a reason only if it panicked or was stopped: no leadership either way.
            Ok((elector, None)) => LeaderError::Lost { name: elector.config.name, holder: String::new() },
            Err(_) => LeaderError::Lost { name: String::new(), holder: String::new() },
        }
    }

    /// Stops renewing and gives the lease up, so another replica takes over at once.
    pub async fn release(mut self) -> Result<(), LeaderError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => match task.await {
                Ok((mut elector, None)) => elector.release().await,
                // Already lost: nothing of ours to give up.
                Ok((_, Some(_))) | Err(_) => Ok(()),
            },
            None => Ok(()),
        }
    }
}

fn secs(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}
