//! `gpuplane cache fetch|ls|agent|bench`: fetch a model into a node-local store, list what a store
//! holds, run the node agent, and measure the fetcher against a real nginx with a per-connection rate
//! limit (see docs/model-cache.md).

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use gpuplane_cache::agent::{Agent, AgentConfig, ServerLimits};
use gpuplane_cache::auth::{AuthError, AuthFuture, Authenticator, Caller, Policy, StaticTokens};
use gpuplane_cache::{FetchConfig, Fetcher, FileEntry, Limits, Manifest, PeerToken, Sha256, Source, Store};

use crate::service;

/// What `gpuplane cache` does.
#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Fetch a model (manifest JSON) into the store, verified, resuming an interrupted fetch.
    Fetch(FetchArgs),
    /// List the models in a store: size, last use, pins.
    Ls(LsArgs),
    /// Measure fetch throughput against nginx on 127.0.0.1 with a per-connection rate limit.
    Bench(BenchArgs),
    /// Run the node agent: HTTP API to prefetch, list, pin, and serve blobs to peer agents.
    Agent(Box<AgentArgs>),
}

/// Arguments of `gpuplane cache agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Address to serve the agent API on (in the DaemonSet: the pod's own network, port 8470)
    #[arg(long, default_value = "0.0.0.0:8470")]
    listen: std::net::SocketAddr,
    /// The store's root directory (a hostPath that pods mount read-only)
    #[arg(long, default_value = "/var/lib/gpuplane/cache")]
    root: PathBuf,
    /// Disk budget of the store, in GiB (the store also stays within the file system's free space)
    #[arg(long, default_value_t = 500)]
    budget_gib: u64,
    /// GiB always left free on the store's file system
    #[arg(long, default_value_t = 10)]
    keep_free_gib: u64,
    /// This node's name: pods whose tokens were issued on it are local clients (default: $NODE_NAME)
    #[arg(long)]
    node_name: Option<String>,
    /// How callers' bearer tokens are checked: "tokenreview" (the API server, audience
    /// --audience) or "static" (--static-tokens)
    #[arg(long, default_value = "tokenreview", value_parser = ["tokenreview", "static"])]
    auth: String,
    /// The audience callers' tokens must carry (TokenReview)
    #[arg(long, default_value = "gpuplane-cache")]
    audience: String,
    /// With --auth static: a file of token,user[,node[,namespace/pod]] lines
    #[arg(long)]
    static_tokens: Option<PathBuf>,
    /// Users that are peer agents: they read blobs and the inventory
    #[arg(long, value_delimiter = ',', default_value = "system:serviceaccount:gpuplane-node:gpuplane-cache")]
    peer_user: Vec<String>,
    /// Users that read the inventory and metrics (the scheduler, Prometheus)
    #[arg(long, value_delimiter = ',', default_value = "system:serviceaccount:gpuplane-system:gpuplane-scheduler")]
    reader_user: Vec<String>,
    /// Users that may prefetch any model and pin or unpin for any pod (pods on this node prefetch what
    /// --grants gives their namespace, and pin for themselves)
    #[arg(long, value_delimiter = ',')]
    writer_user: Vec<String>,
    /// YAML file of grants: which namespaces' pods may have the agent fetch from which origin, with
    /// which credential (`grants: [{origin, namespaces, token_env}]`; without it pods may fetch nothing)
    #[arg(long)]
    grants: Option<PathBuf>,
    /// Origins manifests may name, as URL prefixes (https://huggingface.co/, s3://bucket/prefix);
    /// repeat or comma-separate. Nothing else is fetched
    #[arg(long, value_delimiter = ',')]
    allow_origin: Vec<String>,
    /// Environment variables a manifest's token_env may name (such as HF_TOKEN)
    #[arg(long, value_delimiter = ',')]
    allow_token_env: Vec<String>,
    /// File holding the bearer token this agent presents to its peers (a projected ServiceAccount
    /// token with the --audience audience)
    #[arg(long, default_value = "/var/run/secrets/gpuplane/token")]
    peer_token_file: PathBuf,
    /// Peer agents to ask before the origin, as base URLs (comma-separated)
    #[arg(long, value_delimiter = ',')]
    peers: Vec<String>,
    /// A headless Service whose addresses are the peer agents, as host:port; resolved every 30 s
    #[arg(long)]
    peer_service: Option<String>,
    /// This agent's own address, left out of the peers (default: $POD_IP)
    #[arg(long)]
    own_ip: Option<String>,
    /// Range reads hitting origins at once, across all fetches of this agent
    #[arg(long, default_value_t = 32)]
    origin_limit: usize,
    /// Largest file a manifest may list, in GiB
    #[arg(long, default_value_t = 1024)]
    max_file_gib: u64,
    /// Largest model a manifest may describe, in GiB
    #[arg(long, default_value_t = 4096)]
    max_model_gib: u64,
    /// Blob streams served at once (each holds at most two 256 KiB pieces in memory)
    #[arg(long, default_value_t = 32)]
    max_streams: usize,
    /// Blob streams one caller may hold at once
    #[arg(long, default_value_t = 8)]
    max_streams_per_caller: usize,
    /// Connections one client address may hold at once (more are closed on accept)
    #[arg(long, default_value_t = 32)]
    max_connections_per_client: usize,
    /// Models one pod may pin at once
    #[arg(long, default_value_t = 16)]
    max_pins_per_pod: usize,
    /// Seconds between checks of the pins against the pods running on this node (pins of pods that
    /// are gone are dropped; needs the API server and RBAC to list pods; 0: never)
    #[arg(long, default_value_t = 30)]
    pin_check_secs: u64,
    /// Seconds between garbage collections (strays, staging, stale fetches)
    #[arg(long, default_value_t = 600)]
    gc_interval_secs: u64,
    /// Hours after which a fetch recorded by a stopped process, and the partials and blobs no model
    /// refers to, are removed (sooner when room is needed)
    #[arg(long, default_value_t = 6)]
    stale_after_hours: u64,
    /// Hours between re-hashes of every stored blob
    #[arg(long, default_value_t = 24)]
    rehash_interval_hours: u64,
    #[command(flatten)]
    tuning: FetchTuning,
    /// Log format on standard error: text or json (level from RUST_LOG, default info)
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

/// How ranges are read.
#[derive(Debug, Args)]
pub struct FetchTuning {
    /// Bytes per range request, in MiB
    #[arg(long, default_value_t = 16)]
    chunk_mib: u64,
    /// Range requests in flight per file
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// The slowest a request may go, in KiB/s: each request's deadline is 30 s plus its length at
    /// this rate (a model's whole fetch: 300 s plus its bytes at this rate)
    #[arg(long, default_value_t = 1024)]
    min_rate_kib: u64,
}

impl FetchTuning {
    fn config(&self) -> Result<FetchConfig> {
        if self.chunk_mib == 0 || self.chunk_mib > 1024 {
            bail!("--chunk-mib must be 1 to 1024, got {}", self.chunk_mib);
        }
        if self.concurrency == 0 || self.concurrency > 256 {
            bail!("--concurrency must be 1 to 256, got {}", self.concurrency);
        }
        if self.min_rate_kib == 0 {
            bail!("--min-rate-kib must be at least 1");
        }
        Ok(FetchConfig {
            chunk_bytes: self.chunk_mib << 20,
            concurrency: self.concurrency,
            min_bytes_per_sec: self.min_rate_kib << 10,
            ..FetchConfig::default()
        })
    }
}

/// Arguments of `gpuplane cache fetch`.
#[derive(Debug, Args)]
pub struct FetchArgs {
    /// The model manifest (JSON: model, source, files with path, size and sha256)
    #[arg(long)]
    manifest: PathBuf,
    /// The store's root directory
    #[arg(long, default_value = "/var/lib/gpuplane/cache")]
    root: PathBuf,
    /// Disk budget of the store, in GiB
    #[arg(long, default_value_t = 500)]
    budget_gib: u64,
    #[command(flatten)]
    tuning: FetchTuning,
}

/// Arguments of `gpuplane cache ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// The store's root directory
    #[arg(long, default_value = "/var/lib/gpuplane/cache")]
    root: PathBuf,
}

/// Arguments of `gpuplane cache bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Size of the file nginx serves, in MiB
    #[arg(long, default_value_t = 2048)]
    size_mib: u64,
    /// nginx `limit_rate` per connection, in MiB/s (48 MiB/s ≈ 50 MB/s, an object store's per-connection pace)
    #[arg(long, default_value_t = 48)]
    rate_mib: u64,
    /// Where the file and the stores go (default: the system's temporary directory)
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Runs of every client, one after another in this invocation; the table gives medians and ranges
    #[arg(long, default_value_t = 3)]
    runs: usize,
    #[command(flatten)]
    tuning: FetchTuning,
}

/// Runs a cache command.
pub fn run(command: CacheCommand) -> Result<()> {
    match command {
        CacheCommand::Fetch(args) => fetch(args),
        CacheCommand::Ls(args) => ls(args),
        CacheCommand::Bench(args) => bench(args),
        CacheCommand::Agent(args) => agent(*args),
    }
}

/// TokenReview answers as the agent's callers.
struct ReviewedCallers(gpuplane_kube::tokenreview::TokenReviewer);

impl Authenticator for ReviewedCallers {
    fn authenticate<'a>(&'a self, token: &'a str) -> AuthFuture<'a> {
        Box::pin(async move {
            match self.0.review(token).await {
                Ok(Some(user)) => Ok(Some(Caller { node: user.node(), pod: user.pod(), user: user.username })),
                Ok(None) => Ok(None),
                Err(e) => Err(AuthError(e.to_string())),
            }
        })
    }
}

fn agent(args: AgentArgs) -> Result<()> {
    let config = args.tuning.config()?;
    let node = args.node_name.clone().or_else(|| std::env::var("NODE_NAME").ok()).unwrap_or_default();
    if node.is_empty() {
        bail!(
            "--node-name (or $NODE_NAME) is required: it tells local pods from others and names this agent to its peers"
        );
    }
    for origin in &args.allow_origin {
        reqwest::Url::parse(origin).with_context(|| format!("--allow-origin {origin:?} is not a URL"))?;
    }
    for (flag, hours) in
        [("--stale-after-hours", args.stale_after_hours), ("--rehash-interval-hours", args.rehash_interval_hours)]
    {
        if hours == 0 {
            bail!("{flag} must be at least 1");
        }
    }
    if args.gc_interval_secs == 0 {
        bail!("--gc-interval-secs must be at least 1");
    }
    service::init_logging(&args.log_format);
    if args.allow_origin.is_empty() {
        tracing::warn!("No --allow-origin: the agent will refuse every prefetch.");
    }
    let store = Store::open(&args.root, args.budget_gib << 30)?.keep_free(args.keep_free_gib << 30);
    let node_name = node.clone();
    let grants = match &args.grants {
        Some(path) => gpuplane_cache::auth::read_grants(path)?,
        None => Vec::new(),
    };
    for (i, grant) in grants.iter().enumerate() {
        if !gpuplane_cache::origin::allowed(&args.allow_origin, &grant.origin) {
            bail!("--grants: grants[{i}].origin {:?} is not under an --allow-origin", grant.origin);
        }
        if let Some(env) = &grant.token_env
            && !args.allow_token_env.contains(env)
        {
            bail!("--grants: grants[{i}].token_env {env:?} is not an --allow-token-env");
        }
    }
    let fetcher = Fetcher::new(config, args.origin_limit)?
        .with_origins(args.allow_origin.clone())?
        .with_peers(args.peers.clone())
        .with_node(node.clone())
        .with_peer_token(PeerToken::File(args.peer_token_file.clone()));
    let own_ip = args.own_ip.clone().or_else(|| std::env::var("POD_IP").ok());
    let agent_config = AgentConfig {
        policy: Policy {
            node,
            peers: args.peer_user.iter().cloned().collect(),
            readers: args.reader_user.iter().cloned().collect(),
            writers: args.writer_user.iter().cloned().collect(),
            grants,
        },
        origins: args.allow_origin.clone(),
        token_envs: args.allow_token_env.clone(),
        limits: Limits {
            max_file_bytes: args.max_file_gib << 30,
            max_model_bytes: args.max_model_gib << 30,
            ..Limits::default()
        },
        max_streams: args.max_streams,
        max_streams_per_caller: args.max_streams_per_caller,
        max_pins_per_pod: args.max_pins_per_pod,
        ..AgentConfig::default()
    };
    let static_tokens = match (args.auth.as_str(), &args.static_tokens) {
        ("static", Some(path)) => Some(StaticTokens::from_file(path)?),
        ("static", None) => bail!("--auth static needs --static-tokens FILE"),
        (_, Some(_)) => bail!("--static-tokens goes with --auth static"),
        _ => None,
    };
    service::runtime()?.block_on(async move {
        let auth: Box<dyn Authenticator> = match static_tokens {
            Some(tokens) => Box::new(tokens),
            None => {
                let client = kube::Client::try_default().await.context(
                    "--auth tokenreview: cannot reach the Kubernetes API (no kubeconfig or service account)",
                )?;
                Box::new(ReviewedCallers(gpuplane_kube::tokenreview::TokenReviewer::new(
                    client,
                    vec![args.audience.clone()],
                )))
            }
        };
        let agent = Agent::new(store, fetcher.clone(), agent_config, auth);
        if args.pin_check_secs > 0 {
            tokio::spawn(check_pins(Arc::clone(&agent), node_name.clone(), Duration::from_secs(args.pin_check_secs)));
        }
        match agent.collect_garbage(Duration::from_secs(args.stale_after_hours * 3600)) {
            Ok(r) => tracing::info!(
                blobs = r.blobs,
                partials = r.partials,
                dirs = r.dirs,
                stale_fetches = r.stale_fetches,
                bytes = r.bytes,
                "Start-up garbage collection."
            ),
            Err(e) => tracing::warn!(error = %e, "Start-up garbage collection failed."),
        }
        tokio::spawn(Arc::clone(&agent).maintain(
            Duration::from_secs(args.gc_interval_secs),
            Duration::from_secs(args.stale_after_hours * 3600),
            Duration::from_secs(args.rehash_interval_hours * 3600),
        ));
        if let Some(service) = args.peer_service.clone() {
            let fixed = args.peers.clone();
            tokio::spawn(async move {
                loop {
                    match tokio::net::lookup_host(service.as_str()).await {
                        Ok(addrs) => {
                            let mut peers = fixed.clone();
                            peers.extend(
                                addrs
                                    .filter(|a| own_ip.as_deref() != Some(a.ip().to_string().as_str()))
                                    .map(|a| format!("http://{a}")),
                            );
                            peers.sort();
                            peers.dedup();
                            fetcher.set_peers(peers);
                        }
                        Err(e) => {
                            tracing::warn!(%service, error = %e, "Peer service not resolved; keeping the last peers.")
                        }
                    }
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
            });
        }
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        tracing::info!(listen = %args.listen, root = %args.root.display(), "Model cache agent serving.");
        gpuplane_cache::agent::serve(
            listener,
            gpuplane_cache::agent::router(agent),
            ServerLimits { max_per_client: args.max_connections_per_client.max(1), ..ServerLimits::default() },
            gpuplane_kube::serve::shutdown_signal(),
        )
        .await;
        Ok(())
    })
}

/// Every `every`, lists the pods on `node` and drops the pins of pods that are gone. Without the API
/// server (a static-token agent outside a cluster) pins are kept and this says so once.
async fn check_pins(agent: Arc<Agent>, node: String, every: Duration) {
    use k8s_openapi::api::core::v1::Pod;
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "No Kubernetes API: pins of pods that are gone will not be dropped.");
            return;
        }
    };
    let pods: kube::Api<Pod> = kube::Api::all(client);
    let params = kube::api::ListParams::default().fields(&format!("spec.nodeName={node}"));
    loop {
        tokio::time::sleep(every).await;
        let listed_at = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        match pods.list_metadata(&params).await {
            Ok(list) => {
                // A terminating pod still runs (and reads its model) until it is gone.
                let live = list
                    .items
                    .iter()
                    .filter_map(|p| {
                        Some(format!("{}/{}", p.metadata.namespace.as_deref()?, p.metadata.name.as_deref()?))
                    })
                    .collect();
                match agent.reconcile_pins(&live, listed_at) {
                    Ok(dropped) if !dropped.is_empty() => {
                        tracing::info!(pins = ?dropped, "Dropped the pins of pods no longer on this node.")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "Could not drop stale pins."),
                }
            }
            Err(e) => tracing::warn!(error = %e, "Could not list this node's pods; pins kept."),
        }
    }
}

fn mib_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64().max(1e-9)
}

fn fetch(args: FetchArgs) -> Result<()> {
    let config = args.tuning.config()?;
    let origin = args.manifest.display().to_string();
    let text = std::fs::read_to_string(&args.manifest).with_context(|| format!("cannot read {origin}"))?;
    let manifest = Manifest::from_json(&text, &origin)?;
    let store = Mutex::new(Store::open(&args.root, args.budget_gib << 30)?);
    let fetcher = Fetcher::new(config, 64)?;
    let started = Instant::now();
    let report = service::runtime()?.block_on(fetcher.fetch_model(&store, &manifest))?;
    let elapsed = started.elapsed();
    outln!(
        "{}: {} files, {:.1} MiB fetched in {:.2} s ({:.0} MiB/s), {:.1} MiB resumed, {:.1} MiB already stored",
        manifest.model,
        report.files,
        report.fetched_bytes as f64 / (1 << 20) as f64,
        elapsed.as_secs_f64(),
        mib_per_s(report.fetched_bytes, elapsed),
        report.resumed_bytes as f64 / (1 << 20) as f64,
        report.reused_bytes as f64 / (1 << 20) as f64,
    )?;
    if !report.evicted.is_empty() {
        outln!("evicted to make room: {}", report.evicted.join(", "))?;
    }
    outln!("files under {}", args.root.join("models").join(&manifest.model).display())?;
    Ok(())
}

fn ls(args: LsArgs) -> Result<()> {
    let store = Store::open(&args.root, u64::MAX)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    outln!("{:<40} {:>7} {:>12} {:>12}  pinned by", "model", "files", "MiB", "last use")?;
    for (name, m) in store.models() {
        let age = now.saturating_sub(m.last_used);
        let pins = m.pinned_by.iter().cloned().collect::<Vec<_>>().join(", ");
        if m.is_ready() {
            outln!("{name:<40} {:>7} {:>12.1} {:>10} s  {pins}", m.files.len(), mib(m.bytes()), age)?;
        }
        if let Some(f) = &m.fetching {
            let bytes = f.files.iter().fold(0u64, |t, f| t.saturating_add(f.size));
            let since = now.saturating_sub(f.since);
            outln!("{name:<40} {:>7} {:>12.1}   fetching for {since} s", f.files.len(), mib(bytes))?;
        }
    }
    let partial = store.partial_bytes();
    outln!(
        "{:.1} MiB stored (shared files once), {:.1} MiB in partial downloads, {:.1} MiB stray (left by failed fetches)",
        mib(store.used_bytes()),
        mib(partial),
        mib(store.stray_bytes())
    )?;
    Ok(())
}

/// nginx serving a directory on loopback, stopped when dropped.
struct Nginx {
    child: Child,
    port: u16,
    version: String,
    dir: PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // Ask the master to stop its workers too (a killed master would leave them running).
        let _ = Command::new("nginx")
            .arg("-p")
            .arg(&self.dir)
            .arg("-c")
            .arg(self.dir.join("nginx.conf"))
            .args(["-s", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_nginx(dir: &Path, www: &Path, rate_mib: u64) -> Result<Nginx> {
    let version = Command::new("nginx")
        .arg("-v")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().trim_start_matches("nginx version: ").to_owned())
        .map_err(|_| {
            anyhow::anyhow!("nginx not found on PATH; install Debian's nginx-light (apt-get install nginx-light)")
        })?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let temp = dir.join("nginx-temp");
    std::fs::create_dir_all(&temp)?;
    let conf = format!(
        "worker_processes 2;\ndaemon off;\nerror_log {dir}/nginx-error.log;\npid {dir}/nginx.pid;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  keepalive_requests 100000;\n\
         client_body_temp_path {t}/body;\n  proxy_temp_path {t}/proxy;\n  fastcgi_temp_path {t}/fastcgi;\n\
         uwsgi_temp_path {t}/uwsgi;\n  scgi_temp_path {t}/scgi;\n\
         server {{\n    listen 127.0.0.1:{port};\n\
         location /limited/ {{ alias {www}/; limit_rate {rate_mib}m; }}\n\
         location /full/ {{ alias {www}/; }}\n  }}\n}}\n",
        dir = dir.display(),
        t = temp.display(),
        www = www.display(),
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let child = Command::new("nginx")
        .arg("-c")
        .arg(&conf_path)
        .arg("-p")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting nginx")?;
    let mut nginx = Nginx { child, port, version, dir: dir.to_owned() };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = nginx.child.try_wait()? {
            let log = std::fs::read_to_string(dir.join("nginx-error.log")).unwrap_or_default();
            bail!("nginx exited ({status}) before listening: {log}");
        }
        if Instant::now() > deadline {
            bail!("nginx did not listen on 127.0.0.1:{port} within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(nginx)
}

/// Downloads a URL with curl, one stream, to /dev/null; bytes per second.
fn curl(url: &str) -> Result<(u64, Duration)> {
    let out = Command::new("curl")
        .args(["-s", "-f", "-o", "/dev/null", "-w", "%{size_download} %{time_total}", url])
        .output()
        .context("running curl (install Debian's curl)")?;
    if !out.status.success() {
        bail!("curl {url} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut parts = text.split_whitespace();
    let bytes: u64 = parts.next().and_then(|s| s.parse().ok()).context("curl's size_download")?;
    let secs: f64 = parts.next().and_then(|s| s.parse().ok()).context("curl's time_total")?;
    Ok((bytes, Duration::from_secs_f64(secs)))
}

/// Downloads a URL with aria2c, 16 connections and 16 pieces, verifying the SHA-256 when done (as
/// the fetcher does while streaming); the wall time.
fn aria2c(url: &str, dir: &Path, digest: &str) -> Result<Duration> {
    let started = Instant::now();
    let out = Command::new("aria2c")
        .args([
            "-x16",
            "-s16",
            "-k1M",
            "--file-allocation=none",
            "--allow-overwrite=true",
            "--auto-file-renaming=false",
        ])
        .args(["--console-log-level=error", "--summary-interval=0", "--download-result=hide"])
        .arg(format!("--checksum=sha-256={digest}"))
        .arg("-d")
        .arg(dir)
        .args(["-o", "aria2c.bin", url])
        .output()
        .context("running aria2c (install Debian's aria2)")?;
    let elapsed = started.elapsed();
    if !out.status.success() {
        bail!("aria2c {url} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    std::fs::remove_file(dir.join("aria2c.bin")).context("removing aria2c's download")?;
    Ok(elapsed)
}

/// Writes `size` bytes of incompressible content; returns its SHA-256.
fn write_model_file(path: &Path, size: u64) -> Result<String> {
    let mut file = std::io::BufWriter::with_capacity(8 << 20, std::fs::File::create(path)?);
    let mut hash = Sha256::default();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; 8 << 20];
    let mut left = size;
    while left > 0 {
        for word in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        file.write_all(&block[..n])?;
        hash.update(&block[..n]);
        left -= n as u64;
    }
    file.flush()?;
    Ok(hash.hex())
}

fn bench(args: BenchArgs) -> Result<()> {
    let config = args.tuning.config()?;
    if args.size_mib == 0 || args.size_mib > 64 << 10 {
        bail!("--size-mib must be 1 to 65536, got {}", args.size_mib);
    }
    if args.rate_mib == 0 {
        bail!("--rate-mib must be at least 1");
    }
    if args.runs == 0 || args.runs > 20 {
        bail!("--runs must be 1 to 20, got {}", args.runs);
    }
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let work = tempfile::Builder::new().prefix("gpuplane-cache-bench-").tempdir_in(&parent)?;
    let dir = work.path();
    let www = dir.join("www");
    std::fs::create_dir_all(&www)?;
    // nginx's workers may run as an unprivileged user: let them read the file.
    set_mode(dir, 0o755)?;
    set_mode(&www, 0o755)?;
    let size = args.size_mib << 20;
    let digest = write_model_file(&www.join("model.bin"), size)?;
    set_mode(&www.join("model.bin"), 0o644)?;
    let nginx = start_nginx(dir, &www, args.rate_mib)?;
    let base = format!("http://127.0.0.1:{}", nginx.port);

    let manifest = |location: &str| Manifest {
        model: format!("bench-{location}"),
        source: Source::Http { base_url: format!("{base}/{location}"), token_env: None },
        files: vec![FileEntry { path: "model.bin".to_owned(), size, sha256: digest.clone() }],
    };
    let runtime = service::runtime()?;
    let ours = |location: &str| -> Result<Duration> {
        let root = dir.join(format!("store-{location}"));
        let store = Mutex::new(Store::open(&root, u64::MAX)?);
        let fetcher = Fetcher::new(config, 256)?;
        let started = Instant::now();
        let report = runtime.block_on(fetcher.fetch_model(&store, &manifest(location)))?;
        let elapsed = started.elapsed();
        if report.fetched_bytes != size {
            bail!("fetched {} bytes, expected {size}", report.fetched_bytes);
        }
        std::fs::remove_dir_all(&root)?;
        Ok(elapsed)
    };
    // Each run measures every client in turn, so the ratios of one run compare like with like.
    let mut rates: [Vec<f64>; 5] = Default::default();
    for run in 0..args.runs {
        let (curl_bytes, curl_limited) = curl(&format!("{base}/limited/model.bin"))?;
        if curl_bytes != size {
            bail!("curl fetched {curl_bytes} bytes, expected {size}");
        }
        let limited = ours("limited")?;
        let aria = aria2c(&format!("{base}/limited/model.bin"), dir, &digest)?;
        let ceiling = ours("full")?;
        let (_, curl_full) = curl(&format!("{base}/full/model.bin"))?;
        for (r, d) in rates.iter_mut().zip([curl_limited, limited, aria, ceiling, curl_full]) {
            r.push(mib_per_s(size, d));
        }
        eprintln!(
            "run {}: curl {:.0}, gpuplane {:.0}, aria2c {:.0}, ceiling {:.0} MiB/s",
            run + 1,
            rates[0][run],
            rates[1][run],
            rates[2][run],
            rates[3][run]
        );
    }
    let server = if nginx.version.is_empty() { "nginx".to_owned() } else { nginx.version.clone() };
    drop(nginx);

    let ratio = |a: usize, b: usize| -> Vec<f64> { rates[a].iter().zip(&rates[b]).map(|(x, y)| x / y).collect() };
    let shown = |v: &[f64], unit: &str| format!("{:.1}{unit} ({:.1}–{:.1})", median(v), min(v), max(v));
    outln!(
        "fetch bench: {} MiB file from {} on 127.0.0.1, limit_rate {} MiB/s per connection; median (range) of {} runs",
        args.size_mib,
        server,
        args.rate_mib,
        args.runs
    )?;
    outln!("  {:<62} {:>22} {:>16} {:>11}", "client", "MiB/s", "vs curl", "vs ceiling")?;
    outln!("  {:<62} {:>22} {:>16}", "curl, one stream, rate-limited", shown(&rates[0], ""), "1.0×")?;
    let label = format!(
        "gpuplane, {} × {} MiB ranges, rate-limited (verified, on disk)",
        config.concurrency,
        config.chunk_bytes >> 20
    );
    outln!(
        "  {label:<62} {:>22} {:>16} {:>9.0} %",
        shown(&rates[1], ""),
        shown(&ratio(1, 0), "×"),
        100.0 * median(&ratio(1, 3))
    )?;
    outln!(
        "  {:<62} {:>22} {:>16} {:>9.0} %",
        "aria2c -x16 -s16, SHA-256 checked, rate-limited (on disk)",
        shown(&rates[2], ""),
        shown(&ratio(2, 0), "×"),
        100.0 * median(&ratio(2, 3))
    )?;
    outln!(
        "  {:<62} {:>22} {:>16} {:>11}",
        "gpuplane, same settings, no rate limit (the ceiling)",
        shown(&rates[3], ""),
        "",
        "100 %"
    )?;
    outln!("  gpuplane against aria2c: {}", shown(&ratio(1, 2), "×"))?;
    outln!("  {:<62} {:>22}", "curl, one stream, no rate limit, to /dev/null (context)", shown(&rates[4], ""))?;
    Ok(())
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the permissions of {}", path.display()))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> Result<()> {
    Ok(())
}
