use super::{InitStd, Linear};
use crate::autograd::{Tape, Var};
use crate::model::params::ParamBuilder;
use crate::ops;
use crate::Result;

/// `linear_fc2(gelu_tanh(linear_fc1(x)))` with `ffn` hidden features; or with SwiGLU (`--swiglu`)
/// `linear_fc2(silu(a) ∘ b)`, fc1 giving the two halves [a | b] (`[2·ffn, d]`). fc1 column-parallel (in
/// two blocks for SwiGLU, so each rank holds its part of a and of b) and fc2 row-parallel, so the
/// activation runs on each tensor-parallel rank's part of the hidden features.
#[derive(Debug, Clone)]
pub struct Mlp {
    pub fc1: Linear,
    pub fc2: Linear,
    pub swiglu: bool,
}

impl Mlp {
    pub fn new(pb: &mut ParamBuilder, prefix: &str, d: usize, ffn: usize, swiglu: bool, init: InitStd) -> Self {
        let (width, blocks): (usize, &[usize]) = if swiglu { (2 * ffn, &[1, 1]) } else { (ffn, &[1]) };
        Self {
            fc1: Linear::column(pb, &format!("{prefix}.linear_fc1"), d, width, blocks, init.std),
            fc2: Linear::row(pb, &format!("{prefix}.linear_fc2"), ffn, d, init.output_std),
            swiglu,
        }
    }

    pub fn forward(&self, tape: &mut Tape, p: &[Var], x: &Var) -> Result<Var> {
        let h = self.fc1.forward(tape, p, x)?;
        let h = if self.swiglu { ops::swiglu(tape, &h)? } else { ops::gelu(tape, &h)? };
        self.fc2.forward(tape, p, &h)
    }
}
