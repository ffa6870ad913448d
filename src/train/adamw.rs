//! AdamW with global-norm gradient clipping, exactly torch.optim.AdamW + clip_grad_norm_ (the golden
//! file's `adamw.update`): grads are scaled by min(1, clip / (norm + 1e-6)); then per parameter
//! `p *= 1 - lr·wd` (only for parameters with dim >= 2), `m += (1-b1)(g - m)`, `v = b2·v + (1-b2)·g²`,
//! `p -= lr/(1-b1^t) · m / (sqrt(v)/sqrt(1-b2^t) + eps)`.

use crate::backend::cpu::adamw::{update_slice, Coefficients};
use crate::model::RetroModel;
use crate::tensor::Tensor;
use crate::{ensure, with_float, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Maximum global L2 norm of the gradients; `None` disables clipping.
    pub clip: Option<f64>,
}

impl Default for AdamWConfig {
    /// Megatron's RETRO settings: lr 6e-4, betas (0.9, 0.95), eps 1e-8, weight decay 0.1, clip 1.0.
    fn default() -> Self {
        Self { lr: 6e-4, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, clip: Some(1.0) }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// Global L2 norm of the gradients before clipping.
    pub grad_norm: f64,
    /// The factor the gradients were multiplied by (1 when not clipped).
    pub clip_coef: f64,
}

#[derive(Debug, Clone)]
pub struct AdamW {
    pub config: AdamWConfig,
    /// Number of steps taken.
    pub step: u64,
    pub exp_avg: Vec<Tensor>,
    pub exp_avg_sq: Vec<Tensor>,
}

/// Whether a parameter of this shape decays (torch's and Megatron's rule: weights, not biases or
/// LayerNorm parameters).
pub fn decays(shape: &[usize]) -> bool {
    shape.len() >= 2
}

/// Global L2 norm over all gradients, summed in f64.
pub fn global_norm(grads: &[Tensor]) -> f64 {
    grads.iter().map(Tensor::sum_squares).sum::<f64>().sqrt()
}

/// The global L2 norm of `model`'s gradients; tensor-parallel, by `TensorParallel::norm`'s rule.
pub fn model_grad_norm(model: &RetroModel, grads: &[Tensor]) -> f64 {
    let tp = &model.tensor_parallel;
    if !tp.is_split() {
        return global_norm(grads);
    }
    let (mut split, mut whole) = (0.0, 0.0);
    for (spec, g) in model.params.specs.iter().zip(grads) {
        match spec.split {
            Some(_) => split += g.sum_squares(),
            None => whole += g.sum_squares(),
        }
    }
    tp.norm(split, whole)
}

impl AdamW {
    /// Zero moments shaped like `params`.
    pub fn new(config: AdamWConfig, params: &[Tensor]) -> Self {
        let zeros = |p: &Tensor| Tensor::zeros(p.shape(), p.dtype());
        Self {
            config,
            step: 0,
            exp_avg: params.iter().map(zeros).collect(),
            exp_avg_sq: params.iter().map(zeros).collect(),
        }
    }

    /// Drop the moments (the distributed optimizer holds this rank's shard of them; `Engine::to_host`
    /// gathers them back for a checkpoint). Without this every rank would keep all of them anyway.
    pub fn release_moments(&mut self) {
        self.exp_avg = Vec::new();
        self.exp_avg_sq = Vec::new();
    }

    /// One update with learning rate `lr` (the schedule's value for this step). Scales `grads` in place
    /// when clipping.
    pub fn step(&mut self, params: &mut [Tensor], grads: &mut [Tensor], lr: f64) -> Result<StepStats> {
        let grad_norm = global_norm(grads);
        self.step_with_norm(params, grads, lr, grad_norm)
    }

    /// `step` with the gradients' global norm given (`model_grad_norm` of a tensor-parallel model).
    pub fn step_with_norm(
        &mut self,
        params: &mut [Tensor],
        grads: &mut [Tensor],
        lr: f64,
        grad_norm: f64,
    ) -> Result<StepStats> {
        ensure!(
            params.len() == grads.len() && params.len() == self.exp_avg.len(),
            "AdamW: {} parameters, {} gradients, {} moment slots",
            params.len(),
            grads.len(),
            self.exp_avg.len()
        );
        ensure!(grad_norm.is_finite(), "AdamW: the gradient norm is {grad_norm}; refusing to update");
        let clip_coef = match self.config.clip {
            Some(clip) => (clip / (grad_norm + 1e-6)).min(1.0),
            None => 1.0,
        };
        if clip_coef < 1.0 {
            for g in grads.iter_mut() {
                g.scale(clip_coef)?;
            }
        }
        self.step += 1;
        for (i, (p, g)) in params.iter_mut().zip(grads.iter()).enumerate() {
            ensure!(
                p.shape() == g.shape() && p.dtype() == g.dtype(),
                "AdamW: parameter {i} is {:?} {} but its gradient is {:?} {}",
                p.shape(),
                p.dtype(),
                g.shape(),
                g.dtype()
            );
            let coef = self.config.coefficients(lr, self.step, decays(p.shape()));
            let (m, v) = (&mut self.exp_avg[i], &mut self.exp_avg_sq[i]);
            with_float!(p.dtype(), "AdamW", T => update_slice::<T>(p.data_mut()?, g.data()?, m.data_mut()?, v.data_mut()?, &coef));
        }
        Ok(StepStats { grad_norm, clip_coef })
    }
}

impl AdamWConfig {
    /// Scalars for step `t` (1-based) at learning rate `lr`; `decays` for parameters with dim >= 2.
    pub fn coefficients(&self, lr: f64, t: u64, decays: bool) -> Coefficients {
        let t = t as i32;
        Coefficients {
            decay_factor: if decays { 1.0 - lr * self.weight_decay } else { 1.0 },
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            step_size: lr / (1.0 - self.beta1.powi(t)),
            bias_correction2_sqrt: (1.0 - self.beta2.powi(t)).sqrt(),
        }
    }
}
