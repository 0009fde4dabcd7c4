//! Prometheus metrics (OpenMetrics text) of the Kubernetes-facing services: requests and their latency
//! per verb, scheduling decisions and their latency, queue depth, preemptions, binding outcomes, and
//! per GPU pool (GPU model) the unallocated GPUs and the FGD fragmentation — a figure no other
//! scheduler exports.

use std::sync::atomic::AtomicU64;

use gpuplane_place::{Cluster, TargetWorkload};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;

fn latency_histogram() -> Histogram {
    // 50 µs to about 1.6 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// The metric families, registered once.
pub struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    latency: Family<Labels, Histogram, fn() -> Histogram>,
    binds: Family<Labels, Counter>,
    decisions: Family<Labels, Counter>,
    decision_latency: Histogram,
    queue_depth: Gauge,
    preemptions: Counter,
    victims: Counter,
    pool_gpus: Family<Labels, FloatGauge>,
    pool_unallocated: Family<Labels, FloatGauge>,
    pool_frag_amount: Family<Labels, FloatGauge>,
    pool_frag_ratio: Family<Labels, FloatGauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every family under the `gpuplane` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("gpuplane");
        let requests = Family::<Labels, Counter>::default();
        let latency = Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        let binds = Family::<Labels, Counter>::default();
        let decisions = Family::<Labels, Counter>::default();
        let decision_latency = latency_histogram();
        let queue_depth = Gauge::default();
        let preemptions = Counter::default();
        let victims = Counter::default();
        let pool_gpus = Family::<Labels, FloatGauge>::default();
        let pool_unallocated = Family::<Labels, FloatGauge>::default();
        let pool_frag_amount = Family::<Labels, FloatGauge>::default();
        let pool_frag_ratio = Family::<Labels, FloatGauge>::default();
        registry.register("requests", "Requests answered, by verb and HTTP status", requests.clone());
        registry.register("request_duration_seconds", "Time to answer a request, by verb", latency.clone());
        registry.register("binds", "Bindings, by result (ok, conflict, gone, error)", binds.clone());
        registry.register(
            "decisions",
            "Scheduling decisions, by result (placed, unschedulable, preempting)",
            decisions.clone(),
        );
        registry.register(
            "decision_duration_seconds",
            "Time the engine took to decide one pod, preemption search included",
            decision_latency.clone(),
        );
        registry.register("queue_depth", "Pods waiting to be scheduled (ready or in backoff)", queue_depth.clone());
        registry.register("preemptions", "Preemptions started", preemptions.clone());
        registry.register("preemption_victims", "Pods evicted to make room for higher-priority pods", victims.clone());
        registry.register("pool_gpus", "GPUs in the pool", pool_gpus.clone());
        registry.register(
            "pool_unallocated_gpus",
            "GPUs of the pool not allocated to any pod",
            pool_unallocated.clone(),
        );
        registry.register(
            "pool_frag_amount_gpus",
            "Expected fragmented GPUs of the pool for the target workload (FGD's frag amount)",
            pool_frag_amount.clone(),
        );
        registry.register(
            "pool_frag_ratio",
            "Fragmented share of the pool's idle GPUs, 0 to 1 (FGD's frag ratio)",
            pool_frag_ratio.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            binds,
            decisions,
            decision_latency,
            queue_depth,
            preemptions,
            victims,
            pool_gpus,
            pool_unallocated,
            pool_frag_amount,
            pool_frag_ratio,
        }
    }

    /// Counts one answered request and its duration.
    pub fn observe_request(&self, verb: &'static str, status: u16, seconds: f64) {
        self.requests.get_or_create(&vec![("verb", verb.to_owned()), ("code", status.to_string())]).inc();
        self.latency.get_or_create(&vec![("verb", verb.to_owned())]).observe(seconds);
    }

    /// Counts one binding outcome.
    pub fn observe_bind(&self, result: &'static str) {
        self.binds.get_or_create(&vec![("result", result.to_owned())]).inc();
    }

    /// Counts one scheduling decision and how long it took.
    pub fn observe_decision(&self, result: &'static str, seconds: f64) {
        self.decisions.get_or_create(&vec![("result", result.to_owned())]).inc();
        self.decision_latency.observe(seconds);
    }

    /// Sets the queue depth.
    pub fn set_queue_depth(&self, pods: usize) {
        self.queue_depth.set(i64::try_from(pods).unwrap_or(i64::MAX));
    }

    /// Counts one preemption and its victims.
    pub fn observe_preemption(&self, victims: usize) {
        self.preemptions.inc();
        self.victims.inc_by(victims as u64);
    }

    /// Sets the per-pool gauges from a cluster state; a pool is a GPU model.
    pub fn set_pools(&self, cluster: &Cluster, target: Option<&TargetWorkload>) {
        let models = cluster.models();
        let mut total = vec![0u64; models.len()];
        let mut free = vec![0u64; models.len()];
        let mut frag = vec![0f64; models.len()];
        for node in cluster.nodes() {
            let Some(m) = node.model else { continue };
            let m = usize::from(m);
            total[m] += u64::from(node.gpu_count) * 1000;
            free[m] += u64::from(node.gpu_free_total());
            if let Some(t) = target {
                frag[m] += t.node_fragment(node);
            }
        }
        for (m, model) in models.iter().enumerate() {
            let labels = vec![("model", model.clone())];
            self.pool_gpus.get_or_create(&labels).set(total[m] as f64 / 1000.0);
            self.pool_unallocated.get_or_create(&labels).set(free[m] as f64 / 1000.0);
            if target.is_some() {
                self.pool_frag_amount.get_or_create(&labels).set(frag[m] / 1000.0);
                let ratio = if free[m] > 0 { frag[m] / free[m] as f64 } else { 0.0 };
                self.pool_frag_ratio.get_or_create(&labels).set(ratio);
            }
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// The content type of [`Metrics::encode`].
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The admission webhook's metrics: reviews by path and outcome, and their latency.
pub struct WebhookMetrics {
    registry: Registry,
    reviews: Family<Labels, Counter>,
    latency: Family<Labels, Histogram, fn() -> Histogram>,
}

impl std::fmt::Debug for WebhookMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookMetrics")
    }
}

impl Default for WebhookMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("gpuplane_webhook");
        let reviews = Family::<Labels, Counter>::default();
        let latency = Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        registry.register(
            "reviews",
            "AdmissionReviews answered, by path and outcome (allowed, patched, denied with its code, malformed)",
            reviews.clone(),
        );
        registry.register("review_duration_seconds", "Time to decide a review, by path", latency.clone());
        WebhookMetrics { registry, reviews, latency }
    }
}

impl WebhookMetrics {
    /// Counts one answered review.
    pub fn review(&self, path: &'static str, response: &crate::webhook::AdmissionResponse, took: std::time::Duration) {
        let outcome = match (&response.status, response.allowed, response.patch.is_some()) {
            (_, true, true) => "patched".to_owned(),
            (_, true, false) => "allowed".to_owned(),
            (Some(s), false, _) => format!("denied_{}", s.code),
            (None, false, _) => "denied".to_owned(),
        };
        self.reviews.get_or_create(&vec![("path", path.to_owned()), ("outcome", outcome)]).inc();
        self.latency.get_or_create(&vec![("path", path.to_owned())]).observe(took.as_secs_f64());
    }

    /// Counts a request that was not a readable AdmissionReview v1.
    pub fn malformed(&self, path: &'static str) {
        self.reviews.get_or_create(&vec![("path", path.to_owned()), ("outcome", "malformed".to_owned())]).inc();
    }

    /// The OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
