//! GELU in its two forms: tanh-approximated (Megatron's bias_gelu fusion, the decoder and encoder MLPs)
//! and exact erf (BERT's, the retrieval embedder). On the GPU: kernels/gelu.cu (tanh form only).

use super::same_float_dtype;
use crate::autograd::{Tape, Var};
use crate::backend::cpu::elementwise as cpu;
use crate::tensor::{Device, Float, Tensor};
use crate::{with_float, Result};

/// tanh-approximated GELU (Megatron's bias_gelu fusion).
pub fn gelu(tape: &mut Tape, x: &Var) -> Result<Var> {
    let dtype = same_float_dtype("gelu", &[x])?;
    if x.value().device() != Device::Cpu {
        return on_cuda(tape, x);
    }
    crate::profile::timed(
        "gelu",
        "forward",
        || with_float!(dtype, "gelu", T => run::<T>(tape, x, "gelu", cpu::gelu_forward, cpu::gelu_backward)),
    )
}

/// Exact (erf) GELU, as BERT uses.
pub fn gelu_erf(tape: &mut Tape, x: &Var) -> Result<Var> {
    let dtype = same_float_dtype("gelu_erf", &[x])?;
    crate::ensure!(
        x.value().device() == Device::Cpu,
        "gelu_erf: the exact GELU (the BERT embedder's) runs on the CPU only; got {:?} on {}",
        x.shape(),
        x.value().device()
    );
    crate::profile::timed(
        "gelu_erf",
        "forward",
        || with_float!(dtype, "gelu_erf", T => run::<T>(tape, x, "gelu_erf", cpu::gelu_erf_forward, cpu::gelu_erf_backward)),
    )
}

fn run<T: Float>(
    tape: &mut Tape,
    x: &Var,
    name: &'static str,
    forward: fn(&[T]) -> Vec<T>,
    backward: fn(&[T], &[T]) -> Vec<T>,
) -> Result<Var> {
    let out = Tensor::from_vec(forward(x.value().data::<T>()?), x.shape())?;
    let xs = x.value().clone();
    Ok(tape.record(name, &[x], out, move |g, _| {
        Ok(vec![Some(Tensor::from_vec(backward(xs.data::<T>()?, g.data::<T>()?), xs.shape())?)])
    }))
}

/// kernels/gelu.cu's GELU without a bias (the bias is the preceding linear's epilogue).
#[cfg(not(no_cuda_kernels))]
fn on_cuda(tape: &mut Tape, x: &Var) -> Result<Var> {
    use crate::backend::cuda::gelu as kernel;
    crate::with_gpu_float!(x.dtype(), "gelu", E => {
        let (gpu, buf) = x.value().cuda::<E>()?;
        let d = x.value().last_dim();
        let out = Tensor::from_cuda(gpu, kernel::forward(gpu, buf, None, d)?, x.shape())?;
        let xs = x.value().clone();
        Ok(tape.record("gelu", &[x], out, move |g, _| {
            let ((gpu, xb), (_, gb)) = (xs.cuda::<E>()?, g.cuda::<E>()?);
            let dx = kernel::backward(gpu, gb, xb, None, d)?;
            Ok(vec![Some(Tensor::from_cuda(gpu, dx, xs.shape())?)])
        }))
    })
}

#[cfg(no_cuda_kernels)]
fn on_cuda(_: &mut Tape, x: &Var) -> Result<Var> {
    crate::bail!("gelu: a tensor on {} in a build without CUDA kernels", x.value().device())
}
