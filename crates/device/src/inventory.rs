//! The node's GPUs: index, UUID, model and memory. Read from an inventory file (for nodes without NVML
//! and for tests), in the order the scheduler's assignment indices use:
//!
//! ```yaml
//! gpus:
//!   - {index: 0, uuid: GPU-5f3c0b55-0c1e-4b3a-9d63-0a0c2a1e7f10, model: A100, memory_mib: 40960}
//! ```
//!
//! `mig_enabled: true` marks a GPU in MIG mode.

use serde::Deserialize;

use crate::DeviceError;

/// One GPU of the node.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gpu {
    /// Index in the scheduler's assignment (`gpuplane.io/gpu-assignment`).
    pub index: u8,
    /// The driver's UUID (`GPU-…`), what `NVIDIA_VISIBLE_DEVICES` names.
    pub uuid: String,
    /// Model, as the node's `gpuplane.io/gpu-model` label gives it.
    pub model: String,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// MIG mode is on: the GPU is split into MIG instances, which milli-GPU shares cannot address; the
    /// plugin reports it unhealthy so that nothing is allocated on it.
    #[serde(default)]
    pub mig_enabled: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InventoryFile {
    gpus: Vec<Gpu>,
}

/// Reads an inventory file: 1 to 8 GPUs with indices 0, 1, … in order and distinct UUIDs.
pub fn read_inventory(source: &str, text: &str) -> Result<Vec<Gpu>, DeviceError> {
    let bad = |what: String| DeviceError::Inventory(format!("{source}: {what}"));
    let file: InventoryFile = serde_saphyr::from_str(text).map_err(|e| bad(e.to_string()))?;
    if file.gpus.is_empty() || file.gpus.len() > 8 {
        return Err(bad(format!("gpus: expected 1 to 8 GPUs, got {}", file.gpus.len())));
    }
    for (i, gpu) in file.gpus.iter().enumerate() {
        if usize::from(gpu.index) != i {
            return Err(bad(format!("gpus[{i}].index is {}; expected {i} (indices in order from 0)", gpu.index)));
        }
        if gpu.uuid.is_empty() || gpu.uuid.len() > 48 || gpu.uuid.contains([':', ',', ' ']) {
            return Err(bad(format!("gpus[{i}].uuid {:?} is not a GPU UUID such as GPU-5f3c…", gpu.uuid)));
        }
        if file.gpus[..i].iter().any(|g| g.uuid == gpu.uuid) {
            return Err(bad(format!("gpus[{i}].uuid {:?} appears twice", gpu.uuid)));
        }
        if gpu.memory_mib == 0 {
            return Err(bad(format!("gpus[{i}].memory_mib must be more than 0")));
        }
    }
    Ok(file.gpus)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reads_gpus_in_index_order_and_names_what_is_wrong() {
        let ok = "gpus:\n  - {index: 0, uuid: GPU-a, model: T4, memory_mib: 15360}\n  - {index: 1, uuid: GPU-b, model: T4, memory_mib: 15360}\n";
        let gpus = read_inventory("inv.yaml", ok).unwrap();
        assert_eq!(gpus.len(), 2);
        assert_eq!(gpus[1].uuid, "GPU-b");
        let err = |text: &str| read_inventory("inv.yaml", text).unwrap_err().to_string();
        assert!(err("gpus: []\n").contains("1 to 8"));
        assert!(err("gpus:\n  - {index: 1, uuid: GPU-a, model: T4, memory_mib: 1}\n").contains("gpus[0].index"));
        let twice = "gpus:\n  - {index: 0, uuid: GPU-a, model: T4, memory_mib: 1}\n  - {index: 1, uuid: GPU-a, model: T4, memory_mib: 1}\n";
        assert!(err(twice).contains("gpus[1].uuid"));
        assert!(err("gpus:\n  - {index: 0, uuid: 'GPU:a', model: T4, memory_mib: 1}\n").contains("gpus[0].uuid"));
        assert!(err("gpu: []\n").contains("inv.yaml"));
    }
}
