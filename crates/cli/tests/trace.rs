//! `gpuplane trace` and the replay path end to end: arrivals exported for the reference simulator replay
//! to the same decisions, variants are reproducible and checksummed, the sweep writes its outputs, and
//! scripts/compare-traces prints a table with every policy (kube-default included).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn gpuplane(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gpuplane")).args(args).current_dir(dir).output().expect("run gpuplane")
}

fn ok(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn exported_arrivals_replay_to_the_same_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(&gpuplane(&["trace", "arrivals", "--seed", "7", "--out", "arr"], d));
    let pods = std::fs::read_to_string(d.join("arr/simon/pods.yaml")).unwrap();
    assert!(pods.contains("alibabacloud.com/gpu-milli"), "the reference simulator's annotations");
    assert!(d.join("arr/simon/nodes.yaml").exists());
    // The same seed through the shuffle, and the exported order replayed, decide alike (policies whose
    // scores do not depend on the target workload, which replay learns from the inflated list).
    ok(&gpuplane(&["sim", "--policy", "bestfit,packing", "--seeds", "7", "--decisions", "--out", "a"], d));
    ok(&gpuplane(
        &[
            "sim",
            "--trace",
            "arr/arrivals.csv",
            "--replay",
            "--policy",
            "bestfit,packing",
            "--seeds",
            "7",
            "--decisions",
            "--out",
            "b",
        ],
        d,
    ));
    let strip = |path: &str| -> Vec<String> {
        std::fs::read_to_string(d.join(path))
            .unwrap()
            .lines()
            .map(|l| {
                // The exported names carry a sequence prefix "s000123-".
                let cells: Vec<&str> = l.split(',').collect();
                let pod = cells[3].split_once('-').filter(|(p, _)| p.starts_with('s')).map_or(cells[3], |(_, n)| n);
                format!("{},{},{},{}", cells[0], pod, cells[4], cells[5])
            })
            .collect()
    };
    let (a, b) = (strip("a/decisions.csv"), strip("b/decisions.csv"));
    assert!(a.len() > 10_000);
    assert_eq!(a, b);
}

#[test]
fn variants_are_reproducible_and_checksummed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let args = ["trace", "variant", "--cpu-only", "0.25", "--sharing", "0.5", "--seed", "3", "--out"];
    let first = ok(&gpuplane(&[&args[..], &["v1.csv"]].concat(), d));
    ok(&gpuplane(&[&args[..], &["v2.csv"]].concat(), d));
    assert_eq!(std::fs::read(d.join("v1.csv")).unwrap(), std::fs::read(d.join("v2.csv")).unwrap());
    let sum = std::fs::read_to_string(d.join("v1.csv.sha256")).unwrap();
    assert!(sum.ends_with("  v1.csv\n") && first.contains(&sum[..64]), "{sum} / {first}");
    assert!(first.contains("25.0%"), "{first}");
    // The variant is a trace the simulator reads.
    ok(&gpuplane(&["sim", "--trace", "v1.csv", "--policy", "fgd", "--seeds", "1", "--out", "s"], d));
    // Bad targets are named.
    let out = gpuplane(&["trace", "variant", "--sharing", "1.5", "--out", "x.csv"], d);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("sharing"));
    let out = gpuplane(&["trace", "variant", "--model-constrained", "0.3", "--out", "x.csv"], d);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--spec-from"), "the default trace has no constraints");
}

#[test]
fn bad_simulation_inputs_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = gpuplane(&["sim", "--tune", "1e9", "--out", "o"], d);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("at most 10"));
    let out = gpuplane(&["sim", "--seeds", "42,43,42", "--out", "o"], d);
    assert!(String::from_utf8_lossy(&out.stderr).contains("seed 42 is given twice"));
    let help = ok(&gpuplane(&["sim", "--help"], d));
    assert!(help.contains("kube-default"), "{help}");
    std::fs::write(d.join("order.txt"), "n-unknown\n").unwrap();
    let out = gpuplane(&["sim", "--tie-order", "order.txt", "--seeds", "1", "--out", "o"], d);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("tie order") && !stderr.contains("panicked"), "{stderr}");
}

#[test]
fn compare_traces_prints_every_policy_beside_the_paper() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg(repo().join("scripts/compare-traces"))
        .arg(dir.path())
        .env("GPUPLANE_BIN", env!("CARGO_BIN_EXE_gpuplane"))
        .env("SEEDS", "42")
        .env("TRACES", "default")
        .output()
        .expect("run scripts/compare-traces");
    let table = ok(&out);
    assert!(table.contains("| trace | random | kube-default |"), "{table}");
    let row = table.lines().find(|l| l.starts_with("| default |")).expect("a default row");
    // Paper / ours for the policies the paper ran; gpuplane against FGD.
    assert_eq!(row.matches(" / ").count(), 6, "{row}");
    assert!(row.trim_end().ends_with("% |"), "{row}");
}

#[test]
fn the_window_curve_has_a_row_and_a_panel_per_trace() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let traces = d.join("traces");
    std::fs::create_dir(&traces).unwrap();
    // Two small traces on the bundled cluster: the default trace's first 600 pods, and its next 600.
    let text = std::fs::read_to_string(repo().join("data/openb/openb_pod_list_default.csv")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    for (name, rows) in [("default", &lines[1..601]), ("later", &lines[601..1201])] {
        let body = format!("{}\n{}\n", lines[0], rows.join("\n"));
        std::fs::write(traces.join(format!("openb_pod_list_{name}.csv")), body).unwrap();
    }
    let args = ["trace", "windows", "--window", "1,16", "--seeds", "1-2", "--out", "w", "--traces"];
    let stdout = ok(&gpuplane(&[&args[..], &[traces.to_str().unwrap()]].concat(), d));
    let rows: Vec<&str> = stdout.lines().filter(|l| l.starts_with("| default") || l.starts_with("| later")).collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    assert!(rows[0].starts_with("| default"), "the default trace comes first: {stdout}");
    let svg = std::fs::read_to_string(d.join("w/windows.svg")).unwrap();
    assert_eq!(svg.matches("<clipPath").count(), 2);
    let csv = std::fs::read_to_string(d.join("w/windows.csv")).unwrap();
    assert!(csv.contains("later,gpuplane,16,") && csv.contains("default,fgd,1,"), "{csv}");
    // A folder with no openb trace is named.
    std::fs::create_dir(d.join("empty")).unwrap();
    let out = gpuplane(&["trace", "windows", "--traces", "empty"], d);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("empty: no openb_pod_list_"));
}
