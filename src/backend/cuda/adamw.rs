//! Launchers for kernels/adamw.cu: the fused AdamW update and the two-pass global sum of squares.

use super::device::cuda_error;
use crate::kernels::abi::{AdamwParams, RETRO_ADAMW_BLOCK, RETRO_SUMSQ_BLOCKS};
use crate::train::optimizer::Coefficients;
use crate::Result;
use cudarc::driver::{CudaModule, CudaSlice, CudaStream, DeviceRepr, LaunchConfig, PushKernelArg};
use std::sync::Arc;

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

fn grid(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(RETRO_ADAMW_BLOCK as usize).clamp(1, 65_535) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (RETRO_ADAMW_BLOCK, 1, 1), shared_mem_bytes: 0 }
}

/// In-place AdamW step on f32 buffers (no bf16 weight copy).
pub fn update(
    stream: &Arc<CudaStream>,
    module: &Arc<CudaModule>,
    param: &mut CudaSlice<f32>,
    grad: &CudaSlice<f32>,
    exp_avg: &mut CudaSlice<f32>,
    exp_avg_sq: &mut CudaSlice<f32>,
    params: AdamwParams,
) -> Result<()> {
    let f = module.load_function("adamw_update_f32").map_err(|e| cuda_error("adamw_update_f32", e))?;
    let no_bf16_copy: u64 = 0;
    let mut launch = stream.launch_builder(&f);
    launch.arg(param).arg(grad).arg(exp_avg).arg(exp_avg_sq).arg(&no_bf16_copy).arg(&params);
    // SAFETY: the four buffers hold params.n elements; the signature matches kernels/adamw.cu.
    unsafe { launch.launch(grid(params.n as usize)) }.map_err(|e| cuda_error("launching adamw_update_f32", e))?;
    Ok(())
}

/// Sum of squares of `x` in f64, deterministic (fixed grid, no atomics).
pub fn sum_squares(stream: &Arc<CudaStream>, module: &Arc<CudaModule>, x: &CudaSlice<f32>) -> Result<f64> {
    let pass1 = module.load_function("sum_squares_f32").map_err(|e| cuda_error("sum_squares_f32", e))?;
    let pass2 = module.load_function("sum_partials_f64").map_err(|e| cuda_error("sum_partials_f64", e))?;
    let mut partials = stream.alloc_zeros::<f64>(RETRO_SUMSQ_BLOCKS as usize).map_err(|e| cuda_error("alloc", e))?;
    let mut out = stream.alloc_zeros::<f64>(1).map_err(|e| cuda_error("alloc", e))?;
    let n = x.len() as u64;
    let cfg = LaunchConfig {
        grid_dim: (RETRO_SUMSQ_BLOCKS, 1, 1),
        block_dim: (RETRO_ADAMW_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut l1 = stream.launch_builder(&pass1);
    l1.arg(x).arg(&n).arg(&mut partials);
    // SAFETY: partials holds RETRO_SUMSQ_BLOCKS doubles, one per block.
    unsafe { l1.launch(cfg) }.map_err(|e| cuda_error("launching sum_squares_f32", e))?;
    let count = RETRO_SUMSQ_BLOCKS;
    let mut l2 = stream.launch_builder(&pass2);
    l2.arg(&partials).arg(&count).arg(&mut out);
    let one_block = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (RETRO_ADAMW_BLOCK, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: reads `count` partials, writes one double.
    unsafe { l2.launch(one_block) }.map_err(|e| cuda_error("launching sum_partials_f64", e))?;
    let host = stream.clone_dtoh(&out).map_err(|e| cuda_error("copy to host", e))?;
    Ok(host[0])
}
