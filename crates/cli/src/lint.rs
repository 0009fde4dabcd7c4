//! `gpuplane lint`: GPU workload rules (and the common baseline) over Kubernetes manifests, printed
//! as a table or written as SARIF 2.1.0 with a help text per rule. Exits 1 when an error-level rule fires.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use gpuplane_assess::assess::read_manifest_dir;
use gpuplane_posture::finding::Level;
use gpuplane_posture::lint::{lint, sarif_rules};
use gpuplane_posture::sarif;
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
    let log = serde_json::to_string_pretty(&sarif::write(&findings, &sarif_rules()))?;
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
