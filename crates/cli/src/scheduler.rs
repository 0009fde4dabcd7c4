//! `gpuplane scheduler`: the secondary scheduler for pods with `schedulerName: gpuplane` (see
//! docs/scheduler.md).

use std::net::SocketAddr;

use anyhow::{Context, Result};
use clap::Args;
use gpuplane_kube::scheduler::SchedulerConfig;
use gpuplane_kube::scheduler::leader::LeaseConfig;
use gpuplane_kube::scheduler::run::{RunConfig, serve_scheduler};
use gpuplane_kube::serve::{ServeError, shutdown_signal};
use gpuplane_place::Policy;

use crate::service;

/// Arguments of `gpuplane scheduler`.
#[derive(Debug, Args)]
pub struct SchedulerArgs {
    /// The spec.schedulerName of the pods this scheduler places
    #[arg(long, default_value = "gpuplane")]
    scheduler_name: String,
    /// Placement policy: random, dotprod, clustering, packing, bestfit or fgd
    #[arg(long, default_value = "fgd")]
    policy: String,
    /// Let higher-priority pods evict lower-priority ones (within PodDisruptionBudgets)
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    preemption: bool,
    /// Address to serve /metrics and /healthz on
    #[arg(long, default_value = "0.0.0.0:9090")]
    metrics_listen: SocketAddr,
    /// Hold this coordination.k8s.io Lease so that only one replica schedules; empty to run without
    /// leader election (a single replica)
    #[arg(long, default_value = "gpuplane-scheduler")]
    lease_name: String,
    /// Namespace of the Lease (default: $POD_NAMESPACE, else gpuplane-system)
    #[arg(long)]
    lease_namespace: Option<String>,
    /// This replica's identity in the Lease (default: $POD_NAME, else the host name)
    #[arg(long)]
    identity: Option<String>,
    /// Log format on standard error: text or json (level from RUST_LOG, default info)
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

/// Runs the scheduler until SIGTERM, Ctrl-C, or a lost lease.
pub fn run(args: SchedulerArgs) -> Result<()> {
    let policy: Policy = args.policy.parse().context("--policy")?;
    service::init_logging(&args.log_format);
    let lease = (!args.lease_name.is_empty()).then(|| {
        let namespace = args
            .lease_namespace
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| "gpuplane-system".to_owned());
        let identity = args
            .identity
            .or_else(|| std::env::var("POD_NAME").ok())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| format!("gpuplane-{}", std::process::id()));
        (namespace, LeaseConfig::new(args.lease_name.clone(), identity))
    });
    let config = RunConfig {
        policy,
        scheduler: SchedulerConfig {
            scheduler_name: args.scheduler_name,
            preemption: args.preemption,
            ..SchedulerConfig::default()
        },
        lease,
        metrics_listen: args.metrics_listen,
    };
    let fallback = service::fallback_target()?;
    service::runtime()?.block_on(async move {
        let client = kube::Client::try_default().await.map_err(ServeError::Client)?;
        serve_scheduler(client, config, Some(fallback), shutdown_signal()).await
    })?;
    Ok(())
}
