//! Launcher for kernels/dropout.cu: `x` with the elements Philox drops zeroed and the rest scaled by
//! 1 / (1 - p); the mask is `crate::philox::keep_mask(seed, stream, n, drop_threshold(p))`, bit for bit.
//! The backward applies the same (seed, stream) to the gradient.

use super::element::{kernel, GpuFloat};
use super::gpu::{DeviceBuffer, Gpu};
use super::launch::{config, grid_for, launch};
use crate::kernels::abi::RETRO_ELEMENTWISE_BLOCK;
use crate::Result;

pub fn apply<E: GpuFloat>(gpu: &Gpu, x: &DeviceBuffer<E>, seed: u64, stream: u64, p: f64) -> Result<DeviceBuffer<E>> {
    crate::ensure!((0.0..1.0).contains(&p), "dropout probability {p} is not in [0, 1)");
    let out = gpu.alloc::<E>(x.len())?;
    if x.is_empty() {
        return Ok(out);
    }
    let n = x.len() as u64;
    let (threshold, scale) = (crate::philox::drop_threshold(p), (1.0 / (1.0 - p)) as f32);
    let cfg = config((grid_for(n.div_ceil(4), RETRO_ELEMENTWISE_BLOCK), 1, 1), RETRO_ELEMENTWISE_BLOCK, 0);
    // SAFETY: argument list of dropout_{bf16,f32}; out and x hold n elements.
    unsafe {
        launch(
            gpu,
            "dropout",
            &kernel::<E>("dropout"),
            cfg,
            &[&out.ptr(), &x.ptr(), &n, &seed, &stream, &threshold, &scale],
        )?
    };
    Ok(out)
}
