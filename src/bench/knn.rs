//! `retro bench knn`: exact inner-product search of random unit vectors, as `bench.py kernels --only knn`
//! counts it (2·Q·N·dim FLOPs). `scripts/bench-knn-faiss.py` runs faiss' IndexFlatIP on the same shapes.

use crate::retrieval::knn::{FlatIndex, Index, Metric};
use crate::rng::Rng;
use crate::Result;
use serde_json::{json, Value};
use std::time::Instant;

fn unit_vectors(rng: &mut Rng, n: usize, dim: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..n * dim).map(|_| rng.normal() as f32).collect();
    for row in v.chunks_mut(dim) {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        row.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

pub fn run(vectors: usize, queries: usize, dim: usize, k: usize, reps: usize) -> Result<Value> {
    let mut rng = Rng::new(7);
    let index = FlatIndex::new(dim, Metric::InnerProduct, unit_vectors(&mut rng, vectors, dim))?;
    let q = unit_vectors(&mut rng, queries, dim);
    index.search(&q[..dim.min(q.len())], k)?;
    let mut times = Vec::new();
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        std::hint::black_box(index.search(&q, k)?);
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let secs = times[times.len() / 2];
    Ok(json!({
        "bench": "knn_exact_ip", "impl": "retro", "vectors": vectors, "queries": queries, "dim": dim, "k": k,
        "threads": rayon::current_num_threads(), "seconds": secs, "queries_per_s": queries as f64 / secs,
        "tflops": 2.0 * queries as f64 * vectors as f64 * dim as f64 / secs / 1e12,
    }))
}
