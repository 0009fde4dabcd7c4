//! Terminal table of a simulation: unallocated GPU % at fixed arrived-workload points, median and
//! min–max over seeds, per policy, with failures, decision latency and wall time.

use comfy_table::presets::{ASCII_MARKDOWN, UTF8_FULL_CONDENSED};
use comfy_table::{CellAlignment, Table};
use gpuplane_sim::{ExperimentResult, PolicySummary};

/// Arrived-workload points the summary table shows.
pub const CHECKPOINTS: [u32; 6] = [90, 95, 100, 110, 120, 130];

/// "4.77 (4.60–4.95)" for a point, or "–" when no seed reached it.
fn cell(p: &PolicySummary, pct: u32) -> String {
    match p.at(pct) {
        Some(c) => format!(
            "{:.2} ({:.2}–{:.2})",
            c.unallocated_gpu_pct.median, c.unallocated_gpu_pct.min, c.unallocated_gpu_pct.max
        ),
        None => "–".to_owned(),
    }
}

/// "31 / 63 arrivals (≈ 1.2 / 2.5 h)": the median over seeds of each run's median and 99th-percentile
/// wait for its window, in arrivals and, with the trace's mean gap between creations, in time.
fn wait_cell(p: &PolicySummary, gap_s: Option<f64>) -> String {
    if p.window <= 1 {
        return "–".to_owned();
    }
    let (p50, p99) = (p.wait_p50_arrivals.median, p.wait_p99_arrivals.median);
    let mut cell = format!("{p50:.0} / {p99:.0} arrivals");
    if let Some(gap) = gap_s {
        cell += &format!(" (≈ {} / {})", duration(p50 * gap), duration(p99 * gap));
    }
    cell
}

/// A duration in its largest sensible unit: "45 s", "12 min", "3.4 h".
pub fn duration(seconds: f64) -> String {
    if seconds < 90.0 {
        format!("{seconds:.0} s")
    } else if seconds < 5400.0 {
        format!("{:.0} min", seconds / 60.0)
    } else {
        format!("{:.1} h", seconds / 3600.0)
    }
}

/// Formats nanoseconds as µs with one decimal.
pub fn micros(ns: u64) -> String {
    format!("{:.1}", ns as f64 / 1000.0)
}

/// Table drawing styles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Box-drawing characters for a terminal.
    Terminal,
    /// A GitHub-flavoured Markdown table.
    Markdown,
}

/// An empty table in the style.
pub fn new_table(style: Style) -> Table {
    let mut table = Table::new();
    table.load_style(match style {
        Style::Terminal => UTF8_FULL_CONDENSED,
        Style::Markdown => ASCII_MARKDOWN,
    });
    table
}

/// The summary table.
pub fn summary(result: &ExperimentResult, style: Style) -> String {
    let mut table = new_table(style);
    let mut header = vec!["policy".to_owned()];
    header.extend(CHECKPOINTS.iter().map(|c| format!("{c} %")));
    let defrag = result.policies.iter().any(|p| p.defrag > 0);
    header.push("failed pods".to_owned());
    if defrag {
        header.push("migrations".to_owned());
    }
    let offline = result.yardsticks.map(|y| y.offline_first_fit_decreasing_pct.median);
    if offline.is_some() {
        header.push("above offline yardstick".to_owned());
    }
    let windows = result.policies.iter().any(|p| p.window > 1);
    if windows {
        header.push("window wait p50/p99".to_owned());
    }
    header.extend(["decision p50/p99 µs".to_owned(), "wall s".to_owned()]);
    table.set_header(header);
    for p in &result.policies {
        let wall: f64 = result
            .runs
            .iter()
            .filter(|r| (r.policy, r.defrag, r.window) == (p.policy, p.defrag, p.window))
            .map(|r| r.wall_ms)
            .sum::<f64>()
            / 1000.0;
        let mut row = vec![p.label()];
        row.extend(CHECKPOINTS.iter().map(|&c| cell(p, c)));
        row.push(format!("{:.0}", p.failed_pods.median));
        if defrag {
            row.push(if p.defrag > 0 { format!("{:.0}", p.migrations.median) } else { "–".to_owned() });
        }
        if let Some(limit) = offline {
            let at_full = p.curve.iter().find(|c| c.arrived_pct == 100).map(|c| c.unallocated_gpu_pct.median);
            row.push(at_full.map_or("–".to_owned(), |u| format!("{:+.2}", u - limit)));
        }
        if windows {
            row.push(wait_cell(p, result.arrival_gap_s));
        }
        row.push(format!("{} / {}", micros(p.decision_p50_ns), micros(p.decision_p99_ns)));
        row.push(format!("{wall:.1}"));
        table.add_row(row);
    }
    for i in 1..table.column_count() {
        if let Some(col) = table.column_mut(i) {
            col.set_cell_alignment(CellAlignment::Right);
        }
    }
    let yardsticks = result.yardsticks.map_or(String::new(), |y| {
        let spread = |s: gpuplane_sim::Spread| format!("{:.2} % ({:.2}–{:.2})", s.median, s.min, s.max);
        format!(
            "Yardsticks on a relaxed problem (the arrived GPU-sharing pods alone on whole GPUs: no nodes, no CPU, no \
             other pods): offline first-fit decreasing leaves {} of the GPUs free, online best fit in arrival order {}.\n",
            spread(y.offline_first_fit_decreasing_pct),
            spread(y.online_best_fit_pct)
        )
    });
    format!(
        "Unallocated GPU % at arrived workload (median, min–max over {} seeds); {} nodes, {} GPUs, {} trace pods, tune {}\n{table}\n{yardsticks}wall time {:.1} s for {} runs (CPU time per policy in the last column)\n",
        result.seeds.len(),
        result.cluster.nodes,
        result.cluster.gpus,
        result.trace_pods,
        result.tune,
        result.wall_ms / 1000.0,
        result.runs.len(),
    )
}
