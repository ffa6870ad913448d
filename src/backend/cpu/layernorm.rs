//! LayerNorm over the last dimension: `y = (x - mean) / sqrt(var + eps) * w + b`, biased variance.

use super::{column_sums, ROW_BLOCK};
use crate::tensor::Float;
use rayon::prelude::*;

/// Σ f(i) for i in 0..n with 8 interleaved accumulators: the loop vectorises (a single running sum is
/// a serial dependency chain), and the order is fixed, so the result is still deterministic.
#[inline(always)]
fn sum8<T: Float>(n: usize, f: impl Fn(usize) -> T) -> T {
    let mut acc = [T::ZERO; 8];
    let full = n / 8 * 8;
    for i in (0..full).step_by(8) {
        for (l, a) in acc.iter_mut().enumerate() {
            *a += f(i + l);
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for i in full..n {
        s += f(i);
    }
    s
}

pub struct Stats<T> {
    pub mean: Vec<T>,
    pub rstd: Vec<T>,
}

/// x: [n, d] -> (y [n, d], per-row mean and 1/std).
pub fn forward<T: Float>(x: &[T], w: &[T], b: &[T], d: usize, eps: f64) -> (Vec<T>, Stats<T>) {
    let n = x.len() / d;
    let mut y = vec![T::ZERO; n * d];
    let mut mean = vec![T::ZERO; n];
    let mut rstd = vec![T::ZERO; n];
    let eps = T::from_f64(eps);
    let inv_d = T::ONE / T::from_f64(d as f64);
    y.par_chunks_mut(d * ROW_BLOCK)
        .zip(mean.par_chunks_mut(ROW_BLOCK).zip(rstd.par_chunks_mut(ROW_BLOCK)))
        .enumerate()
        .for_each(move |(blk, (yb, (mb, rb)))| {
            super::simd::with_avx2(
                #[inline(always)]
                move || {
                    for (i, yr) in yb.chunks_mut(d).enumerate() {
                        let row = blk * ROW_BLOCK + i;
                        let xr = &x[row * d..(row + 1) * d];
                        let mu = sum8(d, |j| xr[j]) * inv_d;
                        let var = sum8(d, |j| (xr[j] - mu) * (xr[j] - mu)) * inv_d;
                        let rs = T::ONE / (var + eps).sqrt();
                        for j in 0..d {
                            yr[j] = (xr[j] - mu) * rs * w[j] + b[j];
                        }
                        mb[i] = mu;
                        rb[i] = rs;
                    }
                },
            );
        });
    (y, Stats { mean, rstd })
}

/// Returns (dx, dw, db).
pub fn backward<T: Float>(dy: &[T], x: &[T], w: &[T], stats: &Stats<T>, d: usize) -> (Vec<T>, Vec<T>, Vec<T>) {
    let n = x.len() / d;
    let inv_d = T::ONE / T::from_f64(d as f64);
    let mut dx = vec![T::ZERO; n * d];
    dx.par_chunks_mut(d).enumerate().for_each(move |(row, dxr)| {
        super::simd::with_avx2(
            #[inline(always)]
            move || {
                let (mu, rs) = (stats.mean[row], stats.rstd[row]);
                let xr = &x[row * d..(row + 1) * d];
                let dyr = &dy[row * d..(row + 1) * d];
                let sum_g = sum8(d, |j| dyr[j] * w[j]);
                let sum_gx = sum8(d, |j| dyr[j] * w[j] * (xr[j] - mu) * rs);
                let (mean_g, mean_gx) = (sum_g * inv_d, sum_gx * inv_d);
                for j in 0..d {
                    let xhat = (xr[j] - mu) * rs;
                    dxr[j] = rs * (dyr[j] * w[j] - mean_g - xhat * mean_gx);
                }
            },
        );
    });
    let dwb = column_sums(n, 2 * d, |row, acc: &mut [T]| {
        let (mu, rs) = (stats.mean[row], stats.rstd[row]);
        let (adw, adb) = acc.split_at_mut(d);
        for j in 0..d {
            let g = dy[row * d + j];
            adw[j] += g * (x[row * d + j] - mu) * rs;
            adb[j] += g;
        }
    });
    let (dw, db) = dwb.split_at(d);
    (dx, dw.to_vec(), db.to_vec())
}
