//! Exact k-nearest-neighbour search: blocked score GEMMs (a block of queries against a block of database
//! vectors) feeding a per-query top-k selection (`top_k.rs`), query blocks in parallel. Inner product or L2. The
//! [`Index`] trait is what the IVF indexes of [retrieval-scale] implement too.

pub(crate) use super::top_k::{Entry, TopK};
use crate::backend::cpu::gemm;
use crate::data::stored::Stored;
use crate::{ensure, Result};
use rayon::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Metric {
    /// Larger inner product is nearer (cosine for unit vectors).
    InnerProduct,
    /// Smaller squared Euclidean distance is nearer.
    L2,
}

/// Results for `nq` queries: row q holds its `k` neighbours, nearest first. Scores are inner products
/// (InnerProduct) or squared distances (L2). Rows with fewer than k database vectors end in id -1.
#[derive(Debug, Clone, PartialEq)]
pub struct Neighbors {
    pub k: usize,
    pub ids: Vec<i64>,
    pub scores: Vec<f32>,
}

impl Neighbors {
    /// Results for the rows of `queries` (dimension `d`), every id -1 and score NaN until filled in;
    /// returns (number of queries, results).
    pub(crate) fn unfilled(queries: &[f32], d: usize, k: usize) -> Result<(usize, Self)> {
        ensure!(queries.len() % d == 0, "search: {} query values are not rows of dimension {d}", queries.len());
        let nq = queries.len() / d;
        Ok((nq, Self { k, ids: vec![-1; nq * k], scores: vec![f32::NAN; nq * k] }))
    }
}

pub trait Index: Send + Sync {
    fn dim(&self) -> usize;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn metric(&self) -> Metric;
    /// `queries` holds nq·dim values, row-major.
    fn search(&self, queries: &[f32], k: usize) -> Result<Neighbors>;
}

/// Every database vector, compared with every query (faiss' IndexFlat).
pub struct FlatIndex {
    dim: usize,
    metric: Metric,
    /// [n, dim], in memory or read in place from a mapped file.
    vectors: Stored<f32>,
    /// |x|² of each vector, for L2 only (inner product ranks without them).
    sq_norms: Vec<f32>,
}

/// Database vectors per score GEMM; each GEMM packs its block of the database once for all the queries
/// of a query block, so query blocks are made as large as the thread count allows.
const DB_BLOCK: usize = 2048;
const MAX_QUERY_BLOCK: usize = 512;

impl FlatIndex {
    pub fn new(dim: usize, metric: Metric, vectors: impl Into<Stored<f32>>) -> Result<Self> {
        let vectors = vectors.into();
        ensure!(
            dim > 0 && vectors.len() % dim == 0,
            "flat index: {} values are not rows of dimension {dim}",
            vectors.len()
        );
        let sq_norms = squared_norms(&vectors, dim, metric);
        Ok(Self { dim, metric, vectors, sq_norms })
    }

    /// The database vectors, row by row in id order.
    pub fn vectors(&self) -> &[f32] {
        &self.vectors
    }
}

/// |x|² of each row of `vectors`: what L2 ranking needs; nothing for inner product.
pub(crate) fn squared_norms(vectors: &[f32], dim: usize, metric: Metric) -> Vec<f32> {
    match metric {
        Metric::L2 => vectors.chunks(dim).map(squared_norm).collect(),
        Metric::InnerProduct => Vec::new(),
    }
}

/// |x|², summed in element order: every index's L2 norms, of vectors and queries alike.
pub(crate) fn squared_norm(x: &[f32]) -> f32 {
    x.iter().map(|v| v * v).sum()
}

/// Dot product with eight independent partial sums (vectorisable; a fixed order, so deterministic).
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

impl Index for FlatIndex {
    fn dim(&self) -> usize {
        self.dim
    }
    fn len(&self) -> usize {
        self.vectors.len() / self.dim
    }
    fn metric(&self) -> Metric {
        self.metric
    }

    fn search(&self, queries: &[f32], k: usize) -> Result<Neighbors> {
        let d = self.dim;
        let (nq, mut out) = Neighbors::unfilled(queries, d, k)?;
        if k == 0 || nq == 0 {
            return Ok(out);
        }
        let Neighbors { ids, scores, .. } = &mut out;
        let query_block = nq.div_ceil(rayon::current_num_threads()).clamp(1, MAX_QUERY_BLOCK);
        let blocks = ids.par_chunks_mut(query_block * k).zip(scores.par_chunks_mut(query_block * k));
        blocks.enumerate().for_each(|(blk, (ids, scores))| {
            let q = &queries[blk * query_block * d..][..ids.len() / k * d];
            for (qi, top) in self.search_block(q, k).into_iter().enumerate() {
                let qnorm = squared_norm(&q[qi * d..(qi + 1) * d]);
                for (r, Entry(s, id)) in top.into_sorted().into_iter().enumerate() {
                    ids[qi * k + r] = id;
                    scores[qi * k + r] = match self.metric {
                        Metric::InnerProduct => s,
                        Metric::L2 => qnorm - s,
                    };
                }
            }
        });
        Ok(out)
    }
}

impl FlatIndex {
    /// Top-k selections of the queries `q` (rows of dim) against the whole database, one score GEMM per
    /// database block. L2 ranks by 2·q·x − |x|² (|q|² is the same for every candidate).
    fn search_block(&self, q: &[f32], k: usize) -> Vec<TopK> {
        let (d, n) = (self.dim, self.len());
        let qn = q.len() / d;
        let mut tops: Vec<TopK> = (0..qn).map(|_| TopK::new(k)).collect();
        let mut block = vec![0f32; qn * DB_BLOCK];
        for x0 in (0..n).step_by(DB_BLOCK) {
            let xn = DB_BLOCK.min(n - x0);
            let x = &self.vectors[x0 * d..(x0 + xn) * d];
            let norms = (self.metric == Metric::L2).then(|| &self.sq_norms[x0..x0 + xn]);
            selection_scores(q, x, d, norms, &mut block[..qn * xn]);
            for (top, row) in tops.iter_mut().zip(block.chunks(xn)) {
                top.push_scores(row, x0);
            }
        }
        tops
    }
}

/// The selection scores of the rows of `q` against the `xn` rows of `x` (both of dimension `d`) into
/// `out` [rows of q, xn], by one GEMM: inner products, or for L2 (`sq_norms`: |x|² of x's rows)
/// 2·q·x − |x|², which ranks as −|q − x|² does (|q|² is the same for every candidate). Every index
/// scores its candidates here, so the same query and vector get the same score in each.
pub(crate) fn selection_scores(q: &[f32], x: &[f32], d: usize, sq_norms: Option<&[f32]>, out: &mut [f32]) {
    let (qn, xn) = (q.len() / d, x.len() / d);
    assert!(q.len() == qn * d && x.len() == xn * d && out.len() == qn * xn, "score block shapes");
    // SAFETY: q is [qn, d], x is [xn, d] read transposed, out holds qn·xn (checked above).
    unsafe {
        gemm::strided(
            qn,
            d,
            xn,
            q.as_ptr(),
            d as isize,
            1,
            x.as_ptr(),
            1,
            d as isize,
            0.0,
            out.as_mut_ptr(),
            xn as isize,
            1,
        )
    };
    if let Some(norms) = sq_norms {
        for row in out.chunks_mut(xn.max(1)) {
            for (s, &norm) in row.iter_mut().zip(norms) {
                *s = 2.0 * *s - norm;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn brute(db: &[f32], q: &[f32], d: usize, k: usize, metric: Metric) -> Vec<i64> {
        let n = db.len() / d;
        let mut all: Vec<(f64, i64)> = (0..n)
            .map(|i| {
                let x = &db[i * d..(i + 1) * d];
                let s = match metric {
                    Metric::InnerProduct => x.iter().zip(q).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>(),
                    Metric::L2 => -x.iter().zip(q).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum::<f64>(),
                };
                (s, i as i64)
            })
            .collect();
        all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        all.iter().take(k).map(|x| x.1).collect()
    }

    #[test]
    fn exact_search_equals_brute_force_for_both_metrics() {
        let mut rng = Rng::new(4);
        let (d, n, nq, k) = (13, 5000, 150, 7);
        let db: Vec<f32> = (0..n * d).map(|_| rng.normal() as f32).collect();
        let qs: Vec<f32> = (0..nq * d).map(|_| rng.normal() as f32).collect();
        for metric in [Metric::InnerProduct, Metric::L2] {
            let index = FlatIndex::new(d, metric, db.clone()).unwrap();
            let res = index.search(&qs, k).unwrap();
            for qi in 0..nq {
                assert_eq!(
                    &res.ids[qi * k..(qi + 1) * k],
                    brute(&db, &qs[qi * d..(qi + 1) * d], d, k, metric).as_slice(),
                    "{metric:?} query {qi}"
                );
            }
        }
        // Fewer vectors than k: the rest is -1.
        let small = FlatIndex::new(d, Metric::InnerProduct, db[..3 * d].to_vec()).unwrap();
        let res = small.search(&qs[..d], 5).unwrap();
        assert_eq!(&res.ids[3..], &[-1, -1]);
    }
}
