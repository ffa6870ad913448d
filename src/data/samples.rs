//! Training and validation samples, like Megatron's GPTDataset: the documents of a split are shuffled
//! (seeded, one permutation per epoch) and concatenated; sample i is the seq + 1 tokens starting at
//! token i·seq of that stream (consecutive samples share one token: inputs and shifted labels).
//!
//! File `data/samples_<split>.bin` (little-endian): magic `RETROSMP`, u32 version 2, u32 seq_length,
//! u64 sample count S, u64 order length O, u32[O] document order (sequence indices, epochs
//! concatenated), then S records of {u64 position in the order, u32 token offset in that document,
//! u32 zero}, then the checksum trailer (`data::integrity::seal`).

use super::indexed::IndexedDataset;
use super::integrity;
use crate::rng::Rng;
use crate::{bail, ensure, Result};
use std::path::Path;

pub const MAGIC: &[u8; 8] = b"RETROSMP";
pub const VERSION: u32 = 2;

#[derive(Debug, Clone, PartialEq)]
pub struct Samples {
    pub seq_length: usize,
    pub order: Vec<u32>,
    /// (position in `order`, offset in that document) of each sample's first token.
    pub starts: Vec<(u64, u32)>,
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
            starts.push((pos as u64, offset as u32));
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
        Ok(Self { seq_length, order, starts })
    }

    pub fn len(&self) -> usize {
        self.starts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// Sample i's seq + 1 tokens and the documents they come from.
    pub fn tokens(&self, ds: &IndexedDataset, i: usize) -> Result<(Vec<u32>, Vec<u32>)> {
        let Some(&(pos, offset)) = self.starts.get(i) else {
            bail!("sample {i} out of range ({} samples)", self.len())
        };
        let (mut pos, mut offset) = (pos as usize, offset as usize);
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
        let mut b = Vec::new();
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&(self.seq_length as u32).to_le_bytes());
        b.extend_from_slice(&(self.starts.len() as u64).to_le_bytes());
        b.extend_from_slice(&(self.order.len() as u64).to_le_bytes());
        for d in &self.order {
            b.extend_from_slice(&d.to_le_bytes());
        }
        for (p, o) in &self.starts {
            b.extend_from_slice(&p.to_le_bytes());
            b.extend_from_slice(&o.to_le_bytes());
            b.extend_from_slice(&0u32.to_le_bytes());
        }
        integrity::seal(&mut b);
        crate::atomic_file::write(path, &b)
    }

    /// Read and verify (checksums first, then the header and the length).
    pub fn read(path: &Path) -> Result<Self> {
        let fix = integrity::rerun("query");
        let b = integrity::read_sealed(path, &fix)?;
        ensure!(b.len() >= 32 && &b[..8] == MAGIC, "{}: not a retro sample index", path.display());
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
            b.len() == 32 + 4 * o + 16 * s,
            "{}: truncated or corrupt ({} bytes for {s} samples)",
            path.display(),
            b.len()
        );
        let order = (0..o).map(|i| u32_at(32 + 4 * i)).collect();
        let base = 32 + 4 * o;
        let starts = (0..s).map(|i| (u64_at(base + 16 * i), u32_at(base + 16 * i + 8))).collect();
        Ok(Self { seq_length: u32_at(12) as usize, order, starts })
    }
}
