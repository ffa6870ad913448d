//! The tiny model against PyTorch's golden values (../shared/torch_retro/golden), and the errors
//! `retro check-golden` gives for bad files.

mod common;

use retro::model::safetensors_io::{serialize, TensorFile};
use retro::tensor::DType;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn golden_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/torch_retro/golden");
    assert!(dir.is_dir(), "{} is missing: the golden values live in ../shared beside the checkout", dir.display());
    dir
}

fn golden_json() -> Value {
    serde_json::from_str(&std::fs::read_to_string(golden_dir().join("golden_tiny.json")).unwrap()).unwrap()
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs()
}

#[test]
fn f64_matches_pytorch_loss_grad_norms_and_adamw_trajectory() {
    let golden = golden_json();
    let g = &golden["float64"];
    let report = retro::commands::golden::run(&golden_dir().join("retro_tiny.safetensors"), DType::F64).unwrap();
    assert!(rel(report.loss, g["loss"].as_f64().unwrap()) < 1e-10, "loss {} vs {}", report.loss, g["loss"]);
    assert!(rel(report.global_grad_norm, g["global_grad_norm"].as_f64().unwrap()) < 1e-9);
    let norms = g["grad_norms"].as_object().unwrap();
    assert_eq!(norms.len(), report.grad_norms.len(), "parameter count differs from the golden file");
    for (name, want) in norms {
        let got = report.grad_norms.get(name).unwrap_or_else(|| panic!("no gradient for {name}"));
        assert!(rel(*got, want.as_f64().unwrap()) < 1e-9, "grad norm of {name}: {got} vs {want}");
    }
    let adamw = &golden["adamw"]["float64"];
    let mut want: Vec<f64> =
        adamw["losses_before_each_step"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    want.push(adamw["loss_after_last_step"].as_f64().unwrap());
    assert_eq!(report.adamw_losses.len(), 4);
    for (i, (got, want)) in report.adamw_losses.iter().zip(&want).enumerate() {
        assert!(rel(*got, *want) < 1e-9, "AdamW loss {i}: {got} vs {want}");
    }
}

#[test]
fn f32_matches_pytorch_loss() {
    let want = golden_json()["float64"]["loss"].as_f64().unwrap();
    let (model, batch) =
        retro::commands::golden::load(&golden_dir().join("retro_tiny.safetensors"), DType::F32).unwrap();
    let got = model.loss_and_grads(&batch).unwrap().loss;
    assert!(rel(got, want) < 1e-5, "f32 loss {got} vs {want}");
}

#[test]
fn f64_logits_and_hidden_checksums_match() {
    use retro::autograd::Tape;
    let g = &golden_json()["float64"];
    let (model, batch) =
        retro::commands::golden::load(&golden_dir().join("retro_tiny.safetensors"), DType::F64).unwrap();
    let mut tape = Tape::inference();
    let p = model.params.leaves(&mut tape);
    let logits =
        model.logits(&mut tape, &p, &batch.tokens, batch.neighbors.as_ref()).unwrap().into_value().to_f64_vec();
    let sum: f64 = logits.iter().sum();
    assert!(rel(sum, g["logits_sum"].as_f64().unwrap()) < 1e-10, "logits sum {sum}");
    let v = model.config.vocab_size;
    for (i, want) in g["logits_b0_t0_first8"].as_array().unwrap().iter().enumerate() {
        assert!(rel(logits[i], want.as_f64().unwrap()) < 1e-10);
    }
    let last = (2 * 256 - 1) * v;
    for (i, want) in g["logits_b1_tlast_first8"].as_array().unwrap().iter().enumerate() {
        assert!(rel(logits[last + i], want.as_f64().unwrap()) < 1e-10);
    }
}

// ---------------------------------------------------------------- bad files

fn check_golden(path: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_retro")).args(["check-golden", "--weights"]).arg(path).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn rewritten(name: &str, edit: impl FnOnce(&mut TensorFile)) -> PathBuf {
    let mut file = TensorFile::read(&golden_dir().join("retro_tiny.safetensors")).unwrap();
    edit(&mut file);
    let named: Vec<(&str, &retro::tensor::Tensor)> = file.tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let bytes = serialize(&named, file.metadata.clone()).unwrap();
    let path = common::temp_dir("golden").join(format!("{name}.safetensors"));
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn check_golden_cli_prints_one_json_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_retro"))
        .args(["check-golden", "--dtype", "f64", "--weights"])
        .arg(golden_dir().join("retro_tiny.safetensors"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1);
    let v: Value = serde_json::from_str(&text).unwrap();
    for key in ["loss", "global_grad_norm", "grad_norms", "adamw_losses"] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
}

#[test]
fn not_a_safetensors_file_exits_2() {
    let path = common::temp_dir("golden").join("garbage.safetensors");
    std::fs::write(&path, b"definitely not safetensors").unwrap();
    let (code, err) = check_golden(&path);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a valid safetensors file") && err.contains("garbage"), "{err}");
}

#[test]
fn a_missing_tensor_is_named_and_exits_2() {
    let path = rewritten("missing", |f| {
        f.tensors.remove("decoder.layers.1.cross_attention.linear_kv.weight");
    });
    let (code, err) = check_golden(&path);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("decoder.layers.1.cross_attention.linear_kv.weight") && err.contains("missing"), "{err}");
    let path = rewritten("no-batch", |f| {
        f.tensors.remove("batch.neighbor_tokens");
    });
    let (code, err) = check_golden(&path);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("batch.neighbor_tokens"), "{err}");
}

#[test]
fn a_shape_that_disagrees_with_the_config_is_named_and_exits_2() {
    let path = rewritten("shape", |f| {
        let t = f.tensors["decoder.layers.0.mlp.linear_fc1.bias"].clone();
        f.tensors.insert("decoder.layers.0.mlp.linear_fc1.bias".into(), t.reshape(&[16, 16]).unwrap());
    });
    let (code, err) = check_golden(&path);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("decoder.layers.0.mlp.linear_fc1.bias") && err.contains("[16, 16]") && err.contains("[256]"),
        "{err}"
    );
    let path = rewritten("config", |f| {
        f.metadata.insert("config".into(), f.metadata["config"].replace("\"num_heads\": 4", "\"num_heads\": 3"));
    });
    let (code, err) = check_golden(&path);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not divisible by num_heads 3"), "{err}");
}
