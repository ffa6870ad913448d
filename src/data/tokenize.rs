//! `retro tokenize`: corpus -> `<prefix>_<key>_document.{bin,idx}`, identical to Megatron's
//! `tools/preprocess_data.py --tokenizer-type GPT2BPETokenizer [--append-eod]`: documents in input
//! order, GPT-2 `encode_ordinary`, EOD appended to non-empty documents, empty documents kept as indices.

use super::corpus::{self, Document, Text};
use super::indexed::{Builder, TokenDType};
use super::tokenizer::{self, EOD, VOCAB_SIZE};
use crate::Result;
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct Options {
    pub corpus: corpus::Options,
    pub append_eod: bool,
    /// Tokenizer threads (0: all cores).
    pub workers: usize,
    pub progress: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub prefix: PathBuf,
    pub documents: usize,
    pub empty_documents: usize,
    pub tokens: usize,
    pub input_bytes: usize,
    pub seconds: f64,
}

/// Tokens of one document: each sentence tokenized on its own, empty ones dropped, EOD appended.
pub fn document_tokens(doc: &Document, append_eod: bool) -> Vec<u32> {
    let mut ids = match &doc.text {
        Text::One(s) => tokenizer::encode(s),
        Text::Sentences(ss) => ss.iter().flat_map(|s| tokenizer::encode(s)).collect(),
    };
    if append_eod && !ids.is_empty() {
        ids.push(EOD);
    }
    ids
}

/// The dataset prefix Megatron writes for `output_prefix` and `key`.
pub fn dataset_prefix(output_prefix: &Path, key: &str) -> PathBuf {
    PathBuf::from(format!("{}_{key}_document", output_prefix.display()))
}

pub fn run(input: &Path, output_prefix: &Path, opts: &Options) -> Result<Summary> {
    let prefix = dataset_prefix(output_prefix, &opts.corpus.json_key);
    if let Some(dir) = prefix.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| crate::Error::msg(format!("creating {}: {e}", dir.display())))?;
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.workers)
        .build()
        .map_err(|e| crate::Error::msg(e.to_string()))?;
    let mut builder = Builder::create(&prefix, TokenDType::for_vocab(VOCAB_SIZE))?;
    let bar = if opts.progress { ProgressBar::new_spinner() } else { ProgressBar::hidden() };
    bar.set_style(ProgressStyle::with_template("tokenize {spinner} {msg}").expect("valid template"));
    let start = Instant::now();
    let mut summary =
        Summary { prefix: prefix.clone(), documents: 0, empty_documents: 0, tokens: 0, input_bytes: 0, seconds: 0.0 };
    corpus::for_each_batch(input, &opts.corpus, 4096, |docs| {
        let tokens: Vec<Vec<u32>> =
            pool.install(|| docs.par_iter().map(|d| document_tokens(d, opts.append_eod)).collect());
        for (doc, ids) in docs.iter().zip(&tokens) {
            builder.add_document(ids)?;
            summary.documents += 1;
            summary.empty_documents += ids.is_empty() as usize;
            summary.tokens += ids.len();
            summary.input_bytes += doc.bytes;
        }
        let secs = start.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!(
            "{} docs, {} tokens, {:.1} MB/s, {:.0} docs/s",
            summary.documents,
            summary.tokens,
            summary.input_bytes as f64 / 1e6 / secs,
            summary.documents as f64 / secs
        ));
        bar.tick();
        Ok(())
    })?;
    builder.finish()?;
    bar.finish_and_clear();
    summary.seconds = start.elapsed().as_secs_f64();
    Ok(summary)
}
