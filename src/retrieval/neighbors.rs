//! The neighbour store: for every chunk of every sample, the ids (chunk database rows) of its nearest
//! chunks from other documents, nearest first, -1 padded.
//!
//! File `neighbors/<split>.bin` (little-endian): magic `RETRONBR`, u32 version 2, u32 chunks per sample l,
//! u32 neighbours per chunk k, u32 zero, u64 sample count S, then i64[S·l·k], then the checksum trailer
//! (`data::integrity::seal`, 1 MiB blocks). The store grows with the corpus (8·l·k bytes a sample), so it
//! is written in place (a memory map, block of samples by block) and read in place: the reader verifies
//! every block at open, then reads the ids from the mapped file, and a store costs page cache, not heap.

use crate::data::integrity;
use crate::data::stored::Stored;
use crate::{ensure, Result};
use std::path::Path;

pub const MAGIC: &[u8; 8] = b"RETRONBR";
pub const VERSION: u32 = 2;
const HEADER: usize = 32;

#[derive(Debug, Clone, PartialEq)]
pub struct NeighborStore {
    pub chunks_per_sample: usize,
    pub k: usize,
    pub ids: Stored<i64>,
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

    /// Write the store of `samples` samples (l chunks of k neighbours each) to `path` in place, from
    /// `blocks`: the ids of consecutive samples, in order, which must fill the store exactly (else
    /// nothing is written).
    pub fn write(
        path: &Path,
        l: usize,
        k: usize,
        samples: usize,
        blocks: impl Iterator<Item = Result<Vec<i64>>>,
    ) -> Result<()> {
        let payload = HEADER + 8 * samples * l * k;
        integrity::write_sealed_mapped(path, payload, |file| {
            file[..8].copy_from_slice(MAGIC);
            file[8..12].copy_from_slice(&VERSION.to_le_bytes());
            file[12..16].copy_from_slice(&(l as u32).to_le_bytes());
            file[16..20].copy_from_slice(&(k as u32).to_le_bytes());
            file[20..24].copy_from_slice(&0u32.to_le_bytes());
            file[24..32].copy_from_slice(&(samples as u64).to_le_bytes());
            let mut at = HEADER;
            for ids in blocks {
                let ids = ids?;
                ensure!(
                    at + 8 * ids.len() <= payload,
                    "{}: more neighbour ids than {samples} samples hold",
                    path.display()
                );
                file[at..at + 8 * ids.len()].copy_from_slice(bytemuck::cast_slice(&ids));
                at += 8 * ids.len();
            }
            ensure!(
                at == payload,
                "{}: neighbour ids for {} of {samples} samples",
                path.display(),
                (at - HEADER) / (8 * l * k).max(1)
            );
            Ok(())
        })
    }

    /// Open and verify (checksums first, then the header and the length); the ids are read in place.
    pub fn read(path: &Path) -> Result<Self> {
        let fix = integrity::rerun("query");
        let (map, payload) = integrity::map_sealed(path, &fix)?;
        let b = &map[..payload];
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
        let want = s.checked_mul(l).and_then(|x| x.checked_mul(k)).and_then(|x| x.checked_mul(8));
        ensure!(
            want.is_some_and(|w| b.len() - HEADER == w),
            "{}: truncated or corrupt ({} bytes for {s} samples x {l} chunks x {k})",
            path.display(),
            b.len()
        );
        Ok(Self { chunks_per_sample: l, k, ids: Stored::mapped(&map, HEADER, s * l * k) })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_is_written_from_its_blocks_and_read_in_place_or_refused_whole() {
        let dir = std::env::temp_dir().join(format!("retro-neighbors-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("train.bin");
        // 5 samples of l = 2 chunks x k = 3 neighbours, in blocks of 2, 2 and 1 samples.
        let ids: Vec<i64> = (0..30).map(|i| if i % 7 == 0 { -1 } else { i * 11 }).collect();
        let blocks = || ids.chunks(12).map(|b| Ok(b.to_vec()));
        NeighborStore::write(&path, 2, 3, 5, blocks()).unwrap();
        let store = NeighborStore::read(&path).unwrap();
        assert!(store.ids.is_mapped(), "the ids are read in place");
        assert_eq!((store.samples(), store.chunks_per_sample, store.k), (5, 2, 3));
        assert_eq!(&store.ids[..], &ids[..]);
        assert_eq!(store.get(4, 1), &ids[27..30]);
        // Too few or too many ids, or a failing block: refused, the store on disk untouched, no temporary left.
        let before = std::fs::read(&path).unwrap();
        let short = NeighborStore::write(&path, 2, 3, 6, blocks()).unwrap_err();
        assert!(short.to_string().contains("for 5 of 6 samples"), "{short}");
        let long = NeighborStore::write(&path, 2, 3, 4, blocks()).unwrap_err();
        assert!(long.to_string().contains("more neighbour ids than 4 samples hold"), "{long}");
        let failing = [Ok(ids.clone()), Err(crate::Error::msg("block 1 is damaged"))].into_iter();
        let failed = NeighborStore::write(&path, 2, 3, 10, failing).unwrap_err();
        assert!(failed.to_string().contains("block 1 is damaged"), "{failed}");
        assert_eq!(std::fs::read(&path).unwrap(), before);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no temporary file left");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
