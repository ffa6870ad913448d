//! IVF-Flat (faiss' `IVF{n},Flat`): k-means centroids cut the space into `nlist` cells; each vector is
//! stored, uncompressed, in the inverted list of its nearest centroid; a search scans only the lists of
//! the query's `nprobe` nearest centroids, list by list (`search_batch`). Scores and ranking as the flat
//! index's (the same GEMM; inner product, or L2 by 2·q·x − |x|²; ties to the lower id), so with
//! nprobe = nlist it returns exactly the flat index's result.

use super::kmeans;
use super::knn::{selection_scores, squared_norm, squared_norms, Entry, FlatIndex, Index, Metric, Neighbors, TopK};
use crate::data::stored::Stored;
use crate::{ensure, Result};
use rayon::prelude::*;
use std::sync::Mutex;

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
                list.sq_norms.push(squared_norm(v));
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
        // A query's selection holds at most 2k (score, id) candidates of 16 bytes; its probes are nprobe
        // cells (an i64 id and an f32 score from the quantizer, a u32 in the lists' member table).
        let per_query = 32 * k + 16 * self.nprobe.min(self.lists.len());
        self.search_in_batches(queries, k, (BATCH_BYTES / per_query.max(1)).max(1))
    }
}

impl IvfFlat {
    /// `search`, `batch` queries at a time.
    fn search_in_batches(&self, queries: &[f32], k: usize, batch: usize) -> Result<Neighbors> {
        let d = self.dim;
        let (nq, mut out) = Neighbors::unfilled(queries, d, k)?;
        if k == 0 || nq == 0 {
            return Ok(out);
        }
        for (b, (ids, scores)) in out.ids.chunks_mut(batch * k).zip(out.scores.chunks_mut(batch * k)).enumerate() {
            let q = &queries[b * batch * d..][..ids.len() / k * d];
            let tops = self.search_batch(q, k)?;
            for (qi, top) in tops.into_iter().enumerate() {
                let qnorm = if self.metric == Metric::L2 { squared_norm(&q[qi * d..(qi + 1) * d]) } else { 0.0 };
                for (r, Entry(s, id)) in
                    top.into_inner().expect("no search task panicked").into_sorted().into_iter().enumerate()
                {
                    ids[qi * k + r] = id;
                    // Selection scores rank L2 by 2·q·x − |x|²: the distance is |q|² minus that.
                    scores[qi * k + r] = if self.metric == Metric::L2 { qnorm - s } else { s };
                }
            }
        }
        Ok(out)
    }
}

/// Queries searched at once: their top-k selections and probes take at most this many bytes. The more
/// queries at once, the more of them share each list's GEMM.
const BATCH_BYTES: usize = 256 << 20;
/// Rows of a list per score GEMM, and queries per GEMM (one task): bounds a task's score block.
const LIST_BLOCK: usize = 2048;
const QUERY_GROUP: usize = 512;

impl IvfFlat {
    /// List by list: every query probing a list (its `nprobe` nearest cells) is scored against the list
    /// in one GEMM, as the flat index scores a block of its database, so each list is read once per
    /// batch rather than once per query probing it (scanning query by query, IVF1024 at nprobe 64 was
    /// bound by memory bandwidth). The lists' tasks run in parallel and offer their scores to each
    /// query's shared selection, whose result does not depend on the order they come in.
    fn search_batch(&self, q: &[f32], k: usize) -> Result<Vec<Mutex<TopK>>> {
        let (d, nq, nlist) = (self.dim, q.len() / self.dim, self.lists.len());
        let nprobe = self.nprobe.min(nlist);
        let probes = self.quantizer.search(q, nprobe)?;
        // The queries probing each list, in query order: list c's are members[starts[c]..starts[c + 1]].
        let mut starts = vec![0usize; nlist + 1];
        for &c in probes.ids.iter().filter(|&&c| c >= 0) {
            starts[c as usize + 1] += 1;
        }
        for c in 0..nlist {
            starts[c + 1] += starts[c];
        }
        let mut next = starts.clone();
        let mut members = vec![0u32; starts[nlist]];
        for (slot, &c) in probes.ids.iter().enumerate().filter(|(_, &c)| c >= 0) {
            members[next[c as usize]] = (slot / nprobe) as u32;
            next[c as usize] += 1;
        }
        let tasks: Vec<(usize, &[u32])> = (0..nlist)
            .filter(|&c| !self.lists[c].ids.is_empty())
            .flat_map(|c| members[starts[c]..starts[c + 1]].chunks(QUERY_GROUP).map(move |g| (c, g)))
            .collect();
        let tops: Vec<Mutex<TopK>> = (0..nq).map(|_| Mutex::new(TopK::new(k))).collect();
        tasks.par_iter().for_each(|&(cell, group)| {
            let list = &self.lists[cell];
            let qs: Vec<f32> =
                group.iter().flat_map(|&qi| &q[qi as usize * d..(qi as usize + 1) * d]).copied().collect();
            let n = list.ids.len();
            let mut block = vec![0f32; group.len() * LIST_BLOCK.min(n)];
            for x0 in (0..n).step_by(LIST_BLOCK) {
                let xn = LIST_BLOCK.min(n - x0);
                let x = &list.vectors[x0 * d..(x0 + xn) * d];
                let norms = (self.metric == Metric::L2).then(|| &list.sq_norms[x0..x0 + xn]);
                let block = &mut block[..group.len() * xn];
                selection_scores(&qs, x, d, norms, block);
                for (&qi, row) in group.iter().zip(block.chunks(xn)) {
                    let mut top = tops[qi as usize].lock().expect("no search task panicked");
                    top.push_scores_of(row, &list.ids[x0..x0 + xn]);
                }
            }
        });
        Ok(tops)
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

    /// What an IVF search must return: for each query, the exact top k over the lists it probes.
    fn exact_over_probed_lists(ivf: &IvfFlat, qs: &[f32], k: usize) -> Neighbors {
        let (d, nprobe) = (ivf.dim, ivf.nprobe.min(ivf.nlist()));
        let probes = ivf.quantizer.search(qs, nprobe).unwrap();
        let mut out = Neighbors { k, ids: Vec::new(), scores: Vec::new() };
        for (qi, q) in qs.chunks(d).enumerate() {
            let cells = &probes.ids[qi * nprobe..(qi + 1) * nprobe];
            let (mut ids, mut vectors) = (Vec::new(), Vec::new());
            for &c in cells {
                ids.extend_from_slice(&ivf.lists[c as usize].ids);
                vectors.extend_from_slice(&ivf.lists[c as usize].vectors);
            }
            // Ordered by id, so the flat index's tie rule (lower position) is the lower id.
            let mut order: Vec<usize> = (0..ids.len()).collect();
            order.sort_by_key(|&i| ids[i]);
            let sorted: Vec<f32> = order.iter().flat_map(|&i| vectors[i * d..(i + 1) * d].iter().copied()).collect();
            let found = FlatIndex::new(d, ivf.metric, sorted).unwrap().search(q, k).unwrap();
            out.ids.extend(found.ids.iter().map(|&p| if p < 0 { -1 } else { ids[order[p as usize]] }));
            out.scores.extend(found.scores);
        }
        out
    }

    #[test]
    fn list_by_list_search_is_the_exact_search_of_the_probed_lists_in_any_batch() {
        let mut rng = Rng::new(5);
        let (d, n, nq) = (24, 4000, 40);
        let db: Vec<f32> = (0..n * d).map(|_| rng.normal() as f32).collect();
        let qs: Vec<f32> = (0..nq * d).map(|_| rng.normal() as f32).collect();
        for metric in [Metric::InnerProduct, Metric::L2] {
            let mut ivf = IvfFlat::train(d, metric, 16, &db[..2000 * d], 2).unwrap();
            ivf.add(&db, 0).unwrap();
            for (nprobe, k) in [(1, 5), (3, 10), (16, 1), (2, 600)] {
                ivf.set_nprobe(nprobe);
                let want = exact_over_probed_lists(&ivf, &qs, k);
                for batch in [1, 7, nq] {
                    let got = ivf.search_in_batches(&qs, k, batch).unwrap();
                    assert_eq!(got.ids, want.ids, "{metric:?} nprobe {nprobe} k {k} batch {batch}");
                    assert_eq!(got.scores.len(), want.scores.len());
                    for (a, b) in got.scores.iter().zip(&want.scores) {
                        assert!(a == b || (a.is_nan() && b.is_nan()), "{metric:?}: score {a} vs {b}");
                    }
                }
            }
        }
        // Lists longer than a GEMM's block of rows, probed by more queries than one task takes.
        let (d, n, nq) = (4, 3 * LIST_BLOCK * 4, QUERY_GROUP * 2 + 3);
        let db: Vec<f32> = (0..n * d).map(|_| rng.normal() as f32).collect();
        let qs: Vec<f32> = (0..nq * d).map(|_| rng.normal() as f32).collect();
        let mut ivf = IvfFlat::train(d, Metric::L2, 4, &db[..4000 * d], 2).unwrap();
        ivf.add(&db, 0).unwrap();
        assert!(ivf.lists.iter().any(|l| l.ids.len() > LIST_BLOCK));
        ivf.set_nprobe(2);
        assert_eq!(ivf.search(&qs, 3).unwrap(), exact_over_probed_lists(&ivf, &qs, 3));
    }

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
            assert_eq!(got.scores, flat.scores, "{metric:?}: the same GEMM, the same scores");
        }
    }
}
