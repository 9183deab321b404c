"""IVF training: list count, k-means centroids, and the measured choice of ``n_probes``."""

from __future__ import annotations

import math

import numpy as np

from .backend import Backend
from .kernels import inverse_permutation, normalize, recall_curve

MAX_LISTS = 65536
# Aim above the promised recall@10 of 0.95: the estimate comes from 200 queries (about
# ±0.005), and real queries may come from a slightly different distribution than the rows.
RECALL_AIM = 0.98
# Rows kept out of the k-means sample and used as the calibration queries (at most this many,
# and a tenth of a small index): queries the centroids were not fitted on, as real ones are.
# Calibrating on rows the centroids were fitted on overestimated recall exactly where every
# row is in the sample (20,000 rows, 128 lists: 0.98 estimated, 0.93 measured).
CALIBRATION_QUERIES = 200
# Queries asking for more than 10 neighbours probe as many lists as recall@100 needs: the
# lists that hold a query's 10 nearest rows hold fewer of its 100 nearest (at 50,000 MiniLM
# rows the recall@10 setting gave recall@100 0.950). Aimed lower than recall@10's: the
# promise is 0.95, and each further point of recall@100 costs many probes.
RECALL_AIM_100 = 0.965
AIMS = {10: RECALL_AIM, 100: RECALL_AIM_100}
MAX_TRAINING_SAMPLE_PER_LIST = 256
# ... and at most this many in all: k-means costs rows x lists per iteration, so past 1,024
# lists (a million rows) each list gets fewer, down to 64 at 4,096 (faiss warns below 39).
MAX_TRAINING_SAMPLE = 1 << 18
# k-means for IVF lists settles within ~20 iterations (faiss uses 25); more only costs time.
# An explicit max_iters from the client is honoured as given.
DEFAULT_ITERATIONS = 25


def auto_n_lists(count: int) -> int:
    """√count rounded to a power of two, capped at 65,536 (API.md §6)."""
    if count < 1:
        return 1
    return int(min(MAX_LISTS, 2 ** round(math.log2(math.sqrt(count)))))


def sample_limit(n_lists: int) -> int:
    """Rows k-means trains ``n_lists`` centroids on, at most."""
    return min(n_lists * MAX_TRAINING_SAMPLE_PER_LIST, max(MAX_TRAINING_SAMPLE, 39 * n_lists))


def held_out(n: int, seed: int = 4321) -> np.ndarray:
    """Row numbers (sorted) kept out of the k-means sample to calibrate ``n_probes`` on."""
    count = min(CALIBRATION_QUERIES, n // 10)
    if count < 1:
        return np.empty(0, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n, size=count, replace=False))


def sample_rows(n: int, limit: int, exclude: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """Sorted row numbers of at most ``limit`` rows not in ``exclude`` (None: every row)."""
    if not len(exclude) and n <= limit:
        return None
    if n - len(exclude) <= limit:
        return np.setdiff1d(np.arange(n), exclude)
    picks = rng.choice(n, size=min(n, limit + len(exclude)), replace=False)
    return np.sort(picks[~np.isin(picks, exclude)][:limit])


def train_centroids(
    backend: Backend,
    vectors: np.ndarray,
    n_lists: int,
    metric: str,
    *,
    max_iters: int,
    tolerance: float,
    seed: int = 1234,
    exclude: np.ndarray | None = None,
) -> np.ndarray:
    """k-means on a sample (``sample_limit``: up to 256 rows per list, as faiss recommends),
    leaving out the rows ``exclude`` (``held_out``)."""
    rng = np.random.default_rng(seed)
    limit = sample_limit(n_lists)
    rows = sample_rows(len(vectors), limit, np.empty(0, np.int64) if exclude is None else exclude, rng)
    sample = vectors if rows is None else vectors[rows]
    cosine = metric == "cosine"
    if cosine:
        sample = backend.to_host(normalize(backend.asarray(sample)))
    cent = backend.kmeans(sample, n_lists, niter=max_iters, seed=seed, spherical=cosine, tol=tolerance)
    return backend.to_host(normalize(backend.asarray(cent))).astype(np.float32) if cosine else cent


ASSIGN_ROWS = 32768  # rows assigned at a time: the search-space copy stays this small


def assign_lists(backend: Backend, vectors: np.ndarray, centroids: np.ndarray, metric: str) -> np.ndarray:
    """The IVF list of each row: its nearest centroid in the search space (a chunk of rows
    at a time)."""
    out = np.empty(len(vectors), dtype=np.int64)
    for lo in range(0, len(vectors), ASSIGN_ROWS):
        chunk = vectors[lo : lo + ASSIGN_ROWS]
        out[lo : lo + len(chunk)] = backend.nearest(_space(backend, chunk, metric == "cosine"), centroids, 1)[
            :, 0
        ]
    return out


def _space(backend: Backend, rows: np.ndarray, cosine: bool) -> np.ndarray:
    """``rows`` in the search space (unit length for cosine), on the host."""
    return backend.to_host(normalize(backend.asarray(rows))) if cosine else rows


# Candidates a chunk keeps per query beyond ``k``, ranked by the product's distances before
# their exact ones decide: far more than the rows that product's rounding (about 1e-6) can
# move past the ``k``-th.
SPARE = 8


class Nearest:
    """The exact ``k`` nearest rows of fixed queries (in the search space), gathered over
    chunks of rows: no copy of every row. Ties go to the earlier row.

    A chunk's candidates come from one matrix product (``|x|^2 - 2 q.x``: the queries are
    few, the rows many, which is where faiss's brute force takes its per-query path, ten
    times slower: 0.52 s against 0.05 s for 200 queries and 32,768 rows), then the best
    ``k + SPARE`` of them are measured exactly, so distances are ``|q - x|^2`` as summed
    directly (an exact duplicate is at 0, which the product does not promise)."""

    def __init__(self, backend: Backend, queries: np.ndarray, k: int) -> None:
        self.backend, self.queries, self.k = backend, np.ascontiguousarray(queries, dtype=np.float32), k
        self._on = backend.asarray(self.queries)
        self._norms = np.einsum("qd,qd->q", self.queries, self.queries, dtype=np.float64)  # |q|^2
        self.dist: np.ndarray | None = None
        self.rows: np.ndarray | None = None

    def add(self, chunk: np.ndarray, rows: np.ndarray) -> None:
        """Rows ``chunk`` (in the search space), numbered ``rows`` (ascending)."""
        n = len(chunk)
        if not n:
            return
        chunk = np.ascontiguousarray(chunk, dtype=np.float32)
        xp, on = self.backend.xp, self.backend.asarray(chunk)
        ranked = self.backend.to_host(xp.sum(on * on, axis=1)[None, :] - 2.0 * (self._on @ on.T))
        keep = min(self.k + SPARE, n)
        if keep < n:
            cand = np.argpartition(ranked, keep - 1, axis=1)[:, :keep]
        else:
            cand = np.tile(np.arange(n), (len(ranked), 1))
        # Measured exactly: only candidates that can still enter a query's k nearest (once
        # it has k, those within a bound of the product's rounding of its k-th distance);
        # gathering every candidate's row was most of a 10M-row calibration.
        measure = np.ones(cand.shape, dtype=bool)
        if self.dist is not None and self.dist.shape[1] == self.k:
            qn = self._norms
            xn = float(np.einsum("cd,cd->c", chunk, chunk, dtype=np.float64).max())
            slack = 1e-3 * (qn + xn + 2.0 * np.sqrt(qn * xn)) + 1e-6  # far above float32 GEMM error
            product = np.take_along_axis(ranked, cand, axis=1) + qn[:, None]
            measure = product <= (self.dist[:, -1] + slack)[:, None]
        exact = np.full(cand.shape, np.inf, dtype=np.float32)
        qi, ci = np.nonzero(measure)
        diff = chunk[cand[qi, ci]] - self.queries[qi]
        exact[qi, ci] = np.einsum("cd,cd->c", diff, diff)
        found = np.asarray(rows, dtype=np.int64)[cand]
        self._merge(exact, found)

    def _merge(self, dist: np.ndarray, found: np.ndarray) -> None:
        """Keep each query's ``k`` nearest of what it had and ``(dist, found)``: by distance,
        then by row number."""
        if self.dist is not None and self.rows is not None:
            dist, found = (
                np.concatenate([self.dist, dist], axis=1),
                np.concatenate([self.rows, found], axis=1),
            )
        order = np.lexsort((found, dist), axis=1)[:, : self.k]
        self.dist, self.rows = (
            np.take_along_axis(dist, order, axis=1),
            np.take_along_axis(found, order, axis=1),
        )

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """``(squared distances, rows)``."""
        assert self.dist is not None and self.rows is not None
        return self.dist, self.rows


def _exact_neighbours(
    backend: Backend, queries: np.ndarray, vectors: np.ndarray, k: int, cosine: bool
) -> tuple[np.ndarray, np.ndarray]:
    """``(squared distances, rows)`` of the exact ``k`` nearest rows of ``vectors`` (in the
    search space) for each query, searched a chunk of rows at a time."""
    nearest = Nearest(backend, queries, k)
    for lo in range(0, len(vectors), ASSIGN_ROWS):
        chunk = _space(backend, vectors[lo : lo + ASSIGN_ROWS], cosine)
        nearest.add(chunk, np.arange(lo, lo + len(chunk)))
    return nearest.result()


def calibration_k(n: int, aims: dict[int, float]) -> int:
    """How many exact neighbours ``probes_for`` needs per calibration query (0: none)."""
    ks = [k for k in sorted(aims) if n > k + 1]
    return min(ks[-1] + 8, n) if ks else 0


def choose_n_probes(
    backend: Backend,
    vectors: np.ndarray,
    labels: np.ndarray,
    centroids: np.ndarray,
    metric: str,
    picks: np.ndarray,
    aims: dict[int, float] | None = None,
) -> dict[int, tuple[int, float]]:
    """For each ``k`` of ``aims`` (default: recall@10 of ``RECALL_AIM``), the smallest
    ``n_probes`` whose measured recall@k reaches its aim, and that recall — on the rows
    ``picks`` as queries (``held_out``: the centroids were not fitted on them).

    Each picked row is a query; its exact top-k among the other rows is the truth. A
    neighbour is found with ``p`` probes when its list is among the query's ``p``
    nearest centroids, so one ranking of centroids gives recall for every ``p``.
    """
    aims = aims or {10: RECALL_AIM}
    k = calibration_k(len(vectors), aims)
    if len(centroids) == 1 or not k or not len(picks):
        return {a: (1, 1.0) for a in aims}
    queries = _space(backend, vectors[picks], metric == "cosine")
    nearest = _exact_neighbours(backend, queries, vectors, k, metric == "cosine")
    return probes_for(backend, queries, nearest, picks, labels, centroids, len(vectors), aims)


def probes_for(
    backend: Backend,
    queries: np.ndarray,
    nearest: tuple[np.ndarray, np.ndarray],
    picks: np.ndarray,
    labels: np.ndarray,
    centroids: np.ndarray,
    n: int,
    aims: dict[int, float],
) -> dict[int, tuple[int, float]]:
    """``choose_n_probes`` from the calibration ``queries`` (rows ``picks`` of ``n``, in the
    search space) and their exact ``nearest`` rows (``Nearest``, ``calibration_k`` of them)."""
    n_lists = len(centroids)
    ks = [k for k in sorted(aims) if n > k + 1]
    out = {k: (1, 1.0) for k in aims}
    if n_lists == 1 or not ks or not len(picks):
        return out
    ranking = inverse_permutation(backend.asarray(backend.nearest(queries, centroids, k=n_lists)))
    # A sampled row finds itself and any exact duplicates at distance 0, all in its own
    # list; counting them would flatter small n_probes. Fetch extra, drop them, keep k.
    dist, neighbours = nearest
    xp, to = backend.xp, backend.asarray
    found = to(neighbours)
    duplicate = (to(dist) <= 1e-9) | (found == to(picks)[:, None]) | (found < 0)
    order = xp.argsort(xp.astype(duplicate, xp.int8), axis=1, stable=True)
    ordered = xp.take_along_axis(found, order, axis=1)
    kept = ~xp.take_along_axis(duplicate, order, axis=1)
    for k in ks:
        truth, usable = ordered[:, :k], kept[:, :k]
        lists = xp.reshape(xp.take(to(labels), xp.reshape(xp.clip(truth, min=0), (-1,))), truth.shape)
        ranks = xp.take_along_axis(ranking, lists, axis=1)
        recall = backend.to_host(recall_curve(ranks, usable, n_lists))
        reach = np.flatnonzero(recall >= aims[k])
        p = int(reach[0]) + 1 if len(reach) else n_lists
        out[k] = (p, float(recall[p - 1]))
    return out
