//! Every parameter of the serving simulation, with defaults. `data/serve/default.yaml` is the same
//! configuration written out with the source of each figure; a file given with `--config` may set any
//! subset of the fields (the rest keep their defaults).

use std::collections::BTreeMap;

use gpuplane_place::{Policy, VictimChoice};
use serde::{Deserialize, Serialize};

use super::ServeError;

/// Longest horizon or drain, seconds: a week of requests (the public traces span an hour to a day).
pub const MAX_SPAN_S: f64 = 7.0 * 86_400.0;
/// Most samples of the cluster a run keeps.
pub const MAX_SAMPLES: f64 = 100_000.0;
/// Most autoscaler evaluations a run makes (horizon plus drain over the interval).
pub const MAX_AUTOSCALE_TICKS: f64 = 1_000_000.0;
/// Largest `request_rate_scale`: a hundred copies of a trace (1.9 M requests of Azure conv).
pub const MAX_RATE_SCALE: f64 = 100.0;
/// Largest `batch.offered_load`: four times the cluster's GPUs.
pub const MAX_OFFERED_LOAD: f64 = 4.0;
/// Most batch pods a run replays (running at the start and arriving); more is refused before running.
pub const MAX_BATCH_PODS: f64 = 2_000_000.0;
/// Most replicas a service may ask for.
pub const MAX_REPLICAS: u32 = 4_096;

/// The serving simulation's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// Seconds of the request trace replayed; later requests are dropped.
    pub horizon_s: f64,
    /// Seconds after the horizon during which queued requests may still be served.
    pub drain_s: f64,
    /// Seconds between two samples of allocation and fragmentation.
    pub sample_interval_s: f64,
    /// Seconds from a replica's creation to its bind (the scheduler's queue and API round trips).
    pub scheduling_latency_s: f64,
    /// Seconds an inference engine needs after its weights are read (runtime init, CUDA graphs).
    pub engine_startup_s: f64,
    /// Seconds an evicted pod takes to go (its termination grace period): a replica placed by preemption
    /// starts loading only then.
    pub termination_grace_s: f64,
    /// Weight read rates per tier, GB/s.
    pub bandwidth_gbps: TierBandwidth,
    /// Disk each node's model cache may use, GB.
    pub node_cache_gb: f64,
    /// GPU memory a replica needs beyond its weights (KV cache, activations), as a factor on the weights:
    /// the placement rule (GPU models with less are not accepted).
    pub memory_headroom: f64,
    /// Share of GPU memory the engine uses (vLLM's `gpu_memory_utilization`); what the weights leave of it
    /// holds the KV cache, which bounds the requests a replica holds at once.
    pub gpu_memory_utilization: f64,
    /// Zipf exponent of model popularity: request i goes to service k with probability ∝ 1 / k^s.
    pub popularity_zipf: f64,
    /// Requests replayed per request of the trace: the trace superposed on itself this many times, each
    /// copy shifted by a seeded offset (the fraction of a last copy keeps each request with that chance).
    /// 1 is the trace's native rate.
    pub request_rate_scale: f64,
    /// The inference engine's batching limits.
    pub engine: Batching,
    /// The autoscaler.
    pub autoscale: Autoscale,
    /// What clients wait for, and what counts as good service.
    pub clients: Clients,
    /// Background batch load from the openb trace.
    pub batch: Batch,
    /// Per GPU model: speed, memory and what the engine can run on it. A file's entries are merged into
    /// the default table (a model it names is replaced, the others kept).
    #[serde(deserialize_with = "merged_gpus")]
    pub gpus: BTreeMap<String, GpuSpec>,
    /// The inference services, most popular first.
    pub services: Vec<Service>,
    /// The scheduling stacks compared.
    pub stacks: Vec<Stack>,
}

/// Read rates, GB/s, from the fastest tier to the slowest.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TierBandwidth {
    /// Another replica of the model runs on the node: the weights are in its page cache.
    pub page_cache: f64,
    /// The node's model cache (NVMe).
    pub local: f64,
    /// Another node's model cache, over the cluster network.
    pub peer: f64,
    /// The origin (object store or model hub), per reader.
    pub origin: f64,
    /// The cluster's link to the origin, shared by every origin read at the same time.
    pub origin_shared: f64,
}

impl Default for TierBandwidth {
    fn default() -> Self {
        TierBandwidth { page_cache: 8.0, local: 2.0, peer: 1.25, origin: 1.5, origin_shared: 3.125 }
    }
}

impl TierBandwidth {
    /// Multiplies every rate by `factor`.
    pub fn scaled(self, factor: f64) -> Self {
        TierBandwidth {
            page_cache: self.page_cache * factor,
            local: self.local * factor,
            peer: self.peer * factor,
            origin: self.origin * factor,
            origin_shared: self.origin_shared * factor,
        }
    }
}

/// The autoscaler: a concurrency target per replica, evaluated on a fixed interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Autoscale {
    /// Seconds between two evaluations.
    pub interval_s: f64,
    /// Requests in flight per replica the autoscaler aims for.
    pub target_concurrency: f64,
    /// Seconds demand must stay below the replica count before idle replicas are removed.
    pub scale_down_delay_s: f64,
}

/// The inference engine's scheduler limits (vLLM's names and defaults for GPUs under 70 GB).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Batching {
    /// Requests a replica holds at once at most, if their KV cache fits; more wait in the service queue.
    pub max_num_seqs: u32,
    /// Tokens one engine step takes at most: a token for each decoding sequence, then prompt chunks.
    pub max_num_batched_tokens: u32,
    /// Lowest CUDA compute capability the engine runs on (vLLM: 7.0); GPU models below it get no replica.
    pub min_compute_capability: f64,
}

impl Default for Batching {
    fn default() -> Self {
        Batching { max_num_seqs: 256, max_num_batched_tokens: 2048, min_compute_capability: 7.0 }
    }
}

/// Clients and service-level objectives: a request whose first token has not come within the timeout is
/// abandoned (the engine drops it), one that finds its service's queue full is refused, and one served
/// within its class's TTFT objective counts toward SLO attainment and goodput.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Clients {
    /// Seconds a client waits for the first token before it gives up.
    pub timeout_s: f64,
    /// Requests a service queues (waiting for a replica with room) before it refuses more.
    pub queue_limit: u32,
    /// TTFT objective of interactive requests, seconds.
    pub interactive_slo_s: f64,
    /// TTFT objective of standard requests, seconds.
    pub standard_slo_s: f64,
}

impl Default for Clients {
    fn default() -> Self {
        Clients { timeout_s: 60.0, queue_limit: 1024, interactive_slo_s: 2.0, standard_slo_s: 10.0 }
    }
}

impl Clients {
    /// The TTFT objective of a class.
    pub fn slo_s(&self, class: LatencyClass) -> f64 {
        match class {
            LatencyClass::Interactive => self.interactive_slo_s,
            LatencyClass::Standard => self.standard_slo_s,
        }
    }
}

/// The background batch load.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Batch {
    /// GPU demand the openb trace offers on average, as a share of the cluster's GPUs: its creation
    /// times are compressed by the factor that makes Little's law give this load (durations are kept).
    pub offered_load: f64,
    /// Where the serving window starts, as a quantile of the batch trace's creation order, 0–1.
    pub window_start: f64,
    /// Priority of batch pods (replicas have their service's priority).
    pub priority: i32,
}

/// A GPU model's speed and memory.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuSpec {
    /// Dense FP16/BF16 TFLOPS achieved in prefill.
    pub tflops: f64,
    /// Memory, GB.
    pub memory_gb: f64,
    /// Memory bandwidth achieved in decode, GB/s.
    pub memory_bandwidth_gbps: f64,
    /// CUDA compute capability (major.minor).
    pub compute_capability: f64,
    /// Whether it computes in BF16; without it the engine runs the model in FP16 (same bytes per weight).
    pub bf16: bool,
}

impl GpuSpec {
    /// The data type the engine runs a BF16 checkpoint in on this GPU.
    pub fn dtype(&self) -> &'static str {
        if self.bf16 { "bf16" } else { "fp16" }
    }
}

/// Reads a `gpus:` table and merges it into the default one.
fn merged_gpus<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, GpuSpec>, D::Error> {
    let given = BTreeMap::<String, GpuSpec>::deserialize(d)?;
    let mut table = ServeConfig::default().gpus;
    table.extend(given);
    Ok(table)
}

/// How a service's requests are judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LatencyClass {
    /// A person waits for the first token.
    Interactive,
    /// A program waits; latency matters less.
    Standard,
}

impl LatencyClass {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            LatencyClass::Interactive => "interactive",
            LatencyClass::Standard => "standard",
        }
    }
}

/// An inference service: one model, served by replicas of a fixed shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Service name.
    pub name: String,
    /// Model parameters, billions (prefill FLOPs = 2 × parameters × tokens).
    pub params_b: f64,
    /// Weight bytes read at start, GB.
    pub weight_gb: f64,
    /// Transformer layers (for the KV cache's size).
    pub layers: u32,
    /// Key-value heads per layer (grouped-query attention).
    pub kv_heads: u32,
    /// Dimension of one head.
    pub head_dim: u32,
    /// GPUs per replica.
    pub gpus: u8,
    /// Milli-GPU per GPU: 1000 for whole GPUs, less for a shared GPU (then `gpus` is 1).
    #[serde(default = "whole_gpu")]
    pub gpu_milli: u16,
    /// CPU per replica, milli-cores.
    pub cpu_milli: u64,
    /// Memory per replica, GB.
    pub memory_gb: f64,
    /// Latency class.
    pub class: LatencyClass,
    /// Replicas kept even when idle.
    #[serde(default)]
    pub min_replicas: u32,
    /// Replicas at most.
    pub max_replicas: u32,
    /// Scheduling priority (batch pods have `batch.priority`).
    #[serde(default = "replica_priority")]
    pub priority: i32,
}

fn whole_gpu() -> u16 {
    1000
}

fn replica_priority() -> i32 {
    1000
}

/// A scheduling stack: a placement policy and the platform features around it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stack {
    /// Name in tables.
    pub name: String,
    /// Placement policy (`kube-default`, `bestfit`, `fgd`, `gpuplane`, …).
    pub policy: String,
    /// Nodes keep the models they loaded in a local cache, and peers serve them to each other.
    #[serde(default)]
    pub model_cache: bool,
    /// Weight of the model-locality term in placement, 0–1 (needs `model_cache`).
    #[serde(default)]
    pub locality_weight: f64,
    /// A replica that fits nowhere may evict lower-priority (batch) pods.
    #[serde(default)]
    pub preemption: bool,
    /// Interactive replicas prefer GPU models at least half as fast (prefill TFLOPS) as the fastest they
    /// accept, and take a slower one only when no fast one can be had.
    #[serde(default)]
    pub fast_gpus: bool,
    /// How preemption values victims and ranks nodes: `kube-scheduler` (the default) or `least-work-lost`.
    #[serde(default, with = "victim_choice")]
    pub victims: VictimChoice,
    /// Batch pods are placed off the GPU models interactive replicas prefer whenever another GPU fits
    /// them, and backfill those models only when none does (gpuplane's serving reserve).
    #[serde(default)]
    pub reserve_fast: bool,
    /// With `reserve_fast`: the free capacity batch pods leave on the reserved models when they backfill
    /// them, as a share of the replicas the autoscaler wants for each interactive service (its forecast).
    #[serde(default)]
    pub headroom: f64,
    /// With `reserve_fast`: free slots of each service's replica shape batch pods leave, as a coefficient on
    /// √(replicas the autoscaler wants, at least 1); an interactive service's slots on its fast models.
    #[serde(default)]
    pub slot_headroom: f64,

    /// An interactive replica that finds no fast GPU free may evict batch pods younger than this (seconds)
    /// from one before it takes a slower GPU; 0 never does (stock kube-scheduler never does).
    #[serde(default)]
    pub claim_age_s: f64,
}

/// `VictimChoice` by name in configuration files.
mod victim_choice {
    use gpuplane_place::VictimChoice;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &VictimChoice, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match v {
            VictimChoice::KubeScheduler => "kube-scheduler",
            VictimChoice::LeastWorkLost => "least-work-lost",
        })
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<VictimChoice, D::Error> {
        match String::deserialize(d)?.as_str() {
            "kube-scheduler" => Ok(VictimChoice::KubeScheduler),
            "least-work-lost" => Ok(VictimChoice::LeastWorkLost),
            other => Err(serde::de::Error::custom(format!(
                "unknown victim choice {other:?}; expected kube-scheduler or least-work-lost"
            ))),
        }
    }
}

impl Stack {
    /// The placement policy.
    pub fn parsed_policy(&self) -> Result<Policy, ServeError> {
        self.policy.parse().map_err(|e| ServeError::Config(format!("stacks[{}].policy: {e}", self.name)))
    }
}

impl Default for Autoscale {
    fn default() -> Self {
        Autoscale { interval_s: 10.0, target_concurrency: 8.0, scale_down_delay_s: 300.0 }
    }
}

impl Default for Batch {
    fn default() -> Self {
        Batch { offered_load: 1.0, window_start: 0.5, priority: 0 }
    }
}

fn gpu(tflops: f64, memory_gb: f64, memory_bandwidth_gbps: f64, compute_capability: f64, bf16: bool) -> GpuSpec {
    GpuSpec { tflops, memory_gb, memory_bandwidth_gbps, compute_capability, bf16 }
}

#[allow(clippy::too_many_arguments)] // One row of the default service table.
fn service(
    name: &str,
    params_b: f64,
    weight_gb: f64,
    (layers, kv_heads, head_dim): (u32, u32, u32),
    gpus: u8,
    gpu_milli: u16,
    class: LatencyClass,
    min_replicas: u32,
    max_replicas: u32,
) -> Service {
    Service {
        name: name.to_owned(),
        params_b,
        weight_gb,
        layers,
        kv_heads,
        head_dim,
        gpus,
        gpu_milli,
        cpu_milli: 4_000 * u64::from(gpus),
        memory_gb: 32.0 * f64::from(gpus),
        class,
        min_replicas,
        max_replicas,
        priority: replica_priority(),
    }
}

fn stack(name: &str, policy: &str, model_cache: bool, locality_weight: f64, fast_gpus: bool) -> Stack {
    // Every stack preempts, as stock kube-scheduler does (DefaultPreemption), services over batch.
    Stack {
        name: name.to_owned(),
        policy: policy.to_owned(),
        model_cache,
        locality_weight,
        preemption: true,
        fast_gpus,
        victims: VictimChoice::KubeScheduler,
        reserve_fast: false,
        headroom: 0.0,
        slot_headroom: 0.0,
        claim_age_s: 0.0,
    }
}

impl Default for ServeConfig {
    fn default() -> Self {
        use LatencyClass::{Interactive, Standard};
        let gpus = BTreeMap::from([
            ("A10".to_owned(), gpu(60.0, 24.0, 500.0, 8.6, true)),
            ("G2".to_owned(), gpu(50.0, 32.0, 800.0, 7.0, false)),
            ("G3".to_owned(), gpu(120.0, 40.0, 1300.0, 8.0, true)),
            ("P100".to_owned(), gpu(8.0, 16.0, 600.0, 6.0, false)),
            ("T4".to_owned(), gpu(25.0, 16.0, 250.0, 7.5, false)),
            ("V100M16".to_owned(), gpu(50.0, 16.0, 800.0, 7.0, false)),
            ("V100M32".to_owned(), gpu(50.0, 32.0, 800.0, 7.0, false)),
        ]);
        ServeConfig {
            horizon_s: 3600.0,
            drain_s: 900.0,
            sample_interval_s: 60.0,
            scheduling_latency_s: 1.0,
            engine_startup_s: 20.0,
            termination_grace_s: 30.0,
            bandwidth_gbps: TierBandwidth::default(),
            node_cache_gb: 400.0,
            memory_headroom: 1.2,
            gpu_memory_utilization: 0.9,
            popularity_zipf: 1.0,
            request_rate_scale: 40.0,
            engine: Batching::default(),
            autoscale: Autoscale::default(),
            clients: Clients::default(),
            batch: Batch::default(),
            gpus,
            services: vec![
                service("chat-8b", 8.0, 16.1, (32, 8, 128), 1, 1000, Interactive, 1, 512),
                service("code-7b", 7.6, 15.2, (28, 4, 128), 1, 1000, Interactive, 1, 512),
                service("assist-3b", 3.2, 6.4, (28, 8, 128), 1, 500, Interactive, 0, 256),
                service("summarize-14b", 14.8, 29.5, (48, 8, 128), 2, 1000, Standard, 0, 128),
                service("rerank-1b", 1.2, 2.4, (16, 8, 64), 1, 250, Standard, 0, 128),
                service("chat-70b", 70.6, 141.0, (80, 8, 128), 8, 1000, Interactive, 0, 32),
                service("vision-11b", 10.6, 21.3, (40, 8, 128), 1, 1000, Standard, 0, 128),
                service("draft-0.5b", 0.5, 1.0, (24, 2, 64), 1, 200, Interactive, 0, 128),
            ],
            // The ladder from kube-default: each rung adds one thing to the one before, so each one's share
            // shows; the last, "gpuplane", adds the model-locality term and is the whole stack.
            stacks: vec![
                stack("kube-default", "kube-default", false, 0.0, false),
                stack("binpack", "bestfit", false, 0.0, false),
                stack("fgd", "fgd", false, 0.0, false),
                stack("+ model cache", "kube-default", true, 0.0, false),
                stack("+ fast-GPU affinity", "kube-default", true, 0.0, true),
                stack("+ gpuplane placement", "gpuplane", true, 0.0, true),
                Stack {
                    reserve_fast: true,
                    headroom: 1.0,
                    slot_headroom: 1.0,
                    claim_age_s: 600.0,
                    victims: VictimChoice::LeastWorkLost,
                    ..stack("gpuplane", "gpuplane", true, 0.3, true)
                },
            ],
        }
    }
}

impl ServeConfig {
    /// Reads a YAML configuration; fields it leaves out keep their defaults.
    pub fn from_yaml(source_name: &str, text: &str) -> Result<Self, ServeError> {
        let config: ServeConfig =
            serde_saphyr::from_str(text).map_err(|e| ServeError::Config(format!("{source_name}: {e}")))?;
        config.validate().map_err(|e| match e {
            ServeError::Config(m) => ServeError::Config(format!("{source_name}: {m}")),
            other => other,
        })?;
        Ok(config)
    }

    /// Checks every number is in range, naming the first field that is not.
    pub fn validate(&self) -> Result<(), ServeError> {
        let positive = |v: f64, field: &str| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(ServeError::Config(format!("{field} must be a positive number, got {v}")))
            }
        };
        let non_negative = |v: f64, field: &str| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(ServeError::Config(format!("{field} must be zero or more, got {v}")))
            }
        };
        positive(self.horizon_s, "horizon_s")?;
        non_negative(self.drain_s, "drain_s")?;
        positive(self.sample_interval_s, "sample_interval_s")?;
        for (v, field) in [(self.horizon_s, "horizon_s"), (self.drain_s, "drain_s")] {
            if v > MAX_SPAN_S {
                return Err(ServeError::Config(format!("{field} must be at most {MAX_SPAN_S} s (a week), got {v}")));
            }
        }
        let samples = (self.horizon_s + self.drain_s) / self.sample_interval_s;
        if samples > MAX_SAMPLES {
            return Err(ServeError::Config(format!(
                "sample_interval_s {} gives {samples:.0} samples over horizon_s + drain_s; at most {MAX_SAMPLES} are kept",
                self.sample_interval_s
            )));
        }
        non_negative(self.scheduling_latency_s, "scheduling_latency_s")?;
        non_negative(self.engine_startup_s, "engine_startup_s")?;
        non_negative(self.termination_grace_s, "termination_grace_s")?;
        let b = &self.bandwidth_gbps;
        let rates = [
            (b.page_cache, "page_cache"),
            (b.local, "local"),
            (b.peer, "peer"),
            (b.origin, "origin"),
            (b.origin_shared, "origin_shared"),
        ];
        for (v, f) in rates {
            positive(v, &format!("bandwidth_gbps.{f}"))?;
        }
        non_negative(self.node_cache_gb, "node_cache_gb")?;
        positive(self.memory_headroom, "memory_headroom")?;
        if !(self.gpu_memory_utilization > 0.0 && self.gpu_memory_utilization <= 1.0) {
            return Err(ServeError::Config(format!(
                "gpu_memory_utilization must be above 0 and at most 1, got {}",
                self.gpu_memory_utilization
            )));
        }
        non_negative(self.popularity_zipf, "popularity_zipf")?;
        positive(self.autoscale.interval_s, "autoscale.interval_s")?;
        // The event clock counts microseconds: a shorter interval would never advance it.
        let ticks = (self.horizon_s + self.drain_s) / self.autoscale.interval_s;
        if self.autoscale.interval_s < 1e-3 || ticks > MAX_AUTOSCALE_TICKS {
            return Err(ServeError::Config(format!(
                "autoscale.interval_s must be at least 1 ms and give at most {MAX_AUTOSCALE_TICKS} evaluations over \
                 horizon_s + drain_s, got {} s ({ticks:.0} evaluations)",
                self.autoscale.interval_s
            )));
        }
        if !(self.request_rate_scale.is_finite()
            && self.request_rate_scale > 0.0
            && self.request_rate_scale <= MAX_RATE_SCALE)
        {
            return Err(ServeError::Config(format!(
                "request_rate_scale must be above 0 and at most {MAX_RATE_SCALE}, got {}",
                self.request_rate_scale
            )));
        }
        non_negative(self.engine.min_compute_capability, "engine.min_compute_capability")?;
        positive(self.autoscale.target_concurrency, "autoscale.target_concurrency")?;
        positive(f64::from(self.engine.max_num_seqs), "engine.max_num_seqs")?;
        if self.engine.max_num_batched_tokens < self.engine.max_num_seqs {
            // vLLM refuses this too: a step must hold a decode token for every sequence.
            return Err(ServeError::Config(format!(
                "engine.max_num_batched_tokens ({}) must be at least engine.max_num_seqs ({})",
                self.engine.max_num_batched_tokens, self.engine.max_num_seqs
            )));
        }
        non_negative(self.autoscale.scale_down_delay_s, "autoscale.scale_down_delay_s")?;
        positive(self.clients.timeout_s, "clients.timeout_s")?;
        positive(f64::from(self.clients.queue_limit), "clients.queue_limit")?;
        positive(self.clients.interactive_slo_s, "clients.interactive_slo_s")?;
        positive(self.clients.standard_slo_s, "clients.standard_slo_s")?;
        non_negative(self.batch.offered_load, "batch.offered_load")?;
        if self.batch.offered_load > MAX_OFFERED_LOAD {
            return Err(ServeError::Config(format!(
                "batch.offered_load must be at most {MAX_OFFERED_LOAD} (four times the cluster's GPUs), got {}",
                self.batch.offered_load
            )));
        }
        if !(0.0..=1.0).contains(&self.batch.window_start) {
            return Err(ServeError::Config(format!(
                "batch.window_start must be between 0 and 1, got {}",
                self.batch.window_start
            )));
        }
        for (name, g) in &self.gpus {
            positive(g.tflops, &format!("gpus.{name}.tflops"))?;
            positive(g.memory_gb, &format!("gpus.{name}.memory_gb"))?;
            positive(g.memory_bandwidth_gbps, &format!("gpus.{name}.memory_bandwidth_gbps"))?;
            positive(g.compute_capability, &format!("gpus.{name}.compute_capability"))?;
        }
        if self.services.is_empty() {
            return Err(ServeError::Config("services: at least one service is needed".to_owned()));
        }
        for s in &self.services {
            let at = |f: &str| format!("services[{}].{f}", s.name);
            positive(s.params_b, &at("params_b"))?;
            positive(s.weight_gb, &at("weight_gb"))?;
            for (v, f) in [(s.layers, "layers"), (s.kv_heads, "kv_heads"), (s.head_dim, "head_dim")] {
                positive(f64::from(v), &at(f))?;
            }
            positive(s.memory_gb, &at("memory_gb"))?;
            if !(1..=8).contains(&s.gpus) {
                return Err(ServeError::Config(format!("{} must be from 1 to 8, got {}", at("gpus"), s.gpus)));
            }
            if s.gpu_milli == 0 || s.gpu_milli > 1000 || (s.gpu_milli < 1000 && s.gpus != 1) {
                return Err(ServeError::Config(format!(
                    "{} must be 1000, or 1–999 with gpus 1, got {}",
                    at("gpu_milli"),
                    s.gpu_milli
                )));
            }
            if s.max_replicas == 0 || s.min_replicas > s.max_replicas || s.max_replicas > MAX_REPLICAS {
                return Err(ServeError::Config(format!(
                    "{} must be at least 1, at least min_replicas ({}) and at most {MAX_REPLICAS}, got {}",
                    at("max_replicas"),
                    s.min_replicas,
                    s.max_replicas
                )));
            }
        }
        if self.stacks.is_empty() {
            return Err(ServeError::Config("stacks: at least one stack is needed".to_owned()));
        }
        for s in &self.stacks {
            s.parsed_policy()?;
            if !(s.claim_age_s.is_finite() && s.claim_age_s >= 0.0) {
                return Err(ServeError::Config(format!(
                    "stacks[{}].claim_age_s must be zero or more, got {}",
                    s.name, s.claim_age_s
                )));
            }
            for (v, field) in [(s.headroom, "headroom"), (s.slot_headroom, "slot_headroom")] {
                if !(0.0..=10.0).contains(&v) {
                    return Err(ServeError::Config(format!(
                        "stacks[{}].{field} must be between 0 and 10, got {v}",
                        s.name
                    )));
                }
            }
            if !(0.0..=1.0).contains(&s.locality_weight) {
                return Err(ServeError::Config(format!(
                    "stacks[{}].locality_weight must be between 0 and 1, got {}",
                    s.name, s.locality_weight
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_shipped_file_is_the_default_configuration() {
        let text = include_str!("../../../../data/serve/default.yaml");
        let parsed = ServeConfig::from_yaml("default.yaml", text).unwrap();
        assert_eq!(parsed, ServeConfig::default());
    }

    #[test]
    fn a_partial_file_keeps_the_other_defaults() {
        let c = ServeConfig::from_yaml("c.yaml", "horizon_s: 600\nautoscale:\n  interval_s: 5\n").unwrap();
        assert_eq!(c.horizon_s, 600.0);
        assert_eq!(c.autoscale.interval_s, 5.0);
        assert_eq!(c.autoscale.target_concurrency, 8.0);
        assert_eq!(c.services, ServeConfig::default().services);
    }

    #[test]
    fn a_partial_nested_section_keeps_its_other_defaults() {
        let c =
            ServeConfig::from_yaml("c.yaml", "bandwidth_gbps: {peer: 0.3}\nengine: {max_num_batched_tokens: 8192}\n")
                .unwrap();
        let defaults = ServeConfig::default();
        assert_eq!(c.bandwidth_gbps, TierBandwidth { peer: 0.3, ..defaults.bandwidth_gbps });
        assert_eq!(c.engine, Batching { max_num_batched_tokens: 8192, ..defaults.engine });
    }

    #[test]
    fn spans_that_would_exhaust_memory_are_refused_before_running() {
        let err = ServeConfig::from_yaml("c.yaml", "horizon_s: 1e12\n").unwrap_err().to_string();
        assert!(err.contains("horizon_s must be at most"), "{err}");
        let err = ServeConfig::from_yaml("c.yaml", "sample_interval_s: 0.001\n").unwrap_err().to_string();
        assert!(err.contains("sample_interval_s"), "{err}");
    }

    #[test]
    fn inputs_that_would_run_without_end_are_refused_with_their_bound() {
        for (yaml, field) in [
            ("autoscale: {interval_s: 1e-9}\n", "autoscale.interval_s"),
            ("batch: {offered_load: 1000}\n", "batch.offered_load must be at most 4"),
            ("request_rate_scale: 1e6\n", "request_rate_scale"),
            ("request_rate_scale: 0\n", "request_rate_scale"),
        ] {
            let err = ServeConfig::from_yaml("c.yaml", yaml).unwrap_err().to_string();
            assert!(err.contains(field), "{yaml}: {err}");
        }
        let mut c = ServeConfig::default();
        c.services[0].min_replicas = 100_000_000;
        c.services[0].max_replicas = 100_000_000;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("services[chat-8b].max_replicas") && err.contains("4096"), "{err}");
    }

    #[test]
    fn a_partial_gpu_table_is_merged_into_the_default_one() {
        let c = ServeConfig::from_yaml(
            "c.yaml",
            "gpus:\n  T4: {tflops: 30, memory_gb: 16, memory_bandwidth_gbps: 300, compute_capability: 7.5, bf16: false}\n",
        )
        .unwrap();
        let defaults = ServeConfig::default();
        assert_eq!(c.gpus.len(), defaults.gpus.len());
        assert_eq!(c.gpus["T4"].tflops, 30.0);
        assert_eq!(c.gpus["G3"], defaults.gpus["G3"]);
        assert_eq!((c.gpus["G3"].dtype(), c.gpus["T4"].dtype()), ("bf16", "fp16"));
    }

    #[test]
    fn bad_values_name_their_field() {
        let err = ServeConfig::from_yaml("c.yaml", "batch:\n  window_start: 2\n").unwrap_err().to_string();
        assert!(err.contains("c.yaml") && err.contains("batch.window_start"), "{err}");
        let err = ServeConfig::from_yaml("c.yaml", "horizon_s: -1\n").unwrap_err().to_string();
        assert!(err.contains("horizon_s"), "{err}");
        let err = ServeConfig::from_yaml("c.yaml", "stacks:\n  - {name: x, policy: magic}\n").unwrap_err().to_string();
        assert!(err.contains("stacks[x].policy") && err.contains("magic"), "{err}");
        let err = ServeConfig::from_yaml("c.yaml", "engine: {max_num_batched_tokens: 64}\n").unwrap_err().to_string();
        assert!(err.contains("engine.max_num_batched_tokens (64)") && err.contains("max_num_seqs (256)"), "{err}");
        let err = ServeConfig::from_yaml("c.yaml", "horizon: 5\n").unwrap_err().to_string();
        assert!(err.contains("horizon"), "{err}");
    }
}
