//! IVF-Flat (faiss' `IVF{n},Flat`): k-means centroids cut the space into `nlist` cells; each vector is
//! stored, uncompressed, in the inverted list of its nearest centroid; a search scans only the lists of
//! the query's `nprobe` nearest centroids. Ranking as the flat index's (inner product, or L2 by
//! 2·q·x − |x|²; ties to the lower id), so with nprobe = nlist it returns exactly the flat index's result.

use super::kmeans;
use super::knn::{dot, squared_norms, Entry, FlatIndex, Index, Metric, Neighbors, TopK};
use crate::data::stored::Stored;
use crate::{ensure, Result};
use rayon::prelude::*;

/// One cell: its vectors' ids and rows, in the order they were added (in memory, or read in place from
/// a mapped index file).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct List {
    pub ids: Stored<i64>,
    pub vectors: Stored<f32>,
    /// |x|² of each row, for L2 only.
    pub(crate) sq_norms: Vec<f32>,
}

pub struct IvfFlat {
    dim: usize,
    metric: Metric,
    quantizer: FlatIndex,
    lists: Vec<List>,
    nprobe: usize,
}

/// faiss' default: one list searched.
pub const DEFAULT_NPROBE: usize = 1;

impl IvfFlat {
    /// Centroids from k-means on `sample` (rows of `dim`), no vectors yet.
    pub fn train(dim: usize, metric: Metric, nlist: usize, sample: &[f32], seed: u64) -> Result<Self> {
        let centroids = kmeans::train(sample, dim, nlist, metric, seed)
            .map_err(|e| e.context(format!("training IVF{nlist} on {} vectors", sample.len() / dim.max(1))))?;
        Self::from_parts(dim, metric, centroids, vec![List::default(); nlist])
    }

    /// An index from stored centroids [nlist, dim] and lists (what loading a file gives).
    pub fn from_parts(dim: usize, metric: Metric, centroids: Vec<f32>, lists: Vec<List>) -> Result<Self> {
        ensure!(
            centroids.len() == lists.len() * dim,
            "IVF: {} centroids for {} lists",
            centroids.len() / dim.max(1),
            lists.len()
        );
        let lists = lists
            .into_iter()
            .map(|l| {
                let sq_norms = squared_norms(&l.vectors, dim, metric);
                List { sq_norms, ..l }
            })
            .collect();
        Ok(Self { dim, metric, quantizer: FlatIndex::new(dim, metric, centroids)?, lists, nprobe: DEFAULT_NPROBE })
    }

    /// Add rows `vectors` with ids `first_id`, `first_id + 1`, ... to their nearest centroids' lists.
    pub fn add(&mut self, vectors: &[f32], first_id: i64) -> Result<()> {
        let cells = self.assign(vectors)?;
        self.insert(&cells, vectors, first_id)
    }

    /// Each row's cell (the costly half of `add`, kept apart so it can be done and stored block by block).
    pub fn assign(&self, vectors: &[f32]) -> Result<Vec<usize>> {
        let d = self.dim;
        ensure!(vectors.len() % d == 0, "IVF add: {} values are not rows of dimension {d}", vectors.len());
        kmeans::nearest(&self.quantizer, vectors)
    }

    /// Rows `vectors` (ids `first_id`, ...) into the lists `cells` (from `assign`) names.
    pub fn insert(&mut self, cells: &[usize], vectors: &[f32], first_id: i64) -> Result<()> {
        let d = self.dim;
        ensure!(
            cells.len() * d == vectors.len() && cells.iter().all(|&c| c < self.lists.len()),
            "IVF insert: {} cells (of {} lists) for {} values of rows of {d}",
            cells.len(),
            self.lists.len(),
            vectors.len()
        );
        for (i, (&cell, v)) in cells.iter().zip(vectors.chunks(d)).enumerate() {
            let list = &mut self.lists[cell];
            list.ids.to_mut().push(first_id + i as i64);
            list.vectors.to_mut().extend_from_slice(v);
            if self.metric == Metric::L2 {
                list.sq_norms.push(dot(v, v));
            }
        }
        Ok(())
    }

    pub fn set_nprobe(&mut self, nprobe: usize) {
        self.nprobe = nprobe.max(1);
    }

    pub fn nprobe(&self) -> usize {
        self.nprobe
    }

    pub fn nlist(&self) -> usize {
        self.lists.len()
    }

    pub fn lists(&self) -> &[List] {
        &self.lists
    }

    pub fn centroids(&self) -> &[f32] {
        self.quantizer.vectors()
    }
}

impl Index for IvfFlat {
    fn dim(&self) -> usize {
        self.dim
    }
    fn len(&self) -> usize {
        self.lists.iter().map(|l| l.ids.len()).sum()
    }
    fn metric(&self) -> Metric {
        self.metric
    }

    fn search(&self, queries: &[f32], k: usize) -> Result<Neighbors> {
        let d = self.dim;
        let l2 = self.metric == Metric::L2;
        search_cells(&self.quantizer, self.nprobe, queries, k, |q, cells, top| {
            for &cell in cells {
                let list = &self.lists[cell];
                if l2 {
                    for ((v, &id), &norm) in list.vectors.chunks(d).zip(list.ids.iter()).zip(&list.sq_norms) {
                        top.push(2.0 * dot(q, v) - norm, id);
                    }
                } else {
                    for (v, &id) in list.vectors.chunks(d).zip(list.ids.iter()) {
                        top.push(dot(q, v), id);
                    }
                }
            }
            // Selection scores rank L2 by 2·q·x − |x|²: the distance is |q|² minus that.
            let qnorm = if l2 { dot(q, q) } else { 0.0 };
            move |s| if l2 { qnorm - s } else { s }
        })
    }
}

/// The search every IVF index shares: each query's `nprobe` nearest cells of `quantizer`, queries in
/// parallel. `scan(q, cells, top)` offers the cells' candidates to the top-k selection (larger is nearer)
/// and returns how a selection score becomes the reported score.
pub(crate) fn search_cells<F: Fn(f32) -> f32>(
    quantizer: &FlatIndex,
    nprobe: usize,
    queries: &[f32],
    k: usize,
    scan: impl Fn(&[f32], &[usize], &mut TopK) -> F + Sync,
) -> Result<Neighbors> {
    let d = quantizer.dim();
    let (nq, mut out) = Neighbors::unfilled(queries, d, k)?;
    if k == 0 || nq == 0 {
        return Ok(out);
    }
    let nprobe = nprobe.min(quantizer.len());
    let probes = quantizer.search(queries, nprobe)?;
    let Neighbors { ids, scores, .. } = &mut out;
    let rows = ids.par_chunks_mut(k).zip(scores.par_chunks_mut(k)).enumerate();
    rows.for_each(|(qi, (ids, scores))| {
        let cells: Vec<usize> =
            probes.ids[qi * nprobe..(qi + 1) * nprobe].iter().filter_map(|&c| usize::try_from(c).ok()).collect();
        let mut top = TopK::new(k);
        let report = scan(&queries[qi * d..(qi + 1) * d], &cells, &mut top);
        for (r, Entry(s, id)) in top.into_sorted().into_iter().enumerate() {
            ids[r] = id;
            scores[r] = report(s);
        }
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn probing_every_list_equals_the_flat_index() {
        let mut rng = Rng::new(3);
        let (d, n, nq, k) = (16, 3000, 50, 5);
        let db: Vec<f32> = (0..n * d).map(|_| rng.normal() as f32).collect();
        let qs: Vec<f32> = (0..nq * d).map(|_| rng.normal() as f32).collect();
        for metric in [Metric::InnerProduct, Metric::L2] {
            let mut ivf = IvfFlat::train(d, metric, 20, &db[..1000 * d], 1).unwrap();
            ivf.add(&db, 0).unwrap();
            assert_eq!(ivf.len(), n);
            ivf.set_nprobe(20);
            let flat = FlatIndex::new(d, metric, db.clone()).unwrap().search(&qs, k).unwrap();
            let got = ivf.search(&qs, k).unwrap();
            assert_eq!(got.ids, flat.ids, "{metric:?}");
            for (a, b) in got.scores.iter().zip(&flat.scores) {
                assert!((a - b).abs() <= 1e-3 * b.abs().max(1.0), "{metric:?}: score {a} vs {b}");
            }
        }
    }
}
