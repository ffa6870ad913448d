//! Megatron's distributed optimizer (`--use-distributed-optimizer`, ZeRO-1) on the CPU (a GPU's is
//! `DeviceOptimizer` over the same `Shards`): the AdamW moments
//! are split across the data-parallel ranks instead of replicated, so each rank holds 1/N of them. The
//! parameters are laid out in one flat arena (`ParamArena`) cut into chunks of `--ddp-bucket-size`
//! elements (a multiple of N), and each chunk into N contiguous pieces: rank r owns piece r of every
//! chunk. A step, chunk by chunk: the ranks' gradient sums are reduce-scattered (each rank receives the
//! sum of its piece), then — once the global norm (the all-reduced sum of the pieces' squares) is known —
//! each rank applies AdamW (the same per-element update as `AdamW::step`) to its pieces of the weights
//! and the updated pieces are all-gathered into every rank's weights. Working chunk by chunk bounds the
//! transient buffers by the bucket size, so a rank's memory is its weights and gradients, 1/N of the
//! moments and one chunk. Checkpoints stay unsharded: `to_full` gathers the moments on the first rank
//! (a collective), and `from_full` takes a rank's pieces of a checkpoint's, so a run resumes with any
//! number of ranks, with or without this optimizer.

use super::adamw::{AdamW, AdamWConfig, StepStats};
use super::data_parallel::DataParallel;
use super::param_arena::ParamArena;
use crate::backend::cpu::adamw::update_slice;
use crate::dist::TensorParallel;
use crate::model::RetroModel;
use crate::tensor::{DType, Tensor};
use crate::{ensure, Result};
use std::ops::Range;

/// How the arena is cut among the data-parallel ranks (on the CPU and on GPUs alike): chunks of about
/// `--ddp-bucket-size` elements (a multiple of the ranks), each cut into one contiguous piece per rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shards {
    /// Elements per chunk, and the number of chunks (the last one runs past the arena: zero padding).
    pub chunk: usize,
    pub chunks: usize,
    pub rank: usize,
    pub ranks: usize,
}

impl Shards {
    /// Rank `rank` of `ranks`' pieces of an arena of `len` elements, in chunks of at most about
    /// `bucket_size` elements (at least one per rank).
    pub fn new(len: usize, bucket_size: usize, rank: usize, ranks: usize) -> Self {
        let chunk = (bucket_size / ranks).max(1) * ranks;
        let chunk = chunk.min(len.next_multiple_of(ranks).max(ranks));
        Self { chunk, chunks: len.div_ceil(chunk), rank, ranks }
    }

    /// Elements of each rank's piece of a chunk.
    pub fn piece(&self) -> usize {
        self.chunk / self.ranks
    }

    /// Elements of the arena with its padding: whole chunks.
    pub fn padded_len(&self) -> usize {
        self.chunks * self.chunk
    }

    /// Chunk `k` of the arena.
    pub fn window(&self, k: usize) -> Range<usize> {
        k * self.chunk..(k + 1) * self.chunk
    }

    /// This rank's piece of chunk `k`, in arena coordinates.
    pub fn mine(&self, k: usize) -> Range<usize> {
        let start = k * self.chunk + self.rank * self.piece();
        start..start + self.piece()
    }
}

pub struct ShardedAdamW {
    arena: ParamArena,
    /// A tensor-parallel model's group and which parameters it splits (for the gradient norm).
    tensor_parallel: TensorParallel,
    split: Vec<bool>,
    shards: Shards,
    /// This rank's pieces of the moments, chunk after chunk (`chunks` x `chunk / ranks`).
    exp_avg: Vec<f32>,
    exp_avg_sq: Vec<f32>,
    config: AdamWConfig,
    step: u64,
}

fn f32_parts(ts: &[Tensor]) -> Result<Vec<&[f32]>> {
    ts.iter().map(|t| t.data::<f32>()).collect()
}

fn f32_parts_mut(ts: &mut [Tensor]) -> Result<Vec<&mut [f32]>> {
    ts.iter_mut().map(|t| t.data_mut::<f32>()).collect()
}

impl ShardedAdamW {
    /// This rank's pieces of `opt`'s moments (a fresh or a resumed optimizer; none: zeros) for `model`'s
    /// parameters (f32; with tensor parallelism, this rank's parts of them).
    pub fn from_full(opt: &AdamW, model: &RetroModel, dp: &DataParallel) -> Result<Self> {
        let params = &model.params.tensors;
        ensure!(
            params.iter().all(|p| p.dtype() == DType::F32),
            "--use-distributed-optimizer trains f32 parameters on the CPU"
        );
        let arena = ParamArena::new(params.iter().map(Tensor::shape));
        let mut me = Self {
            shards: Shards::new(arena.len(), dp.bucket_size, dp.layout.dp_rank(), dp.size()),
            arena,
            tensor_parallel: model.tensor_parallel.clone(),
            split: model.params.specs.iter().map(|s| s.split.is_some()).collect(),
            exp_avg: Vec::new(),
            exp_avg_sq: Vec::new(),
            config: opt.config,
            step: opt.step,
        };
        let take = |moments: &[Tensor]| -> Result<Vec<f32>> {
            if moments.is_empty() {
                return Ok(vec![0.0; me.shards.chunks * me.shards.piece()]);
            }
            let f32s: Vec<Tensor> = moments.iter().map(|m| m.to_dtype(DType::F32)).collect::<Result<_>>()?;
            let parts = f32_parts(&f32s)?;
            Ok((0..me.shards.chunks).flat_map(|k| me.arena.gather_window(&parts, me.shards.mine(k))).collect())
        };
        (me.exp_avg, me.exp_avg_sq) = (take(&opt.exp_avg)?, take(&opt.exp_avg_sq)?);
        Ok(me)
    }

    /// One AdamW step at `lr` on the ranks' summed gradients (`grads`: this rank's sum over its
    /// micro-batches) averaged over `micro_batches` (of every rank); updates `params` on every rank.
    pub fn step(
        &mut self,
        params: &mut [Tensor],
        grads: &[Tensor],
        lr: f64,
        micro_batches: usize,
        dp: &DataParallel,
    ) -> Result<StepStats> {
        let piece = self.shards.piece();
        let mut g = vec![0f32; self.shards.chunks * piece];
        let grad_parts = f32_parts(grads)?;
        for k in 0..self.shards.chunks {
            let send = self.arena.gather_window(&grad_parts, self.shards.window(k));
            dp.group.reduce_scatter_sum(&send, &mut g[k * piece..(k + 1) * piece]);
        }
        let average = (1.0 / micro_batches as f64) as f32;
        if micro_batches > 1 {
            g.iter_mut().for_each(|x| *x *= average);
        }
        let grad_norm = self.grad_norm(&g, dp);
        ensure!(grad_norm.is_finite(), "AdamW: the gradient norm is {grad_norm}; refusing to update");
        let clip_coef = match self.config.clip {
            Some(clip) => (clip / (grad_norm + 1e-6)).min(1.0),
            None => 1.0,
        };
        if clip_coef < 1.0 {
            let c = clip_coef as f32;
            g.iter_mut().for_each(|x| *x *= c);
        }
        self.step += 1;
        for k in 0..self.shards.chunks {
            let mine = self.shards.mine(k);
            let mut weights = self.arena.gather_window(&f32_parts(params)?, mine.clone());
            // Each parameter's part of the piece, with its own decay (padding is zero and stays zero).
            for (i, overlap) in self.arena.overlaps(mine.clone()) {
                let local = overlap.start - mine.start..overlap.end - mine.start;
                let at = k * piece + local.start..k * piece + local.end;
                let coef = self.config.coefficients(lr, self.step, self.arena.range(i).start < self.arena.decay_end());
                update_slice(
                    &mut weights[local],
                    &g[at.clone()],
                    &mut self.exp_avg[at.clone()],
                    &mut self.exp_avg_sq[at],
                    &coef,
                );
            }
            let mut updated = vec![0f32; self.shards.chunk];
            dp.group.all_gather(&weights, &mut updated);
            self.arena.scatter_window(&mut f32_parts_mut(params)?, self.shards.window(k).start, &updated);
        }
        Ok(StepStats { grad_norm, clip_coef })
    }

    /// The global norm from this rank's pieces `g` of the summed gradients: the pieces' squares summed
    /// over the data-parallel ranks; tensor-parallel, then `TensorParallel::norm`'s rule.
    fn grad_norm(&self, g: &[f32], dp: &DataParallel) -> f64 {
        let square = |xs: &[f32]| xs.iter().map(|&x| x as f64 * x as f64).sum::<f64>();
        if !self.tensor_parallel.is_split() {
            let mut sumsq = [square(g)];
            dp.sum(&mut sumsq);
            return sumsq[0].sqrt();
        }
        let mut sums = [0.0, 0.0]; // [split parameters, whole ones]
        for k in 0..self.shards.chunks {
            let mine = self.shards.mine(k);
            for (i, overlap) in self.arena.overlaps(mine.clone()) {
                let at = k * self.shards.piece() + overlap.start - mine.start
                    ..k * self.shards.piece() + overlap.end - mine.start;
                sums[usize::from(!self.split[i])] += square(&g[at]);
            }
        }
        dp.sum(&mut sums);
        self.tensor_parallel.norm(sums[0], sums[1])
    }

    /// Every rank's moments gathered into the first data-parallel rank's `opt` (shaped like `params`;
    /// the other ranks' `opt` holds none), and the step count: what a checkpoint holds, written by that
    /// rank. A collective: every rank calls it.
    pub fn to_full(&self, opt: &mut AdamW, params: &[Tensor], dp: &DataParallel) -> Result<()> {
        opt.release_moments();
        let piece = self.shards.piece();
        let root = dp.group.rank() == 0;
        for (moments, mine) in [(&mut opt.exp_avg, &self.exp_avg), (&mut opt.exp_avg_sq, &self.exp_avg_sq)] {
            // Only the first rank holds (and allocates) the whole moments.
            let mut whole: Vec<Tensor> =
                if root { params.iter().map(|p| Tensor::zeros(p.shape(), DType::F32)).collect() } else { Vec::new() };
            for k in 0..self.shards.chunks {
                if let Some(chunk) = dp.group.gather_to(&mine[k * piece..(k + 1) * piece], 0) {
                    self.arena.scatter_window(&mut f32_parts_mut(&mut whole)?, self.shards.window(k).start, &chunk);
                }
            }
            *moments = whole;
        }
        opt.step = self.step;
        Ok(())
    }
}
