//! `RetroModel`: Megatron's RETRO (or its GPT baseline) assembled from the decoder and encoder layers,
//! with the tied output embedding and the mean token cross-entropy.

use super::decoder::{DecoderLayer, Pass, Retrieval};
use super::params::{Init, ParamBuilder, ParamSpec, Params, Split};
use super::RetroConfig;
use crate::autograd::{Tape, Var};
use crate::dist::TensorParallel;
use crate::nn::{InitStd, LayerNorm};
use crate::ops::{self, AttnMask};
use crate::tensor::{DType, Tensor};
use crate::{bail, ensure, with_float, Result};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct RetroModel {
    pub config: RetroConfig,
    pub params: Params,
    pub(crate) word_embeddings: usize,
    /// `None` with `--no-position-embedding`.
    pub(crate) position_embeddings: Option<usize>,
    /// The output layer's weight: the word embedding (tied, Megatron's default) or `output_layer.weight`.
    pub(crate) output_weight: usize,
    pub(crate) layers: Vec<DecoderLayer>,
    pub(crate) final_ln: LayerNorm,
    /// The ranks this model's split parameters are divided among (`shard`); one rank: the whole model.
    pub tensor_parallel: TensorParallel,
}

/// One batch: tokens [B, n], labels [B, n] (next tokens), neighbour tokens [B, l, k, r] (i64 / i32).
#[derive(Debug, Clone)]
pub struct Batch {
    pub tokens: Tensor,
    pub labels: Tensor,
    /// `None` only for the GPT baseline.
    pub neighbors: Option<Tensor>,
}

/// Loss and per-parameter gradients (spec order) of one batch.
pub struct LossAndGrads {
    pub loss: f64,
    pub grads: Vec<Tensor>,
}

impl RetroModel {
    /// Parameter names, shapes and initialisations of `config` (Megatron names and order).
    pub fn specs(config: &RetroConfig) -> Result<Vec<ParamSpec>> {
        Ok(Self::build(config, &TensorParallel::single())?.0)
    }

    /// The layers and parameter specs of `config`, split parameters with one rank's shape of `tp`.
    fn build(config: &RetroConfig, tp: &TensorParallel) -> Result<(Vec<ParamSpec>, Self)> {
        config.validate()?;
        config.check_tensor_parallel(tp.size())?;
        let c = config;
        let mut pb = ParamBuilder::new(tp.clone());
        pb.no_linear_bias = !c.add_bias_linear;
        pb.layernorm_1p = c.apply_layernorm_1p;
        let init = InitStd::megatron(c.init_std, c.num_layers);
        // Vocab-parallel: each tensor-parallel rank holds a contiguous range of the vocabulary.
        let word = pb.add_split(
            "embedding.word_embeddings.weight".into(),
            &[c.vocab_size, c.hidden_size],
            Init::Normal(c.init_std),
            Split::along(0),
        );
        let pos = c.add_position_embedding.then(|| {
            pb.add(
                "embedding.position_embeddings.weight".into(),
                &[c.seq_length, c.hidden_size],
                Init::Normal(c.init_std),
            )
        });
        let cca_layers = c.retro_layers();
        let layers = (0..c.num_layers)
            .map(|i| {
                let number = i + 1;
                let cca = cca_layers.contains(&number);
                DecoderLayer::new(&mut pb, c, i, cca, cca_layers.first() == Some(&number), init)
            })
            .collect();
        let final_ln = LayerNorm::new(&mut pb, "decoder.final_layernorm", c.hidden_size, c.layernorm_eps);
        let output_weight = if c.untie_embeddings_and_output_weights {
            let shape = [c.vocab_size, c.hidden_size];
            pb.add_split("output_layer.weight".into(), &shape, Init::Normal(c.init_std), Split::along(0))
        } else {
            word
        };
        let specs = pb.finish();
        let model = Self {
            config: c.clone(),
            params: Params { specs: specs.clone(), tensors: Vec::new() },
            word_embeddings: word,
            position_embeddings: pos,
            output_weight,
            layers,
            final_ln,
            tensor_parallel: tp.clone(),
        };
        Ok((specs, model))
    }

    /// A model with Megatron's initialisation drawn from `seed`.
    pub fn init(config: &RetroConfig, seed: u64, dtype: DType) -> Result<Self> {
        let (specs, model) = Self::build(config, &TensorParallel::single())?;
        Ok(Self { params: Params::init(specs, seed, dtype)?, ..model })
    }

    /// The model's structure (layers, parameter specs) with no parameter values on the host: for a
    /// model whose weights are drawn and kept on the GPU (`train::Engine::with_random_weights`).
    pub fn structure(config: &RetroConfig) -> Result<Self> {
        Ok(Self::build(config, &TensorParallel::single())?.1)
    }

    /// A model around given parameters, which must match the config's specs exactly.
    pub fn from_params(config: &RetroConfig, params: Params) -> Result<Self> {
        let (specs, model) = Self::build(config, &TensorParallel::single())?;
        ensure!(
            params.specs.iter().map(|s| (&s.name, &s.shape)).eq(specs.iter().map(|s| (&s.name, &s.shape))),
            "parameters do not match the model config (names or shapes differ)"
        );
        Ok(Self { params, ..model })
    }

    /// This rank's part of this (whole, host) model for the tensor-parallel group `tp`: the split
    /// parameters cut as Megatron cuts them, the rest copied. Every rank starts from the same whole
    /// model, so a split run starts from the weights an unsplit one does.
    pub fn shard(&self, tp: &TensorParallel) -> Result<Self> {
        ensure!(!self.tensor_parallel.is_split(), "model: shard of a model that is already split");
        let (specs, model) = Self::build(&self.config, tp)?;
        let tensors = model.shard_tensors(&self.params.tensors)?;
        Ok(Self { params: Params { specs, tensors }, ..model })
    }

    /// This rank's parts of tensors shaped like the whole model's parameters (a checkpoint's AdamW
    /// moments); `self` is a split model.
    pub fn shard_tensors(&self, whole: &[Tensor]) -> Result<Vec<Tensor>> {
        let tp = &self.tensor_parallel;
        ensure!(
            whole.len() == self.params.specs.len(),
            "model: {} tensors to shard for {} parameters",
            whole.len(),
            self.params.specs.len()
        );
        (self.params.specs.iter().zip(whole))
            .map(|(spec, t)| match spec.split {
                Some(split) if tp.is_split() => with_float!(t.dtype(), "sharding a parameter", T => {
                    Tensor::from_vec(split.shard(t.data::<T>()?, t.shape(), tp.size(), tp.rank()), &spec.shape)
                }),
                _ => Ok(t.clone()),
            })
            .collect()
    }

    /// The whole tensors from every tensor-parallel rank's parts (`local`: shaped like this model's
    /// parameters): the inverse of `shard_tensors`. A collective of the group: every rank calls it.
    pub fn gather_tensors(&self, local: &[Tensor]) -> Result<Vec<Tensor>> {
        let tp = &self.tensor_parallel;
        let whole = Self::specs(&self.config)?;
        (self.params.specs.iter().zip(&whole).zip(local))
            .map(|((spec, full), t)| match spec.split {
                Some(split) if tp.is_split() => with_float!(t.dtype(), "gathering a parameter", T => {
                    let parts = tp.all_gather(t.data::<T>()?);
                    Tensor::from_vec(split.assemble(&parts, &spec.shape, tp.size()), &full.shape)
                }),
                _ => Ok(t.clone()),
            })
            .collect()
    }

    /// The whole model from the tensor-parallel ranks' parts (what a checkpoint holds; a collective of
    /// the group). An unsplit model is returned as it is.
    pub fn unsharded(&self) -> Result<Self> {
        if !self.tensor_parallel.is_split() {
            return Ok(self.clone());
        }
        let tensors = self.gather_tensors(&self.params.tensors)?;
        Self::from_params(&self.config, Params { specs: Self::specs(&self.config)?, tensors })
    }

    pub fn is_retro(&self) -> bool {
        self.layers.iter().any(DecoderLayer::has_cca)
    }

    /// Final-LayerNorm hidden states [B, n, d].
    pub fn hidden(&self, tape: &mut Tape, p: &[Var], tokens: &Tensor, neighbors: Option<&Tensor>) -> Result<Var> {
        let c = &self.config;
        ensure!(
            p.len() == self.params.specs.len(),
            "model: {} parameter leaves given, the model has {}",
            p.len(),
            self.params.specs.len()
        );
        ensure!(tokens.rank() == 2, "model: tokens must be [batch, seq], got {:?}", tokens.shape());
        let (b, n) = (tokens.shape()[0], tokens.shape()[1]);
        ensure!(n <= c.seq_length, "model: sequence of {n} tokens is longer than seq_length {}", c.seq_length);
        let x = self.embed(tape, p, tokens)?;
        let mut retrieval = Retrieval { embedded: None, encoded: None, mask: AttnMask::None };
        if self.is_retro() {
            let Some(neighbors) = neighbors else {
                bail!("model: RETRO needs neighbour tokens (the GPT baseline does not)")
            };
            ensure!(
                n % c.chunk_length == 0,
                "model: sequence of {n} tokens is not a multiple of chunk_length {}",
                c.chunk_length
            );
            let l = n / c.chunk_length;
            let (k, r) = (c.num_neighbors, c.retrieved_length());
            ensure!(
                neighbors.shape() == [b, l, k, r],
                "model: neighbour tokens are {:?}, expected [batch {b}, chunks {l}, k {k}, r {r}]",
                neighbors.shape()
            );
            let (ids, mask) = self.neighbor_ids(neighbors)?;
            retrieval.embedded = Some(self.embed(tape, p, &ids)?);
            retrieval.mask = mask;
        }
        let mut x = x;
        for layer in &self.layers {
            x = layer.forward(tape, p, &x, Pass::Full(&mut retrieval))?;
        }
        self.final_ln.forward(tape, p, &x)
    }

    /// Logits [B, n, vocab] through the tied output embedding.
    pub fn logits(&self, tape: &mut Tape, p: &[Var], tokens: &Tensor, neighbors: Option<&Tensor>) -> Result<Var> {
        ensure!(
            !self.tensor_parallel.is_split(),
            "model: the logits of a tensor-parallel model are split over its ranks; generation and golden \
             checks run the whole model (--tensor-model-parallel-size 1)"
        );
        let h = self.hidden(tape, p, tokens, neighbors)?;
        ops::linear(tape, &h, &p[self.output_weight], None)
    }

    /// Mean next-token cross-entropy of the batch.
    pub fn loss(&self, tape: &mut Tape, p: &[Var], batch: &Batch) -> Result<Var> {
        ensure!(
            batch.labels.shape() == batch.tokens.shape(),
            "model: labels {:?} do not match tokens {:?}",
            batch.labels.shape(),
            batch.tokens.shape()
        );
        let tp = &self.tensor_parallel;
        if !tp.is_split() {
            let logits = self.logits(tape, p, &batch.tokens, batch.neighbors.as_ref())?;
            return ops::cross_entropy(tape, &logits, &batch.labels);
        }
        // Vocab-parallel output layer: each rank's logits of its part of the vocabulary.
        let h = self.hidden(tape, p, &batch.tokens, batch.neighbors.as_ref())?;
        let h = ops::copy_to_tensor_parallel(tape, &h, tp)?;
        let logits = ops::linear(tape, &h, &p[self.output_weight], None)?;
        let first = tp.rank() * self.params.specs[self.output_weight].shape[0];
        ops::vocab_parallel_cross_entropy(tape, &logits, &batch.labels, first, tp)
    }

    /// Forward and backward of one batch, without dropout.
    pub fn loss_and_grads(&self, batch: &Batch) -> Result<LossAndGrads> {
        self.loss_and_grads_with(batch, Tape::new())
    }

    /// Forward and backward of one batch in training mode: the config's dropout, masks drawn from `seed`.
    pub fn train_step(&self, batch: &Batch, seed: u64) -> Result<LossAndGrads> {
        self.loss_and_grads_with(batch, Tape::training(self.config.dropout, seed))
    }

    fn loss_and_grads_with(&self, batch: &Batch, tape: Tape) -> Result<LossAndGrads> {
        self.loss_and_grads_on(&self.params.tensors, batch, tape)
    }

    /// Loss and gradients with `leaves` as the parameters (this model's own, or their copies on a GPU),
    /// on whichever device they are; the loss is read back once, after the backward is queued.
    pub fn loss_and_grads_on(&self, leaves: &[Tensor], batch: &Batch, tape: Tape) -> Result<LossAndGrads> {
        let (loss, grads) = self.forward_backward(leaves, batch, tape)?;
        Ok(LossAndGrads { loss: loss.to(crate::tensor::Device::Cpu)?.to_f64_vec()[0], grads })
    }

    /// The loss (a scalar tensor on the leaves' device, not read back: a GPU step queues its work without
    /// waiting) and the gradients of `leaves`. A parameter the loss does not reach gets a zero gradient
    /// (f32 on a GPU, where gradients are f32 whatever the leaf's type).
    pub fn forward_backward(&self, leaves: &[Tensor], batch: &Batch, tape: Tape) -> Result<(Tensor, Vec<Tensor>)> {
        let mut grads: Vec<Option<Tensor>> = vec![None; leaves.len()];
        let loss = self.forward_backward_each(leaves, batch, tape, |event| {
            if let Some((i, g)) = event {
                grads[i] = Some(g);
            }
            Ok(())
        })?;
        let grads = grads
            .into_iter()
            .zip(leaves)
            .map(|(g, t)| match g {
                Some(g) => Ok(g),
                None if t.device() == crate::tensor::Device::Cpu => Ok(Tensor::zeros(t.shape(), t.dtype())),
                None => Tensor::zeros(t.shape(), DType::F32).to(t.device()),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((loss, grads))
    }

    /// `forward_backward` handing over each parameter's gradient as soon as the backward has completed it
    /// (`ready(Some((parameter index, gradient)))`; `ready(None)` after each op: `Tape::backward_each`).
    /// Parameters the loss does not reach are never handed over.
    pub fn forward_backward_each(
        &self,
        leaves: &[Tensor],
        batch: &Batch,
        mut tape: Tape,
        mut ready: impl FnMut(Option<(usize, Tensor)>) -> Result<()>,
    ) -> Result<Tensor> {
        let p: Vec<Var> = leaves.iter().map(|t| tape.leaf(t.clone())).collect();
        let index: std::collections::HashMap<usize, usize> =
            p.iter().enumerate().filter_map(|(i, v)| v.id().map(|id| (id, i))).collect();
        let loss = self.loss(&mut tape, &p, batch)?;
        let value = loss.value().clone();
        tape.backward_each(&loss, |event| match event {
            Some((id, g)) => match index.get(&id) {
                Some(&i) => ready(Some((i, g))),
                None => Ok(()),
            },
            None => ready(None),
        })?;
        Ok(value)
    }

    /// Loss only, recording nothing.
    pub fn eval_loss(&self, batch: &Batch) -> Result<f64> {
        self.eval_loss_on(&self.params.tensors, batch)
    }

    /// Loss only, with `leaves` as the parameters (`leaves_on`), on their device.
    pub fn eval_loss_on(&self, leaves: &[Tensor], batch: &Batch) -> Result<f64> {
        let mut tape = Tape::inference();
        let p: Vec<Var> = leaves.iter().map(|t| tape.leaf(t.clone())).collect();
        let loss = self.loss(&mut tape, &p, batch)?;
        Ok(loss.value().to(crate::tensor::Device::Cpu)?.to_f64_vec()[0])
    }

    /// The parameters as the tape reads them on `device`: these tensors on the CPU; on a GPU bf16 copies
    /// of what GEMMs and embeddings read and f32 copies of LayerNorm's (`ParamSpec::reads_master`), the
    /// training precision.
    pub fn leaves_on(&self, device: crate::tensor::Device) -> Result<Vec<Tensor>> {
        if device == crate::tensor::Device::Cpu {
            return Ok(self.params.tensors.clone());
        }
        self.config.check_device(device)?;
        self.params
            .specs
            .iter()
            .zip(&self.params.tensors)
            .map(|(spec, t)| t.to_dtype(if spec.reads_master { DType::F32 } else { DType::BF16 })?.to(device))
            .collect()
    }

    /// word + learned position embeddings of ids [.., s] (positions 0..s-1).
    pub(crate) fn embed(&self, tape: &mut Tape, p: &[Var], ids: &Tensor) -> Result<Var> {
        self.embed_at(tape, p, ids, 0)
    }

    /// word + position embeddings of ids [.., s] at positions first..first+s (a decoding step: one token
    /// at its position).
    pub(crate) fn embed_at(&self, tape: &mut Tape, p: &[Var], ids: &Tensor, first: usize) -> Result<Var> {
        let word = &p[self.word_embeddings];
        let tp = &self.tensor_parallel;
        let x = match self.position_embeddings.map(|i| &p[i]) {
            Some(position) if !tp.is_split() => ops::word_position_embedding(tape, ids, word, position, first)?,
            position => {
                // Vocab-parallel: each rank's rows of its words, summed over the group, then the positions.
                let words = if tp.is_split() {
                    let rows = word.shape()[0];
                    let words = ops::vocab_parallel_embedding(tape, ids, word, tp.rank() * rows, rows * tp.size())?;
                    ops::reduce_from_tensor_parallel(tape, &words, tp)?
                } else {
                    ops::embedding(tape, ids, word)?
                };
                match position {
                    Some(position) => {
                        let period = ids.last_dim().max(1);
                        let at: Vec<i64> = (0..ids.numel()).map(|i| (first + i % period) as i64).collect();
                        let positions = ops::embedding(tape, &Tensor::from_vec(at, ids.shape())?, position)?;
                        ops::add(tape, &words, &positions)?
                    }
                    None => words,
                }
            }
        };
        ops::dropout(tape, &x)
    }

    /// Neighbour ids as [B·l·k, r] for the embedding, and the decoder CCA's key mask. A neighbour whose
    /// r tokens are all -1 is missing: masked when the config allows it, an error otherwise.
    fn neighbor_ids(&self, neighbors: &Tensor) -> Result<(Tensor, AttnMask)> {
        let c = &self.config;
        let (k, r) = (c.num_neighbors, c.retrieved_length());
        let mut ids = neighbors.indices()?;
        let mut visible = vec![true; ids.len()];
        let mut any_missing = false;
        for (nb, chunk) in ids.chunks_mut(r).enumerate() {
            let missing = chunk.iter().filter(|&&t| t == -1).count();
            if missing == 0 {
                continue;
            }
            let (b, l, j) = (nb / (k * neighbors.shape()[1]), (nb / k) % neighbors.shape()[1], nb % k);
            ensure!(
                missing == r,
                "model: neighbour {j} of chunk {l} of sample {b} has {missing} of {r} tokens = -1; only a whole neighbour may be missing"
            );
            ensure!(
                c.mask_missing_neighbors,
                "model: neighbour {j} of chunk {l} of sample {b} is missing (all -1); set mask_missing_neighbors to mask it"
            );
            chunk.iter_mut().for_each(|t| *t = 0);
            visible[nb * r..(nb + 1) * r].iter_mut().for_each(|v| *v = false);
            any_missing = true;
        }
        let rows = ids.len() / r;
        let ids = Tensor::from_vec(ids, &[rows, r])?;
        let mask = if any_missing { AttnMask::Keys(Arc::from(visible)) } else { AttnMask::None };
        Ok((ids, mask))
    }
}
