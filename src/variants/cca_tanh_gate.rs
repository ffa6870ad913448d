//! `cca-tanh-gate`: the CCA output times tanh(g), g a learned scalar per CCA layer
//! (`<layer>.cross_attention.tanh_gate`, shape [1], not weight-decayed) that starts at 0. At 0 the layer
//! adds nothing, so a RETRO retro-fitted from a GPT checkpoint starts with exactly the GPT's outputs and
//! learns how much to read its neighbours (as Flamingo gates its cross-attention).

use super::{Attending, CcaVariant, CcaVariantEntry};
use crate::autograd::{Tape, Var};
use crate::model::params::{Init, ParamBuilder};
use crate::model::RetroConfig;
use crate::nn::CrossAttention;
use crate::ops;
use crate::Result;
use std::sync::Arc;

pub const ENTRY: CcaVariantEntry = CcaVariantEntry {
    name: "cca-tanh-gate",
    about: "the CCA output times tanh(g), g learned per layer from 0 (a retro-fit starts as its GPT)",
    build,
};

fn build(pb: &mut ParamBuilder, prefix: &str, _: &RetroConfig) -> Arc<dyn CcaVariant> {
    Arc::new(CcaTanhGate { gate: pb.add(format!("{prefix}.tanh_gate"), &[1], Init::Zeros) })
}

#[derive(Debug)]
pub struct CcaTanhGate {
    /// The parameter index of g.
    gate: usize,
}

impl CcaVariant for CcaTanhGate {
    fn attend(&self, tape: &mut Tape, p: &[Var], attn: &CrossAttention, rows: &Attending) -> Result<Var> {
        let out = rows.cca(tape, p, attn, None)?;
        let factor = ops::tanh(tape, &p[self.gate])?;
        ops::mul_scalar(tape, &out, &factor)
    }
}
