//! The attention-variant lab's registry. A chunked cross-attention (CCA) variant is one file here and
//! one line in `CCA_VARIANTS`: a name, a sentence, and a `build` that registers the variant's own
//! parameters for one CCA layer and returns what that layer calls. Its forward is written with tape ops,
//! so autograd gives its backward on every path the model runs: training, evaluation, KV-cached
//! generation, tensor parallelism. docs/variants.md walks through adding one.
//!
//! What a variant replaces: a CCA layer normalises the residual stream, shifts and chunks it into
//! attending rows (decoder.rs), and asks its variant for the output of those rows against the chunk's
//! retrieved neighbours (encoded, then projected to keys | values by `CrossAttention::project_kv`);
//! the layer then adds it to the residual stream.

mod cca;
mod cca_gate;
mod cca_relpos;
mod cca_tanh_gate;

use crate::autograd::{Tape, Var};
use crate::model::params::ParamBuilder;
use crate::model::RetroConfig;
use crate::nn::CrossAttention;
use crate::ops::AttnMask;
use crate::{bail, Result};
use std::sync::Arc;

/// What a CCA layer gives its variant to attend with.
pub struct Attending<'a> {
    /// The attending rows [N, m, d] (in generation one row, [1, 1, d]).
    pub queries: &'a Var,
    /// Which row of its attending chunk the first query is (0 for a whole pass; in generation the
    /// generated row's place in its chunk).
    pub first_row: usize,
    /// The chunk's neighbours, encoded and projected by `CrossAttention::project_kv`: [N, k·r, 2d].
    pub kv: &'a Var,
    /// Hides missing neighbours' keys.
    pub mask: &'a AttnMask,
}

impl Attending<'_> {
    /// Megatron's CCA of these rows through `attn`, with an optional score bias [heads, rows, k·r].
    pub fn cca(&self, tape: &mut Tape, p: &[Var], attn: &CrossAttention, bias: Option<&Var>) -> Result<Var> {
        attn.forward_kv(tape, p, self.queries, self.kv, self.mask, bias)
    }
}

/// One CCA layer's variant.
pub trait CcaVariant: std::fmt::Debug {
    /// The CCA output [N, m, d] of `rows`.
    fn attend(&self, tape: &mut Tape, p: &[Var], attn: &CrossAttention, rows: &Attending) -> Result<Var>;
}

/// A registry entry.
#[derive(Debug)]
pub struct CcaVariantEntry {
    pub name: &'static str,
    /// One sentence for `--help` and docs/variants.md.
    pub about: &'static str,
    /// The variant of one CCA layer: registers its own parameters under `prefix` (the layer's
    /// `decoder.layers.<i>.cross_attention`) in `pb`.
    pub build: fn(pb: &mut ParamBuilder, prefix: &str, config: &RetroConfig) -> Arc<dyn CcaVariant>,
}

/// Every CCA variant, the default (Megatron's) first.
pub const CCA_VARIANTS: &[CcaVariantEntry] = &[cca::ENTRY, cca_gate::ENTRY, cca_tanh_gate::ENTRY, cca_relpos::ENTRY];

/// The registered variant called `name`, or an error listing them.
pub fn cca_variant(name: &str) -> Result<&'static CcaVariantEntry> {
    match CCA_VARIANTS.iter().find(|v| v.name == name) {
        Some(v) => Ok(v),
        None => bail!(
            "unknown CCA variant {name:?}; the registered ones are {}",
            CCA_VARIANTS.iter().map(|v| v.name).collect::<Vec<_>>().join(", ")
        ),
    }
}
