//! Output of a posture scan: cohort rates (AI-assisted against other commits), per-rule triage
//! figures, engagement, and the findings with their baseline state and attribution; and the lint table.

use comfy_table::CellAlignment;
use gpuplane_posture::finding::{Finding, Severity};
use gpuplane_posture::gate::Verdict;
use gpuplane_posture::scan::Scan;

use crate::bars::BarChart;
use crate::html::{self, escape};
use crate::table::{Style, new_table};

fn opt(value: Option<f64>, digits: usize) -> String {
    value.map_or_else(|| "–".to_owned(), |v| format!("{v:.digits$}"))
}

fn pct(value: Option<f64>) -> String {
    value.map_or_else(|| "–".to_owned(), |v| format!("{:.0} %", v * 100.0))
}

/// Findings introduced per cohort.
pub fn cohorts_table(scan: &Scan, style: Style) -> String {
    let mut table = new_table(style);
    table.set_header(vec![
        "cohort",
        "commits",
        "added lines",
        "findings",
        "per KLOC",
        "per scanned KLOC",
        "per 100 commits",
        "by severity",
    ]);
    for c in &scan.cohorts {
        let severity: Vec<String> = c.by_severity.iter().rev().map(|(s, n)| format!("{} {n}", s.as_str())).collect();
        table.add_row(vec![
            c.cohort.clone(),
            c.commits.to_string(),
            c.added_lines.to_string(),
            c.findings.to_string(),
            opt(c.per_kloc, 2),
            opt(c.per_scanned_kloc, 2),
            opt(c.per_100_commits, 1),
            if severity.is_empty() { "–".to_owned() } else { severity.join(", ") },
        ]);
    }
    for column in 1..7 {
        if let Some(c) = table.column_mut(column) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    table.to_string()
}

/// Triage figures per rule.
pub fn rules_table(scan: &Scan, style: Style) -> String {
    let mut table = new_table(style);
    table.set_header(vec![
        "tool",
        "rule",
        "findings",
        "triaged",
        "precision",
        "false positives",
        "effective FP",
        "fixed",
    ]);
    for r in &scan.rules {
        table.add_row(vec![
            r.tool.clone(),
            r.rule.clone(),
            r.findings.to_string(),
            r.triaged.to_string(),
            pct(r.precision),
            pct(r.false_positive_rate),
            pct(r.effective_false_positive_rate),
            format!("{:.0} %", r.fixed_share * 100.0),
        ]);
    }
    table.to_string()
}

/// Findings a table or page lists at most; every finding is in posture.json and findings.sarif.
pub const FINDINGS_LISTED: usize = 200;

/// A line saying how many findings a listing left out, if any.
fn left_out(total: usize) -> Option<String> {
    (total > FINDINGS_LISTED).then(|| {
        format!(
            "… and {} more findings (the first {FINDINGS_LISTED} are listed; posture.json and findings.sarif have all {total})",
            total - FINDINGS_LISTED
        )
    })
}

/// Findings with state, severity, place and attribution (the first [`FINDINGS_LISTED`]).
pub fn findings_table(findings: &[Finding], style: Style) -> String {
    let mut table = new_table(style);
    table.set_header(vec!["state", "severity", "tool:rule", "place", "commit", "AI", "message"]);
    for f in findings.iter().take(FINDINGS_LISTED) {
        let message: String = f.message.lines().next().unwrap_or_default().chars().take(70).collect();
        table.add_row(vec![
            f.state.map_or("–", |s| s.as_str()).to_owned(),
            f.severity.as_str().to_owned(),
            format!("{}:{}", f.tool, f.rule),
            format!("{}:{}", f.path, f.line),
            f.commit.as_deref().map_or("–".to_owned(), |c| c.chars().take(8).collect()),
            f.ai.map_or("–", |ai| if ai { "yes" } else { "no" }).to_owned(),
            message,
        ]);
    }
    match left_out(findings.len()) {
        Some(line) => format!("{table}\n{line}"),
        None => table.to_string(),
    }
}

/// One sentence on how findings were acted on.
pub fn engagement_text(e: &gpuplane_posture::scan::Engagement) -> String {
    let median =
        |days: Option<f64>| days.map_or_else(String::new, |d| format!(", median {d:.1} days after introduction"));
    format!(
        "Engagement: {} of {} findings fixed{}; {} dismissed, {} with a justification{}; suppressions {} in source, {} external.",
        e.fixed,
        e.findings,
        median(e.median_days_to_fix),
        e.dismissed,
        e.dismissed_with_justification,
        median(e.median_days_to_dismiss),
        e.suppressed_in_source,
        e.suppressed_externally
    )
}

/// The whole scan: attribution summary, cohorts, rules, engagement, findings.
pub fn report(scan: &Scan, style: Style) -> String {
    let ai = scan.commits.iter().filter(|c| c.attribution.ai).count();
    let e = &scan.engagement;
    let heading = |text: &str| match style {
        Style::Markdown => format!("## {text}\n\n"),
        Style::Terminal => format!("{text}\n\n"),
    };
    let mut out = format!(
        "{} commits in {}: {ai} AI-assisted (by their markers; a lower bound), {} findings now, {} gone since the baseline.\n\n",
        scan.commits.len(),
        scan.range,
        scan.findings.len(),
        scan.gone.len()
    );
    out.push_str(&heading("Findings introduced per cohort"));
    out.push_str(&cohorts_table(scan, style));
    out.push_str("\n\n");
    out.push_str(&heading("Per rule"));
    out.push_str(&rules_table(scan, style));
    out.push_str("\n\n");
    out.push_str(&engagement_text(e));
    out.push_str("\n\n");
    out.push_str(&heading("Findings"));
    out.push_str(&findings_table(&scan.findings, style));
    out.push('\n');
    out
}

/// The gate's verdict as text.
pub fn verdict(verdict: &Verdict) -> String {
    let mut out = format!(
        "profile {}{}: {} findings on changed lines, {} blocking\n",
        verdict.profile,
        if verdict.ai_commits.is_empty() {
            String::new()
        } else {
            format!(" ({} AI-assisted commits)", verdict.ai_commits.len())
        },
        verdict.in_change,
        verdict.blocking.len()
    );
    if !verdict.blocking.is_empty() {
        out.push_str(&findings_table(&verdict.blocking, Style::Terminal));
        out.push('\n');
    }
    if verdict.review_required {
        out.push_str("human review required before merge\n");
    }
    out.push_str(if verdict.passed { "gate: pass\n" } else { "gate: fail\n" });
    out
}

/// Lint findings: rule, level, place and what is wrong.
pub fn lint_table(findings: &[Finding], style: Style) -> String {
    let mut table = new_table(style);
    table.set_header(vec!["rule", "level", "place", "finding"]);
    for f in findings {
        table.add_row(vec![
            f.rule.clone(),
            f.level.as_str().to_owned(),
            format!("{}:{}", f.path, f.line),
            f.message.clone(),
        ]);
    }
    table.to_string()
}

/// Findings per 1,000 added lines for each cohort, stacked by severity.
pub fn cohort_chart(scan: &Scan) -> BarChart {
    let severities = [Severity::Critical, Severity::High, Severity::Medium, Severity::Low];
    BarChart {
        title: "Findings introduced per 1,000 added lines".to_owned(),
        unit: "findings per KLOC".to_owned(),
        segments: severities.iter().map(|s| s.as_str().to_owned()).collect(),
        bars: scan
            .cohorts
            .iter()
            .map(|c| {
                let values = severities
                    .iter()
                    .map(|s| {
                        let n = c.by_severity.get(s).copied().unwrap_or(0) as f64;
                        if c.added_lines > 0 { n * 1000.0 / c.added_lines as f64 } else { 0.0 }
                    })
                    .collect();
                (c.cohort.clone(), values)
            })
            .collect(),
    }
}

/// Effective false-positive rate of each triaged rule, split into false positives and won't fix.
pub fn false_positive_chart(scan: &Scan) -> Option<BarChart> {
    let bars: Vec<(String, Vec<f64>)> = scan
        .rules
        .iter()
        .filter(|r| r.triaged > 0)
        .map(|r| {
            let share = |n: usize| 100.0 * n as f64 / r.triaged as f64;
            (format!("{}:{}", r.tool, r.rule), vec![share(r.false_positives), share(r.wont_fix)])
        })
        .collect();
    (!bars.is_empty()).then(|| BarChart {
        title: "Effective false-positive rate per triaged rule".to_owned(),
        unit: "% of triaged findings".to_owned(),
        segments: vec!["false positive".to_owned(), "won't fix".to_owned()],
        bars,
    })
}

/// The scan as a self-contained HTML page with its charts.
pub fn html(scan: &Scan) -> String {
    let ai = scan.commits.iter().filter(|c| c.attribution.ai).count();
    let mut body = format!(
        "<h1>Security posture</h1><p>{}</p>",
        escape(&format!(
            "{} commits in {}: {ai} AI-assisted by their markers (a lower bound); {} findings now, {} gone since the baseline.",
            scan.commits.len(),
            scan.range,
            scan.findings.len(),
            scan.gone.len()
        ))
    );
    body.push_str(&format!("<figure>{}</figure>", cohort_chart(scan).render(720.0)));
    let cohorts = scan
        .cohorts
        .iter()
        .map(|c| {
            vec![
                escape(&c.cohort),
                c.commits.to_string(),
                c.added_lines.to_string(),
                c.findings.to_string(),
                opt(c.per_kloc, 2),
                opt(c.per_scanned_kloc, 2),
                opt(c.per_100_commits, 1),
            ]
        })
        .collect();
    body.push_str(&html::table(
        &["cohort", "commits", "added lines", "findings", "per KLOC", "per scanned KLOC", "per 100 commits"],
        cohorts,
    ));
    body.push_str("<h2>Rules</h2>");
    if let Some(chart) = false_positive_chart(scan) {
        body.push_str(&format!("<figure>{}</figure>", chart.render(720.0)));
    }
    let rules = scan
        .rules
        .iter()
        .map(|r| {
            vec![
                escape(&r.tool),
                escape(&r.rule),
                r.findings.to_string(),
                r.triaged.to_string(),
                pct(r.precision),
                pct(r.false_positive_rate),
                pct(r.effective_false_positive_rate),
            ]
        })
        .collect();
    body.push_str(&html::table(
        &["tool", "rule", "findings", "triaged", "precision", "false positives", "effective FP"],
        rules,
    ));
    let e = &scan.engagement;
    body.push_str(&format!("<p>{}</p>", escape(&engagement_text(e))));
    body.push_str("<h2>Findings</h2>");
    let total = scan.findings.len() + scan.gone.len();
    let findings = scan
        .findings
        .iter()
        .chain(&scan.gone)
        .take(FINDINGS_LISTED)
        .map(|f| {
            vec![
                f.state.map_or("–", |s| s.as_str()).to_owned(),
                f.severity.as_str().to_owned(),
                escape(&format!("{}:{}", f.tool, f.rule)),
                escape(&format!("{}:{}", f.path, f.line)),
                f.commit.as_deref().map_or("–".to_owned(), |c| c.chars().take(10).collect()),
                f.ai.map_or("–", |ai| if ai { "yes" } else { "no" }).to_owned(),
                escape(&f.message),
            ]
        })
        .collect();
    body.push_str(&html::table(&["state", "severity", "tool:rule", "place", "commit", "AI", "message"], findings));
    if let Some(line) = left_out(total) {
        body.push_str(&format!("<p>{}</p>", escape(&line)));
    }
    html::page("Security posture", &body)
}
