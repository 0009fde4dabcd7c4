//! `gpuplane board`: the board report. Computes what it is not given — the placement simulation and
//! the serving simulation on the bundled data, the maturity assessment and the commit attribution and
//! GPU workload lint of the repository it runs in — or reads the JSON each command writes.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::Args;
use gpuplane_assess::assess::{format_date, parse_date, read_manifest_dir};
use gpuplane_assess::objects::KubeObject;
use gpuplane_assess::repo::discover;
use gpuplane_assess::{Assessment, Inputs, Model, assess};
use gpuplane_core::openb::read_pods;
use gpuplane_place::Policy;
use gpuplane_posture::attribution::Markers;
use gpuplane_posture::history;
use gpuplane_posture::lint::lint;
use gpuplane_posture::scan::Scan;
use gpuplane_report::board::{self, Board, Inference, Security};
use gpuplane_report::sim_json;
use gpuplane_sim::serve::{ServeConfig, Setup};
use gpuplane_sim::{Experiment, Ties, run_experiment};

use crate::input;

/// Arguments of `gpuplane board`.
#[derive(Debug, Args)]
pub struct BoardArgs {
    /// A `gpuplane sim` result (sim.json) [default: kube-default, bestfit, fgd and gpuplane on the bundled trace, seeds 42–51]
    #[arg(long, value_name = "FILE")]
    sim: Option<PathBuf>,
    /// A `gpuplane serve-sim` result (serve.json; its medians when run with --seeds) [default: the bundled conv
    /// trace, default configuration, medians of seeds 42–51]
    #[arg(long, value_name = "FILE")]
    serve: Option<PathBuf>,
    /// A `gpuplane assess` result (assessment.json) [default: assess --repo with --manifests]
    #[arg(long, value_name = "FILE")]
    assessment: Option<PathBuf>,
    /// A `gpuplane posture scan` result (posture.json), for findings per cohort [default: attribution only]
    #[arg(long, value_name = "FILE")]
    posture: Option<PathBuf>,
    /// The repository to assess and attribute
    #[arg(long, default_value = ".", value_name = "DIR")]
    repo: PathBuf,
    /// Kubernetes manifests of the platform [default: the repository's deploy/ folder, when there is one]
    #[arg(long, value_name = "DIR")]
    manifests: Option<PathBuf>,
    /// Report date, and the end of the assessment's window [default: today]
    #[arg(long, value_name = "YYYY-MM-DD")]
    as_of: Option<String>,
    /// Folder for board.html and board.md
    #[arg(long, default_value = "out/board", value_name = "DIR")]
    out: PathBuf,
    /// Price of one GPU-hour in US dollars, to value the GPUs placement recovers (an assumption: set your own)
    #[arg(long, default_value_t = 2.0, value_name = "USD")]
    gpu_hour_usd: f64,
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))
}

fn schema(value: &serde_json::Value, path: &Path, expected: &str) -> Result<()> {
    match value.get("schema").and_then(serde_json::Value::as_str) {
        Some(s) if s == expected => Ok(()),
        found => bail!("{}: schema: expected {expected}, found {found:?}", path.display()),
    }
}

/// The simulation results given as files, read and checked before anything is computed.
struct GivenResults {
    sim: Option<(serde_json::Value, String)>,
    serve: Option<(serde_json::Value, String)>,
}

fn given_results(args: &BoardArgs) -> Result<GivenResults> {
    let sim = match &args.sim {
        Some(path) => {
            let value = read_json(path)?;
            schema(&value, path, gpuplane_report::SIM_JSON_SCHEMA)?;
            Some((value, path.display().to_string()))
        }
        None => None,
    };
    let serve = match &args.serve {
        Some(path) => {
            let value = read_json(path)?;
            schema(&value, path, gpuplane_report::serve::SERVE_JSON_SCHEMA)?;
            // The medians over seeds when the run had them, else its one seed.
            let (result, what) = match value.get("median").filter(|m| !m.is_null()) {
                Some(median) => (median.clone(), "medians over its seeds"),
                None => (
                    value
                        .get("result")
                        .cloned()
                        .with_context(|| format!("{}: result: expected the run", path.display()))?,
                    "its seed",
                ),
            };
            Some((result, format!("{} ({what})", path.display())))
        }
        None => None,
    };
    Ok(GivenResults { sim, serve })
}

/// The inference figures: from the given results, or simulated on the bundled data.
fn inference(given: GivenResults) -> Result<Inference> {
    let (sim, sim_source) = match given.sim {
        Some(given) => given,
        None => {
            let (nodes_name, nodes) = input::nodes(None)?;
            let (trace_name, trace) = input::trace(None)?;
            let policies = vec![Policy::LeastAllocated, Policy::BestFit, Policy::Fgd, Policy::Gpuplane];
            let experiment = Experiment {
                nodes,
                trace,
                policies,
                seeds: (42..=51).collect(),
                tune: 1.3,
                ties: Ties::default(),
                replay: false,
                record_decisions: false,
                defrag: 0,
                windows: vec![1],
                arrival_gap_s: None,
            };
            let bar = crate::sim::progress_bar(40, "placement runs (4 policies × seeds 42–51)");
            let result = run_experiment(&experiment, &|_| bar.inc(1))?;
            bar.finish_and_clear();
            (sim_json(&result, &trace_name, &nodes_name), format!("gpuplane sim on {trace_name}, seeds 42–51"))
        }
    };
    let (serve, serve_source) = match given.serve {
        Some(given) => given,
        None => {
            let (trace_name, requests) = crate::serve_sim::requests("conv")?;
            let (_, nodes) = input::nodes(None)?;
            let batch = read_pods(input::BUNDLED_TRACE_NAME, input::BUNDLED_TRACE.as_bytes())?;
            let setup = Setup { config: ServeConfig::default(), nodes, batch, requests };
            let bar = crate::sim::progress_bar(10, "serving runs (seeds 42–51)");
            let runs = (42..=51)
                .map(|seed| {
                    let run = gpuplane_sim::serve::run(&setup, seed);
                    bar.inc(1);
                    run
                })
                .collect::<Result<Vec<_>, _>>()?;
            bar.finish_and_clear();
            (
                gpuplane_report::serve::medians(&runs),
                format!("gpuplane serve-sim on {trace_name}, medians of seeds 42–51"),
            )
        }
    };
    Inference::from_json(&sim, &sim_source, &serve, &serve_source).map_err(anyhow::Error::msg)
}

/// The platform's manifests, read once for the assessment and the lint.
fn manifests(args: &BoardArgs) -> Result<(Vec<KubeObject>, Vec<String>)> {
    let mut warnings = Vec::new();
    let dir = args.manifests.clone().or_else(|| Some(args.repo.join("deploy")).filter(|p| p.is_dir()));
    let objects = match dir {
        Some(dir) => read_manifest_dir(&dir, &mut warnings)?,
        None => Vec::new(),
    };
    Ok((objects, warnings))
}

fn maturity(args: &BoardArgs, as_of: i64, objects: Vec<KubeObject>, warnings: Vec<String>) -> Result<Assessment> {
    if let Some(path) = &args.assessment {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        return Ok(gpuplane_assess::baseline::read_baseline(&path.display().to_string(), &text)?);
    }
    let inputs = Inputs {
        repos: discover(&args.repo)?,
        platform: Vec::new(),
        manifests: objects,
        survey: None,
        as_of,
        warnings,
        helm: crate::assess::helm_on_path(),
    };
    Ok(assess(&Model::builtin()?, &inputs)?)
}

fn security(args: &BoardArgs, objects: &[KubeObject]) -> Result<Security> {
    let (attributions, cohorts, source) = match &args.posture {
        Some(path) => {
            let value = read_json(path)?;
            schema(&value, path, gpuplane_posture::scan::POSTURE_JSON_SCHEMA)?;
            let scan: Scan =
                serde_json::from_value(value).with_context(|| format!("{}: not a posture scan", path.display()))?;
            let attributions: Vec<_> = scan.commits.iter().map(|c| c.attribution.clone()).collect();
            (attributions, Some(scan.cohorts), format!("gpuplane posture scan ({})", path.display()))
        }
        None => {
            let root = history::root(&args.repo)?;
            let markers = Markers::builtin()?;
            let attributions = history::commits(&root, "HEAD")?.iter().map(|c| markers.attribute(c)).collect();
            (attributions, None, "commit markers of the repository's history (no scanner SARIF given)".to_owned())
        }
    };
    let mut tools: Vec<(String, usize)> = Vec::new();
    for tool in attributions.iter().filter_map(|a| a.tool.as_deref()) {
        match tools.iter_mut().find(|(t, _)| t == tool) {
            Some((_, n)) => *n += 1,
            None => tools.push((tool.to_owned(), 1)),
        }
    }
    Ok(Security {
        commits: attributions.len(),
        ai_commits: attributions.iter().filter(|a| a.ai).count(),
        tools,
        cohorts,
        lint: lint(objects),
        sources: format!("{source}; gpuplane lint of the platform's manifests"),
    })
}

/// Runs `gpuplane board`.
pub fn run(args: BoardArgs) -> Result<()> {
    let as_of = match &args.as_of {
        Some(text) => {
            parse_date(text).with_context(|| format!("--as-of {text}: expected a date such as 2026-11-28"))?
        }
        None => SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or_default(),
    };
    if !(args.gpu_hour_usd.is_finite() && args.gpu_hour_usd >= 0.0) {
        anyhow::bail!("--gpu-hour-usd {}: expected a price of zero or more", args.gpu_hour_usd);
    }
    // Every given file is read and checked before the simulations run.
    let given = given_results(&args)?;
    let (objects, warnings) = manifests(&args)?;
    let security = security(&args, &objects)?;
    let maturity = maturity(&args, as_of, objects, warnings)?;
    let board = Board {
        gpu_hour_usd: args.gpu_hour_usd,
        date: format_date(as_of),
        inference: inference(given)?,
        maturity,
        security,
    };
    let html = board::html(&board);
    let markdown = board::markdown(&board);
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    for (name, text) in [("board.html", &html), ("board.md", &markdown)] {
        let path = args.out.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    out!("{markdown}")?;
    outln!("\nWrote {}/board.{{html,md}}", args.out.display())?;
    Ok(())
}
