"""Scale and cold-start runs for ciphervec (part of `make bench`, or on its own):

    .venv/bin/python bench/scale.py [--sizes 10000,100000,1000000] [--cold]

Scale: for each size, a fresh `ciphervec serve` (file store) ingests 384-d vectors through
the official SDK in 1,000-vector batches, trains, and answers 200 held-out single queries.
Base vectors beyond the 101k real MiniLM sentence embeddings are normalised blends of two
random real embeddings (w·a + (1-w)·b, w in [0.55, 0.95]) — a stated stand-in: embedding a
million sentences takes hours on 2 cores, and blends keep the embedding geometry without
the near-duplicate clusters that noisy copies would create.

Cold start: the index lives in S3 (a moto server); after ingest and training the server
is stopped and fresh processes are started: one opening the index lazily (the default:
head, centroids, the run's directory and the probed lists first, the rest in the
background) and one loading it whole (CIPHERVEC_LAZY_ROWS=0). Each reports its first
query, queries while loading, the time until every row is in memory, and warm queries.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from cyborgdb import Client

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import API_KEY, Server, free_port, minilm, moto_s3, p, recall, rss_mb, save, truth  # noqa: E402


def vectors(n: int, queries: int) -> tuple[np.ndarray, np.ndarray, str]:
    real = minilm(101_000)
    if real is None:
        raise SystemExit("needs the MiniLM embeddings (make bench-deps)")
    rng = np.random.default_rng(7)
    perm = rng.permutation(len(real))
    pool, held = real[perm[queries:]], real[perm[:queries]]
    if n <= len(pool):
        return pool[:n].copy(), held, "real"
    extra = n - len(pool)
    a, b = rng.integers(0, len(pool), extra), rng.integers(0, len(pool), extra)
    w = rng.uniform(0.55, 0.95, (extra, 1)).astype(np.float32)
    blends = w * pool[a] + (1 - w) * pool[b]
    blends /= np.linalg.norm(blends, axis=1, keepdims=True)
    return np.vstack([pool, blends]), held, f"{len(pool):,} real + {extra:,} blends"


def serve(tmp: Path, store: str, env: dict[str, str] | None = None, name: str = "cv") -> Server:
    port = free_port()
    cmd = [sys.executable, "-m", "ciphervec.handlers.cli", "serve", "--port", str(port), "--store", store]
    cmd += ["--keys", f"file://{tmp}/keys.json", "--train-threshold", "1000000000"]
    return Server(name, cmd, {"CIPHERVEC_ROOT_KEY": API_KEY, **(env or {})}, port, tmp)


def ingest_train(url: str, base: np.ndarray, key: bytes) -> tuple[Any, dict[str, float]]:
    index = Client(url, API_KEY).create_index("scale", key, metric="cosine", dimension=base.shape[1])
    ids = [str(i) for i in range(len(base))]
    t = time.perf_counter()
    for lo in range(0, len(base), 1000):
        index.upsert(ids[lo : lo + 1000], base[lo : lo + 1000])
    out = {"ingest_vps": len(base) / (time.perf_counter() - t)}
    t = time.perf_counter()
    index.train()  # answers 202 when training outlasts the request budget: wait for it
    while not index.is_trained() and time.perf_counter() - t < 3600:
        time.sleep(0.5)
    out["train_s"] = time.perf_counter() - t
    out["n_lists"] = float(index.n_lists)
    return index, out


def query_stats(index: Any, queries: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    times, found = [], []
    for q in queries:
        t = time.perf_counter()
        res = index.query(q, top_k=10)
        times.append(time.perf_counter() - t)
        found.append([int(r["id"]) for r in res])
    return {
        "query_p50_ms": p(times, 50) * 1e3,
        "query_p99_ms": p(times, 99) * 1e3,
        "recall": recall(found, gt),
    }


def scale(sizes: list[int], tmp: Path) -> list[dict[str, Any]]:
    rows = []
    for n in sizes:
        base, queries, source = vectors(n, 200)
        gt = truth(base, queries)
        srv = serve(tmp, f"file://{tmp}/scale-{n}")
        try:
            index, out = ingest_train(srv.url, base, Client.generate_key())
            out.update(query_stats(index, queries, gt))
            out["rss_mb"] = rss_mb(srv.proc.pid)
        finally:
            srv.stop()
        out.update(n=n, data=source, raw_mb=base.nbytes / 2**20)
        rows.append(out)
        print(
            f"  {n:>9,}  ingest {out['ingest_vps']:>9,.0f} v/s  train {out['train_s']:6.1f} s ({int(out['n_lists'])} lists)"
            f"  query p50 {out['query_p50_ms']:6.2f} ms p99 {out['query_p99_ms']:6.2f} ms  recall {out['recall']:.3f}"
            f"  RSS {out['rss_mb']:,.0f} MB (raw {out['raw_mb']:,.0f} MB)  [{source}]"
        )
        del base
    return rows


def cold(tmp: Path, n: int) -> dict[str, Any]:
    with moto_s3("cv-bench") as (env, _):
        base, queries, _ = vectors(n, 50)
        key = Client.generate_key()
        srv = serve(tmp, "s3://cv-bench/idx", env, "warm")
        try:
            ingest_train(srv.url, base, key)
        finally:
            srv.stop()
        lazy = _cold_run(tmp, env, key, queries, lazy=True)
        whole = _cold_run(tmp, env, key, queries, lazy=False)
    out = {"n": n, **{f"lazy_{k}": v for k, v in lazy.items()}, **{f"whole_{k}": v for k, v in whole.items()}}
    print(
        f"  cold start on S3 (moto), {n:,} vectors: first query {lazy['first_s']:.2f} s lazy"
        f" (run lists read on demand) vs {whole['first_s']:.2f} s loading the whole index;"
        f" every row in memory after {lazy['full_s']:.2f} s; warm p50 {lazy['warm_p50_ms']:.2f} ms"
        f" (p50 {lazy['during_p50_ms']:.2f} ms while the rest loads)"
    )
    return out


def _cold_run(
    tmp: Path, env: dict[str, str], key: bytes, queries: np.ndarray, lazy: bool
) -> dict[str, float]:
    """A fresh server over the S3 index: first query, queries while the rest of the index
    loads in the background, the time until every row is in memory (a get needs them
    all), then warm queries."""
    env = {**env, "CIPHERVEC_LAZY_ROWS": "50000" if lazy else "0"}
    srv = serve(tmp, "s3://cv-bench/idx", env, "cold-lazy" if lazy else "cold-whole")
    try:
        index = Client(srv.url, API_KEY).load_index("scale", key)
        t0 = time.perf_counter()
        first_ids = [r["id"] for r in index.query(queries[0], top_k=10)]
        first = time.perf_counter() - t0
        during = []
        for q in queries[1:21]:
            t = time.perf_counter()
            index.query(q, top_k=10)
            during.append(time.perf_counter() - t)
        index.get(["0"], include=[])
        full = time.perf_counter() - t0
        warm = []
        for q in queries[21:]:
            t = time.perf_counter()
            index.query(q, top_k=10)
            warm.append(time.perf_counter() - t)
        again = [r["id"] for r in index.query(queries[0], top_k=10)]
    finally:
        srv.stop()
    return {
        "first_s": first,
        "full_s": full,
        "during_p50_ms": p(during, 50) * 1e3,
        "warm_p50_ms": p(warm, 50) * 1e3,
        "same_answer_warm": float(first_ids == again),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--cold", action="store_true", help="also time a cold start on S3 (moto)")
    ap.add_argument("--cold-n", type=int, default=100_000)
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="cv-scale-"))
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": f"{os.cpu_count()} cores",
    }
    print("scale (384-d, cosine, SDK over HTTP, 1,000-vector batches, 200 held-out queries):")
    report["scale"] = scale([int(s) for s in args.sizes.split(",") if s], tmp)
    if args.cold:
        report["cold"] = cold(tmp, args.cold_n)
    save(report, "scale")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
