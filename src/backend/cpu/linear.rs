//! Linear layer `y = x·Wᵀ + b` with `W` stored `[out, in]` (torch / Megatron layout).

use super::column_sums;
use super::gemm::matmul;
use crate::tensor::Float;
use rayon::prelude::*;

/// x: [n, din], w: [dout, din], b: [dout] -> y: [n, dout].
pub fn forward<T: Float>(x: &[T], w: &[T], b: Option<&[T]>, n: usize, din: usize, dout: usize) -> Vec<T> {
    let mut y = vec![T::ZERO; n * dout];
    if let Some(b) = b {
        y.par_chunks_mut(dout).for_each(|row| row.copy_from_slice(b));
    }
    matmul(x, false, w, true, &mut y, n, din, dout, b.is_some());
    y
}

/// dx = dy·W: [n, din].
pub fn backward_input<T: Float>(dy: &[T], w: &[T], n: usize, din: usize, dout: usize) -> Vec<T> {
    let mut dx = vec![T::ZERO; n * din];
    matmul(dy, false, w, false, &mut dx, n, dout, din, false);
    dx
}

/// dW = dyᵀ·x: [dout, din].
pub fn backward_weight<T: Float>(dy: &[T], x: &[T], n: usize, din: usize, dout: usize) -> Vec<T> {
    let mut dw = vec![T::ZERO; dout * din];
    matmul(dy, true, x, false, &mut dw, dout, n, din, false);
    dw
}

/// db = column sums of dy: [dout].
pub fn backward_bias<T: Float>(dy: &[T], n: usize, dout: usize) -> Vec<T> {
    column_sums(n, dout, |row, acc: &mut [T]| {
        for (a, &g) in acc.iter_mut().zip(&dy[row * dout..(row + 1) * dout]) {
            *a += g;
        }
    })
}
