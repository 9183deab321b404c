"""Exact (flat) and IVF k-nearest-neighbour search over an ``IndexState``.

Distances: ``euclidean`` is the true L2 distance, ``squared_euclidean`` its square,
``cosine`` is ``1 - cos(q, x)``. Candidates come from faiss (flat or IVF, L2 in the
state's search space); the final top-k are re-scored exactly (difference of vectors for
L2, float64 for cosine), so a vector queried against itself gets distance 0.
"""

from __future__ import annotations

import numpy as np

from .backend import Backend, normalize
from .state import IndexState

METRICS = ("euclidean", "squared_euclidean", "cosine")


def exact_distances(metric: str, q: np.ndarray, vecs: np.ndarray) -> np.ndarray:
    """Distances of one query to a few rows, without the cancellation of ``|x|²-2xq+|q|²``:
    differences for L2 (a vector's distance to itself is exactly 0), float64 for cosine."""
    if metric == "cosine":
        q64, v64 = q.astype(np.float64), vecs.astype(np.float64)
        denom = np.sqrt(np.einsum("ij,ij->i", v64, v64) * (q64 @ q64))
        sims = (v64 @ q64) / np.maximum(denom, 1e-300)
        out = 1.0 - np.clip(sims, -1.0, 1.0)
        out[denom == 0] = 1.0
        return out
    diff = (vecs - q).astype(np.float64)
    d2 = np.einsum("ij,ij->i", diff, diff)
    return np.sqrt(d2) if metric == "euclidean" else d2


def knn(
    state: IndexState,
    queries: np.ndarray,
    top_k: int,
    metric: str,
    n_probes: int,
    row_mask: np.ndarray | None,
    backend: Backend,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Top-k ``(rows, distances)`` per query, ascending distance.

    Candidates come from the state's faiss index (flat, or IVF probing ``n_probes``
    lists) restricted to live rows and ``row_mask`` (filters); the survivors are
    re-scored exactly in the index's metric.
    """
    n = state.n_rows
    valid = state.alive[:n] if row_mask is None else (state.alive[:n] & row_mask[:n])
    ann = state.searchable(backend)
    space = normalize(queries) if metric == "cosine" else queries
    excluded = n - state.live if row_mask is None else None  # O(1) when only deletes exclude
    _, found = ann.search(space, min(top_k, n), n_probes, valid, excluded, host=state.partial is not None)
    results = []
    for q, rows in zip(queries, found, strict=True):
        rows = rows[rows >= 0]
        exact = exact_distances(metric, q, state.rows(rows))
        order = np.lexsort((rows, exact))
        results.append((rows[order], exact[order]))
    return results
