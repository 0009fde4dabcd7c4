//! Output of a maturity assessment: the area table (level, score, trend), the next-level plan, the
//! per-repository DORA table, every check with its evidence, and a self-contained HTML page with a
//! radar chart of the areas' levels (and the baseline's, when one was given).

use std::f64::consts::PI;
use std::fmt::Write;

use comfy_table::{CellAlignment, ContentArrangement};
use gpuplane_assess::Assessment;
use gpuplane_assess::assess::{CheckResult, Source, level_label};
use gpuplane_assess::model::level_name;

use crate::html::{self, escape};
use crate::table::{Style, new_table};

fn score(value: Option<f64>) -> String {
    value.map_or_else(|| "–".to_owned(), |s| format!("{s:.0}"))
}

fn trend_cell(assessment: &Assessment, area: &str) -> Option<String> {
    let trend = assessment.trend.as_ref()?;
    let area = trend.areas.iter().find(|a| a.id == area)?;
    let level = |l: Option<u8>| l.map_or_else(|| "n/a".to_owned(), |l| l.to_string());
    let arrow = match (area.before, area.after) {
        (Some(b), Some(a)) if a > b => "↑",
        (Some(b), Some(a)) if a < b => "↓",
        _ => "=",
    };
    Some(format!("{} → {} {arrow}", level(area.before), level(area.after)))
}

/// One row per area: level, score, checks passing, milestones to the next level (and the trend).
pub fn areas_table(assessment: &Assessment, style: Style) -> String {
    let mut table = new_table(style);
    let mut header = vec!["area", "level", "score", "checks passing", "to next level"];
    if assessment.trend.is_some() {
        header.push("since baseline");
    }
    table.set_header(header);
    for area in &assessment.areas {
        let milestones = assessment.plan.iter().filter(|m| m.area == area.id).count();
        let next = match area.level {
            Some(5) => "top level".to_owned(),
            Some(_) if milestones == 1 => "1 milestone".to_owned(),
            Some(_) => format!("{milestones} milestones"),
            None => "–".to_owned(),
        };
        let mut row = vec![
            area.name.clone(),
            level_label(area.level),
            score(area.score),
            format!("{} / {}", area.passed, area.applicable),
            next,
        ];
        if let Some(cell) = trend_cell(assessment, &area.id) {
            row.push(cell);
        }
        table.add_row(row);
    }
    for column in 2..4 {
        if let Some(c) = table.column_mut(column) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    table.to_string()
}

/// The next-level plan: per area, the milestones with where each stands now.
pub fn plan_text(assessment: &Assessment, style: Style) -> String {
    let mut out = String::new();
    for area in &assessment.areas {
        let milestones: Vec<_> = assessment.plan.iter().filter(|m| m.area == area.id).collect();
        let Some(first) = milestones.first() else { continue };
        let heading = format!(
            "{}: {} {} → {} {}",
            area.name,
            first.from_level,
            level_name(first.from_level),
            first.to_level,
            level_name(first.to_level)
        );
        match style {
            Style::Markdown => {
                let _ = writeln!(out, "**{heading}**\n");
            }
            Style::Terminal => {
                let _ = writeln!(out, "{heading}");
            }
        }
        for m in milestones {
            let _ = writeln!(out, "- {} [{}]\n  now: {}", m.milestone, m.check, m.now);
        }
        out.push('\n');
    }
    if out.is_empty() {
        out.push_str("Every area is at the top level.\n");
    }
    out
}

fn hours(value: Option<f64>) -> String {
    value.map_or_else(|| "–".to_owned(), |h| format!("{h:.1} h"))
}

/// DORA metrics per repository over the active window.
pub fn dora_table(assessment: &Assessment, style: Style) -> String {
    let mut table = new_table(style);
    table.set_header(vec![
        "repository",
        "active",
        "deployments",
        "per week",
        "lead time (median)",
        "change failure rate",
        "recovery (median)",
    ]);
    for repo in &assessment.repositories {
        let name = if repo.platform { format!("{} (platform)", repo.name) } else { repo.name.clone() };
        table.add_row(vec![
            name,
            if repo.active { "yes" } else { "no" }.to_owned(),
            repo.dora.deployments.to_string(),
            format!("{:.2}", repo.dora.deployments_per_week),
            hours(repo.dora.lead_time_hours),
            repo.dora.change_failure_rate.map_or_else(|| "–".to_owned(), |r| format!("{:.0} %", r * 100.0)),
            hours(repo.dora.recovery_hours),
        ]);
    }
    for column in 2..7 {
        if let Some(c) = table.column_mut(column) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    table.to_string()
}

fn evidence_cell(check: &CheckResult) -> String {
    let shown = match (check.evidence.first(), check.missing.first()) {
        (Some(found), _) => found.clone(),
        (None, Some(missing)) => format!("missing: {missing}"),
        (None, None) => return check.reason.clone(),
    };
    let total = check.evidence.len() + check.missing.len();
    if total > 1 { format!("{shown} (+{} more)", total - 1) } else { shown }
}

fn coverage_cell(check: &CheckResult) -> String {
    check.coverage.map_or_else(|| "–".to_owned(), |c| format!("{}/{} (need {})", c.passed, c.total, c.required))
}

fn source_label(source: Source) -> &'static str {
    match source {
        Source::Automatic => "automatic",
        Source::Attested => "attested",
    }
}

/// Every check: level, status, source, coverage and the first piece of evidence.
pub fn checks_table(assessment: &Assessment, style: Style) -> String {
    let mut table = new_table(style);
    if style == Style::Terminal {
        table.set_content_arrangement(ContentArrangement::Dynamic).set_width(160);
    }
    table.set_header(vec!["check", "level", "status", "source", "coverage", "evidence"]);
    for check in &assessment.checks {
        table.add_row(vec![
            check.id.clone(),
            check.level.to_string(),
            check.status.label().to_owned(),
            source_label(check.source).to_owned(),
            coverage_cell(check),
            evidence_cell(check),
        ]);
    }
    table.to_string()
}

fn headline(assessment: &Assessment) -> String {
    let active = assessment.repositories.iter().filter(|r| r.active).count();
    let repositories = match assessment.repositories.len() {
        1 => "1 repository".to_owned(),
        n => format!("{n} repositories"),
    };
    let mut line = format!(
        "Model {}, as of {}: {repositories} ({} active in the last {} days), {} Kubernetes objects",
        assessment.model_version, assessment.as_of, active, assessment.active_days, assessment.objects
    );
    match &assessment.survey {
        Some(survey) => line.push_str(&format!(", survey {survey} (attested)")),
        None => line.push_str(", no survey"),
    }
    if let Some(score) = assessment.score {
        line.push_str(&format!(". Weighted score {score:.0} / 100"));
    }
    line.push('.');
    line
}

fn changes_text(assessment: &Assessment) -> Option<String> {
    let trend = assessment.trend.as_ref()?;
    let mut out = format!("Since {}", trend.previous_as_of);
    if let (Some(before), Some(now)) = (trend.previous_score, assessment.score) {
        out.push_str(&format!(" (score {before:.0} → {now:.0})"));
    }
    out.push_str(":\n");
    if trend.changed.is_empty() {
        out.push_str("- no check changed\n");
    }
    let label = |s: Option<gpuplane_assess::assess::Status>| s.map_or("absent", |s| s.label());
    for change in &trend.changed {
        out.push_str(&format!("- {}: {} → {}\n", change.id, label(change.before), label(change.after)));
    }
    Some(out)
}

/// The terminal report: headline, areas, plan, and the trend when a baseline was given.
pub fn terminal(assessment: &Assessment) -> String {
    let mut out = format!("{}\n\n{}\n\n", headline(assessment), areas_table(assessment, Style::Terminal));
    if let Some(changes) = changes_text(assessment) {
        out.push_str(&changes);
        out.push('\n');
    }
    out.push_str("Next level\n\n");
    out.push_str(&plan_text(assessment, Style::Terminal));
    for warning in &assessment.warnings {
        out.push_str(&format!("warning: {warning}\n"));
    }
    out
}

/// The whole report as Markdown.
pub fn markdown(assessment: &Assessment) -> String {
    let mut out = format!("# Platform maturity\n\n{}\n\n", headline(assessment));
    out.push_str(&areas_table(assessment, Style::Markdown));
    out.push_str("\n\n");
    if let Some(changes) = changes_text(assessment) {
        out.push_str(&changes);
        out.push('\n');
    }
    out.push_str("## Next level\n\n");
    out.push_str(&plan_text(assessment, Style::Markdown));
    out.push_str("## Delivery (DORA, from git tags)\n\n");
    out.push_str(&dora_table(assessment, Style::Markdown));
    out.push_str("\n\n## Checks\n\n");
    out.push_str(&checks_table(assessment, Style::Markdown));
    out.push('\n');
    if !assessment.warnings.is_empty() {
        out.push_str("\n## Skipped while reading\n\n");
        for warning in &assessment.warnings {
            out.push_str(&format!("- {warning}\n"));
        }
    }
    out
}

/// A radar chart of the areas' levels (1–5): the current polygon, and the baseline's dashed.
pub fn radar_svg(assessment: &Assessment) -> String {
    // Wide enough for the longest area name beside the plot on either side.
    let (width, height, cx, cy, radius) = (720.0, 420.0, 360.0, 210.0, 150.0);
    let n = assessment.areas.len().max(3) as f64;
    let point = |i: usize, level: f64| {
        let angle = -PI / 2.0 + 2.0 * PI * i as f64 / n;
        (cx + radius * level / 5.0 * angle.cos(), cy + radius * level / 5.0 * angle.sin())
    };
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" font-family="sans-serif" font-size="12" role="img" aria-label="Maturity level per area">"#
    );
    for ring in 1..=5 {
        let points: Vec<String> = (0..assessment.areas.len())
            .map(|i| {
                let (x, y) = point(i, f64::from(ring));
                format!("{x:.1},{y:.1}")
            })
            .collect();
        let _ = write!(svg, r##"<polygon points="{}" fill="none" stroke="#ccc"/>"##, points.join(" "));
        let (x, y) = point(0, f64::from(ring));
        let _ =
            write!(svg, r##"<text x="{:.1}" y="{:.1}" fill="#888" font-size="10">{ring}</text>"##, x + 4.0, y + 4.0);
    }
    for (i, area) in assessment.areas.iter().enumerate() {
        let (x, y) = point(i, 5.0);
        let _ = write!(svg, r##"<line x1="{cx}" y1="{cy}" x2="{x:.1}" y2="{y:.1}" stroke="#ccc"/>"##);
        let (lx, ly) = point(i, 5.6);
        let anchor = if (lx - cx).abs() < 1.0 {
            "middle"
        } else if lx > cx {
            "start"
        } else {
            "end"
        };
        let _ = write!(
            svg,
            r#"<text x="{lx:.1}" y="{:.1}" text-anchor="{anchor}">{} ({})</text>"#,
            ly + 4.0,
            escape(&area.name),
            area.level.map_or_else(|| "n/a".to_owned(), |l| l.to_string())
        );
    }
    let polygon = |levels: Vec<f64>| {
        levels
            .iter()
            .enumerate()
            .map(|(i, &l)| {
                let (x, y) = point(i, l);
                format!("{x:.1},{y:.1}")
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    if let Some(trend) = &assessment.trend {
        let before = assessment
            .areas
            .iter()
            .map(|a| {
                let t = trend.areas.iter().find(|t| t.id == a.id);
                f64::from(t.and_then(|t| t.before).unwrap_or(0))
            })
            .collect();
        let _ = write!(
            svg,
            r##"<polygon points="{}" fill="none" stroke="#888" stroke-width="2" stroke-dasharray="6 4"><title>baseline {}</title></polygon>"##,
            polygon(before),
            escape(&trend.previous_as_of)
        );
    }
    let now = assessment.areas.iter().map(|a| f64::from(a.level.unwrap_or(0))).collect();
    let _ = write!(
        svg,
        r##"<polygon points="{}" fill="#0072B2" fill-opacity="0.25" stroke="#0072B2" stroke-width="2"><title>{}</title></polygon>"##,
        polygon(now),
        escape(&assessment.as_of)
    );
    svg.push_str("</svg>");
    svg
}

/// A self-contained HTML page (no scripts, no external assets).
pub fn html(assessment: &Assessment) -> String {
    let mut body = format!("<h1>Platform maturity</h1><p>{}</p>", escape(&headline(assessment)));
    let _ = write!(body, r#"<figure id="radar">{}</figure>"#, radar_svg(assessment));
    let areas = assessment
        .areas
        .iter()
        .map(|a| {
            let mut row = vec![
                escape(&a.name),
                escape(&level_label(a.level)),
                score(a.score),
                format!("{} / {}", a.passed, a.applicable),
            ];
            if let Some(cell) = trend_cell(assessment, &a.id) {
                row.push(escape(&cell));
            }
            row
        })
        .collect();
    let mut header = vec!["area", "level", "score", "checks passing"];
    if assessment.trend.is_some() {
        header.push("since baseline");
    }
    body.push_str(&html::table(&header, areas));
    if let Some(changes) = changes_text(assessment) {
        let _ = write!(body, "<h2>Since the baseline</h2><pre>{}</pre>", escape(&changes));
    }
    body.push_str("<h2>Next level</h2>");
    let plan = assessment
        .plan
        .iter()
        .map(|m| {
            let area = assessment.areas.iter().find(|a| a.id == m.area).map_or(m.area.as_str(), |a| a.name.as_str());
            vec![
                escape(area),
                format!("{} → {}", m.from_level, m.to_level),
                escape(&m.milestone),
                format!("<code>{}</code>", escape(&m.check)),
                escape(&m.now),
            ]
        })
        .collect();
    body.push_str(&html::table(&["area", "levels", "milestone", "check", "now"], plan));
    body.push_str("<h2>Delivery (DORA, from git tags)</h2>");
    let dora = assessment
        .repositories
        .iter()
        .map(|r| {
            vec![
                escape(&r.name),
                if r.active { "yes" } else { "no" }.to_owned(),
                r.dora.deployments.to_string(),
                format!("{:.2}", r.dora.deployments_per_week),
                hours(r.dora.lead_time_hours),
                r.dora.change_failure_rate.map_or_else(|| "–".to_owned(), |v| format!("{:.0} %", v * 100.0)),
                hours(r.dora.recovery_hours),
            ]
        })
        .collect();
    body.push_str(&html::table(
        &["repository", "active", "deployments", "per week", "lead time", "change failure rate", "recovery"],
        dora,
    ));
    body.push_str("<h2>Checks</h2>");
    let checks = assessment
        .checks
        .iter()
        .map(|c| {
            let evidence: Vec<String> = c.evidence.iter().map(|e| escape(e)).collect();
            let missing: Vec<String> = c.missing.iter().map(|e| format!("missing: {}", escape(e))).collect();
            let mut detail = evidence.into_iter().chain(missing).collect::<Vec<_>>().join("<br>");
            if detail.is_empty() {
                detail = escape(&c.reason);
            }
            vec![
                format!("<code>{}</code><br>{}", escape(&c.id), escape(&c.title)),
                c.level.to_string(),
                format!(
                    r#"<span class="{}">{}</span>"#,
                    c.status.label().replace(' ', "-").replace('/', ""),
                    c.status.label()
                ),
                source_label(c.source).to_owned(),
                coverage_cell(c),
                detail,
            ]
        })
        .collect();
    body.push_str(&html::table(&["check", "level", "status", "source", "coverage", "evidence"], checks));
    html::page(&format!("Platform maturity {}", assessment.as_of), &body)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use gpuplane_assess::{Inputs, Model, assess};

    use super::*;

    #[test]
    fn an_empty_organisation_renders_every_area_at_level_one_with_its_plan() {
        let assessment = assess(&Model::builtin().unwrap(), &Inputs::default()).unwrap();
        let svg = radar_svg(&assessment);
        assert_eq!(svg.matches("(1)</text>").count(), 8, "{svg}");
        let terminal = terminal(&assessment);
        assert!(terminal.contains("GPU capacity & isolation"));
        assert!(terminal.contains("1 Ad hoc → 2 Repeatable"));
        let page = html(&assessment);
        assert!(page.starts_with("<!DOCTYPE html>") && !page.contains("<script"));
        assert!(markdown(&assessment).contains("| gpu.quota "));
    }
}
