use crate::autograd::{Tape, Var};
use crate::model::params::{Init, ParamBuilder};
use crate::ops;
use crate::Result;

/// `y = x·Wᵀ + b`, W `[out, in]` named `<prefix>.weight`, b `<prefix>.bias` (zero-initialised).
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: usize,
    pub bias: usize,
}

impl Linear {
    pub fn new(pb: &mut ParamBuilder, prefix: &str, d_in: usize, d_out: usize, std: f64) -> Self {
        Self {
            weight: pb.add(format!("{prefix}.weight"), &[d_out, d_in], Init::Normal(std)),
            bias: pb.add(format!("{prefix}.bias"), &[d_out], Init::Zeros),
        }
    }

    pub fn forward(&self, tape: &mut Tape, p: &[Var], x: &Var) -> Result<Var> {
        ops::linear(tape, x, &p[self.weight], Some(&p[self.bias]))
    }
}
