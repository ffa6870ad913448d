//! `cca`: Megatron's chunked cross-attention (the default): multi-head attention of the attending rows
//! over the neighbours' keys and values, then the output projection.

use super::{Attending, CcaVariant, CcaVariantEntry};
use crate::autograd::{Tape, Var};
use crate::nn::CrossAttention;
use crate::Result;
use std::sync::Arc;

pub const ENTRY: CcaVariantEntry = CcaVariantEntry {
    name: "cca",
    about: "Megatron's chunked cross-attention (the default)",
    build: |_, _, _| Arc::new(Cca),
};

#[derive(Debug)]
pub struct Cca;

impl CcaVariant for Cca {
    fn attend(&self, tape: &mut Tape, p: &[Var], attn: &CrossAttention, rows: &Attending) -> Result<Var> {
        rows.cca(tape, p, attn, None)
    }
}
