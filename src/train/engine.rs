//! Where training steps run. The forward and backward are the model's (model/retro.rs on src/ops, one
//! tape) on the CPU and on a GPU alike; what differs by device is which tensors the tape reads as the
//! parameters, and the optimizer step:
//! - CPU: the tape reads the parameters themselves (f32 or f64) and `AdamW` (adamw.rs) updates them.
//! - GPU (Megatron's mixed precision): f32 master weights and AdamW moments live on the device; the tape
//!   reads bf16 copies of what GEMMs and embeddings read and the f32 masters of LayerNorm; gradients come
//!   out in f32 and are summed into a flat arena; kernels/adamw.cu updates the whole arena of masters in
//!   one launch and rewrites the bf16 copies in the same pass (device_optimizer.rs, param_arena.rs).
//!   `to_host` copies masters and moments into the host model and `AdamW` for checkpoints and evaluation.
//!
//! Micro-batch gradients are summed in the engine; `apply` sums them over the data-parallel ranks
//! (data_parallel.rs), averages them and steps the optimizer.

use super::data_parallel::{DataParallel, OverlappedReduce};
use super::{AdamW, AdamWConfig, StepStats};
use crate::autograd::Tape;
use crate::model::{Batch, RetroModel};
use crate::tensor::{Device, Tensor};
use crate::{with_float, Result};

/// A GPU engine's optimizer state (a build without kernels has none).
#[cfg(not(no_cuda_kernels))]
type DeviceState = Option<super::device_optimizer::DeviceOptimizer>;
#[cfg(no_cuda_kernels)]
type DeviceState = Option<()>;

pub struct Engine {
    device: Device,
    /// The step's summed gradients on the CPU (None before the first micro-batch; a GPU engine sums
    /// them in its optimizer's gradient arena).
    grads: Option<Vec<Tensor>>,
    /// Micro-batches accumulated since the last optimizer step.
    micro_batches: usize,
    /// The step's micro-batch losses, on the device until `micro_losses` reads them.
    losses: Vec<Tensor>,
    /// `grads` are already summed over the data-parallel ranks (`accumulate_last` overlapped it).
    reduced: bool,
    /// The data-parallel ranks whose gradients each step sums (one process: the identity).
    data_parallel: super::data_parallel::DataParallel,
    /// `--use-distributed-optimizer` on the CPU: this rank's shard of the AdamW moments.
    sharded: Option<super::distributed_optimizer::ShardedAdamW>,
    #[cfg(not(no_cuda_kernels))]
    gpu: DeviceState,
}

impl Engine {
    /// An engine on `device` for `model`, taking `opt`'s moments and step count (a resumed run's).
    pub fn new(device: Device, model: &RetroModel, opt: &AdamW) -> Result<Self> {
        model.config.check_device(device)?;
        match device {
            Device::Cpu => Ok(Self::around(device, None)),
            #[cfg(not(no_cuda_kernels))]
            Device::Cuda(_) => {
                Ok(Self::around(device, Some(super::device_optimizer::DeviceOptimizer::upload(device, model, opt)?)))
            }
            #[cfg(no_cuda_kernels)]
            Device::Cuda(_) => {
                let _ = (model, opt);
                crate::bail!("--device {device}: this build has no CUDA kernels (nvcc was not found at build time)")
            }
        }
    }

    /// A GPU engine whose weights are drawn on the device (`DeviceOptimizer::random`): a large model
    /// (857m and up) starts in milliseconds. `model` needs its structure only (`RetroModel::structure`).
    pub fn with_random_weights(device: Device, model: &RetroModel, config: AdamWConfig, seed: u64) -> Result<Self> {
        model.config.check_device(device)?;
        #[cfg(not(no_cuda_kernels))]
        return Ok(Self::around(
            device,
            Some(super::device_optimizer::DeviceOptimizer::random(device, model, config, seed)?),
        ));
        #[cfg(no_cuda_kernels)]
        {
            let _ = (model, config, seed);
            crate::bail!("--device {device}: this build has no CUDA kernels (nvcc was not found at build time)")
        }
    }

    fn around(device: Device, gpu: DeviceState) -> Self {
        #[cfg(no_cuda_kernels)]
        let _ = gpu;
        Self {
            device,
            grads: None,
            micro_batches: 0,
            losses: Vec::new(),
            reduced: false,
            data_parallel: DataParallel::single(),
            sharded: None,
            #[cfg(not(no_cuda_kernels))]
            gpu,
        }
    }

    /// Sum every step's gradients over `dp`'s data-parallel ranks (on a GPU over NCCL, each rank on its
    /// own device; collective: every rank calls it). With `dp.distributed_optimizer` the moments of `opt`
    /// are split across the ranks (on a GPU, in the device optimizer, even with one rank).
    pub fn with_data_parallel(mut self, dp: DataParallel, model: &RetroModel, opt: &AdamW) -> Result<Self> {
        crate::ensure!(
            !(dp.distributed_optimizer && dp.overlap_grad_reduce),
            "--overlap-grad-reduce is built for data parallelism without --use-distributed-optimizer"
        );
        #[cfg(not(no_cuda_kernels))]
        if let Some(gpu) = &mut self.gpu {
            if dp.distributed_optimizer {
                let comm = crate::dist::nccl::NcclComm::new(&dp.group, gpu.gpu().clone())?;
                gpu.shard(comm, dp.bucket_size, model)?;
            } else if dp.size() > 1 || dp.overlap_grad_reduce {
                let comm = crate::dist::nccl::NcclComm::new(&dp.group, gpu.gpu().clone())?;
                gpu.set_data_parallel(comm);
                if dp.overlap_grad_reduce {
                    gpu.overlap_grad_reduce(dp.bucket_size)?;
                }
            }
        }
        if dp.distributed_optimizer && self.device == Device::Cpu {
            self.sharded = Some(super::distributed_optimizer::ShardedAdamW::from_full(opt, model, &dp)?);
        }
        self.data_parallel = dp;
        Ok(self)
    }

    /// True when the distributed optimizer holds this rank's shard of the AdamW moments (so the host
    /// `AdamW` need not keep them between checkpoints).
    pub fn shards_moments(&self) -> bool {
        #[cfg(not(no_cuda_kernels))]
        if let Some(gpu) = &self.gpu {
            return gpu.is_sharded();
        }
        self.sharded.is_some()
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// What the tape reads as the parameters (on the engine's device).
    pub fn leaves<'a>(&'a self, model: &'a RetroModel) -> &'a [Tensor] {
        #[cfg(not(no_cuda_kernels))]
        if let Some(gpu) = &self.gpu {
            return gpu.leaves();
        }
        &model.params.tensors
    }

    /// Forward and backward of one micro-batch on the engine's device (dropout masks from `seed`), its
    /// gradients added to the step's. Queues the work and returns (the loss stays on the device until
    /// `micro_losses`).
    pub fn accumulate(&mut self, model: &RetroModel, batch: &Batch, seed: u64) -> Result<()> {
        let tape = Tape::training(model.config.dropout, seed);
        let (loss, grads) = model.forward_backward(self.leaves(model), batch, tape)?;
        self.count(loss);
        #[cfg(not(no_cuda_kernels))]
        if let Some(gpu) = &mut self.gpu {
            return gpu.accumulate(&grads);
        }
        match &mut self.grads {
            None => self.grads = Some(grads),
            Some(acc) => {
                for (a, g) in acc.iter_mut().zip(&grads) {
                    a.add_assign(g)?;
                }
            }
        }
        Ok(())
    }

    /// `accumulate` for the step's last micro-batch. With `--overlap-grad-reduce` (without the
    /// distributed optimizer; on the CPU with more than one data-parallel rank) its backward sums each
    /// bucket of gradients over the ranks as soon as the bucket is complete (on the CPU
    /// `OverlappedReduce`, on a GPU NCCL on the communication stream: `DeviceOptimizer::add_gradient`),
    /// so the communication runs behind the rest of the backward and `apply` finds the sums done.
    pub fn accumulate_last(&mut self, model: &RetroModel, batch: &Batch, seed: u64) -> Result<()> {
        #[cfg(not(no_cuda_kernels))]
        if let Some(gpu) = self.gpu.as_mut().filter(|gpu| gpu.overlaps()) {
            let tape = Tape::training(model.config.dropout, seed);
            let leaves = gpu.leaves().to_vec();
            gpu.begin_overlapped();
            let loss = model.forward_backward_each(&leaves, batch, tape, |event| match event {
                Some((i, g)) => gpu.add_gradient(i, &g),
                None => Ok(()),
            })?;
            gpu.finish_overlapped()?;
            self.count(loss);
            return Ok(());
        }
        let dp = &self.data_parallel;
        let overlap = dp.overlap_grad_reduce && dp.size() > 1 && self.sharded.is_none() && self.device == Device::Cpu;
        if !overlap {
            return self.accumulate(model, batch, seed);
        }
        let tape = Tape::training(model.config.dropout, seed);
        let leaves = &model.params.tensors; // on the CPU the tape reads the parameters themselves
        let shapes = leaves.iter().map(|t| t.shape().to_vec()).collect();
        let earlier = self.grads.take();
        let (loss, grads) = with_float!(model.params.dtype(), "overlapped gradient reduction", T => {
            let mut reduce = OverlappedReduce::<T>::new(dp, shapes, earlier);
            let loss = model.forward_backward_each(leaves, batch, tape, |event| reduce.ready(event))?;
            (loss, reduce.finish()?)
        });
        self.count(loss);
        self.grads = Some(grads);
        self.reduced = true;
        Ok(())
    }

    /// A micro-batch's loss joins the step's.
    fn count(&mut self, loss: Tensor) {
        if self.micro_batches == 0 {
            self.losses.clear(); // the previous step's, unread
        }
        self.losses.push(loss);
        self.micro_batches += 1;
    }

    /// The losses of this step's micro-batches, in order (before or after `apply`): on a GPU the step's
    /// one wait for its forward and backward passes (the watchdog times its NCCL collectives, not this
    /// wait, which includes the step's own kernels).
    pub fn micro_losses(&self) -> Result<Vec<f64>> {
        (self.losses.iter()).map(|l| Ok(l.to(Device::Cpu)?.to_f64_vec()[0])).collect()
    }

    /// The optimizer step at `lr` on the average of the micro-batches accumulated since the last one.
    pub fn apply(&mut self, model: &mut RetroModel, opt: &mut AdamW, lr: f64) -> Result<StepStats> {
        let micro_batches = std::mem::take(&mut self.micro_batches);
        crate::ensure!(micro_batches > 0, "an optimizer step without a micro-batch");
        #[cfg(not(no_cuda_kernels))]
        if let Some(gpu) = &mut self.gpu {
            return gpu.step(lr, micro_batches);
        }
        let Some(mut grads) = self.grads.take() else { crate::bail!("an optimizer step without gradients") };
        if let Some(sharded) = &mut self.sharded {
            let all = micro_batches * self.data_parallel.size();
            return sharded.step(&mut model.params.tensors, &grads, lr, all, &self.data_parallel);
        }
        if !std::mem::take(&mut self.reduced) {
            self.data_parallel.all_reduce_grads(&mut grads)?;
        }
        let micro_batches = micro_batches * self.data_parallel.size();
        if micro_batches > 1 {
            for g in grads.iter_mut() {
                g.scale(1.0 / micro_batches as f64)?;
            }
        }
        let grad_norm = super::adamw::model_grad_norm(model, &grads);
        opt.step_with_norm(&mut model.params.tensors, &mut grads, lr, grad_norm)
    }

    /// Bring the weights and optimizer state into `model` and `opt` (on the CPU they are there, except the
    /// distributed optimizer's moments, which are gathered: then a collective, every rank calls it).
    pub fn to_host(&self, model: &mut RetroModel, opt: &mut AdamW) -> Result<()> {
        if let Some(sharded) = &self.sharded {
            return sharded.to_full(opt, &model.params.tensors, &self.data_parallel);
        }
        #[cfg(not(no_cuda_kernels))]
        if let Some(gpu) = &self.gpu {
            return gpu.to_host(model, opt);
        }
        let _ = (model, opt);
        Ok(())
    }
}
