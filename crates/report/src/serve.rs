//! Output of a serving simulation: the per-stack table (SLO attainment and TTFT per latency class,
//! timeouts, cold starts, origin bytes, allocation), the sensitivity table, and SVG charts of allocation and waiting replicas over time.

use comfy_table::CellAlignment;
use gpuplane_sim::Spread;
use gpuplane_sim::serve::{LatencyClass, ServeResult, StackResult};

use crate::svg::{LineChart, Series};
use crate::table::{Style, new_table};

/// Version tag of the JSON written by `gpuplane serve-sim`.
pub const SERVE_JSON_SCHEMA: &str = "gpuplane.serve-sim/v1";

fn ttft(stack: &StackResult, class: LatencyClass) -> String {
    match stack.class(class) {
        Some(p) => format!("{:.2} / {:.1} / {:.1}", p.p50_s, p.p95_s, p.p99_s),
        None => "–".to_owned(),
    }
}

fn starts(stack: &StackResult) -> String {
    let n = |tier: &str| stack.replica_starts.get(tier).copied().unwrap_or(0);
    format!("{} / {} / {} / {}", n("page-cache"), n("local"), n("peer"), n("origin"))
}

fn attainment(stack: &StackResult, class: LatencyClass) -> String {
    match stack.slo.get(class.name()).filter(|f| f.requests > 0) {
        Some(f) => format!("{:.1}", f.attainment_pct),
        None => "–".to_owned(),
    }
}

/// The per-stack table: SLO attainment per class, goodput, requests timed out and refused, TTFT of the
/// served requests, cold starts, where weights came from, origin bytes, allocation and evictions.
pub fn table(result: &ServeResult, style: Style) -> String {
    let mut table = new_table(style);
    table.set_header(vec![
        "stack",
        "interactive SLO %",
        "standard SLO %",
        "goodput req/s",
        "timed out / refused",
        "interactive TTFT p50 / p95 / p99 s",
        "standard TTFT p50 / p95 / p99 s",
        "cold-start requests",
        "replica starts page-cache / local / peer / origin",
        "origin GB",
        "GPU allocated %",
        "batch evicted / GPU-h lost",
    ]);
    for s in &result.stacks {
        let (goodput, timed_out, refused) =
            s.slo.values().fold((0.0, 0, 0), |(g, t, r), f| (g + f.goodput_per_s, t + f.timed_out, r + f.refused));
        table.add_row(vec![
            s.name.clone(),
            attainment(s, LatencyClass::Interactive),
            attainment(s, LatencyClass::Standard),
            format!("{goodput:.2}"),
            format!("{timed_out} / {refused}"),
            ttft(s, LatencyClass::Interactive),
            ttft(s, LatencyClass::Standard),
            s.cold_start_requests.to_string(),
            starts(s),
            format!("{:.0}", s.origin_gb),
            format!("{:.1}", s.mean_allocated_gpu_pct),
            format!("{} / {:.0}", s.batch_evictions, s.batch_gpu_hours_lost),
        ]);
    }
    for i in 1..12 {
        if let Some(c) = table.column_mut(i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    format!("{table}\n")
}

/// Interactive SLO attainment per stack under each named variant of the costs, with the ranking per row.
pub fn sensitivity_table(variants: &[(String, ServeResult)], style: Style) -> String {
    let mut table = new_table(style);
    let stacks: Vec<String> =
        variants.first().map(|(_, r)| r.stacks.iter().map(|s| s.name.clone()).collect()).unwrap_or_default();
    let mut header = vec!["costs".to_owned()];
    header.extend(stacks.iter().map(|s| format!("{s} interactive SLO %")));
    header.push("ranking (best first)".to_owned());
    table.set_header(header);
    for (name, result) in variants {
        let attained: Vec<(String, f64)> = result
            .stacks
            .iter()
            .map(|s| {
                let pct = s.slo.get(LatencyClass::Interactive.name()).map_or(f64::NAN, |f| f.attainment_pct);
                (s.name.clone(), pct)
            })
            .collect();
        let mut row = vec![name.clone()];
        row.extend(attained.iter().map(|(_, v)| format!("{v:.1}")));
        let mut ranked = attained.clone();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        row.push(ranked.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(" > "));
        table.add_row(row);
    }
    format!("{table}\n")
}

/// Per stack, the median over `results` (one per seed) of the figures the board and README quote.
pub fn medians(results: &[ServeResult]) -> serde_json::Value {
    let Some(first) = results.first() else { return serde_json::json!({"seeds": [], "stacks": []}) };
    let stacks: Vec<serde_json::Value> = first
        .stacks
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let of = |f: &dyn Fn(&StackResult) -> f64| {
                let mut values: Vec<f64> = results.iter().filter_map(|r| r.stacks.get(i)).map(f).collect();
                Spread::of(&mut values).map_or(f64::NAN, |s| s.median)
            };
            let slo = |class: LatencyClass| {
                let at = |s: &StackResult| s.slo.get(class.name()).map_or(f64::NAN, |f| f.attainment_pct);
                let good = |s: &StackResult| s.slo.get(class.name()).map_or(f64::NAN, |f| f.goodput_per_s);
                serde_json::json!({"attainment_pct": of(&at), "goodput_per_s": of(&good)})
            };
            serde_json::json!({
                "name": s.name,
                "slo": {"interactive": slo(LatencyClass::Interactive), "standard": slo(LatencyClass::Standard)},
                "origin_gb": of(&|s| s.origin_gb),
                "mean_allocated_gpu_pct": of(&|s| s.mean_allocated_gpu_pct),
                "batch_evictions": of(&|s| s.batch_evictions as f64),
                "batch_gpu_hours_lost": of(&|s| s.batch_gpu_hours_lost),
            })
        })
        .collect();
    serde_json::json!({"seeds": results.iter().map(|r| r.seed).collect::<Vec<_>>(), "stacks": stacks})
}

/// Allocated GPU % over time, one line per stack.
pub fn allocation_chart(result: &ServeResult) -> LineChart {
    over_time(result, "GPU allocation over time", "allocated GPUs (% of cluster)", (0.0, 100.0), |s| {
        s.allocated_gpu_pct
    })
}

/// Free milli on partly used GPUs over time, one line per stack.
pub fn fragmentation_chart(result: &ServeResult) -> LineChart {
    let top =
        result.stacks.iter().flat_map(|s| s.samples.iter().map(|x| x.partial_free_gpu_pct)).fold(1.0, f64::max).ceil();
    over_time(
        result,
        "Free capacity on partly used GPUs over time",
        "free milli on partly used GPUs (%)",
        (0.0, top),
        |s| s.partial_free_gpu_pct,
    )
}

/// Replicas waiting for a node over time, one line per stack.
pub fn pending_chart(result: &ServeResult) -> LineChart {
    let top = result
        .stacks
        .iter()
        .flat_map(|s| s.samples.iter().map(|x| f64::from(x.pending_replicas)))
        .fold(1.0, f64::max)
        .ceil();
    over_time(result, "Inference replicas waiting for a node", "pending replicas", (0.0, top), |s| {
        f64::from(s.pending_replicas)
    })
}

fn over_time(
    result: &ServeResult,
    title: &str,
    y_label: &str,
    y_range: (f64, f64),
    value: fn(&gpuplane_sim::serve::ServeSample) -> f64,
) -> LineChart {
    let x_max = result.stacks.iter().flat_map(|s| s.samples.last()).map(|s| s.t_s / 60.0).fold(1.0, f64::max);
    LineChart {
        title: title.to_owned(),
        x_label: "minutes".to_owned(),
        y_label: y_label.to_owned(),
        x_range: (0.0, x_max),
        y_range,
        series: result
            .stacks
            .iter()
            .map(|s| Series {
                label: s.name.clone(),
                points: s.samples.iter().map(|x| (x.t_s / 60.0, value(x))).collect(),
                reference: false,
            })
            .collect(),
        x_ticks: None,
    }
}

/// Interactive SLO attainment, p99 TTFT and allocated GPU % per stack and seed, with the median and range.
pub fn seeds_table(results: &[ServeResult], style: Style) -> String {
    let mut table = new_table(style);
    let stacks: Vec<String> =
        results.first().map(|r| r.stacks.iter().map(|s| s.name.clone()).collect()).unwrap_or_default();
    let mut header = vec!["seed".to_owned()];
    header.extend(stacks.iter().map(|s| format!("{s}: interactive SLO % / p99 s / GPU %")));
    table.set_header(header);
    let cell = |s: &StackResult| {
        let slo = s.slo.get(LatencyClass::Interactive.name()).map_or(f64::NAN, |f| f.attainment_pct);
        let p99 = s.class(LatencyClass::Interactive).map_or(f64::NAN, |p| p.p99_s);
        [slo, p99, s.mean_allocated_gpu_pct]
    };
    for r in results {
        let mut row = vec![r.seed.to_string()];
        row.extend(r.stacks.iter().map(|s| {
            let [slo, p99, pct] = cell(s);
            format!("{slo:.1} / {p99:.1} / {pct:.1}")
        }));
        table.add_row(row);
    }
    // Per stack, the spread over seeds of each of the three figures.
    let spreads: Vec<[Option<Spread>; 3]> = (0..stacks.len())
        .map(|i| {
            let cells: Vec<[f64; 3]> = results.iter().filter_map(|r| r.stacks.get(i)).map(cell).collect();
            std::array::from_fn(|k| Spread::of(&mut cells.iter().map(|c| c[k]).collect::<Vec<f64>>()))
        })
        .collect();
    let mut median_row = vec!["median".to_owned()];
    let mut range_row = vec!["min–max".to_owned()];
    for spread in &spreads {
        let [a, b, c] = spread.map(|s| s.map_or(f64::NAN, |s| s.median));
        median_row.push(format!("{a:.1} / {b:.1} / {c:.1}"));
        let [a, b, c] = spread.map(|s| s.map_or("–".to_owned(), |s| format!("{:.1}–{:.1}", s.min, s.max)));
        range_row.push(format!("{a} / {b} / {c}"));
    }
    table.add_row(median_row);
    table.add_row(range_row);
    format!("{table}\n")
}
