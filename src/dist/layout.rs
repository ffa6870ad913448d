//! Where a rank sits in the job, laid out as Megatron lays it out: the world is TP x DP, tensor-parallel
//! ranks consecutive (one node's GPUs share a TP group), data-parallel ranks strided by TP.

use crate::{ensure, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParallelLayout {
    pub world_size: usize,
    pub rank: usize,
    /// `--tensor-model-parallel-size`
    pub tp: usize,
    /// world size / tp
    pub dp: usize,
}

impl ParallelLayout {
    /// The layout of `rank` in a world of `world_size` with tensor-parallel size `tp`; a world that `tp`
    /// does not divide is an error naming both.
    pub fn new(world_size: usize, rank: usize, tp: usize) -> Result<Self> {
        ensure!(tp >= 1, "--tensor-model-parallel-size must be at least 1, got {tp}");
        ensure!(
            world_size % tp == 0,
            "--tensor-model-parallel-size {tp} does not divide the {world_size} processes of this job \
             (the world is tensor-parallel x data-parallel)"
        );
        ensure!(rank < world_size, "rank {rank} outside a world of {world_size}");
        Ok(Self { world_size, rank, tp, dp: world_size / tp })
    }

    /// This rank's index within its tensor-parallel group.
    pub fn tp_rank(&self) -> usize {
        self.rank % self.tp
    }

    /// This rank's index within its data-parallel group (which micro-batches it reads).
    pub fn dp_rank(&self) -> usize {
        self.rank / self.tp
    }

    /// The world ranks of this rank's data-parallel group, in order.
    pub fn dp_group(&self) -> Vec<usize> {
        (0..self.dp).map(|d| d * self.tp + self.tp_rank()).collect()
    }

    /// The world ranks of this rank's tensor-parallel group, in order.
    pub fn tp_group(&self) -> Vec<usize> {
        let first = self.dp_rank() * self.tp;
        (first..first + self.tp).collect()
    }

    /// Micro-batches each data-parallel rank runs per step: `global_batch` samples split evenly into
    /// micro-batches of `micro_batch` over the DP ranks, else an error naming the three numbers.
    pub fn micro_batches_per_rank(&self, global_batch: usize, micro_batch: usize) -> Result<usize> {
        ensure!(
            micro_batch > 0 && global_batch % (micro_batch * self.dp) == 0,
            "--global-batch-size {global_batch} is not divisible by --micro-batch-size {micro_batch} x {} \
             data-parallel ranks: each rank must run the same whole number of micro-batches",
            self.dp
        );
        Ok(global_batch / (micro_batch * self.dp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_parallel_ranks_are_consecutive_and_data_parallel_ranks_strided() {
        let l = ParallelLayout::new(8, 5, 2).unwrap();
        assert_eq!((l.tp, l.dp, l.tp_rank(), l.dp_rank()), (2, 4, 1, 2));
        assert_eq!(l.tp_group(), vec![4, 5]);
        assert_eq!(l.dp_group(), vec![1, 3, 5, 7]);
        let single = ParallelLayout::new(1, 0, 1).unwrap();
        assert_eq!((single.dp, single.dp_group(), single.tp_group()), (1, vec![0], vec![0]));
    }

    #[test]
    fn bad_shapes_and_uneven_batches_are_errors_naming_the_numbers() {
        let e = ParallelLayout::new(6, 0, 4).unwrap_err().to_string();
        assert!(e.contains("--tensor-model-parallel-size 4") && e.contains("6 processes"), "{e}");
        let l = ParallelLayout::new(2, 1, 1).unwrap();
        assert_eq!(l.micro_batches_per_rank(8, 2).unwrap(), 2);
        let e = l.micro_batches_per_rank(6, 2).unwrap_err().to_string();
        assert!(e.contains("--global-batch-size 6") && e.contains("--micro-batch-size 2 x 2"), "{e}");
    }
}
