//! Data parallelism: every data-parallel rank runs its share of a step's micro-batches on its own copy of
//! the model, then the ranks' gradient sums are added together, so each applies the same optimizer step
//! to the same weights. On the CPU the host gradients are summed over MPI in buckets of at most
//! `--ddp-bucket-size` elements (each parameter whole, in model order); on a GPU the optimizer sums its
//! gradient arena with NCCL (`DeviceOptimizer`). Also the small reductions a step needs: losses and
//! validation sums, and rank 0's initial weights to every rank.

use crate::dist::{ParallelLayout, World};
use crate::tensor::{Float, Tensor};
use crate::{with_float, Result};
use std::ops::Range;
use std::rc::Rc;

/// Megatron's default `--ddp-bucket-size`: 40M elements.
pub const DEFAULT_BUCKET_SIZE: usize = 40_000_000;

#[derive(Clone)]
pub struct DataParallel {
    /// Every process of the job (what stop decisions are agreed over).
    pub world: Rc<World>,
    /// This rank's data-parallel group (the ranks holding the same part of the model, strided by the
    /// tensor-parallel size): what gradients, losses and initial weights are reduced or broadcast over.
    /// Without tensor parallelism it is the world.
    pub group: Rc<World>,
    pub layout: ParallelLayout,
    pub bucket_size: usize,
    /// `--use-distributed-optimizer`: the AdamW moments split across the ranks (distributed_optimizer.rs).
    pub distributed_optimizer: bool,
}

impl DataParallel {
    /// One process: every reduction is the identity.
    pub fn single() -> Self {
        let layout = ParallelLayout::new(1, 0, 1).expect("a world of one");
        let world = Rc::new(World::single());
        Self { group: world.clone(), world, layout, bucket_size: DEFAULT_BUCKET_SIZE, distributed_optimizer: false }
    }

    pub fn size(&self) -> usize {
        self.layout.dp
    }

    /// Rank 0 of the job writes the run's files (checkpoints, metrics, TensorBoard, plots).
    pub fn is_root(&self) -> bool {
        self.layout.rank == 0
    }

    /// The buckets `all_reduce_grads` reduces tensors of these element counts in: consecutive tensors,
    /// each whole, at most `bucket_size` elements per bucket (a larger tensor is a bucket of its own).
    pub fn buckets(&self, numels: &[usize]) -> Vec<Range<usize>> {
        let mut buckets = Vec::new();
        let mut start = 0;
        while start < numels.len() {
            let (mut end, mut len) = (start + 1, numels[start]);
            while end < numels.len() && len + numels[end] <= self.bucket_size {
                len += numels[end];
                end += 1;
            }
            buckets.push(start..end);
            start = end;
        }
        buckets
    }

    /// Sum host gradients over the data-parallel ranks in place, bucket by bucket.
    pub fn all_reduce_grads(&self, grads: &mut [Tensor]) -> Result<()> {
        if self.size() == 1 || grads.is_empty() {
            return Ok(());
        }
        let numels: Vec<usize> = grads.iter().map(Tensor::numel).collect();
        with_float!(grads[0].dtype(), "data-parallel gradient all-reduce", T => {
            for range in self.buckets(&numels) {
                let len: usize = numels[range.clone()].iter().sum();
                // Packed, reduced into a second buffer (MPI needs distinct send and receive buffers),
                // unpacked: the same two copies an in-place all-reduce of one flat buffer makes.
                let mut bucket: Vec<T> = Vec::with_capacity(len);
                for g in &grads[range.clone()] {
                    bucket.extend_from_slice(g.data::<T>()?);
                }
                let mut summed = vec![T::from_f64(0.0); len];
                self.group.all_reduce_sum_into(&bucket, &mut summed);
                let mut offset = 0;
                for g in &mut grads[range] {
                    let n = g.numel();
                    g.data_mut::<T>()?.copy_from_slice(&summed[offset..offset + n]);
                    offset += n;
                }
            }
        });
        Ok(())
    }

    /// Sum `values` over the data-parallel ranks.
    pub fn sum(&self, values: &mut [f64]) {
        if self.size() > 1 {
            self.group.all_reduce_sum(values);
        }
    }

    /// Sum `values` over every rank of the job (tensor- and data-parallel).
    pub fn sum_over_job(&self, values: &mut [f64]) {
        self.world.all_reduce_sum(values);
    }

    /// Every rank's parameters become its data-parallel group's first rank's (host tensors).
    pub fn broadcast_from_root(&self, tensors: &mut [Tensor]) -> Result<()> {
        if self.size() == 1 {
            return Ok(());
        }
        for t in tensors {
            with_float!(t.dtype(), "broadcasting the weights", T => self.group.broadcast(t.data_mut::<T>()?, 0));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_whole_consecutive_tensors_up_to_the_bucket_size() {
        let dp = DataParallel { bucket_size: 10, ..DataParallel::single() };
        assert_eq!(dp.buckets(&[4, 6, 1, 12, 3, 3]), vec![0..2, 2..3, 3..4, 4..6]);
        assert_eq!(dp.buckets(&[]), Vec::<Range<usize>>::new());
    }
}
