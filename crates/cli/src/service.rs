//! Set-up shared by the commands that run in a cluster (`extender`, `scheduler`, `webhook`): logging
//! and the target workload FGD falls back to when the cluster's pods ask for no GPU yet.

use anyhow::Result;
use gpuplane_place::{ModelSet, PodRequest, TargetWorkload};

use crate::input;

/// Logs to standard error as `text` or `json`, at the level in `RUST_LOG` (default info).
pub fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "json" {
        logs.json().init();
    } else {
        logs.init();
    }
}

/// The target workload of the bundled openb trace.
pub fn fallback_target() -> Result<TargetWorkload> {
    let (_, trace) = input::trace(None)?;
    let requests: Vec<PodRequest> = trace
        .iter()
        .map(|p| PodRequest {
            cpu_milli: p.cpu_milli,
            memory_bytes: p.memory_bytes,
            gpu: p.gpu,
            models: ModelSet::Any,
            priority: p.priority,
            constraints: None,
        })
        .collect();
    Ok(TargetWorkload::from_requests(&requests, 0.95)?)
}

/// A multi-threaded Tokio runtime.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}
