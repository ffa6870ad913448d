//! A tensor-parallel group (Megatron's `--tensor-model-parallel-size`): the ranks that hold the shards of
//! one model replica. Column-parallel linears split their output features among them, row-parallel
//! linears their input features, the embedding and the output layer the vocabulary (nn/linear.rs,
//! ops/parallel.rs). A group of one is the unsharded model: no op communicates.

use super::world::{Element, World};
use std::rc::Rc;

#[derive(Clone)]
pub struct TensorParallel {
    group: Rc<World>,
    /// The same ranks over NCCL, each on its GPU: what the ops move GPU tensors with (`with_nccl`).
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
            group,
            #[cfg(not(no_cuda_kernels))]
            nccl: None,
        }
    }

    /// GPU tensors move over `comm`, a communicator over the same ranks (before any model is built with
    /// the group: the model's copies share it).
    #[cfg(not(no_cuda_kernels))]
    pub fn with_nccl(mut self, comm: super::nccl::NcclComm) -> Self {
        self.nccl = Some(Rc::new(comm));
        self
    }

    /// The group's NCCL communicator, or an error naming `op` (GPU tensors need one).
    #[cfg(not(no_cuda_kernels))]
    pub fn nccl(&self, op: &str) -> crate::Result<&super::nccl::NcclComm> {
        self.nccl.as_deref().ok_or_else(|| {
            crate::Error::msg(format!(
                "{op}: a GPU tensor, but the tensor-parallel group has no NCCL communicator (TensorParallel::with_nccl)"
            ))
        })
    }

    pub fn size(&self) -> usize {
        self.group.size()
    }

    pub fn rank(&self) -> usize {
        self.group.rank()
    }

    /// True when the model is split over more than one rank.
    pub fn is_split(&self) -> bool {
        self.size() > 1
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
