//! Building blocks of the self-contained HTML reports: escaping, tables, and the page with its style
//! (no scripts, no external assets).

use std::fmt::Write;

/// Escapes text for HTML content and attributes.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A table; the cells are HTML already (escape text first).
pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut out = String::from("<table><thead><tr>");
    for h in header {
        let _ = write!(out, "<th>{}</th>", escape(h));
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{cell}</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    out
}

/// A whole page around `body`.
pub fn page(title: &str, body: &str) -> String {
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{}</title>
<style>
body {{ font-family: sans-serif; margin: 2rem; max-width: 72rem; color: #222; }}
table {{ border-collapse: collapse; margin: 1rem 0; }}
th, td {{ border: 1px solid #ccc; padding: 0.3rem 0.5rem; text-align: left; vertical-align: top; font-size: 0.9rem; }}
th {{ background: #f3f3f3; }}
figure {{ margin: 1rem 0; }}
.pass {{ color: #00734a; }} .fail {{ color: #b00020; }} .not-measurable {{ color: #8a5a00; }} .na {{ color: #777; }}
</style></head><body>{body}</body></html>
"#,
        escape(title)
    )
}
