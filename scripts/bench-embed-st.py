#!/usr/bin/env python3
"""sentence-transformers (torch CPU) embedding the chunks `retro bench embed --texts-out FILE` embedded, with
the same all-MiniLM-L6-v2 files (the directory retro uses), for the ratio issue [retrieval-scale] asks for.
Prints one JSON line like retro's.

Run in a throw-away venv with `pip install torch sentence-transformers`:
  target/release/retro bench embed --texts-out /tmp/chunks.jsonl
  python3 scripts/bench-embed-st.py --texts /tmp/chunks.jsonl --model ~/.cache/retro/all-MiniLM-L6-v2
"""
import argparse, json, time

import torch
from sentence_transformers import SentenceTransformer

p = argparse.ArgumentParser()
p.add_argument("--texts", required=True)
p.add_argument("--model", required=True)
p.add_argument("--batch-size", type=int, default=64)
p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
a = p.parse_args()
if a.threads:
    torch.set_num_threads(a.threads)
texts = [json.loads(line) for line in open(a.texts)]
model = SentenceTransformer(a.model, device="cpu")
model.encode(texts[: a.batch_size], batch_size=a.batch_size)  # warm-up
t = time.perf_counter()
out = model.encode(texts, batch_size=a.batch_size, normalize_embeddings=False)
secs = time.perf_counter() - t
tokens = sum(len(ids) for ids in model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)["input_ids"])
print(json.dumps({"bench": "embed", "impl": "sentence-transformers", "torch": torch.__version__, "model_dim": out.shape[1],
                  "chunks": len(texts), "wordpiece_tokens": tokens, "batch_size": a.batch_size,
                  "threads": torch.get_num_threads(), "seconds": secs, "chunks_per_s": len(texts) / secs,
                  "tokens_per_s": tokens / secs}))
