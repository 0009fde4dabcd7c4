//! `gpuplane scheduler`: the secondary scheduler for pods with `schedulerName: gpuplane` (see
//! docs/scheduler.md).

use std::net::SocketAddr;

use anyhow::{Context, Result, bail};
use clap::Args;
use std::time::Duration;

use gpuplane_kube::fit::ScoreWeights;
use gpuplane_kube::ratelimit::{RateLimit, RateLimitLayer};
use gpuplane_kube::scheduler::leader::LeaseConfig;
use gpuplane_kube::scheduler::run::{InventoryPolling, RunConfig, serve_scheduler};
use gpuplane_kube::scheduler::{LocalityConfig, SchedulerConfig, ServingConfig, WindowConfig};
use gpuplane_kube::serve::{ServeError, shutdown_signal};
use gpuplane_place::{Bandwidth, Policy, VictimChoice};

use crate::service;

/// Arguments of `gpuplane scheduler`.
#[derive(Debug, Args)]
pub struct SchedulerArgs {
    /// The spec.schedulerName of the pods this scheduler places
    #[arg(long, default_value = "gpuplane")]
    scheduler_name: String,
    /// Placement policy: random, dotprod, clustering, packing, bestfit, fgd or gpuplane
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
    /// Weight of model locality against the policy's score, 0 to 1 (0 turns it off): pods annotated
    /// gpuplane.io/model prefer nodes whose cache agent holds the model
    #[arg(long, default_value_t = 0.3)]
    locality_weight: f64,
    /// Seconds between reads of the cache agents' inventories (GET /models)
    #[arg(long, default_value_t = 10)]
    inventory_interval_secs: u64,
    /// The cache agents' port when their pod names no container port "api"
    #[arg(long, default_value_t = 8470)]
    cache_agent_port: u16,
    /// File holding the bearer token presented to the cache agents (a projected ServiceAccount token
    /// with audience gpuplane-cache; read again every round)
    #[arg(long)]
    cache_agent_token_file: Option<std::path::PathBuf>,
    /// Expected read rates for the locality term, GB/s: local disk, peer, origin
    #[arg(long, value_delimiter = ',', num_args = 3, default_values_t = [2.0, 1.25, 0.3])]
    load_gbps: Vec<f64>,
    /// Scheduling cycles: place up to this many pending pods jointly (1: each pod as it comes). Pods naming
    /// a model (gpuplane.io/model) are still placed one at a time, with model locality
    #[arg(long, default_value_t = 1, value_name = "PODS")]
    window: usize,
    /// Longest a pending pod waits for its cycle to fill, in milliseconds
    #[arg(long, default_value_t = 100, value_name = "MS")]
    window_ms: u64,
    /// Weights of kube-scheduler's preference scores and of the GPU placement policy's, as a profile's score
    /// plugin weights: NAME=WEIGHT pairs of TaintToleration, NodeAffinity, PodTopologySpread, InterPodAffinity
    /// and GpuPlacement (names left out keep their defaults)
    #[arg(
        long,
        default_value = "TaintToleration=3,NodeAffinity=2,PodTopologySpread=2,InterPodAffinity=2,GpuPlacement=5"
    )]
    score_weights: String,
    /// Requests per second to the API server, sustained (kube-scheduler's clientConnection.qps, default 50)
    #[arg(long, default_value_t = 50.0)]
    kube_api_qps: f64,
    /// Requests to the API server at once before the rate applies (kube-scheduler's clientConnection.burst)
    #[arg(long, default_value_t = 100)]
    kube_api_burst: u32,
    /// gpuplane's serving policy: pods at or above this priority are serving replicas, GPU pods below it are
    /// batch, kept off the fast GPU models while another GPU fits them (unset: no serving policy)
    #[arg(long, value_name = "PRIORITY")]
    serving_priority: Option<i32>,
    /// Replicas at or above this priority are interactive: they try the fast models first, may claim them
    /// from young batch pods, and the headroom is kept for them (default: --serving-priority)
    #[arg(long, value_name = "PRIORITY")]
    interactive_priority: Option<i32>,
    /// The fast GPU models (node GPU product names, e.g. A100-SXM4-80GB,H100-SXM5-80GB)
    #[arg(long, value_delimiter = ',', value_name = "MODELS")]
    fast_gpu_models: Vec<String>,
    /// Free capacity kept on the fast models: this × √(interactive replicas) replicas per service
    #[arg(long, default_value_t = 1.0)]
    serving_headroom: f64,
    /// Batch pods younger than this are claimed off a fast GPU for an interactive replica before it settles
    /// for a slower one (0: never)
    #[arg(long, default_value_t = 600, value_name = "SECS")]
    claim_age_secs: u64,
    /// How preemption chooses victims: least-work-lost (fewest GPU-seconds thrown away) or kube-scheduler
    #[arg(long, default_value = "least-work-lost")]
    victims: String,
    /// Log format on standard error: text or json (level from RUST_LOG, default info)
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

/// Runs the scheduler until SIGTERM, Ctrl-C, or a lost lease.
pub fn run(args: SchedulerArgs) -> Result<()> {
    let policy: Policy = args.policy.parse().context("--policy")?;
    if !(0.0..=1.0).contains(&args.locality_weight) {
        bail!("--locality-weight {} is out of range; expected 0 to 1", args.locality_weight);
    }
    if args.inventory_interval_secs == 0 {
        bail!("--inventory-interval-secs must be at least 1");
    }
    let &[local, peer, origin] = args.load_gbps.as_slice() else {
        bail!("--load-gbps takes three rates: local disk, peer, origin");
    };
    if [local, peer, origin].iter().any(|r| !r.is_finite() || *r <= 0.0) {
        bail!("--load-gbps {local},{peer},{origin}: every rate must be a positive number of GB/s");
    }
    if !(1..=gpuplane_sim::MAX_WINDOW).contains(&args.window) {
        bail!("--window {} is out of range; expected 1 to {} pods", args.window, gpuplane_sim::MAX_WINDOW);
    }
    if args.window_ms > 60_000 {
        bail!("--window-ms {} is out of range; a pod waits at most 60000 ms for its cycle", args.window_ms);
    }
    let scores: ScoreWeights =
        args.score_weights.parse().map_err(|e: String| anyhow::anyhow!("--score-weights: {e}"))?;
    if !(args.kube_api_qps.is_finite() && args.kube_api_qps > 0.0) || args.kube_api_burst == 0 {
        bail!("--kube-api-qps must be a positive number and --kube-api-burst at least 1");
    }
    if !(args.serving_headroom.is_finite() && (0.0..=100.0).contains(&args.serving_headroom)) {
        bail!("--serving-headroom {} is out of range; expected 0 to 100", args.serving_headroom);
    }
    let victims = match args.victims.as_str() {
        "least-work-lost" => VictimChoice::LeastWorkLost,
        "kube-scheduler" => VictimChoice::KubeScheduler,
        other => bail!("--victims {other:?}: expected least-work-lost or kube-scheduler"),
    };
    if args.serving_priority.is_none() && (args.interactive_priority.is_some() || !args.fast_gpu_models.is_empty()) {
        bail!("--interactive-priority and --fast-gpu-models need --serving-priority");
    }
    let serving = ServingConfig {
        priority: args.serving_priority,
        interactive_priority: args.interactive_priority.or(args.serving_priority).unwrap_or(0),
        fast_models: args.fast_gpu_models.clone(),
        headroom: args.serving_headroom,
        claim_age: Duration::from_secs(args.claim_age_secs),
        victims,
    };
    let rate = RateLimit { qps: args.kube_api_qps, burst: args.kube_api_burst };
    let bandwidth = Bandwidth { local: local * 1e9, peer: peer * 1e9, origin: origin * 1e9 };
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
            locality: LocalityConfig { weight: args.locality_weight, bandwidth },
            window: WindowConfig { pods: args.window, wait: Duration::from_millis(args.window_ms) },
            scores,
            serving,
            ..SchedulerConfig::default()
        },
        lease,
        metrics_listen: args.metrics_listen,
        inventory: (args.locality_weight > 0.0).then(|| InventoryPolling {
            token_file: args.cache_agent_token_file.clone(),
            interval: Duration::from_secs(args.inventory_interval_secs),
            default_port: args.cache_agent_port,
            ..InventoryPolling::default()
        }),
    };
    let fallback = service::fallback_target()?;
    service::runtime()?.block_on(async move {
        let config_ = kube::Config::infer().await.map_err(|e| ServeError::Client(kube::Error::InferConfig(e)))?;
        let client = kube::client::ClientBuilder::try_from(config_)
            .map_err(ServeError::Client)?
            .with_layer(&RateLimitLayer(rate))
            .build();
        serve_scheduler(client, config, Some(fallback), shutdown_signal()).await
    })?;
    Ok(())
}
