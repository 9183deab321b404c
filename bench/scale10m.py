"""Ten million vectors in one Lambda-sized container (issue #20): the scale run at N x 384.

    .venv/bin/python bench/scale10m.py [--n 10000000] [--precision tq8] [--queries 1000]
        [--work DIR] [--stages data,load,train,serve,ingest,cold] [--s3]

    make bench BENCH_ARGS="--scale-10m 10000000"     # the same from bench/run.py (off by default)

Hours at 10M on a 2-core box: the data alone is a 15 GB Parquet file. Every stage runs on its
own on an existing work dir (`--stages train,serve` redoes training and serving after an
engine change without regenerating or reloading); each prints its line when it ends, keeps
its figures in WORK/stages.json, and the run ends with one table of every target beside the
latest figure measured for it (`*`: from an earlier run) and a JSON report in bench/results/.

Data (stage `data`, cached in bench/.cache/scale10m-<N>/, skipped when complete): N rows of
384-d float32 made as bench/scale.py makes them, but 262,144 rows at a time (10M x 384 x 4 B
is 15 GB; the box has 24 GB): the 101k real MiniLM sentence embeddings less the held-out
queries (same seeded split as scale.vectors), then normalised blends w·a + (1-w)·b of two
random real rows, w in [0.55, 0.95], each chunk from its own seeded generator. They go to one
Parquet file, rows.parquet (id: the row number as a string; vector: fixed-size list of
float32; one row group per chunk). The held-out queries are 1,000 real embeddings that are
not in the pool (queries.npy); the exact cosine top-10 (truth.npy) is merged chunk by chunk
from faiss.knn inner products over the unit-normalised rows. meta.json is written last: a
data dir without it is incomplete and made again.

Stages, on WORK (default bench/.cache/scale10m-<N>/work-<precision>/, index "big" of tenant
"default" in the file store WORK/store, a fixed index key):

* load    `ciphervec load rows.parquet --store file://WORK/store --create --precision P
          --no-train` in a child process, on an emptied store: wall seconds (process start
          to exit), vectors/s, and the child's peak RSS — its VmHWM, read by the child itself
          as the CLI returns (a `python -c` wrapper runs the CLI module). Not
          RUSAGE_CHILDREN's ru_maxrss: Linux carries the parent's high-water mark over the
          vfork and exec into the child.
* train   a fresh process opens the store as the API does (configure(Settings.from_env(
          store_uri=...))) and calls service.train with the defaults, as a TrainFunction
          would: wall seconds, RSS before, peak RSS (VmHWM at the end), n_lists, n_probes.
* serve   `ciphervec serve` with CIPHERVEC_LAZY_ROWS=0 (the index loads whole on first
          touch; a get of one id waits until every row is in memory) on a hard-linked copy
          of the store, WORK/live (the ingest stage writes into it; it is removed at the
          end, so WORK/store stays as the load and training left it): the time until every
          row is in memory, the server's RSS once its background work settles, then the
          held-out queries one at a time through the official cyborgdb SDK (top_k 10,
          default n_probes, after 20 untimed warm-up queries): p50 / p99 ms and recall@10
          against the exact truth. The RSS after the queries and the peak (VmHWM) too.
* ingest  on that server (or a fresh one, loaded whole first): 50 SDK upserts of 1,000 fresh
          rows (same recipe, another seed, ids N..N+49,999) into the big index, timed. Then a
          fresh 100k index of the same precision on the same server is filled (the first
          100k rows, 1,000 per upsert; that rate is reported too), trained, and given the
          same 50 upserts, timed; the target is the ratio of the two timed rates (a trained
          index both sides). The server runs with --train-threshold 1e9, so no upsert
          starts a training.
* cold    a fresh `ciphervec serve` on the store, as scale.py's _cold_run does: the first
          query after the process answers on its port (the lazy default: head, centroids,
          run directory and the probed lists first, the rest in the background), 20 queries
          while the rest loads, the time until every row is in memory (a get needs them
          all), warm p50 and RSS; then the same with CIPHERVEC_LAZY_ROWS=0 (the first query
          waits for the whole index). The file store's objects are in the OS page cache from
          the earlier stages: this is a cold process, not a cold disk. With --s3 the store
          is first copied into a moto server (a child process) and both runs read it from
          there; moto may hold the whole store in its memory (about 4 GB at 10M tq8) on top
          of the server's copy, so at 10M it needs that much free RAM twice.

Targets (2-core 24 GB box, 384-d cosine, tq8 by default; GB = 1024 MB): load >= 150k v/s at
peak RSS <= 1 GB; training <= 15 min at peak RSS <= 9 GB; serving RSS with every list loaded
<= 6 GB; single query p50 <= 10 ms, p99 <= 25 ms, recall@10 >= 0.95; cold first query
<= 1.5 s lazy, whole index in memory <= 90 s; SDK ingest into the N index >= 0.8x the rate
into a fresh 100k index.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    API_KEY,
    K,
    Server,
    free_port,
    p,
    recall,
    rss_mb,
    save,
    settle,
    wait_port,
)
from scale import serve  # noqa: E402
from scale10m_data import DIM, SEED, Data, blends, chunk_rows, make_data, pool_and_queries  # noqa: E402

INDEX, FRESH, TENANT = "big", "fresh100k", "default"
KEK = bytes(range(32))
BATCH, INGEST_BATCHES, FRESH_N = 1000, 50, 100_000
PROBE_SWEEP = (8, 16, 32, 64)  # the serve stage's recall@10 against n_probes
STAGES = ("data", "load", "train", "serve", "ingest", "cold")
# A stage run again makes the figures of the stages that measured its output stale.
STALE = {"load": ("train", "serve", "ingest", "cold"), "train": ("serve", "ingest", "cold")}
GB = 1024.0

# Runs `ciphervec ARGS` in this child and writes its peak RSS (VmHWM, KiB) to $CV_PEAK_FILE as
# the CLI returns: the child's own high-water mark, nothing inherited from the benchmark.
_PEAK_WRAPPER = """
import os, runpy, sys
code = 0
try:
    runpy.run_module("ciphervec.handlers.cli", run_name="__main__", alter_sys=True)
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
lines = open("/proc/self/status").read().splitlines()
kib = next(int(line.split()[1]) for line in lines if line.startswith("VmHWM:"))
with open(os.environ["CV_PEAK_FILE"], "w") as out:
    out.write(str(kib))
sys.exit(code)
"""


def hwm_mb(pid: int | str = "self") -> float:
    """A process's peak RSS so far (VmHWM), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


# -- load ------------------------------------------------------------------------------------
def cli(args: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess[str], float, float]:
    """``ciphervec ARGS`` in a child process: (its result, wall seconds, its peak RSS MB)."""
    peak = cwd / ".peak-rss"
    peak.unlink(missing_ok=True)
    env = {**os.environ, "CV_PEAK_FILE": str(peak)}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK_WRAPPER, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - t0
    peak_mb = int(peak.read_text()) / 1024 if peak.exists() else float("nan")
    return proc, seconds, peak_mb


def stage_load(data: Data, work: Path, precision: str) -> dict[str, Any]:
    store = work / "store"
    shutil.rmtree(store, ignore_errors=True)  # a load starts from an empty store
    args = ["load", str(data.parquet), "--store", f"file://{store}", "--index", INDEX]
    args += ["--index-key", KEK.hex(), "--create", "--dimension", str(DIM), "--metric", "cosine"]
    args += ["--precision", precision, "--no-train", "--quiet"]
    proc, seconds, peak = cli(args, work)
    if proc.returncode:
        raise RuntimeError(
            f"ciphervec load failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    status = json.loads(proc.stdout)
    rows = int(status["rows_loaded"])
    out = {
        "rows": rows,
        "seconds": seconds,
        "loader_seconds": status.get("seconds"),
        "vps": rows / seconds,
        "peak_rss_mb": peak,
        "store_mb": dir_mb(store),
        "parquet_mb": data.parquet.stat().st_size / 2**20,
    }
    print(
        f"  load: {rows:,} rows in {seconds:.1f} s ({out['vps']:,.0f} v/s; the loader's own"
        f" {status.get('seconds')} s), peak RSS {peak:,.0f} MB, store {out['store_mb']:,.0f} MB"
        f" from Parquet {out['parquet_mb']:,.0f} MB"
    )
    return out


# -- train -----------------------------------------------------------------------------------
def worker_train(store: str) -> dict[str, Any]:
    """Runs in a fresh process: open the store as the API does, train with the defaults."""
    from ciphervec.infra.settings import Settings
    from ciphervec.infra.wiring import configure

    c = configure(Settings.from_env(store_uri=store))
    before = rss_mb(os.getpid())
    t0 = time.perf_counter()
    result = c.service.train(TENANT, INDEX, KEK)
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "trained": result.trained,
        "message": result.message,
        "n_lists": result.n_lists,
        "n_probes": result.n_probes,
        "recall_estimate": result.recall_estimate,
        "rss_before_mb": before,
        "peak_rss_mb": hwm_mb(),
        "rss_after_mb": rss_mb(os.getpid()),
    }


def stage_train(work: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--worker-train", f"file://{work / 'store'}"],
        cwd=work,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - t0
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(
            f"training failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    out: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    out["process_s"] = wall
    print(
        f"  train: {out['seconds']:.1f} s ({wall:.1f} s with the process start), {out['n_lists']} lists,"
        f" n_probes {out['n_probes']}, estimated recall {out['recall_estimate']},"
        f" RSS {out['rss_before_mb']:,.0f} MB before, peak {out['peak_rss_mb']:,.0f} MB"
        + ("" if out["trained"] else f"  NOT TRAINED: {out['message']}")
    )
    return out


# -- serve and ingest ------------------------------------------------------------------------
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
    sweep = {}
    for probes in PROBE_SWEEP:
        got: list[list[int]] = []
        for lo in range(0, len(queries), 100):
            batch = index.query(queries[lo : lo + 100], top_k=K, n_probes=probes)
            got += [found_ids(res) for res in batch]
        sweep[probes] = recall(got, gt)
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
    }
    print(
        f"  serve: whole index in memory after {load_s:.1f} s, RSS {loaded:,.0f} MB"
        f" ({out['rss_after_queries_mb']:,.0f} MB after the queries, peak {out['peak_rss_mb']:,.0f} MB);"
        f" {len(queries)} single queries p50 {out['query_p50_ms']:.2f} ms p99 {out['query_p99_ms']:.2f} ms,"
        f" recall@10 {out['recall']:.4f} ({out['n_lists']} lists); with n_probes "
        + ", ".join(f"{k}: {v:.4f}" for k, v in sweep.items())
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


# -- cold ------------------------------------------------------------------------------------
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


# -- targets ---------------------------------------------------------------------------------
# (stage, figure, label, goal, compare, scale, unit)
TARGETS: list[tuple[str, str, str, float, str, float, str]] = [
    ("load", "vps", "load: vectors/s", 150_000, ">=", 1, "v/s"),
    ("load", "peak_rss_mb", "load: peak RSS", GB, "<=", 1 / GB, "GB"),
    ("train", "seconds", "train: wall", 15 * 60, "<=", 1 / 60, "min"),
    ("train", "peak_rss_mb", "train: peak RSS", 9 * GB, "<=", 1 / GB, "GB"),
    ("serve", "rss_mb", "serve: RSS, every list loaded", 6 * GB, "<=", 1 / GB, "GB"),
    ("serve", "query_p50_ms", "query: p50", 10, "<=", 1, "ms"),
    ("serve", "query_p99_ms", "query: p99", 25, "<=", 1, "ms"),
    ("serve", "recall", "query: recall@10", 0.95, ">=", 1, ""),
    ("cold", "lazy_first_s", "cold: first query (lazy)", 1.5, "<=", 1, "s"),
    ("cold", "lazy_full_s", "cold: every row in memory (lazy)", 90, "<=", 1, "s"),
    ("cold", "whole_first_s", "cold: first query loading whole", 90, "<=", 1, "s"),
    ("ingest", "ratio", "ingest: N index / fresh 100k", 0.8, ">=", 1, "x"),
]


def fmt(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"


def targets(stages: dict[str, Any], now: set[str]) -> list[dict[str, Any]]:
    rows = []
    for stage, key, label, goal, cmp, scale_by, unit in TARGETS:
        value = (stages.get(stage) or {}).get(key)
        met = None if value is None else value >= goal if cmp == ">=" else value <= goal
        rows.append(
            {
                "target": label,
                "value": value,
                "goal": f"{cmp} {fmt(goal * scale_by)} {unit}".strip(),
                "shown": None if value is None else f"{fmt(value * scale_by)} {unit}".strip(),
                "met": met,
                "earlier": stage not in now and value is not None,
            }
        )
    return rows


def print_targets(rows: list[dict[str, Any]]) -> None:
    print(f"\n  {'target':<36}{'measured':>14}  {'goal':<14} met")
    for r in rows:
        shown = "-" if r["shown"] is None else r["shown"] + ("*" if r["earlier"] else "")
        met = "-" if r["met"] is None else "yes" if r["met"] else "NO"
        print(f"  {r['target']:<36}{shown:>14}  {r['goal']:<14} {met}")
    if any(r["earlier"] for r in rows):
        print("  * measured by an earlier run on this work dir (WORK/stages.json)")


# -- the run ---------------------------------------------------------------------------------
def run(
    n: int = 10_000_000,
    precision: str = "tq8",
    queries: int = 1000,
    work: Path | None = None,
    stages: Sequence[str] = STAGES,
    s3: bool = False,
) -> dict[str, Any]:
    """The stages asked for, in order, on ``work``; returns the report (targets included)."""
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise SystemExit(f"unknown stages {sorted(unknown)}; choose from {','.join(STAGES)}")
    data = Data.of(n, queries)
    work = (work or data.dir / f"work-{precision}").absolute()
    work.mkdir(parents=True, exist_ok=True)
    meta = {"n": n, "precision": precision, "queries": queries, "data": str(data.dir)}
    meta_path = work / "meta.json"
    if meta_path.exists() and json.loads(meta_path.read_text()) != meta and "load" not in stages:
        raise SystemExit(f"{work} holds another run ({meta_path.read_text()}); add the load stage or --work")
    known_path = work / "stages.json"
    known: dict[str, Any] = json.loads(known_path.read_text()) if known_path.exists() else {}
    print(f"scale10m: {n:,} x {DIM} cosine, {precision}, stages {','.join(stages)}, work {work}")
    if {"load", "serve", "cold"} & set(stages) and "data" not in stages and not data.complete():
        raise SystemExit(f"no complete data in {data.dir}: add the data stage")
    live = Live(work)
    done: set[str] = set()
    try:
        for stage in STAGES:
            if stage not in stages:
                continue
            if stage == "data":
                result = make_data(data)
            elif stage == "load":
                meta_path.write_text(json.dumps(meta))
                result = stage_load(data, work, precision)
            elif stage == "train":
                result = stage_train(work)
            elif stage == "serve":
                result = stage_serve(live.server(), data)
            elif stage == "ingest":
                result = stage_ingest(live.server(), n, precision, queries)
            else:
                live.close()
                result = stage_cold(work, data, s3)
            result["at"] = time.strftime("%Y-%m-%d %H:%M:%S")
            for stale in STALE.get(stage, ()):
                known.pop(stale, None)
            known[stage] = result
            done.add(stage)
            known_path.write_text(json.dumps(known, indent=2))
    finally:
        live.close()
    rows = targets(known, done)
    print_targets(rows)
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": f"{os.cpu_count()} cores",
        **meta,
        "work": str(work),
        "stages_run": [s for s in STAGES if s in done],
        "stages": known,
        "targets": rows,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker-train"]:
        print("RESULT " + json.dumps(worker_train(argv[1])))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000_000, help="rows (default 10,000,000)")
    ap.add_argument("--precision", default="tq8", help="storage precision (tq8, float16, ...)")
    ap.add_argument(
        "--queries",
        type=int,
        default=1000,
        help="held-out real embeddings, kept out of the rows (default 1,000)",
    )
    ap.add_argument("--work", type=Path, help="work dir (default bench/.cache/scale10m-<N>/work-<precision>)")
    ap.add_argument("--stages", default=",".join(STAGES), help="comma-separated; run in the order above")
    ap.add_argument("--s3", action="store_true", help="cold stage: read the store from a moto S3 server")
    args = ap.parse_args(argv)
    stages = [s for s in args.stages.split(",") if s]
    if not stages:
        ap.error("--stages: name at least one stage")
    report = run(args.n, args.precision, args.queries, args.work, stages, args.s3)
    save(report, "scale10m")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
