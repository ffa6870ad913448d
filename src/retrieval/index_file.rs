//! Index files (`retro knn build --out`), versioned and checksummed. Little-endian: magic `RETROIDX`,
//! u32 version 1, u32 kind (0 Flat, 1 IVF-Flat, 2 IVF-PQ), u32 metric (0 inner product, 1 L2), u32 dim,
//! u64 vector count n, u64 list count L (0 for Flat), f32 centroids [L, dim], u64 list lengths [L], i64 ids
//! [n] (IVF: list by list), then Flat / IVF-Flat: f32 vectors [n, dim] (in the same order); IVF-PQ: u64
//! m, f32 codebooks [m, 256, dim / m], u8 codes [n, m]. Then the checksum trailer
//! (`data::integrity::seal`). Another version, a truncated or damaged file is refused with its reason.

use super::assignment::Assignment;
use super::index_spec::IndexSpec;
use super::ivf::{IvfFlat, List};
use super::ivf_pq::{IvfPq, PqList};
use super::knn::{FlatIndex, Index, Metric, Neighbors};
use super::pq::{ProductQuantizer, CODEWORDS};
use crate::data::integrity;
use crate::{bail, ensure, Result};
use std::path::Path;

const MAGIC: &[u8; 8] = b"RETROIDX";

/// Every value of rows `vectors` (of `dim`; the first is row `first_row`) is finite, else an error naming
/// the row.
pub fn check_finite(vectors: &[f32], dim: usize, first_row: usize) -> Result<()> {
    if let Some(i) = vectors.iter().position(|v| !v.is_finite()) {
        bail!("vector {} holds {} (vectors must be finite)", first_row + i / dim.max(1), vectors[i]);
    }
    Ok(())
}
pub const VERSION: u32 = 1;
const FIX: &str = "rebuild it with `retro knn build`";

/// A built index of either kind.
pub enum AnyIndex {
    Flat(FlatIndex),
    Ivf(IvfFlat),
    IvfPq(IvfPq),
}

/// Training points per list at most (faiss's 256): a larger sample costs time and changes little.
const MAX_TRAIN_PER_LIST: usize = 256;

impl AnyIndex {
    /// Build `spec` over `vectors` (rows of `dim`; ids are row numbers). IVF trains k-means on a seeded
    /// sample of `ntrain` rows (default: 256 per list, at most all of them), then adds every row.
    pub fn build(
        spec: IndexSpec,
        dim: usize,
        metric: Metric,
        vectors: Vec<f32>,
        ntrain: Option<usize>,
        seed: u64,
    ) -> Result<Self> {
        ensure!(dim > 0 && vectors.len() % dim == 0, "{} values are not vectors of dimension {dim}", vectors.len());
        let n = vectors.len() / dim;
        check_finite(&vectors, dim, 0)?;
        let Some(rows) = Self::training_rows(spec, n, ntrain, seed)? else {
            return Ok(AnyIndex::Flat(FlatIndex::new(dim, metric, vectors)?));
        };
        let sample: Vec<f32> = rows.iter().flat_map(|&r| vectors[r * dim..(r + 1) * dim].iter().copied()).collect();
        let mut index = Self::train(spec, dim, metric, n, &sample, seed)?;
        let assignment = index.assign(&vectors)?;
        index.insert(&assignment, &vectors, 0)?;
        Ok(index)
    }

    /// The rows of a database of `n` vectors that an IVF `spec` trains on (sorted; seeded): `ntrain` of
    /// them (default 256 per list, at least the lists and, for PQ, 256 codewords' worth, at most `n`).
    /// `None` for the flat index, which trains nothing.
    pub fn training_rows(spec: IndexSpec, n: usize, ntrain: Option<usize>, seed: u64) -> Result<Option<Vec<usize>>> {
        ensure!(n > 0, "the database is empty: nothing to index");
        let Some(nlist) = spec.nlist(n) else { return Ok(None) };
        ensure!(nlist <= n, "IVF{nlist} needs at least {nlist} vectors to train on, the database has {n}");
        // PQ codebooks need 256 training residuals per subspace.
        let least = if matches!(spec, IndexSpec::IvfPq { .. }) { nlist.max(CODEWORDS) } else { nlist };
        let ntrain = ntrain.unwrap_or(MAX_TRAIN_PER_LIST * nlist).max(least).min(n);
        let mut rows = crate::rng::Rng::new(seed).sample_indices(n, ntrain);
        rows.sort_unstable();
        Ok(Some(rows))
    }

    /// An IVF `spec` for a database of `n` vectors trained on `sample` (the `training_rows`), no vectors yet.
    pub fn train(spec: IndexSpec, dim: usize, metric: Metric, n: usize, sample: &[f32], seed: u64) -> Result<Self> {
        check_finite(sample, dim, 0)?;
        let nlist = spec.nlist(n).ok_or_else(|| crate::Error::msg("the flat index is not trained"))?;
        Ok(match spec {
            IndexSpec::IvfPq { m, .. } => AnyIndex::IvfPq(IvfPq::train(dim, metric, nlist, m, sample, seed)?),
            _ => AnyIndex::Ivf(IvfFlat::train(dim, metric, nlist, sample, seed)?),
        })
    }

    /// The cells (and PQ codes) of rows `vectors` of an IVF index: the costly half of adding them.
    pub fn assign(&self, vectors: &[f32]) -> Result<Assignment> {
        check_finite(vectors, self.index().dim(), 0)?;
        match self {
            AnyIndex::Flat(_) => bail!("the flat index assigns no cells"),
            AnyIndex::Ivf(i) => Ok(Assignment { cells: i.assign(vectors)?, codes: Vec::new(), code_bytes: 0 }),
            AnyIndex::IvfPq(i) => {
                let (cells, codes) = i.assign(vectors)?;
                Ok(Assignment { cells, codes, code_bytes: i.m() })
            }
        }
    }

    /// Rows `vectors` (ids `first_id`, ...) into an IVF index's lists as `assignment` (from `assign` on
    /// the same rows) says.
    pub fn insert(&mut self, assignment: &Assignment, vectors: &[f32], first_id: i64) -> Result<()> {
        match self {
            AnyIndex::Flat(_) => bail!("the flat index has no lists"),
            AnyIndex::Ivf(i) => i.insert(&assignment.cells, vectors, first_id),
            AnyIndex::IvfPq(i) => {
                ensure!(
                    assignment.code_bytes == i.m(),
                    "an assignment of {}-byte codes for PQ{}",
                    assignment.code_bytes,
                    i.m()
                );
                i.insert(&assignment.cells, &assignment.codes, first_id)
            }
        }
    }

    pub fn index(&self) -> &dyn Index {
        match self {
            AnyIndex::Flat(f) => f,
            AnyIndex::Ivf(i) => i,
            AnyIndex::IvfPq(i) => i,
        }
    }

    /// Lists searched per query (IVF; the flat index searches everything).
    pub fn set_nprobe(&mut self, nprobe: usize) {
        match self {
            AnyIndex::Flat(_) => {}
            AnyIndex::Ivf(i) => i.set_nprobe(nprobe),
            AnyIndex::IvfPq(i) => i.set_nprobe(nprobe),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            AnyIndex::Flat(_) => "Flat".into(),
            AnyIndex::Ivf(i) => format!("IVF{},Flat", i.nlist()),
            AnyIndex::IvfPq(i) => format!("IVF{},PQ{}", i.nlist(), i.m()),
        }
    }

    /// Search with the queries' dimension checked against the index's.
    pub fn search(&self, queries: &[f32], dim: usize, k: usize) -> Result<Neighbors> {
        let index = self.index();
        ensure!(dim == index.dim(), "queries have dimension {dim}, the index {}", index.dim());
        ensure!(
            k <= index.len(),
            "k = {k} is larger than the index's {} vectors (ask for at most {})",
            index.len(),
            index.len()
        );
        index.search(queries, k)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let index = self.index();
        let mut b = Vec::new();
        b.extend_from_slice(MAGIC);
        let metric = match index.metric() {
            Metric::InnerProduct => 0u32,
            Metric::L2 => 1,
        };
        let (kind, centroids, lens, ids): (u32, &[f32], Vec<usize>, Vec<i64>) = match self {
            AnyIndex::Flat(f) => (0, &[], Vec::new(), (0..f.len() as i64).collect()),
            AnyIndex::Ivf(i) => (
                1,
                i.centroids(),
                i.lists().iter().map(|l| l.ids.len()).collect(),
                i.lists().iter().flat_map(|l| l.ids.iter().copied()).collect(),
            ),
            AnyIndex::IvfPq(i) => (
                2,
                i.centroids(),
                i.lists().iter().map(|l| l.ids.len()).collect(),
                i.lists().iter().flat_map(|l| l.ids.iter().copied()).collect(),
            ),
        };
        for v in [VERSION, kind, metric, index.dim() as u32] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&(index.len() as u64).to_le_bytes());
        b.extend_from_slice(&(lens.len() as u64).to_le_bytes());
        centroids.iter().for_each(|x| b.extend_from_slice(&x.to_le_bytes()));
        lens.iter().for_each(|&l| b.extend_from_slice(&(l as u64).to_le_bytes()));
        ids.iter().for_each(|id| b.extend_from_slice(&id.to_le_bytes()));
        match self {
            AnyIndex::Flat(f) => f.vectors().iter().for_each(|x| b.extend_from_slice(&x.to_le_bytes())),
            AnyIndex::Ivf(i) => {
                i.lists().iter().flat_map(|l| &l.vectors).for_each(|x| b.extend_from_slice(&x.to_le_bytes()))
            }
            AnyIndex::IvfPq(i) => {
                b.extend_from_slice(&(i.m() as u64).to_le_bytes());
                i.quantizer().codebooks.iter().for_each(|x| b.extend_from_slice(&x.to_le_bytes()));
                i.lists().iter().for_each(|l| b.extend_from_slice(&l.codes));
            }
        }
        integrity::seal(&mut b);
        crate::atomic_file::write(path, &b)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let b = integrity::read_sealed(path, FIX)?;
        let bad = |why: String| crate::Error::msg(format!("{}: {why}; {FIX}", path.display()));
        if b.len() < 40 || &b[..8] != MAGIC {
            return Err(bad("not a retro index file".into()));
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap()) as usize;
        if u32_at(8) != VERSION {
            return Err(bad(format!("index file version {}, this retro reads version {VERSION}", u32_at(8))));
        }
        let (kind, metric, dim, n, nlist) = (u32_at(12), u32_at(16), u32_at(20) as usize, u64_at(24), u64_at(32));
        let metric = match metric {
            0 => Metric::InnerProduct,
            1 => Metric::L2,
            m => return Err(bad(format!("unknown metric code {m}"))),
        };
        // Bytes after the ids: the vectors, or for IVF-PQ its m, codebooks and codes.
        let ids_at = 40 + 4 * nlist * dim + 8 * nlist;
        let tail_at = ids_at as u128 + 8 * n as u128;
        let tail = (b.len() as u128).checked_sub(tail_at);
        let m = if kind == 2 && tail.is_some_and(|t| t >= 8) { u64_at(tail_at as usize) } else { 0 };
        let tail_need = match kind {
            2 if m > 0 && dim % m == 0 => 8 + 4 * (CODEWORDS * dim) as u128 + (n * m) as u128,
            2 => u128::MAX,
            _ => 4 * (n * dim) as u128,
        };
        if dim == 0 || tail != Some(tail_need) {
            return Err(bad(format!("{} bytes do not hold {n} vectors of dimension {dim} in {nlist} lists", b.len())));
        }
        let f32s = |from: usize, count: usize| -> Vec<f32> {
            b[from..from + 4 * count].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
        };
        let centroids = f32s(40, nlist * dim);
        let lens_at = 40 + 4 * nlist * dim;
        let lens: Vec<usize> = (0..nlist).map(|i| u64_at(lens_at + 8 * i)).collect();
        let ids: Vec<i64> =
            b[ids_at..ids_at + 8 * n].chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect();
        let tail_at = tail_at as usize;
        if kind != 0 && lens.iter().sum::<usize>() != n {
            return Err(bad("list lengths do not add up to the vector count".into()));
        }
        // Rows `at..at + len` of each list, in list order.
        let spans: Vec<(usize, usize)> = lens
            .iter()
            .scan(0, |at, &len| {
                *at += len;
                Some((*at - len, len))
            })
            .collect();
        match kind {
            0 => Ok(AnyIndex::Flat(FlatIndex::new(dim, metric, f32s(tail_at, n * dim))?)),
            1 => {
                let vectors = f32s(tail_at, n * dim);
                let lists = spans
                    .iter()
                    .map(|&(at, len)| List {
                        ids: ids[at..at + len].to_vec(),
                        vectors: vectors[at * dim..(at + len) * dim].to_vec(),
                        ..Default::default()
                    })
                    .collect();
                Ok(AnyIndex::Ivf(IvfFlat::from_parts(dim, metric, centroids, lists)?))
            }
            2 => {
                let codebooks = f32s(tail_at + 8, CODEWORDS * dim);
                let codes = &b[tail_at + 8 + 4 * CODEWORDS * dim..];
                let lists = spans
                    .iter()
                    .map(|&(at, len)| PqList {
                        ids: ids[at..at + len].to_vec(),
                        codes: codes[at * m..(at + len) * m].to_vec(),
                    })
                    .collect();
                let pq = ProductQuantizer { dim, m, codebooks };
                Ok(AnyIndex::IvfPq(IvfPq::from_parts(dim, metric, centroids, pq, lists)?))
            }
            k => bail!("{}: unknown index kind {k}; {FIX}", path.display()),
        }
    }
}
