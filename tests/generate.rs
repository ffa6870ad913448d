//! KV-cached decoding with live retrieval gives the same logits, and so the same greedy tokens, as
//! recomputing the whole prefix with the full forward.

mod common;

use common::generation::{argmax, full_forward_last, neighbours_of};
use retro::model::kv_decode::KvDecoder;
use retro::model::{RetroConfig, RetroModel};
use retro::rng::Rng;
use retro::tensor::{DType, Tensor};

fn config(gpt: bool) -> RetroConfig {
    let mut c = RetroConfig::preset("tiny").unwrap();
    c.num_layers = 5;
    c.hidden_size = 32;
    c.num_heads = 4;
    c.vocab_size = 97;
    c.seq_length = 320;
    c.num_neighbors = 3;
    c.retro_layer_numbers = Some(vec![2, 5]);
    c.gpt_baseline = gpt;
    c
}

fn check(gpt: bool) {
    check_model(&RetroModel::init(&config(gpt), 3, DType::F64).unwrap());
}

fn check_model(model: &RetroModel) {
    let gpt = model.config.gpt_baseline;
    let mut rng = Rng::new(8);
    let prompt: Vec<u32> = (0..70).map(|_| rng.below(97) as u32).collect();
    let mut dec = KvDecoder::new(model, &model.params.tensors);
    let c = model.config.clone();
    let mut retrieved = Vec::new();
    let mut retrieve = |chunk: usize, toks: &[u32]| {
        retrieved.push(chunk);
        Ok(neighbours_of(toks, &c))
    };
    let mut logits = Vec::new();
    for &t in &prompt {
        logits = dec.push(t, &mut retrieve).unwrap();
    }
    let mut generated = prompt.clone();
    for _ in 0..(200 - prompt.len()) {
        let want = full_forward_last(model, &generated);
        let worst = logits.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(
            worst < 1e-10,
            "position {}: cached logits differ from the full forward by {worst}",
            generated.len() - 1
        );
        let next = argmax(&logits);
        assert_eq!(next, argmax(&want));
        generated.push(next);
        logits = dec.push(next, &mut retrieve).unwrap();
    }
    if !gpt {
        // Retrieval ran once per completed chunk, in order.
        assert_eq!(retrieved, vec![0, 1, 2]);
    }
}

#[test]
fn kv_cache_with_live_retrieval_equals_full_recompute() {
    check(false);
}

#[test]
fn kv_cache_equals_full_recompute_for_the_gpt_baseline() {
    check(true);
}

// Each CCA variant runs through the same layer code in generation: its own parameters (set away from
// their initial values: gates open, relative-position biases random) apply to the cached path, row by
// row, as to the full one.
#[test]
fn kv_cache_equals_full_recompute_for_every_cca_variant() {
    let cca_names: Vec<String> = RetroModel::specs(&config(false)).unwrap().into_iter().map(|s| s.name).collect();
    let mut rng = Rng::new(17);
    for entry in retro::variants::CCA_VARIANTS {
        let mut c = config(false);
        c.cca_variant = entry.name.into();
        if entry.name == "cca-gate" {
            c.retro_attention_gate = 0.5;
        }
        let mut model = RetroModel::init(&c, 3, DType::F64).unwrap();
        for (spec, t) in model.params.specs.iter().zip(model.params.tensors.iter_mut()) {
            if !cca_names.contains(&spec.name) {
                let values: Vec<f64> = (0..t.numel()).map(|_| 0.3 + rng.normal()).collect();
                *t = Tensor::from_vec(values, &spec.shape).unwrap();
            }
        }
        check_model(&model);
    }
}

#[test]
fn decoding_past_the_positions_is_an_error() {
    let mut c = config(true);
    c.seq_length = 64;
    let model = RetroModel::init(&c, 1, DType::F32).unwrap();
    let mut dec = KvDecoder::new(&model, &model.params.tensors);
    let mut retrieve = |_: usize, _: &[u32]| -> retro::Result<Tensor> { unreachable!() };
    for _ in 0..64 {
        dec.push(1, &mut retrieve).unwrap();
    }
    let err = dec.push(1, &mut retrieve).err().unwrap().to_string();
    assert!(err.contains("past the model's 64 positions"), "{err}");
}
