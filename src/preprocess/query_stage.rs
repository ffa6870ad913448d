//! The query stage of `retro preprocess`: every sample chunk of the training and validation splits
//! embedded, searched in the index, its own documents' chunks removed; stored in blocks of QUERY_BLOCK
//! samples (divided between `mpirun` ranks), then assembled into each split's neighbour store.

use super::{chunk_text, embed_texts, stored, Stages, QUERY_BLOCK};
use crate::data::chunks::ChunkDb;
use crate::data::indexed::IndexedDataset;
use crate::data::integrity;
use crate::data::samples::Samples;
use crate::progress::bar;
use crate::retrieval::index_file::AnyIndex;
use crate::retrieval::neighbors::{self, NeighborStore};
use crate::{ensure, Result};
use serde_json::{json, Value};

pub(super) fn samples(cx: &Stages, ds: &IndexedDataset, split: &str) -> Result<Option<Samples>> {
    let path = cx.layout.samples(split);
    if path.exists() {
        match Samples::read(&path) {
            Ok(s) => return Ok(Some(s)),
            Err(e) => eprintln!("retro preprocess: {e}; rebuilding it"),
        }
    }
    let [train, valid, _] = cx.opts.config.split_ranges(ds.len())?;
    let (docs, count, seed) = match split {
        "train" => (train, cx.opts.config.retro_gpt_train_samples, cx.opts.config.retro_gpt_seed),
        _ => (valid, 0, cx.opts.config.retro_gpt_seed + 1),
    };
    let docs: Vec<usize> = docs.collect();
    let tokens: usize = docs.iter().map(|&d| ds.lengths[d] as usize).sum();
    if split == "valid" && tokens <= cx.opts.config.retro_gpt_seq_length {
        return Ok(None);
    }
    let s = Samples::build(ds, &docs, cx.opts.config.retro_gpt_seq_length, count, seed)
        .map_err(|e| e.context(format!("{split} samples")))?;
    s.write(&path)?;
    Ok(Some(s))
}

/// The query embeddings of every chunk of samples `range` of a split, and each sample's documents.
fn block_queries(
    cx: &mut Stages,
    ds: &IndexedDataset,
    samples: &Samples,
    range: std::ops::Range<usize>,
) -> Result<(Vec<f32>, Vec<Vec<u32>>)> {
    let c = &cx.opts.config;
    let (m, l) = (c.retro_gpt_chunk_length, c.retro_gpt_seq_length / c.retro_gpt_chunk_length);
    let mut texts = Vec::new();
    let mut docs = Vec::new();
    for s in range {
        let (tokens, sample_docs) = samples.tokens(ds, s)?;
        for j in 0..l {
            texts.push(chunk_text(&tokens[j * m..(j + 1) * m]));
        }
        docs.push(sample_docs);
    }
    Ok((embed_texts(cx.embedder()?, &texts)?, docs))
}

/// The saved neighbours of every chunk of each of `blocks` (QUERY_BLOCK samples each) of a split, their
/// queries searched together.
pub(super) fn neighbor_blocks(
    cx: &mut Stages,
    ds: &IndexedDataset,
    db: &ChunkDb,
    index: &AnyIndex,
    samples: &Samples,
    blocks: &[usize],
) -> Result<Vec<Vec<i64>>> {
    let c = cx.opts.config.clone();
    let (l, nq, save) = (
        c.retro_gpt_seq_length / c.retro_gpt_chunk_length,
        c.retro_query_num_neighbors_query,
        c.retro_query_num_neighbors_save,
    );
    let block_range = |block: usize| block * QUERY_BLOCK..((block + 1) * QUERY_BLOCK).min(samples.len());
    let (mut queries, mut docs) = (Vec::new(), Vec::new());
    for &block in blocks {
        let (q, d) = block_queries(cx, ds, samples, block_range(block))?;
        queries.extend(q);
        docs.extend(d);
    }
    let found = index.search(&queries, cx.embedder()?.dim(), nq)?;
    let (mut rows, mut sample_docs) = (found.ids.chunks(nq), docs.iter());
    let mut per_block = |block: usize| {
        let mut ids = Vec::with_capacity(block_range(block).len() * l * save);
        for _ in block_range(block) {
            let docs = sample_docs.next().expect("one entry a sample");
            for row in rows.by_ref().take(l) {
                ids.extend(neighbors::filter(row, |id| db.chunks[id as usize].doc, docs, save));
            }
        }
        ids
    };
    Ok(blocks.iter().map(|&b| per_block(b)).collect())
}

/// Query chunks searched at once: an IVF index scores each list against all the queries of a search
/// that probe it, so the query stage searches several blocks together (each block's result is the same
/// whatever it is searched with).
const SEARCH_QUERIES: usize = 8192;

/// This rank's neighbour blocks of a split that are not stored yet, each computed and written.
fn query_my_blocks(
    cx: &mut Stages,
    ds: &IndexedDataset,
    db: &ChunkDb,
    index: &AnyIndex,
    samples: &Samples,
    split: &str,
) -> Result<()> {
    std::fs::create_dir_all(cx.layout.dir.join(format!("neighbors/{split}")))?;
    let l = cx.opts.config.retro_gpt_seq_length / cx.opts.config.retro_gpt_chunk_length;
    let block_range = |block: usize| block * QUERY_BLOCK..((block + 1) * QUERY_BLOCK).min(samples.len());
    let mine: Vec<usize> = cx.my_blocks(samples.len().div_ceil(QUERY_BLOCK)).collect();
    let b = bar(mine.iter().map(|&i| block_range(i).len()).sum(), split, cx.opts.progress && cx.is_root());
    let mut todo = Vec::new();
    for block in mine {
        match stored(&cx.layout.neighbor_block(split, block), "query") {
            Some(_) => b.inc(block_range(block).len() as u64),
            None => todo.push(block),
        }
    }
    for group in todo.chunks((SEARCH_QUERIES / (QUERY_BLOCK * l).max(1)).max(1)) {
        for (&block, ids) in group.iter().zip(neighbor_blocks(cx, ds, db, index, samples, group)?) {
            let mut bytes: Vec<u8> = bytemuck::cast_slice(&ids).to_vec();
            integrity::seal(&mut bytes);
            crate::atomic_file::write(&cx.layout.neighbor_block(split, block), &bytes)?;
            b.inc(block_range(block).len() as u64);
        }
    }
    b.finish_and_clear();
    Ok(())
}

/// The neighbour store of a split, written to the project in place from its blocks (all written, each
/// verified as it is read), then opened from the file.
fn assemble_neighbors(cx: &Stages, samples: &Samples, split: &str) -> Result<NeighborStore> {
    let c = &cx.opts.config;
    let (l, save) = (c.retro_gpt_seq_length / c.retro_gpt_chunk_length, c.retro_query_num_neighbors_save);
    let blocks = (0..samples.len().div_ceil(QUERY_BLOCK)).map(|block| {
        let path = cx.layout.neighbor_block(split, block);
        let bytes = integrity::read_sealed(&path, &integrity::rerun("query"))?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    });
    let out = cx.layout.neighbors(split);
    NeighborStore::write(&out, l, save, samples.len(), blocks)
        .map_err(|e| e.context(format!("neighbour blocks of {split} are incomplete")))?;
    NeighborStore::read(&out)
}

pub(super) fn stage_query(cx: &mut Stages) -> Result<Value> {
    let ds = cx.dataset()?;
    let db = ChunkDb::read(&cx.layout.chunks())?;
    let c = cx.opts.config.clone();
    ensure!(
        db.len() >= c.retro_query_num_neighbors_query,
        "the chunk database has {} chunks, fewer than the {} neighbours asked for (--num-neighbors-query); \
         use a larger corpus or a smaller --num-neighbors-query",
        db.len(),
        c.retro_query_num_neighbors_query
    );
    let index = c.open_index(&cx.layout.dir)?;
    let l = c.retro_gpt_seq_length / c.retro_gpt_chunk_length;
    let mut stats = serde_json::Map::new();
    for split in ["train", "valid"] {
        // Rank 0 builds and writes the sample index; the others then read it.
        let samples = if cx.is_root() { samples(cx, &ds, split)? } else { None };
        cx.world.barrier();
        let samples = if cx.is_root() { samples } else { self::samples(cx, &ds, split)? };
        let Some(samples) = samples else {
            stats.insert(split.into(), json!({"samples": 0}));
            continue;
        };
        let out = cx.layout.neighbors(split);
        let existing = match out.exists() {
            false => None,
            true => NeighborStore::read(&out).map_err(|e| eprintln!("retro preprocess: {e}; rebuilding it")).ok(),
        };
        let store = match existing {
            Some(store) => Some(store),
            None => {
                query_my_blocks(cx, &ds, &db, &index, &samples, split)?;
                cx.world.barrier(); // every block is written
                cx.is_root().then(|| assemble_neighbors(cx, &samples, split)).transpose()?
            }
        };
        if let Some(store) = store {
            let found = store.ids.iter().filter(|&&x| x >= 0).count() as f64 / (store.samples() * l).max(1) as f64;
            stats.insert(
                split.into(),
                json!({"samples": store.samples(), "chunks": store.samples() * l, "neighbors_found_per_chunk": found}),
            );
        }
        cx.world.barrier(); // the store is written before anyone reads it
    }
    Ok(Value::Object(stats))
}
