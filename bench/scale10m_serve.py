"""The serve and ingest stages of the 10M-row scale run (``scale10m.py``): one server on a
linked copy of the run's store, queried and written through the official cyborgdb SDK."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import API_KEY, K, Server, p, recall, rss_mb, settle  # noqa: E402
from scale import serve  # noqa: E402
from scale10m_data import (  # noqa: E402
    DIM,
    INDEX,
    KEK,
    SEED,
    Data,
    blends,
    chunk_rows,
    hwm_mb,
    pool_and_queries,
)

FRESH = "fresh100k"
BATCH, INGEST_BATCHES, FRESH_N = 1000, 50, 100_000
PROBE_SWEEP = (8, 16, 32, 64, 128, 256)  # the serve stage's recall@10 against n_probes
SWEEP_TIMED = 200  # single queries timed at each n_probes of the sweep


class Live:
    """One ``ciphervec serve`` for the serve and ingest stages, loading the index whole on
    first touch, on a hard-linked copy of the store (WORK/live, removed at the end): the
    ingest stage's writes never reach WORK/store, so every serve run queries the rows the
    load wrote. Links are a safe copy: the file store never changes a file in place, it
    writes a new one and links or renames it over the name."""

    def __init__(self, work: Path) -> None:
        self.work, self.copy = work, work / "live"
        self.srv: Server | None = None

    def server(self) -> Server:
        if self.srv is None:
            shutil.rmtree(self.copy, ignore_errors=True)
            skip = shutil.ignore_patterns("*.lock", ".tmp-*")
            shutil.copytree(self.work / "store", self.copy, copy_function=os.link, ignore=skip)
            self.srv = serve(self.work, f"file://{self.copy}", {"CIPHERVEC_LAZY_ROWS": "0"}, "serve")
        return self.srv

    def close(self) -> None:
        if self.srv is not None:
            self.srv.stop()
            self.srv = None
        shutil.rmtree(self.copy, ignore_errors=True)


def found_ids(res: list[dict[str, Any]]) -> list[int]:
    return [int(r["id"]) if str(r["id"]).isdigit() else -1 for r in res]


def stage_serve(srv: Server, data: Data) -> dict[str, Any]:
    from cyborgdb import Client

    index = Client(srv.url, API_KEY).load_index(INDEX, KEK)
    if not index.is_trained():
        raise SystemExit("serve: the index is not trained (run the train stage first)")
    t0 = time.perf_counter()
    index.get(["0"], include=[])  # needs every row in memory
    load_s = time.perf_counter() - t0
    settle(srv.proc.pid)
    loaded = rss_mb(srv.proc.pid)
    queries, gt = data.held_out()
    for q in queries[:20]:
        index.query(q, top_k=K)
    times, found = [], []
    for q in queries:
        t = time.perf_counter()
        res = index.query(q, top_k=K)
        times.append(time.perf_counter() - t)
        found.append(found_ids(res))
    # Recall against n_probes, in batches of 100 queries (the lever a user has per query).
    # The first SWEEP_TIMED queries are also sent one at a time: their p50 at that n_probes.
    sweep, sweep_p50 = {}, {}
    for probes in PROBE_SWEEP:
        got: list[list[int]] = []
        for lo in range(0, len(queries), 100):
            batch = index.query(queries[lo : lo + 100], top_k=K, n_probes=probes)
            got += [found_ids(res) for res in batch]
        sweep[probes] = recall(got, gt)
        single = []
        for q in queries[:SWEEP_TIMED]:
            t = time.perf_counter()
            index.query(q, top_k=K, n_probes=probes)
            single.append(time.perf_counter() - t)
        sweep_p50[probes] = p(single, 50) * 1e3
    out = {
        "load_s": load_s,
        "rss_mb": loaded,
        "rss_after_queries_mb": rss_mb(srv.proc.pid),
        "peak_rss_mb": hwm_mb(srv.proc.pid),
        "queries": len(queries),
        "query_p50_ms": p(times, 50) * 1e3,
        "query_p99_ms": p(times, 99) * 1e3,
        "recall": recall(found, gt),
        "n_lists": int(index.n_lists),
        "recall_by_n_probes": sweep,
        "p50_ms_by_n_probes": sweep_p50,
    }
    print(
        f"  serve: whole index in memory after {load_s:.1f} s, RSS {loaded:,.0f} MB"
        f" ({out['rss_after_queries_mb']:,.0f} MB after the queries, peak {out['peak_rss_mb']:,.0f} MB);"
        f" {len(queries)} single queries p50 {out['query_p50_ms']:.2f} ms p99 {out['query_p99_ms']:.2f} ms,"
        f" recall@10 {out['recall']:.4f} ({out['n_lists']} lists); with n_probes "
        + ", ".join(f"{k}: {v:.4f} (p50 {sweep_p50[k]:.2f} ms)" for k, v in sweep.items())
    )
    return out


def _timed_upserts(index: Any, ids: list[str], rows: np.ndarray) -> float:
    t0 = time.perf_counter()
    for lo in range(0, len(rows), BATCH):
        index.upsert(ids[lo : lo + BATCH], rows[lo : lo + BATCH])
    return len(rows) / (time.perf_counter() - t0)


def stage_ingest(srv: Server, n: int, precision: str, queries: int) -> dict[str, Any]:
    from cyborgdb import Client

    client = Client(srv.url, API_KEY)
    pool, _ = pool_and_queries(queries)
    rows = blends(pool, INGEST_BATCHES * BATCH, np.random.default_rng([SEED + 1, n]))
    ids = [str(n + i) for i in range(len(rows))]
    big = client.load_index(INDEX, KEK)
    big.get(["0"], include=[])  # the whole index in memory before the clock starts
    settle(srv.proc.pid)
    big_vps = _timed_upserts(big, ids, rows)
    fresh = client.create_index(FRESH, KEK, dimension=DIM, metric="cosine", storage_precision=precision)
    base = chunk_rows(pool, 0, FRESH_N)
    fill_vps = _timed_upserts(fresh, [str(i) for i in range(len(base))], base)
    t = time.perf_counter()
    fresh.train()  # answers 202 when training outlasts the request budget: wait for it
    while not fresh.is_trained() and time.perf_counter() - t < 1800:
        time.sleep(0.5)
    settle(srv.proc.pid)  # the training's compaction and any merge are over
    fresh_vps = _timed_upserts(fresh, ids, rows)
    out = {
        "batches": INGEST_BATCHES,
        "batch": BATCH,
        "big_vps": big_vps,
        "fresh_vps": fresh_vps,
        "fresh_fill_vps": fill_vps,
        "ratio": big_vps / fresh_vps,
        "rss_mb": rss_mb(srv.proc.pid),
    }
    print(
        f"  ingest: {INGEST_BATCHES} upserts of {BATCH:,} rows: {big_vps:,.0f} v/s into the {n:,}-row index,"
        f" {fresh_vps:,.0f} v/s into a fresh trained {FRESH_N:,}-row one ({out['ratio']:.2f}x);"
        f" filling the fresh one {fill_vps:,.0f} v/s"
    )
    return out
