use crate::autograd::{Tape, Var};
use crate::model::params::{Init, ParamBuilder};
use crate::ops;
use crate::Result;

/// LayerNorm with weight (ones) and bias (zeros), `<prefix>.weight` / `<prefix>.bias`.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub weight: usize,
    pub bias: usize,
    pub eps: f64,
}

impl LayerNorm {
    pub fn new(pb: &mut ParamBuilder, prefix: &str, d: usize, eps: f64) -> Self {
        Self {
            weight: pb.add_master(format!("{prefix}.weight"), &[d], Init::Ones),
            bias: pb.add_master(format!("{prefix}.bias"), &[d], Init::Zeros),
            eps,
        }
    }

    pub fn forward(&self, tape: &mut Tape, p: &[Var], x: &Var) -> Result<Var> {
        ops::layer_norm(tape, x, &p[self.weight], &p[self.bias], self.eps)
    }

    /// The residual add `h = x + r` and this LayerNorm of it, fused (`ops::add_layer_norm`): (h, LN(h)).
    pub fn forward_residual(&self, tape: &mut Tape, p: &[Var], x: &Var, r: &Var) -> Result<(Var, Var)> {
        ops::add_layer_norm(tape, x, r, &p[self.weight], &p[self.bias], self.eps)
    }
}
