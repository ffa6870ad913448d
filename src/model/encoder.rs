//! The retrieval encoder (Megatron `encoder_spec.py` / `encoder_attention.py`), owned by the first CCA
//! layer and run once per forward. Layer 1: bidirectional self-attention over each neighbour, then
//! cross-attention from all k·r neighbour tokens of a chunk to that chunk's m decoder states (the
//! first CCA layer's LN_ca output, un-shifted), then the MLP. Quirk kept from Megatron: the residual
//! around that cross-attention is the *normed* input. Later layers are plain bidirectional layers.
//! No final LayerNorm.

use crate::autograd::{Tape, Var};
use crate::model::params::ParamBuilder;
use crate::model::RetroConfig;
use crate::nn::{CrossAttention, InitStd, LayerNorm, Mlp, SelfAttention};
use crate::ops::{self, AttnMask};
use crate::Result;

#[derive(Debug, Clone)]
pub(crate) struct EncoderLayer {
    pub(crate) input_ln: LayerNorm,
    pub(crate) self_attn: SelfAttention,
    /// Layer 1 only: LN_ca and the cross-attention to the decoder chunk.
    pub(crate) cross: Option<(LayerNorm, CrossAttention)>,
    pub(crate) pre_mlp_ln: LayerNorm,
    pub(crate) mlp: Mlp,
}

#[derive(Debug, Clone)]
pub struct Encoder {
    pub(crate) layers: Vec<EncoderLayer>,
    k: usize,
    r: usize,
}

impl Encoder {
    pub fn new(pb: &mut ParamBuilder, prefix: &str, c: &RetroConfig, init: InitStd) -> Self {
        let (d, eps) = (c.hidden_size, c.layernorm_eps);
        let layers = (0..c.encoder_num_layers)
            .map(|i| {
                let pre = format!("{prefix}.layers.{i}");
                let input_ln = LayerNorm::new(pb, &format!("{pre}.input_layernorm"), d, eps);
                let self_attn = SelfAttention::new(
                    pb,
                    &format!("{pre}.self_attention"),
                    d,
                    (c.num_heads, c.kv_heads()),
                    false,
                    init,
                );
                let cross = (i == 0).then(|| {
                    let ln = LayerNorm::new(pb, &format!("{pre}.pre_cross_attn_layernorm"), d, eps);
                    (ln, CrossAttention::new(pb, &format!("{pre}.cross_attention"), d, c.num_heads, init))
                });
                let pre_mlp_ln = LayerNorm::new(pb, &format!("{pre}.pre_mlp_layernorm"), d, eps);
                let mlp = Mlp::new(pb, &format!("{pre}.mlp"), d, c.ffn_hidden_size(), c.swiglu, init);
                EncoderLayer { input_ln, self_attn, cross, pre_mlp_ln, mlp }
            })
            .collect();
        Self { layers, k: c.num_neighbors, r: c.retrieved_length() }
    }

    /// neighbors: embedded neighbour tokens [N·k, r, d]; chunks: [N, m, d]. Returns [N, k·r, d].
    pub fn forward(&self, tape: &mut Tape, p: &[Var], neighbors: &Var, chunks: &Var) -> Result<Var> {
        let (n, d) = (chunks.shape()[0], chunks.shape()[2]);
        let mut x = neighbors.clone();
        for layer in &self.layers {
            let h = layer.input_ln.forward(tape, p, &x)?;
            let h = layer.self_attn.forward(tape, p, &h, None)?;
            let h = ops::dropout(tape, &h)?;
            // Each residual add is fused with the LayerNorm that reads its result.
            let next_ln = layer.cross.as_ref().map_or(&layer.pre_mlp_ln, |(ln, _)| ln);
            let (mut sum, mut y) = next_ln.forward_residual(tape, p, &x, &h)?;
            if let Some((_, cross)) = &layer.cross {
                let queries = ops::reshape(tape, &y, &[n, self.k * self.r, d])?;
                let ca = cross.forward(tape, p, &queries, chunks, &AttnMask::None)?;
                let ca = ops::reshape(tape, &ca, &[n * self.k, self.r, d])?;
                let ca = ops::dropout(tape, &ca)?;
                (sum, y) = layer.pre_mlp_ln.forward_residual(tape, p, &y, &ca)?;
            }
            x = sum;
            let h = layer.mlp.forward(tape, p, &y)?;
            let h = ops::dropout(tape, &h)?;
            x = ops::add(tape, &x, &h)?;
        }
        ops::reshape(tape, &x, &[n, self.k * self.r, d])
    }
}
