//! The window curve: unallocated GPU % at 100 % arrived workload against the scheduling window W (pods
//! placed jointly), per trace, with one-pod-at-a-time FGD and the offline first-fit-decreasing yardstick
//! as reference lines. A Markdown table, a CSV and an SVG of small multiples, one panel per trace.

use std::fmt::Write as _;

use gpuplane_place::Policy;
use gpuplane_sim::{ExperimentResult, Spread};

use crate::svg::{LineChart, Series};

/// One trace's curve.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowCurve {
    /// The trace's short name.
    pub trace: String,
    /// Window sizes, ascending.
    pub windows: Vec<usize>,
    /// Per policy run (in the experiment's order): unallocated % at 100 % arrived per window, over seeds.
    pub policies: Vec<(Policy, Vec<Option<Spread>>)>,
    /// The relaxed problem's offline first-fit decreasing, over seeds.
    pub offline: Option<Spread>,
}

impl WindowCurve {
    /// The curve of an experiment run with several windows (`policies` × `windows`, no defragmentation).
    pub fn of(trace: &str, result: &ExperimentResult) -> WindowCurve {
        let mut windows: Vec<usize> = result.policies.iter().map(|p| p.window).collect();
        windows.sort_unstable();
        windows.dedup();
        let mut policies: Vec<Policy> = Vec::new();
        for p in result.policies.iter().filter(|p| p.defrag == 0) {
            if !policies.contains(&p.policy) {
                policies.push(p.policy);
            }
        }
        let at_full = |policy: Policy, window: usize| {
            result
                .policies
                .iter()
                .find(|p| p.policy == policy && p.window == window && p.defrag == 0)
                .and_then(|p| p.at(100))
                .map(|c| c.unallocated_gpu_pct)
        };
        WindowCurve {
            trace: trace.to_owned(),
            policies: policies.iter().map(|&p| (p, windows.iter().map(|&w| at_full(p, w)).collect())).collect(),
            windows,
            offline: result.yardsticks.map(|y| y.offline_first_fit_decreasing_pct),
        }
    }

    /// A policy's median at a window.
    pub fn median(&self, policy: Policy, window: usize) -> Option<f64> {
        let k = self.windows.iter().position(|&w| w == window)?;
        let (_, values) = self.policies.iter().find(|(p, _)| *p == policy)?;
        values[k].map(|s| s.median)
    }

    /// gpuplane's lowest median at a window of at most `limit` pods, with that window.
    pub fn best_gpuplane_within(&self, limit: usize) -> Option<(usize, f64)> {
        self.windows
            .iter()
            .filter(|&&w| w <= limit)
            .filter_map(|&w| Some((w, self.median(Policy::Gpuplane, w)?)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
    }
}

/// The Markdown table: per trace the references, gpuplane's median at each window, and how its best
/// window of at most `limit` pods compares with one-pod-at-a-time FGD and with the offline yardstick.
pub fn table(curves: &[WindowCurve], limit: usize) -> String {
    let Some(first) = curves.first() else { return String::new() };
    let mut md = String::new();
    let windows: Vec<String> = first.windows.iter().map(|w| format!("W={w}")).collect();
    let _ = writeln!(
        md,
        "| trace | offline FFD | FGD | gpuplane {} | best W≤{limit} vs FGD | vs offline | above W=1 at |",
        windows.join(" | ")
    );
    let _ = writeln!(md, "|{}", " --- |".repeat(windows.len() + 6));
    for c in curves {
        let fgd = c.median(Policy::Fgd, 1);
        let one = c.median(Policy::Gpuplane, 1);
        let cells: Vec<String> = c
            .windows
            .iter()
            .map(|&w| c.median(Policy::Gpuplane, w).map_or("–".to_owned(), |v| format!("{v:.2}")))
            .collect();
        let best = c.best_gpuplane_within(limit);
        let relative = |reference: Option<f64>| match (best, reference) {
            (Some((w, v)), Some(r)) if r > 0.0 => format!("{:+.1} % (W={w})", 100.0 * (v - r) / r),
            _ => "–".to_owned(),
        };
        let above: Vec<String> = c
            .windows
            .iter()
            .filter(|&&w| w > 1)
            .filter(|&&w| matches!((c.median(Policy::Gpuplane, w), one), (Some(v), Some(o)) if v > o + 1e-9))
            .map(|w| format!("W={w}"))
            .collect();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} |",
            c.trace,
            c.offline.map_or("–".to_owned(), |s| format!("{:.2}", s.median)),
            fgd.map_or("–".to_owned(), |v| format!("{v:.2}")),
            cells.join(" | "),
            relative(fgd),
            relative(c.offline.map(|s| s.median)),
            if above.is_empty() { "never".to_owned() } else { above.join(", ") }
        );
    }
    md
}

/// `trace,policy,window,median,min,max` rows, and the offline yardstick as policy `offline-ffd`.
pub fn csv(curves: &[WindowCurve]) -> String {
    let mut out = String::from("trace,policy,window,median,min,max\n");
    for c in curves {
        for (policy, values) in &c.policies {
            for (w, s) in c.windows.iter().zip(values) {
                if let Some(s) = s {
                    let _ =
                        writeln!(out, "{},{},{w},{:.4},{:.4},{:.4}", c.trace, policy.name(), s.median, s.min, s.max);
                }
            }
        }
        if let Some(s) = c.offline {
            let _ = writeln!(out, "{},offline-ffd,,{:.4},{:.4},{:.4}", c.trace, s.median, s.min, s.max);
        }
    }
    out
}

/// One trace's panel: each policy's median against log₂ W, with FGD one pod at a time (dashed) and the
/// offline yardstick (dotted) as reference lines.
pub fn chart(curve: &WindowCurve) -> LineChart {
    let x = |w: usize| (w as f64).log2();
    let (first, last) = (curve.windows.first().copied().unwrap_or(1), curve.windows.last().copied().unwrap_or(1));
    let (x0, x1) = (x(first.max(1)), x(last).max(1.0));
    let mut series: Vec<Series> = curve
        .policies
        .iter()
        .map(|(policy, values)| Series {
            label: format!("{}, W", policy.title()),
            points: curve.windows.iter().zip(values).filter_map(|(&w, s)| Some((x(w), s.as_ref()?.median))).collect(),
            reference: false,
        })
        .collect();
    let mut reference = |label: &str, v: Option<f64>| {
        if let Some(v) = v {
            series.push(Series { label: label.to_owned(), points: vec![(x0, v), (x1, v)], reference: true });
        }
    };
    reference("FGD, W=1", curve.median(Policy::Fgd, 1));
    reference("offline FFD", curve.offline.map(|s| s.median));
    let values: Vec<f64> = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).collect();
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let pad = ((hi - lo) * 0.15).max(0.1);
    LineChart {
        title: curve.trace.clone(),
        x_label: "window W (pods)".to_owned(),
        y_label: "unallocated GPUs at 100 % (%)".to_owned(),
        x_range: (x0, x1),
        y_range: (((lo - pad) * 10.0).floor() / 10.0, ((hi + pad) * 10.0).ceil() / 10.0),
        series,
        x_ticks: Some(curve.windows.iter().map(|&w| (x(w), w.to_string())).collect()),
    }
}

/// Every trace's panel in a grid of `columns`, as one SVG document.
pub fn grid_svg(curves: &[WindowCurve], columns: usize, title: &str) -> String {
    let (w, h, head) = (520.0, 300.0, 36.0);
    let columns = columns.max(1);
    let rows = curves.len().div_ceil(columns);
    let (width, height) = (w * columns as f64, head + h * rows as f64);
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif"><rect width="{width}" height="{height}" fill="white"/><text x="16" y="24" font-size="16" font-weight="bold">{}</text>"#,
        title.replace('&', "&amp;").replace('<', "&lt;")
    );
    for (i, c) in curves.iter().enumerate() {
        let (col, row) = (i % columns, i / columns);
        let panel = chart(c).render_with_id(w, h, &format!("plot-{i}"));
        let _ = write!(
            s,
            r#"<g transform="translate({} {})">{}</g>"#,
            w * col as f64,
            head + h * row as f64,
            strip_root(&panel)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// The inside of an `<svg>` document, to nest it in a group.
fn strip_root(svg: &str) -> &str {
    let start = svg.find('>').map_or(0, |i| i + 1);
    let end = svg.rfind("</svg>").unwrap_or(svg.len());
    &svg[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spread(median: f64) -> Option<Spread> {
        Some(Spread { median, min: median - 0.1, max: median + 0.1 })
    }

    fn curve() -> WindowCurve {
        WindowCurve {
            trace: "default".into(),
            windows: vec![1, 4, 16, 64, 256],
            policies: vec![
                (Policy::Fgd, vec![spread(4.76), spread(4.67), spread(4.47), spread(4.88), spread(5.17)]),
                (Policy::Gpuplane, vec![spread(4.33), spread(4.30), spread(4.19), spread(4.12), spread(4.40)]),
            ],
            offline: spread(3.99),
        }
    }

    #[test]
    fn the_table_compares_the_best_window_up_to_the_limit() {
        let md = table(&[curve()], 64);
        // Best gpuplane at W ≤ 64 is 4.12 at W=64: (4.12 − 4.76) / 4.76 = −13.4 %, (4.12 − 3.99) / 3.99 = +3.3 %.
        assert!(
            md.contains(
                "| default | 3.99 | 4.76 | 4.33 | 4.30 | 4.19 | 4.12 | 4.40 | -13.4 % (W=64) | +3.3 % (W=64) | W=256 |"
            ),
            "{md}"
        );
    }

    #[test]
    fn the_grid_has_a_panel_per_trace_with_its_own_clip_path() {
        let mut other = curve();
        other.trace = "cpu050".into();
        let svg = grid_svg(&[curve(), other], 2, "window curve");
        assert!(svg.contains(r#"clipPath id="plot-0""#) && svg.contains(r#"clipPath id="plot-1""#));
        assert_eq!(svg.matches("<svg").count(), 1, "panels are nested as groups");
        assert!(svg.contains(">256<") && svg.contains("offline FFD") && svg.contains("FGD, W=1"));
        assert!(
            svg.contains(r#"stroke-dasharray="6 4""#) && svg.contains(r#"stroke-dasharray="2 3""#),
            "two distinct references"
        );
        let rows = csv(&[curve()]);
        assert!(
            rows.contains("default,gpuplane,64,4.1200,4.0200,4.2200\n") && rows.contains("default,offline-ffd,,3.9900")
        );
    }
}
