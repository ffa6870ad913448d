//! Launcher for kernels/random.cu: fill a buffer with N(0, std²) values from Philox4x32-10, the same
//! stream `crate::philox::normals` computes on the CPU (there in f64, here in f32 then rounded to `E`).

use super::element::{kernel, GpuFloat};
use super::gpu::{DeviceBuffer, Gpu};
use super::launch::{config, grid_for, launch};
use crate::kernels::abi::RETRO_ELEMENTWISE_BLOCK;
use crate::Result;

/// Overwrite `out` with values `0..out.len()` of `stream` under `seed`, times `std`.
pub fn fill_normal<E: GpuFloat>(gpu: &Gpu, out: &DeviceBuffer<E>, seed: u64, stream: u64, std: f32) -> Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    let n = out.len() as u64;
    let cfg = config((grid_for(n.div_ceil(4), RETRO_ELEMENTWISE_BLOCK), 1, 1), RETRO_ELEMENTWISE_BLOCK, 0);
    // SAFETY: argument list of fill_normal_{bf16,f32}; the kernel writes elements 0..n of `out`.
    unsafe { launch(gpu, "random", &kernel::<E>("fill_normal"), cfg, &[&out.ptr(), &n, &seed, &stream, &std]) }
}

/// A new buffer of `n` values (see `fill_normal`).
pub fn normal<E: GpuFloat>(gpu: &Gpu, n: usize, seed: u64, stream: u64, std: f32) -> Result<DeviceBuffer<E>> {
    let out = gpu.alloc::<E>(n)?;
    fill_normal(gpu, &out, seed, stream, std)?;
    Ok(out)
}
