//! `gpuplane bench extender|webhook|scheduler`: load tests on the loopback interface, bounded in time,
//! and a burst through the scheduler. The extender runs on the 1,213-node openb cluster half filled by
//! FGD, with clients alternating `filter` and `prioritize` calls that carry all node names
//! (nodeCacheCapable mode); the webhook gets AdmissionReviews of trace pods on `mutate` and `validate`
//! over HTTPS; the scheduler drains a burst of pending trace pods. Throughput and latency percentiles
//! are printed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use gpuplane_kube::objects::api_node;
use gpuplane_kube::webhook::{self, Webhook};
use gpuplane_kube::{BindFailure, BindTarget, Binder, Extender, ExtenderConfig, Snapshot, router};
use gpuplane_place::{Decision, Engine, EngineConfig, Policy, TargetWorkload, TieBreak};
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use rustls::pki_types::pem::PemObject;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::input;

/// What `gpuplane bench` measures.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Load-test the kube-scheduler extender (filter + prioritize) over HTTP on 127.0.0.1.
    Extender(ExtenderBenchArgs),
    /// Load-test the admission webhook (mutate + validate) over HTTPS on 127.0.0.1.
    Webhook(WebhookBenchArgs),
    /// Measure the secondary scheduler's state machine on a burst of pending pods (no API server).
    Scheduler(SchedulerBenchArgs),
}

/// Arguments of `gpuplane bench scheduler`.
#[derive(Debug, Args)]
pub struct SchedulerBenchArgs {
    /// Pending pods in the burst (trace pods, in a seeded random order)
    #[arg(long, default_value_t = 5000)]
    pods: usize,
    /// Share of the cluster's GPUs allocated before the burst (0 to 0.95)
    #[arg(long, default_value_t = 0.5)]
    fill: f64,
}

/// Arguments of `gpuplane bench webhook`.
#[derive(Debug, Args)]
pub struct WebhookBenchArgs {
    /// How long the clients send reviews, in seconds
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Concurrent client connections
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Serve plain HTTP instead of HTTPS (the API server always calls webhooks over TLS)
    #[arg(long)]
    plain_http: bool,
}

/// A throwaway certificate for 127.0.0.1 and its key, used only by the HTTPS load test on the
/// loopback interface (the same pair the webhook TLS tests use).
const BENCH_CA: &str = include_str!("../../kube/tests/fixtures/tls/ca.pem");
const BENCH_CERT: &str = include_str!("../../kube/tests/fixtures/tls/cert-1.pem");
const BENCH_KEY: &str = include_str!("../../kube/tests/fixtures/tls/key-1.pem");

/// Arguments of `gpuplane bench extender`.
#[derive(Debug, Args)]
pub struct ExtenderBenchArgs {
    /// How long the clients send requests, in seconds
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Concurrent client connections
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Share of the cluster's GPUs allocated before the test (0 to 0.95)
    #[arg(long, default_value_t = 0.5)]
    fill: f64,
}

/// The extender does not bind in this test.
struct NoBinder;

impl Binder for NoBinder {
    async fn bind(&self, target: BindTarget) -> Result<(), BindFailure> {
        Err(BindFailure::Other(format!("the load test does not bind (pod {}/{})", target.namespace, target.name)))
    }
}

/// Runs a bench command.
pub fn run(command: BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Extender(args) => extender(args),
        BenchCommand::Webhook(args) => webhook(args),
        BenchCommand::Scheduler(args) => scheduler(args),
    }
}

/// A trace pod as the API server would list it: pending, with `schedulerName: gpuplane`.
fn trace_pod_object(p: &gpuplane_core::Pod, name: &str) -> Result<k8s_openapi::api::core::v1::Pod> {
    let object = json!({
        "metadata": {"name": name, "namespace": "bench", "uid": format!("uid-{name}"),
                     "annotations": {"gpuplane.io/gpu-count": p.gpu.count.to_string(),
                                     "gpuplane.io/gpu-milli": p.gpu.milli_per_gpu.max(1).to_string()}},
        "spec": {"schedulerName": "gpuplane", "priority": p.priority,
                 "containers": [{"name": "main", "resources": {"requests": {
                     "cpu": format!("{}m", p.cpu_milli), "memory": p.memory_bytes.to_string()}}}]},
        "status": {"phase": "Pending"}
    });
    Ok(serde_json::from_value(object)?)
}

fn scheduler(args: SchedulerBenchArgs) -> Result<()> {
    use gpuplane_kube::scheduler::{Scheduler, SchedulerConfig};
    if !(0.0..=0.95).contains(&args.fill) {
        bail!("--fill must be between 0 and 0.95, got {}", args.fill);
    }
    if args.pods == 0 || args.pods > 1_000_000 {
        bail!("--pods must be 1 to 1,000,000, got {}", args.pods);
    }
    let (_, nodes) = input::nodes(None)?;
    let (_, trace) = input::trace(None)?;
    let api_nodes: Vec<_> = nodes.iter().map(api_node).collect();
    let (snapshot, _) = Snapshot::build(&api_nodes, &[])?;
    let requests: Vec<_> = trace.iter().map(|p| snapshot.cluster().request(p)).collect();
    let target = Arc::new(TargetWorkload::from_requests(&requests, 0.95)?);
    let engine = Engine::new(EngineConfig {
        policy: Policy::Fgd,
        target: Some(target),
        seed: 1,
        tie_break: TieBreak::LowestName,
    })?;
    let metrics = Arc::new(gpuplane_kube::metrics::Metrics::new());
    let mut s = Scheduler::new(snapshot, engine, SchedulerConfig::default(), metrics);
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let start = Instant::now();

    // Fill first, through the scheduler itself, untimed.
    let goal = (args.fill * s.snapshot().cluster().total_gpu_milli() as f64) as u64;
    let mut filler = 0usize;
    while s.snapshot().cluster().allocated_gpu_milli() < goal && filler < 100_000 {
        let p = &trace[rng.random_range(0..trace.len())];
        let name = format!("fill-{filler}");
        filler += 1;
        let object = trace_pod_object(p, &name)?;
        s.pod_applied(&object);
        drive(&mut s, &HashMap::from([(name, object)]), start);
    }
    let allocated =
        s.snapshot().cluster().allocated_gpu_milli() as f64 / s.snapshot().cluster().total_gpu_milli() as f64;

    // The burst: every pod arrives at once, then the queue drains.
    let arrivals: Vec<(String, _)> = (0..args.pods)
        .map(|i| {
            let name = format!("burst-{i}");
            trace_pod_object(&trace[rng.random_range(0..trace.len())], &name).map(|p| (name, p))
        })
        .collect::<Result<_>>()?;
    let t0 = Instant::now();
    for (_, p) in &arrivals {
        s.pod_applied(p);
    }
    let queued = t0.elapsed();
    let burst: HashMap<String, _> = arrivals.into_iter().collect();
    let (mut ns, placed, waiting) = drive(&mut s, &burst, start);
    let elapsed = t0.elapsed();
    outln!(
        "scheduler burst: {} pending pods on 1,213 nodes ({:.0} % of GPUs allocated first), FGD, one core",
        args.pods,
        allocated * 100.0
    )?;
    outln!("  queued in {:.1} ms; drained in {:.1} ms", queued.as_secs_f64() * 1e3, elapsed.as_secs_f64() * 1e3)?;
    outln!(
        "  bound {placed}, unschedulable {waiting}; {:.0} pods/s end to end (bind and watch confirmation included)",
        args.pods as f64 / elapsed.as_secs_f64()
    )?;
    ns.sort_unstable();
    let at = |q: f64| ns.get(((ns.len().max(1) - 1) as f64 * q).round() as usize).copied().unwrap_or(0) as f64 / 1e3;
    outln!("  per attempt: p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs", at(0.5), at(0.99), at(1.0))?;
    Ok(())
}

/// Runs the scheduler's actions to the end as a perfect API server would answer them: every bind
/// succeeds and the watch then shows the pod bound. Returns each attempt's time, the pods bound and
/// those reported unschedulable.
fn drive(
    s: &mut gpuplane_kube::scheduler::Scheduler,
    pending: &HashMap<String, k8s_openapi::api::core::v1::Pod>,
    now: Instant,
) -> (Vec<u64>, usize, usize) {
    use gpuplane_kube::scheduler::Action;
    let (mut ns, mut placed, mut waiting) = (Vec::new(), 0, 0);
    loop {
        let t = Instant::now();
        let Some(action) = s.next(now) else { break };
        ns.push(t.elapsed().as_nanos() as u64);
        match action {
            Action::Bind(target) => {
                let key = format!("{}/{}", target.namespace, target.name);
                s.bind_finished(&key, Ok(()), now);
                if let Some(mut bound) = pending.get(&target.name).cloned() {
                    if let Some(spec) = bound.spec.as_mut() {
                        spec.node_name = Some(target.node.clone());
                    }
                    bound
                        .metadata
                        .annotations
                        .get_or_insert_default()
                        .insert("gpuplane.io/gpu-assignment".to_owned(), target.assignment.clone());
                    s.pod_applied(&bound);
                }
                placed += 1;
            }
            Action::ReportUnschedulable { .. } => waiting += 1,
            Action::Evict { .. } => {}
        }
    }
    (ns, placed, waiting)
}

fn extender(args: ExtenderBenchArgs) -> Result<()> {
    check_load_args(args.seconds, args.clients)?;
    if !(0.0..=0.95).contains(&args.fill) {
        bail!("--fill must be between 0 and 0.95, got {}", args.fill);
    }
    let (_, nodes) = input::nodes(None)?;
    let (_, trace) = input::trace(None)?;
    let api_nodes: Vec<_> = nodes.iter().map(api_node).collect();
    let (mut snapshot, _) = Snapshot::build(&api_nodes, &[])?;
    let requests: Vec<_> = trace.iter().map(|p| snapshot.cluster().request(p)).collect();
    let target = Arc::new(TargetWorkload::from_requests(&requests, 0.95)?);
    let engine = |seed| {
        Engine::new(EngineConfig {
            policy: Policy::Fgd,
            target: Some(Arc::clone(&target)),
            seed,
            tie_break: TieBreak::LowestName,
        })
    };

    // Fill the cluster with FGD placements of shuffled trace pods.
    let mut filler = engine(1)?;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let goal = (args.fill * snapshot.cluster().total_gpu_milli() as f64) as u64;
    let mut placed = 0usize;
    while snapshot.cluster().allocated_gpu_milli() < goal && placed < 100_000 {
        let r = &requests[rng.random_range(0..requests.len())];
        if let Decision::Place(p) = filler.decide(snapshot.cluster(), r) {
            snapshot.assume(&format!("bench/filler-{placed}"), "", r.clone(), p)?;
        }
        placed += 1;
    }

    // Request bodies: trace pods as kube-scheduler would send them, with every node name.
    let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    let bodies: Vec<String> = (0..64)
        .map(|i| {
            let p = &trace[rng.random_range(0..trace.len())];
            json!({
                "Pod": {
                    "metadata": {"name": format!("{}-{i}", p.name), "namespace": "bench", "uid": format!("uid-{i}"),
                                 "annotations": {"gpuplane.io/gpu-count": p.gpu.count.to_string(),
                                                 "gpuplane.io/gpu-milli": p.gpu.milli_per_gpu.max(1).to_string()}},
                    "spec": {"containers": [{"name": "main", "resources": {"requests": {
                        "cpu": format!("{}m", p.cpu_milli), "memory": p.memory_bytes.to_string()}}}]},
                    "status": {"phase": "Pending"}
                },
                "NodeNames": names,
            })
            .to_string()
        })
        .collect();
    let body_bytes = bodies.iter().map(String::len).sum::<usize>() / bodies.len();

    let ext = Arc::new(Extender::new(snapshot, engine(2)?, NoBinder, ExtenderConfig::default()));
    // The extender evaluates the pods of its own store, never a request's copy: put the bench's pods there.
    let mut watched = Vec::with_capacity(bodies.len());
    for body in &bodies {
        let args: serde_json::Value = serde_json::from_str(body)?;
        watched.push(Arc::new(serde_json::from_value::<k8s_openapi::api::core::v1::Pod>(args["Pod"].clone())?));
    }
    ext.set_pods(watched);
    let (filter_ns, prioritize_ns, elapsed) =
        load(router(ext), None, args.clients, args.seconds, ["/filter", "/prioritize"], bodies)?;

    let total = filter_ns.len() + prioritize_ns.len();
    outln!(
        "extender load test: 1,213 nodes ({:.0} % of GPUs allocated), {} clients, {:.1} s, requests of {} KiB (all node names)",
        args.fill * 100.0,
        args.clients,
        elapsed.as_secs_f64(),
        body_bytes / 1024
    )?;
    outln!("  {:<12} {:>9} {:>10} {:>10} {:>10} {:>10}", "verb", "requests", "req/s", "p50 ms", "p99 ms", "max ms")?;
    for (verb, mut ns) in [("filter", filter_ns), ("prioritize", prioritize_ns)] {
        print_row(verb, &mut ns, elapsed)?;
    }
    outln!("  {:<12} {:>9} {:>10.0}", "both", total, total as f64 / elapsed.as_secs_f64())?;
    Ok(())
}

fn print_row(verb: &str, ns: &mut [u64], elapsed: Duration) -> std::io::Result<()> {
    if ns.is_empty() {
        return outln!("  {verb:<12} {:>9}", 0);
    }
    ns.sort_unstable();
    let at = |q: f64| ns[((ns.len() - 1) as f64 * q).round() as usize] as f64 / 1e6;
    outln!(
        "  {verb:<12} {:>9} {:>10.0} {:>10.2} {:>10.2} {:>10.2}",
        ns.len(),
        ns.len() as f64 / elapsed.as_secs_f64(),
        at(0.5),
        at(0.99),
        at(1.0)
    )
}

/// One keep-alive connection that sends requests to the two paths in turn until the deadline; returns
/// the latencies of each path.
async fn client(
    addr: SocketAddr,
    tls: Option<tokio_rustls::TlsConnector>,
    id: usize,
    paths: [&str; 2],
    bodies: &[String],
    deadline: Instant,
) -> Result<(Vec<u64>, Vec<u64>)> {
    let tcp = TcpStream::connect(addr).await.context("connect to the server")?;
    tcp.set_nodelay(true)?;
    match tls {
        None => requests(tcp, addr, id, paths, bodies, deadline).await,
        Some(connector) => {
            let name = rustls::pki_types::ServerName::from(addr.ip());
            let stream = connector.connect(name, tcp).await.context("TLS handshake")?;
            requests(stream, addr, id, paths, bodies, deadline).await
        }
    }
}

async fn requests<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    addr: SocketAddr,
    id: usize,
    paths: [&str; 2],
    bodies: &[String],
    deadline: Instant,
) -> Result<(Vec<u64>, Vec<u64>)> {
    let mut latencies = (Vec::new(), Vec::new());
    let mut buf = Vec::with_capacity(64 << 10);
    let mut i = id;
    while Instant::now() < deadline {
        let body = &bodies[i % bodies.len()];
        let first = i.is_multiple_of(2);
        let path = if first { paths[0] } else { paths[1] };
        let request = format!(
            "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        let t0 = Instant::now();
        stream.write_all(request.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        let status = read_response(&mut stream, &mut buf).await?;
        let ns = t0.elapsed().as_nanos() as u64;
        if status != 200 {
            bail!("{path} answered HTTP {status}: {}", String::from_utf8_lossy(&buf));
        }
        if first {
            latencies.0.push(ns)
        } else {
            latencies.1.push(ns)
        }
        i += 1;
    }
    Ok(latencies)
}

/// Serves `app` on 127.0.0.1, runs the clients until the deadline, and returns both paths' latencies.
fn load(
    app: axum::Router,
    tls: Option<(Arc<rustls::ServerConfig>, tokio_rustls::TlsConnector)>,
    clients: usize,
    seconds: f64,
    paths: [&'static str; 2],
    bodies: Vec<String>,
) -> Result<(Vec<u64>, Vec<u64>, Duration)> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("bind 127.0.0.1")?;
        let addr = listener.local_addr()?;
        let (server, connector) = match tls {
            None => (tokio::spawn(async move { axum::serve(listener, app).await.context("serve") }), None),
            Some((config, connector)) => {
                let limits = gpuplane_kube::server::Limits::default();
                let served =
                    gpuplane_kube::server::serve(listener, Some(config), app, limits, futures::future::pending());
                (
                    tokio::spawn(async move {
                        served.await;
                        Ok(())
                    }),
                    Some(connector),
                )
            }
        };
        let bodies = Arc::new(bodies);
        let deadline = Instant::now() + Duration::from_secs_f64(seconds);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..clients {
            let bodies = Arc::clone(&bodies);
            let connector = connector.clone();
            tasks.push(tokio::spawn(async move { client(addr, connector, c, paths, &bodies, deadline).await }));
        }
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for t in tasks {
            let (x, y) = t.await.context("client task")??;
            a.extend(x);
            b.extend(y);
        }
        let elapsed = started.elapsed();
        server.abort();
        Ok((a, b, elapsed))
    })
}

fn check_load_args(seconds: f64, clients: usize) -> Result<()> {
    if !(seconds > 0.0 && seconds <= 600.0) {
        bail!("--seconds must be in (0, 600], got {seconds}");
    }
    if clients == 0 || clients > 256 {
        bail!("--clients must be 1 to 256, got {clients}");
    }
    Ok(())
}

fn webhook(args: WebhookBenchArgs) -> Result<()> {
    check_load_args(args.seconds, args.clients)?;
    let (_, trace) = input::trace(None)?;
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    // Reviews of trace pods (GPU and CPU-only) as the API server sends them on CREATE.
    let bodies: Vec<String> = (0..64)
        .map(|i| {
            let p = &trace[rng.random_range(0..trace.len())];
            let mut resources =
                json!({"requests": {"cpu": format!("{}m", p.cpu_milli), "memory": p.memory_bytes.to_string()}});
            if !p.gpu.is_none() && !p.gpu.is_sharing() {
                resources["limits"] = json!({"nvidia.com/gpu": p.gpu.count.to_string()});
            }
            let annotations = if p.gpu.is_sharing() {
                json!({"gpuplane.io/gpu-milli": p.gpu.milli_per_gpu.to_string()})
            } else {
                json!({})
            };
            let class = if i % 3 == 0 { "batch" } else { "interactive" };
            json!({
                "kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1",
                "request": {
                    "uid": format!("review-{i}"), "namespace": "bench", "operation": "CREATE",
                    "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "resource": {"group": "", "version": "v1", "resource": "pods"},
                    "object": {
                        "kind": "Pod", "apiVersion": "v1",
                        "metadata": {"generateName": format!("{}-", p.name), "namespace": "bench",
                                     "labels": {"gpuplane.io/latency-class": class}, "annotations": annotations},
                        "spec": {"containers": [{"name": "main", "image": "registry.example.com/serve:1", "resources": resources}],
                                 "schedulerName": "default-scheduler", "priority": 0}
                    }
                }
            })
            .to_string()
        })
        .collect();
    let hook = Arc::new(Webhook::new(webhook::WebhookConfig::default()));
    let app = webhook::router(hook, 4 << 20);
    let tls = if args.plain_http { None } else { Some(bench_tls()?) };
    let (mutate_ns, validate_ns, elapsed) =
        load(app, tls, args.clients, args.seconds, ["/mutate", "/validate"], bodies)?;
    let total = mutate_ns.len() + validate_ns.len();
    outln!(
        "webhook load test: {} clients over {}, {:.1} s, AdmissionReviews of trace pods",
        args.clients,
        if args.plain_http { "HTTP" } else { "HTTPS (TLS 1.3, keep-alive)" },
        elapsed.as_secs_f64()
    )?;
    outln!("  {:<12} {:>9} {:>10} {:>10} {:>10} {:>10}", "path", "reviews", "reviews/s", "p50 ms", "p99 ms", "max ms")?;
    for (path, mut ns) in [("mutate", mutate_ns), ("validate", validate_ns)] {
        print_row(path, &mut ns, elapsed)?;
    }
    outln!("  {:<12} {:>9} {:>10.0}", "both", total, total as f64 / elapsed.as_secs_f64())?;
    Ok(())
}

/// The server side (the webhook's own TLS set-up, from files) and a client that trusts the bench CA.
fn bench_tls() -> Result<(Arc<rustls::ServerConfig>, tokio_rustls::TlsConnector)> {
    let dir = tempfile::tempdir().context("temporary directory for the bench certificate")?;
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert, BENCH_CERT)?;
    std::fs::write(&key, BENCH_KEY)?;
    let server = gpuplane_kube::tls::server_config(cert, key)?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in rustls::pki_types::CertificateDer::pem_slice_iter(BENCH_CA.as_bytes()) {
        roots.add(ca.context("bench CA")?)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok((server, tokio_rustls::TlsConnector::from(Arc::new(client))))
}

/// Reads one HTTP/1.1 response with a Content-Length body into `buf`; returns the status code.
async fn read_response<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> Result<u16> {
    buf.clear();
    let mut chunk = [0u8; 16 << 10];
    let header_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("the server closed the connection");
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
    let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("malformed status line")?;
    let length: usize = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")))
        .and_then(|(_, v)| v.trim().parse().ok())
        .context("response without content-length")?;
    while buf.len() < header_end + length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("the server closed the connection mid-body");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    buf.drain(..header_end);
    Ok(status)
}
