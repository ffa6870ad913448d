//! Optimizer steps on the GPU: the explicit training step (`model::step` on `CudaStep<bf16>`) adds each
//! micro-batch's gradients into f32 accumulators; `apply` takes the global gradient norm (deterministic
//! per-parameter sums of squares), and runs the fused AdamW kernel per parameter with the
//! micro-batch average and the clip coefficient folded into its gradient scale; the kernel also refreshes
//! the bf16 weight copies the GEMMs read. Master weights and moments stay on the GPU; `to_host` /
//! `from_host` move them to and from the CPU model and `AdamW` for checkpoints and evaluation.

use crate::backend::cuda::{adamw, step::CudaStep, DeviceBuffer, Gpu};
use crate::kernels::abi::AdamwParams;
use crate::model::step::{loss_and_grads, DeviceParams, StepBackend};
use crate::model::{Batch, RetroModel};
use crate::tensor::Tensor;
use crate::train::{AdamW, AdamWConfig, StepStats};
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

fn ints(t: &Tensor) -> Result<Vec<i32>> {
    Ok(t.indices()?.iter().map(|&v| v as i32).collect())
}

impl GpuTrainer {
    pub fn new(gpu: Arc<Gpu>, model: &RetroModel, config: AdamWConfig) -> Result<Self> {
        let backend = CudaStep::new(gpu);
        let params = DeviceParams::upload(&backend, model)?;
        Self::around(backend, params, model, config)
    }

    /// A trainer whose weights are drawn on the GPU (Philox4x32-10, `crate::philox`'s layout: stream =
    /// the parameter's index) from the specs' initialisations, so a large model (857m and up) starts in
    /// milliseconds instead of the host's seconds of Box-Muller. `model` needs its structure only
    /// (`RetroModel::structure`). Not the CPU's `RetroModel::init` values: another generator.
    pub fn with_random_weights(gpu: Arc<Gpu>, model: &RetroModel, config: AdamWConfig, seed: u64) -> Result<Self> {
        use crate::backend::cuda::random::fill_normal;
        use crate::model::params::Init;
        let backend = CudaStep::<bf16>::new(gpu);
        let g = &backend.gpu;
        let (mut values, mut copies, mut grads) = (Vec::new(), Vec::new(), Vec::new());
        for (i, spec) in model.params.specs.iter().enumerate() {
            let n = spec.shape.iter().product();
            let (value, copy) = (g.alloc::<f32>(n)?, g.alloc::<bf16>(n)?);
            match spec.init {
                // The bf16 copy rounds the same f32 draw, so it equals the value rounded to bf16.
                Init::Normal(std) => {
                    fill_normal(g, &value, seed, i as u64, std as f32)?;
                    fill_normal(g, &copy, seed, i as u64, std as f32)?;
                }
                Init::Zeros => {
                    g.fill_zero(&value)?;
                    g.fill_zero(&copy)?;
                }
                Init::Ones => {
                    g.write(&value, 0, &vec![1.0f32; n])?;
                    g.write(&copy, 0, &vec![bf16::ONE; n])?;
                }
            }
            values.push(value);
            copies.push(copy);
            grads.push(g.zeros::<f32>(n)?);
        }
        Self::around(backend, DeviceParams { values, copies, grads }, model, config)
    }

    fn around(
        backend: CudaStep<bf16>,
        params: DeviceParams<CudaStep<bf16>>,
        model: &RetroModel,
        config: AdamWConfig,
    ) -> Result<Self> {
        let zeros = |p: &DeviceParams<CudaStep<bf16>>| {
            p.values.iter().map(|v| backend.gpu.zeros::<f32>(v.len())).collect::<Result<Vec<_>>>()
        };
        let (exp_avg, exp_avg_sq) = (zeros(&params)?, zeros(&params)?);
        let decays = model.params.specs.iter().map(|s| s.shape.len() >= 2).collect();
        Ok(Self { backend, params, exp_avg, exp_avg_sq, decays, config, step: 0 })
    }

    /// Forward and backward of one micro-batch, its gradients added to the accumulators. Returns its loss.
    pub fn accumulate(&mut self, model: &RetroModel, batch: &Batch) -> Result<f64> {
        let b = batch.tokens.shape()[0];
        let neighbors = batch.neighbors.as_ref().map(ints).transpose()?;
        loss_and_grads(
            &self.backend,
            model,
            &mut self.params,
            &ints(&batch.tokens)?,
            &ints(&batch.labels)?,
            neighbors.as_deref(),
            b,
        )
    }

    /// AdamW at `lr` on the accumulated gradients times `grad_scale` (1 / micro-batches), clipped as
    /// `AdamW::step` clips; then the accumulators are zeroed for the next step.
    pub fn apply(&mut self, lr: f64, grad_scale: f64) -> Result<StepStats> {
        let gpu = self.backend.gpu.clone();
        let grads: Vec<&DeviceBuffer<f32>> = self.params.grads.iter().collect();
        let sumsq: f64 = adamw::sum_squares_each(&gpu, &grads)?.iter().sum();
        let grad_norm = sumsq.sqrt() * grad_scale;
        crate::ensure!(grad_norm.is_finite(), "the gradient norm is {grad_norm}; no update was applied");
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
                weights_bf16: Some(&self.params.copies[i]),
                offset: 0,
            };
            adamw::update(&gpu, &segment, AdamwParams::new(&c, grad_scale * clip_coef, self.params.values[i].len()))?;
        }
        for g in &self.params.grads {
            gpu.fill_zero(g)?;
        }
        Ok(StepStats { grad_norm, clip_coef })
    }

    /// One optimizer step on one batch: (loss, gradient statistics).
    pub fn train_step(&mut self, model: &RetroModel, batch: &Batch, lr: f64) -> Result<(f64, StepStats)> {
        let loss = self.accumulate(model, batch)?;
        crate::ensure!(loss.is_finite(), "the loss is {loss}; no update was applied");
        Ok((loss, self.apply(lr, 1.0)?))
    }

    /// Copy the master weights into `model` and the moments and step count into `opt` (for a
    /// checkpoint or a CPU evaluation).
    pub fn to_host(&self, model: &mut RetroModel, opt: &mut AdamW) -> Result<()> {
        crate::ensure!(
            model.params.tensors.len() == self.params.values.len(),
            "to_host: the host model has {} parameter tensors, the GPU {} (a structure-only model has none)",
            model.params.tensors.len(),
            self.params.values.len()
        );
        let download = |b: &DeviceBuffer<f32>, like: &Tensor| -> Result<Tensor> {
            Tensor::from_vec(self.backend.read_vec32(b)?, like.shape())?.to_dtype(like.dtype())
        };
        for i in 0..self.params.values.len() {
            model.params.tensors[i] = download(&self.params.values[i], &model.params.tensors[i])?;
            opt.exp_avg[i] = download(&self.exp_avg[i], &opt.exp_avg[i])?;
            opt.exp_avg_sq[i] = download(&self.exp_avg_sq[i], &opt.exp_avg_sq[i])?;
        }
        opt.step = self.step;
        Ok(())
    }

    /// Take the optimizer state of a resumed run (the weights come with `new`).
    pub fn from_host(&mut self, opt: &AdamW) -> Result<()> {
        let gpu = &self.backend.gpu;
        let upload = |t: &Tensor, dst: &DeviceBuffer<f32>| -> Result<()> {
            gpu.write(dst, 0, t.to_dtype(crate::tensor::DType::F32)?.data::<f32>()?)
        };
        for i in 0..self.params.values.len() {
            upload(&opt.exp_avg[i], &self.exp_avg[i])?;
            upload(&opt.exp_avg_sq[i], &self.exp_avg_sq[i])?;
        }
        self.step = opt.step;
        Ok(())
    }
}
