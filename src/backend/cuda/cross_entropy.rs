//! Launcher for kernels/cross_entropy.cu: fused softmax cross-entropy with the gradient in place.

use super::element::{kernel, GpuFloat};
use super::gpu::{DeviceBuffer, Gpu};
use super::launch::{config, launch};
use crate::kernels::abi::RETRO_CE_BLOCK;
use crate::Result;

/// Per-row losses of `logits` [rows, classes] against `targets` (-1: ignored row); `logits` is
/// overwritten with `dloss/dlogits` for a total loss whose derivative per row loss is `grad_scale`.
pub fn forward_backward<E: GpuFloat>(
    gpu: &Gpu,
    logits: &mut DeviceBuffer<E>,
    targets: &DeviceBuffer<i32>,
    classes: usize,
    grad_scale: f32,
) -> Result<DeviceBuffer<f32>> {
    crate::ensure!(
        classes % 8 == 0 && classes > 0,
        "cross-entropy on the GPU needs a class count that is a multiple of 8, not {classes}"
    );
    let rows = logits.len() / classes;
    crate::ensure!(
        rows * classes == logits.len() && targets.len() == rows,
        "cross-entropy: {} logits, {} targets, {classes} classes",
        logits.len(),
        targets.len()
    );
    let losses = gpu.alloc::<f32>(rows)?;
    if rows == 0 {
        return Ok(losses);
    }
    let c = classes as i32;
    // SAFETY: argument list of softmax_cross_entropy_{bf16,f32}; one block per row; targets are < classes
    // (checked by the caller's data validation) or -1.
    unsafe {
        launch(
            gpu,
            "cross_entropy",
            &kernel::<E>("softmax_cross_entropy"),
            config((rows as u32, 1, 1), RETRO_CE_BLOCK, 0),
            &[&logits.ptr(), &losses.ptr(), &targets.ptr(), &c, &grad_scale],
        )?;
    }
    Ok(losses)
}

/// Upload targets after checking each is -1 (ignored) or a class index: the kernel reads the logit at
/// the target, so a bad one must be an error here.
pub fn targets(gpu: &Gpu, targets: &[i32], classes: usize) -> Result<DeviceBuffer<i32>> {
    if let Some((i, &t)) = targets.iter().enumerate().find(|(_, &t)| t < -1 || t >= classes as i32) {
        crate::bail!("target {t} of row {i} is neither -1 (ignored) nor a class below {classes}");
    }
    gpu.upload(targets)
}
