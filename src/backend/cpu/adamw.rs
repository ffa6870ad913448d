//! The AdamW update on the CPU (torch.optim.AdamW's formula, in the element type) and the per-step scalars
//! it shares with the CUDA kernel (kernels/adamw.cu, backend/cuda/adamw.rs). The optimizer's state and
//! clipping are train/adamw.rs.

use crate::tensor::Float;

/// The per-step scalars of one AdamW update (shared by the CPU loop and the CUDA kernel's parameters).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Coefficients {
    /// 1 - lr·weight_decay, or 1 for parameters without decay.
    pub decay_factor: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// lr / (1 - beta1^t)
    pub step_size: f64,
    /// sqrt(1 - beta2^t)
    pub bias_correction2_sqrt: f64,
}

/// One AdamW update of a parameter slice from its (already clipped) gradient, in the element type.
pub fn update_slice<T: Float>(p: &mut [T], g: &[T], m: &mut [T], v: &mut [T], c: &Coefficients) {
    let (decay_factor, one_minus_beta1) = (T::from_f64(c.decay_factor), T::from_f64(1.0 - c.beta1));
    let (beta2, one_minus_beta2, eps) = (T::from_f64(c.beta2), T::from_f64(1.0 - c.beta2), T::from_f64(c.eps));
    let (step_size, bc2_sqrt) = (T::from_f64(c.step_size), T::from_f64(c.bias_correction2_sqrt));
    for i in 0..p.len() {
        let gi = g[i];
        p[i] *= decay_factor;
        m[i] += one_minus_beta1 * (gi - m[i]);
        v[i] = v[i] * beta2 + one_minus_beta2 * gi * gi;
        let denom = v[i].sqrt() / bc2_sqrt + eps;
        p[i] -= step_size * (m[i] / denom);
    }
}
