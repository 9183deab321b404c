"""k-nearest-neighbour search over a ``state.Snapshot``: faiss candidates, exact re-scoring.

Distances: ``euclidean`` is the true L2 distance, ``squared_euclidean`` its square,
``cosine`` is ``1 - cos(q, x)``. Candidates come from faiss (flat or IVF, L2 in the
state's search space); the final top-k are re-scored exactly (``kernels.exact_distances``)
so a vector queried against itself gets distance 0. Queries are arrays of the backend's
namespace; faiss sees host arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..arrays.backend import Backend
from ..arrays.kernels import exact_distances, normalize, order_by_distance
from .state import Snapshot


def search_space(metric: str, x: Any) -> Any:
    """Vectors → the space faiss searches, where L2 ranks like ``metric``."""
    return normalize(x) if metric == "cosine" else x


def knn(
    snap: Snapshot,
    queries: Any,
    top_k: int,
    n_probes: int,
    row_mask: np.ndarray | None,
    backend: Backend,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Top-k ``(rows, distances)`` per query (host arrays), ascending distance.

    Each part of the snapshot gives its candidates from faiss (flat, or IVF probing
    ``n_probes`` lists) restricted to live rows and ``row_mask`` (filters); the union of
    candidates is re-scored exactly in the index's metric and the best ``top_k`` kept.
    """
    parts = snap.parts
    valid = snap.alive if row_mask is None else (snap.alive & row_mask[: snap.n_rows])
    space = np.ascontiguousarray(backend.to_host(search_space(snap.metric, queries)), dtype=np.float32)
    dead = snap.dead_per_part() if row_mask is None else [None] * len(parts)
    host = snap.partial is not None
    # Several IVF parts share one coarse quantizer: the queries' nearest lists are found
    # once, not once per part (at 4,096 lists, a third of a part's work per query).
    ivf = sum(p.ann.ivf for p in parts if p.n)
    assigned = snap.quantizer.search(space, n_probes) if ivf > 1 and snap.quantizer is not None else None
    found = []
    for part, excluded in zip(parts, dead, strict=True):
        k = min(top_k, part.n)
        if k == 0 or excluded == part.n:
            continue
        valid_here = valid[part.start : part.end]
        _, rows = part.ann.search(space, k, n_probes, valid_here, excluded, host=host, assigned=assigned)
        found.append(np.where(rows >= 0, rows + part.start, -1) if part.start else rows)
    results = []
    for i in range(len(space)):
        if not found:
            rows = np.empty(0, dtype=np.int64)
        else:
            rows = found[0][i] if len(found) == 1 else np.concatenate([f[i] for f in found])
        rows = rows[rows >= 0]
        exact = exact_distances(snap.metric, queries[i, ...], backend.asarray(snap.rows(rows)))
        ranked, dist = order_by_distance(backend.asarray(rows), exact)
        results.append((backend.to_host(ranked)[:top_k], backend.to_host(dist)[:top_k]))
    return results
