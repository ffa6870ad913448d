//! Embedding gather and its deterministic scatter-add backward.

use crate::tensor::Float;
use rayon::prelude::*;

/// ids: [n] (already range-checked) -> rows of `table` [vocab, d].
pub fn forward<T: Float>(ids: &[usize], table: &[T], d: usize) -> Vec<T> {
    let mut out = vec![T::ZERO; ids.len() * d];
    out.par_chunks_mut(d).zip(ids.par_iter()).for_each(|(row, &id)| row.copy_from_slice(&table[id * d..(id + 1) * d]));
    out
}

/// dTable [vocab, d]: each row sums the gradients of the positions that used it, in position order
/// (positions are bucketed by id first, so rows are independent and the sum order is fixed).
pub fn backward<T: Float>(ids: &[usize], dy: &[T], vocab: usize, d: usize) -> Vec<T> {
    let mut start = vec![0usize; vocab + 1];
    for &id in ids {
        start[id + 1] += 1;
    }
    for v in 0..vocab {
        start[v + 1] += start[v];
    }
    let mut fill = start.clone();
    let mut positions = vec![0usize; ids.len()];
    for (pos, &id) in ids.iter().enumerate() {
        positions[fill[id]] = pos;
        fill[id] += 1;
    }
    let mut dtable = vec![T::ZERO; vocab * d];
    dtable.par_chunks_mut(d).enumerate().for_each(|(v, row)| {
        for &pos in &positions[start[v]..start[v + 1]] {
            for (r, &g) in row.iter_mut().zip(&dy[pos * d..(pos + 1) * d]) {
                *r += g;
            }
        }
    });
    dtable
}
