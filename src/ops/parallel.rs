//! Tensor parallelism's ops (Megatron's `tensor_parallel/mappings.py` and its vocab-parallel embedding
//! and cross-entropy), on the CPU over MPI. A tensor-parallel group runs every op of a forward pass in the
//! same order on every rank, so the collectives inside these forwards and backwards pair up.
//! - `copy_to_tensor_parallel`: the identity; its backward sums the gradient over the group (the input
//!   of a column-parallel linear, which every rank reads whole).
//! - `reduce_from_tensor_parallel`: sums over the group; its backward is the identity (the output of a
//!   row-parallel linear).
//! - `vocab_parallel_embedding`: the rows of this rank's part of the vocabulary, zero for other ids
//!   (summed over the group by the caller).
//! - `vocab_parallel_cross_entropy`: the mean cross-entropy of logits split by vocabulary, from the
//!   group's row maxima, sums of exponentials and target logits; the whole logits row never exists.
//!
//! CPU tensors move over MPI (the group's `World`), GPU tensors over the group's NCCL communicator
//! (`TensorParallel::on_gpu`), queued on the compute stream in the tape's order; on a GPU the
//! cross-entropy's row statistics are kernels/vocab_parallel.cu's, the embedding's rows
//! kernels/embedding.cu's `embedding_rows`, the bias kernels/residual.cu's `add_bias`.

use super::same_float_dtype;
use crate::autograd::{Tape, Var};
use crate::dist::{Element, TensorParallel};
use crate::tensor::{Device, Float, Tensor};
use crate::{bail, ensure, with_float, Result};

/// `t` summed over the group (a new tensor).
fn all_reduce(t: &Tensor, tp: &TensorParallel, op: &str) -> Result<Tensor> {
    if t.device() != Device::Cpu {
        return all_reduce_on_cuda(t, tp, op);
    }
    let mut out = t.clone();
    with_float!(t.dtype(), op, T => tp.all_reduce_sum(out.data_mut::<T>()?));
    Ok(out)
}

#[cfg(not(no_cuda_kernels))]
fn all_reduce_on_cuda(t: &Tensor, tp: &TensorParallel, op: &str) -> Result<Tensor> {
    let comm = tp.nccl(op)?;
    crate::with_gpu_float!(t.dtype(), op, E => {
        let (gpu, b) = t.cuda::<E>()?;
        let out = gpu.alloc::<E>(b.len())?;
        gpu.copy_rows(&out, 0, b.len(), b, 0, b.len(), b.len(), 1)?;
        comm.all_reduce_sum(&out)?;
        Tensor::from_cuda(gpu, out, t.shape())
    })
}

#[cfg(no_cuda_kernels)]
fn all_reduce_on_cuda(t: &Tensor, _: &TensorParallel, op: &str) -> Result<Tensor> {
    bail!("{op}: a tensor on {} in a build without CUDA kernels", t.device())
}

/// The identity forward; the gradient summed over the tensor-parallel group.
pub fn copy_to_tensor_parallel(tape: &mut Tape, x: &Var, tp: &TensorParallel) -> Result<Var> {
    let tp = tp.clone();
    Ok(tape.record("copy_to_tensor_parallel", &[x], x.value().clone(), move |g, _| {
        Ok(vec![Some(all_reduce(g, &tp, "copy_to_tensor_parallel (backward)")?)])
    }))
}

/// `x` summed over the tensor-parallel group; the identity backward.
pub fn reduce_from_tensor_parallel(tape: &mut Tape, x: &Var, tp: &TensorParallel) -> Result<Var> {
    let out = all_reduce(x.value(), tp, "reduce_from_tensor_parallel")?;
    Ok(tape.record("reduce_from_tensor_parallel", &[x], out, |g, _| Ok(vec![Some(g.clone())])))
}

/// `x + b` with b [d] added to every row of x [.., d] (a row-parallel linear's bias, added once after
/// the partial products are summed).
pub fn add_bias(tape: &mut Tape, x: &Var, b: &Var) -> Result<Var> {
    let dtype = same_float_dtype("add_bias", &[x, b])?;
    let d = x.value().last_dim();
    ensure!(b.shape() == [d], "add_bias: bias {:?} does not match input {:?}", b.shape(), x.shape());
    if super::cuda::same_device("add_bias", &[x, b])? != Device::Cpu {
        return add_bias_on_cuda(tape, x, b);
    }
    with_float!(dtype, "add_bias", T => {
        let bias = b.value().data::<T>()?;
        let mut out = x.value().to_vec::<T>()?;
        out.chunks_mut(d).for_each(|row| row.iter_mut().zip(bias).for_each(|(y, &b)| *y += b));
        let out = Tensor::from_vec(out, x.shape())?;
        Ok(tape.record("add_bias", &[x, b], out, move |g, _| {
            let mut db = vec![T::ZERO; d];
            g.data::<T>()?.chunks(d).for_each(|row| db.iter_mut().zip(row).for_each(|(s, &v)| *s += v));
            Ok(vec![Some(g.clone()), Some(Tensor::from_vec(db, &[d])?)])
        }))
    })
}

#[cfg(not(no_cuda_kernels))]
fn add_bias_on_cuda(tape: &mut Tape, x: &Var, b: &Var) -> Result<Var> {
    use crate::backend::cuda::{reduce, residual};
    let d = b.shape()[0];
    crate::with_gpu_float!(x.dtype(), "add_bias", E => {
        let ((gpu, xb), (_, bb)) = (x.value().cuda::<E>()?, b.value().cuda::<E>()?);
        let out = Tensor::from_cuda(gpu, residual::add_bias(gpu, xb, bb)?, x.shape())?;
        let gpu = gpu.clone();
        Ok(tape.record("add_bias", &[x, b], out, move |g, _| {
            let (_, gb) = g.cuda::<E>()?;
            let db = gpu.zeros::<f32>(d)?;
            reduce::add_column_sums(&gpu, &db, gb, d)?;
            Ok(vec![Some(g.clone()), Some(Tensor::from_cuda(&gpu, db, &[d])?)])
        }))
    })
}

#[cfg(no_cuda_kernels)]
fn add_bias_on_cuda(_: &mut Tape, x: &Var, _: &Var) -> Result<Var> {
    bail!("add_bias: a tensor on {} in a build without CUDA kernels", x.value().device())
}

/// The ids (any shape, in 0..vocab) as rows of `shard`, this rank's rows first_row..first_row + rows of a
/// [vocab, d] table; ids outside them give zero rows -> ids.shape + [d].
pub fn vocab_parallel_embedding(
    tape: &mut Tape,
    ids: &Tensor,
    shard: &Var,
    first_row: usize,
    vocab: usize,
) -> Result<Var> {
    let dtype = same_float_dtype("vocab_parallel_embedding", &[shard])?;
    ensure!(shard.shape().len() == 2, "vocab_parallel_embedding: table must be [rows, d], got {:?}", shard.shape());
    let (rows, d) = (shard.shape()[0], shard.shape()[1]);
    let mut owned = Vec::new(); // (position in ids, row of the shard)
    for (pos, &id) in ids.indices()?.iter().enumerate() {
        if id < 0 || id as usize >= vocab {
            bail!("vocab_parallel_embedding: id {id} at flat position {pos} is outside the vocabulary of {vocab}");
        }
        let id = id as usize;
        if (first_row..first_row + rows).contains(&id) {
            owned.push((pos, id - first_row));
        }
    }
    if shard.value().device() != Device::Cpu {
        // This rank's row of each id, -1 for the other ranks' ids (a zero row, no gradient).
        let mut local = vec![-1i32; ids.numel()];
        owned.iter().for_each(|&(pos, row)| local[pos] = row as i32);
        return super::embedding::rows_on_cuda(tape, "vocab_parallel_embedding", &local, ids.shape(), shard);
    }
    let mut shape = ids.shape().to_vec();
    shape.push(d);
    with_float!(dtype, "vocab_parallel_embedding", T => {
        let table = shard.value().data::<T>()?;
        let mut out = vec![T::ZERO; ids.numel() * d];
        for &(pos, row) in &owned {
            out[pos * d..(pos + 1) * d].copy_from_slice(&table[row * d..(row + 1) * d]);
        }
        let out = Tensor::from_vec(out, &shape)?;
        Ok(tape.record("vocab_parallel_embedding", &[shard], out, move |g, _| {
            let g = g.data::<T>()?;
            let mut dtable = vec![T::ZERO; rows * d];
            for &(pos, row) in &owned {
                dtable[row * d..(row + 1) * d].iter_mut().zip(&g[pos * d..(pos + 1) * d]).for_each(|(s, &v)| *s += v);
            }
            Ok(vec![Some(Tensor::from_vec(dtable, &[rows, d])?)])
        }))
    })
}

/// Mean softmax cross-entropy of logits split by vocabulary: `logits` [.., v/N] are this rank's classes
/// first_class..first_class + v/N of the group's v, `labels` [..] (i32/i64) in 0..v -> the same scalar on
/// every rank of the group. The backward needs no communication.
pub fn vocab_parallel_cross_entropy(
    tape: &mut Tape,
    logits: &Var,
    labels: &Tensor,
    first_class: usize,
    tp: &TensorParallel,
) -> Result<Var> {
    let dtype = same_float_dtype("vocab_parallel_cross_entropy", &[logits])?;
    let shape = logits.shape();
    ensure!(
        !shape.is_empty() && labels.shape() == &shape[..shape.len() - 1],
        "vocab_parallel_cross_entropy: labels {:?} do not match logits {:?} (expected labels = logits without the last dim)",
        labels.shape(),
        shape
    );
    ensure!(labels.numel() > 0, "vocab_parallel_cross_entropy: no labels");
    let (local, vocab) = (logits.value().last_dim(), logits.value().last_dim() * tp.size());
    let mut targets = Vec::with_capacity(labels.numel());
    for (pos, &y) in labels.indices()?.iter().enumerate() {
        if y < 0 || y as usize >= vocab {
            bail!(
                "vocab_parallel_cross_entropy: label {y} at flat position {pos} is outside the vocabulary of {vocab}"
            );
        }
        // This rank's class index of the label, if it holds it.
        targets.push((y as usize).checked_sub(first_class).filter(|&c| c < local));
    }
    if logits.value().device() != Device::Cpu {
        return split_cross_entropy_on_cuda(tape, logits, &targets, tp);
    }
    with_float!(dtype, "vocab_parallel_cross_entropy", T => split_cross_entropy::<T>(tape, logits, targets, tp))
}

/// The GPU's: the row maxima, then the sums of exponentials and target logits, each all-reduced over
/// the group between kernels; the gradient is made with the loss and scaled by the incoming gradient.
#[cfg(not(no_cuda_kernels))]
fn split_cross_entropy_on_cuda(
    tape: &mut Tape,
    logits: &Var,
    targets: &[Option<usize>],
    tp: &TensorParallel,
) -> Result<Var> {
    use crate::backend::cuda::{cross_entropy, reduce, residual, vocab_parallel as kernel};
    let comm = tp.nccl("vocab_parallel_cross_entropy")?;
    let (v, rows) = (logits.value().last_dim(), targets.len());
    let local: Vec<i32> = targets.iter().map(|t| t.map_or(-1, |c| c as i32)).collect();
    crate::with_gpu_float!(logits.dtype(), "vocab_parallel_cross_entropy", E => {
        let (gpu, lb) = logits.value().cuda::<E>()?;
        let targets = cross_entropy::targets(gpu, &local, v)?;
        let max = kernel::row_max(gpu, lb, v)?;
        comm.all_reduce_max(&max)?;
        let sums = kernel::row_sums(gpu, lb, v, &max, &targets)?;
        comm.all_reduce_sum(&sums)?;
        let (losses, grad) = kernel::loss_and_grad(gpu, lb, v, &max, &sums, &targets, 1.0 / rows as f32)?;
        let sum = gpu.zeros::<f32>(1)?;
        reduce::add_partials(gpu, &sum, &losses, rows, 1)?;
        let out = Tensor::from_cuda(gpu, residual::scale(gpu, &sum, 1.0 / rows as f32, None)?, &[])?;
        let (shape, gpu) = (logits.shape().to_vec(), gpu.clone());
        Ok(tape.record("vocab_parallel_cross_entropy", &[logits], out, move |g, _| {
            let (_, by) = g.cuda::<f32>()?;
            Ok(vec![Some(Tensor::from_cuda(&gpu, residual::scale(&gpu, &grad, 1.0, Some(by))?, &shape)?)])
        }))
    })
}

#[cfg(no_cuda_kernels)]
fn split_cross_entropy_on_cuda(_: &mut Tape, logits: &Var, _: &[Option<usize>], _: &TensorParallel) -> Result<Var> {
    bail!("vocab_parallel_cross_entropy: a tensor on {} in a build without CUDA kernels", logits.value().device())
}

fn split_cross_entropy<T: Float + Element>(
    tape: &mut Tape,
    logits: &Var,
    targets: Vec<Option<usize>>,
    tp: &TensorParallel,
) -> Result<Var> {
    let v = logits.value().last_dim();
    let z = logits.value().data::<T>()?;
    let mut max: Vec<T> = z.chunks(v).map(|row| row.iter().copied().fold(T::NEG_INFINITY, T::max)).collect();
    tp.all_reduce_max(&mut max);
    let mut sums: Vec<T> = z.chunks(v).zip(&max).map(|(row, &m)| row.iter().map(|&x| (x - m).exp()).sum()).collect();
    let mut picked: Vec<T> = (z.chunks(v).zip(&targets)).map(|(row, t)| t.map_or(T::ZERO, |c| row[c])).collect();
    tp.all_reduce_sum(&mut sums);
    tp.all_reduce_sum(&mut picked);
    let lse: Vec<T> = max.iter().zip(&sums).map(|(&m, &s)| m + s.ln()).collect();
    let total: f64 = lse.iter().zip(&picked).map(|(&l, &y)| (l - y).to_f64()).sum();
    let out = Tensor::scalar(T::from_f64(total / targets.len() as f64));
    let zs = logits.value().clone();
    Ok(tape.record("vocab_parallel_cross_entropy", &[logits], out, move |g, _| {
        let scale = g.data::<T>()?[0] / T::from_f64(targets.len() as f64);
        let z = zs.data::<T>()?;
        let mut d: Vec<T> = Vec::with_capacity(z.len());
        for ((row, &l), t) in z.chunks(v).zip(&lse).zip(&targets) {
            let start = d.len();
            d.extend(row.iter().map(|&x| (x - l).exp() * scale));
            if let Some(c) = t {
                d[start + c] -= scale;
            }
        }
        Ok(vec![Some(Tensor::from_vec(d, zs.shape())?)])
    }))
}
