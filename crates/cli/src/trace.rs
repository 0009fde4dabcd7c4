//! `gpuplane trace`: arrival sequences for other simulators and openb-style trace variants.
//! `trace arrivals` writes one seed's shuffled, inflated arrival order as an openb CSV and as the
//! FGD paper simulator's YAML, so both simulators replay the very same pods.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use gpuplane_core::openb::{TracePod, write_pods};
use gpuplane_place::Cluster;
use gpuplane_sim::{export, workload};

use crate::input;

/// `gpuplane trace …`
#[derive(Debug, Subcommand)]
pub enum TraceCommand {
    /// Write one seed's arrival order (shuffled, inflated) as openb CSV and as the FGD simulator's YAML.
    Arrivals(ArrivalsArgs),
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
    }
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
    println!("{} arrivals for seed {} (tune {}) in {}", pods.len(), args.seed, args.tune, args.out.display());
    Ok(())
}

fn write(path: &Path, body: String) -> Result<()> {
    std::fs::write(path, body).with_context(|| format!("cannot write {}", path.display()))
}
