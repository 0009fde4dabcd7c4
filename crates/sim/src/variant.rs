//! Openb-style trace variants: from a base trace, set the share of CPU-only pods, of GPU milli asked
//! by GPU-sharing pods and by multi-GPU pods, and of GPU pods constrained to some GPU models, the way
//! the FGD paper's `cpu*`, `gpushare*`, `multigpu*` and `gpuspec*` traces were derived from `default`
//! (read off the bundled files; see `docs/trace-variants.md`). Pods are resampled from the base with a
//! seeded generator, so a variant is reproducible from (base, targets, seed).

use gpuplane_core::openb::TracePod;
use gpuplane_core::{MILLI_PER_GPU, Node};
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use thiserror::Error;

/// What a variant should look like; `None` keeps the base trace's share.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Targets {
    /// Share of pods that ask for no GPU (openb `cpuNNN`: NNN / 1000).
    pub cpu_only: Option<f64>,
    /// Share of all requested GPU milli asked by GPU-sharing pods (`gpushareNN`: NN / 100).
    pub sharing: Option<f64>,
    /// Share of all requested GPU milli asked by multi-GPU pods (`multigpuNN`: NN / 100).
    pub multi_gpu: Option<f64>,
    /// Share of GPU pods that accept only some GPU models (`gpuspecNN`: NN / 100).
    pub model_constrained: Option<f64>,
}

/// The shares a trace has.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shares {
    /// Pods.
    pub pods: usize,
    /// Share of pods that ask for no GPU.
    pub cpu_only: f64,
    /// Share of requested GPU milli asked by sharing pods.
    pub sharing: f64,
    /// Share of requested GPU milli asked by multi-GPU pods.
    pub multi_gpu: f64,
    /// Share of GPU pods with a GPU-model constraint.
    pub model_constrained: f64,
}

/// Why a variant cannot be made.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum VariantError {
    /// A share outside its range.
    #[error("{what} must be a share from 0 to {max}, got {value}")]
    Share {
        /// Which target.
        what: &'static str,
        /// The largest share allowed.
        max: f64,
        /// The value given.
        value: f64,
    },
    /// The base trace has no pod of a kind the target needs.
    #[error("the base trace has no {0} pods to sample from")]
    NoPods(&'static str),
    /// The sharing and multi-GPU shares leave nothing for the rest.
    #[error("sharing ({sharing}) and multi-GPU ({multi}) shares of GPU milli add up to more than 1")]
    Overcommitted {
        /// The sharing share.
        sharing: f64,
        /// The multi-GPU share.
        multi: f64,
    },
    /// No GPU-model constraint in the pool fits a pod on any node.
    #[error("no GPU-model constraint in the spec pool can run a {0}-GPU pod on any node")]
    NoSpec(u8),
}

/// Most pods a variant may have: ten times the largest bundled trace's need, a bound on memory.
pub const MAX_VARIANT_PODS: usize = 10_000_000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Cpu,
    Sharing,
    Whole,
    Multi,
}

fn kind(p: &TracePod) -> Kind {
    match (p.pod.gpu.count, u32::from(p.pod.gpu.milli_per_gpu) < MILLI_PER_GPU) {
        (0, _) => Kind::Cpu,
        (1, true) => Kind::Sharing,
        (1, false) => Kind::Whole,
        _ => Kind::Multi,
    }
}

/// The shares of a trace.
pub fn shares(pods: &[TracePod]) -> Shares {
    let milli =
        |k: Kind| -> f64 { pods.iter().filter(|p| kind(p) == k).map(|p| f64::from(p.pod.gpu.total_milli())).sum() };
    let total = milli(Kind::Sharing) + milli(Kind::Whole) + milli(Kind::Multi);
    let gpu_pods = pods.iter().filter(|p| kind(p) != Kind::Cpu).count();
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    Shares {
        pods: pods.len(),
        cpu_only: ratio(pods.iter().filter(|p| kind(p) == Kind::Cpu).count() as f64, pods.len() as f64),
        sharing: ratio(milli(Kind::Sharing), total),
        multi_gpu: ratio(milli(Kind::Multi), total),
        model_constrained: ratio(
            pods.iter().filter(|p| kind(p) != Kind::Cpu && !p.pod.gpu_models.is_empty()).count() as f64,
            gpu_pods as f64,
        ),
    }
}

/// Derives a variant of `base`. Steps, each only when its target is set:
///
/// 1. multi-GPU: append multi-GPU pods drawn from the base's (with replacement) until their share of GPU
///    milli reaches the target, or drop random ones until it falls to it (`multigpu*` appends);
/// 2. sharing: redraw every single-GPU pod as a sharing or a whole-GPU pod of the base, keeping the pod
///    count, choosing sharing while the sharing share is below the target (`gpushare*`);
/// 3. CPU-only: keep the GPU pods and draw CPU-only pods of the base so they make up the target share
///    of pods (`cpu*`);
/// 4. model constraints: give random unconstrained GPU pods a constraint drawn from `spec_pool` (weighted
///    by frequency) that some node of `nodes` can host, until the target share of GPU pods has one
///    (`gpuspec*`); a lower target removes constraints at random.
///
/// Pods drawn again get a `-v<n>` suffix so names stay unique; the order is the base's with additions
/// at the end.
pub fn derive(
    base: &[TracePod],
    targets: &Targets,
    spec_pool: &[Vec<String>],
    nodes: &[Node],
    seed: u64,
) -> Result<Vec<TracePod>, VariantError> {
    for (what, value, max) in [
        ("cpu-only", targets.cpu_only, 0.99),
        ("sharing", targets.sharing, 1.0),
        ("multi-gpu", targets.multi_gpu, 0.99),
        ("model-constrained", targets.model_constrained, 1.0),
    ] {
        if let Some(v) = value
            && !(v.is_finite() && (0.0..=max).contains(&v))
        {
            return Err(VariantError::Share { what, max, value: v });
        }
    }
    if let (Some(s), Some(m)) = (targets.sharing, targets.multi_gpu)
        && s + m > 1.0
    {
        return Err(VariantError::Overcommitted { sharing: s, multi: m });
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut pods: Vec<TracePod> = base.to_vec();
    let mut drawn = 0usize;
    let mut redraw = |p: &TracePod| {
        let mut copy = p.clone();
        copy.pod.name = format!("{}-v{drawn}", p.pod.name);
        drawn += 1;
        copy
    };
    let pool = |k: Kind| -> Vec<&TracePod> { base.iter().filter(|p| kind(p) == k).collect() };

    if let Some(target) = targets.multi_gpu {
        let multi = pool(Kind::Multi);
        if multi.is_empty() && target > 0.0 {
            return Err(VariantError::NoPods("multi-GPU"));
        }
        let milli = |pods: &[TracePod], k: Option<Kind>| -> f64 {
            pods.iter()
                .filter(|p| kind(p) != Kind::Cpu && k.is_none_or(|k| kind(p) == k))
                .map(|p| f64::from(p.pod.gpu.total_milli()))
                .sum()
        };
        let (mut m, mut total) = (milli(&pods, Some(Kind::Multi)), milli(&pods, None));
        while total > 0.0 && m / total < target && pods.len() < MAX_VARIANT_PODS {
            let p = redraw(multi[rng.random_range(0..multi.len())]);
            m += f64::from(p.pod.gpu.total_milli());
            total += f64::from(p.pod.gpu.total_milli());
            pods.push(p);
        }
        let mut removable: Vec<usize> = (0..pods.len()).filter(|&i| kind(&pods[i]) == Kind::Multi).collect();
        let mut removed = vec![false; pods.len()];
        while total > 0.0 && m / total > target && !removable.is_empty() {
            let i = removable.swap_remove(rng.random_range(0..removable.len()));
            let g = f64::from(pods[i].pod.gpu.total_milli());
            if (m - g) / (total - g) < target && m / total - target < target - (m - g) / (total - g) {
                break;
            }
            removed[i] = true;
            m -= g;
            total -= g;
        }
        let mut i = 0;
        pods.retain(|_| {
            i += 1;
            !removed[i - 1]
        });
    }

    if let Some(target) = targets.sharing {
        let (sharing, whole) = (pool(Kind::Sharing), pool(Kind::Whole));
        if sharing.is_empty() && target > 0.0 {
            return Err(VariantError::NoPods("GPU-sharing"));
        }
        if whole.is_empty() && target < 1.0 {
            return Err(VariantError::NoPods("whole-GPU"));
        }
        let multi: f64 =
            pods.iter().filter(|p| kind(p) == Kind::Multi).map(|p| f64::from(p.pod.gpu.total_milli())).sum();
        let (mut s, mut total) = (0.0, multi);
        for slot in pods.iter_mut() {
            if !matches!(kind(slot), Kind::Sharing | Kind::Whole) {
                continue;
            }
            let take_sharing = !sharing.is_empty() && (whole.is_empty() || total == 0.0 || s / total < target);
            let from = if take_sharing { &sharing } else { &whole };
            let p = redraw(from[rng.random_range(0..from.len())]);
            let g = f64::from(p.pod.gpu.total_milli());
            if take_sharing {
                s += g;
            }
            total += g;
            *slot = p;
        }
    }

    if let Some(target) = targets.cpu_only {
        let cpu = pool(Kind::Cpu);
        if cpu.is_empty() && target > 0.0 {
            return Err(VariantError::NoPods("CPU-only"));
        }
        let gpu_pods = pods.iter().filter(|p| kind(p) != Kind::Cpu).count();
        let wanted = ((target / (1.0 - target)) * gpu_pods as f64).round() as usize;
        pods.retain(|p| kind(p) != Kind::Cpu);
        for _ in 0..wanted.min(MAX_VARIANT_PODS) {
            let p = redraw(cpu[rng.random_range(0..cpu.len())]);
            pods.push(p);
        }
    }

    if let Some(target) = targets.model_constrained {
        let gpu: Vec<usize> = (0..pods.len()).filter(|&i| kind(&pods[i]) != Kind::Cpu).collect();
        let wanted = (target * gpu.len() as f64).round() as usize;
        let mut constrained: Vec<usize> = gpu.iter().copied().filter(|&i| !pods[i].pod.gpu_models.is_empty()).collect();
        let mut free: Vec<usize> = gpu.iter().copied().filter(|&i| pods[i].pod.gpu_models.is_empty()).collect();
        while constrained.len() > wanted {
            let i = constrained.swap_remove(rng.random_range(0..constrained.len()));
            pods[i].pod.gpu_models.clear();
        }
        let total_weight = spec_pool.len();
        while constrained.len() < wanted && !free.is_empty() {
            let i = free.swap_remove(rng.random_range(0..free.len()));
            let count = pods[i].pod.gpu.count;
            let hosts = |spec: &Vec<String>| {
                nodes
                    .iter()
                    .any(|n| n.gpu_count >= count && n.gpu_model.as_ref().is_some_and(|m| spec.iter().any(|s| s == m)))
            };
            // Draw from the pool, weighted by frequency, among constraints some node can host.
            let mut spec = None;
            for _ in 0..64 {
                if total_weight == 0 {
                    break;
                }
                let candidate = &spec_pool[rng.random_range(0..total_weight)];
                if hosts(candidate) {
                    spec = Some(candidate.clone());
                    break;
                }
            }
            let spec = match spec.or_else(|| spec_pool.iter().find(|s| hosts(s)).cloned()) {
                Some(s) => s,
                None => return Err(VariantError::NoSpec(count)),
            };
            pods[i].pod.gpu_models = spec;
            constrained.push(i);
        }
    }
    Ok(pods)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpuplane_core::{GpuRequest, Pod};

    fn pod(name: &str, count: u8, milli: u16) -> TracePod {
        TracePod {
            pod: Pod::with_requests(name, 1000, 1 << 30, GpuRequest { count, milli_per_gpu: milli }),
            qos: None,
            creation_time: None,
            deletion_time: None,
        }
    }

    fn base() -> Vec<TracePod> {
        let mut pods = Vec::new();
        for i in 0..400 {
            pods.push(match i % 8 {
                0 => pod(&format!("c{i}"), 0, 0),
                1..=3 => pod(&format!("s{i}"), 1, 250 + (i % 3) as u16 * 200),
                7 if i % 16 == 7 => pod(&format!("m{i}"), 4, 1000),
                _ => pod(&format!("w{i}"), 1, 1000),
            });
        }
        pods
    }

    fn node(model: &str, gpus: u8) -> Node {
        Node {
            name: format!("{model}-{gpus}"),
            cpu_milli: 64_000,
            memory_bytes: 1 << 40,
            gpu_count: gpus,
            gpu_model: Some(model.into()),
            labels: Default::default(),
            taints: vec![],
        }
    }

    #[test]
    fn each_target_is_reached_and_the_others_are_kept() {
        let b = base();
        let before = shares(&b);
        let nodes = [node("T4", 2), node("G2", 8)];
        let pool = vec![vec!["T4".to_owned()], vec!["G2".to_owned()]];
        let run = |t: Targets| derive(&b, &t, &pool, &nodes, 7).unwrap();

        let v = shares(&run(Targets { cpu_only: Some(0.25), ..Targets::default() }));
        assert!((v.cpu_only - 0.25).abs() < 0.01, "{v:?}");
        assert!((v.sharing - before.sharing).abs() < 1e-9);

        let v = shares(&run(Targets { sharing: Some(0.6), ..Targets::default() }));
        assert!((v.sharing - 0.6).abs() < 0.02, "{v:?}");
        assert_eq!(v.pods, before.pods);
        assert!((v.cpu_only - before.cpu_only).abs() < 1e-9);

        let v = shares(&run(Targets { multi_gpu: Some(0.4), ..Targets::default() }));
        assert!((v.multi_gpu - 0.4).abs() < 0.02, "{v:?}");
        let v = shares(&run(Targets { multi_gpu: Some(0.0), ..Targets::default() }));
        assert!(v.multi_gpu < 0.01, "{v:?}");

        let pods = run(Targets { model_constrained: Some(0.3), ..Targets::default() });
        let v = shares(&pods);
        assert!((v.model_constrained - 0.3).abs() < 0.01, "{v:?}");
        // A 4-GPU pod never gets a constraint only 2-GPU nodes satisfy.
        assert!(pods.iter().filter(|p| p.pod.gpu.count == 4).all(|p| p.pod.gpu_models != vec!["T4".to_owned()]));
        let names: std::collections::HashSet<_> = pods.iter().map(|p| &p.pod.name).collect();
        assert_eq!(names.len(), pods.len(), "names stay unique");
    }

    #[test]
    fn same_seed_same_variant_and_bad_targets_are_refused() {
        let b = base();
        let t = Targets { cpu_only: Some(0.2), sharing: Some(0.5), ..Targets::default() };
        assert_eq!(derive(&b, &t, &[], &[], 1).unwrap(), derive(&b, &t, &[], &[], 1).unwrap());
        assert_ne!(derive(&b, &t, &[], &[], 1).unwrap(), derive(&b, &t, &[], &[], 2).unwrap());
        let bad = Targets { sharing: Some(1.5), ..Targets::default() };
        assert!(derive(&b, &bad, &[], &[], 1).unwrap_err().to_string().contains("sharing"));
        let bad = Targets { sharing: Some(0.7), multi_gpu: Some(0.5), ..Targets::default() };
        assert!(matches!(derive(&b, &bad, &[], &[], 1), Err(VariantError::Overcommitted { .. })));
        let spec = Targets { model_constrained: Some(0.5), ..Targets::default() };
        assert!(matches!(derive(&b, &spec, &[], &[], 1), Err(VariantError::NoSpec(_))));
    }
}
