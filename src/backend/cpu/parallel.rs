//! Deterministic parallel helpers.

use crate::tensor::Float;
use rayon::prelude::*;

/// Rows per parallel block for row-wise kernels. Fixed, so reductions associate the same way on any machine.
pub const ROW_BLOCK: usize = 64;

/// A raw pointer that may cross threads; users guarantee that threads write disjoint elements.
#[derive(Clone, Copy)]
pub struct SendPtr<T>(pub *mut T);
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// The pointer (a method, so closures capture the whole `SendPtr`, not its non-`Send` field).
    #[inline(always)]
    pub fn get(self) -> *mut T {
        self.0
    }

    /// # Safety
    /// `offset` must be in bounds and no other thread may access the same element concurrently.
    #[inline(always)]
    pub unsafe fn add(self, offset: usize) -> *mut T {
        self.0.add(offset)
    }
}

/// Sum over `rows` of `contribution(row, acc)` into a `cols`-long vector, computed in fixed row blocks
/// whose partial sums are added in block order (deterministic).
pub fn column_sums<T: Float>(rows: usize, cols: usize, contribution: impl Fn(usize, &mut [T]) + Sync) -> Vec<T> {
    let blocks = rows.div_ceil(ROW_BLOCK);
    let partials: Vec<Vec<T>> = (0..blocks)
        .into_par_iter()
        .map(|blk| {
            let mut acc = vec![T::ZERO; cols];
            for row in blk * ROW_BLOCK..((blk + 1) * ROW_BLOCK).min(rows) {
                contribution(row, &mut acc);
            }
            acc
        })
        .collect();
    let mut total = vec![T::ZERO; cols];
    for p in partials {
        for (t, v) in total.iter_mut().zip(p) {
            *t += v;
        }
    }
    total
}
