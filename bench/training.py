"""Training's wall time and peak memory at scale (on its own; `--base` compares a revision):

    .venv/bin/python bench/training.py [--n 1000000] [--precision tq8] [--base REV]

One process per subject (this checkout, and with ``--base`` the given git revision, one
after the other in the same run) loads ``n`` 384-d rows in-process into an untrained cosine
index on the file store (5,000-row upserts; past the 101k real MiniLM embeddings, the scale
run's normalised blends of two), then trains it with the defaults. Reported: training wall
time, the process's resident memory before training (the index in memory) and its peak
during training (sampled every 20 ms from /proc), beside the rows' raw float32 size. A
TrainFunction of 10 GB must hold that peak.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import rss_mb, save, source_of  # noqa: E402

KEK = bytes(range(32))


def subject(tmp: Path, n: int, precision: str) -> dict[str, Any]:
    """Runs inside the subject's process: load, train, measure."""
    from scale import vectors

    from ciphervec.engine.arrays.backend import select
    from ciphervec.engine.model import IndexConfig, RowBatch
    from ciphervec.engine.service import IndexService
    from ciphervec.infra.storage import open_store

    base, _, label = vectors(n, 0)
    svc = IndexService(open_store(f"file://{tmp}/store"), backend=select("numpy"), train_threshold=10**9)
    svc.create_index(
        "t", "i", IndexConfig(dimension=384, metric="cosine", storage_precision=precision), kek=KEK
    )
    ids = [str(i) for i in range(n)]
    for lo in range(0, n, 5000):
        svc.upsert("t", "i", KEK, RowBatch(ids[lo : lo + 5000], base[lo : lo + 5000]))
    raw_mb = base.nbytes / 2**20
    del base
    before = rss_mb(os.getpid())
    peak, done = [before], threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak.append(rss_mb(os.getpid()))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    result = svc.train("t", "i", KEK)
    train_s = time.perf_counter() - t0
    done.set()
    sampler.join()
    return {
        "n": n,
        "data": label,
        "precision": precision,
        "n_lists": result.n_lists,
        "train_s": train_s,
        "raw_mb": raw_mb,
        "rss_before_mb": before,
        "peak_mb": max(peak),
        "after_mb": rss_mb(os.getpid()),
    }


def run(tmp: Path, n: int, precision: str = "tq8", base: str | None = None) -> dict[str, Any]:
    """Each subject in its own process, one after the other; the table and the report."""
    subjects = [("now", None)] + ([(base, source_of(base, tmp))] if base else [])
    print(f"== training: {n:,} x 384 rows, {precision}, defaults ==")
    print(f"  {'subject':<10} {'lists':>6} {'train':>8} {'raw':>9} {'before':>9} {'peak':>9} {'peak/raw':>9}")
    report: dict[str, Any] = {"n": n, "precision": precision, "subjects": {}}
    for name, path in subjects:
        env = dict(os.environ)
        if path is not None:
            env["PYTHONPATH"] = f"{path}{os.pathsep}{env.get('PYTHONPATH', '')}"
        work = tmp / f"run-{name}"
        work.mkdir()
        proc = subprocess.run(
            [sys.executable, __file__, "--n", str(n), "--precision", precision, "--subject", str(work)],
            env=env,
            capture_output=True,
            text=True,
        )
        shutil.rmtree(work, ignore_errors=True)
        if proc.returncode:
            # An old revision may not survive the run (before 60a43f0 training 1M rows peaked
            # at 17.7 GB): say so in the table and the report, and go on with the bench.
            why = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
            if proc.returncode == -signal.SIGKILL:
                why += " (most likely out of memory)"
            report["subjects"][name] = {"failed": why, "stderr": proc.stderr[-2000:]}
            print(f"  {name:<10} failed: {why}")
            continue
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        report["subjects"][name] = got
        print(
            f"  {name:<10} {got['n_lists']:>6} {got['train_s']:>7.1f}s {got['raw_mb']:>7.0f}MB"
            f" {got['rss_before_mb']:>7.0f}MB {got['peak_mb']:>7.0f}MB {got['peak_mb'] / got['raw_mb']:>8.2f}x"
        )
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--precision", default="tq8")
    ap.add_argument("--base", help="also measure this git revision, in the same run")
    ap.add_argument("--subject", help=argparse.SUPPRESS)  # internal: run one subject here
    args = ap.parse_args(argv)
    if args.subject:
        print(json.dumps(subject(Path(args.subject), args.n, args.precision)))
        return 0
    report = run(Path(tempfile.mkdtemp(prefix="cv-train-")), args.n, args.precision, args.base)
    save(report, "training")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
