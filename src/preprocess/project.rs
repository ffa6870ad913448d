//! The project directory (Megatron's `--retro-project-dir`): `config.json` with Megatron's `retro_*`
//! keys, and the files every stage writes. A directory written with other settings is refused, naming
//! the key that differs.

use crate::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProjectConfig {
    pub retro_format_version: u32,
    /// The corpus this project was built from (as given).
    pub retro_input: String,
    /// Dataset prefix, relative to the project directory.
    pub retro_gpt_data_path: String,
    pub retro_gpt_tokenizer_type: String,
    pub retro_gpt_vocab_size: usize,
    pub retro_gpt_eod: u32,
    pub retro_gpt_seq_length: usize,
    pub retro_gpt_chunk_length: usize,
    pub retro_gpt_global_batch_size: usize,
    /// Training samples asked for (0: one epoch of the training documents; the sample file has the count).
    pub retro_gpt_train_samples: usize,
    pub retro_gpt_eval_interval: usize,
    pub retro_gpt_eval_iters: usize,
    pub retro_gpt_seed: u64,
    pub retro_gpt_split: String,
    pub retro_bert_tokenizer_type: String,
    /// The embedder: `all-MiniLM-L6-v2` (fetched) or the `--embedder-dir` given.
    pub retro_bert_embedder: String,
    pub retro_bert_max_chunk_length: usize,
    pub retro_index_str: String,
    pub retro_index_metric: String,
    pub retro_query_num_neighbors_query: usize,
    pub retro_query_num_neighbors_save: usize,
    /// Chunks per retrieved neighbour (the neighbour and its continuation).
    pub retro_num_retrieved_chunks: usize,
}

impl ProjectConfig {
    /// Megatron's defaults for a corpus (seq 2048, chunk 64, global batch 256, split 98,2,0, seed 1234,
    /// 200 neighbours searched and 20 kept, all-MiniLM-L6-v2 on 256 WordPiece tokens, a flat index).
    pub fn new(input: &Path, json_key: &str) -> Self {
        Self {
            retro_format_version: FORMAT_VERSION,
            retro_input: input.display().to_string(),
            retro_gpt_data_path: format!("data/corpus_{json_key}_document"),
            retro_gpt_tokenizer_type: "GPT2BPETokenizer".into(),
            retro_gpt_vocab_size: crate::data::tokenizer::VOCAB_SIZE,
            retro_gpt_eod: crate::data::tokenizer::EOD,
            retro_gpt_seq_length: 2048,
            retro_gpt_chunk_length: 64,
            retro_gpt_global_batch_size: 256,
            retro_gpt_train_samples: 0,
            retro_gpt_eval_interval: 1000,
            retro_gpt_eval_iters: 10,
            retro_gpt_seed: 1234,
            retro_gpt_split: "98,2,0".into(),
            retro_bert_tokenizer_type: "BertWordPieceLowerCase".into(),
            retro_bert_embedder: "all-MiniLM-L6-v2".into(),
            retro_bert_max_chunk_length: 256,
            retro_index_str: "Flat".into(),
            retro_index_metric: "InnerProduct".into(),
            retro_query_num_neighbors_query: 200,
            retro_query_num_neighbors_save: 20,
            retro_num_retrieved_chunks: 2,
        }
    }

    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| crate::Error::msg(format!("{}: {e}", path.display())))
    }

    /// Write `self` to `dir/config.json`, or check that the one there says the same.
    pub fn create_or_check(&self, dir: &Path) -> Result<()> {
        let path = dir.join("config.json");
        if path.exists() {
            let old: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)
                .map_err(|e| crate::Error::msg(format!("{}: {e}", path.display())))?;
            let new = serde_json::to_value(self)?;
            for (key, value) in new.as_object().expect("config is an object") {
                let before = old.get(key).cloned().unwrap_or(serde_json::Value::Null);
                if &before != value {
                    bail!(
                        "project {} was written with {key} = {before}, this run asks for {value}; \
                         use a new --project directory (or the same settings) instead of mixing them",
                        dir.display()
                    );
                }
            }
            return Ok(());
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        crate::atomic_file::write(&path, serde_json::to_string_pretty(self)?.as_bytes())
    }

    /// Document ranges (sequence indices) of the train, valid and test splits, Megatron style: the
    /// weights are normalised and the boundaries rounded.
    pub fn split_ranges(&self, documents: usize) -> Result<[std::ops::Range<usize>; 3]> {
        split_ranges(&self.retro_gpt_split, documents)
    }

    pub fn data_prefix(&self, dir: &Path) -> PathBuf {
        dir.join(&self.retro_gpt_data_path)
    }
}

pub fn split_ranges(split: &str, documents: usize) -> Result<[std::ops::Range<usize>; 3]> {
    let parts: Vec<f64> = split
        .split([',', '/'])
        .map(|p| {
            p.trim().parse::<f64>().map_err(|_| crate::Error::msg(format!("--split {split:?}: {p:?} is not a number")))
        })
        .collect::<Result<_>>()?;
    if parts.len() > 3 || parts.is_empty() || parts.iter().any(|&p| p < 0.0) || parts.iter().sum::<f64>() <= 0.0 {
        bail!("--split {split:?}: expected up to three non-negative weights such as 98,2,0");
    }
    let total: f64 = parts.iter().sum();
    let mut bounds = [0usize; 4];
    let mut acc = 0.0;
    for i in 0..3 {
        acc += parts.get(i).copied().unwrap_or(0.0);
        bounds[i + 1] = ((acc / total) * documents as f64).round() as usize;
    }
    bounds[3] = documents;
    Ok([bounds[0]..bounds[1], bounds[1]..bounds[2], bounds[2]..bounds[3]])
}

/// Where each artefact lives inside the project directory.
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn chunks(&self) -> PathBuf {
        self.dir.join("db/chunks.bin")
    }
    pub fn embedding_block(&self, block: usize) -> PathBuf {
        self.dir.join(format!("db/embeddings/{block:06}.f32"))
    }
    pub fn index(&self) -> PathBuf {
        self.dir.join("index/index.json")
    }
    pub fn samples(&self, split: &str) -> PathBuf {
        self.dir.join(format!("data/samples_{split}.bin"))
    }
    pub fn neighbor_block(&self, split: &str, block: usize) -> PathBuf {
        self.dir.join(format!("neighbors/{split}/{block:06}.i64"))
    }
    pub fn neighbors(&self, split: &str) -> PathBuf {
        self.dir.join(format!("neighbors/{split}.bin"))
    }
    pub fn stage_marker(&self, stage: &str) -> PathBuf {
        self.dir.join(format!("stages/{stage}.json"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn megatron_style_split() {
        assert_eq!(split_ranges("98,2,0", 100).unwrap(), [0..98, 98..100, 100..100]);
        assert_eq!(split_ranges("969, 30, 1", 1000).unwrap(), [0..969, 969..999, 999..1000]);
        assert_eq!(split_ranges("1", 7).unwrap(), [0..7, 7..7, 7..7]);
        assert!(split_ranges("a,b", 7).is_err());
    }
}
