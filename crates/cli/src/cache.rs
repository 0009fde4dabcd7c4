//! `gpuplane cache fetch|ls|agent|bench`: fetch a model into a node-local store, list what a store
//! holds, run the node agent, and measure the fetcher against a real nginx with a per-connection rate
//! limit (see docs/model-cache.md).

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use gpuplane_cache::{FetchConfig, Fetcher, FileEntry, Manifest, Sha256, Source, Store};

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
    Agent(AgentArgs),
}

/// Arguments of `gpuplane cache agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Address to serve the agent API on
    #[arg(long, default_value = "0.0.0.0:8470")]
    listen: std::net::SocketAddr,
    /// The store's root directory (a hostPath that pods mount read-only)
    #[arg(long, default_value = "/var/lib/gpuplane/cache")]
    root: PathBuf,
    /// Disk budget of the store, in GiB
    #[arg(long, default_value_t = 500)]
    budget_gib: u64,
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
}

impl FetchTuning {
    fn config(&self) -> Result<FetchConfig> {
        if self.chunk_mib == 0 || self.chunk_mib > 1024 {
            bail!("--chunk-mib must be 1 to 1024, got {}", self.chunk_mib);
        }
        if self.concurrency == 0 || self.concurrency > 256 {
            bail!("--concurrency must be 1 to 256, got {}", self.concurrency);
        }
        Ok(FetchConfig { chunk_bytes: self.chunk_mib << 20, concurrency: self.concurrency, ..FetchConfig::default() })
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
    /// nginx `limit_rate` per connection, in MiB/s
    #[arg(long, default_value_t = 64)]
    rate_mib: u64,
    /// Where the file and the stores go (default: the system's temporary directory)
    #[arg(long)]
    dir: Option<PathBuf>,
    #[command(flatten)]
    tuning: FetchTuning,
}

/// Runs a cache command.
pub fn run(command: CacheCommand) -> Result<()> {
    match command {
        CacheCommand::Fetch(args) => fetch(args),
        CacheCommand::Ls(args) => ls(args),
        CacheCommand::Bench(args) => bench(args),
        CacheCommand::Agent(args) => agent(args),
    }
}

fn agent(args: AgentArgs) -> Result<()> {
    let config = args.tuning.config()?;
    service::init_logging(&args.log_format);
    let store = Store::open(&args.root, args.budget_gib << 30)?;
    let fetcher = Fetcher::new(config, args.origin_limit)?.with_peers(args.peers.clone());
    let own_ip = args.own_ip.clone().or_else(|| std::env::var("POD_IP").ok());
    let agent = gpuplane_cache::agent::Agent::new(store, fetcher.clone());
    service::runtime()?.block_on(async move {
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
        axum::serve(listener, gpuplane_cache::agent::router(agent))
            .with_graceful_shutdown(gpuplane_kube::serve::shutdown_signal())
            .await
            .context("serving the agent API")
    })
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
    println!(
        "{}: {} files, {:.1} MiB fetched in {:.2} s ({:.0} MiB/s), {:.1} MiB resumed, {:.1} MiB already stored",
        manifest.model,
        report.files,
        report.fetched_bytes as f64 / (1 << 20) as f64,
        elapsed.as_secs_f64(),
        mib_per_s(report.fetched_bytes, elapsed),
        report.resumed_bytes as f64 / (1 << 20) as f64,
        report.reused_bytes as f64 / (1 << 20) as f64,
    );
    if !report.evicted.is_empty() {
        println!("evicted to make room: {}", report.evicted.join(", "));
    }
    println!("files under {}", args.root.join("models").join(&manifest.model).display());
    Ok(())
}

fn ls(args: LsArgs) -> Result<()> {
    let store = Store::open(&args.root, u64::MAX)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    println!("{:<40} {:>7} {:>12} {:>12}  pinned by", "model", "files", "MiB", "last use");
    for (name, m) in store.models() {
        let age = now.saturating_sub(m.last_used);
        println!(
            "{name:<40} {:>7} {:>12.1} {:>10} s  {}",
            m.files.len(),
            m.bytes() as f64 / (1 << 20) as f64,
            age,
            m.pinned_by.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    println!("{:.1} MiB stored (shared files counted once)", store.used_bytes() as f64 / (1 << 20) as f64);
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
    let (curl_bytes, curl_limited) = curl(&format!("{base}/limited/model.bin"))?;
    if curl_bytes != size {
        bail!("curl fetched {curl_bytes} bytes, expected {size}");
    }
    let limited = ours("limited")?;
    let ceiling = ours("full")?;
    let (_, curl_full) = curl(&format!("{base}/full/model.bin"))?;
    let server = if nginx.version.is_empty() { "nginx".to_owned() } else { nginx.version.clone() };
    drop(nginx);

    let curl_rate = mib_per_s(size, curl_limited);
    let limited_rate = mib_per_s(size, limited);
    let ceiling_rate = mib_per_s(size, ceiling);
    println!(
        "fetch bench: {} MiB file from {} on 127.0.0.1, limit_rate {} MiB/s per connection",
        args.size_mib, server, args.rate_mib
    );
    println!("  {:<58} {:>9} {:>9} {:>11}", "client", "MiB/s", "vs curl", "vs ceiling");
    println!("  {:<58} {:>9.0} {:>8.1}×", "curl, one stream, rate-limited", curl_rate, 1.0);
    let label = format!(
        "gpuplane, {} × {} MiB ranges, rate-limited (verified, on disk)",
        config.concurrency,
        config.chunk_bytes >> 20
    );
    println!(
        "  {label:<58} {limited_rate:>9.0} {:>8.1}× {:>10.0} %",
        limited_rate / curl_rate,
        100.0 * limited_rate / ceiling_rate
    );
    println!(
        "  {:<58} {:>9.0} {:>9} {:>11}",
        "gpuplane, same settings, no rate limit (the ceiling)", ceiling_rate, "", "100 %"
    );
    println!("  {:<58} {:>9.0}", "curl, one stream, no rate limit, to /dev/null (context)", mib_per_s(size, curl_full));
    Ok(())
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
