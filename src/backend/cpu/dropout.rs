//! Dropout's factors on the CPU: 0 for a dropped element, 1 / (1 - p) for a kept one, from the Philox mask
//! `crate::philox::keep_mask` that kernels/dropout.cu (backend/cuda/dropout.rs) draws bit for bit.

use crate::tensor::Float;

/// Factors of elements `0..n` of Philox stream `stream` under `seed`.
pub fn factors<T: Float>(p: f64, seed: u64, stream: u64, n: usize) -> Vec<T> {
    let keep = T::from_f64(1.0 / (1.0 - p));
    crate::philox::keep_mask(seed, stream, n, crate::philox::drop_threshold(p))
        .into_iter()
        .map(|k| if k { keep } else { T::ZERO })
        .collect()
}
