//! `retro bench loader`: the training data path alone (sample tokens, neighbour ids, neighbour and
//! continuation tokens, tensors), to show it is far from the step's cost.

use crate::train::loader::ProjectData;
use crate::Result;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Instant;

pub fn run(project: &Path, k: usize, micro_batch: usize, batches: usize) -> Result<Value> {
    let data = ProjectData::open(project, k, true)?;
    let t = Instant::now();
    for i in 0..batches {
        let ids: Vec<usize> = (i * micro_batch..(i + 1) * micro_batch).collect();
        std::hint::black_box(data.train.batch(&ids)?);
    }
    let secs = t.elapsed().as_secs_f64();
    let seq = data.config.retro_gpt_seq_length;
    Ok(json!({
        "bench": "loader", "micro_batch": micro_batch, "batches": batches, "seq_len": seq, "k": k,
        "ms_per_batch": 1e3 * secs / batches as f64, "tokens_per_s": (batches * micro_batch * seq) as f64 / secs,
    }))
}
