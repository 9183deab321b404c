"""BM25 full-text and hybrid search (part of `make bench`, or on its own):

    .venv/bin/python bench/bm25.py [--n 100000] [--queries 200]

Real English sentences (the AWS API reference inside botocore, 314k distinct; past that a
row joins two of them) as one full_text field of an index, with the MiniLM embeddings of
the first 101k sentences as vectors (repeated past 101k), beside a plain bm25s index of the
same rows with the same analysis. Reported: agreement of the top-10 on text-only queries,
the first text query after the load, after a 1,000-row upsert and in a cold container
(a new service on the same store: the run's text object read, then the lists holding the
hits; nothing analysed again), the time until that container holds every row, and p50
latency of text-only queries (ciphervec in-process and plain bm25s) and of hybrid ones.
Queries are the first words of held-out sentences.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bm25s
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import minilm, p, save  # noqa: E402
from embed import sentences  # noqa: E402

KEK = bytes(range(32))
BATCH = 5000


def rows_of_text(n: int) -> list[str]:
    """``n`` rows of real sentences: each distinct sentence once, then pairs of them."""
    base = sentences(10**7)
    return [
        base[i] if i < len(base) else f"{base[i % len(base)]} {base[(i * 7919 + 1) % len(base)]}"
        for i in range(n)
    ]


def timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(tmp: Path, n: int, n_queries: int) -> dict[str, Any]:
    from ciphervec.engine.arrays.backend import select
    from ciphervec.engine.arrays.text import TextConfig, TextQuery, analyze
    from ciphervec.engine.model import IndexConfig, RowBatch
    from ciphervec.engine.service import IndexService
    from ciphervec.infra.storage import open_store

    texts = rows_of_text(n + n_queries + 1000)
    vectors = minilm(101_000)
    if vectors is None:
        raise SystemExit("needs the MiniLM embeddings (make bench-deps)")
    base, held, extra = texts[:n], texts[n : n + n_queries], texts[n + n_queries :]
    queries = [" ".join(t.split()[:4]) for t in held]

    def vecs(lo: int, hi: int) -> np.ndarray:
        return vectors[np.arange(lo, hi) % len(vectors)]

    url = f"file://{tmp}/bm25"
    svc = IndexService(open_store(url), backend=select("numpy"), train_threshold=10**9)
    text = TextConfig.declare(["text"], None, None, None)
    svc.create_index("t", "i", IndexConfig(dimension=384, metric="cosine", text=text), kek=KEK)
    ids = [str(i) for i in range(n)]
    t0 = time.perf_counter()
    for lo in range(0, n, BATCH):
        meta = [{"text": t} for t in base[lo : lo + BATCH]]
        svc.upsert("t", "i", KEK, RowBatch(ids[lo : lo + BATCH], vecs(lo, lo + len(meta)), meta))
    load_s = time.perf_counter() - t0
    train_s = timed(lambda: svc.train("t", "i", KEK))

    first_s = timed(lambda: svc.text_query("t", "i", KEK, TextQuery(queries[0]), top_k=10))
    more = RowBatch([f"x{i}" for i in range(1000)], vecs(0, 1000), [{"text": t} for t in extra])
    upsert_s = timed(lambda: svc.upsert("t", "i", KEK, more))
    after_upsert_s = timed(lambda: svc.text_query("t", "i", KEK, TextQuery(queries[1]), top_k=10))
    cold = IndexService(open_store(url), backend=select("numpy"), train_threshold=10**9)
    cold_s = timed(lambda: cold.text_query("t", "i", KEK, TextQuery(queries[2]), top_k=10))
    # The cold container goes on loading its lists in the background; it finishes here, so
    # that the latencies below are not measured beside that load.
    cold_full_s = cold_s + timed(lambda: cold.num_vectors("t", "i", KEK))
    live = base + extra

    t0 = time.perf_counter()
    plain = bm25s.BM25(k1=1.2, b=0.75)
    plain.index(analyze(live), show_progress=False)
    plain_build_s = time.perf_counter() - t0

    same, ours_ms, plain_ms, hybrid_ms = [], [], [], []
    for q, v in zip(queries, vecs(n, n + n_queries), strict=True):
        t0 = time.perf_counter()
        got = svc.text_query("t", "i", KEK, TextQuery(q), top_k=10)
        ours_ms.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        scores = plain.get_scores(analyze([q])[0])
        hit = np.flatnonzero(scores > 0)
        want = hit[np.lexsort((hit, -scores[hit]))][:10].tolist()
        plain_ms.append((time.perf_counter() - t0) * 1000)
        same.append([h["id"] for h in got] == [ids[j] if j < n else f"x{j - n}" for j in want])
        t0 = time.perf_counter()
        svc.hybrid_query("t", "i", KEK, v[None, :], TextQuery(q), top_k=10)
        hybrid_ms.append((time.perf_counter() - t0) * 1000)
    report = {
        "n": n,
        "queries": n_queries,
        "same_top10": float(np.mean(same)),
        "load_s": load_s,
        "train_s": train_s,
        "first_text_query_s": first_s,
        "upsert_1000_s": upsert_s,
        "first_text_query_after_upsert_s": after_upsert_s,
        "cold_first_text_query_s": cold_s,
        "cold_whole_index_s": cold_full_s,
        "plain_bm25s_index_s": plain_build_s,
        "text_p50_ms": p(ours_ms, 50),
        "text_p99_ms": p(ours_ms, 99),
        "plain_bm25s_p50_ms": p(plain_ms, 50),
        "hybrid_p50_ms": p(hybrid_ms, 50),
    }
    print(
        f"  load {n:,} rows {load_s:.1f} s (terms analysed as they are written), training {train_s:.1f} s\n"
        f"  same top-10 as plain bm25s: {report['same_top10']:.1%} of {n_queries} queries\n"
        f"  first text query: after the load {first_s * 1000:.0f} ms; after a 1,000-row upsert"
        f" ({upsert_s * 1000:.0f} ms) {after_upsert_s * 1000:.0f} ms; in a cold container"
        f" {cold_s:.2f} s, every row in memory after {cold_full_s:.1f} s (plain bm25s index:"
        f" {plain_build_s:.1f} s)\n"
        f"  text-only p50: ciphervec {report['text_p50_ms']:.1f} ms (p99 {report['text_p99_ms']:.1f}),"
        f" plain bm25s {report['plain_bm25s_p50_ms']:.1f} ms; hybrid p50 {report['hybrid_p50_ms']:.1f} ms"
    )
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=200)
    args = ap.parse_args(argv)
    print(f"== BM25: {args.n:,} real sentences, text-only and hybrid ==")
    save(run(Path(tempfile.mkdtemp(prefix="cv-bm25-")), args.n, args.queries), "bm25")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
