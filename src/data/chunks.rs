//! The chunk database: every training document cut into consecutive, non-overlapping chunks of m tokens
//! that never cross a document (the last one 1..m tokens, padded with EOD when read). The row number is
//! the chunk id used by the index and the neighbour store.
//!
//! File `db/chunks.bin` (little-endian): magic `RETROCDB`, u32 version 2, u32 chunk length m,
//! u64 chunk count N, then N records of {u32 document (sequence index in the .bin/.idx), u32 start
//! token within the document, u32 length}, then the checksum trailer (`data::integrity::seal`).

use super::indexed::IndexedDataset;
use super::integrity;
use super::tokenizer::EOD;
use crate::{ensure, Result};
use std::path::Path;

pub const MAGIC: &[u8; 8] = b"RETROCDB";
pub const VERSION: u32 = 2;
const HEADER: usize = 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    pub doc: u32,
    pub start: u32,
    pub len: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChunkDb {
    pub chunk_length: usize,
    pub chunks: Vec<Chunk>,
}

impl ChunkDb {
    /// The chunks of documents `docs` (all of them; callers filter).
    pub fn cut(ds: &IndexedDataset, docs: std::ops::Range<usize>, m: usize) -> Vec<Chunk> {
        let mut out = Vec::new();
        for doc in docs {
            let len = ds.lengths[doc] as usize;
            for start in (0..len).step_by(m) {
                out.push(Chunk { doc: doc as u32, start: start as u32, len: m.min(len - start) as u32 });
            }
        }
        out
    }

    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Chunk `id`'s tokens, padded to m with EOD.
    pub fn tokens(&self, ds: &IndexedDataset, id: usize) -> Result<Vec<u32>> {
        let c = self.chunks[id];
        let mut t = ds.tokens(c.doc as usize, c.start as usize, c.len as usize)?;
        t.resize(self.chunk_length, EOD);
        Ok(t)
    }

    /// Chunk `id` followed by the next chunk of the same document (2m tokens, EOD-padded): a neighbour
    /// as the model sees it. The continuation never crosses into another document.
    pub fn neighbor_tokens(&self, ds: &IndexedDataset, id: usize, chunks: usize) -> Result<Vec<u32>> {
        let c = self.chunks[id];
        let doc_len = ds.lengths[c.doc as usize] as usize;
        let want = chunks * self.chunk_length;
        let avail = want.min(doc_len - c.start as usize);
        let mut t = ds.tokens(c.doc as usize, c.start as usize, avail)?;
        t.resize(want, EOD);
        Ok(t)
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let mut b = Vec::with_capacity(HEADER + 12 * self.chunks.len());
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&(self.chunk_length as u32).to_le_bytes());
        b.extend_from_slice(&(self.chunks.len() as u64).to_le_bytes());
        for c in &self.chunks {
            for v in [c.doc, c.start, c.len] {
                b.extend_from_slice(&v.to_le_bytes());
            }
        }
        integrity::seal(&mut b);
        crate::atomic_file::write(path, &b)
    }

    /// Read and verify (checksums first, then the header and the length).
    pub fn read(path: &Path) -> Result<Self> {
        let fix = integrity::rerun("db");
        let b = integrity::read_sealed(path, &fix)?;
        ensure!(b.len() >= HEADER && &b[..8] == MAGIC, "{}: not a retro chunk database", path.display());
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        ensure!(
            u32_at(8) == VERSION,
            "{}: chunk database version {}, expected {VERSION}; {fix}",
            path.display(),
            u32_at(8)
        );
        let n = u64::from_le_bytes(b[16..24].try_into().unwrap()) as usize;
        ensure!(
            b.len() == HEADER + 12 * n,
            "{}: {n} chunks need {} bytes, the file has {}",
            path.display(),
            HEADER + 12 * n,
            b.len()
        );
        let chunks = b[HEADER..]
            .chunks_exact(12)
            .map(|r| Chunk { doc: u32_at_slice(r, 0), start: u32_at_slice(r, 4), len: u32_at_slice(r, 8) })
            .collect();
        Ok(Self { chunk_length: u32_at(12) as usize, chunks })
    }
}

fn u32_at_slice(r: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(r[o..o + 4].try_into().unwrap())
}
