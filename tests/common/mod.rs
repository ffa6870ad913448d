//! Helpers shared by the integration tests: random tensors and gradient checking by central differences.
#![allow(dead_code)]

use retro::autograd::{Tape, Var};
use retro::rng::Rng;
use retro::tensor::{DType, Tensor};
use retro::Result;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once};

static TEMP_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static A_TEST_PANICKED: AtomicBool = AtomicBool::new(false);

/// The directory `retro-{name}-{pid}` in the system's temporary directory, empty when first asked for
/// (later calls in the process return it as it is). It is removed when the test binary exits, unless a
/// test in the binary panicked: then every such directory is kept for inspection and the exit names them.
/// (The training tests write hundreds of MB each; before this, every run of the suite left GBs in /tmp.)
pub fn temp_dir(name: &str) -> PathBuf {
    static HOOKS: Once = Once::new();
    HOOKS.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            A_TEST_PANICKED.store(true, Ordering::SeqCst);
            default(info)
        }));
        // SAFETY: registers a plain function; it runs once, at exit, after every test has returned.
        unsafe { libc::atexit(remove_temp_dirs) };
    });
    let dir = std::env::temp_dir().join(format!("retro-{name}-{}", std::process::id()));
    let mut dirs = TEMP_DIRS.lock().unwrap();
    if !dirs.contains(&dir) {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dirs.push(dir.clone());
    }
    dir
}

extern "C" fn remove_temp_dirs() {
    let dirs = TEMP_DIRS.lock().map(|d| d.clone()).unwrap_or_default();
    if A_TEST_PANICKED.load(Ordering::SeqCst) {
        let list: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        eprintln!("a test failed: its files are kept in {}", list.join(", "));
        return;
    }
    for d in dirs {
        let _ = std::fs::remove_dir_all(d);
    }
}

pub fn randn(rng: &mut Rng, shape: &[usize], scale: f64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec((0..n).map(|_| rng.normal() * scale).collect::<Vec<f64>>(), shape).unwrap()
}

pub fn to_f32(t: &Tensor) -> Tensor {
    t.to_dtype(DType::F32).unwrap()
}

/// (numeric, analytic) gradients of `model`'s f64 loss on `batch` for each (parameter name, element):
/// fourth-order central differences (h = 1e-3) of `eval_loss`, and the tape's gradient.
pub fn model_gradients_fd(
    model: &retro::model::RetroModel,
    batch: &retro::model::Batch,
    entries: &[(&str, usize)],
) -> (Vec<f64>, Vec<f64>) {
    let grads = model.loss_and_grads(batch).unwrap().grads;
    entries
        .iter()
        .map(|&(name, at)| {
            let i = model.params.index(name).unwrap_or_else(|| panic!("no parameter {name}"));
            let h = 1e-3;
            let loss = |offset: f64| {
                let mut m = model.clone();
                m.params.tensors[i].data_mut::<f64>().unwrap()[at] += offset;
                m.eval_loss(batch).unwrap()
            };
            let numeric = (loss(-2.0 * h) - 8.0 * loss(-h) + 8.0 * loss(h) - loss(2.0 * h)) / (12.0 * h);
            (numeric, grads[i].to_f64_vec()[at])
        })
        .unzip()
}

/// Largest |a - b| / max(|a|, |b|, floor) over all elements.
pub fn max_rel_err(a: &[f64], b: &[f64], floor: f64) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs() / x.abs().max(y.abs()).max(floor)).fold(0.0, f64::max)
}

/// Checks the tape's gradients of `sum(f(inputs) * r)` (r random) against central differences in f64
/// (fourth-order stencil).
/// Returns the max relative error over the checked elements of every differentiable input. At most
/// `max_per_input` elements per input are checked (spread over the tensor).
pub fn gradcheck(
    inputs: &[Tensor],
    differentiable: &[bool],
    max_per_input: usize,
    f: impl Fn(&mut Tape, &[Var]) -> Result<Var>,
) -> f64 {
    let mut rng = Rng::new(99);
    let build = |xs: &[Tensor], tape: &mut Tape| -> (Vec<Var>, Var) {
        let vars: Vec<Var> = xs
            .iter()
            .zip(differentiable)
            .map(|(x, &d)| if d { tape.leaf(x.clone()) } else { Var::constant(x.clone()) })
            .collect();
        let out = f(tape, &vars).expect("forward failed");
        (vars, out)
    };
    let mut tape = Tape::new();
    let (vars, out) = build(inputs, &mut tape);
    let r = randn(&mut rng, out.shape(), 1.0);
    let rv = r.to_f64_vec();
    let grads = tape.backward_with(&out, r).expect("backward failed");
    let objective = |xs: &[Tensor]| -> f64 {
        let (_, o) = build(xs, &mut Tape::inference());
        o.value().to_f64_vec().iter().zip(&rv).map(|(a, b)| a * b).sum()
    };
    let mut worst: f64 = 0.0;
    for (i, var) in vars.iter().enumerate() {
        if !differentiable[i] {
            continue;
        }
        let analytic = grads.get(var).expect("no gradient for a differentiable input").to_f64_vec();
        let n = inputs[i].numel();
        let step = (n / max_per_input).max(1);
        let mut num = Vec::new();
        let mut ana = Vec::new();
        for j in (0..n).step_by(step) {
            // Fourth-order central stencil: truncation O(h^4), round-off O(eps/h).
            let h = 1e-4;
            let at = |delta: f64| {
                let mut xs = inputs.to_vec();
                xs[i].data_mut::<f64>().unwrap()[j] += delta;
                objective(&xs)
            };
            num.push((8.0 * (at(h) - at(-h)) - (at(2.0 * h) - at(-2.0 * h))) / (12.0 * h));
            ana.push(analytic[j]);
        }
        let scale = num.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        let err = max_rel_err(&ana, &num, (1e-3 * scale).max(1e-9));
        worst = worst.max(err);
    }
    worst
}

/// A small corpus with three topics (30 documents of ~24 sentences) and one document shorter than a
/// chunk, as JSON lines in `dir/corpus.jsonl`.
const TOPICS: [&[&str]; 3] = [
    &[
        "The cat sleeps on the warm mat.",
        "Kittens chase a ball of yarn.",
        "My cat purrs when it is fed.",
        "Cats love to climb tall trees.",
    ],
    &[
        "The ship sails across the ocean.",
        "Sailors raise the heavy anchor.",
        "A storm rocks the wooden boat.",
        "The harbor is full of ships.",
    ],
    &[
        "Congress passed a new tax bill.",
        "The budget deficit grew this year.",
        "Senators debate the spending plan.",
        "Taxes fund the public schools.",
    ],
];

pub fn corpus(dir: &std::path::Path) -> std::path::PathBuf {
    corpus_of(dir, 30)
}

/// The three-topic corpus with `docs` documents (plus one shorter than a chunk); 30 give 77 chunks.
pub fn corpus_of(dir: &std::path::Path, docs: usize) -> std::path::PathBuf {
    let mut lines = String::new();
    for d in 0..docs {
        let topic = TOPICS[d % 3];
        let text: Vec<&str> = (0..24).map(|i| topic[(i * 7 + d) % topic.len()]).collect();
        lines += &format!("{}\n", serde_json::json!({"text": text.join(" ")}));
    }
    // A document shorter than a chunk.
    lines += &format!("{}\n", serde_json::json!({"text": "Short."}));
    let path = dir.join("corpus.jsonl");
    std::fs::write(&path, lines).unwrap();
    path
}

/// Run the `retro` binary: (exit code, stdout, stderr).
pub fn retro(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_retro")).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn s(p: &std::path::Path) -> String {
    p.to_str().unwrap().to_string()
}

/// The preprocessing flags of the small test projects: seq 128, split 80,20,0, 20 neighbours searched
/// and 3 kept, global batch 4.
pub const SMALL_PROJECT: [&str; 12] = [
    "--seq-length",
    "128",
    "--split",
    "80,20,0",
    "--num-neighbors-query",
    "20",
    "--num-neighbors-save",
    "3",
    "--global-batch-size",
    "4",
    "--retro-query-nprobe",
    "16",
];

/// `retro preprocess` of the three-topic corpus (`corpus(dir)`) into `project`, with `SMALL_PROJECT`'s
/// flags and `extra`.
pub fn preprocess_small(dir: &std::path::Path, project: &std::path::Path, extra: &[&str]) -> (i32, String, String) {
    let input = s(&corpus(dir));
    let project = s(project);
    let mut args = vec!["preprocess", "--input", &input, "--project", &project];
    args.extend(SMALL_PROJECT);
    args.extend(extra);
    retro(&args)
}

/// A small project (`preprocess_small` with `extra`) in `temp_dir(tag)`; panics with preprocessing's stderr if it fails. Tests share one per binary
/// (preprocessing is the slow part) through a `OnceLock`.
pub fn small_project(tag: &str, extra: &[&str]) -> std::path::PathBuf {
    let dir = temp_dir(tag);
    let project = dir.join("project");
    let (code, _, err) = preprocess_small(&dir, &project, extra);
    assert_eq!(code, 0, "{err}");
    project
}

/// The tiny preset with the GPU attention's head dim (64): hidden 128 over 2 heads, as a config file
/// beside `project` (for `--config`); its path.
pub fn gpu_sized_config_beside(project: &std::path::Path) -> String {
    let config = project.parent().unwrap().join("gpu-sized.json");
    let tiny = retro::model::RetroConfig::preset("tiny").unwrap().to_json();
    let sized = tiny.replace("\"hidden_size\":64", "\"hidden_size\":128").replace("\"num_heads\":4", "\"num_heads\":2");
    assert_ne!(sized, tiny, "the tiny preset's JSON changed: {tiny}");
    std::fs::write(&config, sized).unwrap();
    s(&config)
}

/// An empty path `name` beside `project` for a run directory (removed if an earlier run left it).
pub fn run_dir_beside(project: &std::path::Path, name: &str) -> std::path::PathBuf {
    let d = project.parent().unwrap().join(name);
    let _ = std::fs::remove_dir_all(&d);
    d
}

pub mod device;
pub mod generation;
