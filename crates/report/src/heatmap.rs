//! A self-contained SVG heat map of ratios (such as gpuplane ÷ FGD unallocated GPUs): one panel per
//! grid plane, a cell per grid point coloured on a diverging scale around 1 (blue below, red above) with
//! its value printed, so the chart reads without colour too.

use std::fmt::Write;

/// One panel: a grid of values with labelled rows and columns.
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    /// Row axis label.
    pub row_label: String,
    /// Column axis label.
    pub col_label: String,
    /// Row tick labels, top to bottom.
    pub rows: Vec<String>,
    /// Column tick labels, left to right.
    pub cols: Vec<String>,
    /// `cells[r][c]`; `None` is drawn empty.
    pub cells: Vec<Vec<Option<f64>>>,
}

/// A heat map of one or more panels side by side.
#[derive(Debug, Clone, PartialEq)]
pub struct HeatMap {
    /// Title.
    pub title: String,
    /// What the colour means, under the title.
    pub subtitle: String,
    /// The panels.
    pub panels: Vec<Panel>,
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Diverging colour for a ratio: white at 1, blue towards 0.8, red towards 1.2 (clamped).
fn colour(v: f64) -> String {
    let t = ((v - 1.0) / 0.2).clamp(-1.0, 1.0);
    let (r, g, b) = if t >= 0.0 {
        (255.0, 255.0 - 155.0 * t, 255.0 - 175.0 * t)
    } else {
        (255.0 + 195.0 * t, 255.0 + 110.0 * t, 255.0)
    };
    format!("#{:02x}{:02x}{:02x}", r as u8, g as u8, b as u8)
}

impl HeatMap {
    /// Renders the SVG.
    pub fn render(&self) -> String {
        const CELL_W: f64 = 64.0;
        const CELL_H: f64 = 34.0;
        const LEFT: f64 = 110.0;
        const TOP: f64 = 70.0;
        const GAP: f64 = 60.0;
        let widths: Vec<f64> = self.panels.iter().map(|p| LEFT + CELL_W * p.cols.len() as f64).collect();
        let width = widths.iter().sum::<f64>() + GAP * (self.panels.len().saturating_sub(1)) as f64 + 20.0;
        let height = TOP + CELL_H * self.panels.iter().map(|p| p.rows.len()).max().unwrap_or(0) as f64 + 60.0;
        let mut s = String::new();
        let _ = write!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="12">"#
        );
        let _ = write!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = write!(s, r#"<text x="10" y="20" font-size="15" font-weight="bold">{}</text>"#, escape(&self.title));
        let _ = write!(s, r##"<text x="10" y="38" fill="#555555">{}</text>"##, escape(&self.subtitle));
        let mut x0 = 0.0;
        for (panel, w) in self.panels.iter().zip(&widths) {
            let gx = x0 + LEFT;
            for (c, label) in panel.cols.iter().enumerate() {
                let cx = gx + CELL_W * (c as f64 + 0.5);
                let _ = write!(
                    s,
                    r#"<text x="{cx:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                    TOP - 6.0,
                    escape(label)
                );
            }
            let _ = write!(
                s,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#555555">{}</text>"##,
                gx + CELL_W * panel.cols.len() as f64 / 2.0,
                TOP - 22.0,
                escape(&panel.col_label)
            );
            for (r, label) in panel.rows.iter().enumerate() {
                let cy = TOP + CELL_H * (r as f64 + 0.5);
                let _ = write!(
                    s,
                    r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                    gx - 6.0,
                    cy + 4.0,
                    escape(label)
                );
                for c in 0..panel.cols.len() {
                    let x = gx + CELL_W * c as f64;
                    let y = TOP + CELL_H * r as f64;
                    let value = panel.cells.get(r).and_then(|row| row.get(c)).copied().flatten();
                    let fill = value.map_or_else(|| "#eeeeee".to_owned(), colour);
                    let _ = write!(
                        s,
                        r#"<rect x="{x:.1}" y="{y:.1}" width="{CELL_W}" height="{CELL_H}" fill="{fill}" stroke="white"/>"#
                    );
                    if let Some(v) = value {
                        let _ = write!(
                            s,
                            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{v:.3}</text>"#,
                            x + CELL_W / 2.0,
                            y + CELL_H / 2.0 + 4.0
                        );
                    }
                }
            }
            let _ = write!(
                s,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#555555" transform="rotate(-90 {:.1} {:.1})">{}</text>"##,
                x0 + 14.0,
                TOP + CELL_H * panel.rows.len() as f64 / 2.0,
                x0 + 14.0,
                TOP + CELL_H * panel.rows.len() as f64 / 2.0,
                escape(&panel.row_label)
            );
            x0 += w + GAP;
        }
        s.push_str("</svg>\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_cells_values_and_escapes_labels() {
        let map = HeatMap {
            title: "gpuplane ÷ FGD".into(),
            subtitle: "below 1 <better>".into(),
            panels: vec![Panel {
                row_label: "model-constrained".into(),
                col_label: "multi-GPU".into(),
                rows: vec!["0 %".into(), "10 %".into()],
                cols: vec!["0 %".into()],
                cells: vec![vec![Some(0.91)], vec![None]],
            }],
        };
        let svg = map.render();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains(">0.910<"), "{svg}");
        assert!(svg.contains("&lt;better&gt;"));
        assert_eq!(svg.matches("<rect").count(), 3, "background and two cells");
        assert_eq!(colour(1.0), "#ffffff");
        assert_ne!(colour(1.1), colour(0.9));
    }
}
