use super::same_float_dtype;
use crate::autograd::{Tape, Var};
use crate::backend::cpu::elementwise as cpu;
use crate::tensor::{Float, Tensor};
use crate::{with_float, Result};

/// tanh-approximated GELU (Megatron's bias_gelu fusion).
pub fn gelu(tape: &mut Tape, x: &Var) -> Result<Var> {
    let dtype = same_float_dtype("gelu", &[x])?;
    crate::profile::timed("gelu", "forward", || with_float!(dtype, "gelu", T => run::<T>(tape, x)))
}

fn run<T: Float>(tape: &mut Tape, x: &Var) -> Result<Var> {
    let out = Tensor::from_vec(cpu::gelu_forward(x.value().data::<T>()?), x.shape())?;
    let xs = x.value().clone();
    Ok(tape.record("gelu", &[x], out, move |g, _| {
        Ok(vec![Some(Tensor::from_vec(cpu::gelu_backward(xs.data::<T>()?, g.data::<T>()?), xs.shape())?)])
    }))
}
