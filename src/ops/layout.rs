//! Reshape, shift / slice / pad along a dimension (`shift_rows`: the CCA's shift by m - 1), concatenation.
//! On the GPU these are strided copies (`Gpu::copy_rows`, cuMemcpy2DAsync) with no kernel.

use crate::autograd::{Tape, Var};
use crate::backend::cpu::layout as cpu;
use crate::tensor::{numel, Device, Tensor};
use crate::{bail, ensure, Result};

/// View with another shape (no copy); the gradient is reshaped back.
pub fn reshape(tape: &mut Tape, x: &Var, shape: &[usize]) -> Result<Var> {
    let out = x.value().reshape(shape)?;
    let in_shape = x.shape().to_vec();
    Ok(tape.record("reshape", &[x], out, move |g, _| Ok(vec![Some(g.reshape(&in_shape)?)])))
}

fn split_at_dim(shape: &[usize], dim: usize) -> (usize, usize, usize) {
    (numel(&shape[..dim]), shape[dim], numel(&shape[dim + 1..]))
}

fn shift_values(x: &Tensor, dim: usize, offset: isize, len: usize) -> Result<Tensor> {
    let (outer, size, inner) = split_at_dim(x.shape(), dim);
    let mut shape = x.shape().to_vec();
    shape[dim] = len;
    if x.device() != Device::Cpu {
        return shift_on_cuda(x, (outer, size, inner), offset, &shape);
    }
    macro_rules! go {
        ($t:ty) => {
            Tensor::from_vec(cpu::shift_rows(x.data::<$t>()?, outer, size, inner, offset, len), &shape)
        };
    }
    match x.dtype() {
        crate::tensor::DType::F32 => go!(f32),
        crate::tensor::DType::F64 => go!(f64),
        crate::tensor::DType::BF16 => go!(half::bf16),
        crate::tensor::DType::I32 => go!(i32),
        crate::tensor::DType::I64 => go!(i64),
    }
}

/// out[.., j, ..] = x[.., j + offset, ..] along `dim` for j in 0..len, zero where that is outside x.
/// Covers slicing (offset >= 0, short len) and zero padding (negative offset or long len).
pub fn shift_rows(tape: &mut Tape, x: &Var, dim: usize, offset: isize, len: usize) -> Result<Var> {
    ensure!(dim < x.shape().len(), "shift_rows: dim {dim} out of range for shape {:?}", x.shape());
    let out = crate::profile::timed("shift_rows", "forward", || shift_values(x.value(), dim, offset, len))?;
    let in_len = x.shape()[dim];
    Ok(tape.record("shift_rows", &[x], out, move |g, _| Ok(vec![Some(shift_values(g, dim, -offset, in_len)?)])))
}

/// x[.., start..start+len, ..] along `dim`.
pub fn narrow(tape: &mut Tape, x: &Var, dim: usize, start: usize, len: usize) -> Result<Var> {
    ensure!(
        dim < x.shape().len() && start + len <= x.shape()[dim],
        "narrow: range {start}..{} of dim {dim} is outside shape {:?}",
        start + len,
        x.shape()
    );
    shift_rows(tape, x, dim, start as isize, len)
}

/// `before` zeros in front and `after` zeros behind along `dim`.
pub fn pad(tape: &mut Tape, x: &Var, dim: usize, before: usize, after: usize) -> Result<Var> {
    ensure!(dim < x.shape().len(), "pad: dim {dim} out of range for shape {:?}", x.shape());
    let len = x.shape()[dim] + before + after;
    shift_rows(tape, x, dim, -(before as isize), len)
}

/// Concatenate along `dim`; all other dimensions must agree.
pub fn concat(tape: &mut Tape, xs: &[&Var], dim: usize) -> Result<Var> {
    let Some(first) = xs.first() else { bail!("concat: no inputs") };
    let dtype = first.dtype();
    ensure!(dim < first.shape().len(), "concat: dim {dim} out of range for shape {:?}", first.shape());
    for x in xs {
        let (a, b) = (x.shape(), first.shape());
        ensure!(
            x.dtype() == dtype
                && a.len() == b.len()
                && a.iter().zip(b).enumerate().all(|(i, (p, q))| i == dim || p == q),
            "concat: {:?} {} does not fit {:?} {} along dim {dim}",
            a,
            x.dtype(),
            b,
            dtype
        );
    }
    let device = super::cuda::same_device("concat", xs)?;
    let (outer, _, inner) = split_at_dim(first.shape(), dim);
    let sizes: Vec<usize> = xs.iter().map(|x| x.shape()[dim]).collect();
    let mut shape = first.shape().to_vec();
    shape[dim] = sizes.iter().sum();
    if device != Device::Cpu {
        let values: Vec<&Tensor> = xs.iter().map(|x| x.value()).collect();
        let out = concat_on_cuda(&values, &sizes, outer, inner, &shape)?;
        return Ok(record_concat(tape, xs, out, sizes, dim));
    }
    macro_rules! go {
        ($t:ty) => {{
            let parts = xs.iter().map(|x| x.value().data::<$t>()).collect::<Result<Vec<_>>>()?;
            Tensor::from_vec(cpu::concat(&parts, &sizes, outer, inner), &shape)?
        }};
    }
    let out = match dtype {
        crate::tensor::DType::F32 => go!(f32),
        crate::tensor::DType::F64 => go!(f64),
        crate::tensor::DType::BF16 => go!(half::bf16),
        crate::tensor::DType::I32 => go!(i32),
        crate::tensor::DType::I64 => go!(i64),
    };
    Ok(record_concat(tape, xs, out, sizes, dim))
}

fn record_concat(tape: &mut Tape, xs: &[&Var], out: Tensor, sizes: Vec<usize>, dim: usize) -> Var {
    tape.record("concat", xs, out, move |g, needs| {
        let mut offset = 0;
        let mut grads = Vec::with_capacity(sizes.len());
        for (&size, &need) in sizes.iter().zip(needs) {
            grads.push(need.then(|| shift_values(g, dim, offset as isize, size)).transpose()?);
            offset += size;
        }
        Ok(grads)
    })
}

/// Per outer index, rows `j + offset` of x's `size` rows (of `inner` elements) into row j of the
/// output, zero where the source row is outside x. Rows of a multiple of 8 elements (the CCA's shift of
/// the hidden states) take kernels/residual.cu's shift_rows, one pass writing values and zeros; others
/// (a narrow of the fused QKV columns for the KV cache) a memset and a strided copy.
#[cfg(not(no_cuda_kernels))]
fn shift_on_cuda(
    x: &Tensor,
    (outer, size, inner): (usize, usize, usize),
    offset: isize,
    shape: &[usize],
) -> Result<Tensor> {
    let len = shape.iter().product::<usize>() / (outer * inner).max(1);
    let lo = (-offset).clamp(0, len as isize) as usize;
    let hi = (size as isize - offset).clamp(lo as isize, len as isize) as usize;
    crate::with_gpu_float!(x.dtype(), "shift_rows", E => {
        let (gpu, src) = x.cuda::<E>()?;
        if inner % 8 == 0 {
            let out = crate::backend::cuda::residual::shift_rows(gpu, src, outer, size, len, inner, offset)?;
            return Tensor::from_cuda(gpu, out, shape);
        }
        let out = gpu.zeros::<E>(numel(shape))?;
        if hi == lo {
            return Tensor::from_cuda(gpu, out, shape);
        }
        let from = (lo as isize + offset) as usize;
        gpu.copy_rows(&out, lo * inner, len * inner, src, from * inner, size * inner, (hi - lo) * inner, outer)?;
        Tensor::from_cuda(gpu, out, shape)
    })
}

#[cfg(not(no_cuda_kernels))]
fn concat_on_cuda(xs: &[&Tensor], sizes: &[usize], outer: usize, inner: usize, shape: &[usize]) -> Result<Tensor> {
    let total: usize = sizes.iter().sum();
    crate::with_gpu_float!(xs[0].dtype(), "concat", E => {
        let gpu = xs[0].cuda::<E>()?.0.clone();
        let out = gpu.alloc::<E>(numel(shape))?;
        let mut at = 0;
        for (x, &size) in xs.iter().zip(sizes) {
            let (_, src) = x.cuda::<E>()?;
            gpu.copy_rows(&out, at * inner, total * inner, src, 0, size * inner, size * inner, outer)?;
            at += size;
        }
        Tensor::from_cuda(&gpu, out, shape)
    })
}

#[cfg(no_cuda_kernels)]
fn shift_on_cuda(x: &Tensor, _: (usize, usize, usize), _: isize, _: &[usize]) -> Result<Tensor> {
    bail!("shift_rows: a tensor on {} in a build without CUDA kernels", x.device())
}

#[cfg(no_cuda_kernels)]
fn concat_on_cuda(xs: &[&Tensor], _: &[usize], _: usize, _: usize, _: &[usize]) -> Result<Tensor> {
    bail!("concat: a tensor on {} in a build without CUDA kernels", xs[0].device())
}
