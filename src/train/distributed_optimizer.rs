//! Megatron's distributed optimizer (`--use-distributed-optimizer`, ZeRO-1) on the CPU: the AdamW moments
//! are split across the data-parallel ranks instead of replicated, so each rank holds 1/N of them. The
//! parameters are laid out in one flat arena (`ParamArena`, padded to a multiple of N) cut into N
//! contiguous shards. A step: the ranks' gradient sums are reduce-scattered (each rank receives the sum
//! of its shard only), the global norm is the all-reduced sum of the shards' squares, each rank applies
//! AdamW (the same per-element update as `AdamW::step`) to its shard of the weights, and the updated
//! shards are all-gathered into every rank's weights. Checkpoints stay unsharded: `to_full` gathers the
//! moments (a collective), and `from_full` takes a rank's shard of a checkpoint's, so a run resumes with
//! any number of ranks, with or without this optimizer.

use super::adamw::{AdamW, AdamWConfig, StepStats};
use super::data_parallel::DataParallel;
use super::param_arena::ParamArena;
use crate::backend::cpu::adamw::update_slice;
use crate::dist::TensorParallel;
use crate::model::RetroModel;
use crate::tensor::{DType, Tensor};
use crate::{ensure, Result};
use std::ops::Range;

pub struct ShardedAdamW {
    arena: ParamArena,
    /// A tensor-parallel model's group and which parameters it splits (for the gradient norm).
    tensor_parallel: TensorParallel,
    split: Vec<bool>,
    /// Elements of the (padded) arena: a multiple of the number of ranks.
    padded: usize,
    /// This rank's elements of the arena.
    shard: Range<usize>,
    exp_avg: Vec<f32>,
    exp_avg_sq: Vec<f32>,
    config: AdamWConfig,
    step: u64,
}

fn f32_parts(ts: &[Tensor]) -> Result<Vec<&[f32]>> {
    ts.iter().map(|t| t.data::<f32>()).collect()
}

impl ShardedAdamW {
    /// This rank's shard of `opt`'s moments (a fresh or a resumed optimizer) for `model`'s parameters
    /// (f32; with tensor parallelism, this rank's parts of them).
    pub fn from_full(opt: &AdamW, model: &RetroModel, dp: &DataParallel) -> Result<Self> {
        let params = &model.params.tensors;
        ensure!(
            params.iter().all(|p| p.dtype() == DType::F32),
            "--use-distributed-optimizer trains f32 parameters on the CPU"
        );
        let arena = ParamArena::new(params.iter().map(Tensor::shape));
        let n = dp.size();
        let padded = arena.len().next_multiple_of(n);
        let per_rank = padded / n;
        let shard = dp.layout.dp_rank() * per_rank..(dp.layout.dp_rank() + 1) * per_rank;
        let take = |moments: &[Tensor]| -> Result<Vec<f32>> {
            let mut flat = if moments.is_empty() {
                vec![0.0; arena.len()]
            } else {
                let f32s: Vec<Tensor> = moments.iter().map(|m| m.to_dtype(DType::F32)).collect::<Result<_>>()?;
                arena.gather(&f32_parts(&f32s)?)
            };
            flat.resize(padded, 0.0);
            Ok(flat[shard.clone()].to_vec())
        };
        let (exp_avg, exp_avg_sq) = (take(&opt.exp_avg)?, take(&opt.exp_avg_sq)?);
        let tensor_parallel = model.tensor_parallel.clone();
        let split = model.params.specs.iter().map(|s| s.split.is_some()).collect();
        Ok(Self {
            arena,
            tensor_parallel,
            split,
            padded,
            shard,
            exp_avg,
            exp_avg_sq,
            config: opt.config,
            step: opt.step,
        })
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
        let mut flat = self.arena.gather(&f32_parts(grads)?);
        flat.resize(self.padded, 0.0);
        let mut g = vec![0f32; self.shard.len()];
        dp.group.reduce_scatter_sum(&flat, &mut g);
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
        let mut weights = self.arena.gather(&f32_parts(params)?);
        weights.resize(self.padded, 0.0);
        let mut mine = weights[self.shard.clone()].to_vec();
        // Each parameter's part of the shard, with its own decay (padding is zero and stays zero).
        for i in 0..self.arena.num_params() {
            let r = self.arena.range(i);
            let (start, end) = (r.start.max(self.shard.start), r.end.min(self.shard.end));
            if start >= end {
                continue;
            }
            let local = start - self.shard.start..end - self.shard.start;
            let coef = self.config.coefficients(lr, self.step, r.start < self.arena.decay_end());
            update_slice(
                &mut mine[local.clone()],
                &g[local.clone()],
                &mut self.exp_avg[local.clone()],
                &mut self.exp_avg_sq[local],
                &coef,
            );
        }
        dp.group.all_gather(&mine, &mut weights);
        for (i, p) in params.iter_mut().enumerate() {
            p.data_mut::<f32>()?.copy_from_slice(&weights[self.arena.range(i)]);
        }
        Ok(StepStats { grad_norm, clip_coef })
    }

    /// The global norm from this rank's shard `g` of the summed gradients: the shards' squares summed
    /// over the data-parallel ranks; tensor-parallel, the split parameters' sums also over the group
    /// (`adamw::model_grad_norm`'s rule).
    fn grad_norm(&self, g: &[f32], dp: &DataParallel) -> f64 {
        let square = |xs: &[f32]| xs.iter().map(|&x| x as f64 * x as f64).sum::<f64>();
        if !self.tensor_parallel.is_split() {
            let mut sumsq = [square(g)];
            dp.sum(&mut sumsq);
            return sumsq[0].sqrt();
        }
        let mut sums = [0.0, 0.0]; // [split parameters, whole ones]
        for i in 0..self.arena.num_params() {
            let r = self.arena.range(i);
            let (start, end) = (r.start.max(self.shard.start), r.end.min(self.shard.end));
            if start < end {
                sums[usize::from(!self.split[i])] += square(&g[start - self.shard.start..end - self.shard.start]);
            }
        }
        dp.sum(&mut sums);
        let mut split = [sums[0]];
        self.tensor_parallel.all_reduce_sum(&mut split);
        (split[0] + sums[1]).sqrt()
    }

    /// Every rank's moments gathered into the first data-parallel rank's `opt` (shaped like `params`;
    /// the other ranks' `opt` holds none), and the step count: what a checkpoint holds, written by that
    /// rank. A collective: every rank calls it.
    pub fn to_full(&self, opt: &mut AdamW, params: &[Tensor], dp: &DataParallel) -> Result<()> {
        opt.release_moments();
        for (moments, mine) in [(&mut opt.exp_avg, &self.exp_avg), (&mut opt.exp_avg_sq, &self.exp_avg_sq)] {
            if let Some(flat) = dp.group.gather_to(mine, 0) {
                *moments = (params.iter().enumerate())
                    .map(|(i, p)| Tensor::from_vec(flat[self.arena.range(i)].to_vec(), p.shape()))
                    .collect::<Result<_>>()?;
            }
        }
        opt.step = self.step;
        Ok(())
    }
}
