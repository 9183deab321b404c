"""Many queries at once (part of `make bench`, or on its own):

    .venv/bin/python bench/concurrency.py [--n 100000] [--clients 1,2,4,8] [--k 10,100] [--seconds 10]

Over HTTP: `ciphervec serve` (file store) holds a trained index of real MiniLM sentence
embeddings (cosine, default n_probes); c client processes, each with the official SDK,
send single-vector queries back to back for a fixed time. Reported per (k, c): queries/s,
latency p50/p99, recall@k against exact search, and the server's CPU use (from /proc:
100 % = one core busy).

In-process: 1, 2 and 4 threads call the engine (no HTTP) on the same rows and queries, and
as many threads search a bare faiss IndexIVFFlat with the same lists and n_probes.

Beside it, embedded LanceDB (when installed; `make bench-deps` installs it) on the same rows
and queries, used the way VectorDBBench uses it: a table of (id, vector), c client processes
that each open the table and query it in-process — no HTTP at all. Its index is IVF_HNSW_SQ
(cosine, defaults): on these rows LanceDB's default IVF_PQ finds recall@100 0.66 (0.95 only
with refine_factor 5, at ~3x the CPU), IVF_HNSW_SQ 0.99 at the least CPU of its indexes
(measured here). Ratios ciphervec / LanceDB are printed per (k, c), and both sides' CPU per
query: ciphervec's server and its SDK clients (which share these two cores), LanceDB's
processes.

Run it with another checkout's interpreter (`/path/.venv/bin/python bench/concurrency.py`)
to measure that version: the server and the engine come from the interpreter's install.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from cyborgdb import Client

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import API_KEY, Server, cpu_seconds, faiss, free_port, minilm, p, rss_mb, save  # noqa: E402


def data(n: int, queries: int) -> tuple[np.ndarray, np.ndarray]:
    real = minilm(101_000)
    if real is None:
        raise SystemExit("needs the MiniLM embeddings (make bench-deps)")
    perm = np.random.default_rng(11).permutation(len(real))
    return real[perm[queries : queries + n]].copy(), real[perm[:queries]].copy()


def exact(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    index = faiss.IndexFlatIP(base.shape[1])
    index.add(base / np.linalg.norm(base, axis=1, keepdims=True))
    return index.search(queries / np.linalg.norm(queries, axis=1, keepdims=True), k)[1]


def _client(
    w: int, url: str, name: str, key: bytes, queries: np.ndarray, k: int, start: Any, seconds: float, out: Any
) -> None:
    index = Client(url, API_KEY).load_index(name, key)
    for q in queries[:5]:  # warm the connection
        index.query(q, top_k=k)
    start.wait()
    times, found = [], {}
    deadline = time.perf_counter() + seconds
    cpu = time.process_time()
    i = 0
    while time.perf_counter() < deadline:
        t = time.perf_counter()
        res = index.query(queries[i % len(queries)], top_k=k)
        times.append(time.perf_counter() - t)
        found.setdefault(i % len(queries), [int(r["id"]) for r in res])
        i += 1
    out.put((w, times, found, time.process_time() - cpu))


def over_http(
    srv: Server,
    name: str,
    key: bytes,
    queries: np.ndarray,
    gt: dict[int, np.ndarray],
    k: int,
    c: int,
    seconds: float,
) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(c + 1), ctx.Queue()
    shares = [np.arange(w, len(queries), c) for w in range(c)]
    procs = [
        ctx.Process(target=_client, args=(w, srv.url, name, key, queries[s], k, start, seconds, out))
        for w, s in enumerate(shares)
    ]
    for proc in procs:
        proc.start()
    start.wait()
    cpu0, t0 = cpu_seconds(srv.proc.pid), time.perf_counter()
    results = [r[1:] for r in sorted((out.get(timeout=seconds + 120) for _ in procs), key=lambda r: r[0])]
    cpu1, t1 = cpu_seconds(srv.proc.pid), time.perf_counter()
    for proc in procs:
        proc.join()
    times = [t for r, _, _ in results for t in r]
    hits = []
    for (_, found, _), share in zip(results, shares, strict=True):
        for j, ids in found.items():
            want = set(gt[k][share[j]].tolist())
            hits.append(len(set(ids[:k]) & want) / k)
    return {
        "k": k,
        "clients": c,
        "qps": len(times) / seconds,
        "p50_ms": p(times, 50) * 1e3,
        "p99_ms": p(times, 99) * 1e3,
        "recall": float(np.mean(hits)),
        "server_cpu_pct": 100 * (cpu1 - cpu0) / (t1 - t0),
        "server_cpu_ms_per_query": 1e3 * (cpu1 - cpu0) / len(times),
        "client_cpu_ms_per_query": 1e3 * sum(r[2] for r in results) / len(times),
    }


def in_process(
    base: np.ndarray, queries: np.ndarray, k: int, threads: list[int], seconds: float
) -> list[dict[str, Any]]:
    """Threads querying the engine directly vs threads querying bare faiss (same lists, n_probes)."""
    from ciphervec.engine.arrays.backend import select
    from ciphervec.engine.model import IndexConfig, RowBatch
    from ciphervec.engine.service import IndexService
    from ciphervec.infra.storage.memory import MemoryStore

    svc = IndexService(MemoryStore(), backend=select("numpy"), train_threshold=10**9)
    key = os.urandom(32)
    svc.create_index("t", "i", IndexConfig(metric="cosine"), kek=key)
    ids = [str(i) for i in range(len(base))]
    for lo in range(0, len(base), 5000):
        svc.upsert("t", "i", key, RowBatch(ids[lo : lo + 5000], base[lo : lo + 5000]))
    trained = svc.train("t", "i", key)
    n_lists, n_probes = int(trained.n_lists or 1), int(trained.n_probes or 1)
    unit = base / np.linalg.norm(base, axis=1, keepdims=True)
    quantizer = faiss.IndexFlatL2(base.shape[1])
    ivf = faiss.IndexIVFFlat(quantizer, base.shape[1], n_lists)
    ivf.train(unit)
    ivf.add(unit)
    ivf.nprobe = n_probes
    qs = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)

    def ours(q: np.ndarray) -> None:
        svc.query("t", "i", key, q[None, :], top_k=k)

    def bare(q: np.ndarray) -> None:
        ivf.search(q[None, :], k)

    def throughput(fn: Any, n: int) -> float:
        counts = [0] * n
        stop = time.perf_counter() + seconds

        def loop(w: int) -> None:
            i = w
            while time.perf_counter() < stop:
                fn(qs[i % len(qs)])
                counts[w] += 1
                i += n

        workers = [threading.Thread(target=loop, args=(w,)) for w in range(n)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        return sum(counts) / seconds

    rows = []
    for n in threads:
        rows.append(
            {"threads": n, "k": k, "ciphervec_qps": throughput(ours, n), "faiss_qps": throughput(bare, n)}
        )
    return rows


def run(
    tmp: Path,
    n: int,
    clients: list[int],
    ks: list[int],
    seconds: float,
    workers: int = 1,
    lance: bool = True,
    in_process_runs: bool = True,
) -> dict[str, Any]:
    tmp.mkdir(parents=True, exist_ok=True)
    base, queries = data(n, 1000)
    gt = {k: exact(base, queries, k) for k in ks}
    port = free_port()
    cmd = [sys.executable, "-m", "ciphervec.handlers.cli", "serve", "--port", str(port)]
    cmd += ["--store", f"file://{tmp}/conc", "--keys", f"file://{tmp}/conc-keys.json"]
    cmd += ["--train-threshold", "1000000000", "--workers", str(workers)]
    srv = Server("ciphervec-conc", cmd, {"CIPHERVEC_ROOT_KEY": API_KEY}, port, tmp)
    report: dict[str, Any] = {"n": n, "seconds": seconds, "workers": workers, "http": [], "in_process": []}
    try:
        key = Client.generate_key()
        index = Client(srv.url, API_KEY).create_index("conc", key, metric="cosine", dimension=base.shape[1])
        ids = [str(i) for i in range(len(base))]
        for lo in range(0, len(base), 1000):
            index.upsert(ids[lo : lo + 1000], base[lo : lo + 1000])
        index.train()
        while not index.is_trained():
            time.sleep(0.5)
        print(
            f"  {'k':>4} {'clients':>8} {'q/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'recall':>7} {'server CPU':>11}"
        )
        for k in ks:
            for c in clients:
                row = over_http(srv, "conc", key, queries, gt, k, c, seconds)
                report["http"].append(row)
                print(
                    f"  {k:>4} {c:>8} {row['qps']:>8.0f} {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f}"
                    f" {row['recall']:>7.3f} {row['server_cpu_pct']:>10.0f}%"
                )
        report["server_rss_mb"] = sum(rss_mb(pid) for pid in _pids(srv))
        print(f"  server RSS: {report['server_rss_mb']:,.0f} MB ({workers} process(es) serving)")
    finally:
        srv.stop()
    if lance:
        report["lancedb"] = lancedb_arm(tmp, base, queries, gt, ks, clients, seconds)
        for row in report["lancedb"] or []:
            ours = next(r for r in report["http"] if r["k"] == row["k"] and r["clients"] == row["clients"])
            print(
                f"  k {row['k']:>3} c {row['clients']}: LanceDB {row['qps']:>6.0f} q/s (p99 {row['p99_ms']:.1f} ms,"
                f" recall {row['recall']:.3f}, {row['cpu_ms_per_query']:.1f} ms CPU/query);"
                f" ciphervec {ours['qps'] / row['qps']:.2f}x its q/s, p99 {ours['p99_ms']:.1f} ms,"
                f" recall {ours['recall']:.3f}, CPU/query {ours['server_cpu_ms_per_query']:.1f} server"
                f" + {ours['client_cpu_ms_per_query']:.1f} SDK client"
            )
    if not in_process_runs:
        return report
    print("  in-process (threads, no HTTP), single-vector queries:")
    for k in ks:
        for row in in_process(base, queries, k, [1, 2, 4], min(seconds, 5.0)):
            report["in_process"].append(row)
            print(
                f"  k {k:>3}  threads {row['threads']}  ciphervec {row['ciphervec_qps']:>7.0f} q/s"
                f"  faiss IVFFlat {row['faiss_qps']:>7.0f} q/s  ({row['ciphervec_qps'] / row['faiss_qps']:.2f}x)"
            )
    for k in ks:
        one, four = (
            next(r for r in report["in_process"] if r["k"] == k and r["threads"] == t) for t in (1, 4)
        )
        report[f"in_process_4_vs_1_k{k}"] = four["ciphervec_qps"] / one["ciphervec_qps"]
    return report


def _lance_client(
    w: int, path: str, queries: np.ndarray, k: int, start: Any, seconds: float, out: Any
) -> None:
    import lancedb

    table = lancedb.connect(path).open_table("vectors")

    def search(q: np.ndarray) -> list[int]:
        rows = table.search(q).metric("cosine").select(["id", "_distance"]).limit(k).to_list()
        return [int(r["id"]) for r in rows]

    for q in queries[:5]:
        search(q)
    start.wait()
    times, found = [], {}
    deadline = time.perf_counter() + seconds
    cpu = time.process_time()
    i = 0
    while time.perf_counter() < deadline:
        t = time.perf_counter()
        ids = search(queries[i % len(queries)])
        times.append(time.perf_counter() - t)
        found.setdefault(i % len(queries), ids)
        i += 1
    out.put((w, times, found, time.process_time() - cpu))


def lancedb_arm(
    tmp: Path,
    base: np.ndarray,
    queries: np.ndarray,
    gt: dict[int, np.ndarray],
    ks: list[int],
    clients: list[int],
    seconds: float,
) -> list[dict[str, Any]] | None:
    """Embedded LanceDB on the same rows: IVF_HNSW_SQ index, c processes querying it."""
    try:
        import lancedb
        import pyarrow as pa
    except ImportError:
        print("  [skip] LanceDB: not installed (make bench-deps installs lancedb)")
        return None
    path = str(tmp / "lance")
    db = lancedb.connect(path)
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(base.ravel(), type=pa.float32()), base.shape[1])
    table = db.create_table(
        "vectors", pa.table({"id": pa.array(np.arange(len(base)), pa.int64()), "vector": vectors})
    )
    t = time.perf_counter()
    table.create_index(metric="cosine", index_type="IVF_HNSW_SQ")
    table.optimize()
    print(
        f"  LanceDB {lancedb.__version__}: IVF_HNSW_SQ index (defaults, cosine) built in {time.perf_counter() - t:.1f} s"
    )
    rows = []
    ctx = mp.get_context("spawn")
    for k in ks:
        for c in clients:
            start, out = ctx.Barrier(c + 1), ctx.Queue()
            shares = [np.arange(w, len(queries), c) for w in range(c)]
            procs = [
                ctx.Process(target=_lance_client, args=(w, path, queries[s], k, start, seconds, out))
                for w, s in enumerate(shares)
            ]
            for proc in procs:
                proc.start()
            start.wait()
            results = [
                r[1:] for r in sorted((out.get(timeout=seconds + 300) for _ in procs), key=lambda r: r[0])
            ]
            for proc in procs:
                proc.join()
            times = [t for r, _, _ in results for t in r]
            hits = [
                len(set(ids[:k]) & set(gt[k][share[j]].tolist())) / k
                for (_, found, _), share in zip(results, shares, strict=True)
                for j, ids in found.items()
            ]
            rows.append(
                {
                    "k": k,
                    "clients": c,
                    "qps": len(times) / seconds,
                    "p50_ms": p(times, 50) * 1e3,
                    "p99_ms": p(times, 99) * 1e3,
                    "recall": float(np.mean(hits)),
                    "cpu_ms_per_query": 1e3 * sum(r[2] for r in results) / len(times),
                }
            )
    return rows


def _pids(srv: Server) -> list[int]:
    pid = srv.proc.pid
    return [pid, *map(int, Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--clients", default="1,2,4,8")
    ap.add_argument("--k", default="10,100")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=1, help="ciphervec serve --workers (processes)")
    ap.add_argument("--no-lancedb", action="store_true", help="skip embedded LanceDB")
    ap.add_argument("--no-in-process", action="store_true", help="skip the in-process thread runs")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="cv-conc-"))
    print(
        f"== concurrency: {args.n:,} MiniLM rows, cosine, default n_probes, SDK clients in separate processes,"
        f" serve --workers {args.workers} =="
    )
    report = run(
        tmp,
        args.n,
        [int(c) for c in args.clients.split(",")],
        [int(k) for k in args.k.split(",")],
        args.seconds,
        args.workers,
        lance=not args.no_lancedb,
        in_process_runs=not args.no_in_process,
    )
    save(report, "concurrency")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
