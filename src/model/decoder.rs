//! Decoder layers: a pre-LN GPT layer, plus for CCA layers the chunked cross-attention between the
//! self-attention and the MLP: `h = x + SA(LN1 x); h2 = h + CCA(LN_ca h); out = h2 + MLP(LN2 h2)`.
//!
//! CCA (Megatron `decoder_attention.py`): with pad = (n - 1) % m = m - 1, the attending rows are
//! LN_ca(h)[pad..] followed by m - 1 zero rows, split into l = n/m chunks of m rows; chunk c attends,
//! with no positions, to the k·r encoded tokens of its neighbours — how is the layer's CCA variant
//! (src/variants: Megatron's `cca` by default). The output is shifted back (pad zero rows in front, cut
//! to n): token t sees the neighbours of chunk (t + 1)/m - 1, tokens 0..m-2 none.
//!
//! The same layer code runs a whole sequence (`Pass::Full`: training, evaluation) or one new position of
//! generation (`Pass::Step`, with the layer's `LayerCache`): then self-attention reads the cached keys and
//! values, the first CCA layer gathers the chunk's LN_ca states and encodes the neighbours when the position
//! completes a chunk, every CCA layer caches that chunk's K|V projection, and position t cross-attends to
//! chunk (t + 1)/m - 1's: the rows the full pass's shift gives it.

use super::encoder::Encoder;
use crate::autograd::{Tape, Var};
use crate::model::params::ParamBuilder;
use crate::model::RetroConfig;
use crate::nn::{CrossAttention, InitStd, KvCache, LayerNorm, Mlp, SelfAttention};
use crate::ops::{self, AttnMask};
use crate::variants::{Attending, CcaVariant};
use crate::{bail, Result};
use std::sync::Arc;

/// What the CCA layers share during one forward pass.
pub struct Retrieval {
    /// Embedded neighbour tokens [B·l·k, r, d]; consumed by the first CCA layer's encoder.
    pub embedded: Option<Var>,
    /// Encoder output [B·l, k·r, d], reused by every later CCA layer.
    pub encoded: Option<Var>,
    /// Keys of missing neighbours hidden from the decoder CCA ([B·l, k·r]).
    pub mask: AttnMask,
}

/// How a forward pass runs: whole sequences, or one new position of generation with a layer's caches.
pub enum Pass<'a> {
    Full(&'a mut Retrieval),
    Step(&'a mut DecodeStep, &'a mut LayerCache),
}

/// What the layers share while generation decodes one new position.
#[derive(Debug, Default)]
pub struct DecodeStep {
    /// The position being decoded.
    pub t: usize,
    /// The embedded neighbours [k, r, d] of the chunk this position completes (none otherwise).
    pub embedded: Option<Var>,
    /// Their encoding [1, k·r, d], set by the first CCA layer for every CCA layer of this position.
    pub encoded: Option<Var>,
    /// The first CCA layer's LN_ca states of the current chunk's positions so far.
    pub chunk_states: Vec<Var>,
}

/// One decoder layer's generation caches: its self-attention keys and values and, for a CCA layer, the
/// K|V projection of every completed chunk's encoded neighbours.
#[derive(Debug, Clone, Default)]
pub struct LayerCache {
    attn: KvCache,
    cca_kv: Vec<Var>,
}

#[derive(Debug, Clone)]
pub struct Cca {
    pub(crate) ln: LayerNorm,
    pub(crate) attn: CrossAttention,
    /// Owned by the first CCA layer (parameters `decoder.layers.<i>.encoder.*`).
    pub(crate) encoder: Option<Encoder>,
    pub(crate) chunk_length: usize,
    /// What the attending rows produce (`RetroConfig::cca_variant`).
    pub(crate) variant: Arc<dyn CcaVariant>,
}

#[derive(Debug, Clone)]
pub struct DecoderLayer {
    pub(crate) input_ln: LayerNorm,
    pub(crate) self_attn: SelfAttention,
    pub(crate) cca: Option<Cca>,
    pub(crate) pre_mlp_ln: LayerNorm,
    pub(crate) mlp: Mlp,
}

impl DecoderLayer {
    /// Layer `index` (0-based); `cca` for CCA layers, `with_encoder` for the first of them.
    pub fn new(
        pb: &mut ParamBuilder,
        c: &RetroConfig,
        index: usize,
        cca: bool,
        with_encoder: bool,
        init: InitStd,
    ) -> Self {
        let (d, eps) = (c.hidden_size, c.layernorm_eps);
        let pre = format!("decoder.layers.{index}");
        let input_ln = LayerNorm::new(pb, &format!("{pre}.input_layernorm"), d, eps);
        let self_attn =
            SelfAttention::new(pb, &format!("{pre}.self_attention"), d, (c.num_heads, c.kv_heads()), true, init)
                .with_rotary(c.rotary_dim());
        let cca_parts = cca.then(|| {
            let ln = LayerNorm::new(pb, &format!("{pre}.pre_cross_attn_layernorm"), d, eps);
            let attn = CrossAttention::new(pb, &format!("{pre}.cross_attention"), d, c.num_heads, init);
            let entry = crate::variants::cca_variant(&c.cca_variant).expect("RetroConfig::validate checked it");
            let variant = (entry.build)(pb, &format!("{pre}.cross_attention"), c);
            (ln, attn, variant)
        });
        let pre_mlp_ln = LayerNorm::new(pb, &format!("{pre}.pre_mlp_layernorm"), d, eps);
        let mlp = Mlp::new(pb, &format!("{pre}.mlp"), d, c.ffn_hidden_size(), c.swiglu, init);
        // Registered last, as torch registers the submodule after the layer's own parameters.
        let cca = cca_parts.map(|(ln, attn, variant)| Cca {
            ln,
            attn,
            encoder: with_encoder.then(|| Encoder::new(pb, &format!("{pre}.encoder"), c, init)),
            chunk_length: c.chunk_length,
            variant,
        });
        Self { input_ln, self_attn, cca, pre_mlp_ln, mlp }
    }

    pub fn has_cca(&self) -> bool {
        self.cca.is_some()
    }

    /// x: [B, n, d] -> [B, n, d] (`Pass::Step`: [1, 1, d], the new position).
    pub fn forward(&self, tape: &mut Tape, p: &[Var], x: &Var, pass: Pass) -> Result<Var> {
        let h = self.input_ln.forward(tape, p, x)?;
        let (mut pass, attn_cache) = match pass {
            Pass::Full(r) => (CcaPass::Full(r), None),
            Pass::Step(step, cache) => (CcaPass::Step(step, &mut cache.cca_kv), Some(&mut cache.attn)),
        };
        let h = self.self_attn.forward(tape, p, &h, attn_cache)?;
        let h = ops::dropout(tape, &h)?;
        // Each residual add is fused with the LayerNorm that reads its result.
        let next_ln = self.cca.as_ref().map_or(&self.pre_mlp_ln, |cca| &cca.ln);
        let (mut x, mut y) = next_ln.forward_residual(tape, p, x, &h)?;
        if let Some(cca) = &self.cca {
            // None: a generated position before the first complete chunk, which retrieves nothing (the
            // full pass adds the shift's zero rows there).
            (x, y) = match cca.forward(tape, p, &y, &mut pass)? {
                Some(out) => {
                    let out = ops::dropout(tape, &out)?;
                    self.pre_mlp_ln.forward_residual(tape, p, &x, &out)?
                }
                None => {
                    let y = self.pre_mlp_ln.forward(tape, p, &x)?;
                    (x, y)
                }
            };
        }
        let h = self.mlp.forward(tape, p, &y)?;
        let h = ops::dropout(tape, &h)?;
        ops::add(tape, &x, &h)
    }
}

/// The CCA's part of a pass: the shared retrieval state, or generation's step and this layer's K|V cache.
enum CcaPass<'a> {
    Full(&'a mut Retrieval),
    Step(&'a mut DecodeStep, &'a mut Vec<Var>),
}

impl Cca {
    /// `y`: the residual stream after this CCA's LayerNorm (`ln`, applied by the layer, fused with the
    /// residual add before it).
    fn forward(&self, tape: &mut Tape, p: &[Var], y: &Var, pass: &mut CcaPass) -> Result<Option<Var>> {
        match pass {
            CcaPass::Full(retrieval) => Ok(Some(self.full(tape, p, y, retrieval)?)),
            CcaPass::Step(step, kv) => self.step(tape, p, y, step, kv),
        }
    }

    /// One generated position: see the module doc.
    fn step(
        &self,
        tape: &mut Tape,
        p: &[Var],
        y: &Var,
        step: &mut DecodeStep,
        kv: &mut Vec<Var>,
    ) -> Result<Option<Var>> {
        let m = self.chunk_length;
        if let Some(encoder) = &self.encoder {
            step.chunk_states.push(y.clone());
            if let Some(embedded) = step.embedded.take() {
                let states = ops::concat(tape, &step.chunk_states.iter().collect::<Vec<_>>(), 1)?;
                step.encoded = Some(encoder.forward(tape, p, &embedded, &states)?);
                step.chunk_states.clear();
            }
        }
        if let Some(encoded) = &step.encoded {
            kv.push(self.attn.project_kv(tape, p, encoded)?);
        }
        if step.t + 1 < m {
            return Ok(None);
        }
        let chunk = (step.t + 1) / m - 1;
        let Some(chunk_kv) = kv.get(chunk) else {
            bail!("CCA: position {} attends to chunk {chunk}, whose neighbours were never encoded", step.t)
        };
        let rows = Attending { queries: y, first_row: (step.t + 1) % m, kv: chunk_kv, mask: &AttnMask::None };
        self.variant.attend(tape, p, &self.attn, &rows).map(Some)
    }

    /// A whole sequence: the shifted, chunked cross-attention.
    fn full(&self, tape: &mut Tape, p: &[Var], y: &Var, retrieval: &mut Retrieval) -> Result<Var> {
        let (b, n, d) = (y.shape()[0], y.shape()[1], y.shape()[2]);
        let m = self.chunk_length;
        let l = n / m;
        if let Some(encoder) = &self.encoder {
            let Some(embedded) = retrieval.embedded.take() else { bail!("CCA: the encoder ran twice in one forward") };
            let chunks = ops::reshape(tape, y, &[b * l, m, d])?;
            retrieval.encoded = Some(encoder.forward(tape, p, &embedded, &chunks)?);
        }
        let Some(encoded) = &retrieval.encoded else { bail!("CCA: a CCA layer before the one that owns the encoder") };
        let pad = (n - 1) % m;
        let shifted = ops::shift_rows(tape, y, 1, pad as isize, l * m)?;
        let queries = ops::reshape(tape, &shifted, &[b * l, m, d])?;
        let kv = self.attn.project_kv(tape, p, encoded)?;
        let rows = Attending { queries: &queries, first_row: 0, kv: &kv, mask: &retrieval.mask };
        let out = self.variant.attend(tape, p, &self.attn, &rows)?;
        let out = ops::reshape(tape, &out, &[b, l * m, d])?;
        ops::shift_rows(tape, &out, 1, -(pad as isize), n)
    }
}
