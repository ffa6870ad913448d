use super::same_float_dtype;
use crate::autograd::{Tape, Var};
use crate::backend::cpu::elementwise as cpu;
use crate::tensor::{Float, Tensor};
use crate::{with_float, Result};

/// Exact (erf) GELU, as BERT uses.
pub fn gelu_erf(tape: &mut Tape, x: &Var) -> Result<Var> {
    let dtype = same_float_dtype("gelu_erf", &[x])?;
    crate::profile::timed("gelu_erf", "forward", || with_float!(dtype, "gelu_erf", T => run::<T>(tape, x)))
}

fn run<T: Float>(tape: &mut Tape, x: &Var) -> Result<Var> {
    let out = Tensor::from_vec(cpu::gelu_erf_forward(x.value().data::<T>()?), x.shape())?;
    let xs = x.value().clone();
    Ok(tape.record("gelu_erf", &[x], out, move |g, _| {
        Ok(vec![Some(Tensor::from_vec(cpu::gelu_erf_backward(xs.data::<T>()?, g.data::<T>()?), xs.shape())?)])
    }))
}
