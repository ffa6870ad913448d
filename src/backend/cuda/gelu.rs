//! Launchers for kernels/gelu.cu: (bias +) tanh-GELU forward and backward (the bias gradient included
//! when there is a bias).

use super::element::{kernel, GpuFloat};
use super::gpu::{DeviceBuffer, Gpu};
use super::launch::{config, grid_for, launch};
use super::reduce;
use crate::kernels::abi::RETRO_ELEMENTWISE_BLOCK;
use crate::Result;

fn check(x: usize, bias: Option<usize>, d: usize) -> Result<()> {
    crate::ensure!(d % 8 == 0 && d > 0 && x % d == 0, "bias-GELU: {x} elements in rows of {d} (a multiple of 8)");
    if let Some(bias) = bias {
        crate::ensure!(bias == d, "bias-GELU: bias of {bias} for rows of {d}");
    }
    Ok(())
}

/// `y = gelu(x + bias)` over rows of `d` (`gelu(x)` without a bias).
pub fn forward<E: GpuFloat>(
    gpu: &Gpu,
    x: &DeviceBuffer<E>,
    bias: Option<&DeviceBuffer<f32>>,
    d: usize,
) -> Result<DeviceBuffer<E>> {
    check(x.len(), bias.map(DeviceBuffer::len), d)?;
    let bias: u64 = bias.map_or(0, DeviceBuffer::ptr);
    let y = gpu.alloc::<E>(x.len())?;
    let (n, dd) = (x.len() as u64, d as i32);
    // SAFETY: argument list of bias_gelu_forward_{bf16,f32}.
    unsafe {
        launch(
            gpu,
            "gelu",
            &kernel::<E>("bias_gelu_forward"),
            config((grid_for(n / 8, RETRO_ELEMENTWISE_BLOCK), 1, 1), RETRO_ELEMENTWISE_BLOCK, 0),
            &[&y.ptr(), &x.ptr(), &bias, &n, &dd],
        )?;
    }
    Ok(y)
}

/// `du = dy * gelu'(x + bias)`, and with a bias `dbias += column sums of du`: `bias` is `Some((bias,
/// dbias))` or None for a plain GELU.
pub fn backward<E: GpuFloat>(
    gpu: &Gpu,
    dy: &DeviceBuffer<E>,
    x: &DeviceBuffer<E>,
    bias: Option<(&DeviceBuffer<f32>, &DeviceBuffer<f32>)>,
    d: usize,
) -> Result<DeviceBuffer<E>> {
    check(x.len(), bias.map(|(b, _)| b.len()), d)?;
    crate::ensure!(
        dy.len() == x.len() && bias.is_none_or(|(_, db)| db.len() == d),
        "bias-GELU backward: shape mismatch"
    );
    let bias_ptr: u64 = bias.map_or(0, |(b, _)| b.ptr());
    let du = gpu.alloc::<E>(x.len())?;
    let (n, dd) = (x.len() as u64, d as i32);
    // SAFETY: argument list of bias_gelu_backward_{bf16,f32}.
    unsafe {
        launch(
            gpu,
            "gelu",
            &kernel::<E>("bias_gelu_backward"),
            config((grid_for(n / 8, RETRO_ELEMENTWISE_BLOCK), 1, 1), RETRO_ELEMENTWISE_BLOCK, 0),
            &[&du.ptr(), &dy.ptr(), &x.ptr(), &bias_ptr, &n, &dd],
        )?;
    }
    if let Some((_, dbias)) = bias {
        reduce::add_column_sums(gpu, dbias, &du, d)?;
    }
    Ok(du)
}
