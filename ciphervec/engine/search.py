"""Exact (flat) and IVF k-nearest-neighbour search over an ``IndexState``.

Distances: ``euclidean`` is the true L2 distance, ``squared_euclidean`` its square,
``cosine`` is ``1 - cos(q, x)``. Candidates are scored with one matrix product per
query chunk; the final top-k are re-scored exactly (difference of vectors), so a
vector queried against itself gets distance 0.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .state import IndexState

METRICS = ("euclidean", "squared_euclidean", "cosine")
_CHUNK_CELLS = 1 << 24  # query-chunk × rows scored at once (64 MB of float32)


def normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-30)


def scores(metric: str, q: np.ndarray, qsq: np.ndarray, vecs: np.ndarray, sqn: np.ndarray) -> np.ndarray:
    """Approximate distances ``(len(q), len(vecs))`` used for ranking."""
    dots = q @ vecs.T
    if metric == "cosine":
        denom = np.sqrt(qsq)[:, None] * np.sqrt(sqn)[None, :]
        return 1.0 - dots / np.maximum(denom, 1e-30)
    return qsq[:, None] - 2.0 * dots + sqn[None, :]


def exact_distances(metric: str, q: np.ndarray, vecs: np.ndarray) -> np.ndarray:
    """Distances of one query to a few rows, computed without cancellation."""
    q64 = q.astype(np.float64)
    v64 = vecs.astype(np.float64)
    if metric == "cosine":
        denom = np.linalg.norm(v64, axis=1) * np.linalg.norm(q64)
        sims = (v64 @ q64) / np.maximum(denom, 1e-300)
        out = 1.0 - np.clip(sims, -1.0, 1.0)
        out[denom == 0] = 1.0
        return out
    diff = v64 - q64
    d2 = np.einsum("ij,ij->i", diff, diff)
    return np.sqrt(d2) if metric == "euclidean" else d2


def _top(dist: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Rows of the ``k`` smallest finite distances (unordered)."""
    finite = np.isfinite(dist)
    if not finite.all():
        dist, rows = dist[finite], rows[finite]
    if len(rows) > k:
        part = np.argpartition(dist, k - 1)[:k]
        rows = rows[part]
    return rows


def knn(
    state: IndexState,
    queries: np.ndarray,
    top_k: int,
    metric: str,
    n_probes: int,
    row_mask: np.ndarray | None = None,
    probe: Callable[[np.ndarray, int], np.ndarray] | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Top-k ``(rows, distances)`` per query, ascending distance.

    ``row_mask`` (bool over all rows) restricts candidates (filters). ``probe`` maps
    queries to the lists to visit; IVF is used when the state has centroids.
    """
    n = state.n_rows
    qsq = np.einsum("ij,ij->i", queries, queries)
    valid = state.alive[:n] if row_mask is None else (state.alive[:n] & row_mask[:n])
    ranked: list[np.ndarray] = []
    if state.centroids is None or probe is None:
        rows_all = np.arange(n)
        step = max(1, _CHUNK_CELLS // max(n, 1))
        for lo in range(0, len(queries), step):
            q = queries[lo : lo + step]
            dist = scores(metric, q, qsq[lo : lo + step], state.vectors[:n], state.sqnorms[:n])
            dist[:, ~valid] = np.inf
            ranked.extend(_top(d, rows_all, top_k) for d in dist)
    else:
        rows_by_list, offsets = state.list_rows()
        probes = probe(queries, n_probes)
        for i, q in enumerate(queries):
            cand = np.concatenate([rows_by_list[offsets[lst] : offsets[lst + 1]] for lst in probes[i]])
            if row_mask is not None:
                cand = cand[row_mask[cand]]
            dist = scores(metric, q[None, :], qsq[i : i + 1], state.vectors[cand], state.sqnorms[cand])[0]
            ranked.append(_top(dist, cand, top_k))
    results = []
    for q, rows in zip(queries, ranked, strict=True):
        exact = exact_distances(metric, q, state.vectors[rows])
        order = np.lexsort((rows, exact))
        results.append((rows[order], exact[order]))
    return results
