//! Layers as thin structs of parameter indices; `forward` takes the tape and the parameter leaves.
//! Each layer registers its parameters with Megatron's names and initialisation.

mod attention;
mod layernorm;
mod linear;
mod mlp;

pub use attention::{CrossAttention, KvCache, SelfAttention};
pub use layernorm::LayerNorm;
pub use linear::{Linear, Parallel};
pub use mlp::Mlp;

/// Megatron's init: N(0, std) for weights, N(0, std / sqrt(2·layers)) for the output projections
/// (`linear_proj`, `linear_fc2`).
#[derive(Debug, Clone, Copy)]
pub struct InitStd {
    pub std: f64,
    pub output_std: f64,
}

impl InitStd {
    pub fn megatron(std: f64, num_layers: usize) -> Self {
        Self { std, output_std: std / (2.0 * num_layers as f64).sqrt() }
    }
}
