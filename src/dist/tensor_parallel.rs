//! A tensor-parallel group (Megatron's `--tensor-model-parallel-size`): the ranks that hold the shards of
//! one model replica. Column-parallel linears split their output features among them, row-parallel
//! linears their input features, the embedding and the output layer the vocabulary (nn/linear.rs,
//! ops/parallel.rs). A group of one is the unsharded model: no op communicates.

use super::world::{Element, World};
use std::rc::Rc;

#[derive(Clone)]
pub struct TensorParallel {
    group: Rc<World>,
    /// The model takes the split code paths (more than one rank, or `split_over_one`).
    split: bool,
    /// The same ranks over NCCL, each on its GPU: what the ops move GPU tensors with (`on_gpu`).
    #[cfg(not(no_cuda_kernels))]
    nccl: Option<Rc<super::nccl::NcclComm>>,
}

impl std::fmt::Debug for TensorParallel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TensorParallel(rank {} of {})", self.rank(), self.size())
    }
}

impl Default for TensorParallel {
    fn default() -> Self {
        Self::single()
    }
}

impl TensorParallel {
    /// No tensor parallelism: the whole model in this process.
    pub fn single() -> Self {
        Self::new(Rc::new(World::single()))
    }

    /// The ranks of `group` (split from the job's world by `ParallelLayout`'s order) share each model.
    pub fn new(group: Rc<World>) -> Self {
        Self {
            split: group.size() > 1,
            group,
            #[cfg(not(no_cuda_kernels))]
            nccl: None,
        }
    }

    /// GPU tensors move over an NCCL communicator over the same ranks, each on its `gpu` (a collective
    /// of the group; before any model is built with it: the model's copies share it).
    #[cfg(not(no_cuda_kernels))]
    pub fn on_gpu(mut self, gpu: std::sync::Arc<crate::backend::cuda::Gpu>) -> crate::Result<Self> {
        self.nccl = Some(Rc::new(super::nccl::NcclComm::new(&self.group, gpu)?));
        Ok(self)
    }

    /// The group's NCCL communicator, or an error naming `op` (GPU tensors need one).
    #[cfg(not(no_cuda_kernels))]
    pub fn nccl(&self, op: &str) -> crate::Result<&super::nccl::NcclComm> {
        self.nccl.as_deref().ok_or_else(|| {
            crate::Error::msg(format!(
                "{op}: a GPU tensor, but the tensor-parallel group has no NCCL communicator (TensorParallel::on_gpu)"
            ))
        })
    }

    pub fn size(&self) -> usize {
        self.group.size()
    }

    pub fn rank(&self) -> usize {
        self.group.rank()
    }

    /// True when the model takes the split code paths: split over more than one rank, or `split_over_one`.
    pub fn is_split(&self) -> bool {
        self.split
    }

    /// A group of this one process whose model still takes every split code path (the tensor-parallel
    /// ops, the vocab-parallel embedding and loss, the row-parallel bias, the heads' dropout streams, the
    /// optimizer's split norm), each collective the identity: how one GPU checks the tensor-parallel
    /// model against the unsplit one (tests/device_model.rs).
    pub fn split_over_one() -> Self {
        Self { split: true, ..Self::single() }
    }

    pub fn all_reduce_sum<T: Element>(&self, buf: &mut [T]) {
        self.group.all_reduce_sum(buf)
    }

    pub fn all_reduce_max<T: Element>(&self, buf: &mut [T]) {
        self.group.all_reduce_max(buf)
    }

    /// The global L2 norm of a split model's gradients from this rank's sums of squares (Megatron's rule):
    /// those of its parts of the split parameters are summed over the group, those of the parameters
    /// every rank holds whole count once. The same value on every rank of the group.
    pub fn norm(&self, split_squares: f64, whole_squares: f64) -> f64 {
        let mut split = [split_squares];
        self.all_reduce_sum(&mut split);
        (split[0] + whole_squares).sqrt()
    }

    /// Every rank's `send` in rank order (`size` x `send.len()` elements).
    pub fn all_gather<T: Element>(&self, send: &[T]) -> Vec<T> {
        let mut recv = send.repeat(self.size());
        self.group.all_gather(send, &mut recv);
        recv
    }
}
