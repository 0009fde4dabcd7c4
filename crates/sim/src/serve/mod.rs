//! Inference serving over time on a shared GPU cluster: LLM requests from a public trace reach
//! autoscaled model replicas, whose pods the placement engine places among openb batch pods that come
//! and go; a replica starts after its weights are read from the fastest tier that holds them. Measures
//! time-to-first-token per latency class, cold starts, origin bytes and GPU allocation per stack.
//!
//! The model (every figure is a field of [`ServeConfig`], documented in `docs/serve-sim.md`):
//! - requests go to services by a seeded Zipf popularity (the traces carry no model ids);
//! - a client abandons a request without a first token after `clients.timeout_s` (the engine drops it),
//!   a service refuses requests beyond `clients.queue_limit` waiting, and a request served within its
//!   class's TTFT objective counts toward SLO attainment and goodput;
//! - a replica holds requests while their KV cache (prompt and output tokens) fits in the GPU memory its
//!   weights leave, at most `engine.max_num_seqs`, and runs them as vLLM's scheduler does ([`batching`]):
//!   steps of at most `engine.max_num_batched_tokens` tokens, decodes first, then chunked prompts; a step
//!   lasts the longer of its compute (2 × parameters × tokens at the GPU's TFLOPS) and its memory reads
//!   (the weights and the decoding sequences' KV cache at its bandwidth);
//! - the autoscaler aims at `target_concurrency` requests per replica and scales from zero on a request;
//! - a new replica is ready after scheduling, the weight read (page cache, local cache, peer, origin) and
//!   the engine start; a replica that fits nowhere waits, or evicts batch pods if its stack preempts, and
//!   then starts only after their termination grace period;
//! - a weight read finishes no earlier than the copy it reads from (a peer or the node cache still being
//!   filled), and reads of one origin link, one peer's NIC or one node's disk share its bandwidth
//!   ([`Link`]), first come, first served.

pub mod batching;
pub mod config;
pub mod requests;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::time::Instant;

use gpuplane_core::openb::TracePod;
use gpuplane_core::{GpuRequest, Node, Pod};
use gpuplane_place::defrag::Tenancy;
use gpuplane_place::preempt::Evictable;
use gpuplane_place::{
    Bandwidth, BindError, Cluster, ClusterError, Decision, Engine, EngineConfig, EngineError, Locality, Placement,
    PodRequest, Policy, Preemption, Reserve, ServingSteps, Slots, Step, TargetWorkload, TieBreak, Tier, WorkloadError,
};
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use rayon::prelude::*;
use serde::Serialize;
use thiserror::Error;

pub use config::{Batching, Clients, LatencyClass, ServeConfig, Service, Stack, TierBandwidth};

use batching::{Batcher, Output, StepCost};
pub use requests::{LlmRequest, read_azure, read_mooncake};

const GB: f64 = 1e9;

/// Why a serving simulation could not run.
#[derive(Debug, Error)]
pub enum ServeError {
    /// A configuration value is out of range or unknown.
    #[error("configuration: {0}")]
    Config(String),
    /// A trace file could not be read.
    #[error("trace: {0}")]
    Trace(String),
    /// The request trace has no request inside the horizon.
    #[error("the request trace has no request in the first {0} s")]
    NoRequests(f64),
    /// The cluster could not be built.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The engine could not be built.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The target workload could not be built.
    #[error(transparent)]
    Workload(#[from] WorkloadError),
    /// The cluster refused a placement or release the simulation made: a bug, reported rather than hidden.
    #[error("{what}: {source}")]
    Bind {
        /// What was being done.
        what: String,
        /// Why it was refused.
        source: BindError,
    },
}

/// Everything a run reads.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Parameters.
    pub config: ServeConfig,
    /// The cluster's nodes.
    pub nodes: Vec<Node>,
    /// The openb batch trace (creation and deletion times are required).
    pub batch: Vec<TracePod>,
    /// The LLM requests.
    pub requests: Vec<LlmRequest>,
}

/// TTFT percentiles of one latency class, seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    /// Requests.
    pub count: usize,
    /// Median.
    pub p50_s: f64,
    /// 95th percentile.
    pub p95_s: f64,
    /// 99th percentile.
    pub p99_s: f64,
    /// Largest.
    pub max_s: f64,
}

impl Percentiles {
    fn of(values: &mut [f64]) -> Percentiles {
        values.sort_unstable_by(f64::total_cmp);
        let at = |q: f64| {
            if values.is_empty() {
                0.0
            } else {
                values[((values.len() as f64 * q).ceil() as usize).clamp(1, values.len()) - 1]
            }
        };
        Percentiles { count: values.len(), p50_s: at(0.50), p95_s: at(0.95), p99_s: at(0.99), max_s: at(1.0) }
    }
}

/// The cluster at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ServeSample {
    /// Seconds from the start.
    pub t_s: f64,
    /// Allocated GPU milli, % of the cluster's.
    pub allocated_gpu_pct: f64,
    /// Of which inference replicas, %.
    pub inference_gpu_pct: f64,
    /// Free milli on partly used GPUs, % of the cluster's GPU milli: capacity only a small task can use.
    pub partial_free_gpu_pct: f64,
    /// Replicas serving.
    pub ready_replicas: u32,
    /// Replicas waiting for a node.
    pub pending_replicas: u32,
    /// Batch pods waiting for a node.
    pub pending_batch: u32,
}

/// How one latency class's requests fared.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct SloFigures {
    /// Requests of the class.
    pub requests: usize,
    /// Served: a first token within the client's timeout.
    pub served: usize,
    /// Abandoned by their client (no first token within the timeout).
    pub timed_out: usize,
    /// Refused: their service's queue was full.
    pub refused: usize,
    /// Served within the class's TTFT objective.
    pub within_slo: usize,
    /// `within_slo` as a share of `requests`, %.
    pub attainment_pct: f64,
    /// Requests served within the objective per second of the horizon.
    pub goodput_per_s: f64,
}

/// One service's figures under one stack.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceResult {
    /// Service name.
    pub name: String,
    /// Its latency class.
    pub class: LatencyClass,
    /// TTFT of its requests, seconds.
    pub ttft: Percentiles,
    /// Its requests that arrived with no ready replica.
    pub cold_start_requests: usize,
    /// Replica starts per GPU model they landed on.
    pub replica_starts_by_gpu: BTreeMap<String, u64>,
}

/// One stack's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StackResult {
    /// Stack name.
    pub name: String,
    /// Placement policy.
    pub policy: String,
    /// TTFT of served requests per latency class, seconds.
    pub ttft: BTreeMap<String, Percentiles>,
    /// Per latency class: served, timed out, refused, SLO attainment and goodput.
    pub slo: BTreeMap<String, SloFigures>,
    /// Requests replayed.
    pub requests: usize,
    /// Requests still waiting at the end (horizon plus drain), neither served nor abandoned.
    pub unserved: usize,
    /// Requests that arrived while their service had no ready replica.
    pub cold_start_requests: usize,
    /// Replica starts, per tier the weights were read from.
    pub replica_starts: BTreeMap<String, u64>,
    /// Weight bytes read from the origin, GB.
    pub origin_gb: f64,
    /// Mean allocated GPU % over the samples up to the horizon.
    pub mean_allocated_gpu_pct: f64,
    /// Mean free milli on partly used GPUs, % of the cluster's, up to the horizon.
    pub mean_partial_free_gpu_pct: f64,
    /// Batch pods evicted by replicas.
    pub batch_evictions: u64,
    /// GPU-hours of batch work lost to evictions (restarted from scratch).
    pub batch_gpu_hours_lost: f64,
    /// Per service, in configuration order.
    pub services: Vec<ServiceResult>,
    /// Samples over time.
    pub samples: Vec<ServeSample>,
    /// Every replica's weight read.
    #[serde(skip)]
    pub loads: Vec<LoadRecord>,
    /// Seconds of CPU time the run took.
    pub wall_s: f64,
}

impl StackResult {
    /// TTFT percentiles of a class, if it had requests.
    pub fn class(&self, class: LatencyClass) -> Option<&Percentiles> {
        self.ttft.get(class.name()).filter(|p| p.count > 0)
    }
}

/// A whole serving simulation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServeResult {
    /// Seed of the popularity draw.
    pub seed: u64,
    /// Requests inside the horizon.
    pub requests: usize,
    /// Factor openb's gaps between creations were shortened by to reach the offered load.
    pub batch_time_compression: f64,
    /// Batch pods that arrive during the run (including those running at the start).
    pub batch_pods: usize,
    /// Per stack.
    pub stacks: Vec<StackResult>,
}

/// Runs every stack of the configuration (in parallel) with the given seed.
pub fn run(setup: &Setup, seed: u64) -> Result<ServeResult, ServeError> {
    setup.config.validate()?;
    let prepared = Prepared::new(setup, seed)?;
    let stacks = setup
        .config
        .stacks
        .par_iter()
        .map(|stack| World::new(&prepared, stack)?.run())
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ServeResult {
        seed,
        requests: prepared.requests.len(),
        batch_time_compression: prepared.compression,
        batch_pods: prepared.batch.len(),
        stacks,
    })
}

/// The same setup with the load bandwidths, the engine start and the scheduling latency each scaled
/// by `factor`.
pub fn scaled_costs(config: &ServeConfig, bandwidth: f64, startup: f64) -> ServeConfig {
    let mut c = config.clone();
    c.bandwidth_gbps = c.bandwidth_gbps.scaled(bandwidth);
    c.engine_startup_s *= startup;
    c.scheduling_latency_s *= startup;
    c
}

/// A batch pod of the window: when it arrives and how long it runs.
#[derive(Debug, Clone)]
struct BatchPod {
    arrive_s: f64,
    duration_s: f64,
    request: PodRequest,
}

/// A service with what its replicas need, per GPU model of the cluster.
#[derive(Debug, Clone)]
struct ServiceModel {
    config: Service,
    request: PodRequest,
    /// The same replica restricted to the GPU models at least half as fast as the fastest it accepts,
    /// when that excludes some.
    fast_request: Option<PodRequest>,
    /// The GPU models of `fast_request`.
    fast_models: Vec<String>,
    bytes: f64,
    /// Per cluster model index: step costs and KV capacity, if the model can hold a replica.
    speed: Vec<Option<Speed>>,
}

/// What every stack shares: the cluster, the batch window, the requests and their services.
struct Prepared<'a> {
    config: &'a ServeConfig,
    cluster: Cluster,
    batch: Vec<BatchPod>,
    compression: f64,
    requests: Vec<LlmRequest>,
    assignment: Vec<u16>,
    services: Vec<ServiceModel>,
    target: TargetWorkload,
    /// The GPU models interactive replicas prefer, reserved against batch pods (below every service's
    /// priority) by stacks that reserve.
    reserve: Reserve,
}

impl<'a> Prepared<'a> {
    fn new(setup: &'a Setup, seed: u64) -> Result<Self, ServeError> {
        let config = &setup.config;
        let cluster = Cluster::new(&setup.nodes)?;
        let requests: Vec<LlmRequest> = setup.requests.iter().copied().filter(|r| r.at_s < config.horizon_s).collect();
        if requests.is_empty() {
            return Err(ServeError::NoRequests(config.horizon_s));
        }
        let requests = superposed(&requests, config.request_rate_scale, seed);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (batch, compression) = batch_window(config, &cluster, &setup.batch, &mut rng)?;
        let services =
            config.services.iter().map(|s| service_model(config, &cluster, s)).collect::<Result<Vec<_>, _>>()?;
        // Zipf popularity, drawn once so that every stack serves the same requests.
        let weights: Vec<f64> = (1..=services.len()).map(|k| 1.0 / (k as f64).powf(config.popularity_zipf)).collect();
        let total: f64 = weights.iter().sum();
        let assignment = requests
            .iter()
            .map(|_| {
                let mut x = rng.random::<f64>() * total;
                let mut k = 0;
                while k + 1 < weights.len() && x >= weights[k] {
                    x -= weights[k];
                    k += 1;
                }
                k as u16
            })
            .collect();
        let shapes: Vec<&PodRequest> =
            batch.iter().map(|b| &b.request).chain(services.iter().map(|s| &s.request)).collect();
        let target = TargetWorkload::from_requests(shapes, crate::TARGET_COVERAGE)?;
        let fast: Vec<String> = services
            .iter()
            .filter(|s| s.config.class == LatencyClass::Interactive)
            .flat_map(|s| s.fast_models.iter().cloned())
            .collect();
        let reserve = Reserve::new(&cluster, &fast, config.services.iter().map(|s| s.priority).min().unwrap_or(0));
        Ok(Prepared { config, cluster, batch, compression, requests, assignment, services, target, reserve })
    }
}

/// The trace at `scale` times its rate: copies of it superposed, each shifted by a seeded offset and
/// wrapped around the trace's span, so every copy keeps the trace's burstiness and token counts. The
/// first copy is the trace itself; a fractional last copy keeps each request with that chance. Scale 1
/// returns the trace unchanged.
fn superposed(requests: &[LlmRequest], scale: f64, seed: u64) -> Vec<LlmRequest> {
    if scale == 1.0 {
        return requests.to_vec();
    }
    // A stream of its own, so the popularity draw and the batch window do not depend on the scale.
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_5ca1e);
    let span = requests.iter().map(|r| r.at_s).fold(0.0, f64::max).max(1e-6) * (1.0 + 1e-9);
    let mut out = Vec::with_capacity((requests.len() as f64 * scale).ceil() as usize);
    let copies = scale.ceil() as usize;
    for k in 0..copies {
        let keep = (scale - k as f64).min(1.0);
        let offset = if k == 0 { 0.0 } else { rng.random::<f64>() * span };
        for r in requests {
            if keep < 1.0 && rng.random::<f64>() >= keep {
                continue;
            }
            out.push(LlmRequest { at_s: (r.at_s + offset) % span, ..*r });
        }
    }
    out.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    out
}

/// The batch pods of the serving window, an M/G/∞ replay of the openb trace at `offered_load`.
///
/// Each pod keeps its duration (deletion − creation) and arrives in openb's creation order, starting at
/// the `window_start` quantile; the gaps between creations are openb's own (its burstiness), scaled so
/// that the arrival rate λ gives a GPU demand of `offered_load` of the cluster by Little's law
/// (λ = load / mean GPU-seconds per pod). Gaps come from the dense part of the trace (between the 5th and
/// 95th percentile creation times; openb's creations are bunched in the last fifth of its span), which
/// the replay cycles through. The cluster starts in the steady state: λ·E[duration] pods running, drawn
/// in proportion to their durations, each with a uniformly drawn part of its run left.
fn batch_window(
    config: &ServeConfig,
    cluster: &Cluster,
    trace: &[TracePod],
    rng: &mut ChaCha8Rng,
) -> Result<(Vec<BatchPod>, f64), ServeError> {
    if config.batch.offered_load == 0.0 || trace.is_empty() {
        return Ok((Vec::new(), 0.0));
    }
    let mut timed = Vec::with_capacity(trace.len());
    for t in trace {
        let (Some(created), Some(deleted)) = (t.creation_time, t.deletion_time) else {
            return Err(ServeError::Trace(format!(
                "batch pod {}: creation_time and deletion_time are needed to replay it over time",
                t.pod.name
            )));
        };
        timed.push((created as f64, deleted.saturating_sub(created).max(1) as f64, cluster.request(&t.pod)));
    }
    timed.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n = timed.len();
    let gpu_seconds: f64 = timed.iter().map(|t| f64::from(t.2.gpu.total_milli()) * t.1).sum();
    if gpu_seconds == 0.0 {
        return Ok((Vec::new(), 0.0));
    }
    let rate = config.batch.offered_load * cluster.total_gpu_milli() as f64 / (gpu_seconds / n as f64);
    let expected = rate * (config.horizon_s + config.drain_s + timed.iter().map(|t| t.1).sum::<f64>() / n as f64);
    if expected > config::MAX_BATCH_PODS {
        return Err(ServeError::Config(format!(
            "batch.offered_load {} needs about {expected:.0} batch pods over the run with this trace's durations; \
             at most {} are replayed",
            config.batch.offered_load,
            config::MAX_BATCH_PODS
        )));
    }
    let (lo, hi) = (((n - 1) as f64 * 0.05) as usize, ((n - 1) as f64 * 0.95) as usize);
    // A trace whose creations share one instant has no gaps to replay: arrivals then come every 1/λ.
    let dense_gap = (timed[hi].0 - timed[lo].0) / (hi - lo).max(1) as f64;
    let dense_gap = if dense_gap > 0.0 { dense_gap } else { 1.0 / rate };
    let compression = if dense_gap > 0.0 { dense_gap * rate } else { 1.0 };

    // Steady state at 0: length-biased draws with a uniform remainder.
    let mean_duration = timed.iter().map(|t| t.1).sum::<f64>() / n as f64;
    let running = (rate * mean_duration).round() as usize;
    let total_duration = mean_duration * n as f64;
    let mut pods = Vec::new();
    for _ in 0..running {
        let mut x = rng.random::<f64>() * total_duration;
        let pick = timed.iter().position(|t| {
            x -= t.1;
            x < 0.0
        });
        let t = &timed[pick.unwrap_or(n - 1)];
        pods.push(BatchPod { arrive_s: 0.0, duration_s: t.1 * rng.random::<f64>().max(1e-9), request: t.2.clone() });
    }
    // Arrivals: openb's order and gaps from the start quantile, cycling through the dense part.
    let end = config.horizon_s + config.drain_s;
    let mut i = (((n - 1) as f64 * config.batch.window_start) as usize).clamp(lo, hi);
    let mut at = 0.0;
    while at < end {
        let next = if i >= hi { lo } else { i + 1 };
        let gap = if next > i && timed[next].0 > timed[i].0 { timed[next].0 - timed[i].0 } else { dense_gap };
        at += gap / compression;
        i = next;
        if at < end {
            pods.push(BatchPod { arrive_s: at, duration_s: timed[i].1, request: timed[i].2.clone() });
        }
    }
    Ok((pods, compression))
}

/// Bytes of KV cache one token holds: keys and values, every layer, every KV head, BF16.
pub fn kv_bytes_per_token(s: &Service) -> f64 {
    2.0 * f64::from(s.layers) * f64::from(s.kv_heads) * f64::from(s.head_dim) * 2.0
}

/// What a replica of a service can do on one GPU model.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct Speed {
    /// What an engine step costs.
    cost: StepCost,
    /// Tokens of KV cache the GPU memory left by the weights holds.
    kv_tokens: f64,
}

fn service_model(config: &ServeConfig, cluster: &Cluster, s: &Service) -> Result<ServiceModel, ServeError> {
    let share = f64::from(s.gpu_milli) / 1000.0;
    let per_gpu_gb = s.weight_gb / f64::from(s.gpus) * config.memory_headroom;
    let mut accepted = Vec::new();
    let speed: Vec<Option<Speed>> = cluster
        .models()
        .iter()
        .map(|model| {
            let spec = config.gpus.get(model)?;
            if spec.memory_gb * share < per_gpu_gb || spec.compute_capability < config.engine.min_compute_capability {
                return None;
            }
            accepted.push(model.clone());
            let flops = spec.tflops * 1e12 * f64::from(s.gpus) * share;
            let bandwidth = spec.memory_bandwidth_gbps * GB * f64::from(s.gpus) * share;
            let cost = StepCost {
                per_token_s: 2.0 * s.params_b * 1e9 / flops,
                weights_s: s.weight_gb * GB / bandwidth,
                kv_per_token_s: kv_bytes_per_token(s) / bandwidth,
            };
            let memory = spec.memory_gb * GB * f64::from(s.gpus) * share * config.gpu_memory_utilization;
            let kv_tokens = ((memory - s.weight_gb * GB) / kv_bytes_per_token(s)).max(0.0);
            Some(Speed { cost, kv_tokens })
        })
        .collect();
    if accepted.is_empty() {
        return Err(ServeError::Config(format!(
            "services[{}]: no GPU model of the cluster has {per_gpu_gb:.1} GB for it per GPU (weights × memory_headroom) \
             and compute capability {} or more (engine.min_compute_capability)",
            s.name, config.engine.min_compute_capability
        )));
    }
    let mut pod = Pod::with_requests(
        s.name.clone(),
        s.cpu_milli,
        (s.memory_gb * GB) as u64,
        GpuRequest { count: s.gpus, milli_per_gpu: s.gpu_milli },
    );
    pod.priority = s.priority;
    let tflops = |m: &String| config.gpus.get(m).map_or(0.0, |g| g.tflops);
    let fastest = accepted.iter().map(tflops).fold(0.0, f64::max);
    let fast: Vec<String> = accepted.iter().filter(|m| tflops(m) >= fastest / 2.0).cloned().collect();
    let fast_models = if fast.len() < accepted.len() { fast } else { Vec::new() };
    let fast_request = (!fast_models.is_empty()).then(|| {
        let mut fast_pod = pod.clone();
        fast_pod.gpu_models = fast_models.clone();
        cluster.request(&fast_pod)
    });
    pod.gpu_models = accepted;
    let request = cluster.request(&pod);
    Ok(ServiceModel { config: s.clone(), request, fast_request, fast_models, bytes: s.weight_gb * GB, speed })
}

/// Where a replica read its weights from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum LoadTier {
    PageCache,
    Local,
    Peer,
    Origin,
}

impl LoadTier {
    fn name(self) -> &'static str {
        match self {
            LoadTier::PageCache => "page-cache",
            LoadTier::Local => "local",
            LoadTier::Peer => "peer",
            LoadTier::Origin => "origin",
        }
    }
}

/// A transfer resource shared by the reads that use it at once — the cluster's link to the origin, a
/// node's NIC serving peers, a node's disk — handed out first come, first served: the bytes it has
/// carried by any time never exceed its capacity times the time it was busy.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Link {
    busy_until: f64,
}

impl Link {
    /// Carries `bytes` at `capacity` (bytes per second) from `now` at the earliest; when they are through.
    pub fn carry(&mut self, now: f64, bytes: f64, capacity: f64) -> f64 {
        let start = self.busy_until.max(now);
        self.busy_until = start + bytes / capacity;
        self.busy_until
    }
}

/// A model in a node's cache: when it was last used, and when its bytes are all on the node.
#[derive(Debug, Clone, Copy)]
struct CacheEntry {
    service: usize,
    last_use: f64,
    complete_at: f64,
}

/// How one replica got its weights: where from, when the copy it read was complete, when its read
/// began and ended. Kept for the causality checks.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LoadRecord {
    /// Service index.
    pub service: usize,
    /// The node the replica runs on.
    pub node: usize,
    /// The node whose copy was read (this node for the page cache and the node cache, the holder for a
    /// peer read); none for the origin.
    pub source_node: Option<usize>,
    /// Tier read from (`page-cache`, `local`, `peer`, `origin`).
    pub tier: &'static str,
    /// When the read could start (placement, scheduling latency and any termination grace later).
    pub start_s: f64,
    /// When the source held every byte (the start for the origin).
    pub source_complete_s: f64,
    /// When the read ended.
    pub loaded_s: f64,
    /// When the replica was ready (the engine started).
    pub ready_s: f64,
    /// Bytes read.
    pub bytes: f64,
    /// The tier's rate per reader, bytes per second.
    pub rate: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReplicaState {
    Pending,
    Starting,
    Ready,
    Gone,
}

#[derive(Debug, Clone)]
struct Replica {
    service: usize,
    state: ReplicaState,
    placement: Option<Placement>,
    in_flight: u32,
    /// Its engine's batches.
    batcher: Batcher,
    /// When its next engine event is queued for, microseconds (earlier queued events are stale).
    step_at: Option<u64>,
    /// Step costs and KV capacity on the node it runs on.
    speed: Speed,
    /// KV-cache tokens held by its requests.
    kv_used: f64,
    /// When its weights are in memory (the page-cache source for another replica on its node).
    loaded_at: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// Order at equal times: departures free room before arrivals ask for it.
    BatchDepart {
        pod: u32,
        generation: u32,
    },
    ReplicaStep {
        replica: u32,
    },
    ReplicaReady {
        replica: u32,
    },
    BatchArrive {
        pod: u32,
    },
    Request {
        index: u32,
    },
    RequestTimeout {
        index: u32,
    },
    Autoscale,
    Sample,
}

#[derive(Debug, Clone, Default)]
struct ServiceState {
    queue: VecDeque<u32>,
    replicas: Vec<u32>,
    below_since: Option<f64>,
    /// TTFT of served requests.
    ttft: Vec<f64>,
    slo: SloFigures,
    cold_start_requests: usize,
    starts_by_gpu: BTreeMap<String, u64>,
}

/// One stack's simulation.
struct World<'p> {
    p: &'p Prepared<'p>,
    stack: &'p Stack,
    cluster: Cluster,
    engine: Engine,
    tenancy: Tenancy,
    /// GPU models batch pods keep off while another GPU fits them (empty unless the stack reserves).
    reserve: Reserve,
    now: f64,
    events: BinaryHeap<Reverse<(u64, u64, Event)>>,
    seq: u64,
    batch_generation: Vec<u32>,
    batch_started: Vec<f64>,
    pending_batch: VecDeque<u32>,
    services: Vec<ServiceState>,
    replicas: Vec<Replica>,
    /// Per request: the replica prefilling its prompt, until its first token.
    prefilling: Vec<Option<u32>>,
    /// Engine outputs being handled.
    outputs: Vec<Output>,
    /// Per node: cached models, and bytes held.
    node_cache: Vec<Vec<CacheEntry>>,
    node_cache_bytes: Vec<f64>,
    holders: Vec<u32>,
    origin_link: Link,
    nic: Vec<Link>,
    disk: Vec<Link>,
    loads: Vec<LoadRecord>,
    starts: BTreeMap<LoadTier, u64>,
    origin_bytes: f64,
    evictions: u64,
    gpu_seconds_lost: f64,
    samples: Vec<ServeSample>,
    inference_milli: u64,
}

fn micros(t: f64) -> u64 {
    (t.max(0.0) * 1e6).round() as u64
}

impl<'p> World<'p> {
    fn new(p: &'p Prepared<'p>, stack: &'p Stack) -> Result<Self, ServeError> {
        let policy = stack.parsed_policy()?;
        let target = (policy != Policy::Gpuplane).then(|| std::sync::Arc::new(p.target.clone()));
        let engine = Engine::new(EngineConfig { policy, target, seed: 0, tie_break: TieBreak::LowestName })?;
        let cluster = p.cluster.clone();
        let nodes = cluster.len();
        let reserve = if stack.reserve_fast {
            // Each service's replica shape: an interactive one's on the fast models it prefers.
            let shapes =
                p.services.iter().map(|s| s.fast_request.clone().unwrap_or_else(|| s.request.clone())).collect();
            p.reserve.clone().with_slots(Slots::new(&cluster, shapes))
        } else {
            Reserve::none()
        };
        Ok(World {
            p,
            stack,
            reserve,
            tenancy: Tenancy::new(nodes),
            cluster,
            engine,
            now: 0.0,
            events: BinaryHeap::new(),
            seq: 0,
            batch_generation: vec![0; p.batch.len()],
            batch_started: vec![0.0; p.batch.len()],
            pending_batch: VecDeque::new(),
            services: vec![ServiceState::default(); p.services.len()],
            replicas: Vec::new(),
            prefilling: vec![None; p.requests.len()],
            outputs: Vec::new(),
            node_cache: vec![Vec::new(); nodes],
            node_cache_bytes: vec![0.0; nodes],
            holders: vec![0; p.services.len()],
            origin_link: Link::default(),
            nic: vec![Link::default(); nodes],
            disk: vec![Link::default(); nodes],
            loads: Vec::new(),
            starts: BTreeMap::new(),
            origin_bytes: 0.0,
            evictions: 0,
            gpu_seconds_lost: 0.0,
            samples: Vec::new(),
            inference_milli: 0,
        })
    }

    fn at(&mut self, t: f64, event: Event) {
        self.seq += 1;
        self.events.push(Reverse((micros(t), self.seq, event)));
    }

    fn run(mut self) -> Result<StackResult, ServeError> {
        let clock = Instant::now();
        let config = self.p.config;
        let end = config.horizon_s + config.drain_s;
        for (i, b) in self.p.batch.iter().enumerate() {
            self.at(b.arrive_s, Event::BatchArrive { pod: i as u32 });
        }
        for (i, r) in self.p.requests.iter().enumerate() {
            self.at(r.at_s, Event::Request { index: i as u32 });
        }
        // Services with a floor start with it, placed before the first request like a deployment would be.
        for s in 0..self.p.services.len() {
            for _ in 0..self.p.services[s].config.min_replicas {
                self.add_replica(s)?;
            }
        }
        self.at(config.autoscale.interval_s, Event::Autoscale);
        self.at(0.0, Event::Sample);
        while let Some(Reverse((t, _, event))) = self.events.pop() {
            let t = t as f64 / 1e6;
            if t > end {
                break;
            }
            self.now = t;
            match event {
                Event::BatchArrive { pod } => self.batch_arrive(pod)?,
                Event::BatchDepart { pod, generation } => self.batch_depart(pod, generation)?,
                Event::Request { index } => self.request(index)?,
                Event::RequestTimeout { index } => self.request_timeout(index),
                Event::ReplicaStep { replica } => {
                    if self.replicas[replica as usize].step_at == Some(micros(t)) {
                        self.replicas[replica as usize].step_at = None;
                        self.step(replica as usize, |b, now, out| b.advance(now, out));
                    }
                }
                Event::ReplicaReady { replica } => {
                    let r = &mut self.replicas[replica as usize];
                    if r.state == ReplicaState::Starting {
                        r.state = ReplicaState::Ready;
                        let service = r.service;
                        self.dispatch(service);
                    }
                }
                Event::Autoscale => {
                    self.autoscale()?;
                    self.at(t + config.autoscale.interval_s, Event::Autoscale);
                }
                Event::Sample => {
                    self.sample();
                    self.at(t + config.sample_interval_s, Event::Sample);
                }
            }
        }
        Ok(self.finish(clock))
    }

    fn finish(mut self, clock: Instant) -> StackResult {
        // Per-class figures pool the services'.
        let horizon = self.p.config.horizon_s;
        let mut unserved = 0;
        let mut by_class: BTreeMap<LatencyClass, Vec<f64>> = BTreeMap::new();
        let mut slo: BTreeMap<LatencyClass, SloFigures> = BTreeMap::new();
        unserved += self.prefilling.iter().flatten().count();
        for (state, model) in self.services.iter().zip(&self.p.services) {
            unserved += state.queue.len();
            by_class.entry(model.config.class).or_default().extend_from_slice(&state.ttft);
            let f = slo.entry(model.config.class).or_default();
            f.requests += state.slo.requests;
            f.served += state.slo.served;
            f.timed_out += state.slo.timed_out;
            f.refused += state.slo.refused;
            f.within_slo += state.slo.within_slo;
        }
        for f in slo.values_mut() {
            f.attainment_pct = if f.requests > 0 { 100.0 * f.within_slo as f64 / f.requests as f64 } else { 0.0 };
            f.goodput_per_s = f.within_slo as f64 / horizon;
        }
        let services: Vec<ServiceResult> = self
            .services
            .iter_mut()
            .zip(&self.p.services)
            .map(|(state, model)| ServiceResult {
                name: model.config.name.clone(),
                class: model.config.class,
                ttft: Percentiles::of(&mut state.ttft),
                cold_start_requests: state.cold_start_requests,
                replica_starts_by_gpu: std::mem::take(&mut state.starts_by_gpu),
            })
            .collect();
        let within: Vec<&ServeSample> = self.samples.iter().filter(|s| s.t_s <= horizon).collect();
        let mean = |f: fn(&ServeSample) -> f64| {
            if within.is_empty() { 0.0 } else { within.iter().map(|s| f(s)).sum::<f64>() / within.len() as f64 }
        };
        StackResult {
            name: self.stack.name.clone(),
            policy: self.stack.policy.clone(),
            ttft: by_class.iter_mut().map(|(c, v)| (c.name().to_owned(), Percentiles::of(v))).collect(),
            slo: slo.into_iter().map(|(c, f)| (c.name().to_owned(), f)).collect(),
            requests: self.p.requests.len(),
            unserved,
            cold_start_requests: services.iter().map(|s| s.cold_start_requests).sum(),
            replica_starts: self.starts.iter().map(|(t, n)| (t.name().to_owned(), *n)).collect(),
            origin_gb: self.origin_bytes / GB,
            mean_allocated_gpu_pct: mean(|s| s.allocated_gpu_pct),
            mean_partial_free_gpu_pct: mean(|s| s.partial_free_gpu_pct),
            batch_evictions: self.evictions,
            batch_gpu_hours_lost: self.gpu_seconds_lost / 3600.0,
            services,
            samples: self.samples,
            loads: self.loads,
            wall_s: clock.elapsed().as_secs_f64(),
        }
    }

    fn sample(&mut self) {
        let total = self.cluster.total_gpu_milli() as f64;
        let partial: u64 = self
            .cluster
            .nodes()
            .iter()
            .flat_map(|n| n.gpus().iter())
            .filter(|&&g| g > 0 && g < 1000)
            .map(|&g| u64::from(g))
            .sum();
        let count = |state: ReplicaState| self.replicas.iter().filter(|r| r.state == state).count() as u32;
        self.samples.push(ServeSample {
            t_s: self.now,
            allocated_gpu_pct: 100.0 * self.cluster.allocated_gpu_milli() as f64 / total,
            inference_gpu_pct: 100.0 * self.inference_milli as f64 / total,
            partial_free_gpu_pct: 100.0 * partial as f64 / total,
            ready_replicas: count(ReplicaState::Ready),
            pending_replicas: count(ReplicaState::Pending),
            pending_batch: self.pending_batch.len() as u32,
        });
    }

    // ----- batch pods -----

    fn batch_arrive(&mut self, pod: u32) -> Result<(), ServeError> {
        let request = &self.p.batch[pod as usize].request;
        self.engine.observe(request);
        if !self.try_place_batch(pod)? {
            self.pending_batch.push_back(pod);
        }
        Ok(())
    }

    fn try_place_batch(&mut self, pod: u32) -> Result<bool, ServeError> {
        let request = &self.p.batch[pod as usize].request;
        let Decision::Place(placement) = self.engine.decide_reserving(&self.cluster, request, &self.reserve) else {
            return Ok(false);
        };
        self.bind(request, &placement, "batch pod")?;
        self.tenancy.add(pod as usize, request.clone(), placement);
        self.batch_started[pod as usize] = self.now;
        let generation = self.batch_generation[pod as usize];
        let duration = self.p.batch[pod as usize].duration_s;
        self.at(self.now + duration, Event::BatchDepart { pod, generation });
        Ok(true)
    }

    fn batch_depart(&mut self, pod: u32, generation: u32) -> Result<(), ServeError> {
        if self.batch_generation[pod as usize] != generation {
            return Ok(()); // Evicted since; its restart has its own departure.
        }
        if let Some((request, placement)) = self.tenancy.remove(pod as usize) {
            self.release(&request, &placement, "batch pod")?;
        }
        self.room_freed()
    }

    /// Replicas waiting for a node get another try.
    fn retry_pending_replicas(&mut self) -> Result<(), ServeError> {
        for r in 0..self.replicas.len() {
            if self.replicas[r].state == ReplicaState::Pending {
                self.try_place_replica(r)?;
            }
        }
        Ok(())
    }

    /// Pods waiting for room get another try, replicas first (they have the higher priority), then every
    /// waiting batch pod in arrival order, as kube-scheduler moves its unschedulable pods back to the
    /// active queue when a pod is deleted. A request that did not fit is not asked again in the same pass
    /// until something is placed (the cluster has not changed for it).
    fn room_freed(&mut self) -> Result<(), ServeError> {
        self.retry_pending_replicas()?;
        let mut failed: Vec<&PodRequest> = Vec::new();
        let mut i = 0;
        while i < self.pending_batch.len() {
            let pod = self.pending_batch[i];
            let request = &self.p.batch[pod as usize].request;
            if failed.contains(&request) {
                i += 1;
                continue;
            }
            if self.try_place_batch(pod)? {
                self.pending_batch.remove(i);
                failed.clear();
            } else {
                failed.push(request);
                i += 1;
            }
        }
        Ok(())
    }

    fn bind(&mut self, request: &PodRequest, placement: &Placement, what: &str) -> Result<(), ServeError> {
        self.cluster
            .bind(request, placement)
            .map_err(|source| ServeError::Bind { what: format!("bind {what}"), source })?;
        self.reserve.slots_mut().refresh(&self.cluster, placement.node);
        Ok(())
    }

    fn release(&mut self, request: &PodRequest, placement: &Placement, what: &str) -> Result<(), ServeError> {
        self.cluster
            .release(request, placement)
            .map_err(|source| ServeError::Bind { what: format!("release {what}"), source })?;
        self.reserve.slots_mut().refresh(&self.cluster, placement.node);
        Ok(())
    }

    // ----- requests -----

    fn request(&mut self, index: u32) -> Result<(), ServeError> {
        let service = usize::from(self.p.assignment[index as usize]);
        let clients = self.p.config.clients;
        self.services[service].slo.requests += 1;
        if self.services[service].queue.len() >= clients.queue_limit as usize {
            self.services[service].slo.refused += 1;
            return Ok(());
        }
        let state = &self.services[service];
        let ready = state.replicas.iter().any(|&r| self.replicas[r as usize].state == ReplicaState::Ready);
        let active = state.replicas.iter().any(|&r| self.replicas[r as usize].state != ReplicaState::Gone);
        if !ready {
            self.services[service].cold_start_requests += 1;
        }
        self.services[service].queue.push_back(index);
        self.at(self.p.requests[index as usize].at_s + clients.timeout_s, Event::RequestTimeout { index });
        if !active {
            // Scale from zero at once: the request is held until a replica is up.
            self.add_replica(service)?;
        }
        self.dispatch(service);
        Ok(())
    }

    /// The client of a request without a first token gives up: it leaves the queue, or its replica
    /// drops its prompt.
    fn request_timeout(&mut self, index: u32) {
        let service = usize::from(self.p.assignment[index as usize]);
        let queue = &mut self.services[service].queue;
        if let Some(at) = queue.iter().position(|&i| i == index) {
            queue.remove(at);
            self.services[service].slo.timed_out += 1;
        } else if let Some(replica) = self.prefilling[index as usize] {
            let replica = replica as usize;
            let mut aborted = false;
            self.engine_do(replica, |b, now, out| aborted = b.abort(now, index, out));
            if aborted {
                self.prefilling[index as usize] = None;
                self.services[service].slo.timed_out += 1;
                self.release_request(replica, index);
            }
            self.dispatch(service);
            self.schedule_step(replica);
        }
    }

    /// KV-cache tokens a request holds on its replica: its prompt and its whole output.
    fn kv_tokens(&self, index: u32) -> f64 {
        let r = self.p.requests[index as usize];
        f64::from(r.context_tokens) + f64::from(r.generated_tokens)
    }

    fn release_request(&mut self, replica: usize, index: u32) {
        let tokens = self.kv_tokens(index);
        let r = &mut self.replicas[replica];
        r.in_flight = r.in_flight.saturating_sub(1);
        r.kv_used = (r.kv_used - tokens).max(0.0);
    }

    /// Does `f` to a replica's engine now and handles what came out, then gives the room to queued
    /// requests and queues the engine's next event.
    fn step(&mut self, replica: usize, f: impl FnOnce(&mut Batcher, f64, &mut Vec<Output>)) {
        self.engine_do(replica, f);
        let service = self.replicas[replica].service;
        self.dispatch(service);
        self.schedule_step(replica);
    }

    /// Does `f` to a replica's engine now and handles what came out: first tokens count toward the SLO,
    /// finished requests free their room.
    fn engine_do(&mut self, replica: usize, f: impl FnOnce(&mut Batcher, f64, &mut Vec<Output>)) {
        let mut outputs = std::mem::take(&mut self.outputs);
        f(&mut self.replicas[replica].batcher, self.now, &mut outputs);
        let service = self.replicas[replica].service;
        let clients = self.p.config.clients;
        let slo = clients.slo_s(self.p.services[service].config.class);
        for output in outputs.drain(..) {
            match output {
                Output::FirstToken { id, at_s } => {
                    self.prefilling[id as usize] = None;
                    let ttft = at_s - self.p.requests[id as usize].at_s;
                    let state = &mut self.services[service];
                    state.slo.served += 1;
                    if ttft <= slo {
                        state.slo.within_slo += 1;
                    }
                    state.ttft.push(ttft);
                }
                Output::Finished { id, .. } => self.release_request(replica, id),
            }
        }
        self.outputs = outputs;
    }

    /// Queues the replica engine's next event unless it is queued already.
    fn schedule_step(&mut self, replica: usize) {
        let next_s = self.replicas[replica].batcher.next_change_s();
        let next = next_s.map(micros);
        if next != self.replicas[replica].step_at {
            self.replicas[replica].step_at = next;
            if let Some(at) = next_s {
                self.at(at, Event::ReplicaStep { replica: replica as u32 });
            }
        }
    }

    /// Hands queued requests to ready replicas with room, the one with the least prompt work queued.
    fn dispatch(&mut self, service: usize) {
        let max = self.p.config.engine.max_num_seqs;
        let mut touched: Vec<usize> = Vec::new();
        while let Some(&index) = self.services[service].queue.front() {
            let request = self.p.requests[index as usize];
            let tokens = self.kv_tokens(index);
            let ready = |r: &Replica| r.state == ReplicaState::Ready;
            let replicas = &self.services[service].replicas;
            let largest_cache = replicas
                .iter()
                .map(|&r| &self.replicas[r as usize])
                .filter(|r| ready(r))
                .map(|r| r.speed.kv_tokens)
                .reduce(f64::max);
            if largest_cache.is_some_and(|c| tokens > c) {
                // Longer than any ready replica's whole KV cache: the engine refuses it at once.
                self.services[service].queue.pop_front();
                self.services[service].slo.refused += 1;
                continue;
            }
            let best = replicas
                .iter()
                .copied()
                .filter(|&r| {
                    let r = &self.replicas[r as usize];
                    ready(r) && r.in_flight < max && r.kv_used + tokens <= r.speed.kv_tokens
                })
                .min_by_key(|&r| {
                    let r = &self.replicas[r as usize];
                    (r.batcher.queued_prompt_tokens(), r.in_flight)
                });
            let Some(replica) = best else { break };
            self.services[service].queue.pop_front();
            let r = &mut self.replicas[replica as usize];
            r.in_flight += 1;
            r.kv_used += tokens;
            self.prefilling[index as usize] = Some(replica);
            // A run ending within the clock's microsecond may report here rather than at its own event.
            self.engine_do(replica as usize, |b, now, out| {
                b.admit(now, index, request.context_tokens, request.generated_tokens, out);
            });
            if !touched.contains(&(replica as usize)) {
                touched.push(replica as usize);
            }
        }
        for r in touched {
            self.schedule_step(r);
        }
    }

    // ----- replicas -----

    fn autoscale(&mut self) -> Result<(), ServeError> {
        let scale = self.p.config.autoscale;
        let mut headroom = 0u64;
        for s in 0..self.services.len() {
            let svc = &self.p.services[s].config;
            let state = &self.services[s];
            let in_flight: u32 = state.replicas.iter().map(|&r| self.replicas[r as usize].in_flight).sum();
            let demand = f64::from(in_flight) + state.queue.len() as f64;
            let mut desired =
                ((demand / scale.target_concurrency).ceil() as u32).clamp(svc.min_replicas, svc.max_replicas);
            if !state.queue.is_empty() {
                desired = desired.max(1);
            }
            let active =
                state.replicas.iter().filter(|&&r| self.replicas[r as usize].state != ReplicaState::Gone).count()
                    as u32;
            let model = &self.p.services[s];
            // Free slots of the service's replica shape kept from batch pods: `slot_headroom` × √(replicas
            // wanted, at least one), so even a service scaled to zero finds room for its first replica.
            let keep = (self.stack.slot_headroom * f64::from(desired.max(active).max(1)).sqrt()).ceil() as u32;
            self.reserve.slots_mut().set_keep(s, keep);
            if model.config.class == LatencyClass::Interactive && !model.fast_models.is_empty() {
                // The reserve's forecast of the replicas a burst adds: `headroom` × √(replicas wanted), the
                // square-root safety margin of a queue whose load is that many servers.
                let wanted = [(desired.max(active), model.request.gpu.total_milli())];
                headroom += gpuplane_place::reserve::headroom_milli(self.stack.headroom, wanted);
            }
            if desired > active {
                self.services[s].below_since = None;
                for _ in active..desired {
                    self.add_replica(s)?;
                }
            } else if desired < active {
                let since = *self.services[s].below_since.get_or_insert(self.now);
                if self.now - since >= scale.scale_down_delay_s {
                    self.scale_down(s, active - desired)?;
                }
            } else {
                self.services[s].below_since = None;
            }
        }
        self.reserve.set_headroom(headroom);
        // Pending replicas also retry on the autoscaler's beat.
        self.retry_pending_replicas()
    }

    /// Removes up to `count` replicas: pending ones first, then idle ready ones.
    fn scale_down(&mut self, service: usize, count: u32) -> Result<(), ServeError> {
        let mut left = count;
        for wanted in [ReplicaState::Pending, ReplicaState::Ready] {
            let ids: Vec<u32> = self.services[service].replicas.clone();
            for r in ids.into_iter().rev() {
                if left == 0 {
                    return Ok(());
                }
                let replica = &self.replicas[r as usize];
                if replica.state == wanted && replica.in_flight == 0 {
                    self.remove_replica(r as usize)?;
                    left -= 1;
                }
            }
        }
        Ok(())
    }

    fn remove_replica(&mut self, r: usize) -> Result<(), ServeError> {
        let was_running = self.replicas[r].state != ReplicaState::Pending;
        self.replicas[r].state = ReplicaState::Gone;
        let service = self.replicas[r].service;
        self.services[service].replicas.retain(|&x| x as usize != r);
        if was_running && let Some(placement) = self.replicas[r].placement.take() {
            let request = self.p.services[service].request.clone();
            self.tenancy.remove(self.pod_id(r));
            self.release(&request, &placement, "replica")?;
            self.inference_milli -= u64::from(request.gpu.total_milli());
            self.room_freed()?;
        }
        Ok(())
    }

    fn pod_id(&self, replica: usize) -> usize {
        self.p.batch.len() + replica
    }

    fn add_replica(&mut self, service: usize) -> Result<(), ServeError> {
        let id = self.replicas.len();
        self.replicas.push(Replica {
            service,
            state: ReplicaState::Pending,
            placement: None,
            in_flight: 0,
            batcher: Batcher::new(1, StepCost::default()),
            step_at: None,
            speed: Speed::default(),
            kv_used: 0.0,
            loaded_at: f64::INFINITY,
        });
        self.services[service].replicas.push(id as u32);
        self.services[service].below_since = None;
        let request = self.p.services[service].request.clone();
        self.engine.observe(&request);
        self.try_place_replica(id)
    }

    /// Places a pending replica, evicting batch pods if the stack preempts and nothing fits.
    fn try_place_replica(&mut self, r: usize) -> Result<(), ServeError> {
        let service = self.replicas[r].service;
        let p = self.p;
        let model = &p.services[service];
        let request = &model.request;
        // Interactive replicas rank the fast GPU models first (a preferred node affinity: a score, so a
        // slower free GPU is taken before anyone is evicted); preemption only when nothing fits anywhere;
        // gpuplane's claim takes a fast GPU back from young batch pods first (`gpuplane_place::serving`).
        let fast = model
            .fast_request
            .as_ref()
            .filter(|_| self.stack.fast_gpus && model.config.class == LatencyClass::Interactive);
        let steps = ServingSteps { preemption: self.stack.preemption, claim_age_s: self.stack.claim_age_s };
        let locality = (self.stack.model_cache && self.stack.locality_weight > 0.0).then(|| self.locality(service));
        let (batch, priority, now) = (self.p.batch.len(), self.p.config.batch.priority, self.now);
        let started = &self.batch_started;
        let evictable = |id: usize| (id < batch).then(|| Evictable { priority, started_s: started[id] });
        let preemption = Preemption::everywhere(&evictable, now, self.stack.victims);
        let (engine, cluster, weight) = (&mut self.engine, &self.cluster, self.stack.locality_weight);
        let mut decide = |r: &PodRequest| {
            let decision = match &locality {
                Some(l) => engine.decide_with_locality(cluster, r, l, weight).0,
                None => engine.decide(cluster, r),
            };
            match decision {
                Decision::Place(p) => Some(p),
                Decision::Unschedulable(_) => None,
            }
        };
        let found = match steps.step(cluster, &self.tenancy, request, fast, &mut decide, &preemption) {
            Step::Place(p) => Some((p, false)),
            Step::Evict { node, victims, .. } => {
                for v in victims {
                    self.evict_batch(v)?;
                }
                self.engine.place_on(&self.cluster, request, node).ok().map(|p| (p, true))
            }
            Step::Wait => None,
        };
        let Some((placement, evicted)) = found else { return Ok(()) };
        self.bind(request, &placement, "replica")?;
        self.tenancy.add(self.pod_id(r), request.clone(), placement.clone());
        self.inference_milli += u64::from(request.gpu.total_milli());
        let node = placement.node;
        let config = self.p.config;
        let grace = if evicted { config.termination_grace_s } else { 0.0 };
        let start = self.now + config.scheduling_latency_s + grace;
        let (tier, source_node, source_complete, loaded, rate) = self.read_weights(service, node, start);
        if tier == LoadTier::Origin {
            self.origin_bytes += model.bytes;
        }
        *self.starts.entry(tier).or_default() += 1;
        let model_index = self.cluster.nodes()[node].model.map(usize::from);
        let gpu_name = model_index.and_then(|m| self.cluster.models().get(m)).cloned().unwrap_or_default();
        *self.services[service].starts_by_gpu.entry(gpu_name).or_default() += 1;
        let speed = model_index.and_then(|m| model.speed.get(m).copied().flatten()).unwrap_or_default();
        let ready = loaded + config.engine_startup_s;
        self.loads.push(LoadRecord {
            service,
            node,
            source_node,
            tier: tier.name(),
            start_s: start,
            source_complete_s: source_complete,
            loaded_s: loaded,
            ready_s: ready,
            bytes: model.bytes,
            rate,
        });
        let replica = &mut self.replicas[r];
        replica.state = ReplicaState::Starting;
        replica.placement = Some(placement);
        replica.speed = speed;
        replica.batcher = Batcher::new(config.engine.max_num_batched_tokens, speed.cost);
        replica.loaded_at = loaded;
        if self.stack.model_cache {
            self.cache_insert(node, service, loaded);
        }
        self.at(ready, Event::ReplicaReady { replica: r as u32 });
        Ok(())
    }

    /// Reads the service's weights onto `node` from `start`: the tier, the node read from, when the source
    /// copy is complete, when the read ends, and the tier's rate per reader. The read cannot end before its
    /// source copy does, and it queues on the links it uses (origin link, the peer's NIC, the node's disk).
    fn read_weights(&mut self, service: usize, node: usize, start: f64) -> (LoadTier, Option<usize>, f64, f64, f64) {
        let rate = self.p.config.bandwidth_gbps;
        let bytes = self.p.services[service].bytes;
        let tier = self.load_tier(service, node);
        match tier {
            LoadTier::PageCache => {
                let source = self.services[service]
                    .replicas
                    .iter()
                    .map(|&r| &self.replicas[r as usize])
                    .filter(|r| {
                        matches!(r.state, ReplicaState::Starting | ReplicaState::Ready)
                            && r.placement.as_ref().is_some_and(|p| p.node == node)
                    })
                    .map(|r| r.loaded_at)
                    .fold(f64::INFINITY, f64::min);
                let per_reader = rate.page_cache * GB;
                (tier, Some(node), source, (start + bytes / per_reader).max(source), per_reader)
            }
            LoadTier::Local => {
                let source =
                    self.node_cache[node].iter().find(|e| e.service == service).map_or(start, |e| e.complete_at);
                let per_reader = rate.local * GB;
                let through = self.disk[node].carry(start, bytes, per_reader);
                (tier, Some(node), source, through.max(source), per_reader)
            }
            LoadTier::Peer => {
                // The holder whose copy and NIC let the read end first.
                let per_reader = rate.peer * GB;
                let best = (0..self.node_cache.len())
                    .filter(|&h| h != node)
                    .filter_map(|h| {
                        let entry = self.node_cache[h].iter().find(|e| e.service == service)?;
                        let end = (self.nic[h].busy_until.max(start) + bytes / per_reader).max(entry.complete_at);
                        Some((end, h, entry.complete_at))
                    })
                    .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                match best {
                    Some((_, holder, source)) => {
                        let through = self.nic[holder].carry(start, bytes, per_reader);
                        (tier, Some(holder), source, through.max(source), per_reader)
                    }
                    None => self.read_origin(bytes, start),
                }
            }
            LoadTier::Origin => self.read_origin(bytes, start),
        }
    }

    fn read_origin(&mut self, bytes: f64, start: f64) -> (LoadTier, Option<usize>, f64, f64, f64) {
        let rate = self.p.config.bandwidth_gbps;
        let per_reader = rate.origin * GB;
        let shared = self.origin_link.carry(start, bytes, rate.origin_shared * GB);
        (LoadTier::Origin, None, start, (start + bytes / per_reader).max(shared), per_reader)
    }

    fn evict_batch(&mut self, pod: usize) -> Result<(), ServeError> {
        let Some((request, placement)) = self.tenancy.remove(pod) else { return Ok(()) };
        self.release(&request, &placement, "evicted batch pod")?;
        self.batch_generation[pod] += 1;
        self.evictions += 1;
        self.gpu_seconds_lost += f64::from(request.gpu.total_milli()) / 1000.0 * (self.now - self.batch_started[pod]);
        // Its controller recreates it; it starts over when room frees up.
        self.pending_batch.push_back(pod as u32);
        Ok(())
    }

    fn load_tier(&self, service: usize, node: usize) -> LoadTier {
        if !self.stack.model_cache {
            return LoadTier::Origin;
        }
        let running_here = self.services[service].replicas.iter().any(|&r| {
            let r = &self.replicas[r as usize];
            matches!(r.state, ReplicaState::Starting | ReplicaState::Ready)
                && r.placement.as_ref().is_some_and(|p| p.node == node)
        });
        if running_here {
            LoadTier::PageCache
        } else if self.node_cache[node].iter().any(|e| e.service == service) {
            LoadTier::Local
        } else if self.holders[service] > 0 {
            LoadTier::Peer
        } else {
            LoadTier::Origin
        }
    }

    fn locality(&self, service: usize) -> Locality {
        let rate = self.p.config.bandwidth_gbps;
        let tiers = (0..self.cluster.len())
            .map(|n| match self.load_tier(service, n) {
                LoadTier::PageCache | LoadTier::Local => Tier::Local,
                LoadTier::Peer => Tier::Peer,
                LoadTier::Origin => Tier::Origin,
            })
            .collect();
        Locality {
            model_bytes: self.p.services[service].bytes as u64,
            tiers,
            bandwidth: Bandwidth { local: rate.local * GB, peer: rate.peer * GB, origin: rate.origin * GB },
        }
    }

    /// Records that `node` holds the service's model from `complete_at` on, evicting the least recently
    /// used models no replica there needs when the cache is over its size.
    fn cache_insert(&mut self, node: usize, service: usize, complete_at: f64) {
        let bytes = self.p.services[service].bytes;
        let capacity = self.p.config.node_cache_gb * GB;
        if bytes > capacity {
            return;
        }
        if let Some(entry) = self.node_cache[node].iter_mut().find(|e| e.service == service) {
            entry.last_use = self.now;
            return;
        }
        while self.node_cache_bytes[node] + bytes > capacity {
            let in_use = |s: usize| {
                self.services[s].replicas.iter().any(|&r| {
                    let r = &self.replicas[r as usize];
                    r.state != ReplicaState::Gone && r.placement.as_ref().is_some_and(|p| p.node == node)
                })
            };
            let victim = self.node_cache[node]
                .iter()
                .enumerate()
                .filter(|(_, e)| !in_use(e.service))
                .min_by(|a, b| a.1.last_use.total_cmp(&b.1.last_use))
                .map(|(i, _)| i);
            let Some(i) = victim else { return };
            let gone = self.node_cache[node].remove(i);
            self.node_cache_bytes[node] -= self.p.services[gone.service].bytes;
            self.holders[gone.service] -= 1;
        }
        self.node_cache[node].push(CacheEntry { service, last_use: self.now, complete_at });
        self.node_cache_bytes[node] += bytes;
        self.holders[service] += 1;
    }
}
