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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    rss_mb,
    save,
)
from scale10m_cold import stage_cold  # noqa: E402
from scale10m_data import (  # noqa: E402
    DIM,
    INDEX,
    KEK,
    TENANT,
    Data,
    hwm_mb,
    make_data,
)
from scale10m_serve import Live, stage_ingest, stage_serve  # noqa: E402

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
