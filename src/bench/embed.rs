//! `retro bench embed`: BERT chunk embedding throughput on real text (64-token GPT-2 chunks of the
//! vendored State of the Union corpus, detokenised as the preprocess `embed` stage does).

use crate::data::corpus::{self, Text};
use crate::data::tokenizer;
use crate::preprocess::chunk_text;
use crate::retrieval::bert::BertEmbedder;
use crate::{ensure, Result};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Instant;

/// The first `chunks` 64-token GPT-2 chunks of the corpus, detokenised as the preprocess `embed` stage does.
pub fn chunk_texts(corpus_path: &Path, chunks: usize) -> Result<Vec<String>> {
    let mut texts = Vec::new();
    corpus::for_each_batch(corpus_path, &corpus::Options::default(), 64, |docs| {
        for d in docs {
            if let Text::One(t) = d.text {
                let ids = tokenizer::encode(&t);
                texts.extend(ids.chunks(64).map(chunk_text));
            }
        }
        Ok(())
    })?;
    ensure!(texts.len() >= chunks, "the corpus has {} chunks, fewer than --chunks {chunks}", texts.len());
    texts.truncate(chunks);
    Ok(texts)
}

/// Embedding throughput over `texts` (timed once, after tokenising them once untimed).
pub fn run(texts: &[String], embedder: &BertEmbedder, batch_tokens: usize) -> Result<Value> {
    let chunks = texts.len();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let wordpieces: usize = refs.iter().map(|t| embedder.tokenize(t).map(|ids| ids.len())).sum::<Result<usize>>()?;
    let t = Instant::now();
    std::hint::black_box(embedder.embed(&refs, batch_tokens)?);
    let secs = t.elapsed().as_secs_f64();
    Ok(json!({
        "bench": "embed", "impl": "retro", "model_dim": embedder.dim(), "chunks": chunks, "wordpiece_tokens": wordpieces,
        "batch_tokens": batch_tokens, "threads": rayon::current_num_threads(), "seconds": secs,
        "chunks_per_s": chunks as f64 / secs, "tokens_per_s": wordpieces as f64 / secs,
    }))
}
