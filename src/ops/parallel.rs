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
//! On a GPU these would move tensors over NCCL; that path is not built, so each op refuses a GPU tensor.

use super::same_float_dtype;
use crate::autograd::{Tape, Var};
use crate::dist::{Element, TensorParallel};
use crate::tensor::{Float, Tensor};
use crate::{bail, ensure, with_float, Result};

fn on_cpu(op: &str, x: &Var) -> Result<()> {
    super::cuda::cpu_only(op, x, "tensor parallelism runs on the CPU in this build; its NCCL path is not built")
}

/// `t` summed over the group (a new tensor).
fn all_reduce(t: &Tensor, tp: &TensorParallel) -> Result<Tensor> {
    let mut out = t.clone();
    with_float!(t.dtype(), "tensor-parallel all-reduce", T => tp.all_reduce_sum(out.data_mut::<T>()?));
    Ok(out)
}

/// The identity forward; the gradient summed over the tensor-parallel group.
pub fn copy_to_tensor_parallel(tape: &mut Tape, x: &Var, tp: &TensorParallel) -> Result<Var> {
    on_cpu("copy_to_tensor_parallel", x)?;
    let tp = tp.clone();
    Ok(tape.record("copy_to_tensor_parallel", &[x], x.value().clone(), move |g, _| Ok(vec![Some(all_reduce(g, &tp)?)])))
}

/// `x` summed over the tensor-parallel group; the identity backward.
pub fn reduce_from_tensor_parallel(tape: &mut Tape, x: &Var, tp: &TensorParallel) -> Result<Var> {
    on_cpu("reduce_from_tensor_parallel", x)?;
    let out = all_reduce(x.value(), tp)?;
    Ok(tape.record("reduce_from_tensor_parallel", &[x], out, |g, _| Ok(vec![Some(g.clone())])))
}

/// `x + b` with b [d] added to every row of x [.., d] (a row-parallel linear's bias, added once after
/// the partial products are summed).
pub fn add_bias(tape: &mut Tape, x: &Var, b: &Var) -> Result<Var> {
    let dtype = same_float_dtype("add_bias", &[x, b])?;
    on_cpu("add_bias", x)?;
    let d = x.value().last_dim();
    ensure!(b.shape() == [d], "add_bias: bias {:?} does not match input {:?}", b.shape(), x.shape());
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
    on_cpu("vocab_parallel_embedding", shard)?;
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
    on_cpu("vocab_parallel_cross_entropy", logits)?;
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
    with_float!(dtype, "vocab_parallel_cross_entropy", T => split_cross_entropy::<T>(tape, logits, targets, tp))
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
