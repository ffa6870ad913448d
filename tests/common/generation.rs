//! Helpers of the generation tests (tests/generate.rs, tests/device_model.rs): stand-in retrieval and
//! the full forward that KV-cached decoding must equal.

use retro::autograd::Tape;
use retro::model::{RetroConfig, RetroModel};
use retro::rng::Rng;
use retro::tensor::Tensor;

/// Neighbour tokens [k, r] that depend on the chunk's content (a stand-in for embedding and search).
pub fn neighbours_of(chunk: &[u32], c: &RetroConfig) -> Tensor {
    let seed = chunk.iter().fold(17u64, |h, &t| h.wrapping_mul(31).wrapping_add(t as u64));
    let mut rng = Rng::new(seed);
    let n = c.num_neighbors * c.retrieved_length();
    Tensor::from_vec(
        (0..n).map(|_| rng.below(c.vocab_size as u64) as i64).collect::<Vec<_>>(),
        &[c.num_neighbors, c.retrieved_length()],
    )
    .unwrap()
}

/// Logits at the last position of `tokens` from the full forward (the prefix padded to whole chunks).
pub fn full_forward_last(model: &RetroModel, tokens: &[u32]) -> Vec<f64> {
    let c = &model.config;
    let m = c.chunk_length;
    let n = tokens.len().div_ceil(m) * m;
    let mut padded: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
    padded.resize(n, 0);
    let ids = Tensor::from_vec(padded.clone(), &[1, n]).unwrap();
    let neighbors = (!c.gpt_baseline).then(|| {
        let per = c.num_neighbors * c.retrieved_length();
        let mut all = Vec::new();
        for chunk in 0..n / m {
            let toks: Vec<u32> = padded[chunk * m..(chunk + 1) * m].iter().map(|&t| t as u32).collect();
            all.extend(neighbours_of(&toks, c).data::<i64>().unwrap().iter().copied());
        }
        assert_eq!(all.len(), n / m * per);
        Tensor::from_vec(all, &[1, n / m, c.num_neighbors, c.retrieved_length()]).unwrap()
    });
    let mut tape = Tape::inference();
    let p = model.params.leaves(&mut tape);
    let logits = model.logits(&mut tape, &p, &ids, neighbors.as_ref()).unwrap().into_value().to_f64_vec();
    let v = c.vocab_size;
    logits[(tokens.len() - 1) * v..tokens.len() * v].to_vec()
}

/// The index of the largest logit.
pub fn argmax(x: &[f64]) -> u32 {
    x.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0 as u32
}
