"""The decrypted, in-memory materialisation of one index in a warm container.

Rows live in growable columnar arrays; an id maps to its current row; overwritten and
deleted rows are marked dead and dropped at the next in-memory compaction. Segments
are applied strictly in sequence order, so every container that has applied the same
sequence prefix holds the same rows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .backend import AnnIndex, Backend
from .segment import Segment


class IndexState:
    """Columnar rows of one index plus its IVF list assignment, if trained."""

    def __init__(self, dimension: int, precision: str = "float32") -> None:
        self.dimension = dimension
        self.precision = precision
        self.ids: list[str] = []
        self.pos: dict[str, int] = {}
        # float16 storage precision keeps rows (and the faiss index) at half the memory.
        self.vectors = np.empty((0, max(dimension, 1)), dtype=np.dtype(precision))
        self.alive = np.empty(0, dtype=bool)
        self.metadata: list[dict[str, Any] | None] = []
        self.contents: list[str | None] = []
        self.applied_seq = 0
        self.snapshot_name: str | None = None
        self.centroids: np.ndarray | None = None
        self.centroids_name: str | None = None
        self.ann: AnnIndex | None = None  # built lazily by ``searchable``
        self.version = 0  # bumps on every change; keys derived caches
        self._cache: dict[Any, Any] = {}

    # -- sizes -------------------------------------------------------------------
    @property
    def n_rows(self) -> int:
        return len(self.ids)

    @property
    def live(self) -> int:
        return len(self.pos)

    def nbytes(self) -> int:
        ann = self.ann.ntotal * self.ann.dim * self.vectors.itemsize if self.ann is not None else 0
        return int(self.vectors.nbytes + self.alive.nbytes + ann + 64 * self.n_rows)

    # -- mutation ----------------------------------------------------------------
    def _grow(self, extra: int) -> None:
        need = self.n_rows + extra
        if need <= len(self.alive):
            return
        cap = max(need, int(len(self.alive) * 1.5) + 1024)
        for name, shape in (
            ("vectors", (cap, self.vectors.shape[1])),
            ("alive", (cap,)),
        ):
            old = getattr(self, name)
            new = np.zeros(shape, dtype=old.dtype) if name == "alive" else np.empty(shape, dtype=old.dtype)
            new[: self.n_rows] = old[: self.n_rows]
            setattr(self, name, new)

    def apply(self, segment: Segment, seq: int) -> None:
        """Apply one committed segment (must be the next in sequence order)."""
        self._cache.clear()
        self.version += 1
        self.applied_seq = max(self.applied_seq, seq)
        if segment.kind == "delete":
            dead = [r for r in (self.pos.pop(i, None) for i in segment.ids) if r is not None]
            if dead:
                self.alive[dead] = False
            return
        assert segment.vectors is not None
        n = len(segment)
        if self.dimension == 0 or self.vectors.shape[1] != segment.vectors.shape[1]:
            self.dimension = int(segment.vectors.shape[1])
            if self.n_rows == 0:
                self.vectors = np.empty((0, self.dimension), dtype=self.vectors.dtype)
        self._grow(n)
        start = self.n_rows
        rows = np.arange(start, start + n)
        old = [r for r in (self.pos.get(i) for i in segment.ids) if r is not None]
        if old:
            self.alive[old] = False
        self.pos.update(zip(segment.ids, rows.tolist(), strict=True))
        self.ids.extend(segment.ids)
        self.vectors[start : start + n] = segment.vectors
        if len(set(segment.ids)) == n:
            self.alive[start : start + n] = True
        else:  # duplicate ids in one write: the last one wins
            current = np.fromiter((self.pos[i] for i in segment.ids), dtype=np.int64, count=n)
            self.alive[start : start + n] = current == rows
        self.metadata.extend(segment.metadata or [None] * n)
        self.contents.extend(segment.contents or [None] * n)

    def set_centroids(self, name: str | None, centroids: np.ndarray | None) -> None:
        """Adopt trained centroids (``None``: back to exact search)."""
        self.centroids = centroids
        self.centroids_name = name
        self.ann = None
        self._cache.clear()
        self.version += 1

    def searchable(self, space: Callable[[np.ndarray], np.ndarray], backend: Backend) -> AnnIndex:
        """The faiss index over every row, brought up to date with appended rows.

        ``space`` maps stored vectors to the search space (normalised for cosine).
        """
        if self.ann is None:
            half = self.precision == "float16"
            self.ann = backend.ann_index(self.vectors.shape[1], self.centroids, half=half)
        chunk = 65536
        while self.ann.ntotal < self.n_rows:
            lo = self.ann.ntotal
            rows = self.vectors[lo : min(lo + chunk, self.n_rows)].astype(np.float32)
            self.ann.add(space(rows))
        return self.ann

    @property
    def dead_fraction(self) -> float:
        return 1.0 - self.live / self.n_rows if self.n_rows else 0.0

    def compact(self) -> None:
        """Drop dead rows from memory (row numbers change)."""
        keep = np.flatnonzero(self.alive[: self.n_rows])
        if len(keep) == self.n_rows:
            return
        self.vectors = self.vectors[keep].copy()
        self.ann = None
        self.alive = np.ones(len(keep), dtype=bool)
        self.ids = [self.ids[i] for i in keep]
        self.metadata = [self.metadata[i] for i in keep]
        self.contents = [self.contents[i] for i in keep]
        self.pos = {i: r for r, i in enumerate(self.ids)}
        self._cache.clear()
        self.version += 1

    # -- derived views (cached per version) --------------------------------------
    def live_rows(self) -> np.ndarray:
        """Row numbers of live rows, ascending."""
        key = "live_rows"
        if key not in self._cache:
            self._cache[key] = np.flatnonzero(self.alive[: self.n_rows])
        return self._cache[key]

    def snapshot(self) -> Segment:
        """Every live row as one segment (used by compaction)."""
        live = self.live_rows()
        metadata = [self.metadata[i] for i in live]
        contents = [self.contents[i] for i in live]
        return Segment(
            "snapshot",
            [self.ids[i] for i in live],
            self.vectors[live].copy(),
            metadata if any(m is not None for m in metadata) else None,
            contents if any(c is not None for c in contents) else None,
        )

    def cached(self, key: Any, compute: Any) -> Any:
        """Memoise ``compute()`` until the next change (e.g. a filter's row mask)."""
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]
