use super::same_float_dtype;
use crate::autograd::{Tape, Var};
use crate::backend::cpu::cross_entropy as cpu;
use crate::tensor::{Float, Tensor};
use crate::{bail, ensure, with_float, Result};

/// Mean softmax cross-entropy of logits [.., vocab] against labels [..] (i32/i64) -> scalar.
pub fn cross_entropy(tape: &mut Tape, logits: &Var, labels: &Tensor) -> Result<Var> {
    let dtype = same_float_dtype("cross_entropy", &[logits])?;
    let v = logits.value().last_dim();
    ensure!(
        !logits.shape().is_empty() && labels.shape() == &logits.shape()[..logits.shape().len() - 1],
        "cross_entropy: labels {:?} do not match logits {:?} (expected labels = logits without the last dim)",
        labels.shape(),
        logits.shape()
    );
    ensure!(labels.numel() > 0, "cross_entropy: no labels");
    let mut idx = Vec::with_capacity(labels.numel());
    for (pos, &y) in labels.indices().map_err(|e| e.context("cross_entropy labels"))?.iter().enumerate() {
        if y < 0 || y as usize >= v {
            bail!("cross_entropy: label {y} at flat position {pos} is outside the vocabulary of {v}");
        }
        idx.push(y as usize);
    }
    crate::profile::timed(
        "cross_entropy",
        "forward",
        || with_float!(dtype, "cross_entropy", T => run::<T>(tape, logits, idx)),
    )
}

fn run<T: Float>(tape: &mut Tape, logits: &Var, labels: Vec<usize>) -> Result<Var> {
    let v = logits.value().last_dim();
    let (loss, lse) = cpu::forward(logits.value().data::<T>()?, &labels, v);
    let out = Tensor::scalar(T::from_f64(loss));
    let zs = logits.value().clone();
    Ok(tape.record("cross_entropy", &[logits], out, move |g, _| {
        let g = g.data::<T>()?[0];
        Ok(vec![Some(Tensor::from_vec(cpu::backward(zs.data::<T>()?, &labels, &lse, v, g), zs.shape())?)])
    }))
}
