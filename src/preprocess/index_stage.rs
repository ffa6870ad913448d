//! The index stage of `retro preprocess`: the chunk embeddings' index (Flat, or IVF trained, assigned
//! and written block by block so a killed stage resumes), built through `retro_index_str`.

use super::project::{Layout, ProjectConfig};
use super::{read_embedding_block, stored, Stages, EMBED_BLOCK};
use crate::data::chunks::ChunkDb;
use crate::data::integrity;
use crate::progress::{bar, spinner};
use crate::retrieval::assignment::Assignment;
use crate::retrieval::index_file::{check_finite, AnyIndex};
use crate::retrieval::knn::Metric;
use crate::{ensure, Result};
use serde_json::{json, Value};

/// Remove an IVF index stage's resumable pieces (`index/trained.bin`, `index/adds/`).
pub(super) fn remove_index_pieces(layout: &Layout) -> Result<()> {
    for (path, dir) in [(layout.dir.join("index/trained.bin"), false), (layout.dir.join("index/adds"), true)] {
        let removed = if dir { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        match removed {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(crate::Error::msg(format!("removing {}: {e}", path.display())));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Embedding blocks per block of IVF adds (16 384 chunks).
const ADD_BLOCK: usize = 64;

/// The index stage. Flat: the embeddings are the index. IVF: (1) k-means (and PQ codebooks) on the
/// training sample, read from the embedding blocks alone, stored as `index/trained.bin`; (2) each block of
/// ADD_BLOCK embedding blocks assigned to its cells (and PQ codes), stored as `index/adds/NNNNNN.bin`;
/// (3) every chunk's cell read back from them, which sizes the lists, and the index file written in place
/// (a memory map) block by block. Each of (1) and (2) is kept once written and verified, so a killed
/// stage resumes where it stopped, and the index is the one a one-shot build makes, byte for byte.
/// Memory: the training sample (cut to `--memory-limit`), one block, 4 bytes per chunk; never the
/// embeddings or the lists whole. Flat: the embedding blocks copied into the index file in place.
pub(super) fn stage_index(cx: &mut Stages) -> Result<Value> {
    let db = ChunkDb::read(&cx.layout.chunks())?;
    let (n, dim) = (db.len(), cx.embedder()?.dim());
    let c = &cx.opts.config;
    ensure!(c.retro_index_metric == "InnerProduct", "retro_index_metric {:?}: InnerProduct", c.retro_index_metric);
    let spec = c.index_spec(n)?;
    let ntrain = (c.retro_index_ntrain > 0).then_some(c.retro_index_ntrain);
    let ntrain = AnyIndex::ntrain_within(spec, n, dim, ntrain, cx.opts.memory_limit)?;
    let (seed, layout) = (c.retro_gpt_seed, &cx.layout);
    // The pieces a killed stage left are reused only for the same database, embedding size and index;
    // anything else (and a rerun of the embed stage, which removes them) starts the index over.
    let source = json!({"chunks": n, "dim": dim, "index": format!("{spec:?}"), "ntrain": ntrain, "seed": seed});
    let source_path = layout.dir.join("index/adds/source.json");
    let same_source = std::fs::read(&source_path).ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok());
    if same_source.as_ref() != Some(&source) {
        remove_index_pieces(layout)?;
        std::fs::create_dir_all(layout.dir.join("index/adds"))?;
        crate::atomic_file::write(&source_path, source.to_string().as_bytes())?;
    }
    let embed_blocks = n.div_ceil(EMBED_BLOCK);
    let Some(rows) = AnyIndex::training_rows(spec, n, ntrain, seed)? else {
        // Flat: the embeddings are the index, written in place block by block.
        let blocks = (0..embed_blocks).map(|e| Ok((e * EMBED_BLOCK, read_embedding_block(layout, e, n, dim)?)));
        AnyIndex::write_flat(&layout.index(), dim, Metric::InnerProduct, n, blocks)?;
        return Ok(index_summary(c, "Flat", dim, n, json!({})));
    };
    let trained_path = layout.dir.join("index/trained.bin");
    let trained = trained_path.exists().then(|| AnyIndex::load(&trained_path)).and_then(|r| {
        r.map_err(|e| {
            let why = e.message().split("; rebuild it").next().unwrap_or_default().to_string();
            eprintln!("retro preprocess: {why}; training the index again")
        })
        .ok()
    });
    let index = match trained {
        Some(index) => index,
        None => {
            let mut sample = Vec::with_capacity(rows.len() * dim);
            let mut loaded: Option<(usize, Vec<f32>)> = None;
            for &row in &rows {
                let block = row / EMBED_BLOCK;
                if loaded.as_ref().is_none_or(|(b, _)| *b != block) {
                    loaded = Some((block, read_embedding_block(layout, block, n, dim)?));
                }
                let at = (row % EMBED_BLOCK) * dim;
                sample.extend_from_slice(&loaded.as_ref().unwrap().1[at..at + dim]);
            }
            let what = format!("k-means: {} lists on {} rows", spec.nlist(n).unwrap_or(0), rows.len());
            let s = spinner(&what, cx.opts.progress);
            let index = AnyIndex::train(spec, dim, Metric::InnerProduct, n, &sample, seed)?;
            s.finish_and_clear();
            index.save(&trained_path)?;
            index
        }
    };
    let blocks = embed_blocks.div_ceil(ADD_BLOCK);
    let chunks_of = |block: usize| block * ADD_BLOCK * EMBED_BLOCK..((block + 1) * ADD_BLOCK * EMBED_BLOCK).min(n);
    let read_block = |block: usize| -> Result<Vec<f32>> {
        let mut v = Vec::with_capacity(chunks_of(block).len() * dim);
        for e in block * ADD_BLOCK..((block + 1) * ADD_BLOCK).min(embed_blocks) {
            v.extend(read_embedding_block(layout, e, n, dim)?);
        }
        Ok(v)
    };
    let add_path = |block: usize| layout.dir.join(format!("index/adds/{block:06}.bin"));
    let b = bar(n, "assign", cx.opts.progress);
    let mut computed = 0;
    for block in 0..blocks {
        if stored(&add_path(block), "index").is_none() {
            let vectors = read_block(block)?;
            check_finite(&vectors, dim, chunks_of(block).start)?;
            let mut bytes = index.assign(&vectors)?.to_bytes();
            integrity::seal(&mut bytes);
            crate::atomic_file::write(&add_path(block), &bytes)?;
            computed += 1;
        }
        b.inc(chunks_of(block).len() as u64);
    }
    b.finish_and_clear();
    let read_assignment = |block: usize| -> Result<Assignment> {
        let bytes = integrity::read_sealed(&add_path(block), &integrity::rerun("index"))?;
        Assignment::from_bytes(&bytes, chunks_of(block).len())
            .map_err(|e| e.context(format!("{}", add_path(block).display())))
    };
    // Every chunk's cell sizes the lists; then the lists are written in place, block by block.
    let mut cells = Vec::with_capacity(n);
    for block in 0..blocks {
        cells.extend(read_assignment(block)?.cells.iter().map(|&c| c as u32));
    }
    let ivf_flat = matches!(index, AnyIndex::Ivf(_));
    let b = bar(n, "lists", cx.opts.progress);
    let rows_of = (0..blocks).map(|block| {
        // IVF-PQ's lists hold codes only: the vectors are read for IVF-Flat alone.
        let vectors = if ivf_flat { read_block(block)? } else { Vec::new() };
        b.inc(chunks_of(block).len() as u64);
        Ok((read_assignment(block)?, chunks_of(block).start, vectors))
    });
    index.write_with_rows(&layout.index(), &cells, rows_of)?;
    b.finish_and_clear();
    let pieces = json!({"add_blocks": blocks, "add_blocks_computed": computed, "ntrain": rows.len()});
    Ok(index_summary(c, &index.describe(), dim, n, pieces))
}

/// The index stage's record: what it built (`built`: the index string) and the stage's own `fields`.
fn index_summary(c: &ProjectConfig, built: &str, dim: usize, n: usize, mut fields: Value) -> Value {
    fields["type"] = json!(built);
    fields["requested"] = json!(c.retro_index_str);
    fields["metric"] = json!("InnerProduct");
    fields["dim"] = json!(dim);
    fields["vectors"] = json!(n);
    fields["nprobe"] = json!(c.retro_query_nprobe);
    fields["file"] = json!("index/index.bin");
    fields
}
