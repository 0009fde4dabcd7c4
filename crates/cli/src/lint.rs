//! `gpuplane lint`: GPU workload rules (and the common baseline) over Kubernetes manifests, printed
//! as a table or written as SARIF 2.1.0 with a help text per rule. Exits 1 when an error-level rule fires.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use gpuplane_assess::assess::read_manifest_dir;
use gpuplane_posture::finding::Level;
use gpuplane_posture::lint::{lint, sarif_rules};
use gpuplane_posture::{history, sarif};
use gpuplane_report::posture::lint_table;
use gpuplane_report::table::Style;

use crate::posture::GateFailed;

/// Arguments of `gpuplane lint`.
#[derive(Debug, Args)]
pub struct LintArgs {
    /// Manifest files or folders of them
    #[arg(value_name = "PATH", required = true)]
    paths: Vec<PathBuf>,
    /// What to print on standard output
    #[arg(long, value_enum, default_value_t = LintFormat::Table)]
    format: LintFormat,
    /// Also write the SARIF log to this file
    #[arg(long, value_name = "FILE")]
    sarif: Option<PathBuf>,
    /// The folder SARIF paths are relative to (%SRCROOT%) [default: the git repository of the working
    /// folder; absolute paths outside any]
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
}

/// `path` (as typed) relative to `root` when it lies inside, else absolute.
fn relative_to(path: &str, root: Option<&Path>) -> String {
    let Ok(absolute) = std::fs::canonicalize(path) else { return path.to_owned() };
    let root = root.and_then(|r| std::fs::canonicalize(r).ok());
    match root.as_deref().and_then(|r| absolute.strip_prefix(r).ok()) {
        Some(inside) => inside.to_string_lossy().replace('\\', "/"),
        None => absolute.display().to_string(),
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LintFormat {
    /// A terminal table.
    Table,
    /// SARIF 2.1.0.
    Sarif,
}

/// Runs `gpuplane lint`.
pub fn run(args: LintArgs) -> Result<()> {
    let mut warnings = Vec::new();
    let mut objects = Vec::new();
    for path in &args.paths {
        objects.extend(read_manifest_dir(path, &mut warnings)?);
    }
    let findings = lint(&objects);
    // SARIF locations are relative to the repository the manifests are in (%SRCROOT%); the table keeps the
    // paths as typed.
    let root = args.root.clone().or_else(|| history::root(Path::new(".")).ok());
    let mut located = findings.clone();
    for f in &mut located {
        f.path = relative_to(&f.path, root.as_deref());
    }
    let tools = [sarif::ToolRules::from_help(gpuplane_posture::lint::TOOL, &sarif_rules())];
    let log = serde_json::to_string_pretty(&sarif::write(&located, &tools))?;
    if let Some(path) = &args.sarif {
        std::fs::write(path, &log).with_context(|| format!("cannot write {}", path.display()))?;
    }
    match args.format {
        LintFormat::Table => {
            for w in &warnings {
                eprintln!("warning: {w}");
            }
            if findings.is_empty() {
                outln!("{} objects, no findings", objects.len())?;
            } else {
                outln!("{}", lint_table(&findings, Style::Terminal))?;
                let errors = findings.iter().filter(|f| f.level == Level::Error).count();
                outln!("{} objects: {} findings, {errors} errors", objects.len(), findings.len())?;
            }
        }
        LintFormat::Sarif => outln!("{log}")?,
    }
    if findings.iter().any(|f| f.level == Level::Error) { Err(GateFailed.into()) } else { Ok(()) }
}
