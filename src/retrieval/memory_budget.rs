//! `--memory-limit` (`retro preprocess`, `retro knn build`): the memory an index build holds besides the
//! memory-mapped files it reads and writes (the embeddings or `.npy`, the index being written: file pages
//! the kernel writes back and evicts as it needs). That is the k-means training sample (and IVF-PQ's
//! residuals of it), k-means' per-point assignment, the centroids with their sums and k-means++'s seed
//! sample, one block of rows being assigned, and every row's cell (4 bytes; IVF-PQ adds its m-byte code).
//! Under a limit the training sample is cut to fit, and said so; a limit too small for the rest is
//! refused before any work, naming what the build needs. No limit: the sample `training_rows` gives.

use super::index_file::ASSIGN_ROWS;
use super::index_spec::IndexSpec;
use crate::{bail, ensure, Result};

/// Bytes from "8G", "512M", "64K" (powers of 1024, an optional trailing B or iB) or a plain count.
pub fn parse_bytes(text: &str) -> Result<u64> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let unit = unit.trim().to_ascii_uppercase();
    let scale: u64 = match unit.trim_end_matches("IB").trim_end_matches('B') {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => bail!("--memory-limit {text:?}: a size such as 512M, 8G or a number of bytes"),
    };
    let value: f64 = number.parse().map_err(|_| crate::Error::msg(format!("--memory-limit {text:?}: not a size")))?;
    ensure!(value > 0.0, "--memory-limit {text:?}: must be positive");
    Ok((value * scale as f64) as u64)
}

/// What a build of `spec` over `n` rows of `dim` holds in memory: bytes that do not depend on the
/// training sample, and bytes per training row.
fn footprint(spec: IndexSpec, n: usize, dim: usize) -> (u64, u64) {
    let row = 4 * dim as u64;
    let block = ASSIGN_ROWS.min(n) as u64 * row;
    let Some(nlist) = spec.nlist(n) else { return (block, 0) };
    let nlist = nlist as u64;
    // Centroids (k-means', the quantizer's copy) in f32, their f64 sums, k-means++'s seed sample (32 per list).
    let centroids = nlist * row * 2 + nlist * 2 * row + nlist * 32 * row;
    let (code, residual) = match spec {
        IndexSpec::IvfPq { m, .. } => (m as u64, row),
        _ => (0, 0),
    };
    let per_row_of_database = 4 + code;
    // A block being assigned, and for IVF-PQ its residuals.
    let fixed = centroids + block * 2 + n as u64 * per_row_of_database;
    // A training row: itself, k-means' assignment of it, IVF-PQ's residual of it.
    (fixed, row + 8 + residual)
}

/// The k-means training sample to use under `limit`: `requested` (or the default, `default_ntrain`) when
/// it fits, else as many rows as fit (at least `least`), said on stderr; an error when even that does
/// not fit. `None` when there is no limit or the index trains nothing.
pub fn training_rows_within(
    limit: Option<u64>,
    spec: IndexSpec,
    n: usize,
    dim: usize,
    default_ntrain: usize,
    least: usize,
) -> Result<Option<usize>> {
    let Some(limit) = limit else { return Ok(None) };
    let (fixed, per_row) = footprint(spec, n, dim);
    let gib = |b: u64| match b {
        b if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        b => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
    };
    let Some(nlist) = spec.nlist(n) else {
        ensure!(fixed <= limit, "--memory-limit {}: the flat index's blocks need {}", gib(limit), gib(fixed));
        return Ok(None);
    };
    let need = fixed + per_row * least as u64;
    ensure!(
        need <= limit,
        "--memory-limit {}: IVF{nlist} over {n} vectors of dimension {dim} needs at least {} \
         (centroids, one block, the cells of every vector, and {least} training rows); raise the limit or use fewer lists",
        gib(limit),
        gib(need)
    );
    let fits = ((limit - fixed) / per_row) as usize;
    if fits >= default_ntrain {
        return Ok(Some(default_ntrain));
    }
    eprintln!(
        "retro: --memory-limit {}: training the index on {fits} rows instead of {default_ntrain} (each costs {} bytes)",
        gib(limit),
        per_row
    );
    Ok(Some(fits))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_bad_ones_are_refused() {
        assert_eq!(parse_bytes("512M").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("8G").unwrap(), 8 << 30);
        assert_eq!(parse_bytes("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        for bad in ["", "lots", "8X", "-1G", "0"] {
            assert!(parse_bytes(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_training_sample_is_cut_to_the_limit_and_a_too_small_limit_refused() {
        let spec = IndexSpec::IvfFlat { nlist: Some(1000) };
        let (n, dim) = (1_000_000, 384);
        assert_eq!(training_rows_within(None, spec, n, dim, 256_000, 1000).unwrap(), None);
        // Plenty: the default.
        assert_eq!(training_rows_within(Some(8 << 30), spec, n, dim, 256_000, 1000).unwrap(), Some(256_000));
        // 300 MiB: fewer rows, and what they cost fits.
        let limit = 300 << 20;
        let rows = training_rows_within(Some(limit), spec, n, dim, 256_000, 1000).unwrap().unwrap();
        let (fixed, per_row) = footprint(spec, n, dim);
        assert!((1000..256_000).contains(&rows) && fixed + per_row * rows as u64 <= limit, "{rows}");
        let err = training_rows_within(Some(50 << 20), spec, n, dim, 256_000, 1000).unwrap_err().to_string();
        assert!(err.contains("needs at least"), "{err}");
    }
}
