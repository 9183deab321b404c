"""Mixed load on one index (the hardening issue's measure of the HTTP server):

    .venv/bin/python bench/mixed.py [--clients 64] [--seconds 20] [--n 20000]

`ciphervec serve` (file store) holds n real MiniLM embeddings (cosine); `clients` keep-alive
HTTP clients (threads spread over 4 processes, on the same box) send, back to back, 80 %
single-vector queries (top_k 10) and 20 % upserts of 10 vectors. Reported: queries/s and
upserts/s, p50/p99 latency of each, errors, and the server's CPU. Run it with another
checkout's interpreter to measure that version's server.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import multiprocessing as mp
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import API_KEY, Server, free_port, minilm, p, save  # noqa: E402

KEY = bytes(range(32)).hex()
TICKS = os.sysconf("SC_CLK_TCK")
PROCESSES = 4


def _call(conn: http.client.HTTPConnection, path: str, body: dict[str, Any]) -> int:
    conn.request("POST", path, json.dumps(body), {"X-API-Key": API_KEY, "Content-Type": "application/json"})
    resp = conn.getresponse()
    resp.read()
    return resp.status


def _client(
    port: int, vectors: np.ndarray, seconds: float, seed: int, out: list[tuple[str, float, int]]
) -> None:
    rng = random.Random(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    deadline = time.time() + seconds
    n = 0
    while time.time() < deadline:
        if rng.random() < 0.8:
            q = vectors[rng.randrange(len(vectors))]
            body = {"index_name": "mixed", "index_key": KEY, "query_vectors": q.tolist(), "top_k": 10}
            kind, path = "query", "/v1/vectors/query"
        else:
            rows = vectors[[rng.randrange(len(vectors)) for _ in range(10)]]
            ids = [f"w{seed}-{n}-{i}" for i in range(10)]
            n += 1
            batch = {"ids": ids, "vectors_b64": base64.b64encode(rows.tobytes()).decode(), "dimension": 384}
            body = {"index_name": "mixed", "index_key": KEY, "batch": batch}
            kind, path = "upsert", "/v1/vectors/upsert_binary"
        t = time.perf_counter()
        try:
            status = _call(conn, path, body)
        except (OSError, http.client.HTTPException):
            status = 599
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        out.append((kind, time.perf_counter() - t, status))


def _process(
    port: int, vectors: np.ndarray, seconds: float, threads: int, base_seed: int, queue: Any
) -> None:
    out: list[tuple[str, float, int]] = []
    workers = [
        threading.Thread(target=_client, args=(port, vectors, seconds, base_seed + i, out))
        for i in range(threads)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    queue.put(out)


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().split()
    return (int(fields[13]) + int(fields[14])) / TICKS


def run(tmp: Path, clients: int, seconds: float, n: int) -> dict[str, Any]:
    data = minilm(101_000)
    if data is None:
        raise SystemExit("needs the MiniLM embeddings (make bench-deps)")
    base = np.ascontiguousarray(data[:n], dtype=np.float32)
    port = free_port()
    cmd = [sys.executable, "-m", "ciphervec.handlers.cli", "serve", "--port", str(port)]
    cmd += ["--store", f"file://{tmp}/data", "--keys", f"file://{tmp}/keys.json"]
    server = Server("mixed", cmd, {"CIPHERVEC_ROOT_KEY": API_KEY}, port, tmp)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        create = {"index_name": "mixed", "index_key": KEY, "dimension": 384, "metric": "cosine"}
        assert _call(conn, "/v1/indexes/create", create) == 200
        for lo in range(0, n, 2000):
            rows = base[lo : lo + 2000]
            ids = [str(i) for i in range(lo, lo + len(rows))]
            batch = {"ids": ids, "vectors_b64": base64.b64encode(rows.tobytes()).decode(), "dimension": 384}
            assert (
                _call(
                    conn,
                    "/v1/vectors/upsert_binary",
                    {"index_name": "mixed", "index_key": KEY, "batch": batch},
                )
                == 200
            )
        queue: Any = mp.get_context("fork").Queue()
        per = max(1, clients // PROCESSES)
        cpu0, t0 = _cpu(server.proc.pid), time.time()
        procs = [
            mp.get_context("fork").Process(target=_process, args=(port, base, seconds, per, 1000 * i, queue))
            for i in range(PROCESSES)
        ]
        for proc in procs:
            proc.start()
        results = [r for _ in procs for r in queue.get()]
        for proc in procs:
            proc.join()
        wall, cpu = time.time() - t0, _cpu(server.proc.pid) - cpu0
    finally:
        server.stop()
    out: dict[str, Any] = {
        "clients": per * PROCESSES,
        "seconds": seconds,
        "n": n,
        "server_cpu_pct": round(100 * cpu / wall),
    }
    for kind in ("query", "upsert"):
        lat = [d for k, d, s in results if k == kind and s == 200]
        out[kind] = {
            "per_second": round(len(lat) / seconds, 1),
            "p50_ms": round(p(lat, 50) * 1e3, 1) if lat else None,
            "p99_ms": round(p(lat, 99) * 1e3, 1) if lat else None,
        }
    out["errors"] = sum(1 for _, _, s in results if s != 200)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--n", type=int, default=20_000)
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="cv-mixed-"))
    r = run(tmp, args.clients, args.seconds, args.n)
    q, u = r["query"], r["upsert"]
    print(
        f"mixed load, {r['clients']} clients, {r['n']:,} × 384 index, {args.seconds:g} s: "
        f"queries {q['per_second']}/s (p50 {q['p50_ms']} / p99 {q['p99_ms']} ms), "
        f"upserts {u['per_second']}/s (p50 {u['p50_ms']} / p99 {u['p99_ms']} ms), "
        f"errors {r['errors']}, server CPU {r['server_cpu_pct']} %"
    )
    save({"date": time.strftime("%Y-%m-%d %H:%M:%S"), "python": sys.executable, "mixed": r}, "mixed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
