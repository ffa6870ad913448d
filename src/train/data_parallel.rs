//! Data parallelism: every data-parallel rank runs its share of a step's micro-batches on its own copy of
//! the model, then the ranks' gradient sums are added together, so each applies the same optimizer step
//! to the same weights. On the CPU the host gradients are summed over MPI in buckets of at most
//! `--ddp-bucket-size` elements (each parameter whole, in model order); on a GPU the optimizer sums its
//! gradient arena with NCCL (`DeviceOptimizer`). Also the small reductions a step needs: losses and
//! validation sums, and rank 0's initial weights to every rank.

use crate::dist::{Element, ParallelLayout, PendingSum, World};
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
    /// `--overlap-grad-reduce`: the last micro-batch's backward starts each bucket's sum as soon as the
    /// bucket's gradients are complete (`OverlappedReduce`).
    pub overlap_grad_reduce: bool,
}

impl DataParallel {
    /// One process: every reduction is the identity.
    pub fn single() -> Self {
        let layout = ParallelLayout::new(1, 0, 1).expect("a world of one");
        let world = Rc::new(World::single());
        Self {
            group: world.clone(),
            world,
            layout,
            bucket_size: DEFAULT_BUCKET_SIZE,
            distributed_optimizer: false,
            overlap_grad_reduce: false,
        }
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
                // Packed, reduced into a second buffer (MPI needs distinct send and receive buffers),
                // unpacked: the same two copies an in-place all-reduce of one flat buffer makes.
                let bucket: Vec<T> = pack(&grads[range.clone()])?;
                let mut summed = vec![T::from_f64(0.0); bucket.len()];
                self.group.all_reduce_sum_into(&bucket, &mut summed);
                let mut rest = &summed[..];
                for g in &mut grads[range] {
                    fill_from(g, &mut rest)?;
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

/// A bucket: the gradients' values one after another.
fn pack<'a, T: Float>(grads: impl IntoIterator<Item = &'a Tensor>) -> Result<Vec<T>> {
    let mut packed = Vec::new();
    for g in grads {
        packed.extend_from_slice(g.data::<T>()?);
    }
    Ok(packed)
}

/// Overwrite `g` with the first `g.numel()` values of `rest` and move `rest` past them (unpacking a
/// bucket in the order it was packed).
fn fill_from<T: Float>(g: &mut Tensor, rest: &mut &[T]) -> Result<()> {
    let (mine, after) = rest.split_at(g.numel());
    g.data_mut::<T>()?.copy_from_slice(mine);
    *rest = after;
    Ok(())
}

/// `--overlap-grad-reduce` on the CPU: gradients summed over the data-parallel ranks while the step's last
/// backward runs. Buckets hold whole parameters in reverse model order (the order a backward completes
/// them, as Megatron orders its buckets), at most `--ddp-bucket-size` elements each. As the backward
/// completes a parameter's gradient (`ready`), it is added to the earlier micro-batches' sum; when a
/// bucket's last parameter is in, its non-blocking all-reduce starts, and every later op of the backward
/// lets MPI progress the reductions in flight. `finish` starts what the backward never reached (in the
/// same order on every rank: the ranks run the same graph) and waits. Each element's sum is the one
/// `all_reduce_grads` computes, so the result is the same bits.
pub struct OverlappedReduce<T: Float + Element> {
    group: Rc<World>,
    shapes: Vec<Vec<usize>>,
    /// Parameter indices of each bucket, in packing order.
    buckets: Vec<Vec<usize>>,
    bucket_of: Vec<usize>,
    /// Parameters of each bucket still to complete.
    missing: Vec<usize>,
    /// The earlier micro-batches' sums, taken as each parameter completes.
    earlier: Vec<Option<Tensor>>,
    grads: Vec<Option<Tensor>>,
    pending: Vec<Option<PendingSum<T>>>,
}

impl<T: Float + Element> OverlappedReduce<T> {
    /// For parameters of `shapes`, with the step's earlier micro-batches' gradient sums, if any.
    pub fn new(dp: &DataParallel, shapes: Vec<Vec<usize>>, earlier: Option<Vec<Tensor>>) -> Self {
        let order: Vec<usize> = (0..shapes.len()).rev().collect();
        let numels: Vec<usize> = order.iter().map(|&i| shapes[i].iter().product()).collect();
        let buckets: Vec<Vec<usize>> = dp.buckets(&numels).into_iter().map(|r| order[r].to_vec()).collect();
        let mut bucket_of = vec![0; shapes.len()];
        for (b, params) in buckets.iter().enumerate() {
            params.iter().for_each(|&i| bucket_of[i] = b);
        }
        let n = shapes.len();
        Self {
            group: dp.group.clone(),
            missing: buckets.iter().map(Vec::len).collect(),
            pending: buckets.iter().map(|_| None).collect(),
            earlier: earlier.map_or_else(|| vec![None; n], |e| e.into_iter().map(Some).collect()),
            grads: vec![None; n],
            shapes,
            buckets,
            bucket_of,
        }
    }

    /// The backward's events (`RetroModel::forward_backward_each`).
    pub fn ready(&mut self, event: Option<(usize, Tensor)>) -> Result<()> {
        let Some((i, g)) = event else {
            self.pending.iter_mut().flatten().for_each(|p| {
                p.test();
            });
            return Ok(());
        };
        let total = match self.earlier[i].take() {
            Some(mut sum) => {
                sum.add_assign(&g)?;
                sum
            }
            None => g,
        };
        self.grads[i] = Some(total);
        let b = self.bucket_of[i];
        self.missing[b] -= 1;
        if self.missing[b] == 0 {
            self.start(b)?;
        }
        Ok(())
    }

    fn start(&mut self, b: usize) -> Result<()> {
        let packed = pack(self.buckets[b].iter().map(|&i| self.grads[i].as_ref().expect("complete")))?;
        self.pending[b] = Some(self.group.start_all_reduce_sum(packed));
        Ok(())
    }

    /// The gradients summed over the ranks (parameters the backward never reached: the earlier sums, or
    /// zeros).
    pub fn finish(mut self) -> Result<Vec<Tensor>> {
        for b in 0..self.buckets.len() {
            if self.pending[b].is_none() {
                for &i in &self.buckets[b] {
                    if self.grads[i].is_none() {
                        let shape = &self.shapes[i];
                        self.grads[i] = Some(self.earlier[i].take().unwrap_or_else(|| Tensor::zeros(shape, T::DTYPE)));
                    }
                }
                self.start(b)?;
            }
        }
        for b in 0..self.buckets.len() {
            let summed = self.pending[b].take().expect("started").wait();
            let mut rest = &summed[..];
            for &i in &self.buckets[b] {
                fill_from(self.grads[i].as_mut().expect("complete"), &mut rest)?;
            }
        }
        Ok(self.grads.into_iter().map(|g| g.expect("every gradient")).collect())
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
