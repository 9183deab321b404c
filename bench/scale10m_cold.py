"""The cold stage of the 10M-row scale run (``scale10m.py``): a fresh server on the run's
store, from the file store or from a moto S3 server holding a copy of it, lazy and whole."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import API_KEY, K, moto_s3, p, rss_mb, settle  # noqa: E402
from scale import serve  # noqa: E402
from scale10m_data import INDEX, KEK, Data, hwm_mb  # noqa: E402


def cold_run(
    work: Path, store: str, env: dict[str, str], queries: np.ndarray, lazy: bool
) -> dict[str, float]:
    """A fresh server on ``store``: first query, queries while the rest loads, the time until
    every row is in memory, warm queries (as scale._cold_run)."""
    from cyborgdb import Client

    env = {**env} if lazy else {**env, "CIPHERVEC_LAZY_ROWS": "0"}
    t_start = time.perf_counter()
    srv = serve(work, store, env, "cold-lazy" if lazy else "cold-whole")
    try:
        up = time.perf_counter() - t_start
        index = Client(srv.url, API_KEY).load_index(INDEX, KEK)
        t0 = time.perf_counter()
        first_ids = [r["id"] for r in index.query(queries[0], top_k=K)]
        first = time.perf_counter() - t0
        during = _timed_queries(index, queries[1:21])
        index.get(["0"], include=[])
        full = time.perf_counter() - t0
        warm = _timed_queries(index, queries[21:71])
        again = [r["id"] for r in index.query(queries[0], top_k=K)]
        settle(srv.proc.pid)
        rss = rss_mb(srv.proc.pid)
        peak = hwm_mb(srv.proc.pid)
    finally:
        srv.stop()
    return {
        "start_s": up,
        "first_s": first,
        "full_s": full,
        "during_p50_ms": p(during, 50) * 1e3,
        "warm_p50_ms": p(warm, 50) * 1e3,
        "same_answer_warm": float(first_ids == again),
        "rss_mb": rss,
        "peak_rss_mb": peak,
    }


def _timed_queries(index: Any, queries: np.ndarray) -> list[float]:
    """Seconds each of ``queries`` took, asked one at a time."""
    times = []
    for q in queries:
        t = time.perf_counter()
        index.query(q, top_k=K)
        times.append(time.perf_counter() - t)
    return times


@contextmanager
def s3_copy(store: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """The file store copied into a moto S3 server (a child process): (store URI, env)."""
    with moto_s3("cv-scale") as (env, s3):
        t = time.perf_counter()
        for f in store.rglob("*"):
            if f.is_file() and not f.name.endswith(".lock") and not f.name.startswith(".tmp-"):
                s3.upload_file(str(f), "cv-scale", "store/" + f.relative_to(store).as_posix())
        print(f"  cold: store copied into moto S3 in {time.perf_counter() - t:.0f} s")
        yield "s3://cv-scale/store", env


def stage_cold(work: Path, data: Data, s3: bool) -> dict[str, Any]:
    queries, _ = data.held_out()
    out: dict[str, Any] = {"where": "s3 (moto)" if s3 else "file store"}
    if s3:
        with s3_copy(work / "store") as (store, env):
            lazy = cold_run(work, store, env, queries, lazy=True)
            whole = cold_run(work, store, env, queries, lazy=False)
    else:
        store = f"file://{work / 'store'}"
        lazy = cold_run(work, store, {}, queries, lazy=True)
        whole = cold_run(work, store, {}, queries, lazy=False)
    out.update({f"lazy_{k}": v for k, v in lazy.items()})
    out.update({f"whole_{k}": v for k, v in whole.items()})
    print(
        f"  cold ({out['where']}): first query {lazy['first_s']:.2f} s lazy (p50 {lazy['during_p50_ms']:.1f} ms"
        f" while the rest loads, every row in memory after {lazy['full_s']:.1f} s, warm p50"
        f" {lazy['warm_p50_ms']:.2f} ms, RSS {lazy['rss_mb']:,.0f} MB); loading whole: first query"
        f" {whole['first_s']:.1f} s, RSS {whole['rss_mb']:,.0f} MB; servers up in"
        f" {lazy['start_s']:.1f} / {whole['start_s']:.1f} s"
    )
    return out
