//! Turning a trace into the arrival sequence of one run, with the FGD paper's protocol: pods sorted by
//! name, shuffled with the run's seed, then inflated (or trimmed) until their GPU requests reach
//! `tune` × the cluster's GPU capacity.

use gpuplane_core::Pod;
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

/// Builds the arrival order for one seed.
///
/// Inflation clones uniformly random pods of the original trace (with replacement) and appends them
/// while the total stays at most `tune` × capacity. As in the reference simulator, the stop check adds
/// only the clone's per-GPU milli, so the last multi-GPU clone may overshoot slightly. Trimming removes
/// uniformly random pods until the total is at most the target.
pub fn arrivals(trace: &[Pod], tune: f64, capacity_gpu_milli: u64, seed: u64) -> Vec<Pod> {
    let mut by_name: Vec<&Pod> = trace.iter().collect();
    by_name.sort_by(|a, b| a.name.cmp(&b.name));
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut order: Vec<Pod> = by_name.iter().map(|p| (*p).clone()).collect();
    // Fisher–Yates, back to front.
    for i in (1..order.len()).rev() {
        let j = rng.random_range(0..=i);
        order.swap(i, j);
    }
    if tune <= 0.0 || trace.is_empty() {
        return order;
    }
    let target = tune * capacity_gpu_milli as f64;
    let mut total: u64 = order.iter().map(|p| u64::from(p.gpu.total_milli())).sum();
    if (total as f64) < target {
        let mut clone_no = 0usize;
        loop {
            let original = by_name[rng.random_range(0..by_name.len())];
            if (total + u64::from(original.gpu.milli_per_gpu)) as f64 > target {
                break;
            }
            total += u64::from(original.gpu.total_milli());
            let mut clone = original.clone();
            clone.name = format!("{}-tuned-{clone_no}", original.name);
            clone_no += 1;
            order.push(clone);
        }
    } else {
        // Remove uniformly random pods until the total fits; marking them keeps this linear.
        let mut remaining: Vec<usize> = (0..order.len()).collect();
        let mut removed = vec![false; order.len()];
        while total as f64 > target && !remaining.is_empty() {
            let i = remaining.swap_remove(rng.random_range(0..remaining.len()));
            removed[i] = true;
            total -= u64::from(order[i].gpu.total_milli());
        }
        let mut i = 0;
        order.retain(|_| {
            i += 1;
            !removed[i - 1]
        });
    }
    order
}

/// The order the reference simulator breaks ties in for one seed: it prefixes every node name with
/// `rand.Perm(n)[i]` (node `i` in name order) and then picks the smallest name. Returns each node's rank
/// (0 wins), for nodes given in any order; drawn from its own stream so it does not move the arrivals.
pub fn shuffled_name_rank(names: &[&str], seed: u64) -> Vec<u32> {
    let mut by_name: Vec<usize> = (0..names.len()).collect();
    by_name.sort_by(|&a, &b| names[a].cmp(names[b]));
    let mut perm: Vec<u32> = (0..names.len() as u32).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6e6f_6465_6f72_6472);
    for i in (1..perm.len()).rev() {
        let j = rng.random_range(0..=i);
        perm.swap(i, j);
    }
    let mut rank = vec![0u32; names.len()];
    for (i, &id) in by_name.iter().enumerate() {
        rank[id] = perm[i];
    }
    rank
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpuplane_core::GpuRequest;

    fn trace() -> Vec<Pod> {
        (0..100)
            .map(|i| Pod::with_requests(format!("p{i:03}"), 1000, 0, GpuRequest { count: 1, milli_per_gpu: 500 }))
            .collect()
    }

    #[test]
    fn inflates_to_the_tune_ratio() {
        // 100 pods × 0.5 GPU = 50 GPUs requested; capacity 40 GPUs, tune 1.3 → 52 GPUs → 104 pods.
        let a = arrivals(&trace(), 1.3, 40_000, 42);
        assert_eq!(a.len(), 104);
        assert!(a[100..].iter().all(|p| p.name.contains("-tuned-")));
    }

    #[test]
    fn trims_when_the_trace_is_larger() {
        let a = arrivals(&trace(), 1.0, 40_000, 42);
        assert_eq!(a.len(), 80);
    }

    #[test]
    fn shuffled_name_rank_is_a_seeded_permutation() {
        let names = ["b", "a", "d", "c", "e"];
        let rank = shuffled_name_rank(&names, 1);
        let mut sorted = rank.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, vec![0, 1, 2, 3, 4]);
        assert_eq!(rank, shuffled_name_rank(&names, 1));
        assert!((2..20).any(|s| shuffled_name_rank(&names, s) != rank));
        // The rank follows the name, not the position the node is given in.
        let swapped = ["a", "b", "d", "c", "e"];
        let r2 = shuffled_name_rank(&swapped, 1);
        assert_eq!((r2[0], r2[1]), (rank[1], rank[0]));
    }

    #[test]
    fn trimming_a_million_pods_is_linear() {
        let big: Vec<Pod> = (0..1_000_000)
            .map(|i| Pod::with_requests(format!("p{i:07}"), 1000, 0, GpuRequest { count: 1, milli_per_gpu: 500 }))
            .collect();
        // 500,000 GPUs asked of a 6,212-GPU cluster at tune 1.3: 16,151 pods stay, in shuffled order.
        let a = arrivals(&big, 1.3, 6_212_000, 42);
        assert_eq!(a.len(), 16_151);
        assert!(a.windows(2).any(|w| w[0].name > w[1].name));
    }

    #[test]
    fn seeds_shuffle_differently_and_reproducibly() {
        let t = trace();
        assert_eq!(arrivals(&t, 0.0, 1, 1), arrivals(&t, 0.0, 1, 1));
        assert_ne!(arrivals(&t, 0.0, 1, 1), arrivals(&t, 0.0, 1, 2));
        let mut names: Vec<_> = arrivals(&t, 0.0, 1, 3).into_iter().map(|p| p.name).collect();
        names.sort();
        assert_eq!(names, t.iter().map(|p| p.name.clone()).collect::<Vec<_>>(), "a shuffle keeps every pod");
    }
}
