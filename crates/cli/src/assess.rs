//! `gpuplane assess`: the platform-engineering maturity assessment over git repositories, Kubernetes
//! manifests and an attested survey. Prints the areas and the next-level plan, and writes the JSON,
//! Markdown and HTML reports.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use gpuplane_assess::assess::{parse_date, read_manifest_dir};
use gpuplane_assess::baseline::{compare, read_baseline};
use gpuplane_assess::model::BUILTIN_MODEL;
use gpuplane_assess::repo::discover;
use gpuplane_assess::survey::Survey;
use gpuplane_assess::{Inputs, Model, assess};
use gpuplane_report::assess as report;

/// Arguments of `gpuplane assess`.
#[derive(Debug, Args)]
pub struct AssessArgs {
    /// Git working trees, or folders whose sub-folders are working trees (an organisation checkout)
    #[arg(value_name = "REPO", default_value = ".")]
    paths: Vec<PathBuf>,
    /// Folder (or file) of Kubernetes YAML: namespaces, quotas, workloads, policies; repeatable
    #[arg(long, value_name = "DIR")]
    manifests: Vec<PathBuf>,
    /// Also read the objects of the cluster of the current kubeconfig context (read-only, all namespaces)
    #[arg(long)]
    cluster: bool,
    /// Helm binary that renders the repositories' charts (`helm template`, default values) [default: `helm`
    /// on PATH, if any; without one, charts are read approximately, with a warning]
    #[arg(long, value_name = "FILE")]
    helm: Option<PathBuf>,
    /// Attested answers to the model's survey questions (YAML `answers:`)
    #[arg(long, value_name = "FILE")]
    survey: Option<PathBuf>,
    /// Model file replacing the built-in one, or extending it (`extends: builtin`)
    #[arg(long, value_name = "FILE")]
    model: Option<PathBuf>,
    /// Name of a platform team repository (its folder name); repeatable [default: the only repository]
    #[arg(long, value_name = "NAME")]
    platform: Vec<String>,
    /// A previous assessment.json: show per-area trend and the checks that changed
    #[arg(long, value_name = "FILE")]
    baseline: Option<PathBuf>,
    /// Assessment date (UTC): the active window and DORA metrics end here [default: today]
    #[arg(long, value_name = "YYYY-MM-DD")]
    as_of: Option<String>,
    /// Folder for assessment.json, assessment.md and assessment.html
    #[arg(long, default_value = "out/assess", value_name = "DIR")]
    out: PathBuf,
    /// What to print on standard output
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    format: OutputFormat,
    /// Print the built-in model (YAML) and exit: a starting point for a model of your own
    #[arg(long)]
    print_model: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OutputFormat {
    /// Areas, trend and plan as terminal tables and text.
    Table,
    /// The whole report as Markdown (as written to assessment.md).
    Markdown,
    /// The JSON document (as written to assessment.json; schema gpuplane.assess/v1).
    Json,
    /// The HTML page with the radar chart (as written to assessment.html).
    Html,
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Runs `gpuplane assess`.
pub fn run(args: AssessArgs) -> Result<()> {
    if args.print_model {
        out!("{BUILTIN_MODEL}")?;
        return Ok(());
    }
    let model = match &args.model {
        Some(path) => Model::load(&path.display().to_string(), &read(path)?)?,
        None => Model::builtin()?,
    };
    let as_of = match &args.as_of {
        Some(text) => {
            parse_date(text).with_context(|| format!("--as-of {text}: expected a date such as 2026-11-28"))?
        }
        None => SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or_default(),
    };
    let mut repos = Vec::new();
    for path in &args.paths {
        repos.extend(discover(path)?);
    }
    let mut names: Vec<&str> = repos.iter().map(|r| r.name.as_str()).collect();
    names.sort_unstable();
    if let Some(pair) = names.windows(2).find(|w| w[0] == w[1]) {
        bail!("two repositories are named {}: evidence names repositories by folder name", pair[0]);
    }
    let mut warnings = Vec::new();
    let mut manifests = Vec::new();
    for dir in &args.manifests {
        manifests.extend(read_manifest_dir(dir, &mut warnings)?);
    }
    if args.cluster {
        let evidence = crate::service::runtime()?.block_on(async {
            let client =
                kube::Client::try_default().await.context("--cluster: cannot reach the cluster of the kubeconfig")?;
            anyhow::Ok(gpuplane_kube::evidence::read_cluster(&client, "cluster").await?)
        })?;
        if !evidence.skipped.is_empty() {
            warnings.push(format!("cluster: not installed, so not read: {}", evidence.skipped.join(", ")));
        }
        manifests.extend(evidence.objects);
    }
    let survey = match &args.survey {
        Some(path) => Some(Survey::parse(&path.display().to_string(), &read(path)?, &model)?),
        None => None,
    };
    let helm = args.helm.clone().or_else(helm_on_path);
    let inputs = Inputs { repos, platform: args.platform.clone(), manifests, survey, as_of, warnings, helm };
    let mut assessment = assess(&model, &inputs)?;
    if let Some(path) = &args.baseline {
        let previous = read_baseline(&path.display().to_string(), &read(path)?)?;
        assessment.trend = Some(compare(&previous, &assessment));
    }

    let json = serde_json::to_string_pretty(&assessment)?;
    let markdown = report::markdown(&assessment);
    let html = report::html(&assessment);
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    for (name, text) in [("assessment.json", &json), ("assessment.md", &markdown), ("assessment.html", &html)] {
        let path = args.out.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    match args.format {
        OutputFormat::Table => {
            out!("{}", report::terminal(&assessment))?;
            outln!("Wrote {}/assessment.{{json,md,html}}", args.out.display())?;
        }
        OutputFormat::Markdown => out!("{markdown}")?,
        OutputFormat::Json => outln!("{json}")?,
        OutputFormat::Html => out!("{html}")?,
    }
    Ok(())
}

/// `helm` from PATH, if there is one.
pub(crate) fn helm_on_path() -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join("helm")).find(|p| p.is_file())
}
