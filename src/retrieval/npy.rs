//! NumPy `.npy` files (format versions 1-3) for `retro knn`: 2-D float32 matrices in C order in; int64 and
//! float32 matrices out, readable by `numpy.load`. Anything else (float64, Fortran order, other ranks) is
//! refused naming what it is and what is expected.

use crate::data::stored::Stored;
use crate::{bail, ensure, Context, Result};
use std::path::Path;
use std::sync::Arc;

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// A float32 matrix: (rows, columns, values row by row), read in place from the memory-mapped file (a
/// database larger than memory is paged in as it is read).
pub fn read_f32(path: &Path) -> Result<(usize, usize, Stored<f32>)> {
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let empty = file.metadata().with_context(|| format!("reading {}", path.display()))?.len() == 0;
    // SAFETY: the file is only read; a .npy changed while it is read is the caller's to avoid.
    let map = (!empty)
        .then(|| unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("mapping {}", path.display())))
        .transpose()?
        .map(Arc::new);
    let b: &[u8] = map.as_deref().map(|m| &m[..]).unwrap_or_default();
    let bad = |why: &str| crate::Error::msg(format!("{}: {why}", path.display()));
    if b.len() < 10 || &b[..6] != MAGIC {
        return Err(bad("not a .npy file"));
    }
    let (header_len, start) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        2 | 3 if b.len() >= 12 => (u32::from_le_bytes(b[8..12].try_into().unwrap()) as usize, 12),
        v => return Err(bad(&format!(".npy format version {v} (1, 2 or 3 expected)"))),
    };
    let header = b.get(start..start + header_len).ok_or_else(|| bad("truncated header"))?;
    let header = std::str::from_utf8(header).map_err(|_| bad("header is not text"))?;
    let field = |key: &str| -> Option<&str> {
        let at = header.find(&format!("'{key}':"))? + key.len() + 3;
        Some(header[at..].trim_start())
    };
    let descr = field("descr").ok_or_else(|| bad("header without 'descr'"))?;
    if !descr.starts_with("'<f4'") {
        let got = descr.split(',').next().unwrap_or("?");
        return Err(bad(&format!("dtype {got}, expected float32 ('<f4'): convert with x.astype(numpy.float32)")));
    }
    let fortran = field("fortran_order").ok_or_else(|| bad("header without 'fortran_order'"))?;
    if fortran.starts_with("True") {
        return Err(bad("Fortran (column-major) order, expected C order: save numpy.ascontiguousarray(x)"));
    }
    let shape = field("shape").ok_or_else(|| bad("header without 'shape'"))?;
    let inner = shape.strip_prefix('(').and_then(|s| s.split(')').next()).ok_or_else(|| bad("unreadable shape"))?;
    let dims: Vec<usize> = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| bad("unreadable shape")))
        .collect::<Result<_>>()?;
    let [rows, cols] = dims[..] else {
        return Err(bad(&format!("shape ({inner}), expected a 2-D matrix (vectors, dimension)")));
    };
    let data = &b[start + header_len..];
    ensure!(
        data.len() == 4 * rows * cols,
        "{}: {} bytes of data for a {rows} x {cols} float32 matrix (truncated?)",
        path.display(),
        data.len()
    );
    let values: Stored<f32> = match &map {
        Some(map) => Stored::mapped(map, start + header_len, rows * cols),
        None => Stored::default(),
    };
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        bail!(
            "{}: row {}, column {} is {} (vectors must be finite)",
            path.display(),
            i / cols.max(1),
            i % cols.max(1),
            values[i]
        );
    }
    Ok((rows, cols, values))
}

fn write(path: &Path, descr: &str, rows: usize, cols: usize, data: Vec<u8>) -> Result<()> {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // Pad with spaces so that magic + version + length + header + newline is a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut b = Vec::with_capacity(10 + header.len() + data.len());
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&[1, 0]);
    b.extend_from_slice(&(header.len() as u16).to_le_bytes());
    b.extend_from_slice(header.as_bytes());
    b.extend(data);
    crate::atomic_file::write(path, &b)
}

pub fn write_i64(path: &Path, rows: usize, cols: usize, values: &[i64]) -> Result<()> {
    write(path, "<i8", rows, cols, values.iter().flat_map(|v| v.to_le_bytes()).collect())
}

pub fn write_f32(path: &Path, rows: usize, cols: usize, values: &[f32]) -> Result<()> {
    write(path, "<f4", rows, cols, values.iter().flat_map(|v| v.to_le_bytes()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_round_trip_and_refusals() {
        let dir = std::env::temp_dir().join(format!("retro-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.npy");
        write_f32(&p, 2, 3, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let (rows, cols, values) = read_f32(&p).unwrap();
        assert!(values.is_mapped(), "read in place");
        assert_eq!((rows, cols, &values[..]), (2, 3, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0][..]));
        let header_end = std::fs::read(&p).unwrap().len() - 24;
        assert_eq!(header_end % 64, 0, "numpy's header alignment");
        write_i64(&p, 1, 2, &[7, -1]).unwrap();
        assert!(read_f32(&p).unwrap_err().to_string().contains("'<i8'"));
        write_f32(&p, 1, 1, &[f32::NAN]).unwrap();
        assert!(read_f32(&p).unwrap_err().to_string().contains("NaN"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
