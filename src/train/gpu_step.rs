//! One optimizer step on the GPU: zero the f32 gradients, run the explicit training step
//! (`model::step` on `CudaStep`), take the global gradient norm (deterministic per-parameter sums of
//! squares), and apply AdamW with the clip coefficient folded into each fused update, which also
//! refreshes the bf16 weight copies the GEMMs read.

use crate::backend::cuda::{adamw, step::CudaStep, DeviceBuffer, Gpu};
use crate::kernels::abi::AdamwParams;
use crate::model::step::{loss_and_grads, DeviceParams};
use crate::model::{Batch, RetroModel};
use crate::train::{optimizer::StepStats, AdamWConfig};
use crate::Result;
use half::bf16;
use std::sync::Arc;

pub struct GpuTrainer {
    pub backend: CudaStep<bf16>,
    pub params: DeviceParams<CudaStep<bf16>>,
    exp_avg: Vec<DeviceBuffer<f32>>,
    exp_avg_sq: Vec<DeviceBuffer<f32>>,
    decays: Vec<bool>,
    config: AdamWConfig,
    step: u64,
}

fn ints(t: &crate::tensor::Tensor) -> Result<Vec<i32>> {
    Ok(t.indices()?.iter().map(|&v| v as i32).collect())
}

impl GpuTrainer {
    pub fn new(gpu: Arc<Gpu>, model: &RetroModel, config: AdamWConfig) -> Result<Self> {
        let backend = CudaStep::new(gpu);
        let params = DeviceParams::upload(&backend, model)?;
        let zeros = |p: &DeviceParams<CudaStep<bf16>>| {
            p.values.iter().map(|v| backend.gpu.zeros::<f32>(v.len())).collect::<Result<Vec<_>>>()
        };
        let (exp_avg, exp_avg_sq) = (zeros(&params)?, zeros(&params)?);
        let decays = model.params.tensors.iter().map(|t| t.rank() >= 2).collect();
        Ok(Self { backend, params, exp_avg, exp_avg_sq, decays, config, step: 0 })
    }

    /// Forward, backward and AdamW at `lr` on one batch; returns the loss and the gradient statistics.
    pub fn train_step(&mut self, model: &RetroModel, batch: &Batch, lr: f64) -> Result<(f64, StepStats)> {
        let gpu = self.backend.gpu.clone();
        for g in &self.params.grads {
            gpu.fill_zero(g)?;
        }
        let b = batch.tokens.shape()[0];
        let neighbors = batch.neighbors.as_ref().map(ints).transpose()?;
        let loss = loss_and_grads(
            &self.backend,
            model,
            &mut self.params,
            &ints(&batch.tokens)?,
            &ints(&batch.labels)?,
            neighbors.as_deref(),
            b,
        )?;
        let mut sumsq = 0.0;
        for g in &self.params.grads {
            sumsq += adamw::sum_squares(&gpu, g)?;
        }
        let grad_norm = sumsq.sqrt();
        crate::ensure!(
            loss.is_finite() && grad_norm.is_finite(),
            "non-finite loss {loss} or gradient norm {grad_norm}"
        );
        let clip_coef = match self.config.clip {
            Some(clip) => (clip / (grad_norm + 1e-6)).min(1.0),
            None => 1.0,
        };
        self.step += 1;
        for i in 0..self.params.values.len() {
            let c = self.config.coefficients(lr, self.step, self.decays[i]);
            let segment = adamw::Segment {
                param: &self.params.values[i],
                grad: &self.params.grads[i],
                exp_avg: &self.exp_avg[i],
                exp_avg_sq: &self.exp_avg_sq[i],
                weights_bf16: self.params.matrices[i].as_ref(),
                offset: 0,
            };
            adamw::update(&gpu, &segment, AdamwParams::new(&c, clip_coef, self.params.values[i].len()))?;
        }
        Ok((loss, StepStats { grad_norm, clip_coef }))
    }
}
