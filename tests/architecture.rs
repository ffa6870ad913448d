//! Megatron's architecture options (InstructRetro's fine-tuning script uses them all): rotary position
//! embeddings (`--use-rotary-position-embeddings --rotary-percent`), `--no-position-embedding`,
//! `--swiglu`, `--disable-bias-linear`, `--untie-embeddings-and-output-weights`, `--apply-layernorm-1p`.
//! Their parameters, the identities that define them, the whole model's gradients against finite
//! differences (f64), and KV-cached generation equal to the full forward. Tensor parallelism with them:
//! tests/tensor_parallel.rs; `retro train` with the flags: tests/train.rs.

mod common;

use common::{max_rel_err, model_gradients_fd};
use retro::autograd::Tape;
use retro::model::kv_decode::KvDecoder;
use retro::model::{Batch, Params, RetroConfig, RetroModel};
use retro::rng::Rng;
use retro::tensor::{DType, Tensor};

const B: usize = 2;
const S: usize = 128;
const V: usize = 61;

fn plain() -> RetroConfig {
    let mut c = RetroConfig::preset("tiny").unwrap();
    c.hidden_size = 32;
    c.num_heads = 2;
    c.vocab_size = V;
    c.seq_length = S;
    c
}

fn instruct_retro() -> RetroConfig {
    let mut c = plain();
    c.use_rotary_position_embeddings = true;
    c.rotary_percent = 0.5;
    c.add_position_embedding = false;
    c.swiglu = true;
    c.add_bias_linear = false;
    c.untie_embeddings_and_output_weights = true;
    c.apply_layernorm_1p = true;
    // Beyond InstructRetro: grouped-query attention, both heads sharing one key / value head.
    c.num_query_groups = Some(1);
    c
}

fn batch() -> Batch {
    let mut rng = Rng::new(4);
    let mut ids = |shape: &[usize]| {
        let n = shape.iter().product();
        Tensor::from_vec((0..n).map(|_| rng.below(V as u64) as i64).collect::<Vec<_>>(), shape).unwrap()
    };
    let (tokens, labels) = (ids(&[B, S]), ids(&[B, S]));
    Batch { tokens, labels, neighbors: Some(ids(&[B, S / 64, 2, 128])) }
}

fn logits(m: &RetroModel, b: &Batch) -> Vec<f64> {
    let mut tape = Tape::inference();
    let p = m.params.leaves(&mut tape);
    m.logits(&mut tape, &p, &b.tokens, b.neighbors.as_ref()).unwrap().into_value().to_f64_vec()
}

/// `model`'s 1-D parameters (biases, LayerNorm) moved off their initial values.
fn perturbed(mut model: RetroModel, seed: u64) -> RetroModel {
    let mut rng = Rng::new(seed);
    for (spec, t) in model.params.specs.iter().zip(model.params.tensors.iter_mut()) {
        if spec.shape.len() == 1 {
            t.data_mut::<f64>().unwrap().iter_mut().for_each(|x| *x += 0.1 * rng.normal());
        }
    }
    model
}

#[test]
fn the_options_change_exactly_the_parameters_megatron_changes() {
    let names = |c: &RetroConfig| -> Vec<(String, Vec<usize>)> {
        RetroModel::specs(c).unwrap().into_iter().map(|s| (s.name, s.shape)).collect()
    };
    let (plain_names, instruct) = (names(&plain()), names(&instruct_retro()));
    let has = |list: &[(String, Vec<usize>)], name: &str| list.iter().any(|(n, _)| n == name);
    assert!(
        has(&plain_names, "embedding.position_embeddings.weight")
            && !has(&instruct, "embedding.position_embeddings.weight")
    );
    assert!(!has(&plain_names, "output_layer.weight"));
    assert_eq!(instruct.last().unwrap(), &("output_layer.weight".to_string(), vec![V, 32]));
    // No linear layer has a bias; LayerNorms keep theirs.
    assert!(instruct.iter().filter(|(n, _)| n.ends_with(".bias")).all(|(n, _)| n.contains("layernorm")));
    assert!(plain_names.iter().any(|(n, _)| n.ends_with("linear_qkv.bias")));
    // SwiGLU: fc1 gives both halves of 2/3 · 4 · 32 = 85 -> 64 features.
    let fc1 = instruct.iter().find(|(n, _)| n == "decoder.layers.0.mlp.linear_fc1.weight").unwrap();
    assert_eq!(fc1.1, [128, 32]);
    let fc2 = instruct.iter().find(|(n, _)| n == "decoder.layers.0.mlp.linear_fc2.weight").unwrap();
    assert_eq!(fc2.1, [32, 64]);
    // LayerNorm 1p starts at weight 0 (applied as 1).
    let m = RetroModel::init(&instruct_retro(), 1, DType::F64).unwrap();
    let w = m.params.get("decoder.layers.0.input_layernorm.weight").unwrap().to_f64_vec();
    assert!(w.iter().all(|&x| x == 0.0));
    assert_eq!(instruct_retro().rotary_dim(), Some(8), "half of each 16-dimension head");
    // Grouped-query attention: Q (32 rows) | K (16) | V (16); the CCA keeps its K | V of 2 x 32.
    let qkv = instruct.iter().find(|(n, _)| n == "decoder.layers.0.self_attention.linear_qkv.weight").unwrap();
    assert_eq!(qkv.1, [64, 32]);
    let kv = instruct.iter().find(|(n, _)| n == "decoder.layers.1.cross_attention.linear_kv.weight").unwrap();
    assert_eq!(kv.1, [64, 32]);
    let mut groups = plain();
    groups.num_query_groups = Some(3);
    let err = groups.validate().unwrap_err().to_string();
    assert!(err.contains("num_query_groups 3 does not divide num_heads 2"), "{err}");
    // Off, the options are not written, so older configs and checkpoints read the same.
    assert_eq!(plain().to_json(), RetroConfig::from_json(&plain().to_json()).unwrap().to_json());
    for key in ["rotary", "position_embedding", "swiglu", "bias_linear", "untie", "layernorm_1p"] {
        assert!(!plain().to_json().contains(key), "{key} written for a config without it");
    }
    let mut bad = plain();
    bad.rotary_percent = 0.5;
    bad.use_rotary_position_embeddings = true;
    bad.hidden_size = 4;
    bad.num_heads = 2;
    let err = bad.validate().unwrap_err().to_string();
    assert!(err.contains("rotary_percent 0.5 of a head of 2 dimensions rotates none"), "{err}");
}

// Grouped-query attention with one group per head is multi-head attention, parameter for parameter.
#[test]
fn grouped_query_attention_with_a_group_per_head_is_multi_head_attention() {
    let base = perturbed(RetroModel::init(&plain(), 3, DType::F64).unwrap(), 5);
    let mut c = plain();
    c.num_query_groups = Some(c.num_heads);
    let grouped = RetroModel::from_params(&c, base.params.clone()).unwrap();
    let b = batch();
    assert_eq!(logits(&grouped, &b), logits(&base, &b));
}

// LayerNorm 1p with stored w − 1 is LayerNorm with w (bit for bit: 0 + 1 is exact); an untied output
// layer holding the word embedding is the tied model.
#[test]
fn layernorm_1p_and_untied_output_are_reparametrisations_of_the_plain_model() {
    let (b, base) = (batch(), perturbed(RetroModel::init(&plain(), 3, DType::F64).unwrap(), 5));
    let mut c = plain();
    c.apply_layernorm_1p = true;
    let mut shifted = base.params.clone();
    for (spec, t) in shifted.specs.iter().zip(shifted.tensors.iter_mut()) {
        if spec.name.ends_with("layernorm.weight") {
            *t = Tensor::from_vec(t.to_f64_vec().iter().map(|w| w - 1.0).collect::<Vec<_>>(), &spec.shape).unwrap();
        }
    }
    // Stored w − 1 then applied as (w − 1) + 1: equal to w only where that round trip is exact.
    let one_p = RetroModel::from_params(&c, shifted).unwrap();
    let err = max_rel_err(&logits(&one_p, &b), &logits(&base, &b), 1e-9);
    assert!(err < 1e-12, "LayerNorm 1p differs by {err:e}");

    let mut c = plain();
    c.untie_embeddings_and_output_weights = true;
    let specs = RetroModel::specs(&c).unwrap();
    let by_name = base.params.by_name();
    let word = by_name["embedding.word_embeddings.weight"].clone();
    let tensors = specs.iter().map(|s| by_name.get(s.name.as_str()).map_or(word.clone(), |t| (*t).clone())).collect();
    let untied = RetroModel::from_params(&c, Params { specs, tensors }).unwrap();
    assert_eq!(logits(&untied, &b), logits(&base, &b));
}

// Whole-model central differences (f64) with every option on: rotary queries / keys (QKV weight), the
// SwiGLU MLP, a 1p LayerNorm weight, the untied output layer, the word embedding.
#[test]
fn instruct_retro_options_gradients_match_finite_differences() {
    let model = perturbed(RetroModel::init(&instruct_retro(), 9, DType::F64).unwrap(), 6);
    let b = batch();
    let word = b.tokens.data::<i64>().unwrap()[0] as usize * 32 + 1;
    let (numeric, analytic) = model_gradients_fd(
        &model,
        &b,
        &[
            ("decoder.layers.2.self_attention.linear_qkv.weight", 3),
            ("decoder.layers.2.self_attention.linear_qkv.weight", 32 * 32 + 5), // a key row
            ("decoder.layers.1.mlp.linear_fc1.weight", 7),
            ("decoder.layers.1.mlp.linear_fc1.weight", 64 * 32 + 7), // the SwiGLU's second half
            ("decoder.layers.3.pre_mlp_layernorm.weight", 2),
            ("output_layer.weight", 40),
            ("embedding.word_embeddings.weight", word),
        ],
    );
    assert!(analytic.iter().all(|g| g.abs() > 0.0), "{analytic:?}");
    // Relative to at least 1e-5: the differences' own rounding is ~3e-12 (the loss is ~4 in f64).
    let err = max_rel_err(&numeric, &analytic, 1e-5);
    assert!(err < 1e-6, "numeric {numeric:?} vs analytic {analytic:?} ({err:e})");
}

// Rotary embeddings turn each generated position's query and key by its own position: KV-cached decoding
// (GPT baseline, no retrieval needed) gives the full forward's logits at every position.
#[test]
fn kv_cached_decoding_with_rotary_embeddings_equals_the_full_forward() {
    let mut c = instruct_retro();
    c.gpt_baseline = true;
    let model = perturbed(RetroModel::init(&c, 2, DType::F64).unwrap(), 8);
    let mut rng = Rng::new(3);
    let tokens: Vec<u32> = (0..70).map(|_| rng.below(V as u64) as u32).collect();
    let mut ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
    ids.resize(128, 0);
    let full = {
        let mut tape = Tape::inference();
        let p = model.params.leaves(&mut tape);
        let ids = Tensor::from_vec(ids, &[1, 128]).unwrap();
        model.logits(&mut tape, &p, &ids, None).unwrap().into_value().to_f64_vec()
    };
    let mut dec = KvDecoder::new(&model, &model.params.tensors);
    let mut retrieve = |_: usize, _: &[u32]| -> retro::Result<Tensor> { unreachable!("the GPT retrieves nothing") };
    for (t, &token) in tokens.iter().enumerate() {
        let step = dec.push(token, &mut retrieve).unwrap();
        let err = max_rel_err(&step, &full[t * V..(t + 1) * V], 1e-9);
        assert!(err < 1e-10, "position {t}: cached logits differ from the full forward by {err:e}");
    }
}

// Options without a GPU path are refused on a GPU before any work, all named at once.
#[test]
fn options_without_a_gpu_path_refuse_a_gpu_naming_them() {
    let gpu = retro::tensor::Device::Cuda(0);
    assert!(plain().check_device(gpu).is_ok());
    let mut c = instruct_retro();
    c.cca_variant = "cca-relpos".into();
    let err = c.check_device(gpu).unwrap_err().to_string();
    for flag in [
        "--cca-variant cca-relpos",
        "--attention-variant gqa",
        "--use-rotary-position-embeddings",
        "--swiglu",
        "--no-position-embedding",
        "use --device cpu",
    ] {
        assert!(err.contains(flag), "{flag} missing: {err}");
    }
    assert!(c.check_device(retro::tensor::Device::Cpu).is_ok());
    let model = RetroModel::init(&c, 1, DType::F64).unwrap();
    assert!(model.leaves_on(gpu).unwrap_err().to_string().contains("--swiglu"));
}
