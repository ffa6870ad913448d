//! `retro bench loader`: the training data path alone (sample tokens, neighbour ids, neighbour and
//! continuation tokens, tensors), to show it is far from the step's cost; and what checksum
//! verification costs it: opening verifies the small files whole, the first pass over the batches
//! verifies each 1 MiB block of the tokens the first time it is read, the second pass reads verified
//! blocks only.

use crate::data::integrity;
use crate::train::loader::ProjectData;
use crate::Result;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Instant;

pub fn run(project: &Path, k: usize, micro_batch: usize, batches: usize) -> Result<Value> {
    let t = Instant::now();
    let r = crate::preprocess::project::ProjectConfig::read(project)?.retro_num_retrieved_chunks;
    let data = ProjectData::open(project, k, r, true)?;
    let open_s = t.elapsed().as_secs_f64();
    let pass = || -> Result<f64> {
        let t = Instant::now();
        for i in 0..batches {
            let ids: Vec<usize> = (i * micro_batch..(i + 1) * micro_batch).collect();
            std::hint::black_box(data.train.batch(&ids)?);
        }
        Ok(t.elapsed().as_secs_f64())
    };
    let (first, second) = (pass()?, pass()?);
    // CRC-32C throughput on this machine (64 MiB, after one warm-up pass).
    let buf: Vec<u8> = (0..64usize << 20).map(|i| (i * 131 % 251) as u8).collect();
    std::hint::black_box(integrity::crc(&buf));
    let t = Instant::now();
    std::hint::black_box(integrity::crc(&buf));
    let crc_gb_per_s = buf.len() as f64 / t.elapsed().as_secs_f64() / 1e9;
    let seq = data.config.retro_gpt_seq_length;
    Ok(json!({
        "bench": "loader", "micro_batch": micro_batch, "batches": batches, "seq_len": seq, "k": k,
        "open_ms": 1e3 * open_s,
        "ms_per_batch": 1e3 * second / batches as f64,
        "ms_per_batch_first_pass": 1e3 * first / batches as f64,
        "tokens_per_s": (batches * micro_batch * seq) as f64 / second,
        "crc32c_gb_per_s": crc_gb_per_s,
    }))
}
