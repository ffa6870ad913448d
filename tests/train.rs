//! `retro train` and `retro eval` on a small preprocessed project: exact resume, metrics, evaluation,
//! and the bad inputs the training issue names.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::{retro, s};

/// One project shared by the tests (preprocessing is the slow part): seq 128, global batch 4.
fn project() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| common::small_project("train", &["--eval-interval", "2", "--eval-iters", "1"]))
}

fn run_dir(name: &str) -> PathBuf {
    common::run_dir_beside(project(), name)
}

const COMMON: [&str; 8] =
    ["--micro-batch-size", "2", "--lr", "2e-3", "--lr-decay-samples", "24", "--lr-warmup-samples", "4"];

fn train(run: &Path, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec!["train".to_string(), "--project".into(), s(project()), "--save".into(), s(run)];
    args.extend(COMMON.iter().map(|x| x.to_string()));
    args.extend(extra.iter().map(|x| x.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    retro(&refs)
}

fn losses(run: &Path) -> Vec<(u64, String)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["loss"].to_string())
        })
        .collect()
}

#[test]
fn ten_steps_equal_five_then_resume_five_bitwise() {
    let whole = run_dir("whole");
    let (code, _, err) = train(&whole, &["--train-iters", "10"]);
    assert_eq!(code, 0, "{err}");
    let split = run_dir("split");
    let (code, _, err) = train(&split, &["--train-iters", "5", "--save-interval", "5"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = train(&split, &["--train-iters", "10", "--load", &s(&split)]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("resuming from") && err.contains("iteration 5"), "{err}");
    assert_eq!(losses(&whole), losses(&split), "losses differ after resuming");
    assert_eq!(losses(&split).iter().map(|x| x.0).collect::<Vec<_>>(), (1..=10).collect::<Vec<_>>());
    let model = |run: &Path| std::fs::read(run.join("iter_0000010/model.safetensors")).unwrap();
    assert!(model(&whole) == model(&split), "final weights differ");
    let opt = |run: &Path| std::fs::read(run.join("iter_0000010/optimizer.safetensors")).unwrap();
    assert!(opt(&whole) == opt(&split), "optimizer state differs");
    // Validation loss is logged every eval_interval (2) steps; eval reads the checkpoint.
    let metrics = std::fs::read_to_string(whole.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().filter(|l| l.contains("valid_loss")).count(), 5);
    let (code, out, err) =
        retro(&["eval", "--checkpoint", &s(&whole), "--project", &s(project()), "--eval-iters", "2"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        v["valid_ppl"].as_f64().unwrap().is_finite() && v["valid_ppl_without_retrieval"].as_f64().unwrap().is_finite(),
        "{out}"
    );
    // The loss curves are drawn.
    let png = std::fs::read(whole.join("loss.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    // Training lowers the loss.
    let first: f64 = losses(&whole)[0].1.parse().unwrap();
    let last: f64 = losses(&whole)[9].1.parse().unwrap();
    assert!(last < first, "loss {first} -> {last}");
}

// Megatron's exit flags stop the run early with a checkpoint and exit 0; --load then continues it
// bitwise. --exit-duration-in-mins stops after the first step that passes the limit.
#[test]
fn exit_interval_and_duration_stop_with_a_checkpoint_that_resumes_bitwise() {
    let whole = run_dir("exit-whole");
    let (code, _, err) = train(&whole, &["--train-iters", "6"]);
    assert_eq!(code, 0, "{err}");
    let split = run_dir("exit-split");
    let (code, out, err) = train(&split, &["--train-iters", "6", "--exit-interval", "4"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("--exit-interval: stopped after iteration 4, checkpoint saved"), "{err}");
    assert!(out.contains("\"iterations\":4") && out.contains("\"stopped_by\":\"--exit-interval\""), "{out}");
    assert_eq!(std::fs::read_to_string(split.join("latest_checkpointed_iteration.txt")).unwrap(), "4");
    let (code, _, err) = train(&split, &["--train-iters", "6", "--load", &s(&split)]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(losses(&whole), losses(&split), "losses differ after an --exit-interval stop and resume");

    let timed = run_dir("exit-duration");
    let (code, out, err) = train(&timed, &["--train-iters", "6", "--exit-duration-in-mins", "0.0001"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"iterations\":1") && err.contains("--exit-duration-in-mins"), "{out} {err}");
    assert_eq!(std::fs::read_to_string(timed.join("latest_checkpointed_iteration.txt")).unwrap(), "1");
    let (code, _, err) = train(&timed, &["--train-iters", "6", "--exit-interval", "0"]);
    assert!(code != 0 && err.contains("must be positive"), "{err}");
}

#[test]
fn keep_retains_only_the_newest_checkpoints_and_the_gpt_baseline_trains() {
    let run = run_dir("keep");
    let (code, _, err) = train(&run, &["--train-iters", "4", "--save-interval", "1", "--keep", "2", "--no-retrieval"]);
    assert_eq!(code, 0, "{err}");
    let mut dirs: Vec<String> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("iter_"))
        .collect();
    dirs.sort();
    assert_eq!(dirs, vec!["iter_0000003", "iter_0000004"]);
    assert_eq!(std::fs::read_to_string(run.join("latest_checkpointed_iteration.txt")).unwrap(), "4");
    let (code, out, err) = retro(&["eval", "--checkpoint", &s(&run), "--project", &s(project())]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"model\":\"gpt\""), "{out}");
    // Retro-fit RETRO from that GPT checkpoint: the shared parameters load, CCA and encoder are listed.
    let fit = run_dir("retrofit");
    let (code, _, err) = train(&fit, &["--train-iters", "1", "--init-from", &s(&run)]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("were not in it and start fresh")
            && err.contains("decoder.layers.1.cross_attention.linear_q.weight"),
        "{err}"
    );
    assert!(
        err.contains("decoder.layers.1.encoder.layers.0.self_attention.linear_qkv.weight")
            && !err.contains("decoder.layers.0.mlp"),
        "{err}"
    );
}

#[test]
fn a_non_finite_loss_stops_naming_the_step_and_keeps_the_last_checkpoint() {
    let run = run_dir("nan");
    let (code, _, err) = train(&run, &["--train-iters", "2", "--save-interval", "1"]);
    assert_eq!(code, 0, "{err}");
    let good = std::fs::read(run.join("iter_0000002/model.safetensors")).unwrap();
    let (code, _, err) = train(
        &run,
        &["--train-iters", "30", "--load", &s(&run), "--lr", "1e30", "--lr-warmup-samples", "0", "--clip-grad", "0"],
    );
    assert_ne!(code, 0);
    assert!(err.contains("iteration") && (err.contains("loss is") || err.contains("gradient norm")), "{err}");
    assert_eq!(std::fs::read(run.join("iter_0000002/model.safetensors")).unwrap(), good);
}

#[test]
fn bad_inputs_fail_before_training_with_clear_messages() {
    let run = run_dir("bad");
    let (code, _, err) = retro(&["train", "--project", "/nonexistent/project", "--save", &s(&run)]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/project") && err.contains("retro preprocess"), "{err}");
    let (code, _, err) = train(&run, &["--device", "cuda"]);
    assert_eq!(code, 2);
    assert!(err.contains("--device cuda") && err.contains("--device cpu"), "{err}");
    let (code, _, err) = train(&run, &["--global-batch-size", "8"]);
    assert_eq!(code, 2);
    assert!(err.contains("--global-batch-size 8") && err.contains("retro_gpt_global_batch_size = 4"), "{err}");
    // An unwritable output directory: a path below a regular file.
    let file = project().parent().unwrap().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let (code, _, err) = train(&file.join("run"), &["--train-iters", "1"]);
    assert_eq!(code, 2);
    assert!(err.contains("--save") && err.contains("a-file"), "{err}");
    // More neighbours per chunk than the project saved.
    let cfg = project().parent().unwrap().join("k4.json");
    let mut c = retro::model::RetroConfig::preset("tiny").unwrap();
    c.num_neighbors = 4;
    std::fs::write(&cfg, c.to_json()).unwrap();
    let (code, _, err) = train(&run, &["--config", &s(&cfg), "--train-iters", "1"]);
    assert_eq!(code, 2);
    assert!(err.contains("3 neighbours per chunk saved") && err.contains("k = 4"), "{err}");
    // Resuming with another model config lists what changed.
    let (code, _, err) = train(&run, &["--train-iters", "1"]);
    assert_eq!(code, 0, "{err}");
    let mut wide = retro::model::RetroConfig::preset("tiny").unwrap();
    wide.hidden_size = 32;
    let wide_cfg = project().parent().unwrap().join("wide.json");
    std::fs::write(&wide_cfg, wide.to_json()).unwrap();
    let (code, _, err) = train(&run, &["--config", &s(&wide_cfg), "--train-iters", "2", "--load", &s(&run)]);
    assert_eq!(code, 2);
    assert!(err.contains("refusing to resume") && err.contains("model"), "{err}");
    // A missing neighbour file.
    let copy = project().parent().unwrap().join("project-no-neighbours");
    let _ = std::fs::remove_dir_all(&copy);
    let status = Command::new("cp").arg("-r").arg(project()).arg(&copy).status().unwrap();
    assert!(status.success());
    std::fs::remove_file(copy.join("neighbors/train.bin")).unwrap();
    let (code, _, err) = retro(&["train", "--project", &s(&copy), "--save", &s(&run_dir("nb")), "--train-iters", "1"]);
    assert_eq!(code, 2);
    assert!(err.contains("neighbors/train.bin"), "{err}");
    // A checkpoint of another config given to eval with a mismatched model: names and shapes listed.
    let ck = run.join("iter_0000001");
    let mut st = retro::model::safetensors_io::TensorFile::read(&ck.join("model.safetensors")).unwrap();
    let mut meta_cfg: retro::model::RetroConfig = retro::model::RetroConfig::from_json(&st.metadata["config"]).unwrap();
    meta_cfg.num_heads = 2;
    meta_cfg.hidden_size = 32;
    st.metadata.insert("config".into(), meta_cfg.to_json());
    let named: Vec<(&str, &retro::tensor::Tensor)> = st.tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let bytes = retro::model::safetensors_io::serialize(&named, st.metadata.clone()).unwrap();
    std::fs::write(ck.join("model.safetensors"), &bytes).unwrap();
    // Recorded in state.json as a checkpoint written that way would be, so the checksums pass.
    let mut state = retro::train::checkpoint::load_state(&ck).unwrap();
    state.files.insert("model.safetensors".into(), retro::data::integrity::Sums::of(&bytes));
    let sealed = retro::data::integrity::seal_json(serde_json::to_value(&state).unwrap()).unwrap();
    std::fs::write(ck.join("state.json"), sealed).unwrap();
    let (code, _, err) = retro(&["eval", "--checkpoint", &s(&ck), "--project", &s(project())]);
    assert_ne!(code, 0);
    assert!(
        err.contains("shape mismatch")
            && err.contains("embedding.word_embeddings.weight")
            && err.contains("[50304, 64]"),
        "{err}"
    );
}

// `--cca-variant` trains the lab's variant, stores it in the checkpoint's config, and a resume with
// another variant is refused naming it; an unknown name lists the registered ones, before any work.
#[test]
fn the_cca_variant_is_trained_stored_and_must_match_on_resume() {
    let run = run_dir("tanh-gate");
    let (code, _, err) = train(&run, &["--train-iters", "2", "--cca-variant", "cca-tanh-gate"]);
    assert_eq!(code, 0, "{err}");
    let checkpoint = std::fs::read_to_string(run.join("iter_0000002/state.json")).unwrap();
    assert!(checkpoint.contains("\"cca_variant\": \"cca-tanh-gate\""), "{checkpoint}");
    let load = s(&run);
    let (code, _, err) = train(&run, &["--train-iters", "3", "--load", &load]);
    assert_ne!(code, 0);
    assert!(err.contains("other settings") && err.contains("cca_variant"), "{err}");
    let (code, _, err) = train(&run, &["--train-iters", "3", "--load", &load, "--cca-variant", "cca-tanh-gate"]);
    assert_eq!(code, 0, "{err}");
    let fresh = run_dir("unknown-variant");
    let (code, _, err) = train(&fresh, &["--train-iters", "1", "--cca-variant", "cca-magic"]);
    assert_ne!(code, 0);
    assert!(err.contains("--cca-variant") && err.contains("cca, cca-gate, cca-tanh-gate"), "{err}");
    assert!(!fresh.exists(), "{} was created", fresh.display());
}

// Megatron's --retro-num-neighbors / --retro-num-retrieved-chunks choose k and r per run (here the
// cca-relpos variant, whose bias table has m + r − 1 columns), are stored in the checkpoint, must match
// on resume, and reach evaluation; more neighbours than the project saved is refused before any work.
#[test]
fn neighbours_and_retrieved_chunks_are_training_parameters() {
    let run = run_dir("k1-r1");
    let flags = ["--cca-variant", "cca-relpos", "--retro-num-neighbors", "1", "--retro-num-retrieved-chunks", "1"];
    let (code, _, err) = train(&run, &[&["--train-iters", "2"][..], &flags].concat());
    assert_eq!(code, 0, "{err}");
    let checkpoint = std::fs::read_to_string(run.join("iter_0000002/state.json")).unwrap();
    assert!(
        checkpoint.contains("\"num_neighbors\": 1") && checkpoint.contains("\"num_retrieved_chunks\": 1"),
        "{checkpoint}"
    );
    let load = s(&run);
    let (code, _, err) = train(&run, &["--train-iters", "3", "--load", &load, "--cca-variant", "cca-relpos"]);
    assert_ne!(code, 0);
    assert!(err.contains("other settings") && err.contains("num_neighbors"), "{err}");
    let (code, _, err) = train(&run, &[&["--train-iters", "3", "--load", &load][..], &flags].concat());
    assert_eq!(code, 0, "{err}");
    let project = s(project());
    let (code, out, err) = retro(&["eval", "--checkpoint", &load, "--project", &project, "--eval-iters", "1"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("valid_ppl_without_retrieval"), "{out}");
    let fresh = run_dir("k-too-many");
    let (code, _, err) = train(&fresh, &["--train-iters", "1", "--retro-num-neighbors", "99"]);
    assert_ne!(code, 0);
    assert!(err.contains("neighbours per chunk saved") && err.contains("k = 99"), "{err}");
    assert!(!fresh.exists(), "{} was created", fresh.display());
}

// The architecture flags of InstructRetro's fine-tuning script train, are stored in the checkpoint (so a
// resume without them is refused) and resume; --rotary-percent alone is refused before any work.
#[test]
fn instruct_retro_architecture_flags_train_and_resume() {
    let run = run_dir("instruct-retro");
    let flags = [
        "--use-rotary-position-embeddings",
        "--rotary-percent",
        "0.5",
        "--no-position-embedding",
        "--swiglu",
        "--disable-bias-linear",
        "--untie-embeddings-and-output-weights",
        "--apply-layernorm-1p",
        "--group-query-attention",
        "--num-query-groups",
        "2",
    ];
    let (code, _, err) = train(&run, &[&["--train-iters", "2"][..], &flags].concat());
    assert_eq!(code, 0, "{err}");
    let state = std::fs::read_to_string(run.join("iter_0000002/state.json")).unwrap();
    for key in [
        "\"use_rotary_position_embeddings\": true",
        "\"rotary_percent\": 0.5",
        "\"add_position_embedding\": false",
        "\"swiglu\": true",
        "\"add_bias_linear\": false",
        "\"untie_embeddings_and_output_weights\": true",
        "\"apply_layernorm_1p\": true",
        "\"num_query_groups\": 2",
    ] {
        assert!(state.contains(key), "{key} missing from {state}");
    }
    let load = s(&run);
    let (code, _, err) = train(&run, &["--train-iters", "3", "--load", &load]);
    assert_ne!(code, 0);
    assert!(err.contains("other settings"), "{err}");
    let (code, _, err) = train(&run, &[&["--train-iters", "3", "--load", &load][..], &flags].concat());
    assert_eq!(code, 0, "{err}");
    let fresh = run_dir("rotary-percent-alone");
    let (code, _, err) = train(&fresh, &["--train-iters", "1", "--rotary-percent", "0.5"]);
    assert_ne!(code, 0);
    assert!(err.contains("--rotary-percent needs --use-rotary-position-embeddings"), "{err}");
    let (code, _, err) = train(&fresh, &["--train-iters", "1", "--num-query-groups", "2"]);
    assert_ne!(code, 0);
    assert!(err.contains("--num-query-groups needs --attention-variant gqa"), "{err}");
    let (code, _, err) =
        train(&fresh, &["--train-iters", "1", "--attention-variant", "gqa", "--num-query-groups", "3"]);
    assert_ne!(code, 0);
    assert!(err.contains("num_query_groups 3 does not divide num_heads 4"), "{err}");
    assert!(!fresh.exists(), "{} was created", fresh.display());
}

// `retro eval` and `retro generate` with `--device cuda` (on a GPU, and under scripts/device-emulation;
// skipped without one): a checkpoint trained on the CPU gives validation losses, with and without
// retrieval, within the bf16 loss bound of the CPU's (the model tests' `bf16_loss_tolerance`), and a
// greedy continuation whose prompt completes a chunk, so live retrieval feeds the GPU's encoder. This
// checks the commands' device wiring; the values themselves are checked by tests/device_model.rs (a
// model two steps from its initialisation has a loss near ln(vocab) on any device).
#[test]
fn eval_and_generate_on_a_gpu_agree_with_the_cpu() {
    if common::device::cuda(false).is_none() {
        return;
    }
    let config = common::gpu_sized_config_beside(project());
    let run = run_dir("gpu-eval");
    let (code, _, err) = train(&run, &["--config", &config, "--train-iters", "2", "--device", "cpu"]);
    assert_eq!(code, 0, "{err}");
    let checkpoint = ["--checkpoint", &s(&run), "--project", &s(project())];
    let eval = |device: &str| -> serde_json::Value {
        let (code, out, err) = retro(&[&["eval", "--eval-iters", "2", "--device", device][..], &checkpoint].concat());
        assert_eq!(code, 0, "retro eval --device {device}: {err}");
        serde_json::from_str(&out).unwrap()
    };
    let (gpu, cpu) = (eval("cuda"), eval("cpu"));
    let model = retro::model::RetroConfig::from_json(&std::fs::read_to_string(&config).unwrap()).unwrap();
    let tolerance = common::device::bf16_loss_tolerance(&model);
    for key in ["valid_loss", "valid_loss_without_retrieval"] {
        let (g, c) = (gpu[key].as_f64().unwrap(), cpu[key].as_f64().unwrap());
        let rel = (g - c).abs() / c;
        eprintln!("{key}: cuda {g}, cpu {c}, relative difference {rel:.1e} (tolerance {tolerance:.1e})");
        assert!(rel <= tolerance, "{key}: cuda {g} vs cpu {c} ({rel:.1e} > {tolerance:.1e})");
        assert!(g != c, "{key}: the bf16 loss equals the CPU's f32 one to the bit: did it run on the GPU?");
    }
    let prompt = "The committee met on Tuesday to discuss the budget for the coming year. ".repeat(6);
    let generate = ["generate", "--device", "cuda", "--prompt", &prompt, "--max-tokens", "8", "--temperature", "0"];
    let (code, out, err) = retro(&[&generate[..], &checkpoint, &["--show-neighbours"]].concat());
    assert_eq!(code, 0, "retro generate --device cuda: {err}");
    assert!(out.starts_with(&prompt) && out.len() > prompt.len(), "no continuation: {out}");
    assert!(out.contains("--- chunk 0"), "the prompt's first chunk was not retrieved for: {out}");
}
