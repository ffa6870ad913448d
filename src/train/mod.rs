//! Training: the optimizer, the LR schedule, the data loader, checkpoints and the training loop.

pub mod adamw;
pub mod checkpoint;
pub mod data_parallel;
#[cfg(not(no_cuda_kernels))]
pub mod device_optimizer;
pub mod distributed_optimizer;
pub mod engine;
pub mod exit;
pub mod grad_buckets;
pub mod loader;
pub mod param_arena;
pub mod plot;
pub mod schedule;
pub mod tensorboard;
pub mod trainer;

pub use adamw::{AdamW, AdamWConfig, StepStats};
pub use engine::Engine;
