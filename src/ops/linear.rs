use super::same_float_dtype;
use crate::autograd::{Tape, Var};
use crate::backend::cpu::linear as cpu;
use crate::tensor::{Device, Float, Tensor};
use crate::{ensure, with_float, Result};

/// `y = x·Wᵀ + b`: x [.., din], w [dout, din], b [dout] -> [.., dout]. On the GPU: cuBLASLt with the bias
/// in its epilogue (backend/cuda/linear.rs); x, w and b in the activations' type, dW and db in f32.
pub fn linear(tape: &mut Tape, x: &Var, w: &Var, b: Option<&Var>) -> Result<Var> {
    let mut vars = vec![x, w];
    vars.extend(b);
    let dtype = same_float_dtype("linear", &vars)?;
    ensure!(
        w.shape().len() == 2 && x.shape().last() == Some(&w.shape()[1]),
        "linear: input {:?} does not match weight {:?} (expected [.., {}])",
        x.shape(),
        w.shape(),
        w.shape().get(1).copied().unwrap_or(0)
    );
    if let Some(b) = b {
        ensure!(b.shape() == [w.shape()[0]], "linear: bias {:?} does not match weight {:?}", b.shape(), w.shape());
    }
    if x.value().device() != Device::Cpu {
        return on_cuda(tape, x, w, b);
    }
    crate::profile::timed("linear", "forward", || with_float!(dtype, "linear", T => run::<T>(tape, x, w, b)))
}

fn run<T: Float>(tape: &mut Tape, x: &Var, w: &Var, b: Option<&Var>) -> Result<Var> {
    let (dout, din) = (w.shape()[0], w.shape()[1]);
    let n = x.value().numel() / din;
    let bias = b.map(|b| b.value().data::<T>()).transpose()?;
    let y = cpu::forward(x.value().data::<T>()?, w.value().data::<T>()?, bias, n, din, dout);
    let mut out_shape = x.shape().to_vec();
    *out_shape.last_mut().unwrap() = dout;
    let out = Tensor::from_vec(y, &out_shape)?;
    let (xs, ws, has_bias) = (x.value().clone(), w.value().clone(), b.is_some());
    let mut inputs = vec![x, w];
    inputs.extend(b);
    Ok(tape.record("linear", &inputs, out, move |g, needs| {
        let dy = g.data::<T>()?;
        let dx = needs[0]
            .then(|| Tensor::from_vec(cpu::backward_input(dy, ws.data::<T>()?, n, din, dout), xs.shape()))
            .transpose()?;
        let dw = needs[1]
            .then(|| Tensor::from_vec(cpu::backward_weight(dy, xs.data::<T>()?, n, din, dout), ws.shape()))
            .transpose()?;
        let mut grads = vec![dx, dw];
        if has_bias {
            grads.push(needs[2].then(|| Tensor::from_vec(cpu::backward_bias(dy, n, dout), &[dout])).transpose()?);
        }
        Ok(grads)
    }))
}

#[cfg(not(no_cuda_kernels))]
fn on_cuda(tape: &mut Tape, x: &Var, w: &Var, b: Option<&Var>) -> Result<Var> {
    use crate::backend::cuda::linear::Linear;
    let (dout, din) = (w.shape()[0], w.shape()[1]);
    let shape = Linear { rows: x.value().numel() / din, in_features: din, out_features: dout };
    let mut out_shape = x.shape().to_vec();
    *out_shape.last_mut().unwrap() = dout;
    crate::with_gpu_float!(x.dtype(), "linear", E => {
        let ((gpu, xb), (_, wb)) = (x.value().cuda::<E>()?, w.value().cuda::<E>()?);
        let bias = b.map(|b| b.value().cuda::<E>().map(|(_, bb)| bb)).transpose()?;
        let out = Tensor::from_cuda(gpu, shape.forward(gpu, xb, wb, bias, false)?, &out_shape)?;
        let (xs, ws, has_bias) = (x.value().clone(), w.value().clone(), b.is_some());
        let mut inputs = vec![x, w];
        inputs.extend(b);
        Ok(tape.record("linear", &inputs, out, move |g, _| {
            let ((gpu, xb), (_, wb), (_, gb)) = (xs.cuda::<E>()?, ws.cuda::<E>()?, g.cuda::<E>()?);
            let dw = gpu.zeros::<f32>(dout * din)?;
            let db = has_bias.then(|| gpu.zeros::<f32>(dout)).transpose()?;
            let dx = shape.backward(gpu, gb, xb, wb, &dw, db.as_ref())?;
            let mut grads = vec![Some(Tensor::from_cuda(gpu, dx, xs.shape())?), Some(Tensor::from_cuda(gpu, dw, ws.shape())?)];
            if let Some(db) = db {
                grads.push(Some(Tensor::from_cuda(gpu, db, &[dout])?));
            }
            Ok(grads)
        }))
    })
}

#[cfg(no_cuda_kernels)]
fn on_cuda(_: &mut Tape, x: &Var, _: &Var, _: Option<&Var>) -> Result<Var> {
    crate::bail!("linear: a tensor on {} in a build without CUDA kernels", x.value().device())
}
