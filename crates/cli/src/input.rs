//! Reading clusters and traces from files (openb CSV or Kubernetes YAML, chosen by extension), with
//! the openb default trace and GPU node list built into the binary.

use std::path::Path;

use anyhow::{Context, Result, bail};
use gpuplane_core::manifest::read_manifests;
use gpuplane_core::openb::{read_nodes, read_pods};
use gpuplane_core::{Node, Pod};

/// The bundled default pod list of the openb trace.
pub const BUNDLED_TRACE: &str = include_str!("../../../data/openb/openb_pod_list_default.csv");
/// The bundled openb GPU node list (1,213 nodes, 6,212 GPUs).
pub const BUNDLED_NODES: &str = include_str!("../../../data/openb/openb_node_list_gpu_node.csv");
/// How bundled inputs are named in output.
pub const BUNDLED_TRACE_NAME: &str = "data/openb/openb_pod_list_default.csv";
/// How the bundled node list is named in output.
pub const BUNDLED_NODES_NAME: &str = "data/openb/openb_node_list_gpu_node.csv";

enum Format {
    Csv,
    Yaml,
}

fn format_of(path: &Path) -> Result<Format> {
    match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("csv") => Ok(Format::Csv),
        Some("yaml" | "yml") => Ok(Format::Yaml),
        _ => bail!(
            "{}: unknown file type; expected .csv (openb trace) or .yaml/.yml (Kubernetes objects)",
            path.display()
        ),
    }
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Reads cluster nodes from an openb node CSV or from Node objects in YAML.
pub fn nodes(path: Option<&Path>) -> Result<(String, Vec<Node>)> {
    let Some(path) = path else {
        return Ok((BUNDLED_NODES_NAME.to_owned(), read_nodes(BUNDLED_NODES_NAME, BUNDLED_NODES.as_bytes())?));
    };
    let name = path.display().to_string();
    let format = format_of(path)?;
    let text = read_text(path)?;
    let nodes = match format {
        Format::Csv => read_nodes(&name, text.as_bytes())?,
        Format::Yaml => {
            let m = read_manifests(&name, &text)?;
            if m.nodes.is_empty() {
                bail!("{name}: no Node objects found");
            }
            m.nodes
        }
    };
    Ok((name, nodes))
}

/// Reads an openb pod CSV with its QoS and times [default: the bundled default trace].
pub fn trace_records(path: Option<&Path>) -> Result<(String, Vec<gpuplane_core::openb::TracePod>)> {
    let Some(path) = path else {
        return Ok((BUNDLED_TRACE_NAME.to_owned(), read_pods(BUNDLED_TRACE_NAME, BUNDLED_TRACE.as_bytes())?));
    };
    let name = path.display().to_string();
    if !matches!(format_of(path)?, Format::Csv) {
        bail!("{name}: expected an openb pod CSV");
    }
    let text = read_text(path)?;
    let pods = read_pods(&name, text.as_bytes())?;
    Ok((name, pods))
}

/// Reads pending pods from an openb pod CSV or from Pod objects in YAML.
pub fn trace(path: Option<&Path>) -> Result<(String, Vec<Pod>)> {
    trace_timed(path).map(|(name, pods, _)| (name, pods))
}

/// The mean time between two pod creations in an openb trace, in seconds: (last − first) ÷ (pods − 1)
/// over the pods with a creation time; `None` without two of them or with no time between them.
pub fn mean_arrival_gap_s(pods: &[gpuplane_core::openb::TracePod]) -> Option<f64> {
    let times: Vec<u64> = pods.iter().filter_map(|p| p.creation_time).collect();
    let (first, last) = (times.iter().min()?, times.iter().max()?);
    (times.len() >= 2 && last > first).then(|| (last - first) as f64 / (times.len() - 1) as f64)
}

/// [`trace`], with the trace's [`mean_arrival_gap_s`] when it is an openb CSV with creation times.
pub fn trace_timed(path: Option<&Path>) -> Result<(String, Vec<Pod>, Option<f64>)> {
    let Some(path) = path else {
        let pods = read_pods(BUNDLED_TRACE_NAME, BUNDLED_TRACE.as_bytes())?;
        let gap = mean_arrival_gap_s(&pods);
        return Ok((BUNDLED_TRACE_NAME.to_owned(), pods.into_iter().map(|p| p.pod).collect(), gap));
    };
    let name = path.display().to_string();
    let format = format_of(path)?;
    let text = read_text(path)?;
    let mut gap = None;
    let pods = match format {
        Format::Csv => {
            let records = read_pods(&name, text.as_bytes())?;
            gap = mean_arrival_gap_s(&records);
            records.into_iter().map(|p| p.pod).collect()
        }
        Format::Yaml => {
            let m = read_manifests(&name, &text)?;
            if let Some(bound) = m.pods.iter().find(|p| p.node_name.is_some()) {
                bail!(
                    "{name}: pod {:?} is already bound to node {:?}; the simulator replays pending pods only",
                    bound.pod.name,
                    bound.node_name.as_deref().unwrap_or_default()
                );
            }
            if m.pods.is_empty() {
                bail!("{name}: no Pod objects found");
            }
            m.pods.into_iter().map(|p| p.pod).collect::<Vec<Pod>>()
        }
    };
    Ok((name, pods, gap))
}
