"""The cold stage of the 10M-row scale run (``scale10m.py``): a fresh server on the run's
store, from the file store or from a moto S3 server holding a copy of it, lazy and whole."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import API_KEY, K, free_port, p, rss_mb, settle, wait_port  # noqa: E402
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
        during = []
        for q in queries[1:21]:
            t = time.perf_counter()
            index.query(q, top_k=K)
            during.append(time.perf_counter() - t)
        index.get(["0"], include=[])
        full = time.perf_counter() - t0
        warm = []
        for q in queries[21:71]:
            t = time.perf_counter()
            index.query(q, top_k=K)
            warm.append(time.perf_counter() - t)
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


@contextmanager
def s3_copy(store: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """The file store copied into a moto S3 server (a child process): (store URI, env)."""
    import boto3

    port = free_port()
    moto = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, moto)
        env = {
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        env["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{port}"
        s3 = boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        )
        s3.create_bucket(Bucket="cv-scale")
        t = time.perf_counter()
        for f in store.rglob("*"):
            if f.is_file() and not f.name.endswith(".lock") and not f.name.startswith(".tmp-"):
                s3.upload_file(str(f), "cv-scale", "store/" + f.relative_to(store).as_posix())
        print(f"  cold: store copied into moto S3 in {time.perf_counter() - t:.0f} s")
        yield "s3://cv-scale/store", env
    finally:
        moto.terminate()
        moto.wait(20)


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
