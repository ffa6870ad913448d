use super::same_float_dtype;
use crate::autograd::{Tape, Var};
use crate::backend::cpu::embedding as cpu;
use crate::tensor::{Float, Tensor};
use crate::{bail, ensure, with_float, Result};

/// Rows of `table` [vocab, d] picked by `ids` (i32/i64, any shape) -> ids.shape + [d].
pub fn embedding(tape: &mut Tape, ids: &Tensor, table: &Var) -> Result<Var> {
    let dtype = same_float_dtype("embedding", &[table])?;
    ensure!(table.shape().len() == 2, "embedding: table must be [vocab, d], got {:?}", table.shape());
    let vocab = table.shape()[0];
    let raw = ids.indices().map_err(|e| e.context("embedding"))?;
    let mut idx = Vec::with_capacity(raw.len());
    for (pos, &id) in raw.iter().enumerate() {
        if id < 0 || id as usize >= vocab {
            bail!(
                "embedding: id {id} at flat position {pos} of ids {:?} is outside the table's {vocab} rows",
                ids.shape()
            );
        }
        idx.push(id as usize);
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
