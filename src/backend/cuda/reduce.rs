//! Launchers for kernels/reduce.cu: deterministic column sums (bias and LayerNorm parameter gradients).

use super::element::{kernel, GpuFloat};
use super::gpu::{DeviceBuffer, Gpu};
use super::launch::{config, launch};
use crate::kernels::abi::{RETRO_COLSUM_BLOCK, RETRO_COLSUM_ROWS};
use crate::Result;

/// `out[c] += sum_p partials[p][c]`.
pub fn add_partials(
    gpu: &Gpu,
    out: &DeviceBuffer<f32>,
    partials: &DeviceBuffer<f32>,
    parts: usize,
    d: usize,
) -> Result<()> {
    crate::ensure!(
        out.len() == d && partials.len() >= parts * d,
        "column sum: {} partials of {d} into {}",
        parts,
        out.len()
    );
    let (p, dd) = (parts as i32, d as i32);
    let blocks = d.div_ceil(RETRO_COLSUM_BLOCK as usize) as u32;
    // SAFETY: argument list of column_sum_partials_f32; sizes checked above.
    unsafe {
        launch(
            gpu,
            "reduce",
            "add_column_partials",
            config((blocks, 1, 1), RETRO_COLSUM_BLOCK, 0),
            &[&out.ptr(), &partials.ptr(), &p, &dd],
        )
    }
}

/// `out[c] += sum_r x[r][c]` for bf16 `x` of rows of `d` (a bias gradient).
pub fn add_column_sums<E: GpuFloat>(gpu: &Gpu, out: &DeviceBuffer<f32>, x: &DeviceBuffer<E>, d: usize) -> Result<()> {
    let rows = x.len() / d.max(1);
    crate::ensure!(
        rows * d == x.len() && out.len() == d,
        "column sum of {} elements into {} columns",
        x.len(),
        out.len()
    );
    let parts = rows.div_ceil(RETRO_COLSUM_ROWS as usize).max(1);
    let partials = gpu.alloc::<f32>(parts * d)?;
    let (r, dd) = (rows as i32, d as i32);
    let blocks = d.div_ceil(RETRO_COLSUM_BLOCK as usize) as u32;
    // SAFETY: argument list of column_sum_{bf16,f32}_partials; partials hold `parts` rows of d.
    unsafe {
        launch(
            gpu,
            "reduce",
            &kernel::<E>("column_sum_partials"),
            config((blocks, parts as u32, 1), RETRO_COLSUM_BLOCK, 0),
            &[&partials.ptr(), &x.ptr(), &r, &dd],
        )?;
    }
    add_partials(gpu, out, &partials, parts, d)
}
