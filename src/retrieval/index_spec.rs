//! Index strings in faiss's vocabulary: `Flat`, `IVF{n},Flat`, `IVF{n},PQ{m}` (8-bit codes), with `auto`
//! for n (chosen from the database size): `IVFauto`, `IVFauto,Flat`, `IVFauto,PQ{m}`.

use crate::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexSpec {
    Flat,
    /// `nlist` None: chosen from the database size by `auto_nlist`.
    IvfFlat {
        nlist: Option<usize>,
    },
    /// IVF cells with residuals product-quantized into `m` bytes.
    IvfPq {
        nlist: Option<usize>,
        m: usize,
    },
}

impl IndexSpec {
    pub fn parse(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        let bad = || {
            crate::Error::msg(format!(
                "index {s:?}: expected Flat, IVF<n>,Flat or IVF<n>,PQ<m>, n a number or auto (faiss's vocabulary)"
            ))
        };
        let nlist = |ivf: &str| -> Result<Option<usize>> {
            match &ivf[3..] {
                "auto" => Ok(None),
                n => n.parse::<usize>().ok().filter(|&l| l > 0).map(Some).ok_or_else(bad),
            }
        };
        match parts.as_slice() {
            ["Flat"] => Ok(IndexSpec::Flat),
            [ivf] | [ivf, "Flat"] if ivf.starts_with("IVF") => Ok(IndexSpec::IvfFlat { nlist: nlist(ivf)? }),
            [ivf, pq] if ivf.starts_with("IVF") && pq.starts_with("PQ") => {
                let m = pq[2..].parse::<usize>().ok().filter(|&m| m > 0).ok_or_else(bad)?;
                Ok(IndexSpec::IvfPq { nlist: nlist(ivf)?, m })
            }
            _ => Err(bad()),
        }
    }

    /// The number of lists for a database of `n` vectors.
    pub fn nlist(&self, n: usize) -> Option<usize> {
        match self {
            IndexSpec::Flat => None,
            IndexSpec::IvfFlat { nlist: Some(l) } | IndexSpec::IvfPq { nlist: Some(l), .. } => Some(*l),
            IndexSpec::IvfFlat { nlist: None } | IndexSpec::IvfPq { nlist: None, .. } => Some(auto_nlist(n)),
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
        assert_eq!(IndexSpec::parse("IVF1024,PQ32").unwrap(), IndexSpec::IvfPq { nlist: Some(1024), m: 32 });
        assert_eq!(IndexSpec::parse("IVFauto,PQ48").unwrap(), IndexSpec::IvfPq { nlist: None, m: 48 });
        assert!(IndexSpec::parse("IVF16,PQ0").is_err() && IndexSpec::parse("IVF16,PQx").is_err());
        assert_eq!(auto_nlist(1_000_000), 4000);
        assert_eq!(auto_nlist(10_000), 256); // 39 points per list bound it
        assert_eq!(auto_nlist(10), 1);
        assert_eq!(auto_nlist(0), 1);
    }
}
