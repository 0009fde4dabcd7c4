//! The GPU assignment gpuplane writes on a pod before binding it, and reads back from bound pods:
//! annotation `gpuplane.io/gpu-assignment` with comma-separated `index:milli` pairs, such as `3:250`
//! for a quarter of GPU 3 or `0:1000,1:1000` for two whole GPUs.

use gpuplane_core::{MAX_GPUS_PER_NODE, MILLI_PER_GPU};
use gpuplane_place::GpuShare;
use thiserror::Error;

/// The annotation key.
pub const ASSIGNMENT_ANNOTATION: &str = "gpuplane.io/gpu-assignment";

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
}
