//! Launchers for kernels/adamw.cu: the deterministic sum of squares of a gradient arena, and the fused
//! AdamW update of a whole parameter arena in one launch, clipped on the device.

use super::gpu::{DeviceBuffer, Gpu};
use super::launch::{config, launch};
use crate::backend::cpu::adamw::Coefficients;
use crate::kernels::abi::{AdamwParams, RETRO_ADAMW_BLOCK, RETRO_SUMSQ_BLOCKS};
use crate::Result;
use cudarc::driver::DeviceRepr;
use half::bf16;

// SAFETY: AdamwParams is a plain C struct generated from bindings/adamw.h, passed by value.
unsafe impl DeviceRepr for AdamwParams {}

impl AdamwParams {
    /// Kernel parameters from the optimizer's per-step scalars (`c.decay_factor` is the decaying
    /// parameters'), over an arena of `n` elements whose first `decay_end` decay. Gradients are read
    /// times `grad_scale` and clipped to a global norm of `max_norm` (None: not clipped).
    pub fn new(c: &Coefficients, grad_scale: f64, max_norm: Option<f64>, n: usize, decay_end: usize) -> Self {
        Self {
            decay_factor: c.decay_factor as f32,
            one_minus_beta1: (1.0 - c.beta1) as f32,
            beta2: c.beta2 as f32,
            one_minus_beta2: (1.0 - c.beta2) as f32,
            eps: c.eps as f32,
            step_size: c.step_size as f32,
            bias_correction2_sqrt: c.bias_correction2_sqrt as f32,
            grad_scale,
            max_norm: max_norm.unwrap_or(0.0),
            n: n as u64,
            decay_end: decay_end as u64,
        }
    }
}

/// The flat f32 buffers one update reads and writes, all of the same length; `weights_bf16` (same
/// layout) receives the bf16 copy the GEMMs read, when given.
pub struct Arenas<'a> {
    pub param: &'a DeviceBuffer<f32>,
    pub grad: &'a DeviceBuffer<f32>,
    pub exp_avg: &'a DeviceBuffer<f32>,
    pub exp_avg_sq: &'a DeviceBuffer<f32>,
    pub weights_bf16: Option<&'a DeviceBuffer<bf16>>,
}

/// One AdamW step over the arenas, queued on the compute stream. The clip coefficient comes from
/// `grad_sum_squares` (one f64 on the device, `sum_squares_into`'s output); nothing waits on the host.
pub fn update(gpu: &Gpu, a: &Arenas, grad_sum_squares: &DeviceBuffer<f64>, params: AdamwParams) -> Result<()> {
    let n = params.n as usize;
    for (name, len) in [
        ("param", a.param.len()),
        ("grad", a.grad.len()),
        ("exp_avg", a.exp_avg.len()),
        ("exp_avg_sq", a.exp_avg_sq.len()),
        ("bf16 weights", a.weights_bf16.map_or(n, |w| w.len())),
    ] {
        crate::ensure!(len == n, "AdamW over {n} elements: the {name} arena has {len}");
    }
    crate::ensure!(params.decay_end <= params.n, "AdamW: decay_end {} past {n} elements", params.decay_end);
    crate::ensure!(grad_sum_squares.len() == 1, "AdamW: the sum of squares is one f64");
    let bf16_ptr = a.weights_bf16.map_or(0, |w| w.ptr());
    let blocks = n.div_ceil(RETRO_ADAMW_BLOCK as usize).clamp(1, 65_535) as u32;
    // SAFETY: argument list of adamw_update_f32; every arena holds n elements (checked above).
    unsafe {
        launch(
            gpu,
            "adamw",
            "adamw_update_f32",
            config((blocks, 1, 1), RETRO_ADAMW_BLOCK, 0),
            &[
                &a.param.ptr(),
                &a.grad.ptr(),
                &a.exp_avg.ptr(),
                &a.exp_avg_sq.ptr(),
                &bf16_ptr,
                &grad_sum_squares.ptr(),
                &params,
            ],
        )
    }
}

/// The sum of squares of `x` in f64 into `out` (one element), deterministic (fixed grid, no atomics);
/// queued, no wait.
pub fn sum_squares_into(gpu: &Gpu, x: &DeviceBuffer<f32>, out: &DeviceBuffer<f64>) -> Result<()> {
    sum_squares_of_ranges_into(gpu, x, std::slice::from_ref(&(0..x.len())), out)
}

/// The sum of squares of `x`'s elements in `ranges` into `out` (one f64): each range's fixed grid of
/// partials, then one sum of them all, so the same inputs give the same bits; queued, no wait.
pub fn sum_squares_of_ranges_into(
    gpu: &Gpu,
    x: &DeviceBuffer<f32>,
    ranges: &[std::ops::Range<usize>],
    out: &DeviceBuffer<f64>,
) -> Result<()> {
    crate::ensure!(out.len() == 1, "sum_squares_of_ranges_into: the output is one f64, not {}", out.len());
    let blocks = RETRO_SUMSQ_BLOCKS as usize;
    // Every partial is written by its block; with no range, one zero (the sum of nothing).
    let partials = match ranges.len() {
        0 => gpu.zeros::<f64>(1)?,
        n => gpu.alloc::<f64>(n * blocks)?,
    };
    for (i, r) in ranges.iter().enumerate() {
        let part = x.view(r.start, r.len())?;
        let n = part.len() as u64;
        // SAFETY: argument list of sum_squares_f32; this range's `blocks` partials start at i * blocks (the
        // buffer returns to the cache in stream order).
        unsafe {
            launch(
                gpu,
                "adamw",
                "sum_squares_f32",
                config((RETRO_SUMSQ_BLOCKS, 1, 1), RETRO_ADAMW_BLOCK, 0),
                &[&part.ptr(), &n, &partials.ptr_at(i * blocks)],
            )?;
        }
    }
    sum_into(gpu, &partials, out)
}

/// `out[0] = sum of partials` (f64, one block, a fixed order).
pub fn sum_into(gpu: &Gpu, partials: &DeviceBuffer<f64>, out: &DeviceBuffer<f64>) -> Result<()> {
    crate::ensure!(out.len() == 1, "sum_into: the output is one f64, not {}", out.len());
    let count = partials.len() as u32;
    // SAFETY: argument list of sum_partials_f64: `count` doubles in, one out.
    unsafe {
        launch(
            gpu,
            "adamw",
            "sum_partials_f64",
            config((1, 1, 1), RETRO_ADAMW_BLOCK, 0),
            &[&partials.ptr(), &count, &out.ptr()],
        )
    }
}

/// The sum of squares of `x` in f64 (waits for it).
pub fn sum_squares(gpu: &Gpu, x: &DeviceBuffer<f32>) -> Result<f64> {
    let out = gpu.alloc::<f64>(1)?;
    sum_squares_into(gpu, x, &out)?;
    Ok(gpu.download(&out)?[0])
}
