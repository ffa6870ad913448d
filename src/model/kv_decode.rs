//! Incremental decoding with a KV cache and live retrieval (Megatron's RETRO generation had neither).
//!
//! Each pushed token runs through the decoder once: self-attention reads the cached keys and values of
//! all earlier positions; the first CCA layer collects its LN_ca states, and when a chunk of m tokens is
//! complete it asks the caller for that chunk's neighbours (embed, search, fetch neighbour +
//! continuation), encodes them against the chunk's states, and caches every CCA layer's K/V projection
//! of the result. Token t then cross-attends to the neighbours of chunk (t + 1)/m − 1, exactly as the
//! full forward's shifted CCA does, so the logits equal those of recomputing the whole prefix.

use super::RetroModel;
use crate::autograd::{Tape, Var};
use crate::ops::{self, AttnMask};
use crate::tensor::Tensor;
use crate::{ensure, Result};

/// Returns the neighbour tokens [k, r] (i64) for a completed chunk's m tokens.
pub type Retrieve<'a> = dyn FnMut(usize, &[u32]) -> Result<Tensor> + 'a;

pub struct KvDecoder<'m> {
    model: &'m RetroModel,
    params: Vec<Var>,
    tokens: Vec<u32>,
    /// Per decoder layer: keys and values of every position so far, each [1, 1, d].
    keys: Vec<Vec<Var>>,
    values: Vec<Vec<Var>>,
    /// LN_ca outputs of the first CCA layer for the current chunk.
    chunk_states: Vec<Var>,
    /// Per CCA layer (by decoder index) and chunk: the K|V projection of the chunk's encoded neighbours.
    cca_kv: Vec<Vec<Var>>,
}

impl<'m> KvDecoder<'m> {
    pub fn new(model: &'m RetroModel) -> Self {
        let n = model.layers.len();
        Self {
            model,
            params: model.params.leaves(&mut Tape::inference()),
            tokens: Vec::new(),
            keys: vec![Vec::new(); n],
            values: vec![Vec::new(); n],
            chunk_states: Vec::new(),
            cca_kv: vec![Vec::new(); n],
        }
    }

    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Feed one token; returns the logits for the next one (vocabulary-sized, f64).
    pub fn push(&mut self, token: u32, retrieve: &mut Retrieve) -> Result<Vec<f64>> {
        let c = &self.model.config;
        let t = self.tokens.len();
        ensure!(t < c.seq_length, "generation: position {t} is past the model's {} positions", c.seq_length);
        self.tokens.push(token);
        let (m, d) = (c.chunk_length, c.hidden_size);
        let tape = &mut Tape::inference();
        let p = &self.params;
        let ids = Tensor::from_vec(vec![token as i64], &[1, 1])?;
        let pos = Tensor::from_vec(vec![t as i64], &[1, 1])?;
        let mut x = self.model.embed_at(tape, p, &ids, &pos)?;
        for (li, layer) in self.model.layers.iter().enumerate() {
            let h = layer.input_ln.forward(tape, p, &x)?;
            let qkv = layer.self_attn.qkv.forward(tape, p, &h)?;
            let q = ops::narrow(tape, &qkv, 2, 0, d)?;
            self.keys[li].push(ops::narrow(tape, &qkv, 2, d, d)?);
            self.values[li].push(ops::narrow(tape, &qkv, 2, 2 * d, d)?);
            let keys: Vec<&Var> = self.keys[li].iter().collect();
            let values: Vec<&Var> = self.values[li].iter().collect();
            let k_all = ops::concat(tape, &keys, 1)?;
            let v_all = ops::concat(tape, &values, 1)?;
            // All cached positions are at or before t: no mask needed.
            let a = ops::attention(tape, &q, &k_all, &v_all, layer.self_attn.heads, &AttnMask::None)?;
            let a = layer.self_attn.proj.forward(tape, p, &a)?;
            x = ops::add(tape, &x, &a)?;
            if let Some(cca) = &layer.cca {
                let y = cca.ln.forward(tape, p, &x)?;
                if let Some(encoder) = &cca.encoder {
                    self.chunk_states.push(y.clone());
                    if (t + 1) % m == 0 {
                        let chunk = t / m;
                        let nb = retrieve(chunk, &self.tokens[chunk * m..(chunk + 1) * m])?;
                        let (k, r) = (c.num_neighbors, c.retrieved_length());
                        ensure!(
                            nb.shape() == [k, r],
                            "retrieval returned neighbours {:?}, expected [{k}, {r}]",
                            nb.shape()
                        );
                        let embedded = self.model.embed(tape, p, &nb)?;
                        let states: Vec<&Var> = self.chunk_states.iter().collect();
                        let states = ops::concat(tape, &states, 1)?;
                        let encoded = encoder.forward(tape, p, &embedded, &states)?;
                        self.chunk_states.clear();
                        for (lj, other) in self.model.layers.iter().enumerate() {
                            if let Some(cc) = &other.cca {
                                let kv = cc.attn.kv.forward(tape, p, &encoded)?;
                                self.cca_kv[lj].push(kv);
                            }
                        }
                    }
                }
                if t + 1 >= m {
                    let chunk = (t + 1) / m - 1;
                    let q = cca.attn.q.forward(tape, p, &y)?;
                    let o =
                        ops::attention_kv(tape, &q, &self.cca_kv[li][chunk], cca.attn.heads, &AttnMask::None, None)?;
                    let mut o = cca.attn.proj.forward(tape, p, &o)?;
                    if cca.gate != 1.0 {
                        o = ops::scale(tape, &o, cca.gate)?;
                    }
                    x = ops::add(tape, &x, &o)?;
                }
            }
            let h = layer.pre_mlp_ln.forward(tape, p, &x)?;
            let h = layer.mlp.forward(tape, p, &h)?;
            x = ops::add(tape, &x, &h)?;
        }
        let h = self.model.final_ln.forward(tape, p, &x)?;
        let logits = ops::linear(tape, &h, &p[self.model.word_embeddings], None)?;
        Ok(logits.value().to_f64_vec())
    }
}
