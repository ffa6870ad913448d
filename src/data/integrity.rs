//! Checksums for every file retro writes into a project or a checkpoint, verified before use, so corrupt
//! data is refused with a message naming the file, the block and what to rerun, never trained on.
//!
//! CRC-32C (Castagnoli, SSE4.2's `crc32` instruction through the `crc32c` crate) over blocks of 1 MiB:
//! a reader verifies exactly the blocks it reads, so verification costs no more than reading.
//!
//! - Our binary formats (chunk database, sample index, neighbour stores, embedding and neighbour blocks)
//!   end in a trailer (`seal` / `unseal`): u32 CRC-32C of each block of the bytes before it, u32 block
//!   size, u64 block count, u32 CRC-32C of those trailer fields, magic `RETROSUM`.
//! - Megatron's `.bin` / `.idx` stay byte-identical to Megatron's: their block checksums, and
//!   config.json's, are in the tokenize stage's record (`preprocess::project::Checksums`).
//! - JSON records (stage records, checkpoint state) carry a `crc32c` field first, over their own exact
//!   bytes (`seal_json` / `unseal_json`).

use crate::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;

pub const BLOCK_BYTES: usize = 1 << 20;
const TRAILER_MAGIC: &[u8; 8] = b"RETROSUM";
/// u32 block size, u64 block count, u32 trailer checksum, magic.
const TRAILER_FIXED: usize = 4 + 8 + 4 + 8;

pub fn crc(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// The CRC-32C of each `block_bytes` block of a file of `bytes` bytes (the last block may be shorter).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sums {
    pub bytes: u64,
    pub block_bytes: u64,
    pub crc32c: Vec<u32>,
}

/// What a corrupt file's error says: the file, the block, and how to rewrite it.
pub fn corrupt(path: &Path, what: &str, fix: &str) -> crate::Error {
    crate::Error::msg(format!("{}: {what}: the file is corrupt; {fix}", path.display()))
}

/// The fix for a project file written by preprocessing stage `stage`.
pub fn rerun(stage: &str) -> String {
    format!("rerun `retro preprocess --stage {stage}` on this project to rewrite it")
}

impl Sums {
    pub fn of(bytes: &[u8]) -> Self {
        Self {
            bytes: bytes.len() as u64,
            block_bytes: BLOCK_BYTES as u64,
            crc32c: bytes.chunks(BLOCK_BYTES).map(crc).collect(),
        }
    }

    pub fn blocks(&self) -> usize {
        self.crc32c.len()
    }

    /// The byte range of block `b`.
    pub fn range(&self, b: usize) -> std::ops::Range<usize> {
        let start = b * self.block_bytes as usize;
        start..(start + self.block_bytes as usize).min(self.bytes as usize)
    }

    /// The blocks overlapping bytes `from..to`.
    pub fn blocks_of(&self, from: usize, to: usize) -> std::ops::Range<usize> {
        if to <= from {
            return 0..0;
        }
        let b = self.block_bytes as usize;
        from / b..to.div_ceil(b)
    }

    /// The file's length and block layout agree with these sums.
    pub fn check_len(&self, len: usize, path: &Path, fix: &str) -> Result<()> {
        let blocks_ok = self.block_bytes > 0 && self.crc32c.len() as u64 == self.bytes.div_ceil(self.block_bytes);
        if !blocks_ok {
            return Err(corrupt(path, "its checksum record is malformed", fix));
        }
        if len as u64 != self.bytes {
            return Err(corrupt(path, &format!("{len} bytes, its checksums were taken over {}", self.bytes), fix));
        }
        Ok(())
    }

    /// Verify block `b` of `data` (the whole file).
    pub fn check_block(&self, data: &[u8], b: usize, path: &Path, fix: &str) -> Result<()> {
        let r = self.range(b);
        if crc(&data[r.clone()]) != self.crc32c[b] {
            let what =
                format!("block {b} of {} (bytes {}..{}) does not match its checksum", self.blocks(), r.start, r.end);
            return Err(corrupt(path, &what, fix));
        }
        Ok(())
    }

    /// Verify the whole file.
    pub fn check(&self, data: &[u8], path: &Path, fix: &str) -> Result<()> {
        self.check_len(data.len(), path, fix)?;
        (0..self.blocks()).try_for_each(|b| self.check_block(data, b, path, fix))
    }
}

/// Append the checksum trailer to a file's bytes (header and payload).
pub fn seal(bytes: &mut Vec<u8>) {
    let payload = bytes.len();
    bytes.resize(sealed_len(payload), 0);
    seal_in_place(bytes, payload);
}

/// The length of a sealed file whose payload is `payload` bytes.
pub fn sealed_len(payload: usize) -> usize {
    payload + 4 * payload.div_ceil(BLOCK_BYTES) + TRAILER_FIXED
}

/// A sealed file of a `payload`-byte body written in place (`atomic_file::write_mapped`): `fill` writes
/// the body into the map, then the trailer is computed from the map (read through in order) without a
/// second copy of the file in memory.
pub fn write_sealed_mapped(path: &Path, payload: usize, fill: impl FnOnce(&mut [u8]) -> Result<()>) -> Result<()> {
    crate::atomic_file::write_mapped(path, sealed_len(payload), |map| {
        fill(&mut map[..payload])?;
        // Never empty: a sealed file holds at least its trailer.
        map.advise(memmap2::Advice::Sequential).with_context(|| format!("advising {}", path.display()))?;
        seal_in_place(map, payload);
        Ok(())
    })
}

/// Write the checksum trailer of `file[..payload]` into the rest of `file` (`sealed_len(payload)` bytes
/// long).
fn seal_in_place(file: &mut [u8], payload: usize) {
    assert_eq!(file.len(), sealed_len(payload), "a sealed file's length");
    let (body, trailer) = file.split_at_mut(payload);
    let blocks = payload.div_ceil(BLOCK_BYTES);
    for (slot, block) in trailer.chunks_exact_mut(4).zip(body.chunks(BLOCK_BYTES)) {
        slot.copy_from_slice(&crc(block).to_le_bytes());
    }
    let fixed = 4 * blocks;
    trailer[fixed..fixed + 4].copy_from_slice(&(BLOCK_BYTES as u32).to_le_bytes());
    trailer[fixed + 4..fixed + 12].copy_from_slice(&(blocks as u64).to_le_bytes());
    let trailer_crc = crc(&trailer[..fixed + 12]);
    trailer[fixed + 12..fixed + 16].copy_from_slice(&trailer_crc.to_le_bytes());
    trailer[fixed + 16..].copy_from_slice(TRAILER_MAGIC);
}

/// Verify a sealed file's bytes and return them without the trailer.
pub fn unseal<'a>(bytes: &'a [u8], path: &Path, fix: &str) -> Result<&'a [u8]> {
    let n = bytes.len();
    if n < TRAILER_FIXED || &bytes[n - 8..] != TRAILER_MAGIC {
        return Err(corrupt(
            path,
            "no checksum trailer at its end (truncated, extended, or written by a retro older than checksums)",
            fix,
        ));
    }
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
    let block_bytes = u32_at(n - TRAILER_FIXED) as usize;
    let blocks = u64::from_le_bytes(bytes[n - 20..n - 12].try_into().unwrap());
    let sums_len = blocks.checked_mul(4).filter(|&l| l <= (n - TRAILER_FIXED) as u64);
    let Some(sums_len) = sums_len else {
        return Err(corrupt(path, "its checksum trailer is damaged", fix));
    };
    let trailer = n - TRAILER_FIXED - sums_len as usize;
    if crc(&bytes[trailer..n - 12]) != u32_at(n - 12) || block_bytes == 0 {
        return Err(corrupt(path, "its checksum trailer is damaged", fix));
    }
    let sums = Sums {
        bytes: trailer as u64,
        block_bytes: block_bytes as u64,
        crc32c: (0..blocks as usize).map(|i| u32_at(trailer + 4 * i)).collect(),
    };
    sums.check(&bytes[..trailer], path, fix)?;
    Ok(&bytes[..trailer])
}

/// Read a sealed file whole, verified; returns its bytes without the trailer.
pub fn read_sealed(path: &Path, fix: &str) -> Result<Vec<u8>> {
    let mut bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let len = unseal(&bytes, path, fix)?.len();
    bytes.truncate(len);
    Ok(bytes)
}

/// Map a sealed file and verify it whole; returns the map and its payload's length (the bytes before the
/// trailer). The pages verification read are then released, so the file costs page cache that is read
/// back as it is used, not memory: how files that grow with the corpus (the chunk database, neighbour
/// stores, indexes) are read, whatever their size.
pub fn map_sealed(path: &Path, fix: &str) -> Result<(std::sync::Arc<memmap2::Mmap>, usize)> {
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let len = file.metadata().with_context(|| format!("reading {}", path.display()))?.len();
    if len == 0 {
        unseal(&[], path, fix)?; // the error an empty file gets (an empty file cannot be mapped)
    }
    // SAFETY: retro's files are written once (a temporary renamed into place) and never changed after.
    let map = unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("mapping {}", path.display()))?;
    let payload = unseal(&map, path, fix)?.len();
    // SAFETY: a read-only file mapping: released pages are read back from the file when next touched.
    let _ = unsafe { map.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
    Ok((std::sync::Arc::new(map), payload))
}

/// How a sealed JSON record begins: its checksum first, over the file's exact bytes with these eight
/// digits read as zeros.
const JSON_HEAD: &str = "{\n  \"crc32c\": \"";
const JSON_ZEROS: &str = "00000000";

/// A JSON object, pretty-printed, with a `crc32c` field first: the CRC-32C (hex) of the file's exact bytes
/// with that field's digits as zeros. Any changed byte, whitespace included, fails `unseal_json`.
pub fn seal_json(mut value: Value) -> Result<String> {
    let Some(obj) = value.as_object_mut() else { bail!("only a JSON object can carry its checksum") };
    obj.remove("crc32c");
    ensure!(!obj.is_empty(), "an empty record has nothing to seal");
    let body = serde_json::to_string_pretty(&value)?;
    let mut text = format!("{JSON_HEAD}{JSON_ZEROS}\",{}", &body[1..]);
    let sum = format!("{:08x}", crc(text.as_bytes()));
    text.replace_range(JSON_HEAD.len()..JSON_HEAD.len() + 8, &sum);
    Ok(text)
}

/// Read a record written by `seal_json` from `path`, verified.
pub fn read_sealed_json(path: &Path, fix: &str) -> Result<Value> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let text = String::from_utf8(bytes).map_err(|_| corrupt(path, "not UTF-8 text", fix))?;
    unseal_json(&text, path, fix)
}

/// Verify a record written by `seal_json` and parse it; returns it without `crc32c`.
pub fn unseal_json(text: &str, path: &Path, fix: &str) -> Result<Value> {
    let digits = JSON_HEAD.len()..JSON_HEAD.len() + 8;
    let stored = text
        .strip_prefix(JSON_HEAD)
        .and_then(|rest| rest.get(..8))
        .filter(|hex| hex.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)))
        .and_then(|hex| u32::from_str_radix(hex, 16).ok())
        .ok_or_else(|| {
            corrupt(path, "no crc32c field at its start (damaged, or written by a retro older than checksums)", fix)
        })?;
    let mut zeroed = text.to_string();
    zeroed.replace_range(digits, JSON_ZEROS);
    if crc(zeroed.as_bytes()) != stored {
        return Err(corrupt(path, "its content does not match its crc32c field", fix));
    }
    let mut value: Value =
        serde_json::from_str(text).map_err(|e| corrupt(path, &format!("not valid JSON ({e})"), fix))?;
    let Some(obj) = value.as_object_mut() else { return Err(corrupt(path, "not a JSON object", fix)) };
    obj.remove("crc32c");
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_answer() {
        // RFC 3720 (iSCSI) B.4: 32 bytes of zeros.
        assert_eq!(crc(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn sealed_bytes_round_trip_and_every_damage_is_refused() {
        let path = Path::new("x.bin");
        let payload: Vec<u8> = (0..(2 * BLOCK_BYTES + 77)).map(|i| (i * 31 % 251) as u8).collect();
        let mut sealed = payload.clone();
        seal(&mut sealed);
        assert_eq!(unseal(&sealed, path, "fix").unwrap(), &payload[..]);
        // A flipped bit in each block is named by its block.
        for (at, block) in [(5, 0), (BLOCK_BYTES + 3, 1), (2 * BLOCK_BYTES + 10, 2)] {
            let mut bad = sealed.clone();
            bad[at] ^= 0x10;
            let e = unseal(&bad, path, "fix").unwrap_err().to_string();
            assert!(e.contains(&format!("block {block} of 3")) && e.contains("x.bin") && e.contains("fix"), "{e}");
        }
        // The trailer itself, truncation, appended bytes.
        let mut bad = sealed.clone();
        let n = bad.len();
        bad[n - 15] ^= 1;
        assert!(unseal(&bad, path, "fix").unwrap_err().to_string().contains("trailer"));
        assert!(unseal(&sealed[..n - 1], path, "fix").is_err());
        assert!(unseal(&sealed[..100], path, "fix").is_err());
        let mut longer = sealed.clone();
        longer.extend_from_slice(b"tail");
        assert!(unseal(&longer, path, "fix").is_err());
        // Empty payloads seal too.
        let mut empty = Vec::new();
        seal(&mut empty);
        assert!(unseal(&empty, path, "fix").unwrap().is_empty());
    }

    #[test]
    fn sealed_json_refuses_any_changed_byte() {
        let path = Path::new("state.json");
        let record = serde_json::json!({"iteration": 30, "loss": 2.5, "name": "run", "files": {"a": [1, 2]}});
        let text = seal_json(record.clone()).unwrap();
        assert_eq!(unseal_json(&text, path, "fix").unwrap(), record);
        let parsed: Value = serde_json::from_str(&text).unwrap();
        assert!(parsed["crc32c"].is_string(), "{text}");
        // Every single-bit flip of every byte is refused (whitespace included).
        for i in 0..text.len() {
            for bit in 0..8 {
                let mut bad = text.clone().into_bytes();
                bad[i] ^= 1 << bit;
                let Ok(bad) = String::from_utf8(bad) else { continue };
                assert!(unseal_json(&bad, path, "fix").is_err(), "byte {i} bit {bit}: {bad}");
            }
        }
        assert!(unseal_json("{\"a\": 1}", path, "fix").unwrap_err().to_string().contains("no crc32c"));
    }
}
