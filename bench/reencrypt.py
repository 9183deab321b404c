"""Key rotation and re-encryption (part of `make bench`, or on its own):

    .venv/bin/python bench/reencrypt.py [--n 100000] [--queries 300]

Real 384-d MiniLM sentence embeddings, cosine, on a file store: a trained index (a run of
IVF lists and centroids) plus a write-ahead tail of 20 segments. Measured in-process:

* ``rotate_key`` without reencrypt (the data key re-wrapped: one head commit), median of 5;
* ``rotate_key`` with reencrypt: the commit that switches the data key, then the rewrite
  of every object under the new one (seconds, objects, MB/s);
* query p50 before, during the rewrite (another warm container: a second service over the
  same store, querying throughout; after the rewrite's commit it reloads the renamed
  objects, lazily) and after it (this container, and a cold one's first query);
* for scale, the floor of the same work without ciphervec: AES-256-GCM opening and sealing
  the same bytes (``cryptography``, one thread) and copying the files (``shutil``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import minilm, p, save  # noqa: E402

KEKS = [bytes([i]) * 32 for i in range(1, 12)]


def service(root: Path) -> Any:
    from ciphervec.engine.arrays.backend import select
    from ciphervec.engine.service import IndexService
    from ciphervec.infra.kms import LocalKeyWrapper
    from ciphervec.infra.storage.file import FileStore

    return IndexService(
        FileStore(root / "data"),
        LocalKeyWrapper(root / "kms"),
        backend=select("auto"),
        retire_grace_seconds=0,
    )


def query_p50(svc: Any, kek: bytes, queries: np.ndarray) -> float:
    times = []
    for q in queries:
        t = time.perf_counter()
        svc.query("t", "i", kek, q[None, :], top_k=10)
        times.append(time.perf_counter() - t)
    return p(times, 50) * 1e3


def floor(root: Path) -> dict[str, float]:
    """AES-256-GCM open + seal of every object's bytes, and a plain copy of the files."""
    files = [f for f in (root / "data").rglob("*") if f.is_file() and ".tmp" not in f.name]
    blobs = [f.read_bytes() for f in files]
    total = sum(len(b) for b in blobs)
    old, new = AESGCM(os.urandom(32)), AESGCM(os.urandom(32))
    sealed = [old.encrypt(b"\0" * 12, b, None) for b in blobs]
    t = time.perf_counter()
    for s in sealed:
        new.encrypt(b"\1" * 12, old.decrypt(b"\0" * 12, s, None), None)
    crypto = time.perf_counter() - t
    copy_to = root / "copy"
    t = time.perf_counter()
    shutil.copytree(root / "data", copy_to)
    copy = time.perf_counter() - t
    shutil.rmtree(copy_to)
    return {"mb": total / 1e6, "aes_gcm_s": crypto, "copy_s": copy}


def run(tmp: Path, n: int, n_queries: int) -> dict[str, Any]:
    from ciphervec.engine.model import IndexConfig, RowBatch

    data = minilm(101_000)  # the cached set the other runs use
    if data is None:
        return {}
    n = min(n, len(data) - n_queries)
    base, queries = data[:n], data[n : n + n_queries]
    svc = service(tmp)
    kek = KEKS[0]
    svc.create_index("t", "i", IndexConfig(dimension=base.shape[1], metric="cosine"), kek=kek)
    tail = 20 * 500
    head_rows = n - tail
    for lo in range(0, head_rows, 10_000):
        hi = min(lo + 10_000, head_rows)
        svc.upsert("t", "i", kek, RowBatch([str(i) for i in range(lo, hi)], base[lo:hi]))
    svc.train("t", "i", kek)
    for lo in range(head_rows, n, 500):
        svc.upsert("t", "i", kek, RowBatch([str(i) for i in range(lo, lo + 500)], base[lo : lo + 500]))
    svc.sweep("t", "i", kek)  # what training replaced: the store holds the live objects only
    before = query_p50(svc, kek, queries)
    ground = floor(tmp)

    rewrap = []
    for new in KEKS[1:6]:
        t = time.perf_counter()
        svc.rotate_key("t", "i", kek, new, None)
        rewrap.append(time.perf_counter() - t)
        kek = new

    new = KEKS[6]
    t = time.perf_counter()
    svc.rotate_key("t", "i", kek, new, None, reencrypt=True)
    commit = time.perf_counter() - t
    kek = new
    stale = svc.describe("t", "i", kek)["key_rotation"]["objects_under_old_keys"]
    other = service(tmp)  # another container over the same store
    other.num_vectors("t", "i", kek)  # warm: every list loaded
    query_p50(other, kek, queries[:20])
    during: list[float] = []
    stop = threading.Event()

    def reader() -> None:
        i = 0
        while not stop.is_set():
            t = time.perf_counter()
            other.query("t", "i", kek, queries[i % len(queries)][None, :], top_k=10)
            during.append(time.perf_counter() - t)
            i += 1

    thread = threading.Thread(target=reader)
    thread.start()
    t = time.perf_counter()
    rewritten = svc.rewrite("t", "i", kek)
    seconds = time.perf_counter() - t
    stop.set()
    thread.join()
    after = query_p50(svc, kek, queries)
    t = time.perf_counter()
    cold = service(tmp)
    cold.query("t", "i", kek, queries[0][None, :], top_k=10)
    cold_first = time.perf_counter() - t
    cold.num_vectors("t", "i", kek)  # its background fill ends before the files go
    thread_fill = cold.cache.filler(("t", "i"))
    if thread_fill is not None:
        thread_fill.join()
    out = {
        "rows": n,
        "rewrap_commit_ms": p(rewrap, 50) * 1e3,
        "reencrypt_commit_ms": commit * 1e3,
        "objects_under_old_key": stale,
        "objects_rewritten": rewritten,
        "rewrite_s": seconds,
        "store_mb": ground["mb"],
        "rewrite_mb_per_s": ground["mb"] / seconds,
        "floor_aes_gcm_s": ground["aes_gcm_s"],
        "floor_copy_s": ground["copy_s"],
        "query_p50_ms_before": before,
        "query_p50_ms_during_other_container": p(during, 50) * 1e3 if during else None,
        "queries_during": len(during),
        "query_p50_ms_after": after,
        "cold_first_query_ms_after": cold_first * 1e3,
    }
    print(f"  rows {n:,}, store {ground['mb']:.0f} MB, {stale} live objects under the old data key")
    print(f"  rotate (re-wrap, one commit)       {out['rewrap_commit_ms']:8.1f} ms  (median of 5)")
    print(f"  rotate (reencrypt: new data key)   {out['reencrypt_commit_ms']:8.1f} ms")
    print(
        f"  rewrite of every object            {seconds:8.2f} s   {out['rewrite_mb_per_s']:.0f} MB/s "
        f"(floor: AES-GCM {ground['aes_gcm_s']:.2f} s + copy {ground['copy_s']:.2f} s)"
    )
    during_p50 = out["query_p50_ms_during_other_container"]
    print(
        f"  query p50 before / during (other container, {len(during)} queries) / after: "
        f"{before:.2f} / {during_p50 if during_p50 is None else round(during_p50, 2)} / {after:.2f} ms"
    )
    print(f"  cold container's first query after: {out['cold_first_query_ms_after']:.0f} ms")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=300)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = run(Path(tmp), args.n, args.queries)
    print(save({"reencrypt": report}, "reencrypt"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
