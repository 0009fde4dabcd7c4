//! The GPU assignment gpuplane writes on a pod before binding it, and reads back from bound pods:
//! annotation `gpuplane.io/gpu-assignment` with comma-separated `index:milli` pairs, such as `3:250`
//! for a quarter of GPU 3 or `0:1000,1:1000` for two whole GPUs. When the node publishes its GPU UUIDs
//! (annotation `gpuplane.io/gpu-uuids`, in index order), the same shares are also written by UUID in
//! `gpuplane.io/gpu-assignment-uuids`, such as `GPU-5f3c…:250`, for device plugins that address GPUs so.

use crate::cluster::GpuShare;
use gpuplane_core::{MAX_GPUS_PER_NODE, MILLI_PER_GPU};
use thiserror::Error;

/// The annotation key.
pub const ASSIGNMENT_ANNOTATION: &str = "gpuplane.io/gpu-assignment";

/// The annotation with the same shares by GPU UUID.
pub const ASSIGNMENT_UUIDS_ANNOTATION: &str = "gpuplane.io/gpu-assignment-uuids";

/// The node annotation listing its GPU UUIDs in index order, comma-separated.
pub const NODE_GPU_UUIDS_ANNOTATION: &str = "gpuplane.io/gpu-uuids";

/// A malformed assignment annotation.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "annotation {ASSIGNMENT_ANNOTATION} is {0:?}; expected index:milli pairs such as \"0:500\" or \"0:1000,1:1000\""
)]
pub struct AssignmentError(pub String);

/// Writes shares as the annotation value.
pub fn format(shares: &[GpuShare]) -> String {
    shares.iter().map(|s| format!("{}:{}", s.index, s.milli)).collect::<Vec<_>>().join(",")
}

/// Writes shares by UUID; empty when a share's index has no UUID.
pub fn format_uuids(shares: &[GpuShare], uuids: &[String]) -> String {
    let named: Option<Vec<String>> =
        shares.iter().map(|s| uuids.get(usize::from(s.index)).map(|u| format!("{u}:{}", s.milli))).collect();
    named.map(|n| n.join(",")).unwrap_or_default()
}

/// Reads a node's UUID annotation: one non-empty, distinct UUID per GPU, or `None`.
pub fn parse_uuids(value: &str, gpu_count: u8) -> Option<Vec<String>> {
    let uuids: Vec<String> = value.split(',').map(|u| u.trim().to_owned()).collect();
    let distinct = uuids.iter().collect::<std::collections::HashSet<_>>().len() == uuids.len();
    (uuids.len() == usize::from(gpu_count) && distinct && uuids.iter().all(|u| !u.is_empty() && !u.contains(':')))
        .then_some(uuids)
}

/// Reads the annotation value; indices must be distinct and below 8, milli from 1 to 1000.
pub fn parse(value: &str) -> Result<Vec<GpuShare>, AssignmentError> {
    let bad = || AssignmentError(value.to_owned());
    let mut shares: Vec<GpuShare> = Vec::new();
    for part in value.split(',') {
        let (i, m) = part.trim().split_once(':').ok_or_else(bad)?;
        let index: u8 = i.trim().parse().map_err(|_| bad())?;
        let milli: u16 = m.trim().parse().map_err(|_| bad())?;
        if usize::from(index) >= MAX_GPUS_PER_NODE || milli == 0 || u32::from(milli) > MILLI_PER_GPU {
            return Err(bad());
        }
        if shares.iter().any(|s| s.index == index) {
            return Err(bad());
        }
        shares.push(GpuShare { index, milli });
    }
    Ok(shares)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let shares = vec![GpuShare { index: 0, milli: 1000 }, GpuShare { index: 3, milli: 1000 }];
        assert_eq!(format(&shares), "0:1000,3:1000");
        assert_eq!(parse("0:1000, 3:1000").unwrap(), shares);
        for bad in ["", "0", "0:0", "0:1001", "8:100", "0:100,0:100", "a:b", "0:100;1:100"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn uuids_name_the_same_shares() {
        let uuids = parse_uuids("GPU-aa, GPU-bb", 2).unwrap();
        let shares = vec![GpuShare { index: 1, milli: 250 }];
        assert_eq!(format_uuids(&shares, &uuids), "GPU-bb:250");
        assert_eq!(format_uuids(&[GpuShare { index: 2, milli: 1000 }], &uuids), "");
        assert_eq!(parse_uuids("GPU-aa", 2), None, "one per GPU");
        assert_eq!(parse_uuids("GPU-aa,GPU-aa", 2), None, "distinct");
        assert_eq!(parse_uuids("GPU-aa,", 2), None);
    }
}
