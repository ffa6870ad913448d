//! Launchers for kernels/residual.cu: residual adds and the CCA's row shifts.

use super::gpu::{DeviceBuffer, Gpu};
use super::launch::{config, grid_for, launch};
use crate::kernels::abi::RETRO_ELEMENTWISE_BLOCK;
use crate::Result;
use half::bf16;

fn grid(items: u64) -> cudarc::driver::LaunchConfig {
    config((grid_for(items, RETRO_ELEMENTWISE_BLOCK), 1, 1), RETRO_ELEMENTWISE_BLOCK, 0)
}

fn check(a: usize, b: usize) -> Result<()> {
    crate::ensure!(a == b && a % 8 == 0, "residual add of {a} and {b} elements (equal, multiples of 8)");
    Ok(())
}

pub fn add(gpu: &Gpu, a: &DeviceBuffer<bf16>, b: &DeviceBuffer<bf16>) -> Result<DeviceBuffer<bf16>> {
    check(a.len(), b.len())?;
    let out = gpu.alloc::<bf16>(a.len())?;
    let n = a.len() as u64;
    // SAFETY: argument list of add_bf16; equal lengths checked.
    unsafe { launch(gpu, "residual", "add_bf16", grid(n / 8), &[&out.ptr(), &a.ptr(), &b.ptr(), &n])? };
    Ok(out)
}

pub fn add_into(gpu: &Gpu, a: &DeviceBuffer<bf16>, b: &DeviceBuffer<bf16>) -> Result<()> {
    check(a.len(), b.len())?;
    let n = a.len() as u64;
    // SAFETY: argument list of add_into_bf16; equal lengths checked.
    unsafe { launch(gpu, "residual", "add_into_bf16", grid(n / 8), &[&a.ptr(), &b.ptr(), &n]) }
}

/// Per batch: `out[i] = x[i + shift]` for `i < rows_out` (zero outside `0..rows_in`).
pub fn shift_rows(
    gpu: &Gpu,
    x: &DeviceBuffer<bf16>,
    batch: usize,
    rows_in: usize,
    rows_out: usize,
    d: usize,
    shift: isize,
) -> Result<DeviceBuffer<bf16>> {
    crate::ensure!(
        d % 8 == 0 && x.len() == batch * rows_in * d,
        "shift_rows: {} elements are not {batch} x {rows_in} x {d}",
        x.len()
    );
    let out = gpu.alloc::<bf16>(batch * rows_out * d)?;
    let items = (batch * rows_out * d / 8) as u64;
    let (b, ri, ro, dd, s) = (batch as i32, rows_in as i32, rows_out as i32, d as i32, shift as i32);
    // SAFETY: argument list of shift_rows_bf16; sizes checked above.
    unsafe { launch(gpu, "residual", "shift_rows_bf16", grid(items), &[&out.ptr(), &x.ptr(), &b, &ri, &ro, &dd, &s])? };
    Ok(out)
}
