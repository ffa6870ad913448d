//! Reshape, shift / slice / pad along a dimension (`shift_rows`: the CCA's shift by m - 1, as
//! kernels/residual.cu's shift_rows on the GPU), concatenation.

use crate::autograd::{Tape, Var};
use crate::backend::cpu::layout as cpu;
use crate::tensor::{numel, Tensor};
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
    let (outer, _, inner) = split_at_dim(first.shape(), dim);
    let sizes: Vec<usize> = xs.iter().map(|x| x.shape()[dim]).collect();
    let mut shape = first.shape().to_vec();
    shape[dim] = sizes.iter().sum();
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
    Ok(tape.record("concat", xs, out, move |g, needs| {
        let mut offset = 0;
        let mut grads = Vec::with_capacity(sizes.len());
        for (&size, &need) in sizes.iter().zip(needs) {
            grads.push(need.then(|| shift_values(g, dim, offset as isize, size)).transpose()?);
            offset += size;
        }
        Ok(grads)
    }))
}
