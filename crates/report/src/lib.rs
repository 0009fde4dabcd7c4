//! The output side of gpuplane: terminal tables, CSV, JSON, Markdown and self-contained SVG and HTML
//! of simulation results and maturity assessments. Renders result values; computes nothing itself.
#![forbid(unsafe_code)]

pub mod assess;
pub mod bars;
pub mod board;
pub mod csv;
pub mod heatmap;
pub mod html;
pub mod posture;
pub mod serve;
pub mod svg;
pub mod table;
pub mod windows;

/// Version tag of the JSON written by `gpuplane sim`.
pub const SIM_JSON_SCHEMA: &str = "gpuplane.sim/v1";

/// The simulation result as the documented JSON document (`docs/sim-json.md`).
pub fn sim_json(result: &gpuplane_sim::ExperimentResult, trace: &str, nodes: &str) -> serde_json::Value {
    serde_json::json!({
        "schema": SIM_JSON_SCHEMA,
        "trace": trace,
        "nodes": nodes,
        "result": result,
    })
}
