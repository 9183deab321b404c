"""k-nearest-neighbour search over an ``IndexState``: faiss candidates, exact re-scoring.

Distances: ``euclidean`` is the true L2 distance, ``squared_euclidean`` its square,
``cosine`` is ``1 - cos(q, x)``. Candidates come from faiss (flat or IVF, L2 in the
state's search space); the final top-k are re-scored exactly (``kernels.exact_distances``)
so a vector queried against itself gets distance 0. Queries are arrays of the backend's
namespace; faiss sees host arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .backend import Backend
from .kernels import exact_distances, normalize, order_by_distance
from .state import IndexState


def search_space(metric: str, x: Any) -> Any:
    """Vectors → the space faiss searches, where L2 ranks like ``metric``."""
    return normalize(x) if metric == "cosine" else x


def knn(
    state: IndexState,
    queries: Any,
    top_k: int,
    metric: str,
    n_probes: int,
    row_mask: np.ndarray | None,
    backend: Backend,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Top-k ``(rows, distances)`` per query (host arrays), ascending distance.

    Candidates come from the state's faiss index (flat, or IVF probing ``n_probes``
    lists) restricted to live rows and ``row_mask`` (filters); the survivors are
    re-scored exactly in the index's metric.
    """
    n = state.n_rows
    valid = state.alive[:n] if row_mask is None else (state.alive[:n] & row_mask[:n])
    ann = state.searchable(backend)
    space = backend.to_host(search_space(metric, queries))
    excluded = n - state.live if row_mask is None else None  # O(1) when only deletes exclude
    _, found = ann.search(space, min(top_k, n), n_probes, valid, excluded, host=state.partial is not None)
    results = []
    for i, rows in enumerate(found):
        rows = rows[rows >= 0]
        exact = exact_distances(metric, queries[i, ...], backend.asarray(state.rows(rows)))
        ranked, dist = order_by_distance(backend.asarray(rows), exact)
        results.append((backend.to_host(ranked), backend.to_host(dist)))
    return results
