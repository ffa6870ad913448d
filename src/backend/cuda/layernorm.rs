//! Launchers for kernels/layernorm.cu: LayerNorm forward, fused residual-add + LayerNorm, backward.

use super::element::{kernel, GpuFloat};
use super::gpu::{DeviceBuffer, Gpu};
use super::launch::{config, launch};
use super::reduce;
use crate::kernels::abi::{RETRO_LN_BLOCK, RETRO_LN_MAX_GROUPS};
use crate::Result;

/// Per-row statistics saved for the backward.
pub struct Stats {
    pub mean: DeviceBuffer<f32>,
    pub rstd: DeviceBuffer<f32>,
}

fn check(rows: usize, d: usize, x: usize, gamma: usize) -> Result<()> {
    let max = (RETRO_LN_BLOCK * RETRO_LN_MAX_GROUPS * 8) as usize;
    crate::ensure!(
        d % 8 == 0 && d <= max,
        "layernorm on the GPU needs a width that is a multiple of 8 and at most {max}, not {d}"
    );
    crate::ensure!(
        x == rows * d && gamma == d,
        "layernorm: {x} elements are not {rows} rows of {d}, or gamma has {gamma}"
    );
    crate::ensure!(rows <= i32::MAX as usize, "layernorm: {rows} rows");
    Ok(())
}

/// `y = LN(x)` over rows of `d`.
pub fn forward<E: GpuFloat>(
    gpu: &Gpu,
    x: &DeviceBuffer<E>,
    gamma: &DeviceBuffer<f32>,
    beta: &DeviceBuffer<f32>,
    d: usize,
    eps: f32,
) -> Result<(DeviceBuffer<E>, Stats)> {
    let rows = x.len() / d.max(1);
    check(rows, d, x.len(), gamma.len())?;
    let y = gpu.alloc::<E>(x.len())?;
    let stats = Stats { mean: gpu.alloc(rows)?, rstd: gpu.alloc(rows)? };
    if rows == 0 {
        return Ok((y, stats));
    }
    let (r, dd) = (rows as i32, d as i32);
    // SAFETY: argument list of layernorm_forward_{bf16,f32}; buffers sized by `check`.
    unsafe {
        launch(
            gpu,
            "layernorm",
            &kernel::<E>("layernorm_forward"),
            config((rows as u32, 1, 1), RETRO_LN_BLOCK, 0),
            &[&y.ptr(), &stats.mean.ptr(), &stats.rstd.ptr(), &x.ptr(), &gamma.ptr(), &beta.ptr(), &r, &dd, &eps],
        )?;
    }
    Ok((y, stats))
}

/// `h = x + residual` and `y = LN(h)` in one pass. Returns (h, y, stats).
pub fn residual_forward<E: GpuFloat>(
    gpu: &Gpu,
    x: &DeviceBuffer<E>,
    residual: &DeviceBuffer<E>,
    gamma: &DeviceBuffer<f32>,
    beta: &DeviceBuffer<f32>,
    d: usize,
    eps: f32,
) -> Result<(DeviceBuffer<E>, DeviceBuffer<E>, Stats)> {
    let rows = x.len() / d.max(1);
    check(rows, d, x.len(), gamma.len())?;
    crate::ensure!(
        residual.len() == x.len(),
        "residual layernorm: x has {} elements, the residual {}",
        x.len(),
        residual.len()
    );
    let h = gpu.alloc::<E>(x.len())?;
    let y = gpu.alloc::<E>(x.len())?;
    let stats = Stats { mean: gpu.alloc(rows)?, rstd: gpu.alloc(rows)? };
    if rows == 0 {
        return Ok((h, y, stats));
    }
    let (r, dd) = (rows as i32, d as i32);
    // SAFETY: argument list of residual_layernorm_forward_{bf16,f32}; buffers sized by `check`.
    unsafe {
        launch(
            gpu,
            "layernorm",
            &kernel::<E>("residual_layernorm_forward"),
            config((rows as u32, 1, 1), RETRO_LN_BLOCK, 0),
            &[
                &h.ptr(),
                &y.ptr(),
                &stats.mean.ptr(),
                &stats.rstd.ptr(),
                &x.ptr(),
                &residual.ptr(),
                &gamma.ptr(),
                &beta.ptr(),
                &r,
                &dd,
                &eps,
            ],
        )?;
    }
    Ok((h, y, stats))
}

/// Blocks of the backward: each loops over rows and keeps its gamma / beta partials in registers.
fn backward_blocks(gpu: &Gpu, rows: usize) -> usize {
    let sms = gpu
        .ctx
        .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        .unwrap_or(132) as usize;
    rows.clamp(1, 4 * sms)
}

/// `dx`, and `dgamma += ...`, `dbeta += ...` (f32 accumulators, deterministic).
#[allow(clippy::too_many_arguments)]
pub fn backward<E: GpuFloat>(
    gpu: &Gpu,
    dy: &DeviceBuffer<E>,
    x: &DeviceBuffer<E>,
    stats: &Stats,
    gamma: &DeviceBuffer<f32>,
    dgamma: &DeviceBuffer<f32>,
    dbeta: &DeviceBuffer<f32>,
    d: usize,
) -> Result<DeviceBuffer<E>> {
    let rows = x.len() / d.max(1);
    check(rows, d, x.len(), gamma.len())?;
    crate::ensure!(dy.len() == x.len() && dgamma.len() == d && dbeta.len() == d, "layernorm backward: shape mismatch");
    let dx = gpu.alloc::<E>(x.len())?;
    if rows == 0 {
        return Ok(dx);
    }
    let blocks = backward_blocks(gpu, rows);
    let gp = gpu.alloc::<f32>(blocks * d)?;
    let bp = gpu.alloc::<f32>(blocks * d)?;
    let (r, dd) = (rows as i32, d as i32);
    // SAFETY: argument list of layernorm_backward_{bf16,f32}; partials hold `blocks` rows of d.
    unsafe {
        launch(
            gpu,
            "layernorm",
            &kernel::<E>("layernorm_backward"),
            config((blocks as u32, 1, 1), RETRO_LN_BLOCK, 0),
            &[
                &dx.ptr(),
                &gp.ptr(),
                &bp.ptr(),
                &dy.ptr(),
                &x.ptr(),
                &stats.mean.ptr(),
                &stats.rstd.ptr(),
                &gamma.ptr(),
                &r,
                &dd,
            ],
        )?;
    }
    reduce::add_partials(gpu, dgamma, &gp, blocks, d)?;
    reduce::add_partials(gpu, dbeta, &bp, blocks, d)?;
    Ok(dx)
}
