//! Live retrieval for generation: a completed chunk's text is embedded with the project's BERT, searched
//! in the project's index, and its k nearest chunks come back as neighbour + continuation tokens.

use super::bert::BertEmbedder;
use super::index_file::AnyIndex;
use crate::data::chunks::ChunkDb;
use crate::data::indexed::IndexedDataset;
use crate::preprocess::chunk_text;
use crate::preprocess::project::{Layout, ProjectConfig};
use crate::tensor::Tensor;
use crate::{ensure, Result};
use std::path::Path;

pub struct LiveRetriever {
    embedder: BertEmbedder,
    index: AnyIndex,
    pub db: ChunkDb,
    pub ds: IndexedDataset,
    pub k: usize,
    retrieved_chunks: usize,
}

impl LiveRetriever {
    /// `k` neighbours per chunk of `retrieved_chunks` chunks each (the neighbour and its continuation).
    pub fn open(project: &Path, k: usize, retrieved_chunks: usize) -> Result<Self> {
        let config = ProjectConfig::read(project)?;
        let layout = Layout { dir: project.to_path_buf() };
        let embedder_dir = match config.retro_bert_embedder.as_str() {
            "all-MiniLM-L6-v2" => None,
            dir => Some(Path::new(dir)),
        };
        let embedder =
            BertEmbedder::load(&super::embedder_dir::resolve(embedder_dir)?, config.retro_bert_max_chunk_length)?;
        let db = ChunkDb::read(&layout.chunks())?;
        ensure!(db.len() >= k, "the project's chunk database has {} chunks, fewer than k = {k}", db.len());
        let index = config.open_index(project)?;
        ensure!(
            index.index().dim() == embedder.dim(),
            "the project's index holds vectors of dimension {}, its embedder makes {}",
            index.index().dim(),
            embedder.dim()
        );
        let ds = crate::preprocess::project::open_tokens(project, &config)?;
        Ok(Self { embedder, index, db, ds, k, retrieved_chunks })
    }

    /// The k nearest chunks of `chunk` and their tokens [k, r] (neighbour + continuation, EOD-padded).
    pub fn retrieve(&self, chunk: &[u32]) -> Result<(Vec<i64>, Tensor)> {
        let e = self.embedder.embed(&[&chunk_text(chunk)], 8192)?;
        let found = self.index.search(&e[0].embedding, self.embedder.dim(), self.k)?;
        let mut tokens = Vec::new();
        for &id in &found.ids {
            tokens.extend(
                self.db.neighbor_tokens(&self.ds, id as usize, self.retrieved_chunks)?.iter().map(|&t| t as i64),
            );
        }
        let r = tokens.len() / self.k;
        Ok((found.ids, Tensor::from_vec(tokens, &[self.k, r])?))
    }
}
