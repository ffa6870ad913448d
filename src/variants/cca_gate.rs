//! `cca-gate`: Megatron's legacy `retro_attention_gate`, the CCA output multiplied by a constant g
//! (`retro_attention_gate` in the model config, `--retro-attention-gate`) before the residual add.
//! g = 0 gives the GPT baseline's outputs.

use super::{Attending, CcaVariant, CcaVariantEntry};
use crate::autograd::{Tape, Var};
use crate::nn::CrossAttention;
use crate::ops;
use crate::Result;
use std::sync::Arc;

pub const ENTRY: CcaVariantEntry = CcaVariantEntry {
    name: "cca-gate",
    about: "Megatron's legacy retro_attention_gate: the CCA output times a constant",
    build: |_, _, c| Arc::new(CcaGate { gate: c.retro_attention_gate }),
};

#[derive(Debug)]
pub struct CcaGate {
    gate: f64,
}

impl CcaVariant for CcaGate {
    fn attend(&self, tape: &mut Tape, p: &[Var], attn: &CrossAttention, rows: &Attending) -> Result<Var> {
        let out = rows.cca(tape, p, attn, None)?;
        ops::scale(tape, &out, self.gate)
    }
}
