//! k-means for the IVF indexes' coarse quantizer (Lloyd's iterations, as faiss trains `IVF{n}`).
//!
//! Seeded and deterministic whatever the thread count: the initial centroids are training points chosen
//! by k-means++ (each next one drawn with probability proportional to its squared distance from the
//! nearest chosen one, the draw made by the seed over sums taken in point order) among a seeded sample of
//! at most `SEED_POINTS_PER_CLUSTER` points per cluster (k-means++ streams its points once per centroid:
//! on all 100k training points of an IVF1024 that was most of the build); each iteration assigns every
//! point to its nearest centroid with the exact flat index
//! (per-query results, ties to the lower id) and recomputes each centroid as the mean of its points summed
//! in point order. An empty cluster is split off the largest one (its centroid nudged apart by ±1/1024,
//! faiss's rule), so every list is used. For inner product the centroids are normalised (spherical
//! k-means), as cosine search wants.

use super::knn::{FlatIndex, Index, Metric};
use crate::rng::Rng;
use crate::{ensure, Result};

pub const ITERATIONS: usize = 20;
/// k-means++ seeds from at most this many training points per cluster; Lloyd's iterations use them all.
pub const SEED_POINTS_PER_CLUSTER: usize = 32;

/// `k` centroids [k, d] of the rows of `points` [n, d].
pub fn train(points: &[f32], d: usize, k: usize, metric: Metric, seed: u64) -> Result<Vec<f32>> {
    ensure!(d > 0 && points.len() % d == 0, "k-means: {} values are not rows of dimension {d}", points.len());
    let n = points.len() / d;
    ensure!(k > 0 && k <= n, "k-means: {k} clusters from {n} training points (need 1 <= clusters <= points)");
    let mut centroids = initial(points, d, k, seed);
    let mut assignment = vec![0usize; n];
    for _ in 0..ITERATIONS {
        if metric == Metric::InnerProduct {
            normalize_rows(&mut centroids, d);
        }
        assign(points, &centroids, d, metric, &mut assignment)?;
        let mut counts = vec![0usize; k];
        let mut sums = vec![0f64; k * d];
        for (i, &c) in assignment.iter().enumerate() {
            counts[c] += 1;
            for (s, &x) in sums[c * d..(c + 1) * d].iter_mut().zip(&points[i * d..(i + 1) * d]) {
                *s += x as f64;
            }
        }
        for c in 0..k {
            if counts[c] > 0 {
                for (dst, s) in centroids[c * d..(c + 1) * d].iter_mut().zip(&sums[c * d..(c + 1) * d]) {
                    *dst = (s / counts[c] as f64) as f32;
                }
            }
        }
        split_empty(&mut centroids, &mut counts, d);
    }
    if metric == Metric::InnerProduct {
        normalize_rows(&mut centroids, d);
    }
    Ok(centroids)
}

/// Nearest centroid of each point.
pub fn assign(points: &[f32], centroids: &[f32], d: usize, metric: Metric, out: &mut [usize]) -> Result<()> {
    out.copy_from_slice(&nearest(&FlatIndex::new(d, metric, centroids.to_vec())?, points)?);
    Ok(())
}

/// The nearest vector of `centroids` (an exact index over them) to each row of `points`.
pub fn nearest(centroids: &FlatIndex, points: &[f32]) -> Result<Vec<usize>> {
    Ok(centroids.search(points, 1)?.ids.iter().map(|&id| id as usize).collect())
}

/// k-means++: the first centroid a seeded random point, each next one a point drawn with probability
/// proportional to its squared distance from the nearest centroid so far (points already chosen have
/// distance 0 and are not drawn again while others remain).
fn initial(points: &[f32], d: usize, k: usize, seed: u64) -> Vec<f32> {
    use rayon::prelude::*;
    let mut rng = Rng::new(seed);
    let sample = seed_sample(points, d, k * SEED_POINTS_PER_CLUSTER, &mut rng);
    let points: &[f32] = sample.as_deref().unwrap_or(points);
    let n = points.len() / d;
    let mut out = Vec::with_capacity(k * d);
    let mut nearest = vec![f64::INFINITY; n];
    let mut pick = rng.below(n as u64) as usize;
    for _ in 0..k {
        let c = points[pick * d..(pick + 1) * d].to_vec();
        nearest.par_iter_mut().zip(points.par_chunks(d)).for_each(|(m, x)| {
            *m = m.min(squared_distance(x, &c) as f64);
        });
        out.extend_from_slice(&c);
        let total: f64 = nearest.iter().sum();
        pick = if total > 0.0 {
            let mut target = rng.uniform() * total;
            nearest
                .iter()
                .position(|&m| {
                    target -= m;
                    target < 0.0
                })
                .unwrap_or_else(|| nearest.iter().rposition(|&m| m > 0.0).expect("total > 0"))
        } else {
            rng.below(n as u64) as usize // every point is a centroid already: duplicates, split later
        };
    }
    out
}

/// `size` of the rows of `points` drawn without replacement by `rng`, in draw order; None when there
/// are no more rows than that.
fn seed_sample(points: &[f32], d: usize, size: usize, rng: &mut Rng) -> Option<Vec<f32>> {
    let n = points.len() / d;
    if n <= size {
        return None;
    }
    Some(rng.sample_indices(n, size).iter().flat_map(|&r| points[r * d..(r + 1) * d].iter().copied()).collect())
}

/// |a − b|² with eight independent partial sums (vectorisable; a fixed order, so deterministic).
fn squared_distance(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| (x - y) * (x - y)).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            let t = x[i] - y[i];
            acc[i] += t * t;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Give each empty cluster half of the largest one: both centroids nudged apart by ±1/1024.
fn split_empty(centroids: &mut [f32], counts: &mut [usize], d: usize) {
    for empty in 0..counts.len() {
        if counts[empty] > 0 {
            continue;
        }
        // The largest cluster (the first of equals): deterministic.
        let big = (0..counts.len()).max_by(|&a, &b| counts[a].cmp(&counts[b]).then(b.cmp(&a))).expect("k > 0");
        if counts[big] < 2 {
            return;
        }
        for j in 0..d {
            let v = centroids[big * d + j];
            let eps = 1.0 / 1024.0;
            let (plus, minus) = if j % 2 == 0 { (1.0 + eps, 1.0 - eps) } else { (1.0 - eps, 1.0 + eps) };
            centroids[empty * d + j] = v * plus;
            centroids[big * d + j] = v * minus;
        }
        counts[empty] = counts[big] / 2;
        counts[big] -= counts[empty];
    }
}

fn normalize_rows(x: &mut [f32], d: usize) {
    for row in x.chunks_mut(d) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            row.iter_mut().for_each(|v| *v /= norm);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Points around `c` well-separated centres.
    fn blobs(c: usize, per: usize, d: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
        let mut rng = Rng::new(seed);
        let centres: Vec<f32> = (0..c * d).map(|_| (rng.normal() * 10.0) as f32).collect();
        let mut pts = Vec::new();
        for i in 0..c * per {
            let ci = i % c;
            pts.extend(centres[ci * d..(ci + 1) * d].iter().map(|&x| x + rng.normal() as f32 * 0.1));
        }
        (centres, pts)
    }

    #[test]
    fn finds_separated_clusters_and_is_deterministic() {
        let (d, c) = (8, 5);
        let (_, pts) = blobs(c, 40, d, 1);
        let a = train(&pts, d, c, Metric::L2, 7).unwrap();
        assert_eq!(a, train(&pts, d, c, Metric::L2, 7).unwrap());
        // Every point's cluster holds exactly its blob: 40 points each.
        let mut asg = vec![0; pts.len() / d];
        assign(&pts, &a, d, Metric::L2, &mut asg).unwrap();
        let mut counts = vec![0; c];
        asg.iter().for_each(|&x| counts[x] += 1);
        assert!(counts.iter().all(|&n| n == 40), "{counts:?}");
        // The same bits with one thread as with the pool.
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        assert_eq!(one.install(|| train(&pts, d, c, Metric::L2, 7).unwrap()), a);
    }

    #[test]
    fn empty_clusters_are_split_and_bad_sizes_refused() {
        // 4 identical points and 3 clusters: two start on the same point and would stay empty.
        let pts = vec![1.0f32, 2.0, 1.0, 2.0, 1.0, 2.0, 5.0, 5.0];
        let c = train(&pts, 2, 3, Metric::L2, 1).unwrap();
        assert_eq!(c.len(), 6);
        assert!(train(&pts, 2, 5, Metric::L2, 1).unwrap_err().to_string().contains("5 clusters from 4"));
        assert!(train(&pts, 3, 1, Metric::L2, 1).is_err());
    }
}
