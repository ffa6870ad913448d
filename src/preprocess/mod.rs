//! `retro preprocess`: corpus -> tokens (Megatron .bin/.idx) -> chunk database -> BERT embeddings ->
//! index (Flat or IVF, `retro_index_str`) -> neighbours of every sample chunk, in a project directory
//! training reads.
//!
//! Stages run in order: `tokenize`, `db`, `embed`, `index`, `query`. Each one records a marker in
//! `stages/` when complete and is skipped afterwards; `embed` and `query` work in blocks written
//! atomically (temporary name, fsync, rename), so a killed run resumes at the first missing block.
//! `--stage NAME` runs one stage; `--validate F` verifies every stored checksum, then recomputes a random
//! fraction F of the blocks and checks they are bitwise equal to the stored ones.
//!
//! Under `mpirun -np N` (a shared project directory) the ranks divide the `embed` and `query` blocks:
//! rank r computes blocks r, r + N, ...; rank 0 runs the other stages, assembles the neighbour stores
//! and writes every record while the others wait at a barrier. Each block is computed the same way
//! whoever computes it, so the directory's data files are the bytes one process writes.
//!
//! Every file written here carries a checksum (`data::integrity`): a trailer on our binary files, the
//! stage record for Megatron's .bin / .idx and config.json, a `crc32c` field in each stage record.
//!
//! Here: the stage runner, the tokenize, db and embed stages, `--validate` and `retro inspect`; the
//! index stage is `index_stage.rs`, the query stage `query_stage.rs`, the project directory `project.rs`.

mod index_stage;
pub mod project;
mod query_stage;

use index_stage::{remove_index_pieces, stage_index};
use query_stage::{neighbor_blocks, samples, stage_query};

use crate::data::chunks::{Chunk, ChunkDb};
use crate::data::indexed::IndexedDataset;
use crate::data::samples::Samples;
use crate::data::{corpus, integrity, tokenize, tokenizer};
use crate::dist::World;
use crate::progress::bar;
use crate::retrieval::bert::BertEmbedder;
use crate::retrieval::neighbors::NeighborStore;
use crate::rng::Rng;
use crate::{bail, ensure, Result};
use project::{Layout, ProjectConfig};
use rayon::prelude::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

pub const STAGES: [&str; 5] = ["tokenize", "db", "embed", "index", "query"];
/// Chunks per embedding block and samples per neighbour block.
pub const EMBED_BLOCK: usize = 256;
pub const QUERY_BLOCK: usize = 16;
/// Padded WordPiece tokens per embedder batch.
const BATCH_TOKENS: usize = 8192;

pub struct Options {
    pub input: PathBuf,
    pub project: PathBuf,
    pub config: ProjectConfig,
    pub corpus: corpus::Options,
    pub embedder_dir: Option<PathBuf>,
    /// Run only this stage.
    pub stage: Option<String>,
    pub validate: f64,
    pub progress: bool,
    /// `--memory-limit` in bytes: what the index stage may hold besides its memory-mapped files.
    pub memory_limit: Option<u64>,
}

/// Chunk text for the embedder: the GPT-2 detokenised tokens without the `<|endoftext|>` string.
pub fn chunk_text(tokens: &[u32]) -> String {
    tokenizer::decode(tokens).replace("<|endoftext|>", "")
}

struct Stages<'a> {
    opts: &'a Options,
    layout: Layout,
    embedder: Option<BertEmbedder>,
    /// The processes sharing the work (one without mpirun).
    world: &'a World,
}

impl Stages<'_> {
    fn is_root(&self) -> bool {
        self.world.rank() == 0
    }

    /// The blocks of `0..blocks` this rank computes: r, r + N, ...
    fn my_blocks(&self, blocks: usize) -> impl Iterator<Item = usize> {
        (self.world.rank()..blocks).step_by(self.world.size())
    }

    fn embedder(&mut self) -> Result<&BertEmbedder> {
        if self.embedder.is_none() {
            let dir = crate::retrieval::embedder_dir::resolve(self.opts.embedder_dir.as_deref())?;
            self.embedder = Some(BertEmbedder::load(&dir, self.opts.config.retro_bert_max_chunk_length)?);
        }
        Ok(self.embedder.as_ref().expect("loaded above"))
    }

    fn dataset(&self) -> Result<IndexedDataset> {
        project::open_tokens(&self.opts.project, &self.opts.config)
    }
}

/// Runs the stages on this rank of `world` (`World::single()` alone) and returns the summary (rank 0's
/// is the project's).
pub fn run(opts: &Options, world: &World) -> Result<Value> {
    if let Some(s) = &opts.stage {
        ensure!(STAGES.contains(&s.as_str()), "--stage {s:?}: stages are {}", STAGES.join(", "));
    }
    ensure!((0.0..=1.0).contains(&opts.validate), "--validate {}: a fraction in [0, 1]", opts.validate);
    let c = &opts.config;
    ensure!(
        (1..=c.retro_query_num_neighbors_query).contains(&c.retro_query_num_neighbors_save),
        "--num-neighbors-save {} must be at least 1 and at most --num-neighbors-query {}",
        c.retro_query_num_neighbors_save,
        c.retro_query_num_neighbors_query
    );
    let mut cx = Stages { opts, layout: Layout { dir: opts.project.clone() }, embedder: None, world };
    // Rank 0 creates config.json; the others then check theirs against it.
    if cx.is_root() {
        opts.config.create_or_check(&opts.project)?;
    }
    world.barrier();
    if !cx.is_root() {
        opts.config.create_or_check(&opts.project)?;
    }
    let mut summary = serde_json::Map::new();
    let mut times = serde_json::Map::new();
    for stage in STAGES {
        if opts.stage.as_deref().is_some_and(|s| s != stage) {
            continue;
        }
        if opts.stage.is_none() {
            match cx.layout.read_marker(stage) {
                Ok(Some(done)) => {
                    summary.insert(stage.into(), done);
                    continue;
                }
                Ok(None) => {}
                // A damaged record: the stage is not known to be complete, so it runs again (and says so).
                Err(e) if cx.is_root() => eprintln!("retro preprocess: {e}\n  running the {stage} stage again"),
                Err(_) => {}
            }
        }
        let start = Instant::now();
        let mut stats = match stage {
            "embed" => stage_embed(&mut cx)?,
            "query" => stage_query(&mut cx)?,
            _ if !cx.is_root() => Value::Null, // rank 0's alone
            "tokenize" => stage_tokenize(&mut cx)?,
            "db" => stage_db(&mut cx)?,
            _ => stage_index(&mut cx)?,
        };
        if cx.is_root() {
            let secs = start.elapsed().as_secs_f64();
            stats["seconds"] = json!(secs);
            times.insert(stage.into(), json!(secs));
            cx.layout.write_marker(stage, stats.clone())?;
            summary.insert(stage.into(), stats);
        }
        // Nobody reads a stage's output (or record) before it is complete.
        world.barrier();
    }
    if opts.validate > 0.0 && cx.is_root() {
        summary.insert("validate".into(), validate(&mut cx)?);
    }
    summary.insert("project".into(), json!(opts.project));
    Ok(Value::Object(summary))
}

fn stage_tokenize(cx: &mut Stages) -> Result<Value> {
    let prefix_dir = cx.opts.project.join("data");
    std::fs::create_dir_all(&prefix_dir)?;
    let t_opts =
        tokenize::Options { corpus: cx.opts.corpus.clone(), append_eod: true, workers: 0, progress: cx.opts.progress };
    // tokenize writes <prefix>_<key>_document; the project's data path is that prefix.
    let out_prefix = prefix_dir.join("corpus");
    let s = tokenize::run(&cx.opts.input, &out_prefix, &t_opts)?;
    let expected = cx.opts.config.data_prefix(&cx.opts.project);
    ensure!(
        s.prefix == expected,
        "tokenize wrote {} but the project expects {}",
        s.prefix.display(),
        expected.display()
    );
    // The .bin / .idx stay Megatron's bytes: their checksums (and config.json's) go in this stage's record.
    let checksums = project::TokenChecksums::compute(&cx.opts.project, &cx.opts.config)?;
    Ok(json!({
        "documents": s.documents, "empty_documents": s.empty_documents, "tokens": s.tokens, "input_bytes": s.input_bytes,
        "checksums": checksums,
    }))
}

fn stage_db(cx: &mut Stages) -> Result<Value> {
    let ds = cx.dataset()?;
    let [train, _, _] = cx.opts.config.split_ranges(ds.len())?;
    ensure!(
        !train.is_empty(),
        "the training split is empty ({} documents, --split {})",
        ds.len(),
        cx.opts.config.retro_gpt_split
    );
    let m = cx.opts.config.retro_gpt_chunk_length;
    let total: usize = train.clone().map(|d| (ds.lengths[d] as usize).div_ceil(m)).sum();
    let b = bar(total, "db", cx.opts.progress);
    let embedder = cx.embedder()?;
    // Megatron drops chunks whose BERT tokenization is empty ([CLS] [SEP] only). Decided DB_BLOCK chunks
    // at a time in parallel, kept as one bit a chunk; the database is then written as the chunks are cut
    // again, so no list of chunks is ever in memory.
    let mut kept = Vec::with_capacity(total.div_ceil(64));
    let mut chunks = ChunkDb::cut(&ds, train.clone(), m).peekable();
    let mut kept_count = 0;
    while chunks.peek().is_some() {
        let block: Vec<Chunk> = chunks.by_ref().take(DB_BLOCK).collect();
        let keep = block
            .par_iter()
            .map(|c| {
                let tokens = ds.tokens(c.doc as usize, c.start as usize, c.len as usize)?;
                Ok(embedder.tokenize(&chunk_text(&tokens))?.len() > 2)
            })
            .collect::<Result<Vec<bool>>>()?;
        for word in keep.chunks(64) {
            kept.push(word.iter().enumerate().fold(0u64, |w, (i, &k)| w | (k as u64) << i));
            kept_count += word.iter().filter(|&&k| k).count();
        }
        b.inc(block.len() as u64);
    }
    b.finish_and_clear();
    std::fs::create_dir_all(cx.layout.dir.join("db"))?;
    let is_kept = |i: usize| kept[i / 64] >> (i % 64) & 1 == 1;
    let chunks = ChunkDb::cut(&ds, train.clone(), m).enumerate().filter(|&(i, _)| is_kept(i)).map(|(_, c)| c);
    ChunkDb::write_chunks(&cx.layout.chunks(), m, kept_count, chunks)?;
    Ok(json!({"train_documents": train.len(), "chunks": kept_count, "dropped_empty": total - kept_count}))
}

/// Chunks tokenized for the database at a time (in parallel); a whole number of 64-bit words of the
/// kept-chunk bits, which each block starts afresh.
const DB_BLOCK: usize = 16_384;
const _: () = assert!(DB_BLOCK % 64 == 0);

/// Embeddings of chunks `ids` of the database, in order.
fn embed_chunks(cx: &mut Stages, ds: &IndexedDataset, db: &ChunkDb, ids: std::ops::Range<usize>) -> Result<Vec<f32>> {
    let texts: Vec<String> = ids.map(|i| Ok(chunk_text(&db.tokens(ds, i)?))).collect::<Result<_>>()?;
    embed_texts(cx.embedder()?, &texts)
}

fn embed_texts(embedder: &BertEmbedder, texts: &[String]) -> Result<Vec<f32>> {
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    Ok(embedder.embed(&refs, BATCH_TOKENS)?.into_iter().flat_map(|e| e.embedding).collect())
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn stage_embed(cx: &mut Stages) -> Result<Value> {
    let ds = cx.dataset()?;
    let db = ChunkDb::read(&cx.layout.chunks()).map_err(|e| e.context("run the db stage first"))?;
    let blocks = db.len().div_ceil(EMBED_BLOCK);
    let block_range = |block: usize| block * EMBED_BLOCK..((block + 1) * EMBED_BLOCK).min(db.len());
    std::fs::create_dir_all(cx.layout.dir.join("db/embeddings"))?;
    let mine: Vec<usize> = cx.my_blocks(blocks).collect();
    let b = bar(mine.iter().map(|&i| block_range(i).len()).sum(), "embed", cx.opts.progress && cx.is_root());
    let mut computed = [0.0];
    for block in mine {
        let range = block_range(block);
        let path = cx.layout.embedding_block(block);
        if stored(&path, "embed").is_none() {
            let mut bytes = f32_bytes(&embed_chunks(cx, &ds, &db, range.clone())?);
            integrity::seal(&mut bytes);
            crate::atomic_file::write(&path, &bytes)?;
            computed[0] += 1.0;
        }
        b.inc(range.len() as u64);
    }
    b.finish_and_clear();
    cx.world.all_reduce_sum(&mut computed);
    let (computed, dim) = (computed[0] as usize, cx.embedder()?.dim());
    if computed > 0 && cx.is_root() {
        // New embeddings: an IVF index stage's stored training and assignments describe the old ones.
        remove_index_pieces(&cx.layout)?;
    }
    Ok(json!({"chunks": db.len(), "blocks": blocks, "blocks_computed": computed, "dim": dim}))
}

/// The verified contents of a block a stage wrote earlier, or None when it is missing or damaged (a
/// damaged one is reported and computed again: what rerunning the stage is for).
fn stored(path: &Path, stage: &str) -> Option<Vec<u8>> {
    if !path.exists() {
        return None;
    }
    integrity::read_sealed(path, &integrity::rerun(stage))
        .map_err(|e| eprintln!("retro preprocess: {e}; computing it again"))
        .ok()
}

/// The `n` chunk embeddings of a project, from its blocks.
pub fn read_embeddings(layout: &Layout, n: usize, dim: usize) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(n * dim);
    for block in 0..n.div_ceil(EMBED_BLOCK) {
        out.extend(read_embedding_block(layout, block, n, dim)?);
    }
    Ok(out)
}

/// Embedding block `block` of a project of `n` chunks: chunks block·EMBED_BLOCK.., verified.
fn read_embedding_block(layout: &Layout, block: usize, n: usize, dim: usize) -> Result<Vec<f32>> {
    let path = layout.embedding_block(block);
    let bytes = integrity::read_sealed(&path, &integrity::rerun("embed"))
        .map_err(|e| e.context("the embeddings are incomplete or damaged"))?;
    let want = (EMBED_BLOCK.min(n - block * EMBED_BLOCK)) * dim * 4;
    ensure!(
        bytes.len() == want,
        "{}: {} bytes, expected {want} (truncated or from another model)",
        path.display(),
        bytes.len()
    );
    Ok(bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect())
}

/// Verify every stored checksum: config.json, the stage records, the tokens (every block), the embedding
/// blocks, the sample indexes and the neighbour stores and blocks (the chunk database and the index are
/// verified as the caller reads them). Returns the number of files verified, those two included.
fn verify_checksums(cx: &Stages, ds: &IndexedDataset, db: &ChunkDb) -> Result<usize> {
    let mut files = 3; // config.json (ProjectConfig::read), the .idx (verified at open), the .bin:
    ProjectConfig::read(&cx.opts.project)?;
    ds.verify_all()?;
    for stage in STAGES {
        files += cx.layout.read_marker(stage)?.is_some() as usize;
    }
    files += 2; // the chunk database and the index, verified when read (the caller opens the index)
    let embed_blocks = db.len().div_ceil(EMBED_BLOCK);
    for block in 0..embed_blocks {
        integrity::read_sealed(&cx.layout.embedding_block(block), &integrity::rerun("embed"))?;
    }
    files += embed_blocks;
    for split in ["train", "valid"] {
        let path = cx.layout.samples(split);
        if !path.exists() {
            continue;
        }
        let samples = Samples::read(&path)?;
        NeighborStore::read(&cx.layout.neighbors(split))?;
        files += 2;
        for block in 0..samples.len().div_ceil(QUERY_BLOCK) {
            let path = cx.layout.neighbor_block(split, block);
            if path.exists() {
                integrity::read_sealed(&path, &integrity::rerun("query"))?;
                files += 1;
            }
        }
    }
    Ok(files)
}

/// Verify every stored checksum, then recompute a random fraction of the embedding and neighbour
/// blocks; every one must be bitwise equal.
fn validate(cx: &mut Stages) -> Result<Value> {
    let ds = cx.dataset()?;
    let db = ChunkDb::read(&cx.layout.chunks())?;
    let index = cx.opts.config.open_index(&cx.layout.dir)?;
    let files_verified = verify_checksums(cx, &ds, &db)?;
    let mut rng = Rng::new(cx.opts.config.retro_gpt_seed ^ 0x5EED);
    let frac = cx.opts.validate;
    let mut checked = 0;
    for block in 0..db.len().div_ceil(EMBED_BLOCK) {
        if rng.uniform() >= frac {
            continue;
        }
        let range = block * EMBED_BLOCK..((block + 1) * EMBED_BLOCK).min(db.len());
        let fresh = f32_bytes(&embed_chunks(cx, &ds, &db, range)?);
        let path = cx.layout.embedding_block(block);
        if integrity::read_sealed(&path, &integrity::rerun("embed"))? != fresh {
            bail!("validate: {} differs from a recomputation", path.display());
        }
        checked += 1;
    }
    let c = cx.opts.config.clone();
    let per_sample = (c.retro_gpt_seq_length / c.retro_gpt_chunk_length) * c.retro_query_num_neighbors_save;
    for split in ["train", "valid"] {
        let Some(samples) = samples(cx, &ds, split)? else { continue };
        let store = NeighborStore::read(&cx.layout.neighbors(split))?;
        for block in 0..samples.len().div_ceil(QUERY_BLOCK) {
            if rng.uniform() >= frac {
                continue;
            }
            let range = block * QUERY_BLOCK..((block + 1) * QUERY_BLOCK).min(samples.len());
            let fresh = neighbor_blocks(cx, &ds, &db, &index, &samples, &[block])?.remove(0);
            if fresh[..] != store.ids[range.start * per_sample..range.end * per_sample] {
                bail!(
                    "validate: neighbours of {split} samples {}..{} differ from a recomputation",
                    range.start,
                    range.end
                );
            }
            checked += 1;
        }
    }
    Ok(
        json!({"checksums_verified_files": files_verified, "fraction": frac, "blocks_checked": checked, "all_equal": true}),
    )
}

/// `retro inspect`: a sample's text per chunk, and each chunk's neighbours (chunk + continuation).
pub fn inspect(project: &Path, split: &str, sample: usize, show: usize) -> Result<String> {
    let config = ProjectConfig::read(project)?;
    let layout = Layout { dir: project.to_path_buf() };
    let ds = project::open_tokens(project, &config)?;
    let db = ChunkDb::read(&layout.chunks())?;
    let samples = Samples::read(&layout.samples(split))?;
    let store = NeighborStore::read(&layout.neighbors(split))?;
    ensure!(sample < samples.len(), "sample {sample} out of range: the {split} split has {} samples", samples.len());
    let (tokens, docs) = samples.tokens(&ds, sample)?;
    let m = config.retro_gpt_chunk_length;
    let mut out = format!("{split} sample {sample} (documents {docs:?})\n");
    for c in 0..store.chunks_per_sample {
        out += &format!("\n== chunk {c}: {:?}\n", chunk_text(&tokens[c * m..(c + 1) * m]));
        for (rank, &id) in store.get(sample, c).iter().take(show).enumerate() {
            if id < 0 {
                out += &format!("  neighbour {rank}: (none)\n");
                continue;
            }
            let ch = db.chunks[id as usize];
            let text = chunk_text(&db.neighbor_tokens(&ds, id as usize, config.retro_num_retrieved_chunks)?);
            out += &format!("  neighbour {rank}: chunk {id} (document {}, token {}): {:?}\n", ch.doc, ch.start, text);
        }
    }
    Ok(out)
}
