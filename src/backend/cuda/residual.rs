//! Launchers for kernels/residual.cu: residual adds, bias rows, the CCA's row shifts, scaling.

use super::element::{kernel, GpuFloat};
use super::gpu::{DeviceBuffer, Gpu};
use super::launch::{config, grid_for, launch};
use crate::kernels::abi::RETRO_ELEMENTWISE_BLOCK;
use crate::Result;

fn grid(items: u64) -> cudarc::driver::LaunchConfig {
    config((grid_for(items, RETRO_ELEMENTWISE_BLOCK), 1, 1), RETRO_ELEMENTWISE_BLOCK, 0)
}

fn check(a: usize, b: usize) -> Result<()> {
    crate::ensure!(a == b && a % 8 == 0, "residual add of {a} and {b} elements (equal, multiples of 8)");
    Ok(())
}

pub fn add<E: GpuFloat>(gpu: &Gpu, a: &DeviceBuffer<E>, b: &DeviceBuffer<E>) -> Result<DeviceBuffer<E>> {
    check(a.len(), b.len())?;
    let out = gpu.alloc::<E>(a.len())?;
    let n = a.len() as u64;
    // SAFETY: argument list of add_{bf16,f32}; equal lengths checked.
    unsafe { launch(gpu, "residual", &kernel::<E>("add"), grid(n / 8), &[&out.ptr(), &a.ptr(), &b.ptr(), &n])? };
    Ok(out)
}

pub fn add_into<E: GpuFloat>(gpu: &Gpu, a: &DeviceBuffer<E>, b: &DeviceBuffer<E>) -> Result<()> {
    check(a.len(), b.len())?;
    let n = a.len() as u64;
    // SAFETY: argument list of add_into_{bf16,f32}; equal lengths checked.
    unsafe { launch(gpu, "residual", &kernel::<E>("add_into"), grid(n / 8), &[&a.ptr(), &b.ptr(), &n]) }
}

/// `out[r] = x[r] + bias` for every row of `bias.len()` elements (a multiple of 8).
pub fn add_bias<E: GpuFloat>(gpu: &Gpu, x: &DeviceBuffer<E>, bias: &DeviceBuffer<E>) -> Result<DeviceBuffer<E>> {
    let d = bias.len();
    crate::ensure!(
        d % 8 == 0 && d > 0 && x.len() % d == 0,
        "add_bias: {} elements are not rows of the bias's {d} (a multiple of 8)",
        x.len()
    );
    let out = gpu.alloc::<E>(x.len())?;
    let (n, dd) = (x.len() as u64, d as i32);
    // SAFETY: argument list of add_bias_{bf16,f32}; x and out hold n elements, rows of d.
    unsafe {
        launch(gpu, "residual", &kernel::<E>("add_bias"), grid(n / 8), &[&out.ptr(), &x.ptr(), &bias.ptr(), &n, &dd])?
    };
    Ok(out)
}

/// Per batch: `out[i] = x[i + shift]` for `i < rows_out` (zero outside `0..rows_in`).
pub fn shift_rows<E: GpuFloat>(
    gpu: &Gpu,
    x: &DeviceBuffer<E>,
    batch: usize,
    rows_in: usize,
    rows_out: usize,
    d: usize,
    shift: isize,
) -> Result<DeviceBuffer<E>> {
    crate::ensure!(
        d % 8 == 0 && x.len() == batch * rows_in * d,
        "shift_rows: {} elements are not {batch} x {rows_in} x {d}",
        x.len()
    );
    let out = gpu.alloc::<E>(batch * rows_out * d)?;
    let items = (batch * rows_out * d / 8) as u64;
    let (b, ri, ro, dd, s) = (batch as i32, rows_in as i32, rows_out as i32, d as i32, shift as i32);
    // SAFETY: argument list of shift_rows_{bf16,f32}; sizes checked above.
    unsafe {
        launch(
            gpu,
            "residual",
            &kernel::<E>("shift_rows"),
            grid(items),
            &[&out.ptr(), &x.ptr(), &b, &ri, &ro, &dd, &s],
        )?
    };
    Ok(out)
}

/// `out = x * factor * by[0]` (`by`: a device scalar, e.g. a loss's incoming gradient), or `x * factor`.
pub fn scale<E: GpuFloat>(
    gpu: &Gpu,
    x: &DeviceBuffer<E>,
    factor: f32,
    by: Option<&DeviceBuffer<f32>>,
) -> Result<DeviceBuffer<E>> {
    if let Some(by) = by {
        crate::ensure!(by.len() == 1, "scale: the device factor must be one element, not {}", by.len());
    }
    let out = gpu.alloc::<E>(x.len())?;
    let n = x.len() as u64;
    let by_ptr: u64 = by.map_or(0, |b| b.ptr());
    // SAFETY: argument list of scale_{bf16,f32}; out and x hold n elements, by is null or one f32.
    unsafe { launch(gpu, "residual", &kernel::<E>("scale"), grid(n), &[&out.ptr(), &x.ptr(), &factor, &by_ptr, &n])? };
    Ok(out)
}
