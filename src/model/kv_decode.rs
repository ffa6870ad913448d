//! Incremental decoding with a KV cache and live retrieval (Megatron's RETRO generation had neither),
//! through the same layer code as training (`DecoderLayer::forward` with `Pass::Step`).
//!
//! Each pushed token runs through the decoder once: self-attention reads the cached keys and values of
//! all earlier positions; when the token completes a chunk of m tokens, the caller's `retrieve` gives that
//! chunk's neighbours (embed, search, fetch neighbour + continuation), the first CCA layer encodes them
//! against the chunk's states and every CCA layer caches its K|V projection of the result. Token t then
//! cross-attends to the neighbours of chunk (t + 1)/m − 1, exactly as the full forward's shifted CCA does,
//! so the logits equal those of recomputing the whole prefix.

use super::decoder::{DecodeStep, LayerCache, Pass};
use super::RetroModel;
use crate::autograd::{Tape, Var};
use crate::ops;
use crate::tensor::Tensor;
use crate::{ensure, Result};

/// Returns the neighbour tokens [k, r] (i64) for a completed chunk's m tokens.
pub type Retrieve<'a> = dyn FnMut(usize, &[u32]) -> Result<Tensor> + 'a;

pub struct KvDecoder<'m> {
    model: &'m RetroModel,
    params: Vec<Var>,
    tokens: Vec<u32>,
    /// Per decoder layer: its caches.
    caches: Vec<LayerCache>,
    /// The first CCA layer's LN_ca states of the current chunk.
    chunk_states: Vec<Var>,
}

impl<'m> KvDecoder<'m> {
    /// A decoder reading `leaves` as the parameters (`RetroModel::leaves_on`: on their device).
    pub fn new(model: &'m RetroModel, leaves: &[Tensor]) -> Self {
        Self {
            model,
            params: leaves.iter().cloned().map(Var::constant).collect(),
            tokens: Vec::new(),
            caches: vec![LayerCache::default(); model.layers.len()],
            chunk_states: Vec::new(),
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
        let m = c.chunk_length;
        let tape = &mut Tape::inference();
        let p = &self.params;
        let mut step = DecodeStep { t, chunk_states: std::mem::take(&mut self.chunk_states), ..Default::default() };
        if self.model.is_retro() && (t + 1) % m == 0 {
            let chunk = t / m;
            let nb = retrieve(chunk, &self.tokens[chunk * m..(chunk + 1) * m])?;
            let (k, r) = (c.num_neighbors, c.retrieved_length());
            ensure!(nb.shape() == [k, r], "retrieval returned neighbours {:?}, expected [{k}, {r}]", nb.shape());
            step.embedded = Some(self.model.embed(tape, p, &nb)?);
        }
        let ids = Tensor::from_vec(vec![token as i64], &[1, 1])?;
        let mut x = self.model.embed_at(tape, p, &ids, t)?;
        for (layer, cache) in self.model.layers.iter().zip(&mut self.caches) {
            x = layer.forward(tape, p, &x, Pass::Step(&mut step, cache))?;
        }
        self.chunk_states = step.chunk_states;
        let h = self.model.final_ln.forward(tape, p, &x)?;
        let logits = ops::linear(tape, &h, &p[self.model.output_weight], None)?;
        Ok(logits.value().to(crate::tensor::Device::Cpu)?.to_f64_vec())
    }
}
