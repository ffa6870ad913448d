use super::same_float_dtype;
use crate::autograd::{Tape, Var};
use crate::backend::cpu::cross_entropy as cpu;
use crate::tensor::{Device, Float, Tensor};
use crate::{bail, ensure, with_float, Result};

/// Mean softmax cross-entropy of logits [.., vocab] against labels [..] (i32/i64) -> scalar. On the GPU
/// (kernels/cross_entropy.cu) the gradient is computed with the loss, in the forward, and the backward
/// only scales it by the incoming gradient, which stays on the device; the loss is an f32 scalar.
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
    if logits.value().device() != Device::Cpu {
        return on_cuda(tape, logits, &idx);
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

#[cfg(not(no_cuda_kernels))]
fn on_cuda(tape: &mut Tape, logits: &Var, labels: &[usize]) -> Result<Var> {
    use crate::backend::cuda::{cross_entropy as kernel, reduce, residual};
    let v = logits.value().last_dim();
    let rows = labels.len();
    let targets: Vec<i32> = labels.iter().map(|&y| y as i32).collect();
    crate::with_gpu_float!(logits.dtype(), "cross_entropy", E => {
        let (gpu, lb) = logits.value().cuda::<E>()?;
        let mut grad = gpu.alloc::<E>(lb.len())?;
        gpu.copy_rows(&grad, 0, lb.len(), lb, 0, lb.len(), lb.len(), 1)?;
        let targets = kernel::targets(gpu, &targets, v)?;
        let losses = kernel::forward_backward(gpu, &mut grad, &targets, v, 1.0 / rows as f32)?;
        let sum = gpu.zeros::<f32>(1)?;
        reduce::add_partials(gpu, &sum, &losses, rows, 1)?;
        let mean = residual::scale(gpu, &sum, 1.0 / rows as f32, None)?;
        let out = Tensor::from_cuda(gpu, mean, &[])?;
        let shape = logits.shape().to_vec();
        let gpu = gpu.clone();
        Ok(tape.record("cross_entropy", &[logits], out, move |g, _| {
            let (_, by) = g.cuda::<f32>()?;
            Ok(vec![Some(Tensor::from_cuda(&gpu, residual::scale(&gpu, &grad, 1.0, Some(by))?, &shape)?)])
        }))
    })
}

#[cfg(no_cuda_kernels)]
fn on_cuda(_: &mut Tape, logits: &Var, _: &[usize]) -> Result<Var> {
    bail!("cross_entropy: a tensor on {} in a build without CUDA kernels", logits.value().device())
}
