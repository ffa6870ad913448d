#!/usr/bin/env python3
"""faiss IndexFlatIP on the shapes of `retro bench knn`: random unit vectors, exact inner-product top-k.

Run in a throw-away venv with `pip install faiss-cpu==1.15.1 numpy`, and OPENBLAS_CORETYPE=SkylakeX where
the CPU has AVX-512 (faiss' OpenBLAS otherwise picks a slow kernel there; on a CPU without AVX-512 it dies
with SIGILL under it, so leave it unset). Prints one JSON line like retro's.
"""
import argparse, json, time
import faiss
import numpy as np

p = argparse.ArgumentParser()
p.add_argument("--vectors", type=int, default=100_000)
p.add_argument("--queries", type=int, default=1024)
p.add_argument("--dim", type=int, default=384)
p.add_argument("--k", type=int, default=200)
p.add_argument("--reps", type=int, default=3)
a = p.parse_args()
rng = np.random.default_rng(7)
def unit(n):
    v = rng.standard_normal((n, a.dim), dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)
index = faiss.IndexFlatIP(a.dim)
index.add(unit(a.vectors))
q = unit(a.queries)
index.search(q[:1], a.k)
times = []
for _ in range(max(1, a.reps)):
    t = time.perf_counter()
    index.search(q, a.k)
    times.append(time.perf_counter() - t)
secs = sorted(times)[len(times) // 2]
print(json.dumps({"bench": "knn_exact_ip", "impl": "faiss", "faiss": faiss.__version__, "vectors": a.vectors,
                  "queries": a.queries, "dim": a.dim, "k": a.k, "threads": faiss.omp_get_max_threads(),
                  "seconds": secs, "queries_per_s": a.queries / secs,
                  "tflops": 2.0 * a.queries * a.vectors * a.dim / secs / 1e12}))
