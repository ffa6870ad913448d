//! Megatron's IndexedDataset (`megatron/core/datasets/indexed_dataset.py`), byte for byte.
//!
//! `.idx`: magic `MMIDIDX\0\0`, u64 version 1, u8 dtype code (8 = u16, 4 = i32), u64 sequence count N,
//! u64 document count D, i32[N] sequence lengths, i64[N] byte offsets of the sequences in `.bin`,
//! i64[D] document indices (0, then the sequence count after each document: an empty document repeats
//! the previous value). `.bin`: the tokens. All little-endian. One document = one sequence here.
//! The files stay Megatron's bytes; a project's checksums of them are in its tokenize stage record.

use super::integrity::Sums;
use crate::{bail, ensure, Context, Result};
use memmap2::Mmap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

pub const MAGIC: &[u8; 9] = b"MMIDIDX\x00\x00";
pub const VERSION: u64 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenDType {
    U16,
    I32,
}

impl TokenDType {
    /// Megatron's choice: u16 when the vocabulary fits (< 65500), else i32.
    pub fn for_vocab(vocab: usize) -> Self {
        if vocab < 65500 {
            TokenDType::U16
        } else {
            TokenDType::I32
        }
    }
    pub fn code(self) -> u8 {
        match self {
            TokenDType::U16 => 8,
            TokenDType::I32 => 4,
        }
    }
    pub fn size(self) -> usize {
        match self {
            TokenDType::U16 => 2,
            TokenDType::I32 => 4,
        }
    }
    fn from_code(code: u8) -> Option<Self> {
        match code {
            8 => Some(TokenDType::U16),
            4 => Some(TokenDType::I32),
            _ => None,
        }
    }
}

/// `<prefix>.bin` and `<prefix>.idx`.
pub fn paths(prefix: &Path) -> (PathBuf, PathBuf) {
    let p = prefix.as_os_str().to_string_lossy();
    (PathBuf::from(format!("{p}.bin")), PathBuf::from(format!("{p}.idx")))
}

/// Writes `.bin` as documents arrive and `.idx` at `finish`. Both go to temporary names first and are
/// renamed only when complete, so a failed run leaves no partial dataset.
pub struct Builder {
    dtype: TokenDType,
    bin: BufWriter<File>,
    tmp_bin: PathBuf,
    final_bin: PathBuf,
    final_idx: PathBuf,
    lengths: Vec<i32>,
    doc_indices: Vec<i64>,
}

impl Builder {
    pub fn create(prefix: &Path, dtype: TokenDType) -> Result<Self> {
        let (final_bin, final_idx) = paths(prefix);
        let tmp_bin = PathBuf::from(format!("{}.tmp.{}", final_bin.display(), std::process::id()));
        let bin = BufWriter::new(File::create(&tmp_bin).with_context(|| format!("creating {}", tmp_bin.display()))?);
        Ok(Self { dtype, bin, tmp_bin, final_bin, final_idx, lengths: Vec::new(), doc_indices: vec![0] })
    }

    /// One document (one sequence); an empty document adds only its document index.
    pub fn add_document(&mut self, tokens: &[u32]) -> Result<()> {
        if !tokens.is_empty() {
            match self.dtype {
                TokenDType::U16 => {
                    for &t in tokens {
                        let v =
                            u16::try_from(t).map_err(|_| crate::Error::msg(format!("token {t} does not fit u16")))?;
                        self.bin.write_all(&v.to_le_bytes())?;
                    }
                }
                TokenDType::I32 => {
                    for &t in tokens {
                        self.bin.write_all(&(t as i32).to_le_bytes())?;
                    }
                }
            }
            self.lengths
                .push(i32::try_from(tokens.len()).map_err(|_| crate::Error::msg("document longer than 2^31 tokens"))?);
        }
        self.doc_indices.push(self.lengths.len() as i64);
        Ok(())
    }

    pub fn finish(mut self) -> Result<(PathBuf, PathBuf)> {
        self.bin.flush()?;
        self.bin.get_ref().sync_all()?;
        let idx = index_bytes(self.dtype, &self.lengths, &self.doc_indices);
        crate::atomic_file::write(&self.final_idx, &idx)?;
        std::fs::rename(&self.tmp_bin, &self.final_bin)
            .with_context(|| format!("renaming {} to {}", self.tmp_bin.display(), self.final_bin.display()))?;
        Ok((self.final_bin.clone(), self.final_idx.clone()))
    }
}

impl Drop for Builder {
    fn drop(&mut self) {
        // Unfinished (error or panic): remove the partial .bin. After `finish` the temp name is gone.
        let _ = std::fs::remove_file(&self.tmp_bin);
    }
}

/// The `.idx` bytes for these sequence lengths and document indices.
pub fn index_bytes(dtype: TokenDType, lengths: &[i32], doc_indices: &[i64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(34 + lengths.len() * 12 + doc_indices.len() * 8);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.push(dtype.code());
    out.extend_from_slice(&(lengths.len() as u64).to_le_bytes());
    out.extend_from_slice(&(doc_indices.len() as u64).to_le_bytes());
    for l in lengths {
        out.extend_from_slice(&l.to_le_bytes());
    }
    let mut pointer = 0i64;
    for l in lengths {
        out.extend_from_slice(&pointer.to_le_bytes());
        pointer += *l as i64 * dtype.size() as i64;
    }
    for d in doc_indices {
        out.extend_from_slice(&d.to_le_bytes());
    }
    out
}

/// A memory-mapped, validated dataset.
pub struct IndexedDataset {
    pub dtype: TokenDType,
    pub lengths: Vec<i32>,
    pub pointers: Vec<i64>,
    pub doc_indices: Vec<i64>,
    bin: Mmap,
    verify: Option<BinChecksums>,
}

/// The `.bin`'s block checksums and which blocks have been verified (each once, on first read).
struct BinChecksums {
    sums: Sums,
    verified: Vec<AtomicBool>,
    path: PathBuf,
    fix: String,
}

/// The checksums a verified open checks against (a project's tokenize record).
pub struct Checksums<'a> {
    pub idx: &'a Sums,
    pub bin: &'a Sums,
    /// What the error tells the user to do (rerun the stage that writes the files).
    pub fix: &'a str,
}

impl IndexedDataset {
    /// Open `<prefix>.idx` / `<prefix>.bin`, checking magic, version, dtype, counts, pointers and sizes
    /// against the file lengths before anything is read through them. No checksums: for Megatron files
    /// from elsewhere; a project's are opened with `open_verified`.
    pub fn open(prefix: &Path) -> Result<Self> {
        Self::open_with(prefix, None)
    }

    /// `open`, with the `.idx` verified whole against `sums.idx` before it is parsed, and each 1 MiB block
    /// of the `.bin` verified against `sums.bin` the first time `tokens` reads from it.
    pub fn open_verified(prefix: &Path, sums: Checksums) -> Result<Self> {
        Self::open_with(prefix, Some(sums))
    }

    fn open_with(prefix: &Path, sums: Option<Checksums>) -> Result<Self> {
        let (bin_path, idx_path) = paths(prefix);
        let idx = std::fs::read(&idx_path).with_context(|| format!("reading {}", idx_path.display()))?;
        if let Some(s) = &sums {
            s.idx.check(&idx, &idx_path, s.fix)?;
        }
        let bad = |why: String| crate::Error::msg(format!("{}: {why}", idx_path.display()));
        if idx.len() < 34 || &idx[..9] != MAGIC {
            return Err(bad("not a Megatron .idx file (bad magic or shorter than the header)".into()));
        }
        let u64_at = |o: usize| u64::from_le_bytes(idx[o..o + 8].try_into().unwrap());
        let version = u64_at(9);
        if version != VERSION {
            return Err(bad(format!("version {version}, expected {VERSION}")));
        }
        let dtype = TokenDType::from_code(idx[17])
            .ok_or_else(|| bad(format!("token dtype code {} (expected 8 = u16 or 4 = i32)", idx[17])))?;
        let (n, d) = (u64_at(18) as usize, u64_at(26) as usize);
        let expected = 34u128 + n as u128 * 12 + d as u128 * 8;
        if expected != idx.len() as u128 {
            return Err(bad(format!(
                "{n} sequences and {d} document indices need {expected} bytes, the file has {}",
                idx.len()
            )));
        }
        let mut o = 34;
        let mut take = |k: usize| {
            let s = &idx[o..o + k];
            o += k;
            s
        };
        let lengths: Vec<i32> =
            take(4 * n).chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap())).collect();
        let pointers: Vec<i64> =
            take(8 * n).chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect();
        let doc_indices: Vec<i64> =
            take(8 * d).chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect();
        let file = File::open(&bin_path).with_context(|| format!("opening {}", bin_path.display()))?;
        // SAFETY: the map is read-only; the file is not modified while the dataset is open.
        let bin = unsafe { Mmap::map(&file) }.with_context(|| format!("mapping {}", bin_path.display()))?;
        let verify = match sums {
            Some(s) => {
                s.bin.check_len(bin.len(), &bin_path, s.fix)?;
                let verified = (0..s.bin.blocks()).map(|_| AtomicBool::new(false)).collect();
                Some(BinChecksums { sums: s.bin.clone(), verified, path: bin_path.clone(), fix: s.fix.to_string() })
            }
            None => None,
        };
        let size = dtype.size() as i64;
        let mut expect = 0i64;
        for (i, (&l, &p)) in lengths.iter().zip(&pointers).enumerate() {
            ensure!(
                l >= 0 && p == expect,
                "{}: sequence {i} has length {l} at byte {p}, expected byte {expect}",
                idx_path.display()
            );
            expect += l as i64 * size;
        }
        ensure!(
            expect as u64 == bin.len() as u64,
            "{}: the index describes {expect} bytes of tokens but {} has {} (truncated or mismatched)",
            idx_path.display(),
            bin_path.display(),
            bin.len()
        );
        ensure!(
            doc_indices.first() == Some(&0)
                && doc_indices.windows(2).all(|w| w[0] <= w[1])
                && doc_indices.last().is_some_and(|&x| x as usize == n),
            "{}: document indices must rise from 0 to the sequence count {n}",
            idx_path.display()
        );
        Ok(Self { dtype, lengths, pointers, doc_indices, bin, verify })
    }

    /// Verify every block of the `.bin` now (`retro preprocess --validate`); returns the block count.
    pub fn verify_all(&self) -> Result<usize> {
        let Some(v) = &self.verify else { bail!("this dataset was opened without checksums") };
        for b in 0..v.sums.blocks() {
            v.sums.check_block(&self.bin, b, &v.path, &v.fix)?;
            v.verified[b].store(true, Ordering::Release);
        }
        Ok(v.sums.blocks())
    }

    pub fn len(&self) -> usize {
        self.lengths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lengths.is_empty()
    }

    /// Tokens `start..start + len` of sequence `i`.
    pub fn tokens(&self, i: usize, start: usize, len: usize) -> Result<Vec<u32>> {
        let Some(&l) = self.lengths.get(i) else { bail!("sequence {i} out of range ({} sequences)", self.len()) };
        ensure!(start + len <= l as usize, "tokens {start}..{} of sequence {i} of length {l}", start + len);
        let size = self.dtype.size();
        let from = self.pointers[i] as usize + start * size;
        if let Some(v) = &self.verify {
            for b in v.sums.blocks_of(from, from + len * size) {
                if !v.verified[b].load(Ordering::Acquire) {
                    v.sums.check_block(&self.bin, b, &v.path, &v.fix)?;
                    v.verified[b].store(true, Ordering::Release);
                }
            }
        }
        let bytes = &self.bin[from..from + len * size];
        Ok(match self.dtype {
            TokenDType::U16 => bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as u32).collect(),
            TokenDType::I32 => {
                bytes.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as u32).collect()
            }
        })
    }

    pub fn sequence(&self, i: usize) -> Result<Vec<u32>> {
        self.tokens(i, 0, self.lengths.get(i).copied().unwrap_or(0) as usize)
    }
}
