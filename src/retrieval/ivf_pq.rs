//! IVF-PQ (faiss' `IVF{n},PQ{m}`, 8-bit codes): the IVF cells of `ivf.rs`, each vector stored as the m-byte
//! product-quantization code of its residual from its cell's centroid (`pq.rs`, codebooks trained on the
//! residuals of the training sample). A search scans the `nprobe` nearest cells with asymmetric
//! distances: inner product = q·c + Σ_j table_j[code_j] with one table per query; squared L2 = Σ_j
//! table_j[code_j] with the table of q − c, one per probed cell. Ties go to the lower id.

use super::ivf::search_cells;
use super::kmeans;
use super::knn::{dot, FlatIndex, Index, Metric, Neighbors};
use super::pq::ProductQuantizer;
use crate::data::stored::Stored;
use crate::{ensure, Result};

/// One cell: its vectors' ids and their m-byte codes, in the order they were added (in memory, or read
/// in place from a mapped index file).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PqList {
    pub ids: Stored<i64>,
    pub codes: Stored<u8>,
}

pub struct IvfPq {
    dim: usize,
    metric: Metric,
    quantizer: FlatIndex,
    pq: ProductQuantizer,
    lists: Vec<PqList>,
    nprobe: usize,
}

impl IvfPq {
    /// Centroids from k-means on `sample`, then PQ codebooks on the sample's residuals; no vectors yet.
    pub fn train(dim: usize, metric: Metric, nlist: usize, m: usize, sample: &[f32], seed: u64) -> Result<Self> {
        ensure!(m > 0 && dim % m == 0, "PQ{m}: the dimension {dim} must be a multiple of the {m} sub-quantizers");
        let centroids = kmeans::train(sample, dim, nlist, metric, seed)
            .map_err(|e| e.context(format!("training IVF{nlist} on {} vectors", sample.len() / dim.max(1))))?;
        let quantizer = FlatIndex::new(dim, metric, centroids)?;
        let (_, residuals) = residuals(&quantizer, sample)?;
        let pq = ProductQuantizer::train(dim, m, &residuals, seed ^ 0x5051)?;
        Self::from_parts(dim, metric, quantizer.vectors().to_vec(), pq, vec![PqList::default(); nlist])
    }

    pub fn from_parts(
        dim: usize,
        metric: Metric,
        centroids: Vec<f32>,
        pq: ProductQuantizer,
        lists: Vec<PqList>,
    ) -> Result<Self> {
        ensure!(centroids.len() == lists.len() * dim && pq.dim == dim, "IVF-PQ: inconsistent parts");
        let quantizer = FlatIndex::new(dim, metric, centroids)?;
        Ok(Self { dim, metric, quantizer, pq, lists, nprobe: super::ivf::DEFAULT_NPROBE })
    }

    /// Encode rows `vectors` (ids `first_id`, ...) into their nearest centroids' lists.
    pub fn add(&mut self, vectors: &[f32], first_id: i64) -> Result<()> {
        let (cells, codes) = self.assign(vectors)?;
        self.insert(&cells, &codes, first_id)
    }

    /// Each row's cell and m-byte code (the costly half of `add`, kept apart so it can be done and
    /// stored block by block).
    pub fn assign(&self, vectors: &[f32]) -> Result<(Vec<usize>, Vec<u8>)> {
        let d = self.dim;
        ensure!(vectors.len() % d == 0, "IVF-PQ add: {} values are not rows of dimension {d}", vectors.len());
        let (cells, residual) = residuals(&self.quantizer, vectors)?;
        Ok((cells, self.pq.encode(&residual)?))
    }

    /// Codes (ids `first_id`, ...) into the lists `cells` (from `assign`) names.
    pub fn insert(&mut self, cells: &[usize], codes: &[u8], first_id: i64) -> Result<()> {
        let m = self.pq.m;
        ensure!(
            cells.len() * m == codes.len() && cells.iter().all(|&c| c < self.lists.len()),
            "IVF-PQ insert: {} cells (of {} lists) for {} bytes of {m}-byte codes",
            cells.len(),
            self.lists.len(),
            codes.len()
        );
        for (i, &cell) in cells.iter().enumerate() {
            let list = &mut self.lists[cell];
            list.ids.to_mut().push(first_id + i as i64);
            list.codes.to_mut().extend_from_slice(&codes[i * m..(i + 1) * m]);
        }
        Ok(())
    }

    pub fn set_nprobe(&mut self, nprobe: usize) {
        self.nprobe = nprobe.max(1);
    }

    pub fn nlist(&self) -> usize {
        self.lists.len()
    }

    pub fn m(&self) -> usize {
        self.pq.m
    }

    pub fn lists(&self) -> &[PqList] {
        &self.lists
    }

    pub fn centroids(&self) -> &[f32] {
        self.quantizer.vectors()
    }

    pub fn quantizer(&self) -> &ProductQuantizer {
        &self.pq
    }
}

/// Each row's nearest centroid (its cell), and the row minus that centroid.
fn residuals(quantizer: &FlatIndex, x: &[f32]) -> Result<(Vec<usize>, Vec<f32>)> {
    let (d, centroids) = (quantizer.dim(), quantizer.vectors());
    let cells = kmeans::nearest(quantizer, x)?;
    let residuals = x
        .chunks(d)
        .zip(&cells)
        .flat_map(|(v, &c)| v.iter().zip(&centroids[c * d..(c + 1) * d]).map(|(a, b)| a - b))
        .collect();
    Ok((cells, residuals))
}

impl Index for IvfPq {
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
        let (d, m) = (self.dim, self.pq.m);
        let centroids = self.quantizer.vectors();
        let ip = self.metric == Metric::InnerProduct;
        let columns = self.pq.columns();
        search_cells(&self.quantizer, self.nprobe, queries, k, |q, cells, top| {
            // Selection scores: larger is nearer (inner product, or minus the squared distance).
            let ip_table = ip.then(|| columns.table(q, Metric::InnerProduct));
            for &cell in cells {
                let c = &centroids[cell * d..(cell + 1) * d];
                let l2_table;
                let (table, base, sign) = match &ip_table {
                    Some(t) => (t, dot(q, c), 1.0),
                    None => {
                        let y: Vec<f32> = q.iter().zip(c).map(|(a, b)| a - b).collect();
                        l2_table = columns.table(&y, Metric::L2);
                        (&l2_table, 0.0, -1.0)
                    }
                };
                let list = &self.lists[cell];
                for (codes, &id) in list.codes.chunks(m).zip(list.ids.iter()) {
                    top.push(base + sign * self.pq.score(table, codes), id);
                }
            }
            move |s| if ip { s } else { -s }
        })
    }
}
