//! `mpirun -np 2 retro train` on the CPU: data parallelism (plain, and with the distributed optimizer)
//! and tensor parallelism equal one process with the same global batch, two ranks preprocess the bytes
//! one process writes, a data-parallel checkpoint resumes in one process, and the job's failures end every rank
//! (bad world shapes and batches refused before any work, an error on one rank, a rank killed).
//! Needs `mpirun` (OpenMPI; ./scripts/test installs it) and a build with `--features mpi`.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::s;

fn project() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| common::small_project("dist", &["--eval-interval", "2", "--eval-iters", "2"]))
}

fn run_dir(name: &str) -> PathBuf {
    common::run_dir_beside(project(), name)
}

/// `retro train` with the test's settings: one process (`ranks` = 0) or `mpirun -np ranks`.
fn train_command(ranks: usize, run: &Path, extra: &[&str]) -> Command {
    let retro = env!("CARGO_BIN_EXE_retro");
    let mut cmd = if ranks == 0 {
        Command::new(retro)
    } else {
        let mut c = Command::new("mpirun");
        c.args(["--allow-run-as-root", "--oversubscribe", "-np", &ranks.to_string(), retro]);
        c
    };
    cmd.args([
        "train",
        "--project",
        &s(project()),
        "--save",
        &s(run),
        "--lr",
        "2e-3",
        "--lr-warmup-samples",
        "4",
        "--lr-decay-samples",
        "20",
    ]);
    cmd.args(extra);
    cmd
}

fn train(ranks: usize, run: &Path, extra: &[&str]) -> (i32, String) {
    let out = train_command(ranks, run, extra).output().expect("running mpirun (is OpenMPI installed?)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

fn metrics(run: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn assert_close(what: &str, a: f64, b: f64, tol: f64) {
    let rel = (a - b).abs() / b.abs().max(1e-12);
    assert!(rel <= tol, "{what}: {a} vs {b} (relative {rel:.2e} > {tol:.0e})");
}

/// Losses, gradient norms and validation losses of two runs' metrics, step by step (within 1e-6).
fn assert_same_curve(got: &[serde_json::Value], want: &[serde_json::Value]) {
    assert_curve_within(got, want, 1e-6);
}

/// Asserts every record's metrics within `tol` relative; returns the largest relative difference.
fn assert_curve_within(got: &[serde_json::Value], want: &[serde_json::Value], tol: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "metrics records: {} vs {}", got.len(), want.len());
    let mut largest = 0f64;
    for (g, w) in got.iter().zip(want) {
        let step = &w["step"];
        assert_eq!(&g["step"], step);
        for key in ["loss", "grad_norm", "valid_loss", "valid_ppl_without_retrieval"] {
            if let Some(w) = w[key].as_f64() {
                let g = g[key].as_f64().expect(key);
                assert_close(&format!("step {step} {key}"), g, w, tol);
                largest = largest.max((g - w).abs() / w.abs().max(1e-12));
            }
        }
    }
    largest
}

// Two data-parallel ranks, each running 2 micro-batches of 1 of the global batch of 4, against one
// process running all 4: the same losses, gradient norms and validation losses (f32: the gradient sums
// differ only in order), and one metrics record per step.
#[test]
fn two_data_parallel_ranks_equal_one_process() {
    let (one, two) = (run_dir("one"), run_dir("two"));
    let args = ["--train-iters", "5", "--micro-batch-size", "1"];
    let (code, out) = train(0, &one, &args);
    assert_eq!(code, 0, "{out}");
    let (code, out) = train(2, &two, &args);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.matches("\"iterations\"").count(), 1, "only rank 0 prints the summary: {out}");
    let (a, b) = (metrics(&two), metrics(&one));
    assert_eq!(a.len(), 5, "one record per step");
    assert_same_curve(&a, &b);
    assert!(a[1]["valid_loss"].is_number(), "evaluated at step 2");
    // The distributed optimizer (moments split across the ranks) takes the same steps, working in chunks
    // of 100k elements (about 20 for the tiny model).
    let zero = run_dir("two-zero");
    let extra = ["--use-distributed-optimizer", "--ddp-bucket-size", "100000"];
    let (code, out) = train(2, &zero, &[&args[..], &extra[..]].concat());
    assert_eq!(code, 0, "{out}");
    assert_same_curve(&metrics(&zero), &b);
    // Reducing buckets of 100k elements during the backward (the tiny model's 1.8M gradients in about 20
    // buckets) sums the same numbers: the same bits as reducing them after it.
    let overlap = run_dir("two-overlap");
    let extra = ["--overlap-grad-reduce", "--ddp-bucket-size", "100000"];
    let (code, out) = train(2, &overlap, &[&args[..], &extra[..]].concat());
    assert_eq!(code, 0, "{out}");
    for (o, p) in metrics(&overlap).iter().zip(&a) {
        for key in ["loss", "grad_norm", "valid_loss"] {
            assert_eq!(o[key], p[key], "step {}: {key} with --overlap-grad-reduce", p["step"]);
        }
    }
}

// Two tensor-parallel ranks splitting one model (heads, MLP and vocabulary) against one process: the same
// losses, gradient norms and validation losses within 1e-5 (f32; the split sums run in another order),
// one record per step. Its checkpoint is whole: one process resumes it on the same curve. Four ranks,
// tensor- x data-parallel 2 x 2 with the distributed optimizer, take the same steps too.
#[test]
fn tensor_parallel_ranks_equal_one_process_and_their_checkpoint_resumes_in_one() {
    let one = run_dir("tp-one");
    let args = ["--train-iters", "5", "--micro-batch-size", "2"];
    let (code, out) = train(0, &one, &args);
    assert_eq!(code, 0, "{out}");
    let tp = run_dir("tp-two");
    let first =
        [&args[..], &["--train-iters", "3", "--save-interval", "3", "--tensor-model-parallel-size", "2"]].concat();
    let (code, out) = train(2, &tp, &first);
    assert_eq!(code, 0, "{out}");
    assert_eq!(metrics(&tp).len(), 3, "one record per step");
    let (code, out) = train(0, &tp, &[&args[..], &["--load", &s(&tp)]].concat());
    assert_eq!(code, 0, "{out}");
    assert_curve_within(&metrics(&tp), &metrics(&one), 1e-5);
    let grid = run_dir("tp-dp");
    let extra = ["--tensor-model-parallel-size", "2", "--use-distributed-optimizer"];
    let (code, out) = train(4, &grid, &[&args[..], &extra[..]].concat());
    assert_eq!(code, 0, "{out}");
    assert_curve_within(&metrics(&grid), &metrics(&one), 1e-5);
}

// `mpirun -np 2 retro preprocess` divides the embedding and neighbour blocks between the ranks (a corpus
// of 2 embedding blocks and 9 train query blocks) and writes the files one process writes, byte for byte;
// the stage records differ only in their timings.
#[test]
fn two_ranks_preprocess_the_bytes_one_process_writes() {
    let dir = project().parent().unwrap().join("preprocess-split");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let input = s(&common::corpus_of(&dir, 110));
    let (one, two) = (dir.join("one"), dir.join("two"));
    // ranks = 0: a plain process.
    let run = |ranks: usize, project: &Path| {
        let retro = env!("CARGO_BIN_EXE_retro");
        let mut cmd = Command::new(if ranks == 0 { retro } else { "mpirun" });
        if ranks > 0 {
            cmd.args(["--allow-run-as-root", "--oversubscribe", "-np", &ranks.to_string(), retro]);
        }
        let out = cmd
            .args(["preprocess", "--input", &input, "--project", &s(project)])
            .args(common::SMALL_PROJECT)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        text
    };
    run(0, &one);
    let out = run(2, &two);
    assert_eq!(out.matches("\"project\"").count(), 1, "only rank 0 prints the summary: {out}");
    let files = |root: &Path| {
        let mut found = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    found.push(p.strip_prefix(root).unwrap().to_path_buf());
                }
            }
        }
        found.sort();
        found
    };
    let names = files(&one);
    assert_eq!(names, files(&two), "the two projects hold different files");
    let embed: serde_json::Value =
        serde_json::from_slice(&std::fs::read(one.join("stages/embed.json")).unwrap()).unwrap();
    assert_eq!(embed["blocks"], 2, "the corpus must span two embedding blocks: {embed}");
    for name in &names {
        let (a, b) = (std::fs::read(one.join(name)).unwrap(), std::fs::read(two.join(name)).unwrap());
        if name.starts_with("stages") {
            let without_timing = |bytes: &[u8]| {
                let mut v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
                v.as_object_mut().unwrap().retain(|k, _| k != "seconds" && k != "crc32c");
                v
            };
            assert_eq!(without_timing(&a), without_timing(&b), "{}", name.display());
        } else {
            assert!(a == b, "{} differs between one process and two ranks", name.display());
        }
    }
}

// A run of two ranks saved at step 3 and resumed by one process continues as the one-process run; with
// the distributed optimizer too (its checkpoint gathers the moments every rank holds a shard of).
#[test]
fn a_data_parallel_checkpoint_resumes_in_one_process() {
    let whole = run_dir("whole");
    let (code, out) = train(0, &whole, &["--train-iters", "5", "--micro-batch-size", "2"]);
    assert_eq!(code, 0, "{out}");
    let zero = ["--use-distributed-optimizer", "--ddp-bucket-size", "100000"];
    for (name, extra) in [("split", &[][..]), ("split-zero", &zero[..])] {
        let split = run_dir(name);
        let first = [&["--train-iters", "3", "--micro-batch-size", "2", "--save-interval", "3"][..], extra].concat();
        let (code, out) = train(2, &split, &first);
        assert_eq!(code, 0, "{out}");
        let load = s(&split);
        let (code, out) = train(0, &split, &["--train-iters", "5", "--micro-batch-size", "2", "--load", &load]);
        assert_eq!(code, 0, "{out}");
        assert_same_curve(&metrics(&split), &metrics(&whole));
    }
}

// Refused on every rank before any work: nothing is written to --save.
#[test]
fn bad_batches_and_world_shapes_are_refused_before_any_work() {
    let one_head = project().parent().unwrap().join("one-head.json");
    let tiny = retro::model::RetroConfig::preset("tiny").unwrap().to_json();
    std::fs::write(&one_head, tiny.replace("\"num_heads\":4", "\"num_heads\":1")).unwrap();
    let cases: [(&[&str], &str); 4] = [
        (&["--micro-batch-size", "4"], "is not divisible by --micro-batch-size 4 x 2 data-parallel ranks"),
        (&["--tensor-model-parallel-size", "3"], "--tensor-model-parallel-size 3 does not divide the 2 processes"),
        (
            &["--overlap-grad-reduce", "--use-distributed-optimizer"],
            "--overlap-grad-reduce is built for data parallelism without --use-distributed-optimizer",
        ),
        (
            &["--tensor-model-parallel-size", "2", "--config", &s(&one_head)],
            "--tensor-model-parallel-size 2: num_heads (--num-attention-heads) is 1, not divisible by 2",
        ),
    ];
    for (extra, message) in cases {
        let run = run_dir("refused");
        let (code, out) = train(2, &run, extra);
        assert_ne!(code, 0, "{out}");
        assert!(out.contains(message), "expected {message:?} in: {out}");
        assert!(!run.exists(), "{} was created", run.display());
    }
}

// Rank 0 cannot create --save (a path under a file): its error ends the job (MPI_Abort) with its message
// while rank 1 waits in the first collective.
#[test]
fn an_error_on_one_rank_ends_the_job_with_its_message() {
    let file = project().parent().unwrap().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let start = Instant::now();
    let (code, out) = train(2, &file.join("run"), &["--train-iters", "2"]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("rank 0 of 2") && out.contains("cannot create the directory"), "{out}");
    assert!(start.elapsed() < Duration::from_secs(60), "took {:?}", start.elapsed());
}

// SIGTERM to one rank (as Slurm sends before the time limit) with --exit-signal-handler: both ranks
// finish the same step, rank 0 saves, the job exits 0; resumed, the run equals an uninterrupted one bitwise.
#[test]
fn sigterm_to_one_rank_stops_every_rank_at_one_step_and_the_run_resumes_bitwise() {
    let run = run_dir("sigterm");
    let common = ["--micro-batch-size", "1", "--exit-signal-handler"];
    let mut job = train_command(2, &run, &[&common[..], &["--train-iters", "100000"]].concat())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ranks = ranks_after_first_step(&mut job, &run);
    assert!(Command::new("kill").args(["-TERM", &ranks[1]]).status().unwrap().success());
    let out = job.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("--exit-signal-handler (SIGTERM): stopped after iteration"), "{text}");
    let stopped = metrics(&run).len();
    let saved = std::fs::read_to_string(run.join("latest_checkpointed_iteration.txt")).unwrap();
    assert_eq!(saved, stopped.to_string(), "the checkpoint is the last step's");
    let total = (stopped + 2).to_string();
    let load = s(&run);
    let (code, out) = train(2, &run, &["--micro-batch-size", "1", "--train-iters", &total, "--load", &load]);
    assert_eq!(code, 0, "{out}");
    let whole = run_dir("sigterm-whole");
    let (code, out) = train(2, &whole, &["--micro-batch-size", "1", "--train-iters", &total]);
    assert_eq!(code, 0, "{out}");
    let losses = |r: &Path| metrics(r).iter().map(|m| m["loss"].to_string()).collect::<Vec<_>>();
    assert_eq!(losses(&run), losses(&whole), "losses differ after a SIGTERM stop and resume");
}

/// Waits until the run has logged a step, then returns the pids of mpirun's children (the ranks).
fn ranks_after_first_step(job: &mut std::process::Child, run: &Path) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(300);
    while std::fs::read_to_string(run.join("metrics.jsonl")).map_or(true, |m| m.is_empty()) {
        if let Some(status) = job.try_wait().unwrap() {
            let mut text = String::new();
            for pipe in
                [job.stdout.take().map(|p| Box::new(p) as Box<dyn Read>), job.stderr.take().map(|p| Box::new(p) as _)]
                    .into_iter()
                    .flatten()
            {
                let _ = std::io::BufReader::new(pipe).read_to_string(&mut text);
            }
            panic!("the job ended ({status}) before its first step: {text}");
        }
        assert!(Instant::now() < deadline, "no step within 300 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    let ps = Command::new("ps").args(["-o", "pid=", "--ppid", &job.id().to_string()]).output().unwrap();
    let ranks: Vec<String> = String::from_utf8_lossy(&ps.stdout).split_whitespace().map(str::to_string).collect();
    assert_eq!(ranks.len(), 2, "mpirun's children: {ranks:?}");
    ranks
}

// A rank killed by a signal mid-run: every other rank exits and mpirun fails within 60 seconds, naming it.
#[test]
fn a_killed_rank_ends_the_job_within_a_minute() {
    let run = run_dir("killed");
    let mut job = train_command(2, &run, &["--train-iters", "100000", "--micro-batch-size", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ranks = ranks_after_first_step(&mut job, &run);
    let killed = Instant::now();
    assert!(Command::new("kill").args(["-9", &ranks[1]]).status().unwrap().success());
    loop {
        if let Some(status) = job.try_wait().unwrap() {
            assert!(!status.success(), "mpirun succeeded after a rank was killed");
            break;
        }
        assert!(killed.elapsed() < Duration::from_secs(60), "the job still runs 60 s after a rank was killed");
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = job.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("rank"), "mpirun's report should name the rank: {text}");
}

// A rank stopped mid-run (SIGSTOP: alive, so mpirun sees nothing): the other rank's watchdog ends the job
// once it has waited --distributed-timeout-minutes in one collective, naming itself and the wait.
#[test]
fn a_stopped_rank_ends_the_job_after_the_distributed_timeout() {
    a_stopped_rank_ends_the_job("stopped", &[], 12);
}

/// `a_stopped_rank_ends_the_job_after_the_distributed_timeout` with `device` (extra flags), its run
/// directory `name` and a timeout of `timeout_s` seconds; the job's output.
fn a_stopped_rank_ends_the_job(name: &str, device: &[&str], timeout_s: u64) -> String {
    let run = run_dir(name);
    let minutes = (timeout_s as f64 / 60.0).to_string();
    let extra = ["--train-iters", "100000", "--micro-batch-size", "1", "--distributed-timeout-minutes", &minutes];
    let mut job = train_command(2, &run, &[&extra[..], device].concat())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ranks = ranks_after_first_step(&mut job, &run);
    let stopped = Instant::now();
    assert!(Command::new("kill").args(["-STOP", &ranks[1]]).status().unwrap().success());
    let limit = Duration::from_secs(timeout_s + 78);
    let ended = loop {
        if let Some(status) = job.try_wait().unwrap() {
            break status;
        }
        if stopped.elapsed() > limit {
            let _ = Command::new("kill").args(["-CONT", &ranks[1]]).status();
            let _ = job.kill();
            panic!("the job still runs {limit:?} after a rank was stopped (timeout {timeout_s} s)");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let waited = stopped.elapsed();
    let out = job.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!ended.success(), "mpirun succeeded after a rank was stopped: {text}");
    let early = Duration::from_secs(timeout_s - 1);
    assert!(waited >= early, "ended {waited:?} after the stop, before the {timeout_s} s timeout: {text}");
    // The running rank names itself (mpirun's child order need not be the ranks' order).
    let named = text.contains("rank 0 of 2: waited") || text.contains("rank 1 of 2: waited");
    let timeout = format!("(--distributed-timeout-minutes is {timeout_s}.0 s)");
    assert!(named && text.contains(&timeout), "{text}");
    text
}

/// Whether two ranks can train with `--device cuda` here: two GPUs, one per rank (NCCL refuses two ranks
/// on one GPU). Without them a GPU test says it is skipped and passes, unless RETRO_TEST_NCCL=1 requires
/// them (a multi-GPU machine; scripts/device-emulation, whose emulated driver shows two).
fn two_gpus() -> bool {
    #[cfg(not(no_cuda_kernels))]
    let gpus = retro::backend::cuda::devices().map_or(0, |d| d.len());
    #[cfg(no_cuda_kernels)]
    let gpus = 0;
    let required = std::env::var("RETRO_TEST_NCCL").is_ok_and(|v| v == "1");
    assert!(!required || gpus >= 2, "RETRO_TEST_NCCL=1 but {gpus} GPU(s): two ranks need two");
    if gpus < 2 {
        eprintln!("skipped: {gpus} GPU(s); two ranks over NCCL need two");
    }
    gpus >= 2
}

/// A model config with the GPU attention's head dim (64): tiny with hidden 128 over 2 heads (its path).
/// Written once: tests running at the same time would otherwise read it half rewritten.
fn gpu_sized_config() -> String {
    static CONFIG: OnceLock<String> = OnceLock::new();
    CONFIG.get_or_init(|| common::gpu_sized_config_beside(project())).clone()
}

// Two ranks on two GPUs over NCCL against one GPU with the same global batch: data parallelism (the
// gradient arena all-reduced after the backward), the distributed optimizer (reduce-scattered, each rank
// updating its shard, the weights all-gathered), the overlapped reduction (buckets on the communication
// stream during the backward), and tensor parallelism (activations over NCCL within the group). Over two
// steps (the second after an update, and evaluated) the same losses, gradient norms and validation
// losses within 1e-3: the f32 gradient sums run in another order, which can move a bf16 weight copy by
// one unit after a step, and tensor parallelism sums bf16 partial products across the ranks (measured on
// the device emulation: 4e-10 for the three data-parallel cases, 1e-4 for tensor parallelism).
#[test]
fn gpu_ranks_over_nccl_equal_one_gpu() {
    if !two_gpus() {
        return;
    }
    let config = gpu_sized_config();
    let args = ["--device", "cuda", "--config", &config, "--train-iters", "2", "--micro-batch-size", "1"];
    let one = run_dir("gpu-one");
    let (code, out) = train(0, &one, &args);
    assert_eq!(code, 0, "{out}");
    let want = metrics(&one);
    let bucketed = ["--ddp-bucket-size", "100000"];
    let cases: [(&str, &[&str]); 4] = [
        ("gpu-dp", &[]),
        ("gpu-zero", &[&["--use-distributed-optimizer"][..], &bucketed[..]].concat()),
        ("gpu-overlap", &[&["--overlap-grad-reduce"][..], &bucketed[..]].concat()),
        ("gpu-tp", &["--tensor-model-parallel-size", "2"]),
    ];
    for (name, extra) in cases {
        let run = run_dir(name);
        let (code, out) = train(2, &run, &[&args[..], extra].concat());
        assert_eq!(code, 0, "{name}: {out}");
        assert_eq!(out.matches("\"iterations\"").count(), 1, "{name}: only rank 0 prints the summary: {out}");
        let largest = assert_curve_within(&metrics(&run), &want, 1e-3);
        eprintln!("{name}: largest relative difference from one GPU {largest:.1e}");
    }
}

// A GPU rank stopped mid-run: the other waits in an NCCL collective until its watchdog aborts the
// communicator (which frees the stuck stream) and ends the job. With the overlapped reduction the
// gradients' all-reduce runs inside the backward, before the step's MPI loss sum, so NCCL is where the
// running rank waits. The timeout, 8 s, is shorter than the first step under the device emulation
// (about 11 s on 2 cores): only a collective's own time counts, from when the GPU reaches it, so that
// step's kernels do not end the job, and the message names the NCCL collective.
#[test]
fn a_stopped_gpu_rank_ends_the_job_after_the_distributed_timeout() {
    if two_gpus() {
        let config = gpu_sized_config();
        let flags = ["--device", "cuda", "--config", &config, "--overlap-grad-reduce", "--ddp-bucket-size", "100000"];
        let text = a_stopped_rank_ends_the_job("gpu-stopped", &flags, 8);
        assert!(text.contains(" s in NCCL all-reduce for the other ranks"), "{text}");
    }
}
