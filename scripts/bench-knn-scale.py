#!/usr/bin/env python3
"""retro's indexes against faiss at corpus scale, in one run on one machine (issue [retrieval-scale]).

Clustered unit vectors as the RETRO database looks (centres on the unit sphere, x = normalize(c + 0.05 N(0, I)),
d = 384; isotropic random data has no neighbours worth finding), N database rows and Q queries drawn the same
way. For Flat, IVF<n>,Flat and IVF<n>,PQ<m>, on each side: build time, peak memory, and per nprobe the
queries/s and recall@k against exact search. faiss runs in a child process per index (so its peak memory is
that index's; recall against faiss' exact IndexFlatIP), retro through `retro knn build` and `retro knn eval`
(recall against its own exact search; each under /usr/bin/time for its peak memory). One JSON line per
measurement on stdout.

Run in a throw-away venv with `pip install faiss-cpu==1.15.1 numpy`, and OPENBLAS_CORETYPE=SkylakeX where
the CPU has AVX-512 (`grep -c avx512f /proc/cpuinfo`; elsewhere OpenBLAS dies with SIGILL under it, so leave
it unset and OpenBLAS picks its AVX2 kernels):
  OPENBLAS_CORETYPE=SkylakeX python3 scripts/bench-knn-scale.py --retro target/release/retro --dir /tmp/knn
The machine may be shared: run each comparison more than once and quote every run.
"""
import argparse, json, os, resource, subprocess, sys, time

import numpy as np


def clustered(rng, n, d, centres):
    x = centres[rng.integers(0, len(centres), n)] + 0.05 * rng.standard_normal((n, d), dtype=np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_data(a):
    paths = {name: os.path.join(a.dir, f"{name}.npy") for name in ("base", "queries")}
    if all(os.path.exists(p) for p in paths.values()):
        return paths
    os.makedirs(a.dir, exist_ok=True)
    rng = np.random.default_rng(7)
    c = rng.standard_normal((a.centres, a.dim), dtype=np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    for name, n in (("base", a.vectors), ("queries", a.queries)):
        np.save(paths[name], clustered(rng, n, a.dim, c))
    return paths


def faiss_one(a, spec, paths):
    """One index in this process: build, then search at each nprobe (the child's half of `faiss_run`)."""
    import faiss
    base, queries = np.load(paths["base"]), np.load(paths["queries"])
    truth = np.load(os.path.join(a.dir, f"truth_k{a.k}.npy"))
    t = time.perf_counter()
    index = faiss.index_factory(a.dim, spec, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        ntrain = min(len(base), a.ntrain)
        index.train(base[np.random.default_rng(1).choice(len(base), ntrain, replace=False)])
    index.add(base)
    build = time.perf_counter() - t
    for nprobe in (a.nprobe if "IVF" in spec else [1]):
        if "IVF" in spec:
            faiss.extract_index_ivf(index).nprobe = nprobe
        t = time.perf_counter()
        _, ids = index.search(queries, a.k)
        secs = time.perf_counter() - t
        recall = np.mean([len(set(r) & set(w)) / a.k for r, w in zip(ids, truth)])
        print(json.dumps({"impl": "faiss", "faiss": faiss.__version__, "index": spec, "nprobe": nprobe, "k": a.k,
                          "vectors": len(base), "queries": len(queries), "build_s": build,
                          "queries_per_s": len(queries) / secs, "recall": float(recall),
                          "threads": faiss.omp_get_max_threads(),
                          "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}), flush=True)


def truth(a, paths):
    """Exact top-k (faiss IndexFlatIP) once, shared by both sides' recall."""
    path = os.path.join(a.dir, f"truth_k{a.k}.npy")
    if not os.path.exists(path):
        import faiss
        index = faiss.IndexFlatIP(a.dim)
        index.add(np.load(paths["base"]))
        np.save(path, index.search(np.load(paths["queries"]), a.k)[1])
    return np.load(path)


def timed(cmd):
    """Run `cmd` under /usr/bin/time -v: (stdout lines, peak RSS in GB)."""
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{p.stderr[-3000:]}")
    rss = next(int(l.split(":")[1]) for l in p.stderr.splitlines() if "Maximum resident set size" in l)
    return [l for l in p.stdout.splitlines() if l.startswith("{")], rss / 1e6


def retro_run(a, spec, paths):
    """`retro knn build`, then `retro knn eval` (recall@k against its own exact search over the database,
    queries/s of the search alone) at each nprobe."""
    out = os.path.join(a.dir, "retro.index")
    lines, build_rss = timed([a.retro, "knn", "build", "--vectors", paths["base"], "--index", spec, "--out", out,
                              "--ntrain", str(a.ntrain)])
    build = json.loads(lines[-1])
    nprobes = ",".join(map(str, a.nprobe if "IVF" in spec else [1]))
    lines, eval_rss = timed([a.retro, "knn", "eval", "--index", out, "--queries", paths["queries"], "--k", str(a.k),
                             "--nprobe", nprobes, "--vectors", paths["base"]])
    for line in lines:
        r = json.loads(line)
        print(json.dumps({"impl": "retro", "index": spec, "built": build["index"], "nprobe": r["nprobe"], "k": a.k,
                          "vectors": build["vectors"], "queries": r["queries"], "build_s": build["build_s"],
                          "queries_per_s": r["queries_per_s"], "recall": r["recall_at_k"],
                          "threads": os.cpu_count(), "build_peak_rss_gb": build_rss,
                          "search_peak_rss_gb": eval_rss}), flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--retro", default="target/release/retro")
    p.add_argument("--dir", default="/tmp/retro-knn-scale")
    p.add_argument("--vectors", type=int, default=1_000_000)
    p.add_argument("--queries", type=int, default=10_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--centres", type=int, default=10_000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--nprobe", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 16, 64])
    p.add_argument("--indexes", default="Flat;IVF1024,Flat;IVF1024,PQ48")
    p.add_argument("--ntrain", type=int, default=100_000, help="k-means training sample, both sides")
    p.add_argument("--only", choices=["faiss", "retro"])
    p.add_argument("--faiss-one", help=argparse.SUPPRESS)
    a = p.parse_args()
    paths = make_data(a)
    if a.faiss_one:
        return faiss_one(a, a.faiss_one, paths)
    if a.only != "retro":
        truth(a, paths)
    for spec in a.indexes.split(";"):
        if a.only != "retro":
            subprocess.run([sys.executable, __file__, *sys.argv[1:], "--faiss-one", spec], check=True)
        if a.only != "faiss":
            retro_run(a, spec, paths)


if __name__ == "__main__":
    main()
