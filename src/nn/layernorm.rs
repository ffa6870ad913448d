use crate::autograd::{Tape, Var};
use crate::model::params::{Init, ParamBuilder};
use crate::ops;
use crate::tensor::Tensor;
use crate::Result;

/// LayerNorm with weight (ones) and bias (zeros), `<prefix>.weight` / `<prefix>.bias`. With Megatron's
/// `--apply-layernorm-1p` the weight is stored as w − 1 (zeros) and applied as 1 + w.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub weight: usize,
    pub bias: usize,
    pub eps: f64,
    pub one_plus: bool,
}

impl LayerNorm {
    pub fn new(pb: &mut ParamBuilder, prefix: &str, d: usize, eps: f64) -> Self {
        let one_plus = pb.layernorm_1p;
        Self {
            weight: pb.add_master(format!("{prefix}.weight"), &[d], if one_plus { Init::Zeros } else { Init::Ones }),
            bias: pb.add_master(format!("{prefix}.bias"), &[d], Init::Zeros),
            eps,
            one_plus,
        }
    }

    /// The weight the normalisation multiplies by: the parameter, or 1 + the parameter.
    fn scale(&self, tape: &mut Tape, p: &[Var]) -> Result<Var> {
        let w = &p[self.weight];
        if !self.one_plus {
            return Ok(w.clone());
        }
        let ones = Tensor::from_vec(vec![1.0f64; w.value().numel()], w.shape())?.to_dtype(w.dtype())?;
        ops::add(tape, w, &Var::constant(ones.to(w.value().device())?))
    }

    pub fn forward(&self, tape: &mut Tape, p: &[Var], x: &Var) -> Result<Var> {
        let w = self.scale(tape, p)?;
        ops::layer_norm(tape, x, &w, &p[self.bias], self.eps)
    }

    /// The residual add `h = x + r` and this LayerNorm of it, fused (`ops::add_layer_norm`): (h, LN(h)).
    pub fn forward_residual(&self, tape: &mut Tape, p: &[Var], x: &Var, r: &Var) -> Result<(Var, Var)> {
        let w = self.scale(tape, p)?;
        ops::add_layer_norm(tape, x, r, &w, &p[self.bias], self.eps)
    }
}
