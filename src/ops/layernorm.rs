use super::same_float_dtype;
use crate::autograd::{Tape, Var};
use crate::backend::cpu::layernorm as cpu;
use crate::tensor::{Device, Float, Tensor};
use crate::{ensure, with_float, Result};

/// LayerNorm over the last dimension with affine weight and bias [d]. On the GPU (kernels/layernorm.cu)
/// x is bf16 or f32 and the weight and bias are f32; the statistics are f32.
pub fn layer_norm(tape: &mut Tape, x: &Var, w: &Var, b: &Var, eps: f64) -> Result<Var> {
    let d = x.value().last_dim();
    let device = super::cuda::same_device("layer_norm", &[x, w, b])?;
    ensure!(
        w.shape() == [d] && b.shape() == [d],
        "layer_norm: input {:?} needs weight and bias [{d}], got {:?} and {:?}",
        x.shape(),
        w.shape(),
        b.shape()
    );
    if device != Device::Cpu {
        return on_cuda(tape, x, w, b, eps);
    }
    let dtype = same_float_dtype("layer_norm", &[x, w, b])?;
    crate::profile::timed(
        "layer_norm",
        "forward",
        || with_float!(dtype, "layer_norm", T => run::<T>(tape, x, w, b, eps)),
    )
}

/// `h = x + r` and `y = LayerNorm(h)`: a pre-LN layer's residual add and the LayerNorm that reads its
/// result, as the tape's `add` and `layer_norm` nodes (their backwards unchanged). On the GPU one kernel
/// (kernels/layernorm.cu's residual_layernorm_forward) writes both, reading x and r once and h not at
/// all; on the CPU the two ops run one after the other. Returns (h, y).
pub fn add_layer_norm(tape: &mut Tape, x: &Var, r: &Var, w: &Var, b: &Var, eps: f64) -> Result<(Var, Var)> {
    let device = super::cuda::same_device("add_layer_norm", &[x, r, w, b])?;
    if device == Device::Cpu {
        let h = super::add(tape, x, r)?;
        let y = layer_norm(tape, &h, w, b, eps)?;
        return Ok((h, y));
    }
    super::same_float_dtype("add_layer_norm", &[x, r])?;
    ensure!(x.shape() == r.shape(), "add_layer_norm: shapes {:?} and {:?} differ", x.shape(), r.shape());
    let d = x.value().last_dim();
    ensure!(
        w.shape() == [d] && b.shape() == [d],
        "add_layer_norm: input {:?} needs weight and bias [{d}], got {:?} and {:?}",
        x.shape(),
        w.shape(),
        b.shape()
    );
    residual_on_cuda(tape, x, r, w, b, eps)
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

#[cfg(not(no_cuda_kernels))]
fn on_cuda(tape: &mut Tape, x: &Var, w: &Var, b: &Var, eps: f64) -> Result<Var> {
    use crate::backend::cuda::layernorm as kernel;
    let d = x.value().last_dim();
    masters_f32(w, b)?;
    crate::with_gpu_float!(x.dtype(), "layer_norm", E => {
        let ((gpu, xb), (_, wb), (_, bb)) = (x.value().cuda::<E>()?, w.value().cuda::<f32>()?, b.value().cuda::<f32>()?);
        let (y, stats) = kernel::forward(gpu, xb, wb, bb, d, eps as f32)?;
        record_cuda::<E>(tape, x, w, b, Tensor::from_cuda(gpu, y, x.shape())?, stats)
    })
}

#[cfg(not(no_cuda_kernels))]
fn residual_on_cuda(tape: &mut Tape, x: &Var, r: &Var, w: &Var, b: &Var, eps: f64) -> Result<(Var, Var)> {
    use crate::backend::cuda::layernorm as kernel;
    let d = x.value().last_dim();
    masters_f32(w, b)?;
    crate::with_gpu_float!(x.dtype(), "add_layer_norm", E => {
        let ((gpu, xb), (_, rb)) = (x.value().cuda::<E>()?, r.value().cuda::<E>()?);
        let ((_, wb), (_, bb)) = (w.value().cuda::<f32>()?, b.value().cuda::<f32>()?);
        let (h, y, stats) = kernel::residual_forward(gpu, xb, rb, wb, bb, d, eps as f32)?;
        let h = tape.record("add", &[x, r], Tensor::from_cuda(gpu, h, x.shape())?, |g, _| {
            Ok(vec![Some(g.clone()), Some(g.clone())])
        });
        let y = record_cuda::<E>(tape, &h, w, b, Tensor::from_cuda(gpu, y, x.shape())?, stats)?;
        Ok((h, y))
    })
}

#[cfg(not(no_cuda_kernels))]
fn masters_f32(w: &Var, b: &Var) -> Result<()> {
    ensure!(
        w.dtype() == crate::tensor::DType::F32 && b.dtype() == crate::tensor::DType::F32,
        "layer_norm on the GPU: weight and bias must be f32 (the master copies), got {} and {}",
        w.dtype(),
        b.dtype()
    );
    Ok(())
}

/// Records `out = LayerNorm(x)` (computed on the GPU with `stats`) and its backward.
#[cfg(not(no_cuda_kernels))]
fn record_cuda<E: crate::tensor::cuda::CudaFloat>(
    tape: &mut Tape,
    x: &Var,
    w: &Var,
    b: &Var,
    out: Tensor,
    stats: crate::backend::cuda::layernorm::Stats,
) -> Result<Var> {
    use crate::backend::cuda::layernorm as kernel;
    let d = x.value().last_dim();
    let (xs, ws) = (x.value().clone(), w.value().clone());
    Ok(tape.record("layer_norm", &[x, w, b], out, move |g, _| {
        let ((gpu, xb), (_, wb), (_, gb)) = (xs.cuda::<E>()?, ws.cuda::<f32>()?, g.cuda::<E>()?);
        let (dw, db) = (gpu.zeros::<f32>(d)?, gpu.zeros::<f32>(d)?);
        let dx = kernel::backward(gpu, gb, xb, &stats, wb, &dw, &db, d)?;
        Ok(vec![
            Some(Tensor::from_cuda(gpu, dx, xs.shape())?),
            Some(Tensor::from_cuda(gpu, dw, &[d])?),
            Some(Tensor::from_cuda(gpu, db, &[d])?),
        ])
    }))
}

#[cfg(no_cuda_kernels)]
fn on_cuda(_: &mut Tape, x: &Var, _: &Var, _: &Var, _: f64) -> Result<Var> {
    crate::bail!("layer_norm: a tensor on {} in a build without CUDA kernels", x.value().device())
}

#[cfg(no_cuda_kernels)]
fn residual_on_cuda(_: &mut Tape, x: &Var, _: &Var, _: &Var, _: &Var, _: f64) -> Result<(Var, Var)> {
    crate::bail!("add_layer_norm: a tensor on {} in a build without CUDA kernels", x.value().device())
}
