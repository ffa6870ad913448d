//! `retro generate`: sampling (temperature, top-k, top-p) on top of the KV-cached decoder, with live
//! retrieval from the project for RETRO checkpoints.

use crate::data::tokenizer::{self, VOCAB_SIZE};
use crate::model::kv_decode::KvDecoder;
use crate::model::RetroModel;
use crate::retrieval::live::LiveRetriever;
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::{ensure, Result};

#[derive(Debug, Clone, Copy)]
pub struct Sampling {
    /// 0: greedy.
    pub temperature: f64,
    /// Keep the k most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1: all).
    pub top_p: f64,
}

/// The next token from `logits` (only real GPT-2 ids: the padded vocabulary rows are never sampled).
pub fn sample(logits: &[f64], s: &Sampling, rng: &mut Rng) -> u32 {
    let real = &logits[..logits.len().min(VOCAB_SIZE)];
    if s.temperature <= 0.0 {
        return real.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |x| x.0) as u32;
    }
    let mut order: Vec<usize> = (0..real.len()).collect();
    order.sort_by(|&a, &b| real[b].total_cmp(&real[a]));
    if s.top_k > 0 {
        order.truncate(s.top_k);
    }
    let max = real[order[0]];
    let mut probs: Vec<f64> = order.iter().map(|&i| ((real[i] - max) / s.temperature).exp()).collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if s.top_p < 1.0 {
        let mut acc = 0.0;
        let keep = probs.iter().position(|&p| {
            acc += p;
            acc >= s.top_p
        });
        let keep = keep.map_or(probs.len(), |i| i + 1);
        order.truncate(keep);
        probs.truncate(keep);
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
    }
    let mut u = rng.uniform();
    for (&i, &p) in order.iter().zip(&probs) {
        if u < p {
            return i as u32;
        }
        u -= p;
    }
    order[order.len() - 1] as u32
}

/// Neighbours retrieved for one chunk while generating.
pub struct Retrieved {
    pub chunk: usize,
    pub chunk_text: String,
    pub neighbors: Vec<(i64, String)>,
}

pub struct Output {
    pub prompt_tokens: usize,
    pub tokens: Vec<u32>,
    pub text: String,
    pub retrieved: Vec<Retrieved>,
}

pub fn generate(
    model: &RetroModel,
    device: crate::tensor::Device,
    retriever: Option<&LiveRetriever>,
    prompt: &str,
    max_tokens: usize,
    s: &Sampling,
    seed: u64,
) -> Result<Output> {
    let prompt_ids = tokenizer::encode(prompt);
    ensure!(!prompt_ids.is_empty(), "the prompt is empty");
    ensure!(
        prompt_ids.len() < model.config.seq_length,
        "the prompt has {} tokens; the model has {} positions",
        prompt_ids.len(),
        model.config.seq_length
    );
    ensure!(retriever.is_some() || !model.is_retro(), "a RETRO model needs the project's index for live retrieval");
    let leaves = model.leaves_on(device)?;
    let mut dec = KvDecoder::new(model, &leaves);
    let mut retrieved = Vec::new();
    let mut retrieve = |chunk: usize, tokens: &[u32]| -> Result<Tensor> {
        let r = retriever.expect("checked above");
        let (ids, t) = r.retrieve(tokens)?;
        // The text of each neighbour (chunk + continuation) from the tokens the model receives.
        let r_len = t.shape()[1];
        let rows = t.data::<i64>()?;
        let neighbors = ids
            .iter()
            .enumerate()
            .map(|(i, &id)| {
                let toks: Vec<u32> = rows[i * r_len..(i + 1) * r_len].iter().map(|&x| x as u32).collect();
                (id, crate::preprocess::chunk_text(&toks))
            })
            .collect();
        retrieved.push(Retrieved { chunk, chunk_text: tokenizer::decode(tokens), neighbors });
        Ok(t)
    };
    let mut logits = Vec::new();
    for &t in &prompt_ids {
        logits = dec.push(t, &mut retrieve)?;
    }
    let mut rng = Rng::new(seed);
    let limit = (model.config.seq_length - prompt_ids.len()).min(max_tokens);
    let mut tokens = Vec::with_capacity(limit);
    for i in 0..limit {
        let next = sample(&logits, s, &mut rng);
        tokens.push(next);
        if i + 1 < limit {
            logits = dec.push(next, &mut retrieve)?;
        }
    }
    Ok(Output { prompt_tokens: prompt_ids.len(), text: tokenizer::decode(&tokens), tokens, retrieved })
}
