//! `take`: columns of a table picked by index, `out[r, e] = x[r, index[e]]` for every row r of x
//! (an index may repeat); its backward adds each output column's gradient back into the column it came
//! from. It builds a score bias from a learned table (the `cca-relpos` variant: one table entry per
//! relative position, spread over every (query, key) pair at that distance). CPU only so far.

use super::same_float_dtype;
use crate::autograd::{Tape, Var};
use crate::tensor::{Float, Tensor};
use crate::{ensure, with_float, Result};
use std::sync::Arc;

/// x: [rows, n] (or any shape, the last dimension indexed) -> [rows, index.len()].
pub fn take(tape: &mut Tape, x: &Var, index: Arc<[u32]>) -> Result<Var> {
    let dtype = same_float_dtype("take", &[x])?;
    super::cuda::cpu_only("take", x, "runs on the CPU only so far; the cca-relpos variant has no GPU path yet")?;
    let shape = x.shape().to_vec();
    ensure!(!shape.is_empty(), "take: the table must have at least one dimension, got a scalar");
    let n = shape[shape.len() - 1];
    if let Some(&bad) = index.iter().find(|&&i| i as usize >= n) {
        crate::bail!("take: index {bad} out of range for a table {shape:?} of {n} columns");
    }
    let mut out_shape = shape.clone();
    *out_shape.last_mut().unwrap() = index.len();
    with_float!(dtype, "take", T => {
        let table = x.value().data::<T>()?;
        let out: Vec<T> = table.chunks(n.max(1)).flat_map(|row| index.iter().map(move |&i| row[i as usize])).collect();
        let out = Tensor::from_vec(out, &out_shape)?;
        Ok(tape.record("take", &[x], out, move |g, _| {
            let mut dx = vec![T::ZERO; shape.iter().product()];
            for (drow, grow) in dx.chunks_mut(n.max(1)).zip(g.data::<T>()?.chunks(index.len().max(1))) {
                index.iter().zip(grow).for_each(|(&i, &g)| drow[i as usize] += g);
            }
            Ok(vec![Some(Tensor::from_vec(dx, &shape)?)])
        }))
    })
}
