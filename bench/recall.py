"""The recall promise at every size (part of `make bench`, or on its own):

    .venv/bin/python bench/recall.py [--sizes 10000,20000,50000,100000,1000000] [--queries 1000]

For each size, an index of real MiniLM-384 sentence embeddings (cosine; beyond the 101k
real ones, normalised blends of two real ones, as bench/scale.py makes them) is trained
with the defaults — auto n_lists, auto n_probes — in this process (the engine on a memory
store: HTTP adds nothing to recall), and queried with held-out sentences that are not in
the index. Reported per size: n_lists, the auto n_probes (for top_k 10, and for larger
top_k) and the recall the training estimated, recall@10 and recall@100 measured against
exact search, and recall@10 with the time per query at n_probes 1, 2, 4, … every list. The promise is recall@k >= 0.95 at the defaults, for queries from outside
the index.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import faiss, save  # noqa: E402
from scale import vectors  # noqa: E402

PROMISE = 0.95


def exact(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    index = faiss.IndexFlatIP(base.shape[1])
    index.add(base / np.linalg.norm(base, axis=1, keepdims=True))
    return index.search(queries / np.linalg.norm(queries, axis=1, keepdims=True), k)[1]


def measure(n: int, queries: int) -> dict[str, Any]:
    from ciphervec.engine.arrays.backend import select
    from ciphervec.engine.model import IndexConfig, RowBatch
    from ciphervec.engine.service import IndexService
    from ciphervec.infra.storage.memory import MemoryStore

    base, held, source = vectors(n, queries)
    svc = IndexService(MemoryStore(), backend=select("numpy"), train_threshold=10**12, merge_at=10**9)
    key = os.urandom(32)
    svc.create_index("t", "r", IndexConfig(metric="cosine"), kek=key)
    ids = [str(i) for i in range(len(base))]
    for lo in range(0, len(base), 50_000):
        svc.upsert("t", "r", key, RowBatch(ids[lo : lo + 50_000], base[lo : lo + 50_000]))
    t = time.perf_counter()
    trained = svc.train("t", "r", key)
    train_s = time.perf_counter() - t
    cent = svc.heads.open("t", "r", key).body.centroids
    out: dict[str, Any] = {
        "n": n,
        "data": source,
        "n_lists": trained.n_lists,
        "auto_n_probes": trained.n_probes,
        "auto_n_probes_100": cent.auto_n_probes_100 if cent else None,
        "estimated_recall10": trained.recall_estimate,
        "train_s": train_s,
    }
    truth100 = exact(base, held, 100)  # the first 10 of each row are the top 10
    for k in (10, 100):
        out[f"recall{k}"] = recall_at(svc, key, held, truth100[:, :k], k, None)
    # recall@10 and the time per query against n_probes, doubling up to every list
    probes = sorted({1 << i for i in range(int(np.log2(trained.n_lists)) + 1)} | {trained.n_lists})
    out["sweep"] = []
    for n_probes in probes:
        t = time.perf_counter()
        r = recall_at(svc, key, held, truth100[:, :10], 10, n_probes)
        per_query = (time.perf_counter() - t) * 1000 / len(held)
        out["sweep"].append({"n_probes": n_probes, "recall10": r, "ms_per_query": per_query})
    return out


def recall_at(
    svc: Any, key: bytes, held: np.ndarray, truth: np.ndarray, k: int, n_probes: int | None
) -> float:
    hits = svc.query("t", "r", key, held, top_k=k, n_probes=n_probes)
    found = [[int(h["id"]) for h in row] for row in hits]
    return float(np.mean([len(set(f) & set(t.tolist())) / k for f, t in zip(found, truth, strict=True)]))


def run(sizes: list[int], queries: int = 1000) -> list[dict[str, Any]]:
    print(
        f"  {'rows':>10} {'lists':>6} {'n_probes k=10/100':>18} {'estimated':>10} {'recall@10':>10} {'recall@100':>11}  met"
    )
    rows = []
    for n in sizes:
        row = measure(n, queries)
        rows.append(row)
        met = "yes" if min(row["recall10"], row["recall100"]) >= PROMISE else "NO"
        print(
            f"  {n:>10,} {row['n_lists']:>6} {row['auto_n_probes']:>9}/{row['auto_n_probes_100']:<8}"
            f" {row['estimated_recall10']:>10.3f}"
            f" {row['recall10']:>10.3f} {row['recall100']:>11.3f}  {met}",
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,20000,50000,100000,1000000")
    ap.add_argument("--queries", type=int, default=1000)
    args = ap.parse_args(argv)
    print(f"== recall at defaults, held-out queries ({args.queries}), MiniLM-384 cosine (bench/recall.py) ==")
    report = {"promise": PROMISE, "sizes": run([int(s) for s in args.sizes.split(",")], args.queries)}
    save(report, "recall")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
