//! Training: the optimizer today; the LR schedule, loop, checkpoints and metrics come with [train].

pub mod optimizer;

pub use optimizer::{AdamW, AdamWConfig, StepStats};
