//! Driver and device discovery (safe to call on machines without a GPU or driver).

use crate::{Error, Result};
use cudarc::driver::{sys, CudaContext};
use std::sync::Arc;

/// True when libcuda can be loaded. Creating a context without it would panic, so check this first.
pub fn driver_present() -> bool {
    // SAFETY: only probes whether the shared library can be opened.
    unsafe { sys::is_culib_present() }
}

#[derive(Debug, Clone)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub multiprocessors: i32,
    pub total_memory_bytes: usize,
}

pub fn cuda_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::msg(format!("CUDA {what}: {e}"))
}

/// A context on device `ordinal` (the primary context; one per process).
pub fn context(ordinal: usize) -> Result<Arc<CudaContext>> {
    if !driver_present() {
        crate::bail!("no CUDA driver (libcuda.so) on this machine");
    }
    CudaContext::new(ordinal).map_err(|e| cuda_error(&format!("context on device {ordinal}"), e))
}

/// Every visible device; empty when there is no driver or no device.
pub fn devices() -> Result<Vec<DeviceInfo>> {
    if !driver_present() {
        return Ok(Vec::new());
    }
    let count = CudaContext::device_count().map_err(|e| cuda_error("device count", e))?;
    (0..count as usize)
        .map(|ordinal| {
            let ctx = context(ordinal)?;
            Ok(DeviceInfo {
                ordinal,
                name: ctx.name().map_err(|e| cuda_error("device name", e))?,
                compute_capability: ctx.compute_capability().map_err(|e| cuda_error("compute capability", e))?,
                multiprocessors: ctx
                    .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
                    .map_err(|e| cuda_error("SM count", e))?,
                total_memory_bytes: ctx.total_mem().map_err(|e| cuda_error("memory size", e))?,
            })
        })
        .collect()
}
