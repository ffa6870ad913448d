#!/usr/bin/env python3
"""The tables of a GPU check (scripts/gpu-run), from what its steps left in OUTDIR.

usage: gpu-summary.py OUTDIR MANIFEST
1. One row per kernel entry point of MANIFEST (scripts/gpu-kernels.tsv): its test's verdict, the worst
   relative error against the CPU reference and its tolerance (the RETRO_CHECK lines of the test), the
   sanitizer verdicts of its family, its measured TFLOP/s or TB/s, torch's figure on the same shape and
   the ratio (torch time / retro time: above 1, retro is faster).
2. The model and training rows: the step tests, `retro train`, the NCCL check, 857m retro vs torch.
3. Every `retro bench kernels` line beside torch's (speedup and the goals of issue [cuda-core]).
A step that did not run shows why ("skipped: no GPU" in a dry run). Standard library only."""
import json
import os
import re
import sys

GOALS = {  # from issue [cuda-core]: minimum speedup over torch
    ("layernorm", "fwd"): 2.0,
    ("layernorm", "bwd"): 3.0,
    ("cross_entropy", "fwd+bwd"): 2.5,
    ("embedding", "bwd"): 3.0,
    ("causal_self_attn", "fwd+bwd"): 1.0,
}


def num(x):
    """A number from a RETRO_CHECK field: NaN / infinity arrive as strings, a missing one as None."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def read(out, name):
    try:
        with open(os.path.join(out, name), errors="replace") as f:
            return f.read()
    except OSError:
        return None


def status(out, log):
    """'ok', 'skipped', 'not run', or 'FAILED (exit N)' / 'time limit' for a step's log."""
    s = read(out, os.path.join("status", log))
    if s is None:
        return "not run"
    s = s.strip()
    if s == "skipped":
        return "skipped: no GPU" if "dry run" in (read(out, log) or "") else "skipped: budget spent"
    if s == "0":
        return "ok"
    return "time limit" if s in ("124", "137") else f"FAILED (exit {s})"


def manifest_rows(path):
    rows = []
    with open(path) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            cols = line.rstrip("\n").split("\t")
            if len(cols) != 5:
                sys.exit(f"gpu-summary: {path}: expected 5 tab-separated columns: {line!r}")
            rows.append(dict(zip(("entry", "family", "test", "copy", "bench"), cols)))
    return rows


def test_results(log_text, checks_text):
    """{test name: 'ok' | 'FAILED' | 'ignored'} from libtest's lines (captured output: one clean line per
    test), and {test name: [checks]} from the RETRO_CHECK lines the tests appended to RETRO_CHECK_LOG."""
    results, checks = {}, {}
    for line in (log_text or "").splitlines():
        m = re.match(r"^test (\S+) \.\.\. (ok|FAILED|ignored)$", line.strip())
        if m:
            results[m.group(1)] = m.group(2)
    for line in (checks_text or "").splitlines():
        if line.startswith("RETRO_CHECK "):
            try:
                c = json.loads(line[len("RETRO_CHECK "):])
            except json.JSONDecodeError:
                continue
            checks.setdefault(c["test"], []).append(c)
    return results, checks


def sanitizer(out, tool, family):
    log = f"{tool}-{family}.log"
    st = status(out, log)
    if st != "ok" and not st.startswith("FAILED"):
        return st if st != "not run" else "-"
    m = re.search(r"ERROR SUMMARY: (\d+) error", read(out, log) or "")
    if st == "ok":
        return "clean" if m is None or m.group(1) == "0" else f"{m.group(1)} errors"
    return f"{m.group(1)} errors" if m and m.group(1) != "0" else st


def load_bench(out, name):
    rows = []
    for line in (read(out, name) or "").splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return rows


def bench_key(r):
    k = r["kernel"]
    if k in ("layernorm", "residual_layernorm"):
        return (k, r.get("mode"), tuple(r.get("shape", [])), r.get("dtype"))
    if k == "embedding":
        return (k, r.get("mode"), r.get("dtype"))
    if k == "cross_entropy":
        return (k, r.get("mode"))
    if k == "gemm":
        return (k, r.get("m"))
    return (k, r.get("mode"), r.get("hidden"))


def measure(r):
    if "tflops" in r:
        return f"{r['tflops']:.1f} TFLOP/s"
    if "gb_per_s" in r:
        return f"{r['gb_per_s'] / 1e3:.2f} TB/s"
    return ""


def kernel_table(out, rows):
    ours = [r for r in load_bench(out, "retro-kernels.jsonl") if r.get("bench") == "kernel" and r.get("status") == "ok"]
    torch = [r for r in load_bench(out, "torch-kernels.jsonl") if r.get("bench") == "kernel" and r.get("status") == "ok"]
    logs = {}
    print("## kernels: one row per entry point")
    print()
    print("| entry point | family | test | verdict | max rel. error | tolerance | memcheck | racecheck | retro | torch | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        fam = row["family"]
        if fam not in logs:
            logs[fam] = test_results(read(out, f"tests-{fam}.log"), read(out, f"checks-{fam}.jsonl"))
        results, checks = logs[fam]
        name = f"{row['test']}::{row['copy']}"
        st = status(out, f"tests-{fam}.log")
        verdict = results.get(name, st if st != "ok" else "not in log")
        def badness(c):
            e, t = num(c["err"]), num(c["tol"])
            if e != e:  # NaN
                return float("inf")
            return e / t if t > 0 else (0.0 if e == 0 else float("inf"))
        worst = max([c for c in checks.get(name, []) if "err" in c], key=badness, default=None)
        err, tol = (f"{num(worst['err']):.2e}", f"{num(worst['tol']):.1e}") if worst else ("-", "-")
        racecheck = sanitizer(out, "racecheck", fam) if read(out, f"status/racecheck-{fam}.log") is not None else "n/a"
        retro_fig = torch_fig = ratio = "-"
        if row["bench"] != "-":
            kernel, _, mode = row["bench"].partition(":")
            mine = [r for r in ours if r["kernel"] == kernel and (not mode or r.get("mode") == mode)]
            if mine:
                r = mine[0]
                retro_fig = f"{measure(r)} ({r['time_ms']:.3f} ms)"
                same = [t for t in torch if bench_key(t) == bench_key(r)]
                if same:
                    t = min(same, key=lambda t: t["time_ms"])
                    torch_fig = measure(t) or f"{t['time_ms']:.3f} ms"
                    ratio = f"{t['time_ms'] / r['time_ms']:.2f}x"
        print(f"| {row['entry']} | {fam} | {name} | {verdict} | {err} | {tol} | {sanitizer(out, 'memcheck', fam)} | "
              f"{racecheck} | {retro_fig} | {torch_fig} | {ratio} |")


def training_rows(out):
    print()
    print("## model and training")
    print()
    print("| check | verdict | detail |")
    print("| --- | --- | --- |")
    ops_results, ops_checks = test_results(read(out, "ops.log"), read(out, "checks-ops.jsonl"))
    failed_ops = sorted(name for name, verdict in ops_results.items() if verdict != "ok")
    worst = max((c for cs in ops_checks.values() for c in cs if "err" in c and num(c["tol"]) > 0),
                key=lambda c: num(c["err"]) / num(c["tol"]), default=None)
    detail = f"failed: {', '.join(failed_ops)}" if failed_ops else (
        f"worst: {worst['check']} {num(worst['err']):.2e} (tol {num(worst['tol']):.1e})" if worst else "")
    print(f"| op tests (tests/device_ops.rs, {len(ops_results)} tests) | {status(out, 'ops.log')} | {detail} |")
    results, checks = test_results(read(out, "model.log"), read(out, "checks-model.jsonl"))
    st = status(out, "model.log")
    for name in ("model_loss_and_gradients_match_the_cpu_in_f64::cuda", "model_loss_and_gradients_match_the_cpu_in_f64::cuda_f32",
                 "golden_tiny_loss_on_each_device::cuda_f32", "gpu_857m_twenty_steps_lower_the_loss::cuda",
                 "the_tensor_parallel_model_on_one_rank_equals_the_model::cuda"):
        detail = "; ".join(f"{c['check']}: {num(c['err']):.2e} (tol {num(c['tol']):.1e})" for c in checks.get(name, []) if "err" in c)
        for c in checks.get(name, []):
            if c.get("losses"):
                losses = [num(x) for x in c["losses"]]
                detail = f"loss {losses[0]:.3f} -> {losses[-1]:.3f} over {len(losses)} steps"
        print(f"| {name} | {results.get(name, st if st != 'ok' else 'not in log')} | {detail} |")
    results, _ = test_results(read(out, "optimizer.log"), read(out, "checks-model.jsonl"))
    st = status(out, "optimizer.log")
    for name in ("the_optimizer_step_is_adamw_in_f64::cuda",
                 "the_distributed_optimizer_on_one_gpu_equals_the_device_optimizer::cuda",
                 "overlapped_gradient_reduction_on_one_gpu_equals_the_plain_step::cuda",
                 "the_engine_trains_the_tensor_parallel_model_of_one_rank::cuda"):
        print(f"| {name} | {results.get(name, st if st != 'ok' else 'not in log')} | |")
    check = (read(out, "train-check.log") or "").strip().splitlines()
    print(f"| retro train --device cuda, 30 steps | {status(out, 'train.log')} | |")
    print(f"| retro train --load, 30 -> 40 | {status(out, 'train-resume.log')} | |")
    # The mean losses on success, the assertion (the last line) on failure.
    shown = check[1] if status(out, "train-check.log") == "ok" and len(check) > 1 else (check[-1] if check else "")
    print(f"| training checks | {status(out, 'train-check.log')} | {shown} |")
    print(f"| NCCL collectives (mpirun -np 1) | {status(out, 'nccl.log')} | |")
    print(f"| retro info | {status(out, 'info.log')} | |")
    print(f"| torch golden check | {status(out, 'torch-golden.log')} | |")

    def best(name):
        rows = [r for r in load_bench(out, name) if r.get("bench") == "train" and r.get("status") == "ok"]
        return max(rows, key=lambda r: r["tokens_per_s"]) if rows else None

    ours, torch = best("retro-train.jsonl"), best("torch-train.jsonl")
    for name, r in (("retro", ours), ("torch eager", torch)):
        if r:
            detail = (f"mb {r['micro_batch']}, {r['tokens_per_s']:.0f} tokens/s, {r.get('achieved_tflops', 0):.1f} TFLOP/s, "
                      f"peak {r.get('peak_mem_gb', 0):.1f} GB, loss {r['loss_first']:.3f} -> {r['loss_last']:.3f}")
            if "driver_allocations_in_timed_steps" in r:
                detail += f", driver allocations in timed steps {r['driver_allocations_in_timed_steps']}"
            print(f"| 857m training step, {name} | ok | {detail} |")
        else:
            log = "retro-train.jsonl" if name == "retro" else "torch-train.jsonl"
            print(f"| 857m training step, {name} | {status(out, log)} | no successful run |")
    if ours and torch:
        print(f"| 857m tokens/s, retro / torch | | {ours['tokens_per_s'] / torch['tokens_per_s']:.2f}x (goal >= 1.0) |")


def compare_table(out):
    ours = [r for r in load_bench(out, "retro-kernels.jsonl") if r.get("bench") == "kernel"]
    torch = [r for r in load_bench(out, "torch-kernels.jsonl") if r.get("bench") == "kernel" and r.get("status") == "ok"]
    print()
    print("## benchmarks: retro vs torch (same shapes; speedup = torch time / retro time)")
    print()
    if not ours:
        print(f"no retro benchmark lines ({status(out, 'retro-kernels.jsonl')})")
        return
    print("| kernel | mode | shape | retro | torch (which) | speedup | goal |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in ours:
        if r.get("status") != "ok":
            print(f"| {r['kernel']} | | | {r.get('status')}: {r.get('error', '')} | | | |")
            continue
        matches = [t for t in torch if bench_key(t) == bench_key(r)]
        shape = r.get("shape") or r.get("q") or [r.get("m")]
        goal = GOALS.get((r["kernel"], r.get("mode")))
        if not matches:
            print(f"| {r['kernel']} | {r.get('mode', '')} | {shape} | {r['time_ms']:.3f} ms ({measure(r)}) | none | | {goal or ''} |")
            continue
        for t in sorted(matches, key=lambda t: t["time_ms"]):
            which = t.get("backend") or t.get("variant") or t.get("dtype") or ""
            speedup = t["time_ms"] / r["time_ms"]
            verdict = "" if goal is None else f">= {goal}: {'met' if speedup >= goal else 'NOT met'}"
            print(f"| {r['kernel']} | {r.get('mode', '')} | {shape} | {r['time_ms']:.3f} ms ({measure(r)}) | "
                  f"{t['time_ms']:.3f} ms ({measure(t)}, {which}) | {speedup:.2f}x | {verdict} |")


def main():
    out, manifest = sys.argv[1], sys.argv[2]
    rows = manifest_rows(manifest)
    kernel_table(out, rows)
    training_rows(out)
    compare_table(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
