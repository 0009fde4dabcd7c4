//! The `gpuplane` binary end to end: a small run writes every output, and every kind of bad input
//! gives a clear message naming the place at fault and a non-zero exit, never a panic.

use std::path::Path;
use std::process::{Command, Output};

fn gpuplane(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gpuplane")).args(args).current_dir(dir).output().expect("run gpuplane")
}

fn write(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, body).expect("write a test input file");
    path.display().to_string()
}

const NODES_CSV: &str = "sn,cpu_milli,memory_mib,gpu,model\nn0,64000,262144,2,T4\nn1,96000,393216,8,A100\n";
const PODS_CSV: &str = "name,cpu_milli,memory_mib,num_gpu,gpu_milli\np0,4000,8192,1,500\np1,8000,16384,2,1000\np2,1000,1024,0,0\np3,2000,4096,1,250\n";

fn assert_fails(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, got success; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    assert!(stderr.contains(needle), "stderr lacks {needle:?}: {stderr}");
}

#[test]
fn small_run_writes_every_output() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = write(dir.path(), "nodes.csv", NODES_CSV);
    let pods = write(dir.path(), "pods.csv", PODS_CSV);
    let out = gpuplane(&["sim", "--nodes", &nodes, "--trace", &pods, "--seeds", "1-2", "--out", "o"], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("FGD") && stdout.contains("BestFit"), "{stdout}");
    for f in ["sim.json", "curves.csv", "samples.csv", "unallocated.svg"] {
        assert!(dir.path().join("o").join(f).is_file(), "{f} missing");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("o/sim.json")).unwrap()).unwrap();
    assert_eq!(json["schema"], "gpuplane.sim/v1");
    assert_eq!(json["result"]["policies"].as_array().unwrap().len(), 8);
    assert_eq!(json["result"]["cluster"]["gpus"], 10);
    // The relaxed-problem yardsticks beside the policies: offline packing never leaves more than online.
    let yardsticks = &json["result"]["yardsticks"];
    let offline = yardsticks["offline_first_fit_decreasing_pct"]["median"].as_f64().unwrap();
    let online = yardsticks["online_best_fit_pct"]["median"].as_f64().unwrap();
    assert!(offline <= online, "{yardsticks}");
    assert!(
        stdout.contains("Yardsticks on a relaxed problem") && stdout.contains("above offline yardstick"),
        "{stdout}"
    );

    // Defragmentation mode adds a row per policy, with its migrations.
    let args =
        ["sim", "--nodes", &nodes, "--trace", &pods, "--seeds", "1", "--policy", "fgd,gpuplane", "--defrag", "2"];
    let out = gpuplane(&[&args[..], &["--out", "d"]].concat(), dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("migrations") && stdout.contains("gpuplane + defrag ≤2"), "{stdout}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("d/sim.json")).unwrap()).unwrap();
    let defrag: Vec<u64> =
        json["result"]["policies"].as_array().unwrap().iter().map(|p| p["defrag"].as_u64().unwrap()).collect();
    assert_eq!(defrag, [0, 0, 2, 2]);

    // Windows add a row per policy and window, with the pods' wait; bad sizes are named.
    let args = ["sim", "--nodes", &nodes, "--trace", &pods, "--seeds", "1", "--policy", "gpuplane", "--window", "1,4"];
    let out = gpuplane(&[&args[..], &["--out", "w"]].concat(), dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("gpuplane · window 4") && stdout.contains("window wait p50/p99"), "{stdout}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("w/sim.json")).unwrap()).unwrap();
    let windows: Vec<u64> =
        json["result"]["policies"].as_array().unwrap().iter().map(|p| p["window"].as_u64().unwrap()).collect();
    assert_eq!(windows, [1, 4]);
    // Four pods, one window of four: they wait 3, 2, 1 and 0 arrivals.
    let run = &json["result"]["runs"][1];
    assert_eq!((run["window"].as_u64(), run["wait"]["p99_arrivals"].as_f64()), (Some(4), Some(3.0)));
    for bad in ["0", "4097", "two"] {
        assert_fails(&gpuplane(&["sim", "--seeds", "1", "--window", bad], dir.path()), "--window");
    }
}

#[test]
fn yaml_cluster_and_pods_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = write(
        dir.path(),
        "nodes.yaml",
        "kind: Node\nmetadata: {name: a, labels: {alibabacloud.com/gpu-card-model: T4}}\nstatus: {allocatable: {cpu: 64000m, memory: 256Gi, alibabacloud.com/gpu-count: '2'}}\n",
    );
    let pods = write(
        dir.path(),
        "pods.yaml",
        "kind: Pod\nmetadata: {name: p, annotations: {alibabacloud.com/gpu-milli: '500', alibabacloud.com/gpu-count: '1'}}\nspec: {containers: [{resources: {requests: {cpu: '2', memory: 4Gi}}}]}\n",
    );
    let out = gpuplane(
        &[
            "sim", "--nodes", &nodes, "--trace", &pods, "--seeds", "1", "--policy", "fgd", "--tune", "0.5", "--format",
            "json", "--out", "o",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["result"]["runs"][0]["placed"], json["result"]["runs"][0]["pods"]);
}

#[test]
fn malformed_csv_row() {
    let dir = tempfile::tempdir().unwrap();
    let pods = write(
        dir.path(),
        "pods.csv",
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli\np0,100,1,1,500\np1,100,1,one,500\n",
    );
    assert_fails(
        &gpuplane(&["sim", "--trace", &pods, "--seeds", "1"], dir.path()),
        "pods.csv:3:4: field `num_gpu` is \"one\"",
    );
}

#[test]
fn malformed_yaml() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = write(dir.path(), "nodes.yaml", "kind: Node\nmetadata: {name: a\n");
    assert_fails(&gpuplane(&["sim", "--nodes", &nodes, "--seeds", "1"], dir.path()), "nodes.yaml:");
}

#[test]
fn negative_and_garbage_quantities() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = write(
        dir.path(),
        "n.yaml",
        "kind: Node\nmetadata: {name: a}\nstatus: {allocatable: {cpu: '-4', memory: 1Gi}}\n",
    );
    assert_fails(&gpuplane(&["sim", "--nodes", &nodes, "--seeds", "1"], dir.path()), "n.yaml:3:");
    let nodes =
        write(dir.path(), "g.yaml", "kind: Node\nmetadata: {name: a}\nstatus: {allocatable: {cpu: 4, memory: 12GB}}\n");
    assert_fails(&gpuplane(&["sim", "--nodes", &nodes, "--seeds", "1"], dir.path()), "\"12GB\"");
    let pods = write(dir.path(), "p.csv", "name,cpu_milli,memory_mib,num_gpu,gpu_milli\np0,-100,1,1,500\n");
    assert_fails(&gpuplane(&["sim", "--trace", &pods, "--seeds", "1"], dir.path()), "p.csv:2:2: field `cpu_milli`");
}

#[test]
fn unknown_policy() {
    let dir = tempfile::tempdir().unwrap();
    assert_fails(
        &gpuplane(&["sim", "--policy", "fgd,tetris", "--seeds", "1"], dir.path()),
        "unknown policy \"tetris\"",
    );
}

#[test]
fn empty_trace() {
    let dir = tempfile::tempdir().unwrap();
    let pods = write(dir.path(), "empty.csv", "name,cpu_milli,memory_mib,num_gpu,gpu_milli\n");
    assert_fails(&gpuplane(&["sim", "--trace", &pods, "--seeds", "1"], dir.path()), "empty.csv: no pods found");
    let pods = write(dir.path(), "blank.csv", "");
    assert_fails(&gpuplane(&["sim", "--trace", &pods, "--seeds", "1"], dir.path()), "blank.csv");
}

#[test]
fn bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    assert_fails(&gpuplane(&["sim", "--seeds", "5-1"], dir.path()), "runs backwards");
    assert_fails(&gpuplane(&["sim", "--tune=-1", "--seeds", "1"], dir.path()), "--tune");
    assert_fails(&gpuplane(&["sim", "--trace", "missing.csv"], dir.path()), "cannot read missing.csv");
    assert_fails(&gpuplane(&["sim", "--trace", "trace.txt"], dir.path()), "unknown file type");
}

#[test]
fn extender_load_test_runs_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let out = gpuplane(&["bench", "extender", "--seconds", "0.5", "--clients", "2", "--fill", "0.2"], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("filter") && stdout.contains("prioritize") && stdout.contains("req/s"), "{stdout}");
    assert_fails(&gpuplane(&["bench", "extender", "--fill", "2"], dir.path()), "--fill");
}

#[test]
fn webhook_load_test_runs_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let out = gpuplane(&["bench", "webhook", "--seconds", "0.3", "--clients", "2"], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("mutate") && stdout.contains("validate") && stdout.contains("reviews/s"), "{stdout}");
    assert!(stdout.contains("over HTTPS"), "{stdout}");
    assert_fails(&gpuplane(&["bench", "webhook", "--clients", "0"], dir.path()), "--clients");
}

#[test]
fn scheduler_burst_bench_binds_or_reports_every_pod() {
    let dir = tempfile::tempdir().unwrap();
    let out = gpuplane(&["bench", "scheduler", "--pods", "300", "--fill", "0.1"], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().find(|l| l.contains("bound")).expect("a line with the bound pods");
    let numbers: Vec<usize> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .take(2)
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(numbers[0] + numbers[1], 300, "{stdout}");
    assert_fails(&gpuplane(&["bench", "scheduler", "--pods", "0"], dir.path()), "--pods");
}

/// Runs a command that needs a cluster where there is none.
fn without_cluster(args: &[&str], dir: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gpuplane"))
        .args(args)
        .current_dir(dir)
        .env("KUBECONFIG", dir.join("missing-kubeconfig"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("HOME", dir)
        .output()
        .expect("run gpuplane")
}

#[test]
fn cluster_commands_without_a_cluster_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    assert_fails(
        &without_cluster(&["extender", "--listen", "127.0.0.1:0"], dir.path()),
        "cannot reach the Kubernetes API",
    );
    assert_fails(&gpuplane(&["extender", "--policy", "tetris"], dir.path()), "unknown policy");
    let scheduler = without_cluster(&["scheduler", "--metrics-listen", "127.0.0.1:0"], dir.path());
    assert_fails(&scheduler, "cannot reach the Kubernetes API");
    assert_fails(&gpuplane(&["scheduler", "--policy", "tetris"], dir.path()), "unknown policy");
    // The webhook checks its certificate before it looks for a cluster.
    assert_fails(&without_cluster(&["webhook", "--tls-cert", "missing.crt"], dir.path()), "cannot read missing.crt");
    assert_fails(&gpuplane(&["webhook", "--priority-class", "interactive"], dir.path()), "CLASS=NAME:VALUE");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").display().to_string();
    let out_dir = dir.path().join("out").display().to_string();
    let assess = without_cluster(&["assess", &repo, "--cluster", "--out", &out_dir], dir.path());
    assert_fails(&assess, "--cluster: cannot reach the cluster of the kubeconfig");
}

#[test]
fn cache_fetch_bench_runs_against_nginx_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let out = gpuplane(&["cache", "bench", "--size-mib", "48", "--rate-mib", "32", "--chunk-mib", "4"], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("curl, one stream, rate-limited") && stdout.contains("vs ceiling"), "{stdout}");
    assert!(stdout.contains("aria2c -x16 -s16, SHA-256 checked") && stdout.contains("against aria2c"), "{stdout}");
    assert_fails(&gpuplane(&["cache", "bench", "--size-mib", "0"], dir.path()), "--size-mib");
}

#[test]
fn cache_agent_refuses_to_start_without_what_its_checks_need() {
    let dir = tempfile::tempdir().unwrap();
    let agent = |extra: &[&str]| {
        let mut args = vec!["cache", "agent", "--listen", "127.0.0.1:0", "--root", "store"];
        args.extend_from_slice(extra);
        Command::new(env!("CARGO_BIN_EXE_gpuplane"))
            .args(&args)
            .current_dir(dir.path())
            .env_remove("NODE_NAME")
            .env("KUBECONFIG", dir.path().join("missing-kubeconfig"))
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env("HOME", dir.path())
            .output()
            .expect("run gpuplane")
    };
    assert_fails(&agent(&[]), "--node-name (or $NODE_NAME) is required");
    assert_fails(&agent(&["--node-name", "gpu-1", "--auth", "static"]), "--auth static needs --static-tokens");
    let tokens = write(dir.path(), "tokens.csv", "short,user\n");
    assert_fails(&agent(&["--node-name", "gpu-1", "--auth", "static", "--static-tokens", &tokens]), "tokens.csv:1");
    assert_fails(&agent(&["--node-name", "gpu-1", "--allow-origin", "not a url"]), "--allow-origin \"not a url\"");
    // A grant may not reach past the allowed origins or credentials.
    let grants = write(dir.path(), "grants.yaml", "grants:\n- {origin: \"https://evil.example/\", namespaces: [a]}\n");
    let allowed = ["--node-name", "gpu-1", "--allow-origin", "https://models.example/", "--grants", &grants];
    assert_fails(&agent(&allowed), "grants[0].origin \"https://evil.example/\" is not under an --allow-origin");
    let grants = write(dir.path(), "grants.yaml", "grants:\n- {origin: https://models.example/x, namespaces: []}\n");
    let empty = ["--node-name", "gpu-1", "--allow-origin", "https://models.example/", "--grants", &grants];
    assert_fails(&agent(&empty), "grants[0].namespaces must name at least one namespace");
    // TokenReview needs the API server: without one the agent says so rather than serving unchecked.
    assert_fails(&agent(&["--node-name", "gpu-1"]), "--auth tokenreview: cannot reach the Kubernetes API");
}

#[test]
fn cache_fetch_ls_and_bad_manifests() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("w.bin"), b"test").unwrap();
    let manifest = format!(
        r#"{{"model": "tiny", "source": {{"kind": "local", "dir": "{}"}},
            "files": [{{"path": "w.bin", "size": 4, "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}}]}}"#,
        src.display()
    );
    let m = write(dir.path(), "m.json", &manifest);
    let out = gpuplane(&["cache", "fetch", "--manifest", &m, "--root", "store"], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(dir.path().join("store/models/tiny/w.bin")).unwrap(), b"test");
    let out = gpuplane(&["cache", "ls", "--root", "store"], dir.path());
    assert!(String::from_utf8_lossy(&out.stdout).contains("tiny"), "{}", String::from_utf8_lossy(&out.stdout));

    let escape = write(dir.path(), "bad.json", &manifest.replace("\"w.bin\"", "\"../w.bin\""));
    assert_fails(&gpuplane(&["cache", "fetch", "--manifest", &escape, "--root", "store"], dir.path()), "files[0].path");
    let wrong = write(dir.path(), "wrong.json", &manifest.replace("9f86", "0f86"));
    assert_fails(
        &gpuplane(&["cache", "fetch", "--manifest", &wrong, "--root", "store2"], dir.path()),
        "SHA-256 is 9f86",
    );
}

/// moto's S3 server on a free loopback port, stopped when dropped.
struct Moto(std::process::Child, u16);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn moto() -> Moto {
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("moto_server (PyPI moto[server]; scripts/test installs it)");
    let server = Moto(child, port);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "moto_server did not listen within 30 s");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    server
}

fn curl_put(url: &str, file: Option<&Path>) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-f", "-X", "PUT", url]);
    if let Some(f) = file {
        // -T sends the file as is (--data-binary would label it a form, which moto's server then parses).
        cmd.arg("-T").arg(f);
    }
    assert!(cmd.status().expect("run curl").success(), "PUT {url}");
}

#[test]
fn cache_fetch_from_an_s3_compatible_store() {
    let s3 = moto();
    let dir = tempfile::tempdir().unwrap();
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let file = dir.path().join("w.bin");
    std::fs::write(&file, &body).unwrap();
    let mut sha = gpuplane_cache::Sha256::default();
    sha.update(&body);
    let endpoint = format!("http://127.0.0.1:{}", s3.1);
    curl_put(&format!("{endpoint}/models"), None);
    curl_put(&format!("{endpoint}/models/llm/v1/weights/w.bin"), Some(&file));
    let manifest = format!(
        r#"{{"model": "llm@v1", "source": {{"kind": "s3", "bucket": "models", "prefix": "llm/v1", "endpoint": "{endpoint}"}},
            "files": [{{"path": "weights/w.bin", "size": {}, "sha256": "{}"}}]}}"#,
        body.len(),
        sha.hex()
    );
    let m = write(dir.path(), "m.json", &manifest);
    let run = |manifest: &str, root: &str| {
        Command::new(env!("CARGO_BIN_EXE_gpuplane"))
            .args(["cache", "fetch", "--manifest", manifest, "--root", root, "--chunk-mib", "1", "--concurrency", "4"])
            .current_dir(dir.path())
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env_remove("AWS_ENDPOINT_URL")
            .output()
            .unwrap()
    };
    let out = run(&m, "store");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(dir.path().join("store/models/llm@v1/weights/w.bin")).unwrap(), body);

    let missing =
        write(dir.path(), "missing.json", &manifest.replace("llm@v1", "other").replace("weights/w.bin", "nope.bin"));
    // In a fresh store (the first store already holds these bytes, so it would not read them again).
    assert_fails(&run(&missing, "store2"), "s3://models/llm/v1/nope.bin");
}

/// nginx serving `www` on a free loopback port at `rate` per connection, stopped when dropped.
struct Nginx(std::process::Child, u16, std::path::PathBuf);

impl Drop for Nginx {
    fn drop(&mut self) {
        // Ask the master to stop its workers too (a killed master would leave them running).
        let _ = Command::new("nginx")
            .arg("-p")
            .arg(&self.2)
            .arg("-c")
            .arg(self.2.join("nginx.conf"))
            .args(["-s", "stop"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn slow_nginx(dir: &Path, www: &Path, rate: &str) -> Nginx {
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
    let d = dir.display();
    let conf = format!(
        "worker_processes 1;\ndaemon off;\nerror_log {d}/error.log;\npid {d}/nginx.pid;\nevents {{}}\n\
         http {{ access_log off; client_body_temp_path {d}/t1; proxy_temp_path {d}/t2; fastcgi_temp_path {d}/t3;\n\
         uwsgi_temp_path {d}/t4; scgi_temp_path {d}/t5;\n\
         server {{ listen 127.0.0.1:{port}; location /m/ {{ alias {}/; limit_rate {rate}; }} }} }}\n",
        www.display()
    );
    std::fs::write(dir.join("nginx.conf"), conf).expect("write nginx.conf");
    let child = Command::new("nginx")
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-p")
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("nginx (Debian nginx-light; scripts/test installs it)");
    let server = Nginx(child, port, dir.to_owned());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "nginx did not listen within 10 s");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    server
}

#[test]
fn a_fetch_killed_with_sigkill_resumes_and_verifies() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::set_permissions(&www, std::fs::Permissions::from_mode(0o755)).unwrap();
    let body: Vec<u8> = (0..24u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
    std::fs::write(www.join("w.bin"), &body).unwrap();
    std::fs::set_permissions(www.join("w.bin"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut sha = gpuplane_cache::Sha256::default();
    sha.update(&body);
    let digest = sha.hex();
    let nginx = slow_nginx(dir.path(), &www, "2m");
    let manifest = format!(
        r#"{{"model": "big", "source": {{"kind": "http", "base_url": "http://127.0.0.1:{}/m"}},
            "files": [{{"path": "w.bin", "size": {}, "sha256": "{digest}"}}]}}"#,
        nginx.1,
        body.len()
    );
    let m = write(dir.path(), "m.json", &manifest);
    let args =
        ["cache", "fetch", "--manifest", m.as_str(), "--root", "store", "--chunk-mib", "1", "--concurrency", "2"];
    let mut first = Command::new(env!("CARGO_BIN_EXE_gpuplane"))
        .args(args)
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // SIGKILL once at least 8 ranges are recorded as durable.
    // partial/<digest>-<first 16 hex digits of the source id>.chunks: found by its digest.
    let progress = || {
        std::fs::read_dir(dir.path().join("store/partial")).into_iter().flatten().flatten().map(|e| e.path()).find(
            |p| {
                p.extension().is_some_and(|x| x == "chunks")
                    && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(digest.as_str()))
            },
        )
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        std::thread::sleep(std::time::Duration::from_millis(50));
        let marks = progress().and_then(|p| std::fs::read(p).ok()).unwrap_or_default();
        if marks.iter().skip(8).filter(|&&b| b == 1).count() >= 8 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no progress within 60 s");
        assert!(first.try_wait().unwrap().is_none(), "the first fetch ended before it was killed");
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let out = gpuplane(&args, dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let resumed: f64 = stdout
        .split("MiB resumed")
        .next()
        .and_then(|s| s.rsplit(", ").next())
        .and_then(|s| s.trim().parse().ok())
        .expect("the resumed MiB in the report");
    assert!(resumed >= 8.0, "{stdout}");
    assert_eq!(std::fs::read(dir.path().join("store/models/big/w.bin")).unwrap(), body);
}

#[test]
fn serve_sim_writes_its_outputs_and_names_bad_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "short.yaml", "horizon_s: 300\ndrain_s: 60\n");
    let out =
        gpuplane(&["serve-sim", "--config", &config, "--trace", "code", "--seeds", "1-2", "--out", "s"], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("kube-default") && stdout.contains("gpuplane"), "{stdout}");
    assert!(stdout.contains("Per seed") && stdout.contains("median"), "{stdout}");
    // Without a terminal the progress bar is hidden; one line per run says where the command is.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("serve-sim: run 1/3 done") && stderr.contains("run 3/3 done (as configured, seed 2)"),
        "{stderr}"
    );
    for f in ["serve.json", "allocation.svg", "fragmentation.svg", "pending.svg"] {
        assert!(dir.path().join("s").join(f).is_file(), "{f} missing");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("s/serve.json")).unwrap()).unwrap();
    assert_eq!(json["schema"], "gpuplane.serve-sim/v1");
    assert_eq!(json["result"]["stacks"].as_array().unwrap().len(), 7, "the ladder of seven stacks");
    assert_eq!(json["config"]["horizon_s"], 300.0);
    assert_eq!(json["seeds"].as_array().unwrap().len(), 2);

    let bad = write(dir.path(), "bad.yaml", "autoscale:\n  target_concurrency: 0\n");
    assert_fails(&gpuplane(&["serve-sim", "--config", &bad], dir.path()), "autoscale.target_concurrency");
    let trace = write(dir.path(), "t.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:00:00,ten,1\n");
    assert_fails(&gpuplane(&["serve-sim", "--trace", &trace], dir.path()), "t.csv:2");
}

#[test]
fn serve_sim_and_board_check_their_arguments_before_simulating() {
    let dir = tempfile::tempdir().unwrap();
    // A configuration only the simulation itself rejects (no GPU of the cluster holds the service), so an
    // error about the arguments shows they were checked first.
    let unplaceable = write(
        dir.path(),
        "big.yaml",
        "services:\n  - {name: huge, params_b: 1000, weight_gb: 2000, layers: 1, kv_heads: 1, head_dim: 1, gpus: 1, \
         cpu_milli: 1000, memory_gb: 1, class: interactive, max_replicas: 1}\n",
    );
    assert_fails(&gpuplane(&["serve-sim", "--config", &unplaceable], dir.path()), "services[huge]");
    assert_fails(&gpuplane(&["serve-sim", "--config", &unplaceable, "--seeds", "5-1"], dir.path()), "--seeds");
    assert_fails(
        &gpuplane(&["serve-sim", "--rate-scale", "1000"], dir.path()),
        "request_rate_scale must be above 0 and at most 100",
    );
    let endless = write(dir.path(), "endless.yaml", "autoscale: {interval_s: 1e-9}\n");
    assert_fails(
        &gpuplane(&["serve-sim", "--config", &endless], dir.path()),
        "autoscale.interval_s must be at least 1 ms",
    );
    let partial = write(dir.path(), "partial.yaml", "bandwidth_gbps: {peer: 0.3}\nhorizon_s: 1e12\n");
    assert_fails(&gpuplane(&["serve-sim", "--config", &partial], dir.path()), "horizon_s must be at most");
    // The board reads the files it is given before it looks at the repository or simulates anything.
    let not_json = write(dir.path(), "serve.json", "not json");
    assert_fails(&gpuplane(&["board", "--repo", "not-a-repo", "--serve", &not_json], dir.path()), "serve.json");
}

#[test]
fn node_agent_names_a_bad_inventory_before_touching_the_cluster() {
    let dir = tempfile::tempdir().unwrap();
    assert_fails(&gpuplane(&["node", "--node-name", "n1", "--inventory", "missing.yaml"], dir.path()), "missing.yaml");
    let bad = write(dir.path(), "gpus.yaml", "gpus:\n  - {index: 2, uuid: GPU-a, model: T4, memory_mib: 15360}\n");
    assert_fails(&gpuplane(&["node", "--node-name", "n1", "--inventory", &bad], dir.path()), "gpus[0].index");
    if !Path::new("/dev/nvidiactl").exists() {
        // No inventory and no driver: NVML discovery says it failed.
        assert_fails(&gpuplane(&["node", "--node-name", "n1"], dir.path()), "NVML");
    }
}

#[test]
fn assess_reads_this_repository_and_writes_every_report() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = tempfile::tempdir().unwrap();
    let out_dir = out.path().display().to_string();
    let args = ["assess", ".", "--manifests", "deploy", "--as-of", "2026-11-28", "--out", &out_dir, "--format", "json"];
    let run = gpuplane(&args, &repo);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let json: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(json["schema"], "gpuplane.assess/v1");
    assert_eq!(json["areas"].as_array().unwrap().len(), 8);
    // The device plugin DaemonSet in deploy/ is the GPU area's level-2 evidence.
    let checks = json["checks"].as_array().unwrap();
    let plugin = checks.iter().find(|c| c["id"] == "gpu.device-plugin").unwrap();
    assert_eq!(plugin["status"], "pass");
    assert!(plugin["evidence"][0].as_str().unwrap().starts_with("deploy/node/daemonset.yaml:"));
    for file in ["assessment.json", "assessment.md", "assessment.html"] {
        assert!(out.path().join(file).exists(), "{file}");
    }
    let html = std::fs::read_to_string(out.path().join("assessment.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("GPU capacity &amp; isolation"));

    // The JSON is a baseline for the next run: the trend is printed.
    let baseline = out.path().join("assessment.json").display().to_string();
    let args =
        ["assess", ".", "--manifests", "deploy", "--as-of", "2026-11-28", "--out", &out_dir, "--baseline", &baseline];
    let run = gpuplane(&args, &repo);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let table = String::from_utf8(run.stdout).unwrap();
    assert!(table.contains("since baseline") && table.contains("no check changed"), "{table}");
}

#[test]
fn assess_names_the_place_of_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").display().to_string();
    let survey = write(dir.path(), "survey.yaml", "answers:\n  platform_team: 1\n  satisfaction_survey: 7\n");
    let out = gpuplane(&["assess", &repo, "--survey", &survey, "--out", "out"], dir.path());
    assert_fails(&out, "survey.yaml: line 3: answers.satisfaction_survey: expected an answer from 0 to 3, found 7");
    let model = write(dir.path(), "model.yaml", "extends: builtin\nweights: {checks: {gpu.nope: 2}}\n");
    let out = gpuplane(&["assess", &repo, "--model", &model, "--out", "out"], dir.path());
    assert_fails(&out, "model.yaml: weights.checks.gpu.nope: expected the id of a check of the model");
    std::fs::create_dir_all(dir.path().join("plain")).unwrap();
    let out = gpuplane(&["assess", "plain", "--out", "out"], dir.path());
    assert_fails(&out, "plain: git rev-parse --show-toplevel failed: fatal: not a git repository");
    let out = gpuplane(&["assess", &repo, "--as-of", "2026-13-01", "--out", "out"], dir.path());
    assert_fails(&out, "--as-of 2026-13-01: expected a date such as 2026-11-28");
    let out = gpuplane(&["assess", &repo, "--platform", "nope", "--out", "out"], dir.path());
    assert_fails(&out, "--platform: nope: expected the name of an assessed repository");
}

#[test]
fn a_closed_pipe_ends_a_subcommand_quietly_with_the_sigpipe_status() {
    let dir = tempfile::tempdir().unwrap();
    let pod = write(
        dir.path(),
        "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: c, image: i}]\n",
    );
    // A pipe whose reader is gone before gpuplane writes anything (`gpuplane … | head -0`).
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_gpuplane"))
        .args(["lint", &pod])
        .current_dir(dir.path())
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{stderr}");
    assert!(stderr.is_empty(), "nothing on stderr: {stderr}");
}

#[test]
fn lint_reads_a_named_file_whatever_its_extension_and_names_a_yaml_error_once() {
    let dir = tempfile::tempdir().unwrap();
    let bypass = r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": {"containers": [
        {"name": "c", "image": "i", "env": [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}]}]}}"#;
    for name in ["bypass.json", "bypass.yml.txt"] {
        let path = write(dir.path(), name, bypass);
        let out = gpuplane(&["lint", &path], dir.path());
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{name}: the GPU bypass is an error: {stdout}");
        assert!(stdout.contains("GPU001") && stdout.contains("1 objects"), "{stdout}");
    }
    // In a folder, only YAML files are manifests.
    let out = gpuplane(&["lint", "."], dir.path());
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 objects"), "{}", String::from_utf8_lossy(&out.stdout));

    let bad = write(dir.path(), "bad.yaml", "apiVersion: v1\nkind: Pod\nmetadata:\n  labels: [a\n");
    let out = gpuplane(&["lint", &bad], dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_fails(&out, "bad.yaml: line ");
    assert_eq!(stderr.matches("column").count(), 1, "the place once: {stderr}");
    let bad_json = write(dir.path(), "bad.json", "{\"apiVersion\": \"v1\",\n \"kind\": }");
    assert_fails(&gpuplane(&["lint", &bad_json], dir.path()), "bad.json: line 2 column");
}

#[test]
fn lint_reads_a_large_list_within_its_budget() {
    let dir = tempfile::tempdir().unwrap();
    let mut list = String::from("apiVersion: v1\nkind: List\nitems:\n");
    for i in 0..20_000 {
        list.push_str(&format!(
            "  - apiVersion: v1\n    kind: ConfigMap\n    metadata: {{name: c{i}, namespace: n, labels: {{app: a, tier: t}}}}\n    data: {{k: v, other: w}}\n"
        ));
    }
    let path = write(dir.path(), "list.yaml", &list);
    let out = gpuplane(&["lint", &path], dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("20000 objects"), "{stdout}");
}
