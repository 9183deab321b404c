"""BM25 full-text and hybrid search (part of `make bench`, or on its own):

    .venv/bin/python bench/bm25.py [--n 100000] [--queries 200]

The real sentences behind the MiniLM set as one full_text field of an index (with their
embeddings as vectors), beside a plain bm25s index of the same sentences with the same
analysis. Reported: agreement of the top-10 on text-only queries, the first text query's
cost (the snapshot's BM25 index is built then), and p50 latency of text-only queries
(ciphervec in-process and plain bm25s) and of hybrid queries (vector + text, fused).
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
from common import minilm, p, save, sentences  # noqa: E402

KEK = bytes(range(32))


def run(tmp: Path, n: int, n_queries: int) -> dict[str, Any]:
    from ciphervec.engine.arrays.backend import select
    from ciphervec.engine.arrays.text import TextConfig, TextQuery, analyze
    from ciphervec.engine.model import IndexConfig, RowBatch
    from ciphervec.engine.service import IndexService
    from ciphervec.infra.storage import open_store

    texts = sentences(n + n_queries)
    vectors = minilm(101_000)
    if vectors is None:
        raise SystemExit("needs the MiniLM embeddings (make bench-deps)")
    base, held = texts[:n], texts[n : n + n_queries]
    queries = [" ".join(t.split()[:4]) for t in held]
    svc = IndexService(open_store(f"file://{tmp}/bm25"), backend=select("numpy"), train_threshold=10**9)
    text = TextConfig.declare(["text"], None, None, None)
    svc.create_index("t", "i", IndexConfig(dimension=384, metric="cosine", text=text), kek=KEK)
    ids = [str(i) for i in range(n)]
    for lo in range(0, n, 5000):
        meta = [{"text": t} for t in base[lo : lo + 5000]]
        svc.upsert("t", "i", KEK, RowBatch(ids[lo : lo + 5000], vectors[lo : lo + 5000], meta))
    svc.train("t", "i", KEK)

    t0 = time.perf_counter()
    svc.text_query("t", "i", KEK, TextQuery(queries[0]), top_k=10)
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    plain = bm25s.BM25(k1=1.2, b=0.75)
    plain.index(analyze(base), show_progress=False)
    plain_build_s = time.perf_counter() - t0

    same, ours_ms, plain_ms, hybrid_ms = [], [], [], []
    for q, v in zip(queries, vectors[n : n + n_queries], strict=True):
        t0 = time.perf_counter()
        got = [int(h["id"]) for h in svc.text_query("t", "i", KEK, TextQuery(q), top_k=10)]
        ours_ms.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        scores = plain.get_scores(analyze([q])[0])
        hit = np.flatnonzero(scores > 0)
        want = hit[np.lexsort((hit, -scores[hit]))][:10].tolist()
        plain_ms.append((time.perf_counter() - t0) * 1000)
        same.append(got == want)
        t0 = time.perf_counter()
        svc.hybrid_query("t", "i", KEK, v[None, :], TextQuery(q), top_k=10)
        hybrid_ms.append((time.perf_counter() - t0) * 1000)
    report = {
        "n": n,
        "queries": n_queries,
        "same_top10": float(np.mean(same)),
        "first_text_query_s": first_s,
        "plain_bm25s_index_s": plain_build_s,
        "text_p50_ms": p(ours_ms, 50),
        "plain_bm25s_p50_ms": p(plain_ms, 50),
        "hybrid_p50_ms": p(hybrid_ms, 50),
    }
    print(
        f"  same top-10 as plain bm25s: {report['same_top10']:.1%} of {n_queries} queries\n"
        f"  first text query (builds the snapshot's BM25 index): {first_s:.2f} s"
        f" (plain bm25s index: {plain_build_s:.2f} s)\n"
        f"  text-only p50: ciphervec {report['text_p50_ms']:.1f} ms, plain bm25s"
        f" {report['plain_bm25s_p50_ms']:.1f} ms; hybrid p50 {report['hybrid_p50_ms']:.1f} ms"
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
