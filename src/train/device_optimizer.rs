//! The optimizer state of a GPU run: f32 master weights and AdamW moments on the device, the copies the
//! tape reads (bf16 for GEMM and embedding operands, the masters themselves for LayerNorm), and the step:
//! the global gradient norm (deterministic per-tensor sums of squares, read once per step for clipping
//! and the metrics), then kernels/adamw.cu per parameter with the micro-batch average and the clip
//! coefficient folded into its gradient scale; the kernel rewrites the bf16 copy as it updates the master.
//! The one place device tensors are written in place: between steps, after the tape is gone.

use super::{AdamW, AdamWConfig, StepStats};
use crate::backend::cuda::{adamw, DeviceBuffer, Gpu};
use crate::kernels::abi::AdamwParams;
use crate::model::RetroModel;
use crate::tensor::{DType, Device, Tensor};
use crate::Result;
use half::bf16;
use std::sync::Arc;

pub struct DeviceOptimizer {
    gpu: Arc<Gpu>,
    masters: Vec<Tensor>,
    leaves: Vec<Tensor>,
    exp_avg: Vec<DeviceBuffer<f32>>,
    exp_avg_sq: Vec<DeviceBuffer<f32>>,
    decays: Vec<bool>,
    config: AdamWConfig,
    step: u64,
}

fn f32_buffer(t: &Tensor) -> Result<&DeviceBuffer<f32>> {
    Ok(t.cuda::<f32>()?.1)
}

impl DeviceOptimizer {
    /// `model`'s weights and `opt`'s moments copied to `device`.
    pub fn upload(device: Device, model: &RetroModel, opt: &AdamW) -> Result<Self> {
        let Device::Cuda(ordinal) = device else { crate::bail!("DeviceOptimizer on {device}") };
        let gpu = Gpu::shared(ordinal)?;
        // LayerNorm reads its master: that leaf is the master itself, so the update reaches it.
        let leaves = model.leaves_on(device)?;
        let masters = (model.params.specs.iter().zip(&model.params.tensors).zip(&leaves))
            .map(
                |((spec, t), leaf)| {
                    if spec.reads_master {
                        Ok(leaf.clone())
                    } else {
                        t.to_dtype(DType::F32)?.to(device)
                    }
                },
            )
            .collect::<Result<Vec<_>>>()?;
        let moments = |m: &[Tensor]| -> Result<Vec<DeviceBuffer<f32>>> {
            m.iter().map(|t| gpu.upload(t.to_dtype(DType::F32)?.data::<f32>()?)).collect()
        };
        let (exp_avg, exp_avg_sq) = (moments(&opt.exp_avg)?, moments(&opt.exp_avg_sq)?);
        Ok(Self::around(gpu, masters, leaves, exp_avg, exp_avg_sq, model, opt.config, opt.step))
    }

    /// Weights drawn on the GPU (Philox4x32-10, `crate::philox`'s layout: stream = the parameter's index)
    /// from the specs' initialisations: not the CPU's `RetroModel::init` values (another generator).
    pub fn random(device: Device, model: &RetroModel, config: AdamWConfig, seed: u64) -> Result<Self> {
        let Device::Cuda(ordinal) = device else { crate::bail!("DeviceOptimizer on {device}") };
        let gpu = Gpu::shared(ordinal)?;
        let (mut masters, mut leaves, mut exp_avg, mut exp_avg_sq) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (i, spec) in model.params.specs.iter().enumerate() {
            let n = spec.shape.iter().product();
            // The bf16 copy rounds the same f32 draw, so it equals the master rounded to bf16.
            let master = Tensor::from_cuda(&gpu, draw::<f32>(&gpu, spec.init, n, seed, i as u64)?, &spec.shape)?;
            leaves.push(match spec.reads_master {
                true => master.clone(),
                false => Tensor::from_cuda(&gpu, draw::<bf16>(&gpu, spec.init, n, seed, i as u64)?, &spec.shape)?,
            });
            masters.push(master);
            exp_avg.push(gpu.zeros::<f32>(n)?);
            exp_avg_sq.push(gpu.zeros::<f32>(n)?);
        }
        Ok(Self::around(gpu, masters, leaves, exp_avg, exp_avg_sq, model, config, 0))
    }

    #[allow(clippy::too_many_arguments)]
    fn around(
        gpu: Arc<Gpu>,
        masters: Vec<Tensor>,
        leaves: Vec<Tensor>,
        exp_avg: Vec<DeviceBuffer<f32>>,
        exp_avg_sq: Vec<DeviceBuffer<f32>>,
        model: &RetroModel,
        config: AdamWConfig,
        step: u64,
    ) -> Self {
        let decays = model.params.specs.iter().map(|s| s.shape.len() >= 2).collect();
        Self { gpu, masters, leaves, exp_avg, exp_avg_sq, decays, config, step }
    }

    /// What the tape reads as the parameters.
    pub fn leaves(&self) -> &[Tensor] {
        &self.leaves
    }

    /// AdamW at `lr` on `grads` (f32, on the device) times `grad_scale`, clipped as `AdamW::step` clips.
    pub fn step(&mut self, grads: &[Tensor], lr: f64, grad_scale: f64) -> Result<StepStats> {
        crate::ensure!(
            grads.len() == self.masters.len(),
            "{} gradients for {} parameters",
            grads.len(),
            self.masters.len()
        );
        let grad_bufs = grads.iter().map(f32_buffer).collect::<Result<Vec<_>>>()?;
        let sumsq: f64 = adamw::sum_squares_each(&self.gpu, &grad_bufs)?.iter().sum();
        let grad_norm = sumsq.sqrt() * grad_scale;
        crate::ensure!(grad_norm.is_finite(), "AdamW: the gradient norm is {grad_norm}; refusing to update");
        let clip_coef = match self.config.clip {
            Some(clip) => (clip / (grad_norm + 1e-6)).min(1.0),
            None => 1.0,
        };
        self.step += 1;
        for (i, grad) in grad_bufs.iter().enumerate() {
            let c = self.config.coefficients(lr, self.step, self.decays[i]);
            let param = f32_buffer(&self.masters[i])?;
            let copy = match self.leaves[i].dtype() {
                DType::BF16 => Some(self.leaves[i].cuda::<bf16>()?.1),
                _ => None,
            };
            let segment = adamw::Segment {
                param,
                grad,
                exp_avg: &self.exp_avg[i],
                exp_avg_sq: &self.exp_avg_sq[i],
                weights_bf16: copy,
                offset: 0,
            };
            adamw::update(&self.gpu, &segment, AdamwParams::new(&c, grad_scale * clip_coef, param.len()))?;
        }
        Ok(StepStats { grad_norm, clip_coef })
    }

    /// Copy the master weights into `model` and the moments and step count into `opt`.
    pub fn to_host(&self, model: &mut RetroModel, opt: &mut AdamW) -> Result<()> {
        crate::ensure!(
            model.params.tensors.len() == self.masters.len(),
            "to_host: the host model has {} parameter tensors, the GPU {} (a structure-only model has none)",
            model.params.tensors.len(),
            self.masters.len()
        );
        let download = |b: &DeviceBuffer<f32>, like: &Tensor| -> Result<Tensor> {
            Tensor::from_vec(self.gpu.download(b)?, like.shape())?.to_dtype(like.dtype())
        };
        for i in 0..self.masters.len() {
            model.params.tensors[i] = download(f32_buffer(&self.masters[i])?, &model.params.tensors[i])?;
            opt.exp_avg[i] = download(&self.exp_avg[i], &opt.exp_avg[i])?;
            opt.exp_avg_sq[i] = download(&self.exp_avg_sq[i], &opt.exp_avg_sq[i])?;
        }
        opt.step = self.step;
        Ok(())
    }
}

/// `n` values of a parameter's initialisation on the GPU (Normal: Philox stream `stream` under `seed`).
fn draw<E: crate::tensor::cuda::CudaFloat>(
    gpu: &Gpu,
    init: crate::model::params::Init,
    n: usize,
    seed: u64,
    stream: u64,
) -> Result<DeviceBuffer<E>> {
    use crate::model::params::Init;
    let buf = gpu.alloc::<E>(n)?;
    match init {
        Init::Normal(std) => crate::backend::cuda::random::fill_normal(gpu, &buf, seed, stream, std as f32)?,
        Init::Zeros => gpu.fill_zero(&buf)?,
        Init::Ones => gpu.write(&buf, 0, &vec![E::from_f32(1.0); n])?,
    }
    Ok(buf)
}
