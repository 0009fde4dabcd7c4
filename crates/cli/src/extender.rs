//! `gpuplane extender`: the kube-scheduler extender against a live cluster (see docs/extender.md).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use gpuplane_kube::serve::{ServeConfig, run_extender};
use gpuplane_place::{ModelSet, PodRequest, Policy, TargetWorkload};

use crate::input;

/// Arguments of `gpuplane extender`.
#[derive(Debug, Args)]
pub struct ExtenderArgs {
    /// Address to serve filter, prioritize, bind, preempt, /metrics and /healthz on
    #[arg(long, default_value = "0.0.0.0:8888")]
    listen: SocketAddr,
    /// Placement policy: random, dotprod, clustering, packing, bestfit or fgd
    #[arg(long, default_value = "fgd")]
    policy: String,
    /// How often the snapshot is rebuilt when Nodes or Pods changed, in milliseconds
    #[arg(long, default_value_t = 500)]
    refresh_ms: u64,
    /// How long a binding is kept while the watch has not shown it yet, in seconds
    #[arg(long, default_value_t = 60)]
    in_flight_ttl_s: u64,
    /// Log format on standard error: text or json (level from RUST_LOG, default info)
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

/// Runs the extender until SIGTERM or Ctrl-C.
pub fn run(args: ExtenderArgs) -> Result<()> {
    let policy: Policy = args.policy.parse().context("--policy")?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if args.log_format == "json" {
        logs.json().init();
    } else {
        logs.init();
    }
    // FGD needs a target workload: learned from the cluster's pods, else the openb default trace.
    let (_, trace) = input::trace(None)?;
    let requests: Vec<PodRequest> = trace
        .iter()
        .map(|p| PodRequest {
            cpu_milli: p.cpu_milli,
            memory_bytes: p.memory_bytes,
            gpu: p.gpu,
            models: ModelSet::Any,
            priority: p.priority,
            constraints: None,
        })
        .collect();
    let fallback = TargetWorkload::from_requests(&requests, 0.95)?;
    let config = ServeConfig {
        listen: args.listen,
        policy,
        refresh_every: Duration::from_millis(args.refresh_ms.max(10)),
        in_flight_ttl: Duration::from_secs(args.in_flight_ttl_s),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run_extender(config, Some(fallback)))?;
    Ok(())
}
