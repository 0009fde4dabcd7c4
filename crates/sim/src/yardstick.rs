//! Yardsticks for how well any policy packs GPU-sharing pods: the free milli two classic bin packers
//! leave on a relaxed problem — one pool of 1,000-milli GPUs, no nodes, no CPU. Offline first-fit
//! decreasing sees every pod in advance; online best fit takes them in arrival order, as a scheduler must.

use gpuplane_core::{MILLI_PER_GPU, Pod};

const GPU: usize = MILLI_PER_GPU as usize;

/// Free milli left when first-fit decreasing packs `shares` (milli per pod) onto whole GPUs: largest
/// first, each into the first opened GPU with room. Shares of a whole GPU or more are not sharing pods
/// and are skipped.
pub fn first_fit_decreasing_waste(shares: &[u16]) -> u64 {
    let mut sorted: Vec<usize> = sharing(shares).collect();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    let mut gpus: Vec<usize> = Vec::new();
    for m in sorted {
        match gpus.iter_mut().find(|free| **free >= m) {
            Some(free) => *free -= m,
            None => gpus.push(GPU - m),
        }
    }
    gpus.iter().map(|&free| free as u64).sum()
}

/// Free milli left when online best fit packs `shares` in the given order: each onto the opened GPU
/// with the least free milli that still fits it, or a fresh GPU. Shares of a whole GPU or more are
/// skipped.
pub fn online_best_fit_waste(shares: &[u16]) -> u64 {
    // gpus_with_free[f]: how many opened GPUs have exactly f milli free (a fresh GPU has GPU).
    let mut gpus_with_free = [0u64; GPU + 1];
    for m in sharing(shares) {
        let fit = (m..GPU).find(|&f| gpus_with_free[f] > 0).unwrap_or(GPU);
        if fit < GPU {
            gpus_with_free[fit] -= 1;
        }
        gpus_with_free[fit - m] += 1;
    }
    gpus_with_free.iter().enumerate().map(|(free, &count)| free as u64 * count).sum()
}

/// The GPU shares (milli) of the sharing pods among `arrivals` until their GPU demand reaches `capacity`
/// milli: the pods the policies see up to 100 % arrived workload.
pub fn arrived_shares(arrivals: &[Pod], capacity: u64) -> Vec<u16> {
    let mut arrived = 0u64;
    let mut shares = Vec::new();
    for pod in arrivals {
        arrived += u64::from(pod.gpu.total_milli());
        if arrived > capacity {
            break;
        }
        if pod.gpu.count == 1 && pod.gpu.milli_per_gpu < MILLI_PER_GPU as u16 {
            shares.push(pod.gpu.milli_per_gpu);
        }
    }
    shares
}

fn sharing(shares: &[u16]) -> impl Iterator<Item = usize> + '_ {
    shares.iter().map(|&m| usize::from(m)).filter(|&m| m < GPU)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn arrival_order_costs_online_best_fit_what_sorting_saves_offline() {
        // Small pods first: best fit puts both 400s on one GPU, and each 600 then needs its own.
        let small_first = [400, 400, 600, 600];
        assert_eq!(first_fit_decreasing_waste(&small_first), 0);
        assert_eq!(online_best_fit_waste(&small_first), 200 + 400 + 400);
        // Large pods first: best fit pairs them as well as the offline packer.
        assert_eq!(online_best_fit_waste(&[600, 600, 400, 400]), 0);
    }

    #[test]
    fn best_fit_takes_the_tightest_gpu_and_whole_gpus_are_skipped() {
        // After 700 and 500, a 300 goes to the 300-free GPU (tight), not the 500-free one.
        assert_eq!(online_best_fit_waste(&[700, 500, 300]), 500);
        assert_eq!(online_best_fit_waste(&[1000, 2000, 810]), 190);
        assert_eq!(first_fit_decreasing_waste(&[1000, 810]), 190);
        assert_eq!(first_fit_decreasing_waste(&[]), 0);
    }

    #[test]
    fn the_yardsticks_see_the_sharing_pods_that_arrive_before_capacity() {
        let pod = |count: u8, milli: u16| {
            gpuplane_core::Pod::with_requests(
                "p",
                1000,
                1 << 30,
                gpuplane_core::GpuRequest { count, milli_per_gpu: milli },
            )
        };
        // 2,000 milli of capacity: 500 + 1000 (whole, skipped) + 250 arrive; the next 500 would exceed it.
        let arrivals = [pod(1, 500), pod(1, 1000), pod(0, 0), pod(1, 250), pod(1, 500)];
        assert_eq!(arrived_shares(&arrivals, 2000), [500, 250]);
    }

    proptest! {
        /// Both leave whole GPUs' worth minus the packed milli, and never less than the fewest GPUs
        /// that could hold the pods at all would.
        #[test]
        fn waste_is_opened_gpus_minus_packed_milli(shares in proptest::collection::vec(1u16..1000, 0..200)) {
            let packed: u64 = shares.iter().map(|&m| u64::from(m)).sum();
            let fewest_gpus = packed.div_ceil(1000);
            for waste in [first_fit_decreasing_waste(&shares), online_best_fit_waste(&shares)] {
                prop_assert_eq!((waste + packed) % 1000, 0);
                prop_assert!(waste + packed >= fewest_gpus * 1000);
            }
        }
    }
}
