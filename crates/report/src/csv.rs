//! CSV outputs: every run's samples in long form, and the aggregated curve per policy.

use std::fmt::Write;

use gpuplane_sim::ExperimentResult;

/// `policy,seed,arrived_pct,allocated_gpu_pct,unallocated_gpu_pct,frag_amount_pct,frag_ratio_pct`, one row per run and percent.
pub fn samples(result: &ExperimentResult) -> String {
    let mut out =
        String::from("policy,seed,arrived_pct,allocated_gpu_pct,unallocated_gpu_pct,frag_amount_pct,frag_ratio_pct\n");
    for run in &result.runs {
        for s in &run.samples {
            let _ = writeln!(
                out,
                "{},{},{},{:.4},{:.4},{:.4},{:.4}",
                gpuplane_sim::key(run.policy, run.defrag, run.window),
                run.seed,
                s.arrived_pct,
                s.allocated_gpu_pct,
                s.unallocated_gpu_pct,
                s.frag_amount_pct,
                s.frag_ratio_pct
            );
        }
    }
    out
}

/// Median, min and max over seeds per policy and percent.
pub fn curves(result: &ExperimentResult) -> String {
    let mut out = String::from(
        "policy,arrived_pct,seeds,unallocated_gpu_pct_median,unallocated_gpu_pct_min,unallocated_gpu_pct_max,frag_amount_pct_median,frag_amount_pct_min,frag_amount_pct_max,frag_ratio_pct_median,frag_ratio_pct_min,frag_ratio_pct_max\n",
    );
    for p in &result.policies {
        for c in &p.curve {
            let _ = writeln!(
                out,
                "{},{},{},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4}",
                p.key(),
                c.arrived_pct,
                c.seeds,
                c.unallocated_gpu_pct.median,
                c.unallocated_gpu_pct.min,
                c.unallocated_gpu_pct.max,
                c.frag_amount_pct.median,
                c.frag_amount_pct.min,
                c.frag_amount_pct.max,
                c.frag_ratio_pct.median,
                c.frag_ratio_pct.min,
                c.frag_ratio_pct.max
            );
        }
    }
    out
}
