use super::same_float_dtype;
use crate::autograd::{Tape, Var};
use crate::rng::Rng;
use crate::tensor::{Float, Tensor};
use crate::{with_float, Result};

/// Hidden dropout when the tape is in training mode (each element zeroed with probability p, the rest
/// scaled by 1/(1 − p)); the identity otherwise.
pub fn dropout(tape: &mut Tape, x: &Var) -> Result<Var> {
    let Some((p, seed)) = tape.next_dropout() else { return Ok(x.clone()) };
    let dtype = same_float_dtype("dropout", &[x])?;
    with_float!(dtype, "dropout", T => run::<T>(tape, x, p, seed))
}

fn run<T: Float>(tape: &mut Tape, x: &Var, p: f64, seed: u64) -> Result<Var> {
    let mut rng = Rng::new(seed);
    let keep = T::from_f64(1.0 / (1.0 - p));
    let factors: Vec<T> = (0..x.value().numel()).map(|_| if rng.uniform() < p { T::ZERO } else { keep }).collect();
    let out: Vec<T> = x.value().data::<T>()?.iter().zip(&factors).map(|(&v, &f)| v * f).collect();
    let out = Tensor::from_vec(out, x.shape())?;
    let shape = x.shape().to_vec();
    Ok(tape.record("dropout", &[x], out, move |g, _| {
        let dx: Vec<T> = g.data::<T>()?.iter().zip(&factors).map(|(&v, &f)| v * f).collect();
        Ok(vec![Some(Tensor::from_vec(dx, &shape)?)])
    }))
}
