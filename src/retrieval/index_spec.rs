//! Index strings in faiss's vocabulary: `Flat`, `IVF{n},Flat`, `IVFauto` / `IVFauto,Flat` (n chosen from
//! the database size). Product quantization (`IVF{n},PQ{m}`) is not built yet and is refused by name.

use crate::{bail, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexSpec {
    Flat,
    /// `nlist` None: chosen from the database size by `auto_nlist`.
    IvfFlat {
        nlist: Option<usize>,
    },
}

impl IndexSpec {
    pub fn parse(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        let bad = || -> Result<Self> {
            bail!("index {s:?}: expected Flat, IVF<n>,Flat, IVFauto or IVFauto,Flat (faiss's vocabulary)")
        };
        match parts.as_slice() {
            ["Flat"] => Ok(IndexSpec::Flat),
            [ivf] | [ivf, "Flat"] if ivf.starts_with("IVF") => {
                let n = &ivf[3..];
                if n == "auto" {
                    return Ok(IndexSpec::IvfFlat { nlist: None });
                }
                match n.parse::<usize>() {
                    Ok(nlist) if nlist > 0 => Ok(IndexSpec::IvfFlat { nlist: Some(nlist) }),
                    _ => bad(),
                }
            }
            [ivf, pq] if ivf.starts_with("IVF") && pq.starts_with("PQ") => {
                bail!("index {s:?}: product quantization (PQ) is not built yet; use IVF<n>,Flat or Flat")
            }
            _ => bad(),
        }
    }

    /// The number of lists for a database of `n` vectors.
    pub fn nlist(&self, n: usize) -> Option<usize> {
        match self {
            IndexSpec::Flat => None,
            IndexSpec::IvfFlat { nlist: Some(l) } => Some(*l),
            IndexSpec::IvfFlat { nlist: None } => Some(auto_nlist(n)),
        }
    }
}

/// About 4·sqrt(n) lists, with at least 39 training points per list and never more lists than points
/// (Megatron's fixed IVF sizes crashed on small corpora: Megatron-LM issue 699).
pub fn auto_nlist(n: usize) -> usize {
    let target = (4.0 * (n as f64).sqrt()).round() as usize;
    target.min(n / 39).min(n).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faiss_strings_and_auto_sizes() {
        assert_eq!(IndexSpec::parse("Flat").unwrap(), IndexSpec::Flat);
        assert_eq!(IndexSpec::parse("IVF1024,Flat").unwrap(), IndexSpec::IvfFlat { nlist: Some(1024) });
        assert_eq!(IndexSpec::parse("IVF64").unwrap(), IndexSpec::IvfFlat { nlist: Some(64) });
        assert_eq!(IndexSpec::parse("IVFauto,Flat").unwrap(), IndexSpec::IvfFlat { nlist: None });
        for bad in ["IVF0,Flat", "IVFx", "HNSW32", "Flat,Flat", ""] {
            assert!(IndexSpec::parse(bad).is_err(), "{bad}");
        }
        assert!(IndexSpec::parse("IVF65536_HNSW8,PQ32").is_err());
        assert!(IndexSpec::parse("IVF1024,PQ32").unwrap_err().to_string().contains("not built yet"));
        assert_eq!(auto_nlist(1_000_000), 4000);
        assert_eq!(auto_nlist(10_000), 256); // 39 points per list bound it
        assert_eq!(auto_nlist(10), 1);
        assert_eq!(auto_nlist(0), 1);
    }
}
