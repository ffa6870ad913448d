//! The optimizer state of a GPU run, in flat arenas laid out by `ParamArena`: f32 master weights, their
//! bf16 copies, the step's summed gradients and both AdamW moments, one device buffer each. The tape
//! reads views of them as the parameters: bf16 copies of what GEMMs and embeddings read, the f32 masters
//! of LayerNorm (`ParamSpec::reads_master`). A step is three launches whatever the model: the global
//! sum of squares of the gradients, AdamW over the whole arena with the micro-batch average and the clip
//! coefficient applied on the device (the kernel also rewrites the bf16 copies), and the zeroing of the
//! gradient arena for the next step (under data parallelism an NCCL all-reduce of the gradient arena
//! comes first). The host reads the norm once, after the update is queued.
//! With `--use-distributed-optimizer` (`shard`) the moments hold this rank's pieces only (the CPU's
//! `Shards` layout): per chunk of the gradient arena an NCCL reduce-scatter into the rank's summed
//! pieces, their sum of squares all-reduced for the norm, AdamW on the rank's pieces of the masters
//! (and bf16 copies), which are then all-gathered in place.
//! The one place device tensors are written in place: arena views, between tapes.

use super::distributed_optimizer::Shards;
use super::grad_buckets::GradBuckets;
use super::param_arena::ParamArena;
use super::{AdamW, AdamWConfig, StepStats};
use crate::backend::cuda::device::cuda_error;
use crate::backend::cuda::{adamw, residual, DeviceBuffer, Gpu};
use crate::kernels::abi::AdamwParams;
use crate::model::RetroModel;
use crate::tensor::{DType, Device, Tensor};
use crate::Result;
use half::bf16;
use std::sync::Arc;

pub struct DeviceOptimizer {
    gpu: Arc<Gpu>,
    arena: ParamArena,
    masters: DeviceBuffer<f32>,
    weights_bf16: DeviceBuffer<bf16>,
    grads: DeviceBuffer<f32>,
    exp_avg: DeviceBuffer<f32>,
    exp_avg_sq: DeviceBuffer<f32>,
    /// The gradient arena's sum of squares (one f64), written and read on the device.
    grad_sum_squares: DeviceBuffer<f64>,
    /// A tensor-parallel model's group: the norm's squares of the split parameters (`arena.split_ranges`)
    /// are summed over it, the whole ones counted once (Megatron's rule); `None` unsplit.
    tensor_parallel: Option<crate::dist::TensorParallel>,
    /// Views of `masters` or `weights_bf16`, in model order: what the tape reads.
    leaves: Vec<Tensor>,
    /// Data parallelism: the gradient arena is summed over the ranks of this communicator (NCCL, in
    /// stream order) before the norm.
    data_parallel: Option<crate::dist::nccl::NcclComm>,
    /// The distributed optimizer's layout and this rank's summed pieces of the gradients (`chunks` x
    /// `piece`, the moments' layout).
    sharded: Option<(Shards, DeviceBuffer<f32>)>,
    /// `--overlap-grad-reduce`: the gradient arena's buckets, each all-reduced on the communicator's
    /// stream as soon as the last backward of a step has completed it (`grad_buckets.rs`).
    buckets: Option<GradBuckets>,
    /// Between `begin_overlapped` and `finish_overlapped`: gradients count towards their buckets.
    overlapping: bool,
    /// This step's gradients are summed over the ranks already (the overlapped backward did it).
    reduced: bool,
    config: AdamWConfig,
    step: u64,
}

impl DeviceOptimizer {
    /// `model`'s weights and `opt`'s moments copied to `device` (one upload per arena).
    pub fn upload(device: Device, model: &RetroModel, opt: &AdamW) -> Result<Self> {
        let gpu = gpu_of(device)?;
        let arena = arena_of(model);
        crate::ensure!(
            model.params.tensors.len() == arena.num_params()
                && opt.exp_avg.len() == arena.num_params()
                && opt.exp_avg_sq.len() == arena.num_params(),
            "DeviceOptimizer::upload: {} parameters, {} tensors, {}/{} moments",
            arena.num_params(),
            model.params.tensors.len(),
            opt.exp_avg.len(),
            opt.exp_avg_sq.len()
        );
        let host_arena = |ts: &[Tensor]| -> Result<Vec<f32>> {
            let f32s = ts.iter().map(|t| t.to_dtype(DType::F32)?.to_vec::<f32>()).collect::<Result<Vec<_>>>()?;
            Ok(arena.gather(&f32s.iter().map(Vec::as_slice).collect::<Vec<_>>()))
        };
        let masters = host_arena(&model.params.tensors)?;
        // The kernel's __float2bfloat16 and half's from_f32 both round to nearest even.
        let copies: Vec<bf16> = masters.iter().map(|&x| bf16::from_f32(x)).collect();
        let masters = gpu.upload(&masters)?;
        let weights_bf16 = gpu.upload(&copies)?;
        let exp_avg = gpu.upload(&host_arena(&opt.exp_avg)?)?;
        let exp_avg_sq = gpu.upload(&host_arena(&opt.exp_avg_sq)?)?;
        Self::around(gpu, arena, masters, weights_bf16, exp_avg, exp_avg_sq, model, opt.config, opt.step)
    }

    /// Weights drawn on the GPU (Philox4x32-10, `crate::philox`'s layout: stream = the parameter's index)
    /// from the specs' initialisations: not the CPU's `RetroModel::init` values (another generator).
    pub fn random(device: Device, model: &RetroModel, config: AdamWConfig, seed: u64) -> Result<Self> {
        let gpu = gpu_of(device)?;
        let arena = arena_of(model);
        let (masters, weights_bf16) = (gpu.zeros::<f32>(arena.len())?, gpu.zeros::<bf16>(arena.len())?);
        for (i, spec) in model.params.specs.iter().enumerate() {
            let r = arena.range(i);
            // The bf16 copy rounds the same f32 draw, so it equals the master rounded to bf16.
            draw(&gpu, spec.init, &masters.view(r.start, r.len())?, seed, i as u64)?;
            draw(&gpu, spec.init, &weights_bf16.view(r.start, r.len())?, seed, i as u64)?;
        }
        let (exp_avg, exp_avg_sq) = (gpu.zeros::<f32>(arena.len())?, gpu.zeros::<f32>(arena.len())?);
        Self::around(gpu, arena, masters, weights_bf16, exp_avg, exp_avg_sq, model, config, 0)
    }

    #[allow(clippy::too_many_arguments)]
    fn around(
        gpu: Arc<Gpu>,
        arena: ParamArena,
        masters: DeviceBuffer<f32>,
        weights_bf16: DeviceBuffer<bf16>,
        exp_avg: DeviceBuffer<f32>,
        exp_avg_sq: DeviceBuffer<f32>,
        model: &RetroModel,
        config: AdamWConfig,
        step: u64,
    ) -> Result<Self> {
        let (grads, grad_sum_squares) = (gpu.zeros::<f32>(arena.len())?, gpu.zeros::<f64>(1)?);
        let mut me = Self {
            gpu,
            arena,
            masters,
            weights_bf16,
            grads,
            exp_avg,
            exp_avg_sq,
            grad_sum_squares,
            tensor_parallel: model.tensor_parallel.is_split().then(|| model.tensor_parallel.clone()),
            leaves: Vec::new(),
            data_parallel: None,
            sharded: None,
            buckets: None,
            overlapping: false,
            reduced: false,
            config,
            step,
        };
        me.leaves = me.leaves_of(model)?;
        Ok(me)
    }

    /// Views of the masters or their bf16 copies, one per parameter of `model`.
    fn leaves_of(&self, model: &RetroModel) -> Result<Vec<Tensor>> {
        (model.params.specs.iter().enumerate())
            .map(|(i, spec)| {
                let r = self.arena.range(i);
                match spec.reads_master {
                    true => Tensor::from_cuda(&self.gpu, self.masters.view(r.start, r.len())?, &spec.shape),
                    false => Tensor::from_cuda(&self.gpu, self.weights_bf16.view(r.start, r.len())?, &spec.shape),
                }
            })
            .collect()
    }

    /// Sum the gradients over `comm`'s ranks at every step (each rank on its own GPU).
    pub fn set_data_parallel(&mut self, comm: crate::dist::nccl::NcclComm) {
        self.data_parallel = Some(comm);
    }

    /// The distributed optimizer over `comm`'s ranks, in chunks of about `bucket_size` elements: the
    /// moments keep this rank's pieces only (the rest is freed), the weight and gradient arenas grow to
    /// whole chunks (zero padding). Before any step; `model` gives the parameters the tape reads.
    pub fn shard(&mut self, comm: crate::dist::nccl::NcclComm, bucket_size: usize, model: &RetroModel) -> Result<()> {
        let shards = Shards::new(self.arena.len(), bucket_size, comm.rank(), comm.size());
        let padded = shards.padded_len();
        if padded > self.masters.len() {
            self.masters = self.grown(&self.masters, padded)?;
            self.weights_bf16 = self.grown(&self.weights_bf16, padded)?;
            self.grads = self.gpu.zeros(padded)?;
            self.leaves = self.leaves_of(model)?;
        }
        let piece = shards.piece();
        let pieces = |full: &DeviceBuffer<f32>| -> Result<DeviceBuffer<f32>> {
            let mine = self.gpu.zeros::<f32>(shards.chunks * piece)?;
            for k in 0..shards.chunks {
                let r = shards.mine(k);
                let live = r.end.min(full.len()).saturating_sub(r.start); // past the arena: zero
                self.gpu.copy_rows(&mine, k * piece, live, full, r.start, live, live, 1)?;
            }
            Ok(mine)
        };
        (self.exp_avg, self.exp_avg_sq) = (pieces(&self.exp_avg)?, pieces(&self.exp_avg_sq)?);
        self.sharded = Some((shards, self.gpu.zeros(shards.chunks * piece)?));
        self.data_parallel = Some(comm);
        Ok(())
    }

    /// Overlap the gradients' all-reduce with each step's last backward, in buckets of at most
    /// `bucket_size` elements (needs the data-parallel communicator; not with the distributed optimizer).
    pub fn overlap_grad_reduce(&mut self, bucket_size: usize) -> Result<()> {
        crate::ensure!(
            self.data_parallel.is_some() && self.sharded.is_none(),
            "--overlap-grad-reduce on a GPU needs data parallelism without --use-distributed-optimizer"
        );
        crate::ensure!(
            self.tensor_parallel.is_none(),
            "--overlap-grad-reduce with tensor parallelism is not built on GPUs (the data-parallel reductions on \
             their own stream would run beside the tensor-parallel ones, two communicators that can deadlock \
             unordered); drop one of the two"
        );
        self.buckets = Some(GradBuckets::new(&self.arena, bucket_size));
        Ok(())
    }

    /// True when `overlap_grad_reduce` is on.
    pub fn overlaps(&self) -> bool {
        self.buckets.is_some()
    }

    /// The step's last backward begins: buckets reduce as their gradients complete (`add_gradient`).
    pub fn begin_overlapped(&mut self) {
        if let Some(buckets) = &mut self.buckets {
            buckets.begin();
            self.overlapping = true;
        }
    }

    /// Add parameter `i`'s gradient (complete for this micro-batch) into the arena; in an overlapped
    /// backward, start its bucket's all-reduce if it was the bucket's last.
    pub fn add_gradient(&mut self, i: usize, g: &Tensor) -> Result<()> {
        crate::ensure!(i < self.arena.num_params(), "a gradient for parameter {i} of {}", self.arena.num_params());
        if let (Some(buckets), true) = (&self.buckets, self.overlapping) {
            crate::ensure!(!buckets.is_started(i), "the gradient of parameter {i} came after its bucket was reduced");
        }
        let r = self.arena.range(i);
        let (_, src) = g.cuda::<f32>().map_err(|e| e.context(format!("the gradient of parameter {i}")))?;
        crate::ensure!(src.len() == r.len(), "parameter {i} has {} elements, its gradient {}", r.len(), src.len());
        residual::add_into(&self.gpu, &self.grads.view(r.start, r.len())?, src)?;
        if !self.overlapping {
            return Ok(());
        }
        if let Some(b) = self.buckets.as_mut().and_then(|buckets| buckets.complete(i)) {
            self.start_bucket(b)?;
        }
        Ok(())
    }

    /// The overlapped backward is done: the buckets it never completed start, and the compute stream
    /// waits for every bucket's sum before the optimizer step reads the arena.
    pub fn finish_overlapped(&mut self) -> Result<()> {
        let Some(buckets) = &mut self.buckets else { crate::bail!("finish_overlapped without --overlap-grad-reduce") };
        self.overlapping = false;
        let rest = buckets.rest();
        for b in rest {
            self.start_bucket(b)?;
        }
        let comm = self.data_parallel.as_ref().expect("overlap has its communicator");
        let summed = comm.comm_stream().record_event(None).map_err(|e| cuda_error("recording an event", e))?;
        self.gpu.compute.wait(&summed).map_err(|e| cuda_error("compute stream wait", e))?;
        self.reduced = true;
        Ok(())
    }

    /// Bucket `b`'s all-reduce on the communication stream, after the compute stream's work so far (the
    /// additions into it).
    fn start_bucket(&self, b: usize) -> Result<()> {
        let (comm, buckets) = (self.data_parallel.as_ref(), self.buckets.as_ref());
        let (Some(comm), Some(buckets)) = (comm, buckets) else { crate::bail!("a bucket without overlap") };
        let ready = self.gpu.compute.record_event(None).map_err(|e| cuda_error("recording an event", e))?;
        comm.comm_stream().wait(&ready).map_err(|e| cuda_error("communication stream wait", e))?;
        let r = buckets.range(b);
        comm.all_reduce_sum_on(&self.grads.view(r.start, r.len())?, comm.comm_stream())
    }

    /// True when the moments are this rank's pieces (`shard`).
    pub fn is_sharded(&self) -> bool {
        self.sharded.is_some()
    }

    /// `buf` copied into a buffer of `len` elements, zero past its end.
    fn grown<E: cudarc::driver::DeviceRepr>(&self, buf: &DeviceBuffer<E>, len: usize) -> Result<DeviceBuffer<E>> {
        let out = self.gpu.zeros::<E>(len)?;
        self.gpu.copy_rows(&out, 0, buf.len(), buf, 0, buf.len(), buf.len(), 1)?;
        Ok(out)
    }

    /// The GPU the optimizer state lives on.
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// What the tape reads as the parameters.
    pub fn leaves(&self) -> &[Tensor] {
        &self.leaves
    }

    /// Add one micro-batch's gradients (f32, on the device, in model order) into the gradient arena.
    pub fn accumulate(&mut self, grads: &[Tensor]) -> Result<()> {
        crate::ensure!(
            grads.len() == self.arena.num_params(),
            "{} gradients for {} parameters",
            grads.len(),
            self.arena.num_params()
        );
        for (i, g) in grads.iter().enumerate() {
            self.add_gradient(i, g)?;
        }
        Ok(())
    }

    /// AdamW at `lr` on the average of the `micro_batches` accumulated on this rank since the last step
    /// (and as many on every other data-parallel rank), clipped as `AdamW::step` clips.
    pub fn step(&mut self, lr: f64, micro_batches: usize) -> Result<StepStats> {
        crate::ensure!(micro_batches > 0, "an optimizer step without a micro-batch");
        let ranks = self.data_parallel.as_ref().map_or(1, |comm| comm.size());
        let grad_scale = 1.0 / (micro_batches * ranks) as f64;
        let c = self.config.coefficients(lr, self.step + 1, true);
        match &self.sharded {
            None => {
                match &self.data_parallel {
                    Some(comm) if !std::mem::take(&mut self.reduced) => comm.all_reduce_sum(&self.grads)?,
                    _ => {}
                }
                let params =
                    AdamwParams::new(&c, grad_scale, self.config.clip, self.arena.len(), self.arena.decay_end());
                self.grad_squares()?;
                let arenas = adamw::Arenas {
                    param: &self.masters,
                    grad: &self.grads,
                    exp_avg: &self.exp_avg,
                    exp_avg_sq: &self.exp_avg_sq,
                    weights_bf16: Some(&self.weights_bf16),
                };
                adamw::update(&self.gpu, &arenas, &self.grad_sum_squares, params)?;
            }
            Some((shards, summed)) => self.sharded_update(shards, summed, &c, grad_scale)?,
        }
        self.gpu.fill_zero(&self.grads)?;
        // The one wait of the step: the norm, for the metrics (the update has been queued behind it).
        let grad_sum_squares = self.gpu.download(&self.grad_sum_squares)?[0];
        let grad_norm = grad_sum_squares.sqrt() * grad_scale;
        crate::ensure!(grad_norm.is_finite(), "AdamW: the gradient norm is {grad_norm}; the update was skipped");
        self.step += 1;
        let clip_coef = match self.config.clip {
            Some(clip) => (clip / (grad_norm + 1e-6)).min(1.0),
            None => 1.0,
        };
        Ok(StepStats { grad_norm, clip_coef })
    }

    /// The summed gradients' sum of squares into `grad_sum_squares`: the whole arena, or for a
    /// tensor-parallel model the split parameters' squares summed over the group plus the others' once.
    fn grad_squares(&self) -> Result<()> {
        let Some(tp) = &self.tensor_parallel else {
            return adamw::sum_squares_into(&self.gpu, &self.grads, &self.grad_sum_squares);
        };
        let ranges = [self.arena.split_ranges(true), self.arena.split_ranges(false)];
        self.split_squares(tp, &self.grads, &ranges, None)
    }

    /// Megatron's tensor-parallel sum of squares into `grad_sum_squares`: `[split, whole]` over the
    /// elements `ranges` name in `x` (summed over `data_parallel`'s ranks when each holds pieces), the split
    /// part then over the tensor-parallel group, the whole part counted once.
    fn split_squares(
        &self,
        tp: &crate::dist::TensorParallel,
        x: &DeviceBuffer<f32>,
        ranges: &[Vec<std::ops::Range<usize>>; 2],
        data_parallel: Option<&crate::dist::nccl::NcclComm>,
    ) -> Result<()> {
        let parts = self.gpu.zeros::<f64>(2)?;
        let (split, whole) = (parts.view(0, 1)?, parts.view(1, 1)?);
        adamw::sum_squares_of_ranges_into(&self.gpu, x, &ranges[0], &split)?;
        adamw::sum_squares_of_ranges_into(&self.gpu, x, &ranges[1], &whole)?;
        if let Some(comm) = data_parallel {
            comm.all_reduce_sum(&parts)?;
        }
        tp.nccl("the tensor-parallel gradient norm")?.all_reduce_sum(&split)?;
        adamw::sum_into(&self.gpu, &parts, &self.grad_sum_squares)
    }

    /// The distributed optimizer's update, chunk by chunk: this rank's pieces of the summed gradients,
    /// the global norm from their squares, AdamW on this rank's pieces, every rank's pieces gathered.
    fn sharded_update(
        &self,
        shards: &Shards,
        summed: &DeviceBuffer<f32>,
        c: &crate::backend::cpu::adamw::Coefficients,
        grad_scale: f64,
    ) -> Result<()> {
        let comm = self.data_parallel.as_ref().expect("a sharded optimizer has its communicator");
        let piece = shards.piece();
        for k in 0..shards.chunks {
            let window = shards.window(k);
            comm.reduce_scatter_sum(&self.grads.view(window.start, shards.chunk)?, &summed.view(k * piece, piece)?)?;
        }
        match &self.tensor_parallel {
            None => {
                adamw::sum_squares_into(&self.gpu, summed, &self.grad_sum_squares)?;
                comm.all_reduce_sum(&self.grad_sum_squares)?;
            }
            Some(tp) => {
                let ranges = [self.piece_ranges(shards, true), self.piece_ranges(shards, false)];
                self.split_squares(tp, summed, &ranges, Some(comm))?;
            }
        }
        for k in 0..shards.chunks {
            let (mine, window) = (shards.mine(k), shards.window(k));
            // The decaying parameters are a prefix of the arena: the piece's share of it.
            let decay_end = self.arena.decay_end().clamp(mine.start, mine.end) - mine.start;
            let params = AdamwParams::new(c, grad_scale, self.config.clip, piece, decay_end);
            let (masters, copies) = (self.masters.view(mine.start, piece)?, self.weights_bf16.view(mine.start, piece)?);
            let arenas = adamw::Arenas {
                param: &masters,
                grad: &summed.view(k * piece, piece)?,
                exp_avg: &self.exp_avg.view(k * piece, piece)?,
                exp_avg_sq: &self.exp_avg_sq.view(k * piece, piece)?,
                weights_bf16: Some(&copies),
            };
            adamw::update(&self.gpu, &arenas, &self.grad_sum_squares, params)?;
            comm.all_gather(&masters, &self.masters.view(window.start, shards.chunk)?)?;
            comm.all_gather(&copies, &self.weights_bf16.view(window.start, shards.chunk)?)?;
        }
        Ok(())
    }

    /// The elements of the split parameters (`split`) or of the others within this rank's pieces, in the
    /// coordinates of the pieces' buffer (`chunks` x `piece`).
    fn piece_ranges(&self, shards: &Shards, split: bool) -> Vec<std::ops::Range<usize>> {
        let mut out = Vec::new();
        for k in 0..shards.chunks {
            let mine = shards.mine(k);
            for r in self.arena.split_ranges(split) {
                let (start, end) = (r.start.max(mine.start), r.end.min(mine.end));
                if start < end {
                    let at = k * shards.piece();
                    out.push(start - mine.start + at..end - mine.start + at);
                }
            }
        }
        out
    }

    /// The whole of a moment arena on the host: downloaded, or (sharded) every rank's pieces gathered
    /// chunk by chunk (a collective).
    fn moments_on_host(&self, moments: &DeviceBuffer<f32>) -> Result<Vec<f32>> {
        let Some((shards, _)) = &self.sharded else { return self.gpu.download(moments) };
        let comm = self.data_parallel.as_ref().expect("a sharded optimizer has its communicator");
        let (piece, chunk) = (shards.piece(), self.gpu.zeros::<f32>(shards.chunk)?);
        let mut whole = Vec::with_capacity(shards.padded_len());
        for k in 0..shards.chunks {
            comm.all_gather(&moments.view(k * piece, piece)?, &chunk)?;
            whole.extend(self.gpu.download(&chunk)?);
        }
        Ok(whole)
    }

    /// Copy the master weights into `model` and the moments and step count into `opt` (sharded: a
    /// collective, every rank calls it).
    pub fn to_host(&self, model: &mut RetroModel, opt: &mut AdamW) -> Result<()> {
        crate::ensure!(
            model.params.tensors.len() == self.arena.num_params(),
            "to_host: the host model has {} parameter tensors, the GPU {} (a structure-only model has none)",
            model.params.tensors.len(),
            self.arena.num_params()
        );
        opt.exp_avg.resize(self.arena.num_params(), Tensor::scalar(0f32));
        opt.exp_avg_sq.resize(self.arena.num_params(), Tensor::scalar(0f32));
        let (masters, m, v) = (
            self.gpu.download(&self.masters)?,
            self.moments_on_host(&self.exp_avg)?,
            self.moments_on_host(&self.exp_avg_sq)?,
        );
        for i in 0..self.arena.num_params() {
            let (r, like) = (self.arena.range(i), &model.params.tensors[i]);
            let (shape, dtype) = (like.shape().to_vec(), like.dtype());
            let part = |flat: &[f32]| Tensor::from_vec(flat[r.clone()].to_vec(), &shape)?.to_dtype(dtype);
            model.params.tensors[i] = part(&masters)?;
            opt.exp_avg[i] = part(&m)?;
            opt.exp_avg_sq[i] = part(&v)?;
        }
        opt.step = self.step;
        Ok(())
    }
}

fn gpu_of(device: Device) -> Result<Arc<Gpu>> {
    let Device::Cuda(ordinal) = device else { crate::bail!("DeviceOptimizer on {device}") };
    Gpu::shared(ordinal)
}

/// The model's arena; a tensor-parallel model's split parameters grouped (`ParamArena::with_split`).
fn arena_of(model: &RetroModel) -> ParamArena {
    let split: Vec<bool> =
        model.params.specs.iter().map(|s| s.split.is_some() && model.tensor_parallel.is_split()).collect();
    ParamArena::with_split(model.params.specs.iter().map(|s| s.shape.as_slice()), &split)
}

/// A parameter's initialisation into `out` on the GPU (Normal: Philox stream `stream` under `seed`).
fn draw<E: crate::tensor::cuda::CudaFloat>(
    gpu: &Gpu,
    init: crate::model::params::Init,
    out: &DeviceBuffer<E>,
    seed: u64,
    stream: u64,
) -> Result<()> {
    use crate::model::params::Init;
    match init {
        Init::Normal(std) => crate::backend::cuda::random::fill_normal(gpu, out, seed, stream, std as f32),
        Init::Zeros => Ok(()),
        Init::Ones => gpu.write(out, 0, &vec![E::from_f32(1.0); out.len()]),
    }
}
