"""TurboQuant storage tiers (part of `make bench`, or on its own):

    .venv/bin/python bench/turboquant.py [--n 100000] [--queries 1000]

Real 384-d MiniLM sentence embeddings, cosine, one index per tier (float32, float16, tq12,
tq8, tq6, tq4) on a file store, trained with default settings. Reported per tier: bytes
per vector in the store (the trained index's sealed objects: centroids, directory, lists) and in memory (the faiss codes and
what the parts keep beside them, after a cold load), recall@10 and recall@100 at default
n_probes against exact float32 search, and single-query latency (in-process, warm).
Beside each tq tier, plaintext faiss IndexIVFScalarQuantizer of the same width on the same
lists and n_probes (no encryption, no TurboQuant storage) for scale.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import faiss, minilm, p, save  # noqa: E402

TIERS = ("float32", "float16", "tq12", "tq8", "tq6", "tq4")
FAISS_SQ = {
    "float16": faiss.ScalarQuantizer.QT_fp16,
    "tq12": faiss.ScalarQuantizer.QT_fp16,
    "tq8": faiss.ScalarQuantizer.QT_8bit,
    "tq6": faiss.ScalarQuantizer.QT_6bit,
    "tq4": faiss.ScalarQuantizer.QT_4bit,
}
KEK = bytes(range(32))


def recall(hits: list[list[str]], truth: np.ndarray, k: int) -> float:
    return float(
        np.mean(
            [
                len({int(h) for h in row[:k]} & set(t[:k].tolist())) / k
                for row, t in zip(hits, truth, strict=True)
            ]
        )
    )


def faiss_side(base: np.ndarray, queries: np.ndarray, centroids: np.ndarray, probes: int, tier: str) -> float:
    quantizer = faiss.IndexFlatL2(base.shape[1])
    quantizer.add(centroids)
    if tier == "float32":
        index: Any = faiss.IndexIVFFlat(quantizer, base.shape[1], len(centroids))
    else:
        index = faiss.IndexIVFScalarQuantizer(quantizer, base.shape[1], len(centroids), FAISS_SQ[tier])
    index.train(base)
    index.add(base)
    index.nprobe = probes
    return index.search(queries, 100)[1]


def run(tmp: Path, n: int, n_queries: int) -> dict[str, Any]:
    from ciphervec.engine.arrays.backend import select
    from ciphervec.engine.model import IndexConfig, RowBatch
    from ciphervec.engine.service import IndexService
    from ciphervec.infra.storage import open_store

    real = minilm(101_000)
    if real is None:
        raise SystemExit("needs the MiniLM embeddings (make bench-deps)")
    perm = np.random.default_rng(7).permutation(len(real))
    queries, base = real[perm[:n_queries]].copy(), real[perm[n_queries : n_queries + n]].copy()
    exact = faiss.IndexFlatIP(base.shape[1])
    exact.add(base)
    truth = exact.search(queries, 100)[1]
    ids = [str(i) for i in range(n)]
    rows = []
    print(
        f"  {'tier':>8} {'store B/vec':>12} {'memory B/vec':>13} {'recall@10':>10} {'recall@100':>11}"
        f" {'p50 ms':>7} {'faiss SQ recall@10':>19}"
    )
    for tier in TIERS:
        store = open_store(f"file://{tmp}/{tier}")
        svc = IndexService(store, backend=select("numpy"), train_threshold=10**9)
        svc.create_index(
            "t", "i", IndexConfig(dimension=384, metric="cosine", storage_precision=tier), kek=KEK
        )
        for lo in range(0, n, 5000):
            svc.upsert("t", "i", KEK, RowBatch(ids[lo : lo + 5000], base[lo : lo + 5000]))
        svc.train("t", "i", KEK)
        # the trained index's objects: centroids, directory and lists (the segments it
        # replaced are swept after a grace period for readers still holding the old head)
        stored = sum(f.stat().st_size for f in (tmp / tier).rglob("*") if f.is_file() and "run" in f.parts)
        cold = IndexService(store, backend=select("numpy"), lazy_rows=0)
        cold.query("t", "i", KEK, queries[:1], top_k=10)
        snap = cold.cache.current(("t", "i"))
        held = sum(part.nbytes() for part in snap.parts)
        hits = [[h["id"] for h in r] for r in cold.query("t", "i", KEK, queries, top_k=100)]
        times = []
        for q in queries[:300]:
            t0 = time.perf_counter()
            cold.query("t", "i", KEK, q[None], top_k=10)
            times.append((time.perf_counter() - t0) * 1000)
        described = cold.describe("t", "i", KEK)
        centroids = snap.layout.centroids
        plain = faiss_side(base, queries, centroids, described["n_probes"], tier)
        row = {
            "tier": tier,
            "store_bytes_per_vector": stored / n,
            "memory_bytes_per_vector": held / n,
            "recall_at_10": recall(hits, truth, 10),
            "recall_at_100": recall(hits, truth, 100),
            "p50_ms": p(times, 50),
            "n_probes": described["n_probes"],
            "faiss_recall_at_10": recall([[str(i) for i in r] for r in plain], truth, 10),
        }
        rows.append(row)
        print(
            f"  {tier:>8} {row['store_bytes_per_vector']:>12,.0f} {row['memory_bytes_per_vector']:>13,.0f}"
            f" {row['recall_at_10']:>10.3f} {row['recall_at_100']:>11.3f} {row['p50_ms']:>7.2f}"
            f" {row['faiss_recall_at_10']:>19.3f}"
        )
    return {"n": n, "queries": n_queries, "tiers": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=1000)
    args = ap.parse_args(argv)
    print(f"== TurboQuant tiers: {args.n:,} MiniLM-384 rows, cosine, default training and n_probes ==")
    save(run(Path(tempfile.mkdtemp(prefix="cv-tq-")), args.n, args.queries), "turboquant")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
