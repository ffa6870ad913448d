use super::same_float_dtype;
use crate::autograd::{Tape, Var};
use crate::backend::cpu::layernorm as cpu;
use crate::tensor::{Float, Tensor};
use crate::{ensure, with_float, Result};

/// LayerNorm over the last dimension with affine weight and bias [d].
pub fn layer_norm(tape: &mut Tape, x: &Var, w: &Var, b: &Var, eps: f64) -> Result<Var> {
    let dtype = same_float_dtype("layer_norm", &[x, w, b])?;
    let d = x.value().last_dim();
    ensure!(
        w.shape() == [d] && b.shape() == [d],
        "layer_norm: input {:?} needs weight and bias [{d}], got {:?} and {:?}",
        x.shape(),
        w.shape(),
        b.shape()
    );
    crate::profile::timed(
        "layer_norm",
        "forward",
        || with_float!(dtype, "layer_norm", T => run::<T>(tape, x, w, b, eps)),
    )
}

fn run<T: Float>(tape: &mut Tape, x: &Var, w: &Var, b: &Var, eps: f64) -> Result<Var> {
    let d = x.value().last_dim();
    let (y, stats) = cpu::forward(x.value().data::<T>()?, w.value().data::<T>()?, b.value().data::<T>()?, d, eps);
    let out = Tensor::from_vec(y, x.shape())?;
    let (xs, ws) = (x.value().clone(), w.value().clone());
    Ok(tape.record("layer_norm", &[x, w, b], out, move |g, _| {
        let (dx, dw, db) = cpu::backward(g.data::<T>()?, xs.data::<T>()?, ws.data::<T>()?, &stats, d);
        Ok(vec![
            Some(Tensor::from_vec(dx, xs.shape())?),
            Some(Tensor::from_vec(dw, &[d])?),
            Some(Tensor::from_vec(db, &[d])?),
        ])
    }))
}
