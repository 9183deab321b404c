"""What one request costs the server, against the least work it could be (part of `make bench`):

    .venv/bin/python bench/cost.py [--base REV] [--n 50000] [--rounds 5] [--save-baseline]

`ciphervec serve` (file store) holds 50,000 real MiniLM-384 embeddings (cosine, trained,
default n_probes); one official-SDK client sends, round after round, single queries at
k = 10 and k = 100, gets of 100 ids with their vectors and upserts of 1,000 x 384 (into a
second index, untrained; and into a third, trained: 10,000 rows in 256 lists, so each upsert
also places its rows in their nearest lists). The server's CPU per request comes from /proc
(every thread, background work included), after the server has settled.

Beside each figure stands the floor for the same work in this process: faiss's own IVF
search on the very lists the server searches (its trained index opened from the store),
one thread, same n_probes; for a get, faiss reconstructing the 100 rows and the JSON of
them; for an upsert, parsing the SDK's JSON body, decoding its base64, sealing the bytes
with AES-256-GCM and adding them to a flat faiss index (to an IVF index on the trained
index's centroids, for the trained upsert). The ratio server / floor is what this report
guards: it does not move with the machine's speed.

With ``--base REV`` a second server runs git revision REV of this repository on the same
data, in the same run, and the rounds alternate between the two. The ratios of the last
committed run live in ``bench/cost-baseline.json``; a ratio more than 15 % worse than
its committed value prints a WARNING line. ``--save-baseline`` writes this run's ratios
there (commit it with the change that earned them).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pybase64
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cyborgdb import Client
from pydantic_core import to_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    API_KEY,
    HERE,
    Server,
    cpu_seconds,
    faiss,
    minilm,
    p,
    save,
    settle,
    source_of,
    split,
    start_ciphervec,
)

BASELINE = HERE / "cost-baseline.json"
WORSE = 1.15  # a ratio this much above its committed value is a regression
KINDS = ("query_k10", "query_k100", "get_100", "upsert_1000", "upsert_trained")
LABELS = {
    "query_k10": "single query, k=10",
    "query_k100": "single query, k=100",
    "get_100": "get 100 ids with vectors",
    "upsert_1000": "upsert 1,000 x 384",
    "upsert_trained": "upsert 1,000, trained",
}
BATCH = 1000
TRAINED_ROWS, TRAINED_LISTS = 10_000, 256  # the trained write index: rows each upsert places


class Subject:
    """One server under test, with its indexes and the SDK client that drives it."""

    def __init__(self, label: str, server: Server, base: np.ndarray) -> None:
        self.label, self.server = label, server
        self.key = Client.generate_key()
        client = Client(server.url, API_KEY)
        self.index = client.create_index("cost", self.key, metric="cosine", dimension=base.shape[1])
        self.writes = client.create_index("cost-w", self.key, metric="cosine", dimension=base.shape[1])
        self.trained = client.create_index("cost-t", self.key, metric="cosine", dimension=base.shape[1])
        self.cpu: dict[str, list[float]] = {k: [] for k in KINDS}
        self.wall: dict[str, list[float]] = {k: [] for k in KINDS}

    def used(self) -> float:
        return cpu_seconds(self.server.proc.pid)


def _ingest(subject: Subject, base: np.ndarray) -> dict[str, float]:
    """Upsert ``base`` in 1,000-vector calls; server CPU (merges after it included) and v/s."""
    ids = [str(i) for i in range(len(base))]
    settle(subject.server.proc.pid)
    cpu0, t0 = subject.used(), time.perf_counter()
    for lo in range(0, len(base), BATCH):
        subject.index.upsert(ids[lo : lo + BATCH], base[lo : lo + BATCH])
    wall = time.perf_counter() - t0
    settle(subject.server.proc.pid)
    return {
        "ingest_vps": len(base) / wall,
        "ingest_cpu_s_per_50k": (subject.used() - cpu0) * 50_000 / len(base),
    }


def _round(subject: Subject, queries: np.ndarray, base: np.ndarray, rng: np.random.Generator) -> None:
    """One round of every request kind; per-request CPU and wall time appended."""
    settle(subject.server.proc.pid)
    ids = [str(i) for i in range(len(base))]

    def block(kind: str, calls: list[Any]) -> None:
        times = []
        cpu0 = subject.used()
        for call in calls:
            t = time.perf_counter()
            call()
            times.append(time.perf_counter() - t)
        if kind.startswith("upsert"):  # the merges an upsert leaves behind are its cost too
            settle(subject.server.proc.pid)
        subject.cpu[kind].append((subject.used() - cpu0) / len(calls))
        subject.wall[kind].append(p(times, 50))

    idx = subject.index
    block("query_k10", [lambda q=q: idx.query(q, top_k=10) for q in queries])
    block("query_k100", [lambda q=q: idx.query(q, top_k=100) for q in queries])
    picks = [[ids[i] for i in rng.choice(len(ids), 100, replace=False)] for _ in range(100)]
    block("get_100", [lambda pick=pick: idx.get(pick, include=["vector"]) for pick in picks])
    starts = rng.integers(0, len(base) // BATCH, 10) * BATCH
    block(
        "upsert_1000",
        [lambda lo=lo: subject.writes.upsert(ids[lo : lo + BATCH], base[lo : lo + BATCH]) for lo in starts],
    )
    starts = rng.integers(0, len(base) // BATCH, 10) * BATCH  # over rows the index holds or not
    block(
        "upsert_trained",
        [lambda lo=lo: subject.trained.upsert(ids[lo : lo + BATCH], base[lo : lo + BATCH]) for lo in starts],
    )


class Floors:
    """The least work each request kind needs, in this process: faiss on the very lists the
    server searches (its trained index, opened from its store), and decode + seal + add for
    an upsert. Measured every round, beside the servers, so each ratio pairs two figures
    taken within seconds of each other on this noisy machine."""

    def __init__(self, store: Path, key: bytes, queries: np.ndarray, base: np.ndarray) -> None:
        from ciphervec.engine.arrays.backend import select
        from ciphervec.engine.service import IndexService
        from ciphervec.infra.storage import open_store

        svc = IndexService(open_store(f"file://{store}"), backend=select("numpy"), lazy_rows=0)
        head = svc.heads.open("default", "cost", key)
        snap = svc.cache.snapshot(head)
        if len(snap.parts) != 1 or head.body.centroids is None:
            raise SystemExit("the trained index should be one IVF part")
        self.index = snap.parts[0].ann.index
        self.n_probes = head.body.centroids.auto_n_probes
        self.n_lists = head.body.centroids.n_lists
        faiss.extract_index_ivf(self.index).nprobe = self.n_probes
        self.unit = np.ascontiguousarray(
            queries / np.linalg.norm(queries, axis=1, keepdims=True), dtype=np.float32
        )
        self.aead = AESGCM(os.urandom(32))
        ids = [str(i) for i in range(BATCH)]
        self.bodies = [
            json.dumps(
                {
                    "index_name": "cost-w",
                    "index_key": key.hex(),
                    "batch": {
                        "ids": ids,
                        "vectors_b64": base64.b64encode(base[lo : lo + BATCH].tobytes()).decode(),
                        "dimension": base.shape[1],
                    },
                }
            )
            for lo in range(0, 10 * BATCH, BATCH)
        ]
        self.rng = np.random.default_rng(5)
        # the trained write index's centroids: ``n_lists`` of the trained index's own
        ivf = faiss.extract_index_ivf(self.index)
        self.centroids = faiss.IndexFlatL2(ivf.d)
        self.centroids.add(ivf.quantizer.reconstruct_n(0, TRAINED_LISTS))

    def measure(self) -> dict[str, float]:
        """CPU seconds per request of each kind's floor (one thread, as the server searches)."""
        faiss.omp_set_num_threads(1)
        out: dict[str, float] = {}
        for k in (10, 100):
            t = time.process_time()
            for q in self.unit:
                self.index.search(q[None, :], k)
            out[f"query_k{k}"] = (time.process_time() - t) / len(self.unit)
        t = time.process_time()
        for _ in range(100):
            rows = self.rng.choice(self.index.ntotal, 100, replace=False).astype(np.int64)
            vectors = self.index.reconstruct_batch(rows).tolist()
            to_json([{"id": str(r), "vector": v} for r, v in zip(rows, vectors, strict=True)])
        out["get_100"] = (time.process_time() - t) / 100
        out["upsert_1000"] = self._upserts(faiss.IndexFlatL2(self.unit.shape[1]))
        out["upsert_trained"] = self._upserts(
            faiss.IndexIVFFlat(self.centroids, self.unit.shape[1], TRAINED_LISTS)
        )
        faiss.omp_set_num_threads(os.cpu_count() or 1)
        return out

    def _upserts(self, index: Any) -> float:
        """CPU seconds per upsert body: parse it, decode its base64, seal it, add it to ``index``."""
        t = time.process_time()
        for body in self.bodies:
            batch = json.loads(body)["batch"]
            raw = pybase64.b64decode(batch["vectors_b64"], validate=True)
            self.aead.encrypt(os.urandom(12), raw, b"segment")
            index.add(np.frombuffer(raw, dtype="<f4").reshape(-1, batch["dimension"]))
        return (time.process_time() - t) / len(self.bodies)


def _train(subject: Subject, index: Any = None, **options: Any) -> None:
    index = subject.index if index is None else index
    index.train(**options)
    deadline = time.time() + 600
    while not index.is_trained():
        if time.time() > deadline:
            raise SystemExit(f"{subject.label}: training did not finish")
        time.sleep(0.5)


def run(
    tmp: Path, n: int = 50_000, queries: int = 300, rounds: int = 5, base_rev: str | None = None
) -> dict[str, Any]:
    tmp.mkdir(parents=True, exist_ok=True)
    data = minilm(101_000)
    if data is None:
        raise SystemExit("needs the MiniLM embeddings (make bench-deps)")
    base, qs = split(data, n, queries, seed=3)
    subjects = []
    try:
        subjects.append(Subject("now", start_ciphervec(tmp, "now"), base))
        if base_rev:
            server = start_ciphervec(tmp, "base", pythonpath=source_of(base_rev, tmp))
            subjects.append(Subject(f"base {base_rev}", server, base))
        setup = {s.label: _ingest(s, base) for s in subjects}
        for s in subjects:
            _train(s)
            for lo in range(0, TRAINED_ROWS, BATCH):
                s.trained.upsert([str(i) for i in range(lo, lo + BATCH)], base[lo : lo + BATCH])
            _train(s, s.trained, n_lists=TRAINED_LISTS)
        floors = Floors(tmp / "now-data", subjects[0].key, qs, base)
        rng = np.random.default_rng(7)
        measured: list[dict[str, float]] = []
        for r in range(rounds):
            measured.append(floors.measure())
            for s in subjects if r % 2 == 0 else subjects[::-1]:
                _round(s, qs, base, rng)
    finally:
        for s in subjects:
            s.server.stop()
    report: dict[str, Any] = {"n": n, "queries": queries, "rounds": rounds, "base": base_rev, "floor_ms": {}}
    for kind in KINDS:
        report["floor_ms"][kind] = float(np.median([f[kind] for f in measured])) * 1e3
    report["n_probes"], report["n_lists"] = int(floors.n_probes), int(floors.n_lists)
    for s in subjects:
        report[s.label] = {
            **setup[s.label],
            "cpu_ms": {k: float(np.median(v)) * 1e3 for k, v in s.cpu.items()},
            "p50_ms": {k: float(np.median(v)) * 1e3 for k, v in s.wall.items()},
            # each round's server figure over that round's floor, then the median
            "ratio": {
                k: float(np.median([c / f[k] for c, f in zip(v, measured, strict=True)]))
                for k, v in s.cpu.items()
            },
        }
    _print(report, [s.label for s in subjects])
    return report


def _print(report: dict[str, Any], labels: list[str]) -> None:
    print(
        f"  {report['n']:,} MiniLM-384 rows, cosine, {report['n_lists']} lists, n_probes {report['n_probes']};"
        f" medians of {report['rounds']} rounds (x floor: of each round's ratio); server CPU per request from /proc"
    )
    head = f"  {'request':<26}{'floor ms':>9}"
    for label in labels:
        head += f"{label + ' CPU ms':>22}{'x floor':>9}{'p50 ms':>8}"
    if len(labels) == 2:
        head += f"{'now vs base':>13}"
    print(head)
    for kind in KINDS:
        line = f"  {LABELS[kind]:<26}{report['floor_ms'][kind]:>9.3f}"
        for label in labels:
            r = report[label]
            line += f"{r['cpu_ms'][kind]:>22.3f}{r['ratio'][kind]:>8.2f}x{r['p50_ms'][kind]:>8.2f}"
        if len(labels) == 2:
            change = report[labels[0]]["cpu_ms"][kind] / report[labels[1]]["cpu_ms"][kind] - 1
            line += f"{change:>+12.0%}"
        print(line)
    for label in labels:
        r = report[label]
        print(
            f"  {label}: SDK ingest of {report['n']:,} in 1,000-vector upserts: {r['ingest_vps']:,.0f} v/s,"
            f" server CPU {r['ingest_cpu_s_per_50k']:.2f} s per 50k vectors"
        )


def check(report: dict[str, Any], baseline: Path = BASELINE) -> list[str]:
    """WARNING lines for the ratios more than 15 % worse than the committed ones."""
    if not baseline.exists():
        return [f"WARNING: no committed request-cost figures ({baseline.name}); nothing to compare with"]
    committed = json.loads(baseline.read_text())["ratio"]
    now = report["now"]["ratio"]
    return [
        f"WARNING: {LABELS[k]} costs {now[k]:.2f}x its floor, {now[k] / committed[k] - 1:.0%} worse than the"
        f" committed {committed[k]:.2f}x ({baseline.name}): a regression, or a noisy run (run it again)"
        for k in KINDS
        if k in committed and now[k] > committed[k] * WORSE
    ]


def save_baseline(report: dict[str, Any], baseline: Path = BASELINE) -> None:
    now = report["now"]
    figures = {
        "date": time.strftime("%Y-%m-%d"),
        "n": report["n"],
        "ratio": {k: round(v, 3) for k, v in now["ratio"].items()},
        "cpu_ms": {k: round(v, 3) for k, v in now["cpu_ms"].items()},
        "floor_ms": {k: round(v, 4) for k, v in report["floor_ms"].items()},
        "ingest_cpu_s_per_50k": round(now["ingest_cpu_s_per_50k"], 3),
    }
    baseline.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"  wrote {baseline}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", help="a git revision to measure beside this checkout, in the same run")
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--queries", type=int, default=300, help="single queries per round and k")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument(
        "--save-baseline", action="store_true", help=f"write this run's ratios to {BASELINE.name}"
    )
    args = ap.parse_args(argv)
    print("== request cost: server CPU per request against its floor (bench/cost.py) ==")
    tmp = Path(tempfile.mkdtemp(prefix="cv-cost-"))
    try:
        report = run(tmp, args.n, args.queries, args.rounds, args.base)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for line in check(report):
        print(line)
    if args.save_baseline:
        save_baseline(report)
    save(report, "cost")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
