"""How much recall@10 an index's codes allow, apart from which lists a query probes: each
held-out query's exact 100 nearest rows of the 10M run's data (``scale10m_data.py``),
re-ranked by the values each representation gives them. A list-probing search cannot do
better than this re-ranking, so the gap to 1.0 is the codes' share of a recall shortfall.

    .venv/bin/python bench/codes_ceiling.py --n 10000000 [--work DIR]

Representations: TurboQuant tq8/tq6/tq4 as stored (decoded); what a trained tq index holds
in memory (the decoded rows again as faiss scalar-quantizer codes within the ranges fitted
at training, read from the trained store under ``WORK/store``, or fitted here from every
row when the store has none); faiss's 8-bit codes of the float32 rows within the same
ranges; float16. Also the median gap in cosine similarity between the 10th and 11th
neighbours, against which the codes' error can be compared.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import faiss  # noqa: E402
from scale10m_data import Data  # noqa: E402

DEPTH = 100  # exact neighbours re-ranked per query
K = 10


def exact_top(data: Data, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every query's exact ``DEPTH`` nearest rows (cosine): rows, similarities, and the
    per-dimension minimum and maximum of all rows (the fit of a min-max quantizer)."""
    import pyarrow.parquet as pq

    f = pq.ParquetFile(data.parquet)
    best_s = np.full((len(queries), DEPTH), -np.inf, dtype=np.float32)
    best_i = np.full((len(queries), DEPTH), -1, dtype=np.int64)
    low = high = None
    base, t0 = 0, time.perf_counter()
    for g in range(f.metadata.num_row_groups):
        x = f.read_row_group(g, columns=["vector"]).column(0).combine_chunks().values.to_numpy()
        x = x.reshape(-1, queries.shape[1])
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        low = x.min(0) if low is None else np.minimum(low, x.min(0))
        high = x.max(0) if high is None else np.maximum(high, x.max(0))
        s, i = faiss.knn(queries, x, DEPTH, metric=faiss.METRIC_INNER_PRODUCT)
        all_s, all_i = np.hstack([best_s, s]), np.hstack([best_i, i + base])
        top = np.argsort(-all_s, axis=1, kind="stable")[:, :DEPTH]
        best_s, best_i = np.take_along_axis(all_s, top, 1), np.take_along_axis(all_i, top, 1)
        base += len(x)
        print(f"    exact: {base:>12,} rows  {time.perf_counter() - t0:6.0f} s", flush=True)
    assert low is not None and high is not None
    return best_i, best_s, np.stack([low, high])


def rows_of(data: Data, wanted: np.ndarray, dim: int) -> np.ndarray:
    """The unit-length rows numbered ``wanted`` (sorted, unique), read group by group."""
    import pyarrow.parquet as pq

    f = pq.ParquetFile(data.parquet)
    out = np.empty((len(wanted), dim), dtype=np.float32)
    base = 0
    for g in range(f.metadata.num_row_groups):
        n = f.metadata.row_group(g).num_rows
        lo, hi = np.searchsorted(wanted, [base, base + n])
        if hi > lo:
            x = f.read_row_group(g, columns=["vector"]).column(0).combine_chunks().values.to_numpy()
            out[lo:hi] = x.reshape(-1, dim)[wanted[lo:hi] - base]
        base += n
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def stored_ranges(store: Path) -> np.ndarray | None:
    """The tq8 quantizer ranges a trained store under ``store`` keeps beside its centroids."""
    if not (store / "default" / "big" / "head").exists():
        return None
    from ciphervec.infra.settings import Settings
    from ciphervec.infra.wiring import configure

    c = configure(Settings.from_env(store_uri=f"file://{store}"))
    head = c.service.heads.open("default", "big", bytes(range(32)))
    if head.body.centroids is None or head.precision != "tq8":
        return None
    return c.service.heads.read_centroids(head, head.body.centroids).ranges


def sq8(ranges: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``x`` through faiss's 8-bit scalar quantizer with fitted ``(vmin, vdiff)`` ranges."""
    sq = faiss.ScalarQuantizer(x.shape[1], faiss.ScalarQuantizer.QT_8bit)
    sq.train(np.ascontiguousarray(x[:2]))  # sizes the trained vector; replaced below
    faiss.copy_array_to_vector(np.ascontiguousarray(ranges, dtype=np.float32).ravel(), sq.trained)
    return sq.decode(sq.compute_codes(np.ascontiguousarray(x, dtype=np.float32)))


def main() -> None:
    from ciphervec.engine.arrays import turboquant as tq
    from ciphervec.engine.arrays.ann import sq_ranges

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10_000_000, help="rows of the scale10m data (default 10M)")
    ap.add_argument(
        "--work",
        type=Path,
        help="the tq8 scale10m run's work dir (default: its own default) for the trained ranges",
    )
    args = ap.parse_args()
    data = Data.of(args.n, 1000)
    if not data.complete():
        raise SystemExit(f"no data for {args.n:,} rows: run bench/scale10m.py --stages data first")
    queries, _ = data.held_out()
    queries = np.ascontiguousarray(queries / np.linalg.norm(queries, axis=1, keepdims=True), dtype=np.float32)
    top, sims, extremes = exact_top(data, queries)
    wanted = np.unique(top)
    rows = rows_of(data, wanted, queries.shape[1])
    at = np.searchsorted(wanted, top)
    ranges = stored_ranges((args.work or data.dir / "work-tq8") / "store")
    source = "the trained store's" if ranges is not None else "fitted here to every row"
    if ranges is None:
        ranges = sq_ranges(extremes, 8)

    def ceiling(values: np.ndarray) -> float:
        hits = 0
        for q in range(len(queries)):
            dist = ((values[at[q]] - queries[q]) ** 2).sum(1)
            hits += len(set(top[q, np.argsort(dist, kind="stable")[:K]]) & set(top[q, :K]))
        return hits / (K * len(queries))

    gap = float(np.median(sims[:, K - 1] - sims[:, K]))
    print(f"\n  {args.n:,} rows, {len(queries)} held-out queries; 10th-11th similarity gap, median {gap:.5f}")
    print(f"  recall@10 of re-ranking each query's exact {DEPTH} by ... (ranges: {source})")
    results = {"float32": ceiling(rows), "float16": ceiling(rows.astype(np.float16).astype(np.float32))}
    for bits in (8, 6, 4):
        decoded = tq.decode(tq.encode(rows, bits), len(rows), rows.shape[1], bits)
        results[f"tq{bits} as stored"] = ceiling(decoded)
        if bits == 8:
            results["tq8 as a trained index holds it"] = ceiling(sq8(ranges, decoded))
    results["faiss SQ8 of the float32 rows"] = ceiling(sq8(ranges, rows))
    for name, value in results.items():
        print(f"    {name:36s} {value:.4f}")


if __name__ == "__main__":
    main()
