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

pub fn run(corpus_path: &Path, embedder: &BertEmbedder, chunks: usize, batch_tokens: usize) -> Result<Value> {
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
    let refs: Vec<&str> = texts[..chunks].iter().map(String::as_str).collect();
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
