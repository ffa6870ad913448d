use super::same_float_dtype;
use crate::autograd::{Tape, Var};
use crate::tensor::{Device, Float, Tensor};
use crate::{with_float, Result};

/// Hidden dropout when the tape is in training mode (each element zeroed with probability p, the rest
/// scaled by 1/(1 − p)); the identity otherwise. The mask is Philox's (`crate::philox::keep_mask`, stream
/// 0 of the op's seed) on both devices: kernels/dropout.cu drops exactly the elements the CPU drops.
pub fn dropout(tape: &mut Tape, x: &Var) -> Result<Var> {
    let Some((p, seed)) = tape.next_dropout() else { return Ok(x.clone()) };
    same_float_dtype("dropout", &[x])?;
    let out = apply(x.value(), p, seed)?;
    // The backward regenerates the mask from (p, seed) instead of keeping it.
    Ok(tape.record("dropout", &[x], out, move |g, _| Ok(vec![Some(apply(g, p, seed)?)])))
}

/// `x` times the factors of stream 0 under `seed`.
fn apply(x: &Tensor, p: f64, seed: u64) -> Result<Tensor> {
    if x.device() != Device::Cpu {
        return on_cuda(x, p, seed);
    }
    with_float!(x.dtype(), "dropout", T => on_cpu::<T>(x, p, seed))
}

fn on_cpu<T: Float>(x: &Tensor, p: f64, seed: u64) -> Result<Tensor> {
    let factors: Vec<T> = crate::backend::cpu::dropout::factors(p, seed, 0, x.numel());
    Tensor::from_vec(x.data::<T>()?.iter().zip(&factors).map(|(&v, &f)| v * f).collect::<Vec<T>>(), x.shape())
}

#[cfg(not(no_cuda_kernels))]
fn on_cuda(x: &Tensor, p: f64, seed: u64) -> Result<Tensor> {
    crate::with_gpu_float!(x.dtype(), "dropout", E => {
        let (gpu, buf) = x.cuda::<E>()?;
        Tensor::from_cuda(gpu, crate::backend::cuda::dropout::apply(gpu, buf, seed, 0, p)?, x.shape())
    })
}

#[cfg(no_cuda_kernels)]
fn on_cuda(x: &Tensor, _: f64, _: u64) -> Result<Tensor> {
    crate::bail!("dropout: a tensor on {} in a build without CUDA kernels", x.device())
}
