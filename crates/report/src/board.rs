//! The board report (up to four A4 pages) connecting inference efficiency (GPUs left unallocated, interactive
//! time to first token), platform maturity (levels per area, next milestones) and the security of
//! AI-assisted development (attributed commits, findings per cohort, GPU workload rules) — each with
//! its position, measured gap and next investment, then the story that ties them, as HTML and Markdown.

use std::fmt::Write;

use gpuplane_assess::Assessment;
use gpuplane_assess::assess::level_label;
use gpuplane_posture::cohort::CohortStats;
use gpuplane_posture::finding::{Finding, Level};
use serde_json::Value;

use crate::assess::radar_svg;
use crate::bars::BarChart;
use crate::html::{self, escape};

/// Unallocated GPUs of one placement policy when the arrived workload reaches the cluster's capacity.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyFigure {
    /// Policy name.
    pub policy: String,
    /// Median unallocated GPU share over seeds, percent.
    pub unallocated_pct: f64,
    /// Median fragmented GPU share (idle capacity the workload's pods cannot use), percent.
    pub fragmented_pct: f64,
}

/// One serving stack's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct StackFigure {
    /// Stack name.
    pub stack: String,
    /// Interactive requests served with a first token within their objective, percent of all of them.
    pub interactive_slo_pct: f64,
    /// Bytes read from the model origin, GB.
    pub origin_gb: f64,
    /// Mean share of GPUs allocated, percent.
    pub allocated_pct: f64,
    /// Batch pods evicted for replicas over the run.
    pub batch_evictions: f64,
    /// GPU-hours of batch work those evictions threw away.
    pub batch_gpu_hours_lost: f64,
}

/// Inference efficiency figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Inference {
    /// GPUs in the simulated cluster.
    pub gpus: f64,
    /// Per policy.
    pub policies: Vec<PolicyFigure>,
    /// Per serving stack.
    pub stacks: Vec<StackFigure>,
    /// Where the figures came from.
    pub sources: String,
}

fn field<'v>(value: &'v Value, pointer: &str, source: &str) -> Result<&'v Value, String> {
    value.pointer(pointer).ok_or_else(|| format!("{source}: {pointer}: expected a field of the documented JSON"))
}

fn number(value: &Value, pointer: &str, source: &str) -> Result<f64, String> {
    field(value, pointer, source)?.as_f64().ok_or_else(|| format!("{source}: {pointer}: expected a number"))
}

impl Inference {
    /// Reads the figures from a `gpuplane sim` document (`gpuplane.sim/v1`) and a serve-sim result
    /// (the `result` of `gpuplane.serve-sim/v1`).
    pub fn from_json(sim: &Value, sim_source: &str, serve: &Value, serve_source: &str) -> Result<Inference, String> {
        let gpus = number(sim, "/result/cluster/gpus", sim_source)?;
        let mut policies = Vec::new();
        for (i, p) in field(sim, "/result/policies", sim_source)?.as_array().into_iter().flatten().enumerate() {
            if p.get("defrag").and_then(Value::as_u64).unwrap_or(0) > 0 {
                continue;
            }
            let name = p.get("policy").and_then(Value::as_str).unwrap_or("?").to_owned();
            let at_full = p
                .get("curve")
                .and_then(Value::as_array)
                .and_then(|c| c.iter().find(|point| point.get("arrived_pct").and_then(Value::as_u64) == Some(100)))
                .ok_or_else(|| {
                    format!("{sim_source}: /result/policies/{i}/curve: expected a point at 100 % arrived")
                })?;
            let unallocated_pct = number(at_full, "/unallocated_gpu_pct/median", sim_source)?;
            let fragmented_pct = number(at_full, "/frag_amount_pct/median", sim_source)?;
            policies.push(PolicyFigure { policy: name, unallocated_pct, fragmented_pct });
        }
        let mut stacks = Vec::new();
        for (i, s) in field(serve, "/stacks", serve_source)?.as_array().into_iter().flatten().enumerate() {
            let at = |p: &str| format!("/stacks/{i}{p}");
            stacks.push(StackFigure {
                stack: s.get("name").and_then(Value::as_str).unwrap_or("?").to_owned(),
                interactive_slo_pct: number(serve, &at("/slo/interactive/attainment_pct"), serve_source)?,
                origin_gb: number(serve, &at("/origin_gb"), serve_source)?,
                allocated_pct: number(serve, &at("/mean_allocated_gpu_pct"), serve_source)?,
                batch_evictions: number(serve, &at("/batch_evictions"), serve_source)?,
                batch_gpu_hours_lost: number(serve, &at("/batch_gpu_hours_lost"), serve_source)?,
            });
        }
        if policies.is_empty() || stacks.is_empty() {
            return Err(format!("{sim_source} and {serve_source}: expected at least one policy and one serving stack"));
        }
        Ok(Inference { gpus, policies, stacks, sources: format!("{sim_source}; {serve_source}") })
    }

    fn policy(&self, name: &str) -> Option<&PolicyFigure> {
        self.policies.iter().find(|p| p.policy == name)
    }

    fn stack(&self, name: &str) -> Option<&StackFigure> {
        self.stacks.iter().find(|s| s.stack == name)
    }
}

/// Security figures of AI-assisted development.
#[derive(Debug, Clone, PartialEq)]
pub struct Security {
    /// Commits looked at.
    pub commits: usize,
    /// Of which AI-assisted by their markers.
    pub ai_commits: usize,
    /// AI-assisted commits per tool.
    pub tools: Vec<(String, usize)>,
    /// Findings per cohort, when scanner SARIF was ingested (a posture scan).
    pub cohorts: Option<Vec<CohortStats>>,
    /// GPU workload lint findings on the platform's manifests.
    pub lint: Vec<Finding>,
    /// Where the figures came from.
    pub sources: String,
}

/// Everything the board report shows.
#[derive(Debug, Clone)]
pub struct Board {
    /// Date of the report (`YYYY-MM-DD`).
    pub date: String,
    /// Inference efficiency.
    pub inference: Inference,
    /// Platform maturity.
    pub maturity: Assessment,
    /// Security of AI-assisted development.
    pub security: Security,
    /// Price of one GPU-hour, US dollars, for the value of recovered GPUs (an assumption the reader sets).
    pub gpu_hour_usd: f64,
}

fn opt2(value: Option<f64>) -> String {
    value.map_or_else(|| "–".to_owned(), |v| format!("{v:.2}"))
}

fn fmt_usd(value: f64) -> String {
    if value >= 1e6 { format!("${:.1} M", value / 1e6) } else { format!("${:.0} k", value / 1e3) }
}

fn fmt_pct(value: f64) -> String {
    format!("{value:.2} %")
}

/// The three sections' facts as sentences, shared by HTML and Markdown.
struct Story {
    inference_position: String,
    inference_gap: String,
    inference_next: Vec<String>,
    maturity_position: String,
    maturity_gap: String,
    maturity_next: Vec<String>,
    security_position: String,
    security_gap: String,
    security_next: Vec<String>,
    connected: Vec<String>,
}

fn story(board: &Board) -> Story {
    let inf = &board.inference;
    let default = inf.policy("kube-default");
    let ours = inf.policy("gpuplane");
    let best_other = inf
        .policies
        .iter()
        .filter(|p| p.policy != "gpuplane")
        .min_by(|a, b| a.unallocated_pct.total_cmp(&b.unallocated_pct));
    let inference_position = match (default, ours) {
        (Some(d), Some(o)) => format!(
            "With the default scheduler's placement, {} of the {:.0} GPUs stay unallocated when the openb workload reaches the cluster's capacity, and {} of all GPUs are fragmented (idle capacity the workload's pods cannot use); gpuplane's policy leaves {} unallocated ({} fragmented){}.",
            fmt_pct(d.unallocated_pct),
            inf.gpus,
            fmt_pct(d.fragmented_pct),
            fmt_pct(o.unallocated_pct),
            fmt_pct(o.fragmented_pct),
            best_other
                .filter(|b| b.policy != "kube-default")
                .map(|b| format!(", the best other policy ({}) {}", b.policy, fmt_pct(b.unallocated_pct)))
                .unwrap_or_default()
        ),
        _ => "The simulation has no kube-default and gpuplane policies to compare.".to_owned(),
    };
    // One figure of GPUs recovered: the serving simulation's, against the stock stack that serves
    // interactive requests best — what a team would run without gpuplane — over an hour of inference and
    // batch work coming and going (the fill-up figures above are percentages at one instant).
    let stock = inf
        .stacks
        .iter()
        .filter(|s| s.stack != "gpuplane" && !s.stack.contains("gpuplane"))
        .max_by(|a, b| a.interactive_slo_pct.total_cmp(&b.interactive_slo_pct));
    let (inference_gap, recovered) = match (stock, inf.stack("gpuplane")) {
        (Some(b), Some(o)) => {
            let recovered = (o.allocated_pct - b.allocated_pct) / 100.0 * inf.gpus;
            let value = recovered.max(0.0) * board.gpu_hour_usd * 24.0 * 365.0;
            (
                format!(
                    "Against the stock stack that serves interactive requests best ({}: {:.1} % within their objective, {:.1} % of GPUs allocated), gpuplane allocates {:.1} % ({:+.0} GPUs — {} a year at ${:.2} per GPU-hour) with {:.1} % of interactive requests within their objective, losing {:.1} GPU-hours of batch work an hour to evictions against {:.1} (simulated).",
                    b.stack,
                    b.interactive_slo_pct,
                    b.allocated_pct,
                    o.allocated_pct,
                    recovered,
                    fmt_usd(value),
                    board.gpu_hour_usd,
                    o.interactive_slo_pct,
                    o.batch_gpu_hours_lost,
                    b.batch_gpu_hours_lost
                ),
                recovered,
            )
        }
        _ => ("Not measured: the serving simulation has no stock and gpuplane stacks to compare.".to_owned(), 0.0),
    };
    // The serving ladder: kube-default (with preemption, as kube-scheduler ships), the model cache added,
    // the fast-GPU affinity stock kube-scheduler can also honour, and the whole gpuplane stack; each figure
    // is a rung's measurement, better or worse.
    let serving = match (inf.stack("kube-default"), inf.stack("+ model cache"), inf.stack("gpuplane")) {
        (Some(d), Some(c), Some(o)) => Some((d, c, o)),
        _ => None,
    };
    let affinity = inf.stack("+ fast-GPU affinity");
    let mut inference_next = vec![format!(
        "Run gpuplane as the GPU pool's scheduler (secondary scheduler or extender). Milestone: unallocated GPUs at or below {} on the pool's own trace.",
        ours.map_or("the simulated figure".to_owned(), |o| fmt_pct(o.unallocated_pct))
    )];
    if let Some((d, c, o)) = serving {
        inference_next.push(format!(
            "Deploy the node model cache. Milestone: model reads from the origin from {:.0} GB to {:.0} GB an hour, interactive requests with a first token within their objective from {:.1} % to {:.1} % (simulated).",
            d.origin_gb, c.origin_gb, d.interactive_slo_pct, c.interactive_slo_pct
        ));
        // gpuplane's placement is judged against the best stock rung before it.
        let before = match affinity {
            Some(f) => {
                inference_next.push(format!(
                    "Let interactive replicas prefer fast GPU models (a preferred node affinity: stock kube-scheduler ranks the nodes that fit by it, and never evicts for it). Milestone: interactive requests within their objective from {:.1} % to {:.1} % (simulated).",
                    c.interactive_slo_pct, f.interactive_slo_pct
                ));
                f
            }
            None => c,
        };
        inference_next.push(format!(
            "gpuplane's placement and serving policy on top: GPUs allocated from {:.1} % to {:.1} %, interactive requests within their objective from {:.1} % to {:.1} % (simulated), with {:.0} batch pods evicted against {:.0} ({:.1} GPU-hours of batch work lost against {:.1}).",
            before.allocated_pct,
            o.allocated_pct,
            before.interactive_slo_pct,
            o.interactive_slo_pct,
            o.batch_evictions,
            before.batch_evictions,
            o.batch_gpu_hours_lost,
            before.batch_gpu_hours_lost
        ));
    }

    let m = &board.maturity;
    let levels: Vec<String> = m.areas.iter().map(|a| format!("{} {}", a.name, level_label(a.level))).collect();
    let low: Vec<&str> = m.areas.iter().filter(|a| a.level.is_some_and(|l| l < 3)).map(|a| a.name.as_str()).collect();
    let maturity_position = format!("Assessed on {} with {} checks: {}.", m.as_of, m.checks.len(), levels.join(", "));
    let maturity_gap = if low.is_empty() {
        "Every area is at level 3 (Defined) or above.".to_owned()
    } else {
        format!(
            "{} of {} areas are below level 3 (Defined): {}. {} milestones stand between the areas and their next level.",
            low.len(),
            m.areas.len(),
            low.join(", "),
            m.plan.len()
        )
    };
    let mut maturity_next = Vec::new();
    for area in &m.areas {
        if let Some(first) = m.plan.iter().find(|p| p.area == area.id) {
            maturity_next.push(format!("{} → level {}: {}", area.name, first.to_level, first.milestone));
        }
    }

    let sec = &board.security;
    let share = if sec.commits > 0 { 100.0 * sec.ai_commits as f64 / sec.commits as f64 } else { 0.0 };
    let tools: Vec<String> = sec.tools.iter().map(|(t, n)| format!("{t} {n}")).collect();
    let lint_errors = sec.lint.iter().filter(|f| f.level == Level::Error).count();
    let gpu_lint = sec.lint.iter().filter(|f| f.rule.starts_with("GPU")).count();
    let security_position = format!(
        "{} of {} commits ({share:.0} %) carry an AI assistant's marker{}; GPU workload rules find {} findings on the platform's manifests ({} errors, {} GPU-specific).",
        sec.ai_commits,
        sec.commits,
        if tools.is_empty() { String::new() } else { format!(" ({})", tools.join(", ")) },
        sec.lint.len(),
        lint_errors,
        gpu_lint
    );
    let cohort = |name: &str| sec.cohorts.as_ref()?.iter().find(|c| c.cohort == name).cloned();
    let security_gap = match (cohort("ai-assisted"), cohort("other")) {
        (Some(ai), Some(other)) => match (ai.per_kloc, other.per_kloc) {
            (Some(a), Some(o)) => format!(
                "AI-assisted commits introduce {a:.2} findings per 1,000 added lines against {o:.2} for the others ({} against {} findings).",
                ai.findings, other.findings
            ),
            _ => "The cohorts have too few added lines to compare.".to_owned(),
        },
        _ => "No scanner SARIF has been ingested: the findings each cohort introduces are not measured yet.".to_owned(),
    };
    let sarif_check = m.checks.iter().find(|c| c.id == "governance.sast-sarif").map(|c| c.status.label());
    let mut security_next = vec![format!(
        "Scan every change with SAST and IaC scanners that write SARIF (the maturity check governance.sast-sarif is {}). Milestone: findings per KLOC measured for both cohorts every week.",
        sarif_check.unwrap_or("not in the model")
    )];
    security_next.push(
        "Gate pull requests on new findings in changed lines, with the stricter profile (medium and up, human review) for AI-assisted changes. Milestone: every AI-assisted change reviewed; effective false positives of blocking rules under 10 %.".to_owned(),
    );
    if !sec.lint.is_empty() {
        security_next.push(format!(
            "Fix the {} workload findings ({lint_errors} errors, {gpu_lint} GPU-specific) and run gpuplane lint in CI. Milestone: no error-level finding on the GPU pools' manifests.",
            sec.lint.len()
        ));
    }

    let gpu_area = m.areas.iter().find(|a| a.id == "gpu");
    let mut connected = vec![format!(
        "Placement is the cheapest capacity: {recovered:.0} GPUs come back from the same cluster, serving as well, by choosing nodes and GPUs that leave usable capacity{}.",
        serving.map_or(String::new(), |(d, c, _)| format!(
            ", and in simulation the node model cache cuts model reads from the origin from {:.0} GB to {:.0} GB an hour",
            d.origin_gb, c.origin_gb
        ))
    )];
    connected.push(format!(
        "Running that scheduler is a platform capability: GPU capacity & isolation is at level {}{}.",
        gpu_area.and_then(|a| a.level).map_or("n/a".to_owned(), |l| format!("{l} ({})", gpuplane_assess::model::level_name(l))),
        if low.is_empty() {
            ", and every area is at level 3 or above".to_owned()
        } else {
            format!(", but the areas that decide whether the platform team can operate it — {} — are below level 3 and need their next-level milestones first", low.join(", "))
        }
    ));
    let cohort_sentence = match (cohort("ai-assisted"), cohort("other")) {
        (Some(ai), Some(other)) if ai.per_kloc.is_some() && other.per_kloc.is_some() => {
            format!(
                "{} (AI-assisted) against {} (others) findings per 1,000 added lines",
                opt2(ai.per_kloc),
                opt2(other.per_kloc)
            )
        }
        _ => "the findings each cohort introduces are not measured until scanner SARIF is ingested".to_owned(),
    };
    connected.push(if sec.ai_commits > 0 {
        format!(
            "{share:.0} % of the commits carry an AI assistant's marker — a lower bound, as most tools let users turn markers off — so security has to measure per cohort and gate changes where they enter; today: {cohort_sentence}."
        )
    } else {
        format!(
            "No commit carries an AI assistant's marker — a lower bound, as most tools let users turn markers off — so before AI-assisted changes arrive unseen, security needs per-cohort measurement and a gate where changes enter; today {cohort_sentence}."
        )
    });
    Story {
        inference_position,
        inference_gap,
        inference_next,
        maturity_position,
        maturity_gap,
        maturity_next,
        security_position,
        security_gap,
        security_next,
        connected,
    }
}

/// Unallocated GPU share per policy.
pub fn policy_chart(inference: &Inference) -> BarChart {
    BarChart {
        title: "GPUs left unallocated at full workload (openb trace)".to_owned(),
        unit: "% of GPUs unallocated (median over seeds)".to_owned(),
        segments: vec!["fragmented".to_owned(), "free and usable".to_owned()],
        bars: inference
            .policies
            .iter()
            .map(|p| {
                let fragmented = p.fragmented_pct.min(p.unallocated_pct);
                (p.policy.clone(), vec![fragmented, p.unallocated_pct - fragmented])
            })
            .collect(),
    }
}

/// Interactive requests that missed their objective, per serving stack: on a scale from zero the
/// differences between stacks show, where attainments of 97 and 98 % would look the same.
pub fn ttft_chart(inference: &Inference) -> BarChart {
    BarChart {
        title: "Interactive requests that missed their TTFT objective (simulated)".to_owned(),
        unit: "% of interactive requests (100 − SLO attainment)".to_owned(),
        segments: vec!["missed the TTFT objective".to_owned()],
        bars: inference
            .stacks
            .iter()
            .map(|s| (s.stack.clone(), vec![(100.0 - s.interactive_slo_pct).max(0.0)]))
            .collect(),
    }
}

/// GPU workload findings per rule.
pub fn lint_chart(security: &Security) -> BarChart {
    let mut rules: std::collections::BTreeMap<&str, (f64, f64)> = std::collections::BTreeMap::new();
    for f in &security.lint {
        let counts = rules.entry(f.rule.as_str()).or_default();
        if f.level == Level::Error { counts.0 += 1.0 } else { counts.1 += 1.0 }
    }
    BarChart {
        title: "Workload rule findings on the platform's manifests".to_owned(),
        unit: "findings".to_owned(),
        segments: vec!["error".to_owned(), "warning".to_owned()],
        bars: rules.into_iter().map(|(rule, (errors, warnings))| (rule.to_owned(), vec![errors, warnings])).collect(),
    }
}

fn list_html(items: &[String]) -> String {
    let mut out = String::from("<ol>");
    for item in items {
        let _ = write!(out, "<li>{}</li>", escape(item));
    }
    out.push_str("</ol>");
    out
}

/// The board report as one self-contained HTML page that prints on A4.
pub fn html(board: &Board) -> String {
    let s = story(board);
    let mut body = format!(
        r#"<header><h1>GPU platform, maturity and AI-development security</h1><p class="meta">Report for the board, {} · placement and serving figures simulated by gpuplane on public traces (openb, Azure LLM 2023); maturity and security measured on the repository</p></header>"#,
        escape(&board.date)
    );
    let _ = write!(body, r#"<section id="summary"><h2>The connected story</h2>{}</section>"#, list_html(&s.connected));
    let _ = write!(
        body,
        r#"<section id="inference"><h2>1. Inference efficiency</h2><p><b>Position.</b> {}</p><p><b>Gap.</b> {}</p><figure id="chart-policies">{}</figure><figure id="chart-ttft">{}</figure><p><b>Next investment.</b></p>{}<p class="source">Source: {}</p></section>"#,
        escape(&s.inference_position),
        escape(&s.inference_gap),
        policy_chart(&board.inference).render(680.0),
        ttft_chart(&board.inference).render(680.0),
        list_html(&s.inference_next),
        escape(&board.inference.sources)
    );
    let areas = board
        .maturity
        .areas
        .iter()
        .map(|a| {
            vec![escape(&a.name), escape(&level_label(a.level)), a.score.map_or("–".into(), |v| format!("{v:.0}"))]
        })
        .collect();
    let _ = write!(
        body,
        r#"<section id="maturity"><h2>2. Platform maturity</h2><p><b>Position.</b> {}</p><p><b>Gap.</b> {}</p><div class="pair"><figure id="chart-radar">{}</figure>{}</div><p><b>Next investment.</b></p>{}<p class="source">Source: gpuplane assess, model {}</p></section>"#,
        escape(&s.maturity_position),
        escape(&s.maturity_gap),
        radar_svg(&board.maturity),
        html::table(&["area", "level", "score"], areas),
        list_html(&s.maturity_next),
        escape(&board.maturity.model_version)
    );
    let lint_figure = if board.security.lint.is_empty() {
        String::new()
    } else {
        format!(r#"<figure id="chart-lint">{}</figure>"#, lint_chart(&board.security).render(680.0))
    };
    let _ = write!(
        body,
        r#"<section id="security"><h2>3. Security of AI-assisted development</h2><p><b>Position.</b> {}</p><p><b>Gap.</b> {}</p>{lint_figure}<p><b>Next investment.</b></p>{}<p class="source">Source: {}</p></section>"#,
        escape(&s.security_position),
        escape(&s.security_gap),
        list_html(&s.security_next),
        escape(&board.security.sources)
    );
    let page = html::page(&format!("Board report {}", board.date), &body);
    page.replace(
        "</style>",
        "@page { size: A4; margin: 14mm; }\n@media print { body { margin: 0; max-width: none; } section { break-inside: auto; } figure, table { break-inside: avoid; } }\nheader .meta, .source { color: #666; font-size: 0.85rem; }\n.pair { display: flex; gap: 1rem; align-items: flex-start; flex-wrap: wrap; }\nsvg { max-width: 100%; height: auto; }\n</style>",
    )
}

/// A Markdown section heading with its position and gap.
fn markdown_section(out: &mut String, title: &str, position: &str, gap: &str) {
    let _ = write!(out, "\n## {title}\n\n**Position.** {position}\n\n**Gap.** {gap}\n\n");
}

/// The board report as Markdown, with the same figures.
pub fn markdown(board: &Board) -> String {
    let s = story(board);
    let list =
        |items: &[String]| items.iter().enumerate().map(|(i, t)| format!("{}. {t}\n", i + 1)).collect::<String>();
    let mut out = format!(
        "# GPU platform, maturity and AI-development security\n\nReport for the board, {}. Placement and serving figures are simulated by gpuplane on public traces (openb, Azure LLM 2023); maturity and security are measured on the repository.\n\n",
        board.date
    );
    out.push_str("## The connected story\n\n");
    out.push_str(&list(&s.connected));
    markdown_section(&mut out, "1. Inference efficiency", &s.inference_position, &s.inference_gap);
    out.push_str("| policy | unallocated GPUs at full workload | of which fragmented |\n|---|---|---|\n");
    for p in &board.inference.policies {
        let _ = writeln!(out, "| {} | {} | {} |", p.policy, fmt_pct(p.unallocated_pct), fmt_pct(p.fragmented_pct));
    }
    out.push_str(
        "\n| stack | interactive requests within objective | origin GB | GPUs allocated |\n|---|---|---|---|\n",
    );
    for st in &board.inference.stacks {
        let _ = writeln!(
            out,
            "| {} | {:.1} % | {:.0} | {:.1} % |",
            st.stack, st.interactive_slo_pct, st.origin_gb, st.allocated_pct
        );
    }
    let _ = write!(out, "\n**Next investment.**\n\n{}\nSource: {}\n", list(&s.inference_next), board.inference.sources);
    markdown_section(&mut out, "2. Platform maturity", &s.maturity_position, &s.maturity_gap);
    out.push_str("| area | level | score |\n|---|---|---|\n");
    for a in &board.maturity.areas {
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            a.name,
            level_label(a.level),
            a.score.map_or("–".into(), |v| format!("{v:.0}"))
        );
    }
    let _ = write!(out, "\n**Next investment.**\n\n{}\n", list(&s.maturity_next));
    markdown_section(&mut out, "3. Security of AI-assisted development", &s.security_position, &s.security_gap);
    let _ = write!(out, "**Next investment.**\n\n{}\nSource: {}\n", list(&s.security_next), board.security.sources);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;

    fn sim() -> Value {
        json!({"result": {"cluster": {"gpus": 100.0}, "policies": [
            {"policy": "kube-default", "defrag": 0, "curve": [{"arrived_pct": 100, "unallocated_gpu_pct": {"median": 8.0}, "frag_amount_pct": {"median": 7.5}}]},
            {"policy": "gpuplane", "defrag": 0, "curve": [{"arrived_pct": 100, "unallocated_gpu_pct": {"median": 4.0}, "frag_amount_pct": {"median": 3.0}}]}
        ]}})
    }

    fn serve() -> Value {
        json!({"stacks": [
            {"name": "kube-default", "slo": {"interactive": {"attainment_pct": 60.0}}, "origin_gb": 900.0, "mean_allocated_gpu_pct": 90.0, "batch_evictions": 5, "batch_gpu_hours_lost": 1.0},
            {"name": "+ model cache", "slo": {"interactive": {"attainment_pct": 65.0}}, "origin_gb": 200.0, "mean_allocated_gpu_pct": 90.0, "batch_evictions": 5, "batch_gpu_hours_lost": 1.0},
            {"name": "+ fast-GPU affinity", "slo": {"interactive": {"attainment_pct": 81.0}}, "origin_gb": 200.0, "mean_allocated_gpu_pct": 90.0, "batch_evictions": 9, "batch_gpu_hours_lost": 2.0},
            {"name": "gpuplane", "slo": {"interactive": {"attainment_pct": 80.0}}, "origin_gb": 200.0, "mean_allocated_gpu_pct": 97.0, "batch_evictions": 90, "batch_gpu_hours_lost": 3.5}
        ]})
    }

    #[test]
    fn figures_come_from_the_documented_json_and_a_missing_field_is_named() {
        let inference = Inference::from_json(&sim(), "sim.json", &serve(), "serve.json").unwrap();
        assert_eq!(inference.policies[1].unallocated_pct, 4.0);
        assert_eq!(inference.policies[0].fragmented_pct, 7.5);
        assert_eq!(inference.stacks[0].interactive_slo_pct, 60.0);
        let mut broken = serve();
        broken["stacks"][1]["origin_gb"] = Value::Null;
        let err = Inference::from_json(&sim(), "sim.json", &broken, "serve.json").unwrap_err();
        assert_eq!(err, "serve.json: /stacks/1/origin_gb: expected a number");
        let err = Inference::from_json(&json!({}), "sim.json", &serve(), "serve.json").unwrap_err();
        assert_eq!(err, "sim.json: /result/cluster/gpus: expected a field of the documented JSON");
    }

    #[test]
    fn the_gap_counts_the_gpus_recovered_against_the_best_serving_stock_stack_once() {
        let board = Board {
            gpu_hour_usd: 2.0,
            date: "2026-11-28".into(),
            inference: Inference::from_json(&sim(), "sim.json", &serve(), "serve.json").unwrap(),
            maturity: gpuplane_assess::assess(&gpuplane_assess::Model::builtin().unwrap(), &Default::default())
                .unwrap(),
            security: Security {
                commits: 10,
                ai_commits: 2,
                tools: vec![("Claude Code".into(), 2)],
                cohorts: None,
                lint: vec![],
                sources: "test".into(),
            },
        };
        let md = markdown(&board);
        // One recovered figure: gpuplane's allocation against the stock stack with the best interactive SLO.
        assert!(
            md.contains("(+ fast-GPU affinity: 81.0 % within their objective, 90.0 % of GPUs allocated), gpuplane allocates 97.0 % (+7 GPUs"),
            "{md}"
        );
        assert!(md.contains("losing 3.5 GPU-hours of batch work an hour to evictions against 2.0"), "{md}");
        assert!(md.contains("Placement is the cheapest capacity: 7 GPUs come back"), "{md}");
        assert!(!md.contains("4 GPUs"), "the fill-up figures stay percentages: {md}");
        assert!(md.contains("| kube-default | 8.00 % | 7.50 % |"), "{md}");
        // gpuplane's placement is set against the best stock rung, even where it does worse.
        assert!(md.contains("from 65.0 % to 81.0 %"), "{md}");
        assert!(
            md.contains("GPUs allocated from 90.0 % to 97.0 %, interactive requests within their objective from 81.0 % to 80.0 %"),
            "{md}"
        );
        assert!(md.contains("90 batch pods evicted against 9 (3.5 GPU-hours of batch work lost against 2.0)"), "{md}");
        assert!(md.contains("2 of 10 commits (20 %) carry an AI assistant's marker (Claude Code 2)"), "{md}");
        let page = html(&board);
        assert!(page.contains("@page { size: A4"));
        assert!(!page.contains("chart-lint"), "no lint chart without findings");
    }
}
