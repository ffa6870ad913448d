//! Launchers for kernels/gelu.cu: bias + tanh-GELU forward and backward (bias gradient included).

use super::element::{kernel, GpuFloat};
use super::gpu::{DeviceBuffer, Gpu};
use super::launch::{config, grid_for, launch};
use super::reduce;
use crate::kernels::abi::RETRO_ELEMENTWISE_BLOCK;
use crate::Result;

fn check(x: usize, bias: usize, d: usize) -> Result<()> {
    crate::ensure!(d % 8 == 0 && d > 0 && x % d == 0, "bias-GELU: {x} elements in rows of {d} (a multiple of 8)");
    crate::ensure!(bias == d, "bias-GELU: bias of {bias} for rows of {d}");
    Ok(())
}

/// `y = gelu(x + bias)` over rows of `d`.
pub fn forward<E: GpuFloat>(
    gpu: &Gpu,
    x: &DeviceBuffer<E>,
    bias: &DeviceBuffer<f32>,
    d: usize,
) -> Result<DeviceBuffer<E>> {
    check(x.len(), bias.len(), d)?;
    let y = gpu.alloc::<E>(x.len())?;
    let (n, dd) = (x.len() as u64, d as i32);
    // SAFETY: argument list of bias_gelu_forward_{bf16,f32}.
    unsafe {
        launch(
            gpu,
            "gelu",
            &kernel::<E>("bias_gelu_forward"),
            config((grid_for(n / 8, RETRO_ELEMENTWISE_BLOCK), 1, 1), RETRO_ELEMENTWISE_BLOCK, 0),
            &[&y.ptr(), &x.ptr(), &bias.ptr(), &n, &dd],
        )?;
    }
    Ok(y)
}

/// `du = dy * gelu'(x + bias)`, and `dbias += column sums of du`.
pub fn backward<E: GpuFloat>(
    gpu: &Gpu,
    dy: &DeviceBuffer<E>,
    x: &DeviceBuffer<E>,
    bias: &DeviceBuffer<f32>,
    dbias: &DeviceBuffer<f32>,
    d: usize,
) -> Result<DeviceBuffer<E>> {
    check(x.len(), bias.len(), d)?;
    crate::ensure!(dy.len() == x.len() && dbias.len() == d, "bias-GELU backward: shape mismatch");
    let du = gpu.alloc::<E>(x.len())?;
    let (n, dd) = (x.len() as u64, d as i32);
    // SAFETY: argument list of bias_gelu_backward_{bf16,f32}.
    unsafe {
        launch(
            gpu,
            "gelu",
            &kernel::<E>("bias_gelu_backward"),
            config((grid_for(n / 8, RETRO_ELEMENTWISE_BLOCK), 1, 1), RETRO_ELEMENTWISE_BLOCK, 0),
            &[&du.ptr(), &dy.ptr(), &x.ptr(), &bias.ptr(), &n, &dd],
        )?;
    }
    reduce::add_column_sums(gpu, dbias, &du, d)?;
    Ok(du)
}
