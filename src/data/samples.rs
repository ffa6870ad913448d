//! Training and validation samples, like Megatron's GPTDataset: the documents of a split are shuffled
//! (seeded, one permutation per epoch) and concatenated; sample i is the seq + 1 tokens starting at
//! token i·seq of that stream (consecutive samples share one token: inputs and shifted labels).
//!
//! File `data/samples_<split>.bin` (little-endian): magic `RETROSMP`, u32 version 2, u32 seq_length,
//! u64 sample count S, u64 order length O, u32[O] document order (sequence indices, epochs
//! concatenated), then S records of {u64 position in the order, u32 token offset in that document,
//! u32 zero}, then the checksum trailer (`data::integrity::seal`). Written and read in place
//! (`data::stored`): the order and the records are page cache, not heap.

use super::indexed::IndexedDataset;
use super::integrity;
use super::stored::Stored;
use crate::rng::Rng;
use crate::{bail, ensure, Result};
use std::path::Path;

pub const MAGIC: &[u8; 8] = b"RETROSMP";
pub const VERSION: u32 = 2;

const HEADER: usize = 32;

#[derive(Debug, Clone, PartialEq)]
pub struct Samples {
    pub seq_length: usize,
    pub order: Stored<u32>,
    /// Where each sample's first token is.
    pub starts: Stored<SampleStart>,
}

/// A sample's first token: position in `order` and offset in that document. One record of the file, as
/// it is laid out there (the u64 position as two u32 halves, so a record needs only 4-byte alignment:
/// the records follow the u32 order, and are read in place whatever its length).
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct SampleStart {
    position: [u32; 2],
    offset: u32,
    zero: u32,
}

impl SampleStart {
    fn new(position: u64, offset: u32) -> Self {
        Self { position: [position as u32, (position >> 32) as u32], offset, zero: 0 }
    }

    pub fn position(&self) -> u64 {
        self.position[0] as u64 | (self.position[1] as u64) << 32
    }

    pub fn offset(&self) -> u32 {
        self.offset
    }
}

impl Samples {
    /// `count` samples over documents `docs` (0 = as many as one epoch holds).
    pub fn build(ds: &IndexedDataset, docs: &[usize], seq_length: usize, count: usize, seed: u64) -> Result<Self> {
        let tokens: usize = docs.iter().map(|&d| ds.lengths[d] as usize).sum();
        if tokens <= seq_length {
            bail!(
                "the split's {} documents hold {tokens} tokens, not enough for one sample of {} tokens",
                docs.len(),
                seq_length + 1
            );
        }
        let count = if count == 0 { (tokens - 1) / seq_length } else { count };
        let mut order: Vec<u32> = Vec::new();
        let mut epoch = 0u64;
        let mut add_epoch = |order: &mut Vec<u32>| {
            let mut perm: Vec<u32> = docs.iter().map(|&d| d as u32).collect();
            let mut rng = Rng::new(seed ^ (epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
            for i in (1..perm.len()).rev() {
                perm.swap(i, rng.below(i as u64 + 1) as usize);
            }
            order.extend(perm);
            epoch += 1;
        };
        add_epoch(&mut order);
        let mut starts = Vec::with_capacity(count);
        let (mut pos, mut offset) = (0usize, 0usize);
        // Tokens from the cursor to the end of the order so far.
        let mut ahead = tokens;
        for _ in 0..count {
            while ahead < seq_length + 1 {
                add_epoch(&mut order);
                ahead += tokens;
            }
            starts.push(SampleStart::new(pos as u64, offset as u32));
            let mut step = seq_length;
            ahead -= step;
            while step > 0 {
                let left = ds.lengths[order[pos] as usize] as usize - offset;
                if step < left {
                    offset += step;
                    step = 0;
                } else {
                    step -= left;
                    pos += 1;
                    offset = 0;
                }
            }
        }
        Ok(Self { seq_length, order: order.into(), starts: starts.into() })
    }

    pub fn len(&self) -> usize {
        self.starts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// Sample i's seq + 1 tokens and the documents they come from.
    pub fn tokens(&self, ds: &IndexedDataset, i: usize) -> Result<(Vec<u32>, Vec<u32>)> {
        let Some(start) = self.starts.get(i) else { bail!("sample {i} out of range ({} samples)", self.len()) };
        let (mut pos, mut offset) = (start.position() as usize, start.offset() as usize);
        let mut need = self.seq_length + 1;
        let mut out = Vec::with_capacity(need);
        let mut docs = Vec::new();
        while need > 0 {
            let Some(&doc) = self.order.get(pos) else { bail!("sample {i} runs past the document order") };
            let take = need.min(ds.lengths[doc as usize] as usize - offset);
            out.extend(ds.tokens(doc as usize, offset, take)?);
            if take > 0 {
                docs.push(doc);
            }
            need -= take;
            pos += 1;
            offset = 0;
        }
        Ok((out, docs))
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let (o, n) = (self.order.len(), self.starts.len());
        let records_at = HEADER + 4 * o;
        integrity::write_sealed_mapped(path, records_at + 16 * n, |file| {
            file[..8].copy_from_slice(MAGIC);
            file[8..12].copy_from_slice(&VERSION.to_le_bytes());
            file[12..16].copy_from_slice(&(self.seq_length as u32).to_le_bytes());
            file[16..24].copy_from_slice(&(n as u64).to_le_bytes());
            file[24..32].copy_from_slice(&(o as u64).to_le_bytes());
            file[HEADER..records_at].copy_from_slice(bytemuck::cast_slice(&self.order));
            file[records_at..].copy_from_slice(bytemuck::cast_slice(&self.starts));
            Ok(())
        })
    }

    /// Open and verify (checksums first, then the header and the length); the document order and the
    /// records are read in place.
    pub fn read(path: &Path) -> Result<Self> {
        let fix = integrity::rerun("query");
        let (map, payload) = integrity::map_sealed(path, &fix)?;
        let b = &map[..payload];
        ensure!(b.len() >= HEADER && &b[..8] == MAGIC, "{}: not a retro sample index", path.display());
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        ensure!(
            u32_at(8) == VERSION,
            "{}: sample index version {}, expected {VERSION}; {fix}",
            path.display(),
            u32_at(8)
        );
        let (s, o) = (u64_at(16) as usize, u64_at(24) as usize);
        ensure!(
            (b.len() as u128) == HEADER as u128 + 4 * o as u128 + 16 * s as u128,
            "{}: truncated or corrupt ({} bytes for {s} samples)",
            path.display(),
            b.len()
        );
        Ok(Self {
            seq_length: u32_at(12) as usize,
            order: Stored::mapped(&map, HEADER, o),
            starts: Stored::mapped(&map, HEADER + 4 * o, s),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_index_is_written_and_read_in_place_with_its_documented_bytes() {
        let dir = std::env::temp_dir().join(format!("retro-samples-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("samples.bin");
        // An odd order length: the records start 4-byte aligned, and are still read in place.
        let starts = vec![SampleStart::new(0, 0), SampleStart::new(2, 17), SampleStart::new((1 << 32) + 5, 3)];
        let samples = Samples { seq_length: 64, order: vec![4u32, 0, 2].into(), starts: starts.into() };
        samples.write(&path).unwrap();
        let read = Samples::read(&path).unwrap();
        assert!(read.order.is_mapped() && read.starts.is_mapped());
        assert_eq!(read, samples);
        assert_eq!(read.starts[2].position(), (1 << 32) + 5);
        let bytes = std::fs::read(&path).unwrap();
        let at = HEADER + 4 * 3 + 16 * 2;
        assert_eq!(u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()), (1 << 32) + 5);
        assert_eq!(u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()), 3);
        // Cut short: refused, naming the file.
        std::fs::write(&path, &bytes[..bytes.len() - 9]).unwrap();
        assert!(Samples::read(&path).unwrap_err().to_string().contains("samples.bin"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
