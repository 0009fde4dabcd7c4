//! GPU discovery through NVML: the node's GPUs with UUID, model and memory, read from the driver when
//! it is there. NVML is loaded at run time (`libnvidia-ml.so`), so the same binary runs on nodes and
//! machines without NVIDIA GPUs, where discovery says why it failed and the inventory file is used.

use nvml_wrapper::Nvml;

use crate::DeviceError;
use crate::inventory::Gpu;

/// NVML_DEVICE_MIG_ENABLE.
const MIG_ENABLED: u32 = 1;

/// The node's GPUs in NVML index order, or why NVML could not list them.
pub fn discover() -> Result<Vec<Gpu>, DeviceError> {
    let fail = |what: &str, e: nvml_wrapper::error::NvmlError| DeviceError::Nvml(format!("{what}: {e}"));
    let nvml = Nvml::init().map_err(|e| fail("init", e))?;
    let count = nvml.device_count().map_err(|e| fail("device count", e))?;
    if count == 0 || count > 8 {
        return Err(DeviceError::Nvml(format!("reports {count} GPUs; expected 1 to 8")));
    }
    (0..count)
        .map(|i| {
            let device = nvml.device_by_index(i).map_err(|e| fail("device", e))?;
            Ok(Gpu {
                index: u8::try_from(i).unwrap_or(u8::MAX),
                uuid: device.uuid().map_err(|e| fail("uuid", e))?,
                model: label_value(&device.name().map_err(|e| fail("name", e))?),
                memory_mib: device.memory_info().map_err(|e| fail("memory", e))?.total >> 20,
                // GPUs before Ampere answer NotSupported: no MIG.
                mig_enabled: device.mig_mode().is_ok_and(|m| m.current == MIG_ENABLED),
            })
        })
        .collect()
}

/// Health of the node's GPUs as NVML sees them: a GPU whose memory cannot be read (fallen off the bus,
/// lost, in an error state) is unhealthy. Polled; the plugin's ListAndWatch stream carries changes.
pub struct HealthProbe {
    nvml: Nvml,
}

impl HealthProbe {
    /// Opens NVML, or says why it could not.
    pub fn open() -> Result<Self, DeviceError> {
        Ok(HealthProbe { nvml: Nvml::init().map_err(|e| DeviceError::Nvml(format!("init: {e}")))? })
    }

    /// Whether each of the first `count` GPUs answers.
    pub fn check(&self, count: usize) -> Vec<bool> {
        (0..count)
            .map(|i| {
                u32::try_from(i)
                    .ok()
                    .and_then(|i| self.nvml.device_by_index(i).ok())
                    .is_some_and(|d| d.memory_info().is_ok())
            })
            .collect()
    }
}

/// A GPU product name as a label value: letters, digits, `-`, `_` and `.`, at most 63 characters,
/// without the vendor prefix ("NVIDIA A100-SXM4-40GB" → "A100-SXM4-40GB").
pub fn label_value(name: &str) -> String {
    let trimmed = name.trim().trim_start_matches("NVIDIA").trim();
    let mut value: String = trimmed
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '-' })
        .collect();
    value.truncate(63);
    value.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn product_names_become_label_values() {
        assert_eq!(label_value("NVIDIA A100-SXM4-40GB"), "A100-SXM4-40GB");
        assert_eq!(label_value("Tesla T4"), "Tesla-T4");
        assert_eq!(label_value("NVIDIA H100 80GB HBM3"), "H100-80GB-HBM3");
        assert_eq!(label_value(&"x".repeat(80)).len(), 63);
    }

    #[test]
    fn without_a_driver_discovery_says_nvml_failed() {
        if std::path::Path::new("/dev/nvidiactl").exists() {
            return; // A machine with a driver: discovery may succeed.
        }
        let err = discover().unwrap_err().to_string();
        assert!(err.contains("NVML"), "{err}");
    }
}
