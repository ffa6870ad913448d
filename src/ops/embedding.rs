use super::same_float_dtype;
use crate::autograd::{Tape, Var};
use crate::backend::cpu::embedding as cpu;
use crate::tensor::{Device, Float, Tensor};
use crate::{bail, ensure, with_float, Result};

/// Rows of `table` [vocab, d] picked by `ids` (i32/i64, any shape) -> ids.shape + [d] (the BERT
/// embedder's three lookups; a vocab-parallel model's positions). On a GPU kernels/embedding.cu's
/// `embedding_rows` (the decoder's own input is the fused `word_position_embedding`).
pub fn embedding(tape: &mut Tape, ids: &Tensor, table: &Var) -> Result<Var> {
    let dtype = same_float_dtype("embedding", &[table])?;
    ensure!(table.shape().len() == 2, "embedding: table must be [vocab, d], got {:?}", table.shape());
    let idx = checked_ids("embedding", ids, table.shape()[0])?;
    if table.value().device() != Device::Cpu {
        let rows: Vec<i32> = idx.iter().map(|&i| i as i32).collect();
        return rows_on_cuda(tape, "embedding", &rows, ids.shape(), table);
    }
    crate::profile::timed(
        "embedding",
        "forward",
        || with_float!(dtype, "embedding", T => run::<T>(tape, idx, ids.shape(), table)),
    )
}

fn run<T: Float>(tape: &mut Tape, idx: Vec<usize>, ids_shape: &[usize], table: &Var) -> Result<Var> {
    let (vocab, d) = (table.shape()[0], table.shape()[1]);
    let mut shape = ids_shape.to_vec();
    shape.push(d);
    let out = Tensor::from_vec(cpu::forward(&idx, table.value().data::<T>()?, d), &shape)?;
    Ok(tape.record("embedding", &[table], out, move |g, _| {
        Ok(vec![Some(Tensor::from_vec(cpu::backward(&idx, g.data::<T>()?, vocab, d), &[vocab, d])?)])
    }))
}

/// GPT's input embedding, Megatron's `word_embeddings(ids) + position_embeddings(positions)`: for token
/// i of `ids` (any shape, last dimension s) the row `ids[i]` of `word` [vocab, d] plus the row
/// `first_position + i % s` of `position` [positions, d] -> ids.shape + [d]. One op on both devices
/// (kernels/embedding.cu fuses the two gathers and the add; its backward is deterministic).
pub fn word_position_embedding(
    tape: &mut Tape,
    ids: &Tensor,
    word: &Var,
    position: &Var,
    first_position: usize,
) -> Result<Var> {
    let dtype = same_float_dtype("word_position_embedding", &[word, position])?;
    let (ws, ps) = (word.shape(), position.shape());
    ensure!(
        ws.len() == 2 && ps.len() == 2 && ws[1] == ps[1],
        "word_position_embedding: tables {:?} and {:?} must be [vocab, d] and [positions, d]",
        ws,
        ps
    );
    let period = ids.last_dim().max(1);
    ensure!(
        first_position + period <= ps[0],
        "word_position_embedding: positions {first_position}..{} of ids {:?} are past the table's {} rows",
        first_position + period,
        ids.shape(),
        ps[0]
    );
    let idx = checked_ids("word_position_embedding", ids, ws[0])?;
    if word.value().device() != Device::Cpu {
        return word_position_on_cuda(tape, &idx, ids.shape(), word, position, first_position);
    }
    let positions: Vec<usize> = (0..idx.len()).map(|i| first_position + i % period).collect();
    crate::profile::timed("word_position_embedding", "forward", || {
        with_float!(dtype, "word_position_embedding", T => {
            let (vocab, npos, d) = (ws[0], ps[0], ws[1]);
            let mut shape = ids.shape().to_vec();
            shape.push(d);
            let words = cpu::forward(&idx, word.value().data::<T>()?, d);
            let pos = cpu::forward(&positions, position.value().data::<T>()?, d);
            let out = Tensor::from_vec(crate::backend::cpu::elementwise::add(&words, &pos), &shape)?;
            Ok(tape.record("word_position_embedding", &[word, position], out, move |g, _| {
                let g = g.data::<T>()?;
                Ok(vec![
                    Some(Tensor::from_vec(cpu::backward(&idx, g, vocab, d), &[vocab, d])?),
                    Some(Tensor::from_vec(cpu::backward(&positions, g, npos, d), &[npos, d])?),
                ])
            }))
        })
    })
}

/// The ids as table rows, each checked against the table's `rows`.
fn checked_ids(op: &str, ids: &Tensor, rows: usize) -> Result<Vec<usize>> {
    let raw = ids.indices().map_err(|e| e.context(op.to_string()))?;
    let mut idx = Vec::with_capacity(raw.len());
    for (pos, &id) in raw.iter().enumerate() {
        if id < 0 || id as usize >= rows {
            bail!("{op}: id {id} at flat position {pos} of ids {:?} is outside the table's {rows} rows", ids.shape());
        }
        idx.push(id as usize);
    }
    Ok(idx)
}

#[cfg(not(no_cuda_kernels))]
fn word_position_on_cuda(
    tape: &mut Tape,
    idx: &[usize],
    ids_shape: &[usize],
    word: &Var,
    position: &Var,
    first: usize,
) -> Result<Var> {
    use crate::backend::cuda::embedding::{self as kernel, Positions, TokenBatch};
    let (vocab, npos, d) = (word.shape()[0], position.shape()[0], word.shape()[1]);
    let at = Positions { first, period: ids_shape.last().copied().unwrap_or(1).max(1) };
    let mut shape = ids_shape.to_vec();
    shape.push(d);
    let ids: Vec<i32> = idx.iter().map(|&i| i as i32).collect();
    crate::with_gpu_float!(word.dtype(), "word_position_embedding", E => {
        let ((gpu, wb), (_, pb)) = (word.value().cuda::<E>()?, position.value().cuda::<E>()?);
        let batch = TokenBatch::new(gpu, &ids, vocab)?;
        let out = Tensor::from_cuda(gpu, kernel::forward(gpu, &batch, wb, pb, d, at)?, &shape)?;
        let gpu = gpu.clone();
        Ok(tape.record("word_position_embedding", &[word, position], out, move |g, _| {
            let (_, gb) = g.cuda::<E>()?;
            let (dword, dposition) = (gpu.zeros::<f32>(vocab * d)?, gpu.zeros::<f32>(npos * d)?);
            kernel::backward(&gpu, &batch, gb, &dword, &dposition, d, at)?;
            Ok(vec![
                Some(Tensor::from_cuda(&gpu, dword, &[vocab, d])?),
                Some(Tensor::from_cuda(&gpu, dposition, &[npos, d])?),
            ])
        }))
    })
}

/// Rows of `table` [rows, d] on the GPU for `ids` (-1: a zero row whose gradient is dropped) -> the ids'
/// shape + [d]; the backward adds each row's tokens' gradients in a fixed order (f32).
#[cfg(not(no_cuda_kernels))]
pub(crate) fn rows_on_cuda(
    tape: &mut Tape,
    op: &'static str,
    ids: &[i32],
    ids_shape: &[usize],
    table: &Var,
) -> Result<Var> {
    use crate::backend::cuda::embedding::{self as kernel, TokenBatch};
    let (rows, d) = (table.shape()[0], table.shape()[1]);
    let mut shape = ids_shape.to_vec();
    shape.push(d);
    crate::with_gpu_float!(table.dtype(), op, E => {
        let (gpu, tb) = table.value().cuda::<E>()?;
        let batch = TokenBatch::with_missing(gpu, ids, rows).map_err(|e| e.context(op.to_string()))?;
        let out = Tensor::from_cuda(gpu, kernel::rows_forward(gpu, &batch, tb, d)?, &shape)?;
        let gpu = gpu.clone();
        Ok(tape.record(op, &[table], out, move |g, _| {
            let (_, gb) = g.cuda::<E>()?;
            let dtable = gpu.zeros::<f32>(rows * d)?;
            kernel::rows_backward(&gpu, &batch, gb, &dtable, d)?;
            Ok(vec![Some(Tensor::from_cuda(&gpu, dtable, &[rows, d])?)])
        }))
    })
}

#[cfg(no_cuda_kernels)]
pub(crate) fn rows_on_cuda(_: &mut Tape, op: &'static str, _: &[i32], _: &[usize], table: &Var) -> Result<Var> {
    bail!("{op}: a tensor on {} in a build without CUDA kernels", table.value().device())
}

#[cfg(no_cuda_kernels)]
fn word_position_on_cuda(_: &mut Tape, _: &[usize], _: &[usize], word: &Var, _: &Var, _: usize) -> Result<Var> {
    bail!("word_position_embedding: a tensor on {} in a build without CUDA kernels", word.value().device())
}
