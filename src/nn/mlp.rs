use super::{InitStd, Linear};
use crate::autograd::{Tape, Var};
use crate::model::params::ParamBuilder;
use crate::ops;
use crate::Result;

/// `linear_fc2(gelu_tanh(linear_fc1(x)))`, hidden 4d; fc1 column-parallel and fc2 row-parallel, so the
/// GELU runs on each tensor-parallel rank's part of the hidden features.
#[derive(Debug, Clone)]
pub struct Mlp {
    pub fc1: Linear,
    pub fc2: Linear,
}

impl Mlp {
    pub fn new(pb: &mut ParamBuilder, prefix: &str, d: usize, ffn: usize, init: InitStd) -> Self {
        Self {
            fc1: Linear::column(pb, &format!("{prefix}.linear_fc1"), d, ffn, 1, init.std),
            fc2: Linear::row(pb, &format!("{prefix}.linear_fc2"), ffn, d, init.output_std),
        }
    }

    pub fn forward(&self, tape: &mut Tape, p: &[Var], x: &Var) -> Result<Var> {
        let h = self.fc1.forward(tape, p, x)?;
        let h = ops::gelu(tape, &h)?;
        self.fc2.forward(tape, p, &h)
    }
}
