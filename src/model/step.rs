//! The training step as an explicit program of kernel-level calls (llm.c's granularity): the forward
//! keeps what the backward needs, the backward is written out by hand, and every call goes through a
//! `StepBackend`. The CPU backend (backend/cpu/step.rs) runs the CPU reference kernels in f32, which is
//! how this program is checked against the tape-based model (tests/step.rs); the CUDA backend
//! (backend/cuda/step.rs) runs the same program on the GPU kernels (bf16 activations, f32 parameters,
//! gradients and statistics).
//!
//! Same semantics as `RetroModel` (decoder.rs, encoder.rs), with two limits checked up front: no dropout
//! and no masked (missing) neighbours.

use super::decoder::{Cca, DecoderLayer};
use super::encoder::EncoderLayer;
use super::RetroModel;
use crate::nn::{CrossAttention, LayerNorm, Linear, Mlp, SelfAttention};
use crate::{ensure, Result};

/// An attention problem's sizes: the CPU reference's type, shared by every backend.
pub use crate::backend::cpu::attention::Dims;

/// Attention operands as the projections produce them: a fused QKV buffer `[rows, 3w]`, or Q `[rows_q, w]`
/// with a fused KV buffer `[rows_k, 2w]`. The backward returns the gradients in the same packing.
pub enum AttnInputs<'a, A> {
    Qkv(&'a A),
    QKv(&'a A, &'a A),
}

/// The kernel-level operations of the step. Activations are row-major `[rows, width]` buffers.
pub trait StepBackend {
    /// Activations and the copies of parameters that GEMMs and embeddings read (bf16 on the GPU).
    type Act;
    /// Parameters and gradient accumulators (f32 everywhere).
    type Vec32;
    type Stats;
    /// What attention keeps for its backward.
    type AttnSaved;
    type Tokens;
    type Targets;

    fn vec32(&self, x: &[f32]) -> Result<Self::Vec32>;
    fn zeros32(&self, n: usize) -> Result<Self::Vec32>;
    fn act(&self, x: &[f32]) -> Result<Self::Act>;
    fn read_vec32(&self, x: &Self::Vec32) -> Result<Vec<f32>>;
    fn tokens(&self, ids: &[i32], vocab: usize) -> Result<Self::Tokens>;
    fn targets(&self, labels: &[i32], classes: usize) -> Result<Self::Targets>;

    /// `word[ids[t]] + position[t % period]`.
    fn embedding(
        &self,
        ids: &Self::Tokens,
        word: &Self::Act,
        position: &Self::Act,
        d: usize,
        period: usize,
    ) -> Result<Self::Act>;
    fn embedding_backward(
        &self,
        ids: &Self::Tokens,
        dout: &Self::Act,
        dword: &mut Self::Vec32,
        dposition: &mut Self::Vec32,
        d: usize,
        period: usize,
    ) -> Result<()>;
    fn layernorm(
        &self,
        x: &Self::Act,
        g: &Self::Vec32,
        b: &Self::Vec32,
        d: usize,
        eps: f64,
    ) -> Result<(Self::Act, Self::Stats)>;
    #[allow(clippy::too_many_arguments)]
    fn layernorm_backward(
        &self,
        dy: &Self::Act,
        x: &Self::Act,
        stats: &Self::Stats,
        g: &Self::Vec32,
        dg: &mut Self::Vec32,
        db: &mut Self::Vec32,
        d: usize,
    ) -> Result<Self::Act>;
    /// `x w^T (+ b)`, w `[dout, din]`; the bias is the `Act` copy (cuBLASLt's epilogue reads D's type).
    fn linear(
        &self,
        x: &Self::Act,
        w: &Self::Act,
        b: Option<&Self::Act>,
        rows: usize,
        din: usize,
        dout: usize,
    ) -> Result<Self::Act>;
    /// Returns dx; `dw += dy^T x`, `db += column sums of dy`.
    #[allow(clippy::too_many_arguments)]
    fn linear_backward(
        &self,
        dy: &Self::Act,
        x: &Self::Act,
        w: &Self::Act,
        dw: &mut Self::Vec32,
        db: Option<&mut Self::Vec32>,
        rows: usize,
        din: usize,
        dout: usize,
    ) -> Result<Self::Act>;
    /// `gelu_tanh(x + b)` over rows of d.
    fn bias_gelu(&self, x: &Self::Act, b: &Self::Vec32, d: usize) -> Result<Self::Act>;
    fn bias_gelu_backward(
        &self,
        dy: &Self::Act,
        x: &Self::Act,
        b: &Self::Vec32,
        db: &mut Self::Vec32,
        d: usize,
    ) -> Result<Self::Act>;
    fn attention(&self, s: &Dims, x: AttnInputs<Self::Act>) -> Result<(Self::Act, Self::AttnSaved)>;
    fn attention_backward(
        &self,
        s: &Dims,
        x: AttnInputs<Self::Act>,
        o: &Self::Act,
        saved: &Self::AttnSaved,
        dout: &Self::Act,
    ) -> Result<Vec<Self::Act>>;
    fn add(&self, a: &Self::Act, b: &Self::Act) -> Result<Self::Act>;
    fn add_into(&self, a: &mut Self::Act, b: &Self::Act) -> Result<()>;
    /// Per batch of `rows_in` rows of d: `out[i] = x[i + shift]` for `i < rows_out`, zero where
    /// `i + shift` falls outside `0..rows_in` (the CCA's shift and its inverse).
    fn shift_rows(
        &self,
        x: &Self::Act,
        batch: usize,
        rows_in: usize,
        rows_out: usize,
        d: usize,
        shift: isize,
    ) -> Result<Self::Act>;
    /// Sum of the row losses, and the logits' gradient for `d(total)/d(row loss) = scale`.
    fn cross_entropy(
        &self,
        logits: Self::Act,
        targets: &Self::Targets,
        classes: usize,
        scale: f32,
    ) -> Result<(f64, Self::Act)>;
}

/// The model's parameters on a backend: f32 values, the `Act` copy of every parameter (what GEMMs, their
/// bias epilogues and the embeddings read: cuBLASLt takes a bias of the output's type) and f32 gradient
/// accumulators, all in the model's spec order.
pub struct DeviceParams<B: StepBackend> {
    pub values: Vec<B::Vec32>,
    pub copies: Vec<B::Act>,
    pub grads: Vec<B::Vec32>,
}

impl<B: StepBackend> DeviceParams<B> {
    pub fn upload(backend: &B, model: &RetroModel) -> Result<Self> {
        let mut values = Vec::new();
        let mut copies = Vec::new();
        let mut grads = Vec::new();
        for t in &model.params.tensors {
            let t = t.to_dtype(crate::tensor::DType::F32)?;
            let host = t.data::<f32>()?;
            values.push(backend.vec32(host)?);
            copies.push(backend.act(host)?);
            grads.push(backend.zeros32(host.len())?);
        }
        Ok(Self { values, copies, grads })
    }

    fn copy(&self, i: usize) -> &B::Act {
        &self.copies[i]
    }
}

/// Two mutable gradients at once (they are always different parameters).
fn two<T>(v: &mut [T], a: usize, b: usize) -> (&mut T, &mut T) {
    assert_ne!(a, b);
    if a < b {
        let (x, y) = v.split_at_mut(b);
        (&mut x[a], &mut y[0])
    } else {
        let (x, y) = v.split_at_mut(a);
        (&mut y[0], &mut x[b])
    }
}

struct Step<'a, B: StepBackend> {
    b: &'a B,
    p: &'a mut DeviceParams<B>,
    d: usize,
    heads: usize,
    eps: f64,
}

struct LnSaved<B: StepBackend> {
    x: B::Act,
    y: B::Act,
    stats: B::Stats,
}

struct MlpSaved<B: StepBackend> {
    ln: LnSaved<B>,
    pre: B::Act,
    act: B::Act,
}

struct AttnBlockSaved<B: StepBackend> {
    ln: LnSaved<B>,
    qkv: B::Act,
    o: B::Act,
    saved: B::AttnSaved,
}

struct CrossSaved<B: StepBackend> {
    q: B::Act,
    kv: B::Act,
    o: B::Act,
    saved: B::AttnSaved,
}

impl<B: StepBackend> Step<'_, B> {
    fn ln(&self, ln: &LayerNorm, x: B::Act) -> Result<LnSaved<B>> {
        let (y, stats) = self.b.layernorm(&x, &self.p.values[ln.weight], &self.p.values[ln.bias], self.d, self.eps)?;
        Ok(LnSaved { x, y, stats })
    }

    fn ln_backward(&mut self, ln: &LayerNorm, s: &LnSaved<B>, dy: &B::Act) -> Result<B::Act> {
        let (dg, db) = two(&mut self.p.grads, ln.weight, ln.bias);
        self.b.layernorm_backward(dy, &s.x, &s.stats, &self.p.values[ln.weight], dg, db, self.d)
    }

    fn linear(&self, l: &Linear, x: &B::Act, rows: usize, din: usize, dout: usize) -> Result<B::Act> {
        self.b.linear(x, self.p.copy(l.weight), Some(self.p.copy(l.bias)), rows, din, dout)
    }

    #[allow(clippy::too_many_arguments)]
    fn linear_backward(
        &mut self,
        l: &Linear,
        dy: &B::Act,
        x: &B::Act,
        rows: usize,
        din: usize,
        dout: usize,
    ) -> Result<B::Act> {
        let w = &self.p.copies[l.weight];
        let (dw, db) = two(&mut self.p.grads, l.weight, l.bias);
        self.b.linear_backward(dy, x, w, dw, Some(db), rows, din, dout)
    }

    /// x -> x + SA(LN(x)); `batch` sequences of `len` rows.
    fn self_attention(
        &self,
        ln: &LayerNorm,
        sa: &SelfAttention,
        x: B::Act,
        batch: usize,
        len: usize,
    ) -> Result<(B::Act, AttnBlockSaved<B>)> {
        let (d, rows) = (self.d, batch * len);
        let ln = self.ln(ln, x)?;
        let qkv = self.linear(&sa.qkv, &ln.y, rows, d, 3 * d)?;
        let shape = self.shape(batch, len, len, sa.causal);
        let (o, saved) = self.b.attention(&shape, AttnInputs::Qkv(&qkv))?;
        let proj = self.linear(&sa.proj, &o, rows, d, d)?;
        let out = self.b.add(&ln.x, &proj)?;
        Ok((out, AttnBlockSaved { ln, qkv, o, saved }))
    }

    /// dout of `x + SA(LN(x))` -> dx.
    fn self_attention_backward(
        &mut self,
        lnp: &LayerNorm,
        sa: &SelfAttention,
        s: &AttnBlockSaved<B>,
        dout: B::Act,
        batch: usize,
        len: usize,
    ) -> Result<B::Act> {
        let (d, rows) = (self.d, batch * len);
        let d_o = self.linear_backward(&sa.proj, &dout, &s.o, rows, d, d)?;
        let shape = self.shape(batch, len, len, sa.causal);
        let dqkv = self.b.attention_backward(&shape, AttnInputs::Qkv(&s.qkv), &s.o, &s.saved, &d_o)?.remove(0);
        let dln = self.linear_backward(&sa.qkv, &dqkv, &s.ln.y, rows, d, 3 * d)?;
        let mut dx = self.ln_backward(lnp, &s.ln, &dln)?;
        self.b.add_into(&mut dx, &dout)?;
        Ok(dx)
    }

    /// x -> x + MLP(LN(x)) over `rows` rows.
    fn mlp(&self, lnp: &LayerNorm, mlp: &Mlp, x: B::Act, rows: usize, ffn: usize) -> Result<(B::Act, MlpSaved<B>)> {
        let d = self.d;
        let ln = self.ln(lnp, x)?;
        let pre = self.b.linear(&ln.y, self.p.copy(mlp.fc1.weight), None, rows, d, ffn)?;
        let act = self.b.bias_gelu(&pre, &self.p.values[mlp.fc1.bias], ffn)?;
        let f = self.linear(&mlp.fc2, &act, rows, ffn, d)?;
        let out = self.b.add(&ln.x, &f)?;
        Ok((out, MlpSaved { ln, pre, act }))
    }

    fn mlp_backward(
        &mut self,
        lnp: &LayerNorm,
        mlp: &Mlp,
        s: &MlpSaved<B>,
        dout: B::Act,
        rows: usize,
        ffn: usize,
    ) -> Result<B::Act> {
        let d = self.d;
        let dact = self.linear_backward(&mlp.fc2, &dout, &s.act, rows, ffn, d)?;
        let dpre = self.b.bias_gelu_backward(
            &dact,
            &s.pre,
            &self.p.values[mlp.fc1.bias],
            &mut self.p.grads[mlp.fc1.bias],
            ffn,
        )?;
        let w1 = &self.p.copies[mlp.fc1.weight];
        let dln = self.b.linear_backward(&dpre, &s.ln.y, w1, &mut self.p.grads[mlp.fc1.weight], None, rows, d, ffn)?;
        let mut dx = self.ln_backward(lnp, &s.ln, &dln)?;
        self.b.add_into(&mut dx, &dout)?;
        Ok(dx)
    }

    /// Cross-attention of `q_in` (`batch` x sq rows) to `context` (`batch` x sk rows), before the
    /// output projection's residual: returns proj(attn).
    fn cross(
        &self,
        ca: &CrossAttention,
        q_in: &B::Act,
        context: &B::Act,
        batch: usize,
        sq: usize,
        sk: usize,
    ) -> Result<(B::Act, CrossSaved<B>)> {
        let d = self.d;
        let q = self.linear(&ca.q, q_in, batch * sq, d, d)?;
        let kv = self.linear(&ca.kv, context, batch * sk, d, 2 * d)?;
        let (o, saved) = self.b.attention(&self.shape(batch, sq, sk, false), AttnInputs::QKv(&q, &kv))?;
        let out = self.linear(&ca.proj, &o, batch * sq, d, d)?;
        Ok((out, CrossSaved { q, kv, o, saved }))
    }

    /// Returns (d q_in, d context).
    #[allow(clippy::too_many_arguments)]
    fn cross_backward(
        &mut self,
        ca: &CrossAttention,
        s: &CrossSaved<B>,
        q_in: &B::Act,
        context: &B::Act,
        dout: &B::Act,
        batch: usize,
        sq: usize,
        sk: usize,
    ) -> Result<(B::Act, B::Act)> {
        let d = self.d;
        let d_o = self.linear_backward(&ca.proj, dout, &s.o, batch * sq, d, d)?;
        let shape = self.shape(batch, sq, sk, false);
        let mut g = self.b.attention_backward(&shape, AttnInputs::QKv(&s.q, &s.kv), &s.o, &s.saved, &d_o)?;
        let dkv = g.remove(1);
        let dq = g.remove(0);
        let dq_in = self.linear_backward(&ca.q, &dq, q_in, batch * sq, d, d)?;
        let dcontext = self.linear_backward(&ca.kv, &dkv, context, batch * sk, d, 2 * d)?;
        Ok((dq_in, dcontext))
    }

    fn shape(&self, batch: usize, sq: usize, sk: usize, causal: bool) -> Dims {
        Dims { batch, heads: self.heads, sq, sk, head_dim: self.d / self.heads, causal }
    }
}

struct EncoderLayerSaved<B: StepBackend> {
    attn: AttnBlockSaved<B>,
    cross: Option<(LnSaved<B>, CrossSaved<B>)>,
    mlp: MlpSaved<B>,
}

struct CcaSaved<B: StepBackend> {
    ln: LnSaved<B>,
    q_in: B::Act,
    cross: CrossSaved<B>,
}

struct LayerSaved<B: StepBackend> {
    attn: AttnBlockSaved<B>,
    cca: Option<CcaSaved<B>>,
    mlp: MlpSaved<B>,
}

/// Sizes of one batch.
#[derive(Clone, Copy)]
struct BatchDims {
    b: usize,
    n: usize,
    m: usize,
    l: usize,
    k: usize,
    r: usize,
    ffn: usize,
}

impl<B: StepBackend> Step<'_, B> {
    /// The retrieval encoder over the embedded neighbours `x` ([b·l·k·r, d]) with the first CCA layer's
    /// normed chunk states `chunks` ([b·l·m, d]). Returns [b·l, k·r, d].
    fn encoder_forward(
        &self,
        layers: &[EncoderLayer],
        x: B::Act,
        chunks: &B::Act,
        z: BatchDims,
    ) -> Result<(B::Act, Vec<EncoderLayerSaved<B>>)> {
        let (nk, chunk_count) = (z.b * z.l * z.k, z.b * z.l);
        let mut x = x;
        let mut saved = Vec::new();
        for layer in layers {
            let (h, attn) = self.self_attention(&layer.input_ln, &layer.self_attn, x, nk, z.r)?;
            let (h, cross) = match &layer.cross {
                Some((lnp, ca)) => {
                    // Queries: all k·r neighbour tokens of a chunk; keys / values: its m decoder states.
                    // The residual is the normed input (Megatron's quirk).
                    let ln = self.ln(lnp, h)?;
                    let (out, cs) = self.cross(ca, &ln.y, chunks, chunk_count, z.k * z.r, z.m)?;
                    (self.b.add(&ln.y, &out)?, Some((ln, cs)))
                }
                None => (h, None),
            };
            let (out, mlp) = self.mlp(&layer.pre_mlp_ln, &layer.mlp, h, nk * z.r, z.ffn)?;
            saved.push(EncoderLayerSaved { attn, cross, mlp });
            x = out;
        }
        Ok((x, saved))
    }

    /// Returns (d embedded neighbours, d chunks).
    fn encoder_backward(
        &mut self,
        layers: &[EncoderLayer],
        saved: &[EncoderLayerSaved<B>],
        chunks: &B::Act,
        dout: B::Act,
        z: BatchDims,
    ) -> Result<(B::Act, Option<B::Act>)> {
        let (nk, chunk_count) = (z.b * z.l * z.k, z.b * z.l);
        let mut dx = dout;
        let mut dchunks: Option<B::Act> = None;
        for (layer, s) in layers.iter().zip(saved).rev() {
            let dh = self.mlp_backward(&layer.pre_mlp_ln, &layer.mlp, &s.mlp, dx, nk * z.r, z.ffn)?;
            let dh = match (&layer.cross, &s.cross) {
                (Some((lnp, ca)), Some((ln, cs))) => {
                    // h2 = y + CA(y), y = LN_ca(h1): dy = dh2 + (through the cross-attention's queries).
                    let (dq_in, dctx) = self.cross_backward(ca, cs, &ln.y, chunks, &dh, chunk_count, z.k * z.r, z.m)?;
                    let mut dy = dq_in;
                    self.b.add_into(&mut dy, &dh)?;
                    match &mut dchunks {
                        Some(acc) => self.b.add_into(acc, &dctx)?,
                        None => dchunks = Some(dctx),
                    }
                    self.ln_backward(lnp, ln, &dy)?
                }
                _ => dh,
            };
            dx = self.self_attention_backward(&layer.input_ln, &layer.self_attn, &s.attn, dh, nk, z.r)?;
        }
        Ok((dx, dchunks))
    }

    /// x -> x + CCA(LN_ca(x)); runs the encoder in the layer that owns it.
    fn cca_forward(
        &self,
        cca: &Cca,
        x: B::Act,
        retrieval: &mut Retrieval<B>,
        z: BatchDims,
    ) -> Result<(B::Act, CcaSaved<B>)> {
        let d = self.d;
        let ln = self.ln(&cca.ln, x)?;
        if let Some(encoder) = &cca.encoder {
            let embedded = retrieval.embedded.take().ok_or_else(|| crate::Error::msg("the encoder ran twice"))?;
            let (encoded, saved) = self.encoder_forward(&encoder.layers, embedded, &ln.y, z)?;
            retrieval.encoded = Some(encoded);
            retrieval.encoder_saved = saved;
        }
        let encoded =
            retrieval.encoded.as_ref().ok_or_else(|| crate::Error::msg("a CCA layer before the encoder's"))?;
        let pad = (z.n - 1) % z.m;
        let q_in = self.b.shift_rows(&ln.y, z.b, z.n, z.l * z.m, d, pad as isize)?;
        let (out, cross) = self.cross(&cca.attn, &q_in, encoded, z.b * z.l, z.m, z.k * z.r)?;
        let back = self.b.shift_rows(&out, z.b, z.l * z.m, z.n, d, -(pad as isize))?;
        let y = self.b.add(&ln.x, &back)?;
        Ok((y, CcaSaved { ln, q_in, cross }))
    }

    fn cca_backward(
        &mut self,
        cca: &Cca,
        s: &CcaSaved<B>,
        dout: B::Act,
        retrieval: &mut Retrieval<B>,
        z: BatchDims,
    ) -> Result<B::Act> {
        let d = self.d;
        let pad = (z.n - 1) % z.m;
        let dshifted = self.b.shift_rows(&dout, z.b, z.n, z.l * z.m, d, pad as isize)?;
        let encoded = retrieval.encoded.as_ref().expect("encoded in the forward");
        let (dq_in, dencoded) =
            self.cross_backward(&cca.attn, &s.cross, &s.q_in, encoded, &dshifted, z.b * z.l, z.m, z.k * z.r)?;
        match &mut retrieval.dencoded {
            Some(acc) => self.b.add_into(acc, &dencoded)?,
            None => retrieval.dencoded = Some(dencoded),
        }
        let mut dy = self.b.shift_rows(&dq_in, z.b, z.l * z.m, z.n, d, -(pad as isize))?;
        if let Some(encoder) = &cca.encoder {
            // Every later CCA layer has added its share of d(encoded) by now (the backward runs in reverse).
            let dencoded = retrieval.dencoded.take().expect("dencoded");
            let saved = std::mem::take(&mut retrieval.encoder_saved);
            let (dembedded, dchunks) = self.encoder_backward(&encoder.layers, &saved, &s.ln.y, dencoded, z)?;
            if let Some(dc) = dchunks {
                self.b.add_into(&mut dy, &dc)?;
            }
            retrieval.dembedded = Some(dembedded);
        }
        let mut dx = self.ln_backward(&cca.ln, &s.ln, &dy)?;
        self.b.add_into(&mut dx, &dout)?;
        Ok(dx)
    }

    fn layer_forward(
        &self,
        layer: &DecoderLayer,
        x: B::Act,
        retrieval: &mut Retrieval<B>,
        z: BatchDims,
    ) -> Result<(B::Act, LayerSaved<B>)> {
        let (x, attn) = self.self_attention(&layer.input_ln, &layer.self_attn, x, z.b, z.n)?;
        let (x, cca) = match &layer.cca {
            Some(cca) => {
                let (x, s) = self.cca_forward(cca, x, retrieval, z)?;
                (x, Some(s))
            }
            None => (x, None),
        };
        let (x, mlp) = self.mlp(&layer.pre_mlp_ln, &layer.mlp, x, z.b * z.n, z.ffn)?;
        Ok((x, LayerSaved { attn, cca, mlp }))
    }

    fn layer_backward(
        &mut self,
        layer: &DecoderLayer,
        s: &LayerSaved<B>,
        dout: B::Act,
        retrieval: &mut Retrieval<B>,
        z: BatchDims,
    ) -> Result<B::Act> {
        let mut dx = self.mlp_backward(&layer.pre_mlp_ln, &layer.mlp, &s.mlp, dout, z.b * z.n, z.ffn)?;
        if let (Some(cca), Some(cs)) = (&layer.cca, &s.cca) {
            dx = self.cca_backward(cca, cs, dx, retrieval, z)?;
        }
        self.self_attention_backward(&layer.input_ln, &layer.self_attn, &s.attn, dx, z.b, z.n)
    }
}

/// What the CCA layers share in one step.
struct Retrieval<B: StepBackend> {
    embedded: Option<B::Act>,
    encoded: Option<B::Act>,
    encoder_saved: Vec<EncoderLayerSaved<B>>,
    dencoded: Option<B::Act>,
    dembedded: Option<B::Act>,
}

/// The configurations this step can run: no dropout and no CCA gate (refused, never ignored).
pub fn check_supported(c: &super::RetroConfig) -> Result<()> {
    ensure!(c.dropout == 0.0, "the explicit training step runs without dropout (config has {})", c.dropout);
    ensure!(
        c.retro_attention_gate == 1.0,
        "the explicit training step has no CCA gate (config has {})",
        c.retro_attention_gate
    );
    Ok(())
}

/// Forward and backward of one batch: returns the mean cross-entropy and adds every parameter's
/// gradient into `params.grads`. `tokens` / `labels` are `[batch, n]`, `neighbors` `[batch, l, k, r]`
/// (RETRO only).
pub fn loss_and_grads<B: StepBackend>(
    backend: &B,
    model: &RetroModel,
    params: &mut DeviceParams<B>,
    tokens: &[i32],
    labels: &[i32],
    neighbors: Option<&[i32]>,
    batch: usize,
) -> Result<f64> {
    let c = &model.config;
    check_supported(c)?;
    ensure!(
        batch > 0 && tokens.len() % batch == 0 && labels.len() == tokens.len(),
        "step: {} tokens, {} labels for a batch of {batch}",
        tokens.len(),
        labels.len()
    );
    let (d, n) = (c.hidden_size, tokens.len() / batch);
    let (m, k, r) = (c.chunk_length, c.num_neighbors, c.retrieved_length());
    ensure!(n <= c.seq_length, "step: sequence of {n} tokens is longer than seq_length {}", c.seq_length);
    let retro = model.is_retro();
    if retro {
        ensure!(n % m == 0, "step: sequence of {n} tokens is not a multiple of chunk_length {m}");
    }
    let z = BatchDims { b: batch, n, m, l: if retro { n / m } else { 0 }, k, r, ffn: c.ffn_hidden_size() };
    let mut step = Step { b: backend, p: params, d, heads: c.num_heads, eps: c.layernorm_eps };
    let (word, position) = (model.word_embeddings, model.position_embeddings);
    let vocab = c.vocab_size;

    let ids = backend.tokens(tokens, vocab)?;
    let x = backend.embedding(&ids, step.p.copy(word), step.p.copy(position), d, n)?;
    let mut retrieval =
        Retrieval { embedded: None, encoded: None, encoder_saved: Vec::new(), dencoded: None, dembedded: None };
    let neighbor_ids = if retro {
        let nb = neighbors.ok_or_else(|| crate::Error::msg("step: RETRO needs neighbour tokens"))?;
        ensure!(
            nb.len() == batch * z.l * k * r,
            "step: {} neighbour tokens, expected [batch {batch}, chunks {}, k {k}, r {r}]",
            nb.len(),
            z.l
        );
        ensure!(!nb.contains(&-1), "step: missing neighbours (-1) are not supported by the explicit training step");
        let ids = backend.tokens(nb, vocab)?;
        retrieval.embedded = Some(backend.embedding(&ids, step.p.copy(word), step.p.copy(position), d, r)?);
        Some(ids)
    } else {
        None
    };

    let mut x = x;
    let mut saved = Vec::new();
    for layer in &model.layers {
        let (out, s) = step.layer_forward(layer, x, &mut retrieval, z)?;
        saved.push(s);
        x = out;
    }
    let final_ln = step.ln(&model.final_ln, x)?;
    let rows = batch * n;
    let logits = backend.linear(&final_ln.y, step.p.copy(word), None, rows, d, vocab)?;
    let targets = backend.targets(labels, vocab)?;
    let (loss_sum, dlogits) = backend.cross_entropy(logits, &targets, vocab, 1.0 / rows as f32)?;

    // Backward.
    let w = &step.p.copies[word];
    let dh = backend.linear_backward(&dlogits, &final_ln.y, w, &mut step.p.grads[word], None, rows, d, vocab)?;
    let mut dx = step.ln_backward(&model.final_ln, &final_ln, &dh)?;
    for (layer, s) in model.layers.iter().zip(&saved).rev() {
        dx = step.layer_backward(layer, s, dx, &mut retrieval, z)?;
    }
    let (dw, dp) = two(&mut step.p.grads, word, position);
    backend.embedding_backward(&ids, &dx, dw, dp, d, n)?;
    if let (Some(ids), Some(de)) = (&neighbor_ids, &retrieval.dembedded) {
        let (dw, dp) = two(&mut step.p.grads, word, position);
        backend.embedding_backward(ids, de, dw, dp, d, r)?;
    }
    Ok(loss_sum / rows as f64)
}
