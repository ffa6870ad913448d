//! Softmax cross-entropy averaged over rows: loss = mean_i (logsumexp(z_i) − z_i[label_i]).

use crate::tensor::Float;
use rayon::prelude::*;

/// logits: [n, v], labels in range. Returns (mean loss in f64, per-row logsumexp).
pub fn forward<T: Float>(logits: &[T], labels: &[usize], v: usize) -> (f64, Vec<T>) {
    let lse: Vec<T> = logits
        .par_chunks(v)
        .map(|row| {
            let max = row.iter().copied().fold(T::NEG_INFINITY, T::max);
            max + row.iter().map(|&z| (z - max).exp()).sum::<T>().ln()
        })
        .collect();
    let total: f64 = lse.iter().zip(labels).enumerate().map(|(i, (&l, &y))| (l - logits[i * v + y]).to_f64()).sum();
    (total / labels.len() as f64, lse)
}

/// dlogits = (softmax − onehot) · g / n.
pub fn backward<T: Float>(logits: &[T], labels: &[usize], lse: &[T], v: usize, g: T) -> Vec<T> {
    let scale = g / T::from_f64(labels.len() as f64);
    let mut d = vec![T::ZERO; logits.len()];
    d.par_chunks_mut(v).enumerate().for_each(|(i, row)| {
        for (j, x) in row.iter_mut().enumerate() {
            *x = (logits[i * v + j] - lse[i]).exp() * scale;
        }
        row[labels[i]] -= scale;
    });
    d
}
