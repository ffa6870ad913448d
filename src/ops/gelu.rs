//! GELU in its two forms: tanh-approximated (Megatron's bias_gelu fusion, the decoder and encoder MLPs)
//! and exact erf (BERT's, the retrieval embedder).

use super::same_float_dtype;
use crate::autograd::{Tape, Var};
use crate::backend::cpu::elementwise as cpu;
use crate::tensor::{Float, Tensor};
use crate::{with_float, Result};

/// tanh-approximated GELU (Megatron's bias_gelu fusion).
pub fn gelu(tape: &mut Tape, x: &Var) -> Result<Var> {
    let dtype = same_float_dtype("gelu", &[x])?;
    crate::profile::timed(
        "gelu",
        "forward",
        || with_float!(dtype, "gelu", T => run::<T>(tape, x, "gelu", cpu::gelu_forward, cpu::gelu_backward)),
    )
}

/// Exact (erf) GELU, as BERT uses.
pub fn gelu_erf(tape: &mut Tape, x: &Var) -> Result<Var> {
    let dtype = same_float_dtype("gelu_erf", &[x])?;
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
