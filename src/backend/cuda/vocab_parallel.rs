//! Launchers for kernels/vocab_parallel.cu: the three passes of the vocab-parallel cross-entropy over a
//! rank's slice of the logits. The caller (ops/parallel.rs) all-reduces the row maxima (max) after the
//! first and the row sums (sum) after the second over the tensor-parallel ranks.

use super::element::{kernel, GpuFloat};
use super::gpu::{DeviceBuffer, Gpu};
use super::launch::{config, launch};
use crate::kernels::abi::RETRO_CE_BLOCK;
use crate::Result;

fn rows_of<E>(logits: &DeviceBuffer<E>, classes: usize, targets: Option<&DeviceBuffer<i32>>) -> Result<usize> {
    crate::ensure!(
        classes % 8 == 0 && classes > 0,
        "vocab-parallel cross-entropy on the GPU needs a slice of classes that is a multiple of 8, not {classes}"
    );
    let rows = logits.len() / classes;
    crate::ensure!(
        rows * classes == logits.len() && rows > 0 && targets.is_none_or(|t| t.len() == rows),
        "vocab-parallel cross-entropy: {} logits, {:?} targets, {classes} classes",
        logits.len(),
        targets.map(|t| t.len())
    );
    Ok(rows)
}

fn per_row(rows: usize) -> cudarc::driver::LaunchConfig {
    config((rows as u32, 1, 1), RETRO_CE_BLOCK, 0)
}

/// Each row's maximum of this rank's logits [rows, classes].
pub fn row_max<E: GpuFloat>(gpu: &Gpu, logits: &DeviceBuffer<E>, classes: usize) -> Result<DeviceBuffer<f32>> {
    let rows = rows_of(logits, classes, None)?;
    let max = gpu.alloc::<f32>(rows)?;
    let c = classes as i32;
    // SAFETY: argument list of vocab_ce_row_max_{bf16,f32}; one block per row, `max` holds rows.
    unsafe {
        launch(
            gpu,
            "vocab_parallel",
            &kernel::<E>("vocab_ce_row_max"),
            per_row(rows),
            &[&logits.ptr(), &c, &max.ptr()],
        )?
    };
    Ok(max)
}

/// [sum of exp(z - max) per row | the target's logit per row (0 where `targets` is -1)]: 2 x rows.
pub fn row_sums<E: GpuFloat>(
    gpu: &Gpu,
    logits: &DeviceBuffer<E>,
    classes: usize,
    max: &DeviceBuffer<f32>,
    targets: &DeviceBuffer<i32>,
) -> Result<DeviceBuffer<f32>> {
    let rows = rows_of(logits, classes, Some(targets))?;
    crate::ensure!(max.len() == rows, "vocab-parallel cross-entropy: {} maxima for {rows} rows", max.len());
    let sums = gpu.alloc::<f32>(2 * rows)?;
    let c = classes as i32;
    // SAFETY: argument list of vocab_ce_row_sums_{bf16,f32}; targets are -1 or below `classes`
    // (`cross_entropy::targets` checked them); `sums` holds 2 x rows.
    unsafe {
        launch(
            gpu,
            "vocab_parallel",
            &kernel::<E>("vocab_ce_row_sums"),
            per_row(rows),
            &[&logits.ptr(), &c, &max.ptr(), &targets.ptr(), &sums.ptr()],
        )?
    };
    Ok(sums)
}

/// Per-row losses (log-sum-exp minus the target's logit, from the group's `max` and `sums`) and the
/// gradient of `grad_scale` x their sum with respect to this rank's logits.
pub fn loss_and_grad<E: GpuFloat>(
    gpu: &Gpu,
    logits: &DeviceBuffer<E>,
    classes: usize,
    max: &DeviceBuffer<f32>,
    sums: &DeviceBuffer<f32>,
    targets: &DeviceBuffer<i32>,
    grad_scale: f32,
) -> Result<(DeviceBuffer<f32>, DeviceBuffer<E>)> {
    let rows = rows_of(logits, classes, Some(targets))?;
    crate::ensure!(
        max.len() == rows && sums.len() == 2 * rows,
        "vocab-parallel cross-entropy: {} maxima and {} sums for {rows} rows",
        max.len(),
        sums.len()
    );
    let (losses, dz) = (gpu.alloc::<f32>(rows)?, gpu.alloc::<E>(logits.len())?);
    let c = classes as i32;
    // SAFETY: argument list of vocab_ce_loss_grad_{bf16,f32}; as `row_sums`, `dz` shaped as the logits.
    unsafe {
        launch(
            gpu,
            "vocab_parallel",
            &kernel::<E>("vocab_ce_loss_grad"),
            per_row(rows),
            &[&logits.ptr(), &c, &max.ptr(), &sums.ptr(), &targets.ptr(), &grad_scale, &losses.ptr(), &dz.ptr()],
        )?
    };
    Ok((losses, dz))
}
