//! `gpuplane posture` end to end with real scanners: a repository whose AI-marked and unmarked commits
//! introduce known weaknesses, scanned by Bandit and Semgrep (a local rules file, no network), ingested
//! as SARIF; checks cohort rates, fingerprints across a line move, baseline states, triage figures and
//! the gate's exit code.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

fn gpuplane(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gpuplane")).args(args).current_dir(dir).output().expect("run gpuplane")
}

fn git(repo: &Path, args: &[&str]) -> String {
    git_at(repo, args, 0)
}

/// Runs git with author and committer dates `day` days after 2026-01-01.
fn git_at(repo: &Path, args: &[&str], day: i64) -> String {
    let date = format!("@{} +0000", 1_767_225_600 + day * 86_400);
    let out = Command::new("git")
        .env("GIT_AUTHOR_DATE", &date)
        .env("GIT_COMMITTER_DATE", &date)
        .arg("-C")
        .arg(repo)
        .args(["-c", "user.name=Ada", "-c", "user.email=ada@example.com", "-c", "commit.gpgsign=false"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn commit(repo: &Path, files: &[(&str, &str)], message: &str, day: i64) -> String {
    for (path, text) in files {
        let path = repo.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    git(repo, &["add", "-A"]);
    git_at(repo, &["commit", "-q", "-m", message], day);
    git(repo, &["rev-parse", "HEAD"])
}

const SEMGREP_RULES: &str = r#"rules:
  - id: python-eval
    pattern: eval(...)
    message: eval() runs arbitrary code
    languages: [python]
    severity: ERROR
    metadata:
      cwe: ["CWE-95: Improper Neutralization of Directives in Dynamically Evaluated Code ('Eval Injection')"]
  - id: python-shell-true
    pattern: subprocess.call(..., shell=True)
    message: a shell runs the command line
    languages: [python]
    severity: WARNING
    metadata:
      cwe: ["CWE-78: Improper Neutralization of Special Elements used in an OS Command ('OS Command Injection')"]
"#;

/// Runs Bandit and Semgrep on `app/`, writing `<tag>-bandit.sarif` and `<tag>-semgrep.sarif` beside the repo.
fn scan_with_real_scanners(repo: &Path, work: &Path, tag: &str) -> (String, String) {
    let bandit = work.join(format!("{tag}-bandit.sarif"));
    let out = Command::new("bandit")
        .args(["-q", "-r", "app", "-f", "sarif", "-o"])
        .arg(&bandit)
        .current_dir(repo)
        .output()
        .expect("bandit is installed by scripts/test (pip install bandit[sarif])");
    assert!(bandit.exists(), "bandit wrote no SARIF: {}", String::from_utf8_lossy(&out.stderr));
    let semgrep = work.join(format!("{tag}-semgrep.sarif"));
    // Semgrep prefixes rule ids with the rules file's folder relative to the working directory: keep
    // the file in the repository (untracked) so the ids stay plain and stable.
    let rules = repo.join("rules.yml");
    std::fs::write(&rules, SEMGREP_RULES).unwrap();
    let _ = work;
    let out = Command::new("semgrep")
        .args(["scan", "--metrics=off", "--disable-version-check", "--sarif", "--config"])
        .arg("rules.yml")
        .arg("--output")
        .arg(&semgrep)
        .arg("app")
        .current_dir(repo)
        .output()
        .expect("semgrep is installed by scripts/test (pip install semgrep)");
    assert!(out.status.success(), "semgrep: {}", String::from_utf8_lossy(&out.stderr));
    (bandit.display().to_string(), semgrep.display().to_string())
}

fn scan_json(repo: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["posture", "scan", "--format", "json"];
    all.extend_from_slice(args);
    let out = gpuplane(&all, repo);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn rules_of(scan: &serde_json::Value, state: &str) -> Vec<String> {
    let mut rules: Vec<String> = scan["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["state"] == state)
        .map(|f| f["rule"].as_str().unwrap().to_owned())
        .collect();
    rules.sort();
    rules
}

#[test]
fn real_scanners_ai_cohort_rates_fingerprints_baseline_triage_and_gate() {
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join(".git/info/exclude"), "rules.yml\n").unwrap();
    let base = commit(&repo, &[("app/util.py", "def add(a, b):\n    return a + b\n")], "Add util", 0);
    let run_py = "import subprocess\n\n\ndef run(cmd):\n    subprocess.call(cmd, shell=True)\n\n\ndef calc(expr):\n    return eval(expr)\n";
    // With notes no scanner reads: they count in the all-files rate, not in the scanned-files one.
    let notes = "# Runner\n\nRuns commands.\n\n- one\n- two\n- three\n- four\n- five\n- six\n- seven\n";
    commit(
        &repo,
        &[("app/run.py", run_py), ("docs/runner.md", notes)],
        "Add runner\n\nCo-authored-by: Claude <noreply@anthropic.com>",
        1,
    );
    commit(
        &repo,
        &[("app/hash.py", "import hashlib\n\n\ndef digest(data):\n    return hashlib.md5(data).hexdigest()\n")],
        "Add digest",
        2,
    );
    let out1 = work.path().join("out1").display().to_string();
    let (bandit, semgrep) = scan_with_real_scanners(&repo, work.path(), "1");
    let first = scan_json(&repo, &["--sarif", &bandit, &semgrep, "--out", &out1]);

    // Attribution: one AI-assisted commit, by its co-author trailer.
    let commits = first["commits"].as_array().unwrap();
    let ai: Vec<_> = commits.iter().filter(|c| c["attribution"]["ai"] == true).collect();
    assert_eq!(ai.len(), 1);
    assert_eq!(ai[0]["attribution"]["tool"], "Claude Code");

    // Bandit B602 and Semgrep's shell rule flag the same line with CWE-78: merged into one finding.
    let findings = first["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 5, "{findings:#?}");
    let b602 = findings.iter().find(|f| f["rule"] == "B602").unwrap();
    assert_eq!(b602["also_reported_by"][0], "Semgrep OSS:python-shell-true");
    assert_eq!(
        (b602["path"].as_str(), b602["line"].as_u64(), b602["ai"].as_bool()),
        (Some("app/run.py"), Some(5), Some(true))
    );

    // Cohorts: the AI commit added 9 lines of Python, 11 of notes, and 4 findings (B404, B602, B307,
    // python-eval); the two other commits added 7 lines and 1 finding (B324, MD5).
    let cohort =
        |name: &str| first["cohorts"].as_array().unwrap().iter().find(|c| c["cohort"] == name).unwrap().clone();
    let ai = cohort("ai-assisted");
    let other = cohort("other");
    assert_eq!(
        (ai["commits"].as_u64(), ai["added_lines"].as_u64(), ai["findings"].as_u64()),
        (Some(1), Some(20), Some(4))
    );
    assert!((ai["per_kloc"].as_f64().unwrap() - 4000.0 / 20.0).abs() < 1e-6);
    assert_eq!(ai["scanned_added_lines"].as_u64(), Some(9), "Bandit reads .py; Semgrep found things in .py");
    assert!((ai["per_scanned_kloc"].as_f64().unwrap() - 4000.0 / 9.0).abs() < 1e-6);
    assert_eq!(ai["per_100_commits"].as_f64(), Some(400.0));
    assert_eq!(
        (other["commits"].as_u64(), other["added_lines"].as_u64(), other["findings"].as_u64()),
        (Some(2), Some(7), Some(1))
    );
    assert_eq!(other["per_100_commits"].as_f64(), Some(50.0));

    // A line move (a comment above everything) keeps every fingerprint: nothing new, nothing gone.
    let moved = format!("# Runs commands for the scheduler.\n{run_py}");
    let move_commit = commit(&repo, &[("app/run.py", &moved)], "Document the runner", 10);
    let (bandit, semgrep) = scan_with_real_scanners(&repo, work.path(), "2");
    let baseline1 = format!("{out1}/findings.sarif");
    // One run per scanner, with the scanner's own rules (their help text included), valid SARIF 2.1.0.
    assert_valid_sarif(Path::new(&baseline1));
    let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&baseline1).unwrap()).unwrap();
    let mut drivers: Vec<&str> =
        written["runs"].as_array().unwrap().iter().map(|r| r["tool"]["driver"]["name"].as_str().unwrap()).collect();
    drivers.sort();
    assert_eq!(drivers, ["Bandit", "Semgrep OSS"]);
    let bandit_run =
        written["runs"].as_array().unwrap().iter().find(|r| r["tool"]["driver"]["name"] == "Bandit").unwrap();
    let rule = bandit_run["tool"]["driver"]["rules"].as_array().unwrap().iter().find(|r| r["id"] == "B602").unwrap();
    assert!(rule["helpUri"].is_string() || rule["help"].is_object(), "Bandit's description of B602: {rule}");
    let out2 = work.path().join("out2").display().to_string();
    let second = scan_json(&repo, &["--sarif", &bandit, &semgrep, "--baseline", &baseline1, "--out", &out2]);
    assert_eq!(rules_of(&second, "unchanged").len(), 5);
    assert!(rules_of(&second, "new").is_empty());
    assert!(second["gone"].as_array().unwrap().is_empty());
    let b602_moved = second["findings"].as_array().unwrap().iter().find(|f| f["rule"] == "B602").unwrap().clone();
    assert_eq!(b602_moved["line"].as_u64(), Some(6));
    assert_eq!(b602_moved["fingerprint"], b602["fingerprint"]);

    // Fixing eval removes two findings (absent); triage marks B404 a false positive.
    let fixed = moved
        .replace("import subprocess", "import ast\nimport subprocess")
        .replace("eval(expr)", "ast.literal_eval(expr)");
    commit(&repo, &[("app/run.py", &fixed)], "Parse literals only", 15);
    let (bandit, semgrep) = scan_with_real_scanners(&repo, work.path(), "3");
    let triage = work.path().join("triage.yaml");
    std::fs::write(&triage, "triage:\n  - rule: B404\n    path: app/run.py\n    decision: false_positive\n    justification: importing subprocess is not a risk by itself\n    date: 2026-01-31\n").unwrap();
    let baseline2 = format!("{out2}/findings.sarif");
    let out3 = work.path().join("out3").display().to_string();
    let triage_arg = triage.display().to_string();
    let third = scan_json(
        &repo,
        &["--sarif", &bandit, &semgrep, "--baseline", &baseline2, "--triage", &triage_arg, "--out", &out3],
    );
    let mut gone: Vec<&str> = third["gone"].as_array().unwrap().iter().map(|f| f["rule"].as_str().unwrap()).collect();
    gone.sort();
    assert_eq!(gone, ["B307", "python-eval"]);
    assert!(rules_of(&third, "new").is_empty(), "{:?}", rules_of(&third, "new"));
    let b404 = third["rules"].as_array().unwrap().iter().find(|r| r["rule"] == "B404").unwrap();
    assert_eq!((b404["triaged"].as_u64(), b404["false_positive_rate"].as_f64()), (Some(1), Some(1.0)));
    let eval = third["rules"].as_array().unwrap().iter().find(|r| r["rule"] == "python-eval").unwrap();
    assert_eq!((eval["precision"].as_f64(), eval["fixed_share"].as_f64()), (Some(1.0), Some(1.0)));
    assert_eq!(third["engagement"]["fixed"].as_u64(), Some(2));
    assert_eq!(third["engagement"]["dismissed_with_justification"].as_u64(), Some(1));
    // Introduced on day 1, gone at the head's commit on day 15; dismissed at the end of 31 January.
    assert_eq!(third["engagement"]["median_days_to_fix"].as_f64(), Some(14.0));
    let dismiss = third["engagement"]["median_days_to_dismiss"].as_f64().unwrap();
    assert!((dismiss - 30.0).abs() < 0.001, "{dismiss}");
    let page = std::fs::read_to_string(format!("{out3}/posture.html")).unwrap();
    assert!(page.contains("<svg") && page.contains("Effective false-positive rate per triaged rule"));
    assert!(!page.contains("<script"));

    // The gate over the AI-assisted change fails (exit 1) under the stricter profile; the comment-only
    // change passes.
    let sarif1 = [work.path().join("1-bandit.sarif"), work.path().join("1-semgrep.sarif")];
    let (s1, s2) = (sarif1[0].display().to_string(), sarif1[1].display().to_string());
    let head3 = git(&repo, &["rev-parse", "HEAD~2"]);
    let gate = gpuplane(&["posture", "gate", "--sarif", &s1, &s2, "--base", &base, "--head", &head3], &repo);
    let text = String::from_utf8_lossy(&gate.stdout);
    assert_eq!(gate.status.code(), Some(1), "{text}");
    assert!(text.contains("profile ai (1 AI-assisted commits): 5 findings on changed lines, 4 blocking"), "{text}");
    assert!(text.contains("human review required"), "{text}");
    let sarif2 = [
        work.path().join("2-bandit.sarif").display().to_string(),
        work.path().join("2-semgrep.sarif").display().to_string(),
    ];
    let gate = gpuplane(
        &["posture", "gate", "--sarif", &sarif2[0], &sarif2[1], "--base", &head3, "--head", &move_commit],
        &repo,
    );
    let text = String::from_utf8_lossy(&gate.stdout);
    assert_eq!(gate.status.code(), Some(0), "{text}");
    assert!(text.contains("profile default: 0 findings on changed lines"), "{text}");
}

#[test]
fn posture_errors_name_the_place() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.sarif");
    std::fs::write(&bad, "{\"version\": \"2.1.0\", \"runs\": [ {\"tool\": {}} ]}").unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let bad_arg = bad.display().to_string();
    let out = gpuplane(&["posture", "scan", "--sarif", &bad_arg, "--out", "out"], &repo);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.sarif: line 1 column") && stderr.contains("driver"), "{stderr}");

    std::fs::write(&bad, "{\"version\": \"2.0.0\", \"runs\": []}").unwrap();
    let out = gpuplane(&["posture", "scan", "--sarif", &bad_arg], &repo);
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.sarif: version: expected 2.1.0, found 2.0.0"));
    // The SARIF is checked before the history is read: a range git would refuse is not reached.
    let out = gpuplane(&["posture", "scan", "--sarif", &bad_arg, "--range", "no-such-ref"], &repo);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.sarif: version") && !stderr.contains("no-such-ref"), "{stderr}");

    let markers = dir.path().join("markers.yaml");
    std::fs::write(&markers, "format: 7\n").unwrap();
    let markers_arg = markers.display().to_string();
    let out = gpuplane(&["posture", "attribute", "--markers", &markers_arg], &repo);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("markers.yaml: line 1"), "{stderr}");

    let plain = dir.path().display().to_string();
    let out = gpuplane(&["posture", "attribute", "--repo", &plain], &repo);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("not a git repository"), "{stderr}");
}

/// Validates a SARIF log against the SARIF 2.1.0 JSON schema (tests/fixtures, from OASIS) with the
/// `jsonschema` package of the scanners' virtual environment, and checks that every run describes rules.
fn assert_valid_sarif(path: &Path) {
    let checkov = run("sh", &["-c", "command -v checkov"], Path::new("."), "pip install checkov");
    let bin = Path::new(String::from_utf8_lossy(&checkov.stdout).trim()).parent().unwrap().to_owned();
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sarif-schema-2.1.0.json");
    let check = "import json, sys, jsonschema\n\
                 schema = json.load(open(sys.argv[1]))\n\
                 log = json.load(open(sys.argv[2]))\n\
                 jsonschema.Draft7Validator(schema).validate(log)\n\
                 assert all(run['tool']['driver'].get('rules') for run in log['runs']), 'a run without rules'\n";
    let out = Command::new(bin.join("python3"))
        .args(["-c", check])
        .arg(&schema)
        .arg(path)
        .output()
        .expect("the scanners' python3 (scripts/test installs it with jsonschema)");
    assert!(out.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
}

fn run(program: &str, args: &[&str], dir: &Path, installed_by: &str) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}; scripts/test installs it ({installed_by})"))
}

const INFERENCE_DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: llm, namespace: ml}
spec:
  selector: {matchLabels: {app: llm}}
  template:
    metadata: {labels: {app: llm}}
    spec:
      hostIPC: true
      containers:
        - name: server
          image: vllm/vllm-openai:latest
          securityContext: {privileged: true}
          resources: {limits: {nvidia.com/gpu: 1}}
";

const WORKFLOW: &str = "on: pull_request_target
jobs:
  test:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
        with: {ref: \"${{ github.event.pull_request.head.sha }}\"}
      - run: echo \"${{ github.event.pull_request.title }}\"
";

#[test]
fn sarif_from_checkov_zizmor_and_clippy_is_read_with_normalised_paths_and_levels() {
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join(".git/info/exclude"), "target/\nout/\n*.sarif\n").unwrap();
    commit(
        &repo,
        &[
            ("k8s/inference.yaml", INFERENCE_DEPLOYMENT),
            (".github/workflows/ci.yml", WORKFLOW),
            ("Cargo.toml", "[package]\nname = \"demo\"\nversion = \"0.1.0\"\nedition = \"2021\"\n"),
            (
                "src/main.rs",
                "fn main() {\n    let v = vec![1];\n    if v.len() == 0 {\n        println!(\"empty\");\n    }\n}\n",
            ),
        ],
        "Add a service",
        0,
    );

    // Checkov writes out/results_sarif.sarif; its exit code is non-zero when it finds anything.
    run(
        "checkov",
        &["-d", "k8s", "--framework", "kubernetes", "-o", "sarif", "--output-file-path", "out", "--quiet"],
        &repo,
        "pip install checkov",
    );
    let zizmor = run("zizmor", &["--offline", "--format", "sarif", ".github/workflows"], &repo, "pip install zizmor");
    std::fs::write(repo.join("zizmor.sarif"), &zizmor.stdout).unwrap();
    let clippy = Command::new("cargo")
        .args(["clippy", "--quiet", "--offline", "--message-format=json"])
        .env("CARGO_TARGET_DIR", repo.join("target"))
        .current_dir(&repo)
        .output()
        .unwrap();
    let mut sarif = Command::new("clippy-sarif")
        .current_dir(&repo)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("clippy-sarif: scripts/test installs it (cargo install clippy-sarif)");
    std::io::Write::write_all(&mut sarif.stdin.take().unwrap(), &clippy.stdout).unwrap();
    let sarif = sarif.wait_with_output().unwrap();
    std::fs::write(repo.join("clippy.sarif"), &sarif.stdout).unwrap();

    let scan = scan_json(
        &repo,
        &["--sarif", "out/results_sarif.sarif", "zizmor.sarif", "clippy.sarif", "--out", "out/posture"],
    );
    let findings = scan["findings"].as_array().unwrap();
    let by_tool = |tool: &str| findings.iter().filter(|f| f["tool"] == tool).collect::<Vec<_>>();
    // Checkov prints the scanned folder twice (k8s/k8s/…): the path is the repository's.
    let checkov = by_tool("Checkov");
    assert!(checkov.len() >= 10, "{checkov:?}");
    assert!(checkov.iter().all(|f| f["path"] == "k8s/inference.yaml"), "{checkov:?}");
    assert!(checkov.iter().any(|f| f["rule"] == "CKV_K8S_16"), "privileged container");
    let fingerprints: std::collections::HashSet<&str> =
        findings.iter().map(|f| f["fingerprint"].as_str().unwrap()).collect();
    assert_eq!(fingerprints.len(), findings.len(), "fingerprints are unique");

    let zizmor = by_tool("zizmor");
    let trigger = zizmor.iter().find(|f| f["rule"] == "zizmor/dangerous-triggers").unwrap();
    assert_eq!(
        (trigger["path"].as_str(), trigger["line"].as_u64(), trigger["severity"].as_str()),
        (Some(".github/workflows/ci.yml"), Some(1), Some("high"))
    );
    assert!(zizmor.iter().any(|f| f["rule"] == "zizmor/template-injection"));

    let clippy = by_tool("clippy");
    let len_zero = clippy.iter().find(|f| f["rule"] == "clippy::len_zero").unwrap_or_else(|| panic!("{clippy:?}"));
    assert_eq!((len_zero["path"].as_str(), len_zero["line"].as_u64()), (Some("src/main.rs"), Some(3)));
    // Every finding is blamed to the one commit, which no marker attributes to an AI assistant.
    assert!(findings.iter().all(|f| f["ai"] == false), "{findings:?}");
}

/// One commit of the attribution fixture: who wrote it, who committed it, and what it says.
struct Fixture {
    author: (&'static str, &'static str),
    committer: (&'static str, &'static str),
    message: &'static str,
    /// The assistant the commit should be attributed to, `None` for a person's own.
    expected: Option<&'static str>,
}

#[test]
fn attribution_of_a_fixture_history_is_exact_per_assistant() {
    let ada = ("Ada", "ada@example.com");
    let fixtures = [
        // aider's own edit (author suffix), its co-author trailer and its message prefix.
        Fixture {
            author: ("Ada (aider)", "ada@example.com"),
            committer: ("Ada (aider)", "ada@example.com"),
            message: "feat: parse",
            expected: Some("aider"),
        },
        Fixture {
            author: ada,
            committer: ada,
            message: "fix: x\n\nCo-authored-by: aider (gpt-4o) <aider@aider.chat>",
            expected: Some("aider"),
        },
        Fixture { author: ada, committer: ada, message: "aider: rename helper", expected: Some("aider") },
        // The user's own change and an /undo revert committed through aider: only the committer says aider.
        Fixture { author: ada, committer: ("Ada (aider)", "ada@example.com"), message: "copy", expected: None },
        Fixture {
            author: ada,
            committer: ("Ada (aider)", "ada@example.com"),
            message: "Revert \"feat: parse\"",
            expected: None,
        },
        // Someone at the tool's company.
        Fixture {
            author: ("Paul", "paul@aider.chat"),
            committer: ("Paul", "paul@aider.chat"),
            message: "docs",
            expected: None,
        },
        Fixture {
            author: ada,
            committer: ada,
            message: "cache\n\n🤖 Generated with [Claude Code](https://claude.com/claude-code)\n\nCo-Authored-By: Claude <noreply@anthropic.com>",
            expected: Some("Claude Code"),
        },
        Fixture {
            author: ("Copilot", "198982749+Copilot@users.noreply.github.com"),
            committer: ada,
            message: "agent fix",
            expected: Some("GitHub Copilot"),
        },
        Fixture {
            author: ("Cursor Agent", "cursoragent@cursor.com"),
            committer: ada,
            message: "refactor",
            expected: Some("Cursor"),
        },
        Fixture {
            author: ada,
            committer: ada,
            message: "mm: fix\n\nAssisted-by: claude-code:opus-4\nSigned-off-by: Ada <ada@example.com>",
            expected: Some("Assisted-by"),
        },
        // A person named Claude, a dependency bot, a plain commit.
        Fixture {
            author: ("Claude Shannon", "claude@example.com"),
            committer: ("Claude Shannon", "claude@example.com"),
            message: "entropy",
            expected: None,
        },
        Fixture {
            author: ("dependabot[bot]", "49699333+dependabot[bot]@users.noreply.github.com"),
            committer: ada,
            message: "Bump x",
            expected: None,
        },
        Fixture { author: ada, committer: ada, message: "plain", expected: None },
    ];
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    let mut ids = Vec::new();
    for (n, f) in fixtures.iter().enumerate() {
        std::fs::write(repo.join("f.txt"), n.to_string()).unwrap();
        git(&repo, &["add", "-A"]);
        let out = Command::new("git")
            .arg("-C")
            .arg(&repo)
            .env("GIT_AUTHOR_NAME", f.author.0)
            .env("GIT_AUTHOR_EMAIL", f.author.1)
            .env("GIT_COMMITTER_NAME", f.committer.0)
            .env("GIT_COMMITTER_EMAIL", f.committer.1)
            .args(["-c", "commit.gpgsign=false", "commit", "-q", "-m", f.message])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        ids.push(git(&repo, &["rev-parse", "HEAD"]));
    }
    let out = gpuplane(&["posture", "attribute", "--json"], &repo);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.len(), fixtures.len());
    for (f, id) in fixtures.iter().zip(&ids) {
        let row = rows.iter().find(|r| r["id"] == id.as_str()).unwrap();
        let tool = row["attribution"]["tool"].as_str();
        assert_eq!(tool, f.expected, "{:?}: {}", f.message, row["attribution"]);
        assert_eq!(row["attribution"]["ai"], f.expected.is_some());
    }
}

#[test]
fn lint_sarif_is_valid_with_its_rules_and_paths_relative_to_the_repository() {
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    std::fs::create_dir_all(repo.join("k8s")).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("k8s/llm.yaml"), INFERENCE_DEPLOYMENT).unwrap();
    let sarif = work.path().join("lint.sarif");
    // Run from inside the repository's k8s folder, naming the file as typed there.
    let out = gpuplane(&["lint", "llm.yaml", "--sarif", &sarif.display().to_string()], &repo.join("k8s"));
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert_valid_sarif(&sarif);
    let log: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&sarif).unwrap()).unwrap();
    let run = &log["runs"][0];
    assert_eq!(run["tool"]["driver"]["name"], "gpuplane-lint");
    let results = run["results"].as_array().unwrap();
    assert!(!results.is_empty());
    for r in results {
        let artifact = &r["locations"][0]["physicalLocation"]["artifactLocation"];
        assert_eq!(
            (artifact["uri"].as_str(), artifact["uriBaseId"].as_str()),
            (Some("k8s/llm.yaml"), Some("%SRCROOT%"))
        );
        let index = r["ruleIndex"].as_u64().unwrap() as usize;
        assert_eq!(run["tool"]["driver"]["rules"][index]["id"], r["ruleId"]);
    }
    // Each finding points at its field's line, not at the object's first line.
    let line_of = |needle: &str| INFERENCE_DEPLOYMENT.lines().position(|l| l.contains(needle)).unwrap() as u64 + 1;
    let start = |rule: &str| {
        results.iter().find(|r| r["ruleId"] == rule).unwrap()["locations"][0]["physicalLocation"]["region"]["startLine"]
            .as_u64()
    };
    assert_eq!(start("K8S002"), Some(line_of("hostIPC")));
    assert_eq!(start("GPU003"), Some(line_of("privileged")));
    assert_eq!(start("K8S004"), Some(line_of("- name: server")));
}
