//! The neighbour store: for every chunk of every sample, the ids (chunk database rows) of its nearest
//! chunks from other documents, nearest first, -1 padded.
//!
//! File `neighbors/<split>.bin` (little-endian): magic `RETRONBR`, u32 version 2, u32 chunks per sample l,
//! u32 neighbours per chunk k, u32 zero, u64 sample count S, then i64[S·l·k], then the checksum trailer
//! (`data::integrity::seal`, 1 MiB blocks). The reader verifies every block as it reads the file (whole,
//! at open), so no neighbour is used unverified.

use crate::data::integrity;
use crate::{ensure, Result};
use std::path::Path;

pub const MAGIC: &[u8; 8] = b"RETRONBR";
pub const VERSION: u32 = 2;
const HEADER: usize = 32;

#[derive(Debug, Clone, PartialEq)]
pub struct NeighborStore {
    pub chunks_per_sample: usize,
    pub k: usize,
    pub ids: Vec<i64>,
}

impl NeighborStore {
    pub fn samples(&self) -> usize {
        self.ids.len() / (self.chunks_per_sample * self.k).max(1)
    }

    /// Neighbours of chunk `c` of sample `s`.
    pub fn get(&self, s: usize, c: usize) -> &[i64] {
        let o = (s * self.chunks_per_sample + c) * self.k;
        &self.ids[o..o + self.k]
    }

    /// The file's bytes, sealed.
    pub fn bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER + 8 * self.ids.len());
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&(self.chunks_per_sample as u32).to_le_bytes());
        b.extend_from_slice(&(self.k as u32).to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&(self.samples() as u64).to_le_bytes());
        for id in &self.ids {
            b.extend_from_slice(&id.to_le_bytes());
        }
        integrity::seal(&mut b);
        b
    }

    /// Read and verify (checksums first, then the header and the length).
    pub fn read(path: &Path) -> Result<Self> {
        let fix = integrity::rerun("query");
        let b = integrity::read_sealed(path, &fix)?;
        ensure!(b.len() >= HEADER && &b[..8] == MAGIC, "{}: not a retro neighbour file", path.display());
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) as usize;
        ensure!(
            u32_at(8) == VERSION as usize,
            "{}: neighbour file version {}, expected {VERSION}; {fix}",
            path.display(),
            u32_at(8)
        );
        let (l, k) = (u32_at(12), u32_at(16));
        let s = u64::from_le_bytes(b[24..32].try_into().unwrap()) as usize;
        ensure!(
            b.len() == HEADER + 8 * s * l * k,
            "{}: truncated or corrupt ({} bytes for {s} samples x {l} chunks x {k})",
            path.display(),
            b.len()
        );
        let ids = b[HEADER..].chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect();
        Ok(Self { chunks_per_sample: l, k, ids })
    }
}

/// Keep the first `save` neighbours (of `found`, nearest first) whose document is not in `exclude`;
/// pad with -1.
pub fn filter(found: &[i64], doc_of: impl Fn(i64) -> u32, exclude: &[u32], save: usize) -> Vec<i64> {
    let mut out: Vec<i64> =
        found.iter().copied().filter(|&id| id >= 0 && !exclude.contains(&doc_of(id))).take(save).collect();
    out.resize(save, -1);
    out
}
