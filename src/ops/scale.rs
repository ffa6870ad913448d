//! Multiplication by a constant (the CCA gate). On the GPU: kernels/residual.cu's scale.

use super::same_float_dtype;
use crate::autograd::{Tape, Var};
use crate::tensor::{Device, Tensor};
use crate::Result;

/// `x · factor` for a constant factor (the CCA gate).
pub fn scale(tape: &mut Tape, x: &Var, factor: f64) -> Result<Var> {
    same_float_dtype("scale", &[x])?;
    let out = scale_tensor(x.value(), factor)?;
    Ok(tape.record("scale", &[x], out, move |g, _| Ok(vec![Some(scale_tensor(g, factor)?)])))
}

/// `x · factor` as a new tensor on x's device.
pub fn scale_tensor(x: &Tensor, factor: f64) -> Result<Tensor> {
    if x.device() != Device::Cpu {
        return on_cuda(x, factor);
    }
    let mut out = x.clone();
    out.scale(factor)?;
    Ok(out)
}

#[cfg(not(no_cuda_kernels))]
fn on_cuda(x: &Tensor, factor: f64) -> Result<Tensor> {
    crate::with_gpu_float!(x.dtype(), "scale", E => {
        let (gpu, buf) = x.cuda::<E>()?;
        Tensor::from_cuda(gpu, crate::backend::cuda::residual::scale(gpu, buf, factor as f32, None)?, x.shape())
    })
}

#[cfg(no_cuda_kernels)]
fn on_cuda(x: &Tensor, _: f64) -> Result<Tensor> {
    crate::bail!("scale: a tensor on {} in a build without CUDA kernels", x.device())
}
