//! Product quantization (Jégou et al. 2011; faiss's `PQ{m}` with 8-bit codes): a vector of dimension d is
//! cut into m sub-vectors of d/m; each is replaced by the nearest of 256 codewords learned for its
//! subspace (L2 k-means), so a vector costs m bytes. Distances to a query are computed asymmetrically:
//! per query (and list) a table of m × 256 partial products or distances, then one lookup per byte.

use super::kmeans;
use super::knn::Metric;
use crate::{ensure, Result};

pub const CODEWORDS: usize = 256;

#[derive(Debug, Clone, PartialEq)]
pub struct ProductQuantizer {
    pub dim: usize,
    pub m: usize,
    /// [m, 256, dim / m]
    pub codebooks: Vec<f32>,
}

impl ProductQuantizer {
    pub fn sub_dim(&self) -> usize {
        self.dim / self.m
    }

    /// Codebooks from L2 k-means per subspace on `sample` (rows of `dim`, at least 256 of them).
    pub fn train(dim: usize, m: usize, sample: &[f32], seed: u64) -> Result<Self> {
        ensure!(m > 0 && dim % m == 0, "PQ{m}: the dimension {dim} must be a multiple of the {m} sub-quantizers");
        let n = sample.len() / dim;
        ensure!(n >= CODEWORDS, "PQ{m}: training needs at least {CODEWORDS} vectors, {n} given");
        let ds = dim / m;
        let mut codebooks = Vec::with_capacity(m * CODEWORDS * ds);
        for j in 0..m {
            let sub: Vec<f32> = sample.chunks(dim).flat_map(|x| x[j * ds..(j + 1) * ds].iter().copied()).collect();
            codebooks.extend(kmeans::train(&sub, ds, CODEWORDS, Metric::L2, seed.wrapping_add(j as u64))?);
        }
        Ok(Self { dim, m, codebooks })
    }

    fn codeword(&self, j: usize, c: usize) -> &[f32] {
        let ds = self.sub_dim();
        &self.codebooks[(j * CODEWORDS + c) * ds..(j * CODEWORDS + c + 1) * ds]
    }

    /// The m codes of each row of `x`.
    pub fn encode(&self, x: &[f32]) -> Result<Vec<u8>> {
        let (ds, n) = (self.sub_dim(), x.len() / self.dim);
        let mut codes = vec![0u8; n * self.m];
        let mut nearest = vec![0usize; n];
        for j in 0..self.m {
            let sub: Vec<f32> = x.chunks(self.dim).flat_map(|v| v[j * ds..(j + 1) * ds].iter().copied()).collect();
            let book = &self.codebooks[j * CODEWORDS * ds..(j + 1) * CODEWORDS * ds];
            kmeans::assign(&sub, book, ds, Metric::L2, &mut nearest)?;
            for (i, &c) in nearest.iter().enumerate() {
                codes[i * self.m + j] = c as u8;
            }
        }
        Ok(codes)
    }

    /// The vector m codes stand for.
    pub fn decode(&self, codes: &[u8]) -> Vec<f32> {
        codes.iter().enumerate().flat_map(|(j, &c)| self.codeword(j, c as usize).iter().copied()).collect()
    }

    /// The codebooks transposed for building tables (once per search, not per query).
    pub fn columns(&self) -> Columns {
        let ds = self.sub_dim();
        let mut t = vec![0f32; self.codebooks.len()];
        for (j, book) in self.codebooks.chunks(CODEWORDS * ds).enumerate() {
            for (c, w) in book.chunks(ds).enumerate() {
                for (e, &v) in w.iter().enumerate() {
                    t[(j * ds + e) * CODEWORDS + c] = v;
                }
            }
        }
        Columns { ds, m: self.m, values: t }
    }

    /// Σ_j table[j][codes[j]]: the score of an encoded vector. Four partial sums over j mod 4, so the
    /// lookups feed four independent chains of adds rather than one (a fixed order: deterministic).
    pub fn score(&self, table: &[f32], codes: &[u8]) -> f32 {
        let mut acc = [0f32; 4];
        let (tables, codes4) = (table.chunks_exact(4 * CODEWORDS), codes.chunks_exact(4));
        let (tail_tables, tail_codes) = (tables.remainder(), codes4.remainder());
        for (t, c) in tables.zip(codes4) {
            for i in 0..4 {
                acc[i] += t[i * CODEWORDS + c[i] as usize];
            }
        }
        let tail: f32 = tail_codes.iter().zip(tail_tables.chunks_exact(CODEWORDS)).map(|(&c, t)| t[c as usize]).sum();
        (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
    }
}

/// Codebooks as [m, dim / m, 256]: a table entry sums its ds terms in dimension order, and with the
/// codewords contiguous the 256 sums of a subspace advance together (vectorised), where one dot product
/// per codeword was a short strided chain; at nprobe 1 building the table was 38% of a query's time.
pub struct Columns {
    ds: usize,
    m: usize,
    values: Vec<f32>,
}

impl Columns {
    /// The lookup table [m, 256] of `y` (the query, or the query minus a list's centroid): inner products
    /// y_j · codeword, or squared distances |y_j − codeword|².
    pub fn table(&self, y: &[f32], metric: Metric) -> Vec<f32> {
        let mut t = vec![0f32; self.m * CODEWORDS];
        for (j, row) in t.chunks_mut(CODEWORDS).enumerate() {
            for e in 0..self.ds {
                let (ye, column) = (y[j * self.ds + e], &self.values[(j * self.ds + e) * CODEWORDS..][..CODEWORDS]);
                match metric {
                    Metric::InnerProduct => row.iter_mut().zip(column).for_each(|(s, &w)| *s += ye * w),
                    Metric::L2 => row.iter_mut().zip(column).for_each(|(s, &w)| *s += (ye - w) * (ye - w)),
                }
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn codes_approximate_the_vectors_and_tables_give_their_scores() {
        let mut rng = Rng::new(9);
        let (d, m, n) = (16, 4, 2000);
        let x: Vec<f32> = (0..n * d).map(|_| rng.normal() as f32).collect();
        let pq = ProductQuantizer::train(d, m, &x, 1).unwrap();
        let codes = pq.encode(&x).unwrap();
        let (mut err, mut norm) = (0f64, 0f64);
        for (v, c) in x.chunks(d).zip(codes.chunks(m)) {
            let r = pq.decode(c);
            err += v.iter().zip(&r).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>();
            norm += v.iter().map(|a| (*a as f64).powi(2)).sum::<f64>();
        }
        // 256 codewords per 4-dimensional subspace keep most of the energy.
        assert!(err / norm < 0.2, "relative squared error {}", err / norm);
        // Table lookups equal the products with the decoded vector.
        let q: Vec<f32> = (0..d).map(|_| rng.normal() as f32).collect();
        for metric in [Metric::InnerProduct, Metric::L2] {
            let t = pq.columns().table(&q, metric);
            let r = pq.decode(&codes[..m]);
            let want: f32 = match metric {
                Metric::InnerProduct => q.iter().zip(&r).map(|(a, b)| a * b).sum(),
                Metric::L2 => q.iter().zip(&r).map(|(a, b)| (a - b) * (a - b)).sum(),
            };
            assert!((pq.score(&t, &codes[..m]) - want).abs() < 1e-4 * want.abs().max(1.0));
        }
        assert!(ProductQuantizer::train(18, 4, &x[..18 * 300], 1).unwrap_err().to_string().contains("multiple"));
        assert!(ProductQuantizer::train(d, m, &x[..100 * d], 1).unwrap_err().to_string().contains("at least 256"));
    }
}
