//! `gpuplane sim`: every policy × seed on a trace, in parallel, with a progress bar; prints the
//! summary and writes CSV, JSON and an SVG chart.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use gpuplane_place::Policy;
use gpuplane_report::table::Style;
use gpuplane_report::{csv, sim_json, svg, table};
use gpuplane_sim::{Experiment, Ties, run_experiment};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::input;

/// Arguments of `gpuplane sim`.
#[derive(Debug, Args)]
pub struct SimArgs {
    /// Pod trace: openb pod CSV (11- or 5-column) or Kubernetes Pod YAML [default: bundled openb default trace]
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// Cluster: openb node CSV or Kubernetes Node YAML [default: bundled openb GPU nodes]
    #[arg(long, value_name = "FILE")]
    nodes: Option<PathBuf>,
    /// Policies, comma-separated: random, kube-default, dotprod, clustering, packing, bestfit, fgd,
    /// gpuplane, or all
    #[arg(long, default_value = "all", value_name = "P,..")]
    policy: String,
    /// Seeds: a list and/or ranges, such as 42-51 or 1,5,7-9
    #[arg(long, default_value = "42-51", value_name = "LIST")]
    seeds: String,
    /// Workload inflation: arrivals request this multiple of the cluster's GPUs
    #[arg(long, default_value_t = 1.3)]
    tune: f64,
    /// Folder for sim.json, curves.csv, samples.csv and unallocated.svg
    #[arg(long, default_value = "out/sim", value_name = "DIR")]
    out: PathBuf,
    /// Ties between equally scored nodes: shuffled-names (the FGD paper's simulator: smallest name after
    /// a seeded random prefix, i.e. a random node order per seed), lowest-name, or random per decision
    #[arg(long, value_enum, default_value_t = TieBreakArg::ShuffledNames)]
    tie_break: TieBreakArg,
    /// Also run every policy in defragmentation mode: a pod that fits nowhere may move up to this many
    /// placed pods (migrations, counted in the table); 0 turns it off
    #[arg(long, default_value_t = 0, value_name = "N")]
    defrag: usize,
    /// Scheduling windows, comma-separated pod counts: the scheduler waits for this many pending pods
    /// and places them jointly (1 is one pod at a time); each policy runs with each window
    #[arg(long, default_value = "1", value_name = "W,..")]
    window: String,
    /// Replay the trace in file order: no shuffle, no inflation (for `gpuplane trace arrivals` output)
    #[arg(long)]
    replay: bool,
    /// Break ties by this node order instead (one node name per line, first wins), to replay another
    /// simulator's run exactly
    #[arg(long, value_name = "FILE", conflicts_with = "tie_break")]
    tie_order: Option<PathBuf>,
    /// Also write every decision to decisions.csv in --out (policy, seed, pod, node, GPU indices)
    #[arg(long)]
    decisions: bool,
    /// What to print on standard output
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    format: OutputFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TieBreakArg {
    /// A seeded random node order, drawn once per seed.
    ShuffledNames,
    /// The node with the smallest name.
    LowestName,
    /// A uniformly random tied node, seeded.
    Random,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OutputFormat {
    /// A terminal table.
    Table,
    /// The Markdown table.
    Markdown,
    /// The full JSON document (as written to sim.json).
    Json,
}

/// Parses "42-51", "1,5,7-9" into seeds.
/// A progress bar of `len` units on standard error (drawn only when it is a terminal).
pub(crate) fn progress_bar(len: u64, unit: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} {{elapsed:>4}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{msg}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar
}

/// Checks `--tune`: a number above 0 and at most [`gpuplane_sim::MAX_TUNE`].
pub fn check_tune(tune: f64) -> Result<()> {
    if !(tune.is_finite() && tune > 0.0 && tune <= gpuplane_sim::MAX_TUNE) {
        bail!("--tune must be a number above 0 and at most {}, got {tune}", gpuplane_sim::MAX_TUNE);
    }
    Ok(())
}

/// Parses `--window`: comma-separated pod counts, each 1 to [`gpuplane_sim::MAX_WINDOW`].
pub fn parse_windows(text: &str) -> Result<Vec<usize>> {
    let mut windows = Vec::new();
    for item in text.split(',').map(str::trim) {
        let w: usize =
            item.parse().ok().filter(|w| (1..=gpuplane_sim::MAX_WINDOW).contains(w)).with_context(|| {
                format!("--window: {item:?} is not a pod count from 1 to {}", gpuplane_sim::MAX_WINDOW)
            })?;
        if !windows.contains(&w) {
            windows.push(w);
        }
    }
    Ok(windows)
}

pub fn parse_seeds(text: &str) -> Result<Vec<u64>> {
    let mut seeds = Vec::new();
    for part in text.split(',').map(str::trim) {
        let bad = || format!("--seeds: {part:?} is not a seed or a range such as 42-51");
        if let Some((a, b)) = part.split_once('-') {
            let a: u64 = a.trim().parse().with_context(bad)?;
            let b: u64 = b.trim().parse().with_context(bad)?;
            if a > b {
                bail!("--seeds: range {part:?} runs backwards");
            }
            if b - a >= 10_000 {
                bail!("--seeds: range {part:?} has more than 10,000 seeds");
            }
            seeds.extend(a..=b);
        } else {
            seeds.push(part.parse().with_context(bad)?);
        }
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = seeds.iter().find(|s| !seen.insert(**s)) {
        bail!("--seeds: seed {dup} is given twice; each seed is one run and would count twice in the medians");
    }
    Ok(seeds)
}

/// Runs `gpuplane sim`.
pub fn run(args: SimArgs) -> Result<()> {
    let policies = Policy::parse_list(&args.policy).context("--policy")?;
    let seeds = parse_seeds(&args.seeds)?;
    let windows = parse_windows(&args.window)?;
    if !args.replay {
        check_tune(args.tune)?;
    }
    let (nodes_name, nodes) = input::nodes(args.nodes.as_deref())?;
    let (trace_name, trace, arrival_gap_s) = input::trace_timed(args.trace.as_deref())?;
    let ties = match (&args.tie_order, args.tie_break) {
        (Some(path), _) => Ties::Order(read_tie_order(path)?),
        (None, TieBreakArg::ShuffledNames) => Ties::ShuffledNames,
        (None, TieBreakArg::LowestName) => Ties::LowestName,
        (None, TieBreakArg::Random) => Ties::Random,
    };
    let experiment = Experiment {
        nodes,
        trace,
        policies,
        seeds,
        tune: args.tune,
        ties,
        replay: args.replay,
        record_decisions: args.decisions,
        defrag: args.defrag,
        windows,
        arrival_gap_s,
    };

    let modes = if args.defrag > 0 { 2 } else { 1 };
    let runs = (modes * experiment.windows.len() * experiment.policies.len() * experiment.seeds.len()) as u64;
    let bar = progress_bar(runs, "runs");
    let result = run_experiment(&experiment, &|r| {
        bar.set_message(format!("{} seed {}", gpuplane_sim::key(r.policy, r.defrag, r.window), r.seed));
        bar.inc(1);
    })?;
    bar.finish_and_clear();

    let json = sim_json(&result, &trace_name, &nodes_name);
    write_outputs(&args.out, &result, &json)?;
    match args.format {
        OutputFormat::Table => out!("{}", table::summary(&result, Style::Terminal))?,
        OutputFormat::Markdown => out!("{}", table::summary(&result, Style::Markdown))?,
        OutputFormat::Json => outln!("{}", serde_json::to_string_pretty(&json)?)?,
    }
    if !matches!(args.format, OutputFormat::Json) {
        outln!("wrote {}", args.out.display())?;
    }
    Ok(())
}

fn write_outputs(dir: &Path, result: &gpuplane_sim::ExperimentResult, json: &serde_json::Value) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let write = |name: &str, body: String| {
        let path = dir.join(name);
        std::fs::write(&path, body).with_context(|| format!("cannot write {}", path.display()))
    };
    write("sim.json", serde_json::to_string_pretty(json)? + "\n")?;
    write("curves.csv", csv::curves(result))?;
    write("samples.csv", csv::samples(result))?;
    write("unallocated.svg", svg::unallocated_chart(result).render(900.0, 520.0))?;
    if result.runs.iter().any(|r| !r.decisions.is_empty()) {
        write("decisions.csv", decisions_csv(result))?;
    }
    Ok(())
}

/// One row per arrival: `policy,seed,index,pod,node,gpus` (GPU indices joined by `-`, empty node = failed).
fn decisions_csv(result: &gpuplane_sim::ExperimentResult) -> String {
    let mut out = String::from("policy,seed,index,pod,node,gpus\n");
    for r in &result.runs {
        for (i, d) in r.decisions.iter().enumerate() {
            let (node, gpus) = match &d.placed {
                Some((node, gpus)) => (node.as_str(), gpus.iter().map(u8::to_string).collect::<Vec<_>>().join("-")),
                None => ("", String::new()),
            };
            let key = gpuplane_sim::key(r.policy, r.defrag, r.window);
            out.push_str(&format!("{key},{},{i},{},{node},{gpus}\n", r.seed, d.pod));
        }
    }
    out
}

/// Reads a node order: one name per line, blank lines and `#` comments ignored.
fn read_tie_order(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let names: Vec<String> =
        text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_owned).collect();
    if names.is_empty() {
        bail!("{}: no node names; expected one per line", path.display());
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_lists_and_ranges() {
        assert_eq!(parse_seeds("42-44").unwrap(), vec![42, 43, 44]);
        assert_eq!(parse_seeds("1, 5,7-8").unwrap(), vec![1, 5, 7, 8]);
        assert!(parse_seeds("9-1").is_err());
        assert!(parse_seeds("x").is_err());
        let err = parse_seeds("42,43,42").unwrap_err().to_string();
        assert!(err.contains("seed 42 is given twice"), "{err}");
        assert!(parse_seeds("40-45,44").is_err());
        assert!(parse_seeds("").is_err());
    }
}
