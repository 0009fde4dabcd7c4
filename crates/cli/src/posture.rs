//! `gpuplane posture`: the security posture of AI-assisted development — commit attribution, SARIF
//! ingestion with stable fingerprints and baseline states, per-cohort rates, triage figures, the CI gate
//! and its tuning.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use gpuplane_posture::attribution::Markers;
use gpuplane_posture::gate::{GateConfig, judge, line_diff, tuned};
use gpuplane_posture::history;
use gpuplane_posture::scan::{ScanInput, read_baseline, scan};
use gpuplane_posture::triage::{Triage, tune};
use gpuplane_posture::{finding, sarif};
use gpuplane_report::posture as report;
use gpuplane_report::table::Style;

/// `gpuplane posture` subcommands.
#[derive(Debug, Subcommand)]
pub enum PostureCommand {
    /// Ingest SARIF, attribute commits, rate findings per cohort; write JSON, SARIF, Markdown and HTML.
    Scan(ScanArgs),
    /// Fail a change (exit 1) on findings in its changed lines; stricter for AI-assisted changes.
    Gate(GateArgs),
    /// Recommend promoting precise rules to blocking and demoting noisy ones, as a gate-config diff.
    Tune(TuneArgs),
    /// List the commits of a range with their AI attribution and the markers matched.
    Attribute(AttributeArgs),
}

#[derive(Debug, Args)]
struct Common {
    /// The git repository the findings are about
    #[arg(long, default_value = ".", value_name = "DIR")]
    repo: PathBuf,
    /// AI-attribution markers (YAML; `extends: builtin` adds to the built-in list)
    #[arg(long, value_name = "FILE")]
    markers: Option<PathBuf>,
}

/// Arguments of `gpuplane posture scan`.
#[derive(Debug, Args)]
pub struct ScanArgs {
    #[command(flatten)]
    common: Common,
    /// SARIF 2.1.0 files from any scanners (semgrep, bandit, checkov, zizmor, clippy-sarif, …)
    #[arg(long, value_name = "FILE", required = true, num_args = 1..)]
    sarif: Vec<PathBuf>,
    /// Commits to attribute and rate (`HEAD` for all history, or `v1.0..HEAD`)
    #[arg(long, default_value = "HEAD")]
    range: String,
    /// A previous scan's findings.sarif: mark findings new, unchanged or absent
    #[arg(long, value_name = "FILE")]
    baseline: Option<PathBuf>,
    /// Triage decisions (YAML): false positives, won't fix, confirmed, fixed
    #[arg(long, value_name = "FILE")]
    triage: Option<PathBuf>,
    /// Folder for posture.json, findings.sarif, posture.md and posture.html
    #[arg(long, default_value = "out/posture", value_name = "DIR")]
    out: PathBuf,
    /// What to print on standard output
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

/// Arguments of `gpuplane posture gate`.
#[derive(Debug, Args)]
pub struct GateArgs {
    #[command(flatten)]
    common: Common,
    /// SARIF files of the scan of the change's head
    #[arg(long, value_name = "FILE", required = true, num_args = 1..)]
    sarif: Vec<PathBuf>,
    /// The change's base revision (such as origin/main)
    #[arg(long, value_name = "REV")]
    base: String,
    /// The change's head revision
    #[arg(long, default_value = "HEAD", value_name = "REV")]
    head: String,
    /// Gate configuration (YAML) [default: block high and critical; for AI-assisted changes medium and up, with review]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// Arguments of `gpuplane posture tune`.
#[derive(Debug, Args)]
pub struct TuneArgs {
    #[command(flatten)]
    common: Common,
    /// SARIF files of the latest scan
    #[arg(long, value_name = "FILE", required = true, num_args = 1..)]
    sarif: Vec<PathBuf>,
    /// Triage decisions (YAML)
    #[arg(long, value_name = "FILE")]
    triage: Option<PathBuf>,
    /// A previous scan's findings.sarif (gone findings count as fixed)
    #[arg(long, value_name = "FILE")]
    baseline: Option<PathBuf>,
    /// The gate configuration to change [default: the built-in one]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Decisions a rule needs before it is promoted or demoted
    #[arg(long, default_value_t = 10)]
    min_triaged: usize,
    /// Precision at or above which a rule is promoted to blocking
    #[arg(long, default_value_t = 0.9)]
    min_precision: f64,
    /// Effective false-positive rate above which a rule is demoted
    #[arg(long, default_value_t = 0.1)]
    max_effective_fp: f64,
}

/// Arguments of `gpuplane posture attribute`.
#[derive(Debug, Args)]
pub struct AttributeArgs {
    #[command(flatten)]
    common: Common,
    /// Commits to attribute
    #[arg(long, default_value = "HEAD")]
    range: String,
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    /// Terminal tables.
    Table,
    /// Markdown (as written to posture.md).
    Markdown,
    /// The JSON document (as written to posture.json; schema gpuplane.posture/v1).
    Json,
}

/// The gate failed: the change has blocking findings (exit code 1, no error message).
#[derive(Debug)]
pub struct GateFailed;

impl std::fmt::Display for GateFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the gate failed")
    }
}

impl std::error::Error for GateFailed {}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn markers(common: &Common) -> Result<Markers> {
    Ok(match &common.markers {
        Some(path) => Markers::load(&path.display().to_string(), &read(path)?)?,
        None => Markers::builtin()?,
    })
}

fn triage(path: &Option<PathBuf>) -> Result<Triage> {
    Ok(match path {
        Some(p) => Triage::parse(&p.display().to_string(), &read(p)?)?,
        None => Triage::default(),
    })
}

fn baseline(path: &Option<PathBuf>, repo: &Path) -> Result<Option<Vec<finding::Finding>>> {
    let Some(p) = path else { return Ok(None) };
    let root = history::root(repo)?;
    Ok(Some(read_baseline(&p.display().to_string(), &read(p)?, &root)?))
}

/// Runs a `gpuplane posture` subcommand.
pub fn run(command: PostureCommand) -> Result<()> {
    match command {
        PostureCommand::Scan(args) => run_scan(args),
        PostureCommand::Gate(args) => run_gate(args),
        PostureCommand::Tune(args) => run_tune(args),
        PostureCommand::Attribute(args) => run_attribute(args),
    }
}

fn run_scan(args: ScanArgs) -> Result<()> {
    let input = ScanInput {
        repo: args.common.repo.clone(),
        range: args.range.clone(),
        sarif: args.sarif.clone(),
        baseline: baseline(&args.baseline, &args.common.repo)?,
        triage: triage(&args.triage)?,
        markers: markers(&args.common)?,
    };
    let result = scan(&input)?;
    let markdown = format!("# Security posture\n\n{}", report::report(&result, Style::Markdown));
    let html = report::html(&result);
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    // The JSON and the SARIF go straight to their files: a large scan never sits in memory as text.
    let create = |name: &str| {
        let path = args.out.join(name);
        std::fs::File::create(&path)
            .map(std::io::BufWriter::new)
            .with_context(|| format!("cannot write {}", path.display()))
    };
    serde_json::to_writer_pretty(create("posture.json")?, &result)?;
    let all: Vec<&finding::Finding> = result.findings.iter().chain(&result.gone).collect();
    sarif::write_to(create("findings.sarif")?, &all, &result.tools)
        .with_context(|| format!("cannot write {}/findings.sarif", args.out.display()))?;
    for (name, text) in [("posture.md", &markdown), ("posture.html", &html)] {
        let path = args.out.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    match args.format {
        Format::Table => {
            out!("{}", report::report(&result, Style::Terminal))?;
            outln!("Wrote {}/{{posture.json,findings.sarif,posture.md,posture.html}}", args.out.display())?;
        }
        Format::Markdown => out!("{markdown}")?,
        Format::Json => {
            // Through io::Error, so that a closed pipe is recognised as one.
            serde_json::to_writer_pretty(std::io::stdout().lock(), &result).map_err(std::io::Error::from)?;
            outln!()?;
        }
    }
    Ok(())
}

fn run_gate(args: GateArgs) -> Result<()> {
    let root = history::root(&args.common.repo)?;
    let config = match &args.config {
        Some(p) => GateConfig::parse(&p.display().to_string(), &read(p)?)?,
        None => GateConfig::default(),
    };
    let markers = markers(&args.common)?;
    let mut findings = Vec::new();
    for path in &args.sarif {
        findings.extend(sarif::read_file(path, &root)?.0);
    }
    // One weakness reported by two tools at one place blocks once.
    let findings = finding::merge_duplicates(findings);
    let changed = history::changed_lines(&root, &args.base, &args.head)?;
    let commits = history::commits(&root, &format!("{}..{}", args.base, args.head))?;
    let ai_commits: Vec<String> = commits.iter().filter(|c| markers.attribute(c).ai).map(|c| c.id.clone()).collect();
    let verdict = judge(&config, &findings, &changed, ai_commits);
    out!("{}", report::verdict(&verdict))?;
    if verdict.passed { Ok(()) } else { Err(GateFailed.into()) }
}

fn run_tune(args: TuneArgs) -> Result<()> {
    let input = ScanInput {
        repo: args.common.repo.clone(),
        range: "HEAD".to_owned(),
        sarif: args.sarif.clone(),
        baseline: baseline(&args.baseline, &args.common.repo)?,
        triage: triage(&args.triage)?,
        markers: markers(&args.common)?,
    };
    let result = scan(&input)?;
    let config = match &args.config {
        Some(p) => GateConfig::parse(&p.display().to_string(), &read(p)?)?,
        None => GateConfig::default(),
    };
    let advice = tune(&result.rules, args.min_triaged, args.min_precision, args.max_effective_fp);
    if advice.is_empty() {
        outln!(
            "No rule has {} or more triaged findings with precision ≥ {:.0} % or effective false positives > {:.0} %: nothing to change.",
            args.min_triaged,
            args.min_precision * 100.0,
            args.max_effective_fp * 100.0
        )?;
        return Ok(());
    }
    for a in &advice {
        outln!("{} {}: {}", a.action, a.rule, a.because)?;
    }
    let new = tuned(&config, &advice);
    outln!("\n--- gate config\n+++ tuned gate config")?;
    out!("{}", line_diff(&config.to_yaml(), &new.to_yaml()))?;
    Ok(())
}

fn run_attribute(args: AttributeArgs) -> Result<()> {
    let root = history::root(&args.common.repo)?;
    let markers = markers(&args.common)?;
    let commits = history::commits(&root, &args.range)?;
    let rows: Vec<(String, String, gpuplane_posture::attribution::Attribution)> = commits
        .iter()
        .map(|c| (c.id.clone(), c.message.lines().next().unwrap_or_default().to_owned(), markers.attribute(c)))
        .collect();
    if args.json {
        let json: Vec<serde_json::Value> = rows
            .iter()
            .map(|(id, subject, a)| serde_json::json!({"id": id, "subject": subject, "attribution": a}))
            .collect();
        outln!("{}", serde_json::to_string_pretty(&json)?)?;
        return Ok(());
    }
    let ai = rows.iter().filter(|(_, _, a)| a.ai).count();
    let mut by_tool: HashMap<&str, usize> = HashMap::new();
    for (_, _, a) in &rows {
        if let Some(tool) = &a.tool {
            *by_tool.entry(tool).or_default() += 1;
        }
    }
    for (id, subject, a) in rows.iter().filter(|(_, _, a)| a.ai) {
        let confidence = a.confidence.map(|c| format!("{c:?}").to_lowercase()).unwrap_or_default();
        outln!(
            "{} {:<50.50} {} ({confidence}): {}",
            &id[..id.len().min(10)],
            subject,
            a.tool.as_deref().unwrap_or("?"),
            a.evidence.join("; ")
        )?;
    }
    let mut tools: Vec<_> = by_tool.into_iter().collect();
    tools.sort();
    let tools: Vec<String> = tools.iter().map(|(t, n)| format!("{t} {n}")).collect();
    outln!(
        "{ai} of {} commits in {} AI-assisted by their markers{}",
        rows.len(),
        args.range,
        if tools.is_empty() { String::new() } else { format!(" ({})", tools.join(", ")) }
    )?;
    Ok(())
}
