//! An IVF index's assignment of a block of vectors: each vector's cell (and, for IVF-PQ, its m-byte
//! code). It is the costly half of adding vectors (`AnyIndex::assign`), so `retro preprocess` stores one
//! per block of 64 embedding blocks (16 384 chunks) and a killed index stage resumes from the blocks it
//! finished; inserting the
//! stored assignments in block order (`AnyIndex::insert`) gives the index a one-shot build gives, byte
//! for byte. Bytes: u64 count, u64 code bytes per vector, u32 cells [count], u8 codes [count, m]
//! (little-endian; the caller seals them with a checksum).

use crate::{ensure, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    pub cells: Vec<usize>,
    /// IVF-PQ's codes, `code_bytes` per vector; empty for IVF-Flat.
    pub codes: Vec<u8>,
    pub code_bytes: usize,
}

impl Assignment {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(16 + 4 * self.cells.len() + self.codes.len());
        b.extend_from_slice(&(self.cells.len() as u64).to_le_bytes());
        b.extend_from_slice(&(self.code_bytes as u64).to_le_bytes());
        self.cells.iter().for_each(|&c| b.extend_from_slice(&(c as u32).to_le_bytes()));
        b.extend_from_slice(&self.codes);
        b
    }

    /// The assignment of `bytes`, which must hold `count` vectors.
    pub fn from_bytes(bytes: &[u8], count: usize) -> Result<Self> {
        let u64_at = |i: usize| bytes.get(i..i + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize);
        let (Some(n), Some(code_bytes)) = (u64_at(0), u64_at(8)) else {
            crate::bail!("an index assignment of {} bytes has no header", bytes.len())
        };
        ensure!(
            n == count && bytes.len() == 16 + n * (4 + code_bytes),
            "an index assignment of {} bytes for {n} vectors of {code_bytes}-byte codes, expected {count} vectors",
            bytes.len()
        );
        let cells =
            bytes[16..16 + 4 * n].chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap()) as usize).collect();
        Ok(Self { cells, codes: bytes[16 + 4 * n..].to_vec(), code_bytes })
    }
}
