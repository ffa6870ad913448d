//! Launchers for kernels/adamw.cu: the fused AdamW update over a flat f32 parameter arena (all
//! parameters in one launch per weight-decay group) and the deterministic global sum of squares.

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
    /// Kernel parameters from the optimizer's per-step scalars, over `n` elements.
    pub fn new(c: &Coefficients, grad_scale: f64, n: usize) -> Self {
        Self {
            decay_factor: c.decay_factor as f32,
            one_minus_beta1: (1.0 - c.beta1) as f32,
            beta2: c.beta2 as f32,
            one_minus_beta2: (1.0 - c.beta2) as f32,
            eps: c.eps as f32,
            step_size: c.step_size as f32,
            bias_correction2_sqrt: c.bias_correction2_sqrt as f32,
            grad_scale: grad_scale as f32,
            n: n as u64,
        }
    }
}

/// Elements `offset..offset + params.n` of one arena, updated in place; `weights_bf16` (same layout)
/// receives the bf16 copy the GEMMs read, when given.
pub struct Segment<'a> {
    pub param: &'a DeviceBuffer<f32>,
    pub grad: &'a DeviceBuffer<f32>,
    pub exp_avg: &'a DeviceBuffer<f32>,
    pub exp_avg_sq: &'a DeviceBuffer<f32>,
    pub weights_bf16: Option<&'a DeviceBuffer<bf16>>,
    pub offset: usize,
}

pub fn update(gpu: &Gpu, s: &Segment, params: AdamwParams) -> Result<()> {
    let end = s.offset + params.n as usize;
    for (name, len) in [
        ("param", s.param.len()),
        ("grad", s.grad.len()),
        ("exp_avg", s.exp_avg.len()),
        ("exp_avg_sq", s.exp_avg_sq.len()),
    ] {
        crate::ensure!(end <= len, "AdamW segment {}..{end} is past the end of {name} ({len})", s.offset);
    }
    if let Some(w) = s.weights_bf16 {
        crate::ensure!(
            end <= w.len(),
            "AdamW segment {}..{end} is past the end of the bf16 weights ({})",
            s.offset,
            w.len()
        );
    }
    let bf16_ptr = s.weights_bf16.map_or(0, |w| w.ptr_at(s.offset));
    let blocks = (params.n as usize).div_ceil(RETRO_ADAMW_BLOCK as usize).clamp(1, 65_535) as u32;
    // SAFETY: argument list of adamw_update_f32; the segment lies inside every buffer (checked above).
    unsafe {
        launch(
            gpu,
            "adamw",
            "adamw_update_f32",
            config((blocks, 1, 1), RETRO_ADAMW_BLOCK, 0),
            &[
                &s.param.ptr_at(s.offset),
                &s.grad.ptr_at(s.offset),
                &s.exp_avg.ptr_at(s.offset),
                &s.exp_avg_sq.ptr_at(s.offset),
                &bf16_ptr,
                &params,
            ],
        )
    }
}

/// Sum of squares of `x` in f64, deterministic (fixed grid, no atomics); waits for the result.
pub fn sum_squares(gpu: &Gpu, x: &DeviceBuffer<f32>) -> Result<f64> {
    Ok(sum_squares_each(gpu, &[x])?[0])
}

/// The sum of squares of each buffer (one f64 each), with a single wait at the end.
pub fn sum_squares_each(gpu: &Gpu, xs: &[&DeviceBuffer<f32>]) -> Result<Vec<f64>> {
    let partials = gpu.alloc::<f64>(RETRO_SUMSQ_BLOCKS as usize)?;
    let out = gpu.alloc::<f64>(xs.len())?;
    let count = RETRO_SUMSQ_BLOCKS;
    for (i, x) in xs.iter().enumerate() {
        let n = x.len() as u64;
        // SAFETY: argument lists of sum_squares_f32 (one partial per block) and sum_partials_f64 (one
        // double at out[i]); the partials buffer is reused in stream order.
        unsafe {
            launch(
                gpu,
                "adamw",
                "sum_squares_f32",
                config((RETRO_SUMSQ_BLOCKS, 1, 1), RETRO_ADAMW_BLOCK, 0),
                &[&x.ptr(), &n, &partials.ptr()],
            )?;
            launch(
                gpu,
                "adamw",
                "sum_partials_f64",
                config((1, 1, 1), RETRO_ADAMW_BLOCK, 0),
                &[&partials.ptr(), &count, &out.ptr_at(i)],
            )?;
        }
    }
    gpu.download(&out)
}
