#!/usr/bin/env python3
"""Side-by-side table of `retro bench kernels` and `bench.py kernels` JSON lines (same shapes).

usage: gpu-compare.py RETRO.jsonl TORCH.jsonl
speedup = torch time / retro time (above 1: retro is faster). For attention, torch's default SDPA
dispatch and its best pinned backend are both shown; for the cross-entropy, every torch variant.
Standard library only (runs on the GPU machine's python3)."""
import json
import sys

GOALS = {  # from issue [cuda-core]: minimum speedup over torch
    ("layernorm", "fwd"): 2.0,
    ("layernorm", "bwd"): 3.0,
    ("cross_entropy", "fwd+bwd"): 2.5,
    ("embedding", "bwd"): 3.0,
    ("causal_self_attn", "fwd+bwd"): 1.0,
}


def load(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    return [r for r in rows if r.get("bench") == "kernel"]


def key(r):
    k = r["kernel"]
    if k in ("layernorm", "residual_layernorm"):
        return (k, r.get("mode"), tuple(r.get("shape", [])), r.get("dtype"))
    if k == "embedding":
        return (k, r.get("mode"), r.get("dtype"))
    if k == "cross_entropy":
        return (k, r.get("mode"))
    if k == "gemm":
        return (k, r.get("dtype"), r.get("m"))
    return (k, r.get("mode"), r.get("hidden"))


def measure(r):
    if "tflops" in r:
        return f"{r['tflops']:.1f} TFLOP/s"
    if "gb_per_s" in r:
        return f"{r['gb_per_s']:.0f} GB/s"
    return ""


def main():
    ours = [r for r in load(sys.argv[1]) if r.get("status") == "ok"]
    torch = [r for r in load(sys.argv[2]) if r.get("status") == "ok"]
    print("| kernel | mode | shape | retro | torch (which) | speedup | goal |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in ours:
        k = key(r)
        if r["kernel"] == "gemm":
            k = ("gemm", "bf16", r["m"])
        matches = [t for t in torch if key(t) == k]
        shape = r.get("shape") or r.get("q") or [r.get("m")]
        goal = GOALS.get((r["kernel"], r.get("mode")))
        if not matches:
            print(f"| {r['kernel']} | {r.get('mode', '')} | {shape} | {r['time_ms']:.3f} ms ({measure(r)}) | none | | {goal or ''} |")
            continue
        for t in sorted(matches, key=lambda t: t["time_ms"]):
            which = t.get("backend") or t.get("variant") or t.get("dtype") or ""
            speedup = t["time_ms"] / r["time_ms"]
            verdict = "" if goal is None else (f">= {goal}: {'met' if speedup >= goal else 'NOT met'}")
            print(f"| {r['kernel']} | {r.get('mode', '')} | {shape} | {r['time_ms']:.3f} ms ({measure(r)}) | "
                  f"{t['time_ms']:.3f} ms ({measure(t)}, {which}) | {speedup:.2f}x | {verdict} |")
    failed = [r for r in load(sys.argv[1]) if r.get("status") != "ok"]
    for r in failed:
        print(f"\nretro {r['kernel']}: {r.get('status')}: {r.get('error', '')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
