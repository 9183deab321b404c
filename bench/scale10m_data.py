"""The data of the 10M-row scale run (``scale10m.py``): N rows of 384-d float32 made as
scale.py makes them, a chunk at a time, in one Parquet file, with 1,000 held-out real
queries and their exact top-10, cached in bench/.cache/scale10m-<N>/ (see scale10m.py)."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, K, minilm  # noqa: E402

DIM = 384
CHUNK = 262_144  # rows per generated chunk and per Parquet row group
SEED = 7  # scale.vectors' seed: the same held-out split of the real embeddings
RECIPE = 1  # bump when the data recipe changes: cached data dirs are then made again
INDEX, TENANT = "big", "default"  # the run's index, in the store WORK/store
KEK = bytes(range(32))  # its fixed index key


@dataclass(frozen=True)
class Data:
    """The cached rows, held-out queries and exact truth for ``n`` rows."""

    dir: Path
    n: int
    queries: int

    @classmethod
    def of(cls, n: int, queries: int) -> Data:
        name = f"scale10m-{n}" + ("" if queries == 1000 else f"-q{queries}")
        return cls(CACHE / name, n, queries)

    @property
    def parquet(self) -> Path:
        return self.dir / "rows.parquet"

    def meta(self) -> dict[str, Any]:
        return {"n": self.n, "queries": self.queries, "dim": DIM, "chunk": CHUNK, "recipe": RECIPE}

    def complete(self) -> bool:
        path = self.dir / "meta.json"
        if not path.exists() or not self.parquet.exists():
            return False
        got = json.loads(path.read_text())
        return all(got.get(k) == v for k, v in self.meta().items())

    def held_out(self) -> tuple[np.ndarray, np.ndarray]:
        """The held-out queries and their exact top-10 row numbers."""
        return np.load(self.dir / "queries.npy"), np.load(self.dir / "truth.npy")


def pool_and_queries(queries: int) -> tuple[np.ndarray, np.ndarray]:
    """The real embeddings split as scale.vectors splits them: (pool, held-out queries)."""
    real = minilm(101_000)
    if real is None:
        raise SystemExit("needs the MiniLM embeddings (make bench-deps)")
    perm = np.random.default_rng(SEED).permutation(len(real))
    return real[perm[queries:]], real[perm[:queries]]


def blends(pool: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """``m`` normalised blends w·a + (1-w)·b of two random pool rows, w in [0.55, 0.95]."""
    a, b = rng.integers(0, len(pool), m), rng.integers(0, len(pool), m)
    w = rng.uniform(0.55, 0.95, (m, 1)).astype(np.float32)
    x = pool[a]
    x *= w
    x += (1 - w) * pool[b]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def chunk_rows(pool: np.ndarray, c: int, n: int) -> np.ndarray:
    """Rows ``c*CHUNK`` up to ``n`` (at most CHUNK of them): the pool first, then blends from
    chunk ``c``'s own generator, so any chunk can be made again on its own."""
    lo, hi = c * CHUNK, min(n, (c + 1) * CHUNK)
    out = np.empty((hi - lo, DIM), dtype=np.float32)
    start = min(max(lo, len(pool)), hi)  # first blended row
    out[: start - lo] = pool[lo:start]
    if hi > start:
        out[start - lo :] = blends(pool, hi - start, np.random.default_rng([SEED, c]))
    return out


def make_data(data: Data) -> dict[str, Any]:
    """Generate the rows chunk by chunk into one Parquet file, with the exact top-10 of every
    held-out query merged chunk by chunk."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from common import faiss

    if data.complete():
        mb = data.parquet.stat().st_size / 2**20
        print(f"  data: cached in {data.dir} ({data.n:,} rows, Parquet {mb:,.0f} MB)")
        return {"cached": True, "dir": str(data.dir), "parquet_mb": mb}
    data.dir.mkdir(parents=True, exist_ok=True)
    (data.dir / "meta.json").unlink(missing_ok=True)
    pool, held = pool_and_queries(data.queries)
    qn = np.ascontiguousarray(held / np.linalg.norm(held, axis=1, keepdims=True), dtype=np.float32)
    best_d = np.full((len(qn), K), -np.inf, dtype=np.float32)
    best_i = np.full((len(qn), K), -1, dtype=np.int64)
    schema = pa.schema([("id", pa.string()), ("vector", pa.list_(pa.float32(), DIM))])
    tmp = data.dir / "rows.parquet.partial"
    chunks = -(-data.n // CHUNK)
    t0 = time.perf_counter()
    truth_s = 0.0
    with pq.ParquetWriter(tmp, schema, compression="snappy") as writer:
        for c in range(chunks):
            x = chunk_rows(pool, c, data.n)
            lo = c * CHUNK
            ids = pa.array([str(i) for i in range(lo, lo + len(x))], type=pa.string())
            vecs = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), DIM)
            writer.write_table(pa.table({"id": ids, "vector": vecs}, schema=schema), row_group_size=CHUNK)
            t = time.perf_counter()
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            d, i = faiss.knn(qn, x, K, metric=faiss.METRIC_INNER_PRODUCT)
            all_d, all_i = np.hstack([best_d, d]), np.hstack([best_i, i + lo])
            top = np.argsort(-all_d, axis=1, kind="stable")[:, :K]
            best_d, best_i = np.take_along_axis(all_d, top, 1), np.take_along_axis(all_i, top, 1)
            truth_s += time.perf_counter() - t
            del x, ids, vecs
            if (c + 1) % 8 == 0 and c + 1 < chunks:
                done = min(data.n, (c + 1) * CHUNK)
                print(f"    {done:>12,} rows  {time.perf_counter() - t0:7.0f} s", flush=True)
    tmp.replace(data.parquet)
    np.save(data.dir / "queries.npy", held)
    np.save(data.dir / "truth.npy", best_i)
    (data.dir / "meta.json").write_text(json.dumps(data.meta()))  # last: the data is complete
    seconds = time.perf_counter() - t0
    mb = data.parquet.stat().st_size / 2**20
    real = min(data.n, len(pool))
    print(
        f"  data: {data.n:,} rows ({real:,} real + {data.n - real:,} blends) in {seconds:.0f} s"
        f" (exact truth {truth_s:.0f} s of it), Parquet {mb:,.0f} MB in {data.dir}"
    )
    return {"cached": False, "dir": str(data.dir), "seconds": seconds, "truth_s": truth_s, "parquet_mb": mb}


def hwm_mb(pid: int | str = "self") -> float:
    """A process's peak RSS so far (VmHWM), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")
