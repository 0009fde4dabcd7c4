//! A self-contained SVG line chart (no scripts, no external fonts or assets): one line per series,
//! linear axes with ticks, a legend. Used for unallocated GPU % against arrived workload.

use std::fmt::Write;

use gpuplane_sim::ExperimentResult;

/// One line of a chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend label.
    pub label: String,
    /// (x, y) points in data units, in x order.
    pub points: Vec<(f64, f64)>,
    /// A reference line, drawn dashed in grey rather than in the palette.
    pub reference: bool,
}

/// A line chart.
#[derive(Debug, Clone, PartialEq)]
pub struct LineChart {
    /// Title above the plot.
    pub title: String,
    /// X-axis label.
    pub x_label: String,
    /// Y-axis label.
    pub y_label: String,
    /// X range shown.
    pub x_range: (f64, f64),
    /// Y range shown.
    pub y_range: (f64, f64),
    /// Lines.
    pub series: Vec<Series>,
    /// X ticks at these data values with these labels, instead of evenly spaced round numbers (for an
    /// axis whose data are a transform, such as log₂ of a window size).
    pub x_ticks: Option<Vec<(f64, String)>>,
}

/// Colour-blind-safe palette (Okabe–Ito).
const PALETTE: [&str; 8] = ["#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7", "#000000", "#F0E442"];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A "nice" tick step for a range: 1, 2 or 5 times a power of ten, about `target` ticks.
fn tick_step(span: f64, target: f64) -> f64 {
    let raw = (span / target).max(f64::MIN_POSITIVE);
    let pow = 10f64.powf(raw.log10().floor());
    let m = raw / pow;
    let nice = if m <= 1.0 + 1e-9 {
        1.0
    } else if m <= 2.0 + 1e-9 {
        2.0
    } else if m <= 5.0 + 1e-9 {
        5.0
    } else {
        10.0
    };
    nice * pow
}

impl LineChart {
    /// Renders the chart as an SVG document of the given size in pixels.
    pub fn render(&self, width: f64, height: f64) -> String {
        self.render_with_id(width, height, "plot")
    }

    /// [`LineChart::render`], with `id` naming the clip path, so that several charts can sit in one
    /// document.
    pub fn render_with_id(&self, width: f64, height: f64, id: &str) -> String {
        let (left, right, top, bottom) = (64.0, 150.0, 40.0, 52.0);
        let plot_w = width - left - right;
        let plot_h = height - top - bottom;
        let (x0, x1) = self.x_range;
        let (y0, y1) = self.y_range;
        let sx = |x: f64| left + (x - x0) / (x1 - x0) * plot_w;
        let sy = |y: f64| top + plot_h - (y - y0) / (y1 - y0) * plot_h;
        let mut s = String::new();
        let _ = write!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif" font-size="12">"#
        );
        let _ = write!(s, r#"<rect width="{width}" height="{height}" fill="white"/>"#);
        let _ =
            write!(s, r#"<text x="{}" y="22" font-size="15" font-weight="bold">{}</text>"#, left, escape(&self.title));
        // Grid and ticks.
        let x_ticks: Vec<(f64, String)> = match &self.x_ticks {
            Some(ticks) => ticks.clone(),
            None => {
                let step = tick_step(x1 - x0, 10.0);
                let mut ticks = Vec::new();
                let mut x = (x0 / step).ceil() * step;
                while x <= x1 + 1e-9 {
                    ticks.push((x, x.to_string()));
                    x += step;
                }
                ticks
            }
        };
        for (x, label) in &x_ticks {
            let px = sx(*x);
            let _ = write!(
                s,
                r##"<line x1="{px:.1}" y1="{top}" x2="{px:.1}" y2="{:.1}" stroke="#e5e5e5"/>"##,
                top + plot_h
            );
            let _ = write!(
                s,
                r#"<text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                top + plot_h + 16.0,
                escape(label)
            );
        }
        let step = tick_step(y1 - y0, 8.0);
        let mut y = (y0 / step).ceil() * step;
        while y <= y1 + 1e-9 {
            let py = sy(y);
            let _ = write!(
                s,
                r##"<line x1="{left}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#e5e5e5"/>"##,
                left + plot_w
            );
            let _ = write!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                left - 6.0,
                py + 4.0,
                trim_float(y)
            );
            y += step;
        }
        let _ = write!(
            s,
            r##"<rect x="{left}" y="{top}" width="{plot_w:.1}" height="{plot_h:.1}" fill="none" stroke="#333"/>"##
        );
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            left + plot_w / 2.0,
            height - 12.0,
            escape(&self.x_label)
        );
        let _ = write!(
            s,
            r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            top + plot_h / 2.0,
            escape(&self.y_label)
        );
        // Lines, clipped to the plot.
        let _ = write!(
            s,
            r#"<clipPath id="{id}"><rect x="{left}" y="{top}" width="{plot_w:.1}" height="{plot_h:.1}"/></clipPath><g clip-path="url(#{id})" fill="none" stroke-width="2">"#,
            id = escape(id)
        );
        for (i, series) in self.series.iter().enumerate() {
            let colour = series_colour(i, series);
            let dash = self.dash(i);
            let mut d = String::new();
            for (j, &(x, y)) in series.points.iter().enumerate() {
                let _ = write!(d, "{}{:.1},{:.1}", if j == 0 { "M" } else { " L" }, sx(x), sy(y));
            }
            let label = escape(&series.label);
            let _ = write!(s, r#"<path class="series" data-label="{label}" d="{d}" stroke="{colour}"{dash}/>"#);
        }
        s.push_str("</g>");
        // Legend.
        for (i, series) in self.series.iter().enumerate() {
            let colour = series_colour(i, series);
            let dash = self.dash(i);
            let ly = top + 10.0 + 20.0 * i as f64;
            let lx = left + plot_w + 14.0;
            let _ = write!(
                s,
                r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{colour}" stroke-width="3"{dash}/><text x="{:.1}" y="{:.1}">{}</text>"#,
                lx + 22.0,
                lx + 28.0,
                ly + 4.0,
                escape(&series.label)
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

impl LineChart {
    /// The dash pattern of series `i`: none for data, and for reference lines dashes, then dots, then
    /// dash-dots, in the order the references come, so that two of them can be told apart.
    fn dash(&self, i: usize) -> &'static str {
        if !self.series[i].reference {
            return "";
        }
        let k = self.series[..i].iter().filter(|s| s.reference).count();
        [r#" stroke-dasharray="6 4""#, r#" stroke-dasharray="2 3""#, r#" stroke-dasharray="8 3 2 3""#][k % 3]
    }
}

fn series_colour(i: usize, series: &Series) -> &'static str {
    if series.reference { "#888888" } else { PALETTE[i % PALETTE.len()] }
}

fn trim_float(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Unallocated GPU % (median over seeds) against arrived workload, one line per policy, with the
/// ideal line max(0, 100 − arrived).
pub fn unallocated_chart(result: &ExperimentResult) -> LineChart {
    let x_max =
        result.policies.iter().filter_map(|p| p.curve.last()).map(|c| f64::from(c.arrived_pct)).fold(100.0, f64::max);
    let x_min = 70.0;
    let mut series: Vec<Series> = result
        .policies
        .iter()
        .map(|p| Series {
            label: p.label(),
            points: p
                .curve
                .iter()
                .filter(|c| f64::from(c.arrived_pct) >= x_min)
                .map(|c| (f64::from(c.arrived_pct), c.unallocated_gpu_pct.median))
                .collect(),
            reference: false,
        })
        .collect();
    series.push(Series {
        label: "ideal".to_owned(),
        points: vec![(x_min, 100.0 - x_min), (100.0, 0.0), (x_max, 0.0)],
        reference: true,
    });
    LineChart {
        title: "Unallocated GPUs as the cluster fills (median over seeds)".to_owned(),
        x_label: "arrived workload (% of cluster GPUs)".to_owned(),
        y_label: "unallocated GPUs (%)".to_owned(),
        x_range: (x_min, x_max),
        y_range: (0.0, 30.0),
        series,
        x_ticks: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_paths_legend_and_escapes_labels() {
        let chart = LineChart {
            title: "A & B".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            x_range: (0.0, 10.0),
            y_range: (0.0, 5.0),
            series: vec![Series { label: "<fgd>".into(), points: vec![(0.0, 0.0), (10.0, 5.0)], reference: false }],
            x_ticks: None,
        };
        let svg = chart.render(600.0, 400.0);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("A &amp; B") && svg.contains("&lt;fgd&gt;"));
        assert!(svg.contains(r#"d="M64.0,348.0 L450.0,40.0""#), "{svg}");
    }

    #[test]
    fn tick_steps_are_round() {
        assert_eq!(tick_step(60.0, 10.0), 10.0);
        assert_eq!(tick_step(40.0, 10.0), 5.0);
        assert_eq!(tick_step(30.0, 8.0), 5.0);
        assert!((tick_step(1.0, 10.0) - 0.1).abs() < 1e-12);
    }
}
