//! Corrupt data is never used silently: seeded random corruptions (truncation, bit flips, zeroed runs,
//! appended bytes) of every project file `retro train`, `retro eval` and `retro generate` read, each
//! refused with exit code 2 and a message naming the file, never a panic, never a run that trains; a
//! damaged newest checkpoint refused by `--load`, naming the previous one.

mod common;

use retro::rng::Rng;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::{retro, s};

fn root() -> PathBuf {
    common::temp_dir("integrity")
}

/// One small project shared by the tests.
fn project() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let dir = root();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let project = dir.join("project");
        let (code, _, err) = common::preprocess_small(&dir, &project, &[]);
        assert_eq!(code, 0, "{err}");
        project
    })
}

/// A fresh copy of the project.
fn copy(name: &str) -> PathBuf {
    let dst = root().join(name);
    let _ = std::fs::remove_dir_all(&dst);
    assert!(Command::new("cp").arg("-r").arg(project()).arg(&dst).status().unwrap().success());
    dst
}

/// Damage `bytes` in one of four ways, drawn from `rng`; the result always differs from the input.
fn corrupt(bytes: &[u8], rng: &mut Rng) -> (Vec<u8>, String) {
    loop {
        let mut b = bytes.to_vec();
        let n = b.len();
        let what = match rng.below(4) {
            0 => {
                let keep = rng.below(n as u64) as usize;
                b.truncate(keep);
                format!("truncated to {keep} of {n} bytes")
            }
            1 => {
                let flips = 1 + rng.below(3);
                for _ in 0..flips {
                    let at = rng.below(n as u64) as usize;
                    b[at] ^= 1 << rng.below(8);
                }
                format!("{flips} bit flips")
            }
            2 => {
                let at = rng.below(n as u64) as usize;
                let len = (1 + rng.below(64) as usize).min(n - at);
                b[at..at + len].fill(0);
                format!("{len} bytes zeroed at {at}")
            }
            _ => {
                let extra = 1 + rng.below(16) as usize;
                b.extend((0..extra).map(|_| rng.below(256) as u8));
                format!("{extra} bytes appended")
            }
        };
        if b != bytes {
            return (b, what);
        }
    }
}

/// The command that reads `file` of a project, run on `project`.
fn reader_command(file: &str, project: &Path, run: &Path) -> Vec<String> {
    let p = s(project);
    let base: Vec<&str> = if file.starts_with("index/") {
        // Only generation (live retrieval) reads the index after preprocessing.
        vec![
            "generate",
            "--project",
            &p,
            "--checkpoint",
            "CHECKPOINT",
            "--prompt",
            "The cat sleeps",
            "--max-tokens",
            "2",
        ]
    } else if file.ends_with("_valid.bin") || file.starts_with("neighbors/valid") {
        vec!["eval", "--project", &p, "--checkpoint", "CHECKPOINT"]
    } else {
        vec!["train", "--project", &p, "--train-iters", "1", "--micro-batch-size", "2", "--save"]
    };
    let mut args: Vec<String> = base.iter().map(|x| x.to_string()).collect();
    if args[0] == "train" {
        args.push(s(run));
    }
    args
}

/// A checkpoint to evaluate and generate from (trained once on the intact project).
fn checkpoint() -> &'static PathBuf {
    static C: OnceLock<PathBuf> = OnceLock::new();
    C.get_or_init(|| {
        let run = root().join("checkpoint-run");
        let _ = std::fs::remove_dir_all(&run);
        let (code, _, err) = retro(&[
            "train",
            "--project",
            &s(project()),
            "--save",
            &s(&run),
            "--train-iters",
            "1",
            "--micro-batch-size",
            "2",
        ]);
        assert_eq!(code, 0, "{err}");
        run
    })
}

const FILES: [&str; 10] = [
    "config.json",
    "stages/tokenize.json",
    "data/corpus_text_document.idx",
    "data/corpus_text_document.bin",
    "data/samples_train.bin",
    "data/samples_valid.bin",
    "db/chunks.bin",
    "neighbors/train.bin",
    "neighbors/valid.bin",
    "index/index.bin",
];

#[test]
fn forty_random_corruptions_are_each_refused_with_a_clear_error() {
    let ck = checkpoint();
    let mut rng = Rng::new(2026);
    let mut refused = Vec::new();
    for case in 0..40 {
        let file = FILES[case % FILES.len()];
        let dir = copy(&format!("case-{case}"));
        let path = dir.join(file);
        let (bad, what) = corrupt(&std::fs::read(&path).unwrap(), &mut rng);
        std::fs::write(&path, bad).unwrap();
        let run = root().join(format!("run-{case}"));
        let _ = std::fs::remove_dir_all(&run);
        let args: Vec<String> =
            reader_command(file, &dir, &run).into_iter().map(|a| if a == "CHECKPOINT" { s(ck) } else { a }).collect();
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, _, err) = retro(&refs);
        let name = Path::new(file).file_name().unwrap().to_str().unwrap();
        let context = format!("case {case}: {file} {what}; `retro {}`", args[0]);
        assert!(!err.contains("panicked"), "{context}: panicked\n{err}");
        assert_eq!(code, 2, "{context}: exit code {code}, expected 2 (refused)\n{err}");
        assert!(err.contains(name), "{context}: the error does not name {name}\n{err}");
        let steps = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap_or_default();
        assert!(steps.trim().is_empty(), "{context}: a training step ran\n{err}");
        eprintln!("{context}: refused: {}", err.lines().find(|l| l.contains(name)).unwrap_or(""));
        refused.push(format!("{file}: {what}"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
    assert_eq!(refused.len(), 40);
}

#[test]
fn a_corrupt_token_block_names_the_block_and_the_stage_to_rerun() {
    let dir = copy("token-block");
    let bin = dir.join("data/corpus_text_document.bin");
    let mut bytes = std::fs::read(&bin).unwrap();
    bytes[10] ^= 0x40;
    std::fs::write(&bin, bytes).unwrap();
    let run = root().join("token-block-run");
    let (code, _, err) = retro(&["train", "--project", &s(&dir), "--save", &s(&run), "--train-iters", "1"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("corpus_text_document.bin") && err.contains("block 0") && err.contains("--stage tokenize"),
        "{err}"
    );
}

#[test]
fn a_damaged_newest_checkpoint_is_refused_naming_the_previous_one() {
    let run = root().join("resume-run");
    let _ = std::fs::remove_dir_all(&run);
    let train = |extra: &[&str]| {
        let mut args = vec!["train", "--project", project().to_str().unwrap(), "--save", run.to_str().unwrap()];
        args.extend(["--micro-batch-size", "2", "--save-interval", "1"]);
        args.extend(extra);
        retro(&args)
    };
    let (code, _, err) = train(&["--train-iters", "2"]);
    assert_eq!(code, 0, "{err}");
    let intact = std::fs::read(run.join("iter_0000002/model.safetensors")).unwrap();
    for (file, offset) in [("model.safetensors", 200usize), ("state.json", 5), ("optimizer.safetensors", 300)] {
        let path = run.join("iter_0000002").join(file);
        let good = std::fs::read(&path).unwrap();
        let mut bad = good.clone();
        bad[offset] ^= 0x08;
        std::fs::write(&path, bad).unwrap();
        let (code, _, err) = train(&["--train-iters", "3", "--load", run.to_str().unwrap()]);
        assert_eq!(code, 2, "{file}: {err}");
        assert!(
            err.contains(file)
                && err.contains("iter_0000002")
                && err.contains("damaged")
                && err.contains("iter_0000001"),
            "{file}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        // eval refuses it too.
        let (code, _, err) = retro(&["eval", "--project", &s(project()), "--checkpoint", &s(&run)]);
        assert_eq!(code, 2, "{err}");
        std::fs::write(&path, good).unwrap();
    }
    // The previous checkpoint is usable by naming it; the intact newest still loads bitwise as written.
    let (code, _, err) = retro(&["eval", "--project", &s(project()), "--checkpoint", &s(&run.join("iter_0000001"))]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = train(&["--train-iters", "3", "--load", run.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("resuming from") && err.contains("iter_0000002"), "{err}");
    assert_ne!(std::fs::read(run.join("iter_0000003/model.safetensors")).unwrap(), intact);
}

/// `retro preprocess` on a copy of the project with the shared test flags plus `extra`.
fn preprocess(dir: &Path, extra: &[&str]) -> (i32, String, String) {
    common::preprocess_small(&root(), dir, extra)
}

#[test]
fn rerunning_the_stage_an_error_names_repairs_the_file() {
    let dir = copy("repair");
    let train = |name: &str| {
        let run = root().join(name);
        let _ = std::fs::remove_dir_all(&run);
        retro(&["train", "--project", &s(&dir), "--save", &s(&run), "--train-iters", "1", "--micro-batch-size", "2"])
    };
    let files = ["data/samples_train.bin", "neighbors/train.bin"];
    let intact: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(dir.join(f)).unwrap()).collect();
    // A damaged sample index and neighbour store: the error names `--stage query`, which rewrites both.
    for f in files {
        let mut b = std::fs::read(dir.join(f)).unwrap();
        b[40] ^= 0x04;
        std::fs::write(dir.join(f), b).unwrap();
    }
    let (code, _, err) = train("repair-1");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--stage query"), "{err}");
    let (code, _, err) = preprocess(&dir, &["--stage", "query"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("rebuilding it"), "{err}");
    for (f, want) in files.iter().zip(&intact) {
        assert_eq!(&std::fs::read(dir.join(f)).unwrap(), want, "{f} after the rerun");
    }
    let (code, _, err) = train("repair-2");
    assert_eq!(code, 0, "{err}");
    // A damaged tokenize record: a plain rerun runs the stage again (saying so) and training works.
    let record = dir.join("stages/tokenize.json");
    let text = std::fs::read_to_string(&record).unwrap().replacen("\"tokens\"", "\"tokenz\"", 1);
    std::fs::write(&record, text).unwrap();
    let (code, _, err) = train("repair-3");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("tokenize.json") && err.contains("--stage tokenize"), "{err}");
    let (code, _, err) = preprocess(&dir, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("running the tokenize stage again"), "{err}");
    let (code, _, err) = train("repair-4");
    assert_eq!(code, 0, "{err}");
}

#[test]
fn validate_verifies_every_stored_checksum() {
    let dir = copy("validate");
    // A neighbour block file that training never reads: only --validate looks at it.
    let block = dir.join("neighbors/train/000000.i64");
    let mut bytes = std::fs::read(&block).unwrap();
    bytes[3] ^= 0x01;
    std::fs::write(&block, bytes).unwrap();
    let (code, _, err) = preprocess(&dir, &["--validate", "0.01"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("000000.i64") && err.contains("checksum") && err.contains("--stage query"), "{err}");
}
