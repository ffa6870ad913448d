//! The chunk database: every training document cut into consecutive, non-overlapping chunks of m tokens
//! that never cross a document (the last one 1..m tokens, padded with EOD when read). The row number is
//! the chunk id used by the index and the neighbour store.
//!
//! File `db/chunks.bin` (little-endian): magic `RETROCDB`, u32 version 2, u32 chunk length m,
//! u64 chunk count N, then N records of {u32 document (sequence index in the .bin/.idx), u32 start
//! token within the document, u32 length}, then the checksum trailer (`data::integrity::seal`). Written
//! in place and read in place (`data::stored`): 12 bytes a chunk of page cache, not heap.

use super::indexed::IndexedDataset;
use super::integrity;
use super::stored::Stored;
use super::tokenizer::EOD;
use crate::{ensure, Result};
use std::path::Path;

pub const MAGIC: &[u8; 8] = b"RETROCDB";
pub const VERSION: u32 = 2;
const HEADER: usize = 24;

/// One record of the file, as it is laid out there (read in place).
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct Chunk {
    pub doc: u32,
    pub start: u32,
    pub len: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChunkDb {
    pub chunk_length: usize,
    pub chunks: Stored<Chunk>,
}

impl ChunkDb {
    /// The chunks of documents `docs` (all of them; callers filter), in order, made as they are read.
    pub fn cut(ds: &IndexedDataset, docs: std::ops::Range<usize>, m: usize) -> impl Iterator<Item = Chunk> + '_ {
        docs.flat_map(move |doc| {
            let len = ds.lengths[doc] as usize;
            (0..len).step_by(m).map(move |start| Chunk {
                doc: doc as u32,
                start: start as u32,
                len: m.min(len - start) as u32,
            })
        })
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
        Self::write_chunks(path, self.chunk_length, self.len(), self.chunks.iter().copied())
    }

    /// Write the database of the `count` chunks of `chunks` (m = `chunk_length`) in place as they come,
    /// never all in memory; refused, with nothing written, if they are not exactly `count`.
    pub fn write_chunks(
        path: &Path,
        chunk_length: usize,
        count: usize,
        mut chunks: impl Iterator<Item = Chunk>,
    ) -> Result<()> {
        let payload = HEADER + 12 * count;
        integrity::write_sealed_mapped(path, payload, |file| {
            file[..8].copy_from_slice(MAGIC);
            file[8..12].copy_from_slice(&VERSION.to_le_bytes());
            file[12..16].copy_from_slice(&(chunk_length as u32).to_le_bytes());
            file[16..24].copy_from_slice(&(count as u64).to_le_bytes());
            let records: &mut [Chunk] = bytemuck::cast_slice_mut(&mut file[HEADER..payload]);
            for (i, slot) in records.iter_mut().enumerate() {
                let Some(c) = chunks.next() else { crate::bail!("{}: {i} of {count} chunks", path.display()) };
                *slot = c;
            }
            ensure!(chunks.next().is_none(), "{}: more than {count} chunks", path.display());
            Ok(())
        })
    }

    /// Open and verify (checksums first, then the header and the length); the records are read in place.
    pub fn read(path: &Path) -> Result<Self> {
        let fix = integrity::rerun("db");
        let (map, payload) = integrity::map_sealed(path, &fix)?;
        let b = &map[..payload];
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
            n.checked_mul(12).is_some_and(|bytes| b.len() - HEADER == bytes),
            "{}: {n} chunks need {} bytes, the file has {}",
            path.display(),
            HEADER as u128 + 12 * n as u128,
            b.len()
        );
        Ok(Self { chunk_length: u32_at(12) as usize, chunks: Stored::mapped(&map, HEADER, n) })
    }
}
