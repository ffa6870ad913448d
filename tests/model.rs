//! Properties of the RETRO model on a config other than the golden one (k = 3, 7 layers, CCA layers
//! [3, 6], seq 320): causality over tokens and neighbours, the GPT baseline, the options beyond Megatron,
//! whole-model finite differences, and parameter I/O.

mod common;

use common::max_rel_err;
use retro::autograd::Tape;
use retro::model::safetensors_io::{load_params, save_params, TensorFile};
use retro::model::{Batch, LossAndGrads, Params, RetroConfig, RetroModel};
use retro::rng::Rng;
use retro::tensor::{DType, Tensor};
use std::collections::HashMap;

const B: usize = 2;
const S: usize = 320;
const M: usize = 64;
const L: usize = S / M;
const K: usize = 3;
const R: usize = 128;
const V: usize = 96;

fn config() -> RetroConfig {
    let mut c = RetroConfig::preset("tiny").unwrap();
    c.name = "props".into();
    c.num_layers = 7;
    c.hidden_size = 32;
    c.num_heads = 4;
    c.vocab_size = V;
    c.seq_length = S;
    c.num_neighbors = K;
    c.retro_layer_numbers = Some(vec![3, 6]);
    c
}

/// A model whose biases and LayerNorm affines are perturbed (as the golden file does), so that a
/// missing bias or a mixed-up parameter cannot hide behind zeros and ones.
fn model(c: &RetroConfig) -> RetroModel {
    let mut m = RetroModel::init(c, 11, DType::F64).unwrap();
    let mut rng = Rng::new(12);
    for (spec, t) in m.params.specs.iter().zip(m.params.tensors.iter_mut()) {
        if spec.shape.len() == 1 {
            for x in t.data_mut::<f64>().unwrap() {
                *x += rng.normal() * if spec.name.contains("layernorm") { 0.1 } else { 0.02 };
            }
        }
    }
    m
}

fn random_ids(rng: &mut Rng, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec((0..n).map(|_| rng.below(V as u64) as i64).collect::<Vec<_>>(), shape).unwrap()
}

fn batch(seed: u64) -> Batch {
    let mut rng = Rng::new(seed);
    let tokens = random_ids(&mut rng, &[B, S]);
    Batch { labels: random_ids(&mut rng, &[B, S]), neighbors: Some(random_ids(&mut rng, &[B, L, K, R])), tokens }
}

fn logits(m: &RetroModel, tokens: &Tensor, neighbors: Option<&Tensor>) -> Vec<f64> {
    let mut tape = Tape::inference();
    let p = m.params.leaves(&mut tape);
    m.logits(&mut tape, &p, tokens, neighbors).unwrap().into_value().to_f64_vec()
}

/// Max |difference| of the logits of sample `b` per position.
fn position_diffs(a: &[f64], c: &[f64], b: usize) -> Vec<f64> {
    (0..S)
        .map(|t| {
            let o = (b * S + t) * V;
            a[o..o + V].iter().zip(&c[o..o + V]).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
        })
        .collect()
}

fn set(ids: &mut Tensor, flat: usize, value: i64) {
    ids.data_mut::<i64>().unwrap()[flat] = value;
}

#[test]
fn logits_at_t_do_not_depend_on_later_tokens() {
    let m = model(&config());
    let bt = batch(1);
    let base = logits(&m, &bt.tokens, bt.neighbors.as_ref());
    for p in [5usize, 63, 64, 127, 200, 319] {
        let mut tokens = bt.tokens.clone();
        let old = tokens.data::<i64>().unwrap()[S + p];
        set(&mut tokens, S + p, (old + 1) % V as i64);
        let d = position_diffs(&base, &logits(&m, &tokens, bt.neighbors.as_ref()), 1);
        assert!(d[..p].iter().all(|&x| x == 0.0), "changing token {p} changed an earlier logit");
        assert!(d[p] > 0.0, "changing token {p} did not change its own logits");
        // The other sample is untouched.
        assert!(position_diffs(&base, &logits(&m, &tokens, bt.neighbors.as_ref()), 0).iter().all(|&x| x == 0.0));
    }
}

#[test]
fn neighbours_of_chunk_c_affect_logits_only_from_position_64c_plus_63() {
    let m = model(&config());
    let bt = batch(2);
    let base = logits(&m, &bt.tokens, bt.neighbors.as_ref());
    for c in 0..L {
        let mut nb = bt.neighbors.clone().unwrap();
        for j in 0..K {
            let flat = ((L + c) * K + j) * R + 17; // sample 1, chunk c, neighbour j, token 17
            let old = nb.data::<i64>().unwrap()[flat];
            set(&mut nb, flat, (old + 5) % V as i64);
        }
        let d = position_diffs(&base, &logits(&m, &bt.tokens, Some(&nb)), 1);
        let first = M * c + M - 1;
        assert!(d[..first].iter().all(|&x| x == 0.0), "neighbours of chunk {c} changed a logit before {first}");
        if first < S {
            assert!(d[first] > 0.0, "neighbours of chunk {c} did not change the logit at {first}");
        }
    }
}

#[test]
fn positions_0_to_62_never_depend_on_any_neighbour() {
    let m = model(&config());
    let bt = batch(3);
    let base = logits(&m, &bt.tokens, bt.neighbors.as_ref());
    let other = batch(4).neighbors.unwrap();
    let changed = logits(&m, &bt.tokens, Some(&other));
    for b in 0..B {
        let d = position_diffs(&base, &changed, b);
        assert!(d[..M - 1].iter().all(|&x| x == 0.0));
        assert!(d[M - 1..].iter().all(|&x| x > 0.0));
    }
}

fn gpt_from(retro: &RetroModel) -> RetroModel {
    let mut c = retro.config.clone();
    c.gpt_baseline = true;
    let specs = RetroModel::specs(&c).unwrap();
    let by_name = retro.params.by_name();
    let tensors = specs.iter().map(|s| by_name[s.name.as_str()].clone()).collect();
    RetroModel::from_params(&c, Params { specs, tensors }).unwrap()
}

#[test]
fn gpt_baseline_equals_retro_with_its_cca_layers_removed() {
    let mut retro = model(&config());
    let gpt = gpt_from(&retro);
    assert!(!gpt.is_retro() && gpt.params.len() < retro.params.len());
    assert!(gpt.params.specs.iter().all(|s| !s.name.contains("cross") && !s.name.contains("encoder")));
    // Zero the CCA output projections: the CCA then adds exactly zero.
    for (spec, t) in retro.params.specs.iter().zip(retro.params.tensors.iter_mut()) {
        if spec.name.contains("decoder.layers")
            && spec.name.contains("cross_attention.linear_proj")
            && !spec.name.contains("encoder")
        {
            *t = Tensor::zeros(t.shape(), t.dtype());
        }
    }
    let bt = batch(5);
    assert_eq!(logits(&retro, &bt.tokens, bt.neighbors.as_ref()), logits(&gpt, &bt.tokens, None));
    let err = gpt.logits(&mut Tape::inference(), &[], &bt.tokens, None);
    assert!(err.is_err(), "no parameters given");
}

#[test]
fn cca_gate_zero_is_the_gpt_baseline_and_other_gates_change_the_output() {
    let mut c = config();
    c.cca_variant = "cca-gate".into();
    c.retro_attention_gate = 0.0;
    let gated = RetroModel::from_params(&c, model(&config()).params).unwrap();
    let bt = batch(6);
    assert_eq!(logits(&gated, &bt.tokens, bt.neighbors.as_ref()), logits(&gpt_from(&gated), &bt.tokens, None));
    c.retro_attention_gate = 0.5;
    let half = RetroModel::from_params(&c, model(&config()).params).unwrap();
    let full = model(&config());
    assert_ne!(logits(&half, &bt.tokens, bt.neighbors.as_ref()), logits(&full, &bt.tokens, bt.neighbors.as_ref()));
}

#[test]
fn missing_neighbours_are_an_error_by_default_and_masked_when_enabled() {
    let bt = batch(7);
    // Neighbour 2 of every chunk missing.
    let mut nb = bt.neighbors.clone().unwrap();
    for i in 0..B * L {
        nb.data_mut::<i64>().unwrap()[(i * K + 2) * R..(i * K + 3) * R].iter_mut().for_each(|t| *t = -1);
    }
    let m = model(&config());
    let mut tape = Tape::inference();
    let p = m.params.leaves(&mut tape);
    let err = m.logits(&mut tape, &p, &bt.tokens, Some(&nb)).unwrap_err().to_string();
    assert!(
        err.contains("neighbour 2 of chunk 0 of sample 0 is missing") && err.contains("mask_missing_neighbors"),
        "{err}"
    );
    // Masked, k = 3 with neighbour 2 missing equals k = 2 with neighbours 0 and 1 (same parameters).
    let mut c3 = config();
    c3.mask_missing_neighbors = true;
    let masked = RetroModel::from_params(&c3, m.params.clone()).unwrap();
    let mut c2 = config();
    c2.num_neighbors = 2;
    let two = RetroModel::from_params(&c2, m.params.clone()).unwrap();
    let kept: Vec<i64> = nb.data::<i64>().unwrap().chunks(K * R).flat_map(|c| c[..2 * R].to_vec()).collect();
    let kept = Tensor::from_vec(kept, &[B, L, 2, R]).unwrap();
    let a = logits(&masked, &bt.tokens, Some(&nb));
    let b = logits(&two, &bt.tokens, Some(&kept));
    assert!(max_rel_err(&a, &b, 1e-6) < 1e-10);
    // A partly missing neighbour is always an error.
    let mut partial = bt.neighbors.clone().unwrap();
    set(&mut partial, 5, -1);
    let err = masked.logits(
        &mut Tape::inference(),
        &masked.params.leaves(&mut Tape::inference()),
        &bt.tokens,
        Some(&partial),
    );
    let err = err.unwrap_err().to_string();
    assert!(err.contains("1 of 128 tokens = -1"), "{err}");
}

#[test]
fn bad_batch_shapes_are_errors_naming_the_shapes() {
    let m = model(&config());
    let bt = batch(8);
    let mut tape = Tape::inference();
    let p = m.params.leaves(&mut tape);
    let short = Tensor::from_vec(vec![0i64; B * L * 2 * R], &[B, L, 2, R]).unwrap();
    let err = m.logits(&mut tape, &p, &bt.tokens, Some(&short)).unwrap_err().to_string();
    assert!(err.contains("[2, 5, 2, 128]") && err.contains("k 3"), "{err}");
    let err = m.logits(&mut tape, &p, &bt.tokens, None).unwrap_err().to_string();
    assert!(err.contains("needs neighbour tokens"), "{err}");
    let odd = Tensor::from_vec(vec![0i64; 100], &[1, 100]).unwrap();
    let err = m.logits(&mut tape, &p, &odd, bt.neighbors.as_ref()).unwrap_err().to_string();
    assert!(err.contains("not a multiple of chunk_length 64"), "{err}");
}

#[test]
fn whole_model_gradients_match_finite_differences_for_every_kind_of_parameter() {
    let m = model(&config());
    let mut bt = batch(9);
    // One sample keeps this quick; every parameter kind is still exercised.
    bt.tokens = bt.tokens.reshape(&[B * S]).unwrap();
    bt.tokens = Tensor::from_vec(bt.tokens.data::<i64>().unwrap()[..S].to_vec(), &[1, S]).unwrap();
    bt.labels = Tensor::from_vec(bt.labels.data::<i64>().unwrap()[..S].to_vec(), &[1, S]).unwrap();
    bt.neighbors = Some(
        Tensor::from_vec(bt.neighbors.unwrap().data::<i64>().unwrap()[..L * K * R].to_vec(), &[1, L, K, R]).unwrap(),
    );
    let LossAndGrads { loss, grads: analytic } = m.loss_and_grads(&bt).unwrap();
    // One parameter of every kind: the name with its layer numbers removed.
    let mut kinds: HashMap<String, usize> = HashMap::new();
    for (i, s) in m.params.specs.iter().enumerate() {
        let kind: String =
            s.name.split('.').filter(|part| part.parse::<usize>().is_err()).collect::<Vec<_>>().join(".");
        kinds.entry(kind).or_insert(i);
    }
    assert!(kinds.len() >= 30, "only {} kinds", kinds.len());
    // Directional derivative along a random direction u over the whole tensor: the tape's <g, u>
    // against a fourth-order central difference of the loss along u. Summing over all elements keeps
    // the signal far above the loss's f64 round-off, so the check is tight for every kind.
    let mut rng = Rng::new(13);
    let mut worst = 0.0f64;
    for (kind, &i) in &kinds {
        let u: Vec<f64> = (0..m.params.tensors[i].numel()).map(|_| rng.normal()).collect();
        let analytic_dir: f64 = analytic[i].to_f64_vec().iter().zip(&u).map(|(g, u)| g * u).sum();
        let h = 1e-4;
        let at = |delta: f64| {
            let mut p = m.params.clone();
            for (x, d) in p.tensors[i].data_mut::<f64>().unwrap().iter_mut().zip(&u) {
                *x += delta * d;
            }
            RetroModel::from_params(&m.config, p).unwrap().eval_loss(&bt).unwrap()
        };
        let numeric = (8.0 * (at(h) - at(-h)) - (at(2.0 * h) - at(-2.0 * h))) / (12.0 * h);
        // The floor (1e-4 of the loss) matters only for near-zero directional derivatives, e.g. the key
        // biases, whose gradient is exactly zero (softmax is shift-invariant) apart from the V half.
        let err = (numeric - analytic_dir).abs() / numeric.abs().max(analytic_dir.abs()).max(1e-4 * loss);
        assert!(err <= 1e-6, "{kind}: analytic {analytic_dir} numeric {numeric} (rel err {err:.2e})");
        worst = worst.max(err);
    }
    println!("{} parameter kinds; worst relative error {worst:.2e}", kinds.len());
}

#[test]
fn safetensors_round_trip_is_bitwise() {
    let m = RetroModel::init(&config(), 3, DType::F32).unwrap();
    let path = common::temp_dir("model").join("roundtrip.safetensors");
    let meta = HashMap::from([("config".to_string(), m.config.to_json())]);
    save_params(&path, &m.params, meta).unwrap();
    let file = TensorFile::read(&path).unwrap();
    assert_eq!(RetroConfig::from_json(&file.metadata["config"]).unwrap(), m.config);
    let (loaded, report) = load_params(&file, &m.params.specs, DType::F32, true, 0, &[]).unwrap();
    assert_eq!(loaded, m.params);
    assert!(report.missing.is_empty() && report.unexpected.is_empty());
    std::fs::remove_file(path).unwrap();
}

#[test]
fn strict_load_of_a_gpt_checkpoint_into_retro_lists_the_missing_names() {
    let retro = model(&config());
    let gpt = gpt_from(&retro);
    let path = common::temp_dir("model").join("gpt.safetensors");
    save_params(&path, &gpt.params, HashMap::new()).unwrap();
    let file = TensorFile::read(&path).unwrap();
    let err = load_params(&file, &retro.params.specs, DType::F64, true, 0, &[]).unwrap_err().to_string();
    assert!(
        err.contains("missing parameter") && err.contains("decoder.layers.2.cross_attention.linear_q.weight"),
        "{err}"
    );
    assert!(err.contains("decoder.layers.2.encoder.layers.0.cross_attention.linear_kv.bias"), "{err}");
    // Non-strict: everything shared is loaded bitwise, the CCA and encoder parameters are initialised and listed.
    let (params, report) = load_params(&file, &retro.params.specs, DType::F64, false, 0, &[]).unwrap();
    let expected_missing: Vec<String> =
        retro.params.specs.iter().filter(|s| gpt.params.index(&s.name).is_none()).map(|s| s.name.clone()).collect();
    assert_eq!(report.missing, expected_missing);
    assert!(report.unexpected.is_empty());
    for s in &gpt.params.specs {
        assert_eq!(params.get(&s.name).unwrap(), gpt.params.get(&s.name).unwrap());
    }
    std::fs::remove_file(path).unwrap();
}

#[test]
fn dropout_is_seeded_and_its_gradients_match_finite_differences() {
    let mut c = config();
    c.dropout = 0.1;
    let m = RetroModel::from_params(&c, model(&config()).params).unwrap();
    let bt = batch(1);
    let a = m.train_step(&bt, 5).unwrap();
    let b = m.train_step(&bt, 5).unwrap();
    assert_eq!(a.loss, b.loss);
    assert!(a.grads.iter().zip(&b.grads).all(|(x, y)| x == y), "same seed, different gradients");
    assert_ne!(a.loss, m.train_step(&bt, 6).unwrap().loss);
    assert_ne!(a.loss, m.loss_and_grads(&bt).unwrap().loss);
    // No dropout at p = 0: training equals plain forward/backward.
    let plain = model(&config());
    assert_eq!(plain.train_step(&bt, 5).unwrap().loss, plain.loss_and_grads(&bt).unwrap().loss);
    // With the masks fixed by the seed the loss is a smooth function: check directional derivatives.
    let mut rng = Rng::new(21);
    for name in [
        "decoder.layers.2.cross_attention.linear_kv.weight",
        "decoder.layers.0.self_attention.linear_qkv.weight",
        "embedding.word_embeddings.weight",
    ] {
        let i = m.params.index(name).unwrap();
        let u: Vec<f64> = (0..m.params.tensors[i].numel()).map(|_| rng.normal()).collect();
        let analytic: f64 = a.grads[i].to_f64_vec().iter().zip(&u).map(|(g, u)| g * u).sum();
        let at = |delta: f64| {
            let mut p = m.params.clone();
            for (x, d) in p.tensors[i].data_mut::<f64>().unwrap().iter_mut().zip(&u) {
                *x += delta * d;
            }
            RetroModel::from_params(&c, p).unwrap().train_step(&bt, 5).unwrap().loss
        };
        let h = 1e-4;
        let numeric = (8.0 * (at(h) - at(-h)) - (at(2.0 * h) - at(-2.0 * h))) / (12.0 * h);
        let err = (numeric - analytic).abs() / numeric.abs().max(analytic.abs());
        assert!(err < 1e-6, "{name}: {analytic} vs {numeric}");
    }
}
