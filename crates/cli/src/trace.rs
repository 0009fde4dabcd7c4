//! `gpuplane trace`: arrival sequences for other simulators and openb-style trace variants.
//! `trace arrivals` writes one seed's shuffled, inflated arrival order as an openb CSV and as the
//! FGD paper simulator's YAML, so both simulators replay the very same pods.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use gpuplane_core::openb::{TracePod, write_pods};
use gpuplane_place::Cluster;
use gpuplane_sim::{export, variant, workload};

use crate::input;

/// `gpuplane trace …`
#[derive(Debug, Subcommand)]
pub enum TraceCommand {
    /// Write one seed's arrival order (shuffled, inflated) as openb CSV and as the FGD simulator's YAML.
    Arrivals(ArrivalsArgs),
    /// Derive an openb-style variant: set the share of CPU-only, GPU-sharing, multi-GPU and
    /// model-constrained pods, seeded; writes the CSV and its SHA-256.
    Variant(VariantArgs),
    /// Run every policy over a grid of generated variants; table, CSV and a heat map of gpuplane ÷ FGD.
    Sweep(SweepArgs),
    /// The window curve: unallocated GPUs at 100 % arrived workload against the scheduling window, per
    /// trace, with FGD and the offline yardstick; table, CSV and an SVG of one panel per trace.
    Windows(WindowsArgs),
}

/// Arguments of `gpuplane trace windows`.
#[derive(Debug, Args)]
pub struct WindowsArgs {
    /// openb pod CSVs, or folders whose openb_pod_list_*.csv files are all taken
    #[arg(long, num_args = 1.., default_value = "data/openb", value_name = "PATH")]
    traces: Vec<PathBuf>,
    /// Cluster [default: bundled openb GPU nodes]
    #[arg(long, value_name = "FILE")]
    nodes: Option<PathBuf>,
    /// Policies, comma-separated (fgd gives the reference line, gpuplane the compared column)
    #[arg(long, default_value = "fgd,gpuplane", value_name = "P,..")]
    policy: String,
    /// Window sizes, comma-separated pod counts
    #[arg(long, default_value = "1,4,16,64,256", value_name = "W,..")]
    window: String,
    /// Seeds
    #[arg(long, default_value = "42-51", value_name = "LIST")]
    seeds: String,
    /// Workload inflation
    #[arg(long, default_value_t = 1.3)]
    tune: f64,
    /// The table compares gpuplane's best window of at most this many pods
    #[arg(long, default_value_t = 64, value_name = "W")]
    limit: usize,
    /// Folder for windows.md, windows.csv and windows.svg
    #[arg(long, default_value = "out/windows", value_name = "DIR")]
    out: PathBuf,
}

/// Arguments of `gpuplane trace sweep`.
#[derive(Debug, Args)]
pub struct SweepArgs {
    /// Base pod trace (openb CSV) [default: bundled openb default trace]
    #[arg(long, value_name = "FILE")]
    base: Option<PathBuf>,
    /// Cluster [default: bundled openb GPU nodes]
    #[arg(long, value_name = "FILE")]
    nodes: Option<PathBuf>,
    /// Trace whose GPU-model constraints new ones are drawn from [default: the base's own]
    #[arg(long, value_name = "FILE")]
    spec_from: Option<PathBuf>,
    /// Policies, comma-separated (fgd and gpuplane are needed for the heat map)
    #[arg(long, default_value = "all", value_name = "P,..")]
    policy: String,
    /// Run seeds; the default keeps clear of 42-51, the seeds the bundled traces are reported on
    #[arg(long, default_value = "1-10", value_name = "LIST")]
    seeds: String,
    /// Seed of the variant draws
    #[arg(long, default_value_t = 7)]
    variant_seed: u64,
    /// Workload inflation
    #[arg(long, default_value_t = 1.3)]
    tune: f64,
    /// Folder for sweep.csv, sweep.md and heatmap.svg
    #[arg(long, default_value = "out/sweep", value_name = "DIR")]
    out: PathBuf,
}

/// Arguments of `gpuplane trace variant`.
#[derive(Debug, Args)]
pub struct VariantArgs {
    /// Base pod trace (openb CSV) [default: bundled openb default trace]
    #[arg(long, value_name = "FILE")]
    base: Option<PathBuf>,
    /// Cluster the constraints must fit (openb node CSV or Node YAML) [default: bundled openb GPU nodes]
    #[arg(long, value_name = "FILE")]
    nodes: Option<PathBuf>,
    /// Share of pods that ask for no GPU, 0–0.99 (openb cpu050 = 0.05)
    #[arg(long, value_name = "SHARE")]
    cpu_only: Option<f64>,
    /// Share of requested GPU milli asked by GPU-sharing pods, 0–1 (gpushare40 = 0.4)
    #[arg(long, value_name = "SHARE")]
    sharing: Option<f64>,
    /// Share of requested GPU milli asked by multi-GPU pods, 0–0.99 (multigpu20 = 0.2)
    #[arg(long, value_name = "SHARE")]
    multi_gpu: Option<f64>,
    /// Share of GPU pods that accept only some GPU models, 0–1 (gpuspec20 = 0.2)
    #[arg(long, value_name = "SHARE")]
    model_constrained: Option<f64>,
    /// Trace whose GPU-model constraints (with their frequencies) new constraints are drawn from
    /// [default: the base trace's own]
    #[arg(long, value_name = "FILE")]
    spec_from: Option<PathBuf>,
    /// Seed of the draws
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output CSV; FILE.sha256 gets its checksum
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

/// Arguments of `gpuplane trace arrivals`.
#[derive(Debug, Args)]
pub struct ArrivalsArgs {
    /// Pod trace: openb pod CSV or Kubernetes Pod YAML [default: bundled openb default trace]
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// Cluster: openb node CSV or Kubernetes Node YAML [default: bundled openb GPU nodes]
    #[arg(long, value_name = "FILE")]
    nodes: Option<PathBuf>,
    /// Seed of the shuffle and inflation (as `gpuplane sim --seeds`)
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Workload inflation, as `gpuplane sim --tune`
    #[arg(long, default_value_t = 1.3)]
    tune: f64,
    /// Folder for arrivals.csv (replay with `gpuplane sim --replay`), and simon/ with nodes.yaml and
    /// pods.yaml for the reference simulator
    #[arg(long, default_value = "out/arrivals", value_name = "DIR")]
    out: PathBuf,
}

/// Runs `gpuplane trace …`.
pub fn run(command: TraceCommand) -> Result<()> {
    match command {
        TraceCommand::Arrivals(args) => arrivals(args),
        TraceCommand::Variant(args) => variant(args),
        TraceCommand::Sweep(args) => sweep(args),
        TraceCommand::Windows(args) => windows(args),
    }
}

fn variant(args: VariantArgs) -> Result<()> {
    let (base_name, base) = input::trace_records(args.base.as_deref())?;
    let (_, nodes) = input::nodes(args.nodes.as_deref())?;
    let pool = spec_pool(args.spec_from.as_deref(), &base)?;
    if args.model_constrained.is_some_and(|s| s > 0.0) && pool.is_empty() {
        bail!(
            "{base_name} has no pod with a GPU-model constraint to draw from; give --spec-from a trace that has \
             some (such as data/openb/openb_pod_list_gpuspec20.csv)"
        );
    }
    let targets = variant::Targets {
        cpu_only: args.cpu_only,
        sharing: args.sharing,
        multi_gpu: args.multi_gpu,
        model_constrained: args.model_constrained,
    };
    let pods = variant::derive(&base, &targets, &pool, &nodes, args.seed)?;
    let body = write_pods(&pods);
    let digest = hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, body.as_bytes()).as_ref());
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    write(&args.out, body)?;
    let file_name = args.out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut sum_path = args.out.clone().into_os_string();
    sum_path.push(".sha256");
    write(Path::new(&sum_path), format!("{digest}  {file_name}\n"))?;
    let (b, v) = (variant::shares(&base), variant::shares(&pods));
    outln!(
        "{:<22} {:>8} {:>9} {:>9} {:>10} {:>18}",
        "",
        "pods",
        "cpu-only",
        "sharing",
        "multi-gpu",
        "model-constrained"
    )?;
    for (label, s) in [(base_name.as_str(), b), (args.out.to_str().unwrap_or("variant"), v)] {
        let label: String = label.chars().rev().take(22).collect::<Vec<_>>().into_iter().rev().collect();
        outln!(
            "{label:<22} {:>8} {:>8.1}% {:>8.1}% {:>9.1}% {:>17.1}%",
            s.pods,
            100.0 * s.cpu_only,
            100.0 * s.sharing,
            100.0 * s.multi_gpu,
            100.0 * s.model_constrained
        )?;
    }
    outln!("sha256 {digest}")?;
    Ok(())
}

fn spec_pool(spec_from: Option<&Path>, base: &[TracePod]) -> Result<Vec<Vec<String>>> {
    let pool: Vec<Vec<String>> = match spec_from {
        Some(path) => input::trace_records(Some(path))?.1.into_iter().map(|p| p.pod.gpu_models).collect(),
        None => base.iter().map(|p| p.pod.gpu_models.clone()).collect(),
    };
    Ok(pool.into_iter().filter(|m| !m.is_empty()).collect())
}

fn sweep(args: SweepArgs) -> Result<()> {
    use gpuplane_place::Policy;
    use gpuplane_report::heatmap::{HeatMap, Panel};
    use gpuplane_sim::sweep::{self, SweepConfig};

    let (_, base) = input::trace_records(args.base.as_deref())?;
    let (_, nodes) = input::nodes(args.nodes.as_deref())?;
    let spec_pool = spec_pool(args.spec_from.as_deref(), &base)?;
    let planes = sweep::default_planes();
    if spec_pool.is_empty() {
        bail!(
            "the base trace has no GPU-model constraints to draw from; give --spec-from (such as data/openb/openb_pod_list_gpuspec20.csv)"
        );
    }
    let config = SweepConfig {
        base,
        nodes,
        spec_pool,
        policies: Policy::parse_list(&args.policy).context("--policy")?,
        seeds: crate::sim::parse_seeds(&args.seeds)?,
        variant_seed: args.variant_seed,
        tune: args.tune,
        planes: planes.clone(),
    };
    let points = sweep::run(&config, &|p| {
        eprintln!("variant {} = {:.2}, {:.2}: {} pods", p.plane, p.at.0, p.at.1, p.pods);
    })?;
    let pct = |v: f64| format!("{:.0} %", 100.0 * v);
    let ratio = |p: &sweep::Point| Some(p.median(Policy::Gpuplane)? / p.median(Policy::Fgd)?);
    let mut csv = String::from("plane,row_axis,row,col_axis,col,pods,policy,median,min,max\n");
    let mut md = String::new();
    let titles: Vec<&str> = config.policies.iter().map(|p| p.title()).collect();
    let _ = writeln!(md, "| variant | pods | {} | gpuplane ÷ FGD |", titles.join(" | "));
    let _ = writeln!(md, "|{}", " --- |".repeat(titles.len() + 3));
    for p in &points {
        let plane = &planes[p.plane];
        for (policy, s) in &p.unallocated {
            let _ = writeln!(
                csv,
                "{},{},{},{},{},{},{},{:.4},{:.4},{:.4}",
                p.plane,
                plane.rows.0.name(),
                p.at.0,
                plane.cols.0.name(),
                p.at.1,
                p.pods,
                policy.name(),
                s.median,
                s.min,
                s.max
            );
        }
        let cells: Vec<String> = p.unallocated.iter().map(|(_, s)| format!("{:.2}", s.median)).collect();
        let _ = writeln!(
            md,
            "| {} {}, {} {} | {} | {} | {} |",
            plane.rows.0.name(),
            pct(p.at.0),
            plane.cols.0.name(),
            pct(p.at.1),
            p.pods,
            cells.join(" | "),
            ratio(p).map_or_else(|| "–".to_owned(), |r| format!("{r:.3}"))
        );
    }
    let panels = planes
        .iter()
        .enumerate()
        .map(|(i, plane)| Panel {
            row_label: plane.rows.0.name().replace('_', "-"),
            col_label: plane.cols.0.name().replace('_', "-"),
            rows: plane.rows.1.iter().map(|&v| pct(v)).collect(),
            cols: plane.cols.1.iter().map(|&v| pct(v)).collect(),
            cells: plane
                .rows
                .1
                .iter()
                .map(|&a| {
                    plane
                        .cols
                        .1
                        .iter()
                        .map(|&b| points.iter().find(|p| p.plane == i && p.at == (a, b)).and_then(ratio))
                        .collect()
                })
                .collect(),
        })
        .collect();
    let map = HeatMap {
        title: "gpuplane ÷ FGD: unallocated GPUs at 100 % arrived workload".into(),
        subtitle: format!("median over seeds {}; below 1 gpuplane leaves fewer GPUs unallocated", args.seeds),
        panels,
    };
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    write(&args.out.join("sweep.csv"), csv)?;
    write(&args.out.join("sweep.md"), md.clone())?;
    write(&args.out.join("heatmap.svg"), map.render())?;
    out!("{md}")?;
    outln!("wrote {}", args.out.display())?;
    Ok(())
}

/// The traces `--traces` names: files as given, folders by their `openb_pod_list_*.csv` files; the
/// `default` trace first, then by name. Each with its short name (`cpu050` for openb_pod_list_cpu050.csv).
fn trace_files(paths: &[PathBuf]) -> Result<Vec<(String, PathBuf)>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let entries = std::fs::read_dir(path).with_context(|| format!("cannot read folder {}", path.display()))?;
            let before = files.len();
            for entry in entries {
                let file = entry.with_context(|| format!("cannot read folder {}", path.display()))?.path();
                let name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                if name.starts_with("openb_pod_list_") && name.ends_with(".csv") {
                    files.push(file);
                }
            }
            if files.len() == before {
                bail!("{}: no openb_pod_list_*.csv files in this folder", path.display());
            }
        } else if path.is_file() {
            files.push(path.clone());
        } else {
            bail!("{}: no such file or folder", path.display());
        }
    }
    let short = |p: &Path| {
        let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        stem.strip_prefix("openb_pod_list_").unwrap_or(stem).to_owned()
    };
    let mut named: Vec<(String, PathBuf)> = files.into_iter().map(|f| (short(&f), f)).collect();
    named.sort_by(|a, b| (a.0 != "default", &a.0).cmp(&(b.0 != "default", &b.0)));
    named.dedup_by(|a, b| a.1 == b.1);
    Ok(named)
}

fn windows(args: WindowsArgs) -> Result<()> {
    use gpuplane_place::Policy;
    use gpuplane_report::windows::{self, WindowCurve};
    use gpuplane_sim::{Experiment, Ties, run_experiment};

    let policies = Policy::parse_list(&args.policy).context("--policy")?;
    let mut window_sizes = crate::sim::parse_windows(&args.window)?;
    window_sizes.sort_unstable();
    let seeds = crate::sim::parse_seeds(&args.seeds)?;
    crate::sim::check_tune(args.tune)?;
    let (_, nodes) = input::nodes(args.nodes.as_deref())?;
    let traces = trace_files(&args.traces)?;
    // Read every trace before the first run, so a bad file is named at once.
    let mut loaded = Vec::with_capacity(traces.len());
    for (name, path) in &traces {
        let (_, pods, gap) = input::trace_timed(Some(path))?;
        loaded.push((name.clone(), pods, gap));
    }
    let runs = (loaded.len() * policies.len() * window_sizes.len() * seeds.len()) as u64;
    let bar = crate::sim::progress_bar(runs, "runs");
    let mut curves = Vec::with_capacity(loaded.len());
    for (name, trace, arrival_gap_s) in loaded {
        let experiment = Experiment {
            nodes: nodes.clone(),
            trace,
            policies: policies.clone(),
            seeds: seeds.clone(),
            tune: args.tune,
            ties: Ties::default(),
            replay: false,
            record_decisions: false,
            defrag: 0,
            windows: window_sizes.clone(),
            arrival_gap_s,
        };
        bar.set_message(name.clone());
        let result = run_experiment(&experiment, &|_| bar.inc(1))?;
        curves.push(WindowCurve::of(&name, &result));
    }
    bar.finish_and_clear();
    let md = windows::table(&curves, args.limit);
    let title =
        format!("Unallocated GPUs at 100 % arrived workload against the window (median over seeds {})", args.seeds);
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    write(&args.out.join("windows.md"), md.clone())?;
    write(&args.out.join("windows.csv"), windows::csv(&curves))?;
    write(&args.out.join("windows.svg"), windows::grid_svg(&curves, 4, &title))?;
    out!("{md}")?;
    outln!("wrote {}", args.out.display())?;
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn arrivals(args: ArrivalsArgs) -> Result<()> {
    if !(args.tune.is_finite() && args.tune > 0.0 && args.tune <= gpuplane_sim::MAX_TUNE) {
        anyhow::bail!("--tune must be a number above 0 and at most {}, got {}", gpuplane_sim::MAX_TUNE, args.tune);
    }
    let (_, nodes) = input::nodes(args.nodes.as_deref())?;
    let (_, trace) = input::trace(args.trace.as_deref())?;
    let cluster = Cluster::new(&nodes)?;
    let mut pods = workload::arrivals(&trace, args.tune, cluster.total_gpu_milli(), args.seed);
    // The reference simulator orders pods without creation times by name: a sequence prefix keeps ours.
    for (i, p) in pods.iter_mut().enumerate() {
        p.name = format!("s{i:06}-{}", p.name);
    }
    let simon = args.out.join("simon");
    std::fs::create_dir_all(&simon).with_context(|| format!("cannot create {}", simon.display()))?;
    let records: Vec<TracePod> =
        pods.iter().map(|p| TracePod { pod: p.clone(), qos: None, creation_time: None, deletion_time: None }).collect();
    write(&args.out.join("arrivals.csv"), write_pods(&records))?;
    write(&simon.join("nodes.yaml"), export::nodes_yaml(&nodes))?;
    write(&simon.join("pods.yaml"), export::pods_yaml(&pods))?;
    outln!("{} arrivals for seed {} (tune {}) in {}", pods.len(), args.seed, args.tune, args.out.display())?;
    Ok(())
}

fn write(path: &Path, body: String) -> Result<()> {
    std::fs::write(path, body).with_context(|| format!("cannot write {}", path.display()))
}
