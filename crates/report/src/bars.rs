//! A self-contained SVG horizontal bar chart, stacked by segment (no scripts, no external assets):
//! one bar per category, a value axis with ticks, a legend of the segments.

use std::fmt::Write;

/// Colour-blind-safe colours (Okabe–Ito), one per segment.
/// Neighbouring segments differ in hue, not only in shade (vermillion, sky blue, ...).
const PALETTE: [&str; 6] = ["#D55E00", "#56B4E9", "#009E73", "#E69F00", "#0072B2", "#CC79A7"];

/// A stacked horizontal bar chart.
#[derive(Debug, Clone, PartialEq)]
pub struct BarChart {
    /// Title above the plot.
    pub title: String,
    /// Value-axis label.
    pub unit: String,
    /// Segment names, in stacking order (the legend).
    pub segments: Vec<String>,
    /// Bars: a label and one value per segment.
    pub bars: Vec<(String, Vec<f64>)>,
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A "nice" axis maximum and tick step (1, 2 or 5 times a power of ten) covering `max`.
fn axis(max: f64) -> (f64, f64) {
    let max = if max > 0.0 { max } else { 1.0 };
    let raw = max / 5.0;
    let pow = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * pow).find(|s| s * 5.0 >= max).unwrap_or(10.0 * pow);
    ((max / step).ceil() * step, step)
}

/// A bar's total with precision that suits its size: 2373, 204.7, 4.31.
fn value_label(value: f64) -> String {
    if value >= 1000.0 {
        format!("{value:.0}")
    } else if value >= 100.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

impl BarChart {
    /// Renders the chart, `width` pixels wide; the height follows from the number of bars.
    pub fn render(&self, width: f64) -> String {
        let (left, right, top, bar_h, gap) = (150.0, 64.0, 56.0, 22.0, 10.0);
        let height = top + self.bars.len() as f64 * (bar_h + gap) + 40.0;
        let plot_w = width - left - right;
        let total = |values: &[f64]| values.iter().sum::<f64>();
        let (max, step) = axis(self.bars.iter().map(|(_, v)| total(v)).fold(0.0, f64::max));
        let x = |v: f64| left + v / max * plot_w;
        let mut s = format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif" font-size="12" role="img" aria-label="{}">"#,
            escape(&self.title)
        );
        let _ = write!(s, r#"<rect width="{width}" height="{height}" fill="white"/>"#);
        let _ =
            write!(s, r#"<text x="{left}" y="18" font-size="14" font-weight="bold">{}</text>"#, escape(&self.title));
        let mut legend_x = left;
        for (i, segment) in self.segments.iter().enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            let _ = write!(s, r#"<rect x="{legend_x}" y="28" width="10" height="10" fill="{colour}"/>"#);
            let _ = write!(s, r#"<text x="{}" y="37">{}</text>"#, legend_x + 14.0, escape(segment));
            legend_x += 24.0 + 7.0 * segment.chars().count() as f64;
        }
        let bottom = top + self.bars.len() as f64 * (bar_h + gap);
        let mut tick = 0.0;
        while tick <= max + step / 2.0 {
            let tx = x(tick);
            let _ = write!(s, r##"<line x1="{tx:.1}" y1="{top}" x2="{tx:.1}" y2="{bottom}" stroke="#ddd"/>"##);
            let label = if step < 1.0 { format!("{tick:.1}") } else { format!("{tick:.0}") };
            let _ = write!(s, r#"<text x="{tx:.1}" y="{}" text-anchor="middle">{label}</text>"#, bottom + 16.0);
            tick += step;
        }
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            left + plot_w / 2.0,
            bottom + 34.0,
            escape(&self.unit)
        );
        for (row, (label, values)) in self.bars.iter().enumerate() {
            let y = top + row as f64 * (bar_h + gap);
            let _ = write!(
                s,
                r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
                left - 8.0,
                y + bar_h * 0.7,
                escape(label)
            );
            let mut start = 0.0;
            for (i, value) in values.iter().enumerate() {
                if *value <= 0.0 {
                    continue;
                }
                let colour = PALETTE[i % PALETTE.len()];
                let segment = self.segments.get(i).map_or("", String::as_str);
                let _ = write!(
                    s,
                    r#"<rect x="{:.1}" y="{y:.1}" width="{:.1}" height="{bar_h}" fill="{colour}"><title>{}: {} {value:.2}</title></rect>"#,
                    x(start),
                    x(start + value) - x(start),
                    escape(label),
                    escape(segment)
                );
                start += value;
            }
            let _ = write!(
                s,
                r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
                x(start) + 4.0,
                y + bar_h * 0.7,
                value_label(total(values))
            );
        }
        s.push_str("</svg>");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_stack_their_segments_and_the_axis_covers_the_longest() {
        let chart = BarChart {
            title: "Findings per KLOC".into(),
            unit: "findings per 1,000 added lines".into(),
            segments: vec!["high".into(), "low".into()],
            bars: vec![("ai-assisted".into(), vec![222.2, 111.1]), ("other".into(), vec![50.0, 0.0])],
        };
        let svg = chart.render(640.0);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_eq!(svg.matches("<title>").count(), 3, "zero segments draw nothing");
        assert!(svg.contains(">333.3</text>"));
        assert_eq!(axis(333.3), (400.0, 100.0));
        assert_eq!(axis(0.0), (1.0, 0.2));
    }
}
