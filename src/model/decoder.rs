//! Decoder layers: a pre-LN GPT layer, plus for CCA layers the chunked cross-attention between the
//! self-attention and the MLP: `h = x + SA(LN1 x); h2 = h + CCA(LN_ca h); out = h2 + MLP(LN2 h2)`.
//!
//! CCA (Megatron `decoder_attention.py`): with pad = (n - 1) % m = m - 1, the attending rows are
//! LN_ca(h)[pad..] followed by m - 1 zero rows, split into l = n/m chunks of m rows; chunk c attends,
//! with no positions, to the k·r encoded tokens of its neighbours. The output is shifted back (pad zero
//! rows in front, cut to n): token t sees the neighbours of chunk (t + 1)/m - 1, tokens 0..m-2 none.
//! With Megatron's legacy `retro_attention_gate` g != 1 the CCA output is multiplied by g.

use super::encoder::Encoder;
use crate::autograd::{Tape, Var};
use crate::model::params::ParamBuilder;
use crate::model::RetroConfig;
use crate::nn::{CrossAttention, InitStd, LayerNorm, Mlp, SelfAttention};
use crate::ops::{self, AttnMask};
use crate::{bail, Result};

/// What the CCA layers share during one forward pass.
pub struct Retrieval {
    /// Embedded neighbour tokens [B·l·k, r, d]; consumed by the first CCA layer's encoder.
    pub embedded: Option<Var>,
    /// Encoder output [B·l, k·r, d], reused by every later CCA layer.
    pub encoded: Option<Var>,
    /// Keys of missing neighbours hidden from the decoder CCA ([B·l, k·r]).
    pub mask: AttnMask,
}

#[derive(Debug, Clone)]
pub struct Cca {
    pub(crate) ln: LayerNorm,
    pub(crate) attn: CrossAttention,
    /// Owned by the first CCA layer (parameters `decoder.layers.<i>.encoder.*`).
    pub(crate) encoder: Option<Encoder>,
    pub(crate) chunk_length: usize,
    pub(crate) gate: f64,
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
        let self_attn = SelfAttention::new(pb, &format!("{pre}.self_attention"), d, c.num_heads, true, init);
        let cca_parts = cca.then(|| {
            let ln = LayerNorm::new(pb, &format!("{pre}.pre_cross_attn_layernorm"), d, eps);
            let attn = CrossAttention::new(pb, &format!("{pre}.cross_attention"), d, c.num_heads, init);
            (ln, attn)
        });
        let pre_mlp_ln = LayerNorm::new(pb, &format!("{pre}.pre_mlp_layernorm"), d, eps);
        let mlp = Mlp::new(pb, &format!("{pre}.mlp"), d, c.ffn_hidden_size(), init);
        // Registered last, as torch registers the submodule after the layer's own parameters.
        let cca = cca_parts.map(|(ln, attn)| Cca {
            ln,
            attn,
            encoder: with_encoder.then(|| Encoder::new(pb, &format!("{pre}.encoder"), c, init)),
            chunk_length: c.chunk_length,
            gate: c.retro_attention_gate,
        });
        Self { input_ln, self_attn, cca, pre_mlp_ln, mlp }
    }

    pub fn has_cca(&self) -> bool {
        self.cca.is_some()
    }

    /// x: [B, n, d] -> [B, n, d].
    pub fn forward(&self, tape: &mut Tape, p: &[Var], x: &Var, retrieval: &mut Retrieval) -> Result<Var> {
        let h = self.input_ln.forward(tape, p, x)?;
        let h = self.self_attn.forward(tape, p, &h)?;
        let h = ops::dropout(tape, &h)?;
        let mut x = ops::add(tape, x, &h)?;
        if let Some(cca) = &self.cca {
            let out = cca.forward(tape, p, &x, retrieval)?;
            let out = ops::dropout(tape, &out)?;
            x = ops::add(tape, &x, &out)?;
        }
        let h = self.pre_mlp_ln.forward(tape, p, &x)?;
        let h = self.mlp.forward(tape, p, &h)?;
        let h = ops::dropout(tape, &h)?;
        ops::add(tape, &x, &h)
    }
}

impl Cca {
    fn forward(&self, tape: &mut Tape, p: &[Var], h: &Var, retrieval: &mut Retrieval) -> Result<Var> {
        let (b, n, d) = (h.shape()[0], h.shape()[1], h.shape()[2]);
        let m = self.chunk_length;
        let l = n / m;
        let y = self.ln.forward(tape, p, h)?;
        if let Some(encoder) = &self.encoder {
            let Some(embedded) = retrieval.embedded.take() else { bail!("CCA: the encoder ran twice in one forward") };
            let chunks = ops::reshape(tape, &y, &[b * l, m, d])?;
            retrieval.encoded = Some(encoder.forward(tape, p, &embedded, &chunks)?);
        }
        let Some(encoded) = &retrieval.encoded else { bail!("CCA: a CCA layer before the one that owns the encoder") };
        let pad = (n - 1) % m;
        let shifted = ops::shift_rows(tape, &y, 1, pad as isize, l * m)?;
        let queries = ops::reshape(tape, &shifted, &[b * l, m, d])?;
        let out = self.attn.forward(tape, p, &queries, encoded, &retrieval.mask)?;
        let out = ops::reshape(tape, &out, &[b, l * m, d])?;
        let out = ops::shift_rows(tape, &out, 1, -(pad as isize), n)?;
        if self.gate == 1.0 {
            Ok(out)
        } else {
            ops::scale(tape, &out, self.gate)
        }
    }
}
