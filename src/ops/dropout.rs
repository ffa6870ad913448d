use super::same_float_dtype;
use crate::autograd::{Tape, Var};
use crate::tensor::{Float, Tensor};
use crate::{with_float, Result};

/// Hidden dropout when the tape is in training mode (each element zeroed with probability p, the rest
/// scaled by 1/(1 − p)); the identity otherwise. The mask is Philox's (`crate::philox::keep_mask`, stream
/// 0 of the op's seed): kernels/dropout.cu drops exactly the same elements.
pub fn dropout(tape: &mut Tape, x: &Var) -> Result<Var> {
    let Some((p, seed)) = tape.next_dropout() else { return Ok(x.clone()) };
    let dtype = same_float_dtype("dropout", &[x])?;
    with_float!(dtype, "dropout", T => run::<T>(tape, x, p, seed))
}

/// `x` times the factors of stream 0 under `seed`.
fn apply<T: Float>(x: &Tensor, p: f64, seed: u64) -> Result<Tensor> {
    let factors: Vec<T> = crate::backend::cpu::dropout::factors(p, seed, 0, x.numel());
    Tensor::from_vec(x.data::<T>()?.iter().zip(&factors).map(|(&v, &f)| v * f).collect::<Vec<T>>(), x.shape())
}

fn run<T: Float>(tape: &mut Tape, x: &Var, p: f64, seed: u64) -> Result<Var> {
    let out = apply::<T>(x.value(), p, seed)?;
    // The backward regenerates the mask from (p, seed) instead of keeping it.
    Ok(tape.record("dropout", &[x], out, move |g, _| Ok(vec![Some(apply::<T>(g, p, seed)?)])))
}
