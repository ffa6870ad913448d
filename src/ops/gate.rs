//! A learned scalar gate's two ops: `tanh` of a tensor and `mul_scalar`, a tensor times a one-element
//! tensor, differentiable in both (the `cca-tanh-gate` variant's `out · tanh(g)`). CPU only so far: on a
//! GPU each refuses its input with a clear error.

use super::same_float_dtype;
use crate::autograd::{Tape, Var};
use crate::tensor::{Float, Tensor};
use crate::{ensure, with_float, Result};

fn on_cpu(op: &str, x: &Var) -> Result<()> {
    super::cuda::cpu_only(op, x, "runs on the CPU only so far; the cca-tanh-gate variant has no GPU path yet")
}

/// Element-wise tanh.
pub fn tanh(tape: &mut Tape, x: &Var) -> Result<Var> {
    let dtype = same_float_dtype("tanh", &[x])?;
    on_cpu("tanh", x)?;
    with_float!(dtype, "tanh", T => {
        let y: Vec<T> = x.value().data::<T>()?.iter().map(|&v| T::from_f64(v.to_f64().tanh())).collect();
        let out = Tensor::from_vec(y, x.shape())?;
        let ys = out.clone();
        Ok(tape.record("tanh", &[x], out, move |g, _| {
            // d tanh = 1 − tanh²
            let dx: Vec<T> = (ys.data::<T>()?.iter().zip(g.data::<T>()?)).map(|(&y, &g)| g * (T::ONE - y * y)).collect();
            Ok(vec![Some(Tensor::from_vec(dx, ys.shape())?)])
        }))
    })
}

/// `x · s` for a one-element `s` (shape [1] or []), broadcast over x.
pub fn mul_scalar(tape: &mut Tape, x: &Var, s: &Var) -> Result<Var> {
    let dtype = same_float_dtype("mul_scalar", &[x, s])?;
    on_cpu("mul_scalar", x)?;
    ensure!(s.value().numel() == 1, "mul_scalar: the factor must have one element, got shape {:?}", s.shape());
    with_float!(dtype, "mul_scalar", T => {
        let factor = s.value().data::<T>()?[0];
        let out = Tensor::from_vec(x.value().data::<T>()?.iter().map(|&v| v * factor).collect::<Vec<T>>(), x.shape())?;
        let (xs, s_shape) = (x.value().clone(), s.shape().to_vec());
        Ok(tape.record("mul_scalar", &[x, s], out, move |g, needs| {
            let g = g.data::<T>()?;
            let dx = needs[0].then(|| Tensor::from_vec(g.iter().map(|&v| v * factor).collect::<Vec<T>>(), xs.shape())).transpose()?;
            let ds = needs[1]
                .then(|| {
                    let dot: f64 = xs.data::<T>()?.iter().zip(g).map(|(&x, &g)| (x * g).to_f64()).sum();
                    Tensor::from_vec(vec![T::from_f64(dot)], &s_shape)
                })
                .transpose()?;
            Ok(vec![dx, ds])
        }))
    })
}
