//! The attention-variant lab's CCA variants (src/variants): the registry, each variant's parameters, its
//! gradients against finite differences through the whole model (f64), and the properties that define
//! it: `cca-gate` at 1 is `cca`, at 0 the GPT baseline; `cca-tanh-gate` at its initial gate 0 is exactly
//! the GPT baseline, so a retro-fit from a GPT checkpoint starts at the GPT's loss; `cca-relpos` at its
//! initial zero bias is `cca`.

mod common;

use common::{max_rel_err, model_gradients_fd};
use retro::autograd::Tape;
use retro::model::safetensors_io::{load_params, save_params, TensorFile};
use retro::model::{Batch, Params, RetroConfig, RetroModel};
use retro::rng::Rng;
use retro::tensor::{DType, Tensor};

const B: usize = 2;
const S: usize = 128;
const K: usize = 2;
const V: usize = 61;

fn config(variant: &str) -> RetroConfig {
    let mut c = RetroConfig::preset("tiny").unwrap();
    c.hidden_size = 16;
    c.num_heads = 2;
    c.vocab_size = V;
    c.seq_length = S;
    c.num_neighbors = K;
    c.cca_variant = variant.into();
    c
}

fn batch() -> Batch {
    let mut rng = Rng::new(4);
    let mut ids = |shape: &[usize]| {
        let n = shape.iter().product();
        Tensor::from_vec((0..n).map(|_| rng.below(V as u64) as i64).collect::<Vec<_>>(), shape).unwrap()
    };
    let (tokens, labels) = (ids(&[B, S]), ids(&[B, S]));
    Batch { tokens, labels, neighbors: Some(ids(&[B, S / 64, K, 128])) }
}

fn logits(m: &RetroModel, b: &Batch) -> Vec<f64> {
    let mut tape = Tape::inference();
    let p = m.params.leaves(&mut tape);
    m.logits(&mut tape, &p, &b.tokens, b.neighbors.as_ref()).unwrap().into_value().to_f64_vec()
}

/// The GPT baseline holding `retro`'s decoder parameters.
fn gpt_from(retro: &RetroModel) -> RetroModel {
    let mut c = retro.config.clone();
    c.gpt_baseline = true;
    c.cca_variant = "cca".into();
    c.retro_attention_gate = 1.0;
    let specs = RetroModel::specs(&c).unwrap();
    let by_name = retro.params.by_name();
    let tensors = specs.iter().map(|s| by_name[s.name.as_str()].clone()).collect();
    RetroModel::from_params(&c, Params { specs, tensors }).unwrap()
}

fn set_gates(m: &mut RetroModel, value: f64) {
    for (spec, t) in m.params.specs.iter().zip(m.params.tensors.iter_mut()) {
        if spec.name.ends_with("tanh_gate") {
            *t = Tensor::from_vec(vec![value], &[1]).unwrap();
        }
    }
}

#[test]
fn the_registry_names_every_variant_and_refuses_unknown_ones_listing_them() {
    let names: Vec<&str> = retro::variants::CCA_VARIANTS.iter().map(|v| v.name).collect();
    assert_eq!(names, ["cca", "cca-gate", "cca-tanh-gate", "cca-relpos"]);
    let err = retro::variants::cca_variant("cca-magic").unwrap_err().to_string();
    assert!(err.contains("cca-magic") && err.contains("cca, cca-gate, cca-tanh-gate, cca-relpos"), "{err}");
    let err = RetroModel::init(&config("nope"), 1, DType::F64).unwrap_err().to_string();
    assert!(err.contains("cca_variant") && err.contains("\"nope\""), "{err}");
    let mut gated = config("cca");
    gated.retro_attention_gate = 0.5;
    let err = gated.validate().unwrap_err().to_string();
    assert!(err.contains("retro_attention_gate 0.5") && err.contains("cca-gate"), "{err}");
    // The default is not written, so configs from before variants existed read (and compare) the same.
    assert!(!config("cca").to_json().contains("cca_variant"));
    assert!(config("cca-tanh-gate").to_json().contains("\"cca_variant\":\"cca-tanh-gate\""));
}

#[test]
fn cca_adds_no_parameters_and_cca_gate_at_one_is_cca_bitwise() {
    let cca = RetroModel::init(&config("cca"), 7, DType::F64).unwrap();
    let mut c = config("cca-gate");
    c.retro_attention_gate = 1.0;
    let gate = RetroModel::from_params(&c, cca.params.clone()).unwrap();
    assert_eq!(RetroModel::specs(&c).unwrap(), cca.params.specs, "cca-gate has no parameters of its own");
    let b = batch();
    assert_eq!(logits(&gate, &b), logits(&cca, &b));
    c.retro_attention_gate = 0.0;
    let closed = RetroModel::from_params(&c, cca.params.clone()).unwrap();
    assert_eq!(logits(&closed, &b), logits(&gpt_from(&cca), &b), "gate 0 is the GPT baseline");
}

#[test]
fn cca_tanh_gate_adds_one_zero_gate_per_cca_layer_and_starts_as_the_gpt_baseline() {
    let model = RetroModel::init(&config("cca-tanh-gate"), 7, DType::F64).unwrap();
    let gates: Vec<_> = model.params.specs.iter().filter(|s| s.name.ends_with("tanh_gate")).collect();
    let names: Vec<&str> = gates.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["decoder.layers.1.cross_attention.tanh_gate", "decoder.layers.3.cross_attention.tanh_gate"]);
    assert!(gates.iter().all(|s| s.shape == [1]) && !retro::train::adamw::decays(&[1]));
    let b = batch();
    assert_eq!(logits(&model, &b), logits(&gpt_from(&model), &b), "tanh(0) = 0: exactly the GPT's logits");
    let mut open = model.clone();
    set_gates(&mut open, 0.3);
    assert_ne!(logits(&open, &b), logits(&model, &b));
}

// A retro-fit (what `retro train --init-from GPT --cca-variant cca-tanh-gate` loads): the GPT checkpoint's
// parameters, the CCA, encoder and gates fresh; its loss is the GPT's, and the gates get a gradient.
#[test]
fn a_tanh_gated_retro_fit_starts_at_the_gpt_loss_and_learns_its_gates() {
    let gpt = RetroModel::init(&gpt_config(), 5, DType::F64).unwrap();
    let dir = common::temp_dir("variants");
    let path = dir.join("gpt.safetensors");
    save_params(&path, &gpt.params, Default::default()).unwrap();
    let c = config("cca-tanh-gate");
    let specs = RetroModel::specs(&c).unwrap();
    let (params, report) = load_params(&TensorFile::read(&path).unwrap(), &specs, DType::F64, false, 5, &[]).unwrap();
    assert!(report.missing.iter().any(|n| n.ends_with("tanh_gate")) && report.unexpected.is_empty());
    let fit = RetroModel::from_params(&c, params).unwrap();
    let b = batch();
    let (fit_loss, gpt_loss) = (fit.loss_and_grads(&b).unwrap(), gpt.eval_loss(&b).unwrap());
    assert_eq!(fit_loss.loss, gpt_loss, "the retro-fit starts at the GPT's loss");
    let gate = fit.params.index("decoder.layers.1.cross_attention.tanh_gate").unwrap();
    assert!(fit_loss.grads[gate].to_f64_vec()[0].abs() > 0.0, "the gate learns");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn gpt_config() -> RetroConfig {
    let mut c = config("cca");
    c.gpt_baseline = true;
    c
}

// Whole-model central differences (f64) of every gate and of a CCA weight, gates open.
#[test]
fn cca_tanh_gate_gradients_match_finite_differences() {
    let mut model = RetroModel::init(&config("cca-tanh-gate"), 9, DType::F64).unwrap();
    set_gates(&mut model, 0.4);
    // Fourth-order central differences: the gradients are small (~1e-5), the loss ~4.
    let (numeric, analytic) = model_gradients_fd(
        &model,
        &batch(),
        &[
            ("decoder.layers.1.cross_attention.tanh_gate", 0),
            ("decoder.layers.3.cross_attention.tanh_gate", 0),
            ("decoder.layers.3.cross_attention.linear_proj.weight", 0),
        ],
    );
    let err = max_rel_err(&numeric, &analytic, 1e-6);
    assert!(err < 1e-6, "numeric {numeric:?} vs analytic {analytic:?} ({err:e})");
}

const RELPOS: &str = "relative_position_bias";

/// Random relative-position biases (N(0, 0.5²)) in every CCA layer.
fn randomize_relpos(m: &mut RetroModel, seed: u64) {
    let mut rng = Rng::new(seed);
    for (spec, t) in m.params.specs.iter().zip(m.params.tensors.iter_mut()) {
        if spec.name.ends_with(RELPOS) {
            *t = Tensor::from_vec((0..t.numel()).map(|_| 0.5 * rng.normal()).collect::<Vec<f64>>(), &spec.shape)
                .unwrap();
        }
    }
}

#[test]
fn cca_relpos_adds_one_zero_bias_table_per_cca_layer_and_starts_as_cca() {
    let model = RetroModel::init(&config("cca-relpos"), 7, DType::F64).unwrap();
    let tables: Vec<_> = model.params.specs.iter().filter(|s| s.name.ends_with(RELPOS)).collect();
    let names: Vec<&str> = tables.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "decoder.layers.1.cross_attention.relative_position_bias",
            "decoder.layers.3.cross_attention.relative_position_bias"
        ]
    );
    // One column per distance t − i between a chunk row i (0..64) and a neighbour token t (0..128).
    assert!(tables.iter().all(|s| s.shape == [2, 64 + 128 - 1]));
    // Everything else is cca's, and with zero biases the logits are cca's, bit for bit.
    let (cca_config, b) = (config("cca"), batch());
    let by_name = model.params.by_name();
    let specs = RetroModel::specs(&cca_config).unwrap();
    let tensors = specs.iter().map(|s| by_name[s.name.as_str()].clone()).collect();
    let cca = RetroModel::from_params(&cca_config, Params { specs, tensors }).unwrap();
    assert_eq!(logits(&model, &b), logits(&cca, &b));
    let mut biased = model.clone();
    randomize_relpos(&mut biased, 3);
    assert_ne!(logits(&biased, &b), logits(&model, &b));
}

// Whole-model central differences (f64) of bias entries (distance −63, 0, the continuation's 64, 127)
// and of a CCA weight, with random biases.
#[test]
fn cca_relpos_gradients_match_finite_differences() {
    let mut model = RetroModel::init(&config("cca-relpos"), 9, DType::F64).unwrap();
    randomize_relpos(&mut model, 4);
    let (numeric, analytic) = model_gradients_fd(
        &model,
        &batch(),
        &[
            ("decoder.layers.1.cross_attention.relative_position_bias", 0),
            ("decoder.layers.1.cross_attention.relative_position_bias", 63),
            ("decoder.layers.3.cross_attention.relative_position_bias", 191 + 127),
            ("decoder.layers.3.cross_attention.relative_position_bias", 190),
            ("decoder.layers.3.cross_attention.linear_q.weight", 5),
        ],
    );
    assert!(analytic.iter().all(|g| g.abs() > 0.0), "every checked entry has a gradient: {analytic:?}");
    let err = max_rel_err(&numeric, &analytic, 1e-6);
    assert!(err < 1e-6, "numeric {numeric:?} vs analytic {analytic:?} ({err:e})");
}

// ---------------------------------------------------------------- retro bench attention's check

fn bench(variants: Vec<&'static retro::variants::CcaVariantEntry>) -> retro::bench::attention::AttentionBench {
    retro::bench::attention::AttentionBench {
        variants,
        config: RetroConfig::preset("tiny").unwrap(),
        device: retro::tensor::Device::Cpu,
        micro_batch: 1,
        reps: 1,
    }
}

#[test]
fn the_bench_check_passes_every_registered_variant_in_f32_against_f64() {
    let b = bench(retro::variants::CCA_VARIANTS.iter().collect());
    for entry in &b.variants {
        let (line, ok) = b.check(entry).unwrap();
        assert!(ok, "{line}");
        assert_eq!(line["dtype"], "f32");
        // Every gradient is compared: queries, context, the attention's six tensors, the variant's own.
        let own =
            RetroModel::specs(&config(entry.name)).unwrap().len() - RetroModel::specs(&config("cca")).unwrap().len();
        assert_eq!(line["errors"].as_object().unwrap().len(), 1 + 2 + 6 + own / 2, "{line}");
    }
}

/// A variant whose hand-written backward is wrong: the output doubled, its gradient tripled.
#[derive(Debug)]
struct WrongBackward;

impl retro::variants::CcaVariant for WrongBackward {
    fn attend(
        &self,
        tape: &mut Tape,
        p: &[retro::autograd::Var],
        attn: &retro::nn::CrossAttention,
        rows: &retro::variants::Attending,
    ) -> retro::Result<retro::autograd::Var> {
        let out = rows.cca(tape, p, attn, None)?;
        let doubled = retro::ops::scale_tensor(out.value(), 2.0)?;
        Ok(tape.record("wrong", &[&out], doubled, |g, _| Ok(vec![Some(retro::ops::scale_tensor(g, 3.0)?)])))
    }
}

static WRONG: retro::variants::CcaVariantEntry = retro::variants::CcaVariantEntry {
    name: "wrong-backward",
    about: "a deliberately wrong backward",
    build: |_, _, _| std::sync::Arc::new(WrongBackward),
};

#[test]
fn the_bench_check_catches_a_variant_whose_backward_is_wrong() {
    let b = bench(vec![&WRONG]);
    let (line, ok) = b.check(&WRONG).unwrap();
    assert!(!ok && line["check"] == "failed", "{line}");
    assert!(line["reference_fd_rel_err"].as_f64().unwrap() > 0.1, "{line}");
}

#[test]
fn bench_attention_refuses_an_unknown_variant_listing_the_registry() {
    let (code, _, err) = common::retro(&["bench", "attention", "--variant", "cca-magic", "--device", "cpu"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--variant") && err.contains("cca-magic") && err.contains("cca-relpos"), "{err}");
}
