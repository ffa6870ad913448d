//! The project directory (Megatron's `--retro-project-dir`): `config.json` with Megatron's `retro_*`
//! keys, and the files every stage writes. A directory written with other settings is refused, naming
//! the key that differs.

use crate::data::indexed::{Checksums, IndexedDataset};
use crate::data::integrity::{self, Sums};
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
    /// faiss's vocabulary (`Flat`, `IVF<n>,Flat`, `IVFauto`), or `auto`: `Flat` below 1M chunks,
    /// `IVFauto,Flat` above (the index stage's record says what it built).
    pub retro_index_str: String,
    pub retro_index_metric: String,
    /// k-means training sample of an IVF index (0: 256 per list, at most every chunk).
    pub retro_index_ntrain: usize,
    /// IVF lists searched per query (Megatron's key; its default searched every list).
    pub retro_query_nprobe: usize,
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
            retro_index_str: "auto".into(),
            retro_index_metric: "InnerProduct".into(),
            retro_index_ntrain: 0,
            retro_query_nprobe: 16,
            retro_query_num_neighbors_query: 200,
            retro_query_num_neighbors_save: 20,
            retro_num_retrieved_chunks: 2,
        }
    }

    /// Read `dir/config.json`, verified (`read_verified`).
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        if !path.exists() {
            bail!("{}: not a retro project (no config.json): run `retro preprocess` first", dir.display());
        }
        serde_json::from_slice(&read_verified(dir)?).map_err(|e| crate::Error::msg(format!("{}: {e}", path.display())))
    }

    /// Write `self` to `dir/config.json`, or check that the one there says the same.
    pub fn create_or_check(&self, dir: &Path) -> Result<()> {
        let path = dir.join("config.json");
        if path.exists() {
            // Verified when the tokenize record can vouch for it; a damaged record is rewritten when the
            // tokenize stage runs again, so it must not stop the run that repairs it.
            let bytes = match (Layout { dir: dir.to_path_buf() }).token_checksums() {
                Ok(_) => read_verified(dir)?,
                Err(_) => std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
            };
            let old: serde_json::Value =
                serde_json::from_slice(&bytes).map_err(|e| crate::Error::msg(format!("{}: {e}", path.display())))?;
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

    /// The index `retro_index_str` asks for, for a database of `chunks` chunks.
    pub fn index_spec(&self, chunks: usize) -> Result<crate::retrieval::index_spec::IndexSpec> {
        use crate::retrieval::index_spec::IndexSpec;
        match self.retro_index_str.as_str() {
            "auto" if chunks > 1_000_000 => Ok(IndexSpec::IvfFlat { nlist: None }),
            "auto" => Ok(IndexSpec::Flat),
            s => IndexSpec::parse(s),
        }
    }

    /// The project's index, verified, with `retro_query_nprobe` lists searched per query.
    pub fn open_index(&self, dir: &Path) -> Result<crate::retrieval::index_file::AnyIndex> {
        let path = (Layout { dir: dir.to_path_buf() }).index();
        let mut index = crate::retrieval::index_file::AnyIndex::load(&path).map_err(|e| {
            e.context(format!("the project's index (run the index stage: {})", integrity::rerun("index")))
        })?;
        index.set_nprobe(self.retro_query_nprobe);
        Ok(index)
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

/// config.json's bytes, verified against the checksum the tokenize stage recorded (when it has run: a
/// project being preprocessed has no record yet).
fn read_verified(dir: &Path) -> Result<Vec<u8>> {
    let path = dir.join("config.json");
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    if let Some(sums) = (Layout { dir: dir.to_path_buf() }).token_checksums()? {
        sums.config.check(&bytes, &path, CONFIG_FIX)?;
    }
    Ok(bytes)
}

/// What to do about a corrupt config.json (preprocessing compares it, so it cannot simply be rewritten).
const CONFIG_FIX: &str = "restore it, or delete it and rerun `retro preprocess --stage tokenize` with the \
                          project's original flags (which writes it and records its checksum again)";

/// The checksums the tokenize stage records (`stages/tokenize.json`, "checksums"): config.json and the
/// tokens' Megatron `.idx` / `.bin`, whose bytes must stay Megatron's and so carry no checksum of their own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenChecksums {
    pub config: Sums,
    pub idx: Sums,
    pub bin: Sums,
}

impl TokenChecksums {
    /// Take them over the files as they are now (the end of the tokenize stage).
    pub fn compute(dir: &Path, config: &ProjectConfig) -> Result<Self> {
        let (bin_path, idx_path) = crate::data::indexed::paths(&config.data_prefix(dir));
        let read = |p: PathBuf| std::fs::read(&p).with_context(|| format!("reading {}", p.display()));
        let bin = std::fs::File::open(&bin_path).with_context(|| format!("opening {}", bin_path.display()))?;
        // SAFETY: read-only map of a file this stage has just written and nothing else modifies.
        let bin = unsafe { memmap2::Mmap::map(&bin) }.with_context(|| format!("mapping {}", bin_path.display()))?;
        Ok(Self {
            config: Sums::of(&read(dir.join("config.json"))?),
            idx: Sums::of(&read(idx_path)?),
            bin: Sums::of(&bin),
        })
    }
}

/// The project's token dataset, every read verified against the tokenize stage's checksums.
pub fn open_tokens(dir: &Path, config: &ProjectConfig) -> Result<IndexedDataset> {
    let layout = Layout { dir: dir.to_path_buf() };
    let Some(sums) = layout.token_checksums()? else {
        bail!(
            "{}: no checksums of the tokens (the tokenize stage has not finished, or ran in a retro older than \
             checksums): {}",
            layout.stage_marker("tokenize").display(),
            integrity::rerun("tokenize")
        );
    };
    let fix = integrity::rerun("tokenize");
    IndexedDataset::open_verified(&config.data_prefix(dir), Checksums { idx: &sums.idx, bin: &sums.bin, fix: &fix })
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
        self.dir.join("index/index.bin")
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

    /// A completed stage's record (its summary), verified; None if the stage has not completed.
    pub fn read_marker(&self, stage: &str) -> Result<Option<serde_json::Value>> {
        let path = self.stage_marker(stage);
        if !path.exists() {
            return Ok(None);
        }
        integrity::read_sealed_json(&path, &integrity::rerun(stage)).map(Some)
    }

    /// Write a stage's record, sealed with its checksum.
    pub fn write_marker(&self, stage: &str, record: serde_json::Value) -> Result<()> {
        let path = self.stage_marker(stage);
        std::fs::create_dir_all(path.parent().expect("stages/"))?;
        crate::atomic_file::write(&path, integrity::seal_json(record)?.as_bytes())
    }

    /// The tokenize stage's checksums, if it has completed.
    pub fn token_checksums(&self) -> Result<Option<TokenChecksums>> {
        let Some(record) = self.read_marker("tokenize")? else { return Ok(None) };
        let path = self.stage_marker("tokenize");
        match record.get("checksums") {
            Some(c) => serde_json::from_value(c.clone())
                .map(Some)
                .map_err(|e| integrity::corrupt(&path, &format!("bad checksums ({e})"), &integrity::rerun("tokenize"))),
            None => Err(integrity::corrupt(
                &path,
                "no checksums (a retro older than checksums wrote it)",
                &integrity::rerun("tokenize"),
            )),
        }
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
