"""The engine's array math, written once against the array API: it runs on numpy, on CuPy
(device arrays) and on array-api-strict alike. Each function takes its namespace from its
arguments (``namespace``); converting to and from host numpy happens only at the faiss and
crypto boundaries (``Backend.asarray`` / ``Backend.to_host``)."""

from __future__ import annotations

from typing import Any

import numpy as np
from array_api_compat import array_namespace

Array = Any  # an array of any array-API namespace


def namespace(*xs: Array) -> Any:
    """The array API namespace of ``xs``: numpy itself for host arrays (numpy >= 2.1
    implements the standard, and array-api-compat's wrappers around it cost more than the
    math on the small arrays of one query), array-api-compat's for any other library."""
    if type(xs[0]) is np.ndarray and (len(xs) == 1 or all(type(x) is np.ndarray for x in xs)):
        return np
    return array_namespace(*xs)


def all_finite(x: Array, bound: float | None = None) -> bool:
    """No NaN or infinity anywhere in ``x`` (and, with ``bound``, no magnitude above it)."""
    xp = namespace(x)
    if xp is np:  # array methods: one C call each, no Python-level reduction wrappers
        if bound is not None:
            return bool(np.abs(x).max(initial=0.0) <= bound)  # NaN compares false, infinity exceeds
        return bool(np.isfinite(x).all())
    if bound is not None:
        return bool(xp.all(xp.abs(x) <= bound))
    return bool(xp.all(xp.isfinite(x)))


def row_norms(x: Array) -> Array:
    """L2 norm of each row (in ``x``'s float dtype; no temporary the size of ``x``)."""
    xp = namespace(x)
    return xp.sqrt(xp.vecdot(x, x, axis=-1))


def normalize(x: Array) -> Array:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    xp = namespace(x)
    return x / xp.maximum(row_norms(x), 1e-30)[..., None]


def unit_norm(x: Array, tolerance: float = 1e-3, chunk: int = 65536) -> bool:
    """Every row has L2 norm 1 within ``tolerance`` (cosine rows faiss can hold as given);
    ``chunk`` rows at a time, so the squares never take a second copy of a big array."""
    xp = namespace(x)
    n = x.shape[0]
    for lo in range(0, n, chunk):
        part = x[lo : min(lo + chunk, n), ...]
        if part.dtype not in (xp.float32, xp.float64):
            part = xp.astype(part, xp.float32)
        if not bool(xp.all(xp.abs(xp.astype(row_norms(part), xp.float64) - 1.0) <= tolerance)):
            return False
    return True


def exact_distances(metric: str, q: Array, rows: Array) -> Array:
    """Distances of one query ``(d,)`` to rows ``(n, d)`` in ``metric``, float64, without the
    cancellation of ``|x|²-2xq+|q|²``: differences for L2 (a vector's distance to itself is
    exactly 0; ``euclidean`` is the root, ``squared_euclidean`` the square), ``1 - cos`` for
    cosine (a zero vector is at distance 1 from everything)."""
    xp = namespace(q, rows)
    if metric == "cosine":
        q64, r64 = xp.astype(q, xp.float64), xp.astype(rows, xp.float64)
        denom = xp.sqrt(xp.vecdot(r64, r64, axis=-1) * xp.vecdot(q64, q64, axis=-1))
        sims = xp.matmul(r64, q64) / xp.maximum(denom, 1e-300)
        return xp.where(denom == 0, 1.0, 1.0 - xp.minimum(xp.maximum(sims, -1.0), 1.0))
    diff = xp.astype(rows - q, xp.float64)
    d2 = xp.vecdot(diff, diff, axis=-1)
    return xp.sqrt(d2) if metric == "euclidean" else d2


def order_by_distance(rows: Array, dist: Array) -> tuple[Array, Array]:
    """``rows`` and ``dist`` ordered by distance, ties by row number (a stable ranking)."""
    xp = namespace(rows, dist)
    if xp is np:  # one call instead of six where the namespace has it
        order = np.lexsort((rows, dist))
        return rows[order], dist[order]
    by_row = xp.argsort(rows, stable=True)
    order = xp.take(by_row, xp.argsort(xp.take(dist, by_row), stable=True))
    return xp.take(rows, order), xp.take(dist, order)


def first_valid(dist: Array, rows: Array, valid: Array, k: int) -> tuple[Array, Array]:
    """Per query, the first ``k`` candidates (of an over-fetched, ordered ``(m, n)`` result)
    whose row is ``valid``; missing slots get row -1."""
    xp = namespace(dist, rows, valid)
    clipped = xp.reshape(xp.clip(rows, min=0), (-1,))
    keep = (rows >= 0) & xp.reshape(xp.take(valid, clipped), rows.shape)
    order = xp.argsort(xp.astype(~keep, xp.int8), axis=1, stable=True)[:, :k]
    kept = xp.take_along_axis(keep, order, axis=1)
    rows = xp.where(kept, xp.take_along_axis(rows, order, axis=1), -1)
    return xp.take_along_axis(dist, order, axis=1), rows


def inverse_permutation(perm: Array) -> Array:
    """Per row of ``perm`` (each a permutation of ``0..n-1``), where each value stands."""
    xp = namespace(perm)
    return xp.argsort(perm, axis=1)


def recall_curve(ranks: Array, usable: Array, n: int) -> Array:
    """Fraction of the ``usable`` true neighbours found within the first ``p`` probed lists,
    for ``p = 1..n``; ``ranks`` is the probe rank of each neighbour's list."""
    xp = namespace(ranks, usable)
    found = xp.sort(xp.reshape(xp.where(usable, ranks, n), (-1,)))
    within = xp.searchsorted(found, xp.arange(n, dtype=found.dtype), side="right")
    total = max(int(xp.count_nonzero(usable)), 1)
    return xp.astype(within, xp.float64) / total
