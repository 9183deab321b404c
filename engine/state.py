"""The decrypted, in-memory materialisation of one index in a warm container.

Rows live in growable columnar arrays; an id maps to its current row; overwritten and
deleted rows are marked dead and dropped at the next in-memory compaction. Segments
are applied strictly in sequence order, so every container that has applied the same
sequence prefix holds the same rows.

One copy of the vectors: once the faiss index holds every row exactly as stored (L2
metrics, or cosine over unit-norm rows; float32 or fp16 codes), the numpy array is dropped and rows
are read back from faiss. Otherwise (cosine over rows of other norms, which faiss must
hold normalised) both are kept.

A state can be *partial*: opened from runs (run.py) with only some IVF lists loaded, the
rest read on demand (``Partial``). Lists may load in any order, so every id remembers
the sequence number of its newest write or delete applied so far; a run's row loads only
where its run is newer, and a list loaded late never resurrects an overwritten or deleted
row.
Each row remembers its IVF list (``lists``; -1 where faiss assigns the nearest
centroid), so the lists a query probes hold exactly the rows the run put there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .ann import AnnIndex
from .backend import Backend
from .kernels import normalize, unit_norm
from .run import Directory
from .segment import Segment


@dataclass
class PartialRun:
    """One run of a partial state: which of its lists are loaded."""

    name: str
    seq: int
    directory: Directory
    loaded: set[int] = field(default_factory=set)

    def missing(self, lists: Any = None) -> list[int]:
        """Non-empty lists (of ``lists``, default all) not loaded yet, ascending."""
        pick = range(self.directory.n_lists) if lists is None else sorted({int(k) for k in lists})
        rows = self.directory.rows
        return [k for k in pick if k < len(rows) and rows[k] and k not in self.loaded]


@dataclass
class Partial:
    """The runs of a state whose lists load on demand, and what shadows their rows."""

    runs: list[PartialRun] = field(default_factory=list)
    # id -> sequence number of its newest write or delete applied so far
    shadow: dict[str, int] = field(default_factory=dict)

    def missing(self, lists: Any = None) -> list[tuple[PartialRun, int]]:
        """``(run, list)`` pairs not loaded yet (of ``lists``, default all)."""
        return [(r, k) for r in self.runs for k in r.missing(lists)]

    def unloaded_rows(self) -> int:
        return sum(r.directory.rows[k] for r, k in self.missing())


class IndexState:
    """Columnar rows of one index (ids, liveness, metadata, contents) and its faiss index."""

    def __init__(self, dimension: int, precision: str = "float32", metric: str = "euclidean") -> None:
        self.dimension = dimension
        self.precision = precision
        self.metric = metric
        # cosine: while every row has unit norm, faiss can hold rows as they are.
        self.unit_rows = True
        self.ids: list[str] = []
        self.pos: dict[str, int] = {}
        # float16 storage precision keeps rows (and the faiss index) at half the memory.
        self.vectors: np.ndarray | None = np.empty((0, max(dimension, 1)), dtype=np.dtype(precision))
        # Rows appended since ``vectors`` was last consolidated: the written arrays themselves,
        # copied into ``vectors`` once, when rows are next read or indexed (ingest copies nothing).
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0
        self.alive = np.empty(0, dtype=bool)
        self.lists = np.empty(0, dtype=np.int64)  # IVF list of each row; -1: nearest centroid
        self.metadata: list[dict[str, Any] | None] = []
        self.contents: list[str | None] = []
        self.applied_seq = 0
        self.centroids: np.ndarray | None = None
        self.centroids_name: str | None = None
        self.ann: AnnIndex | None = None  # built lazily by ``searchable``
        self.synced_etag: str | None = None  # the head this state was last brought up to
        self.version = 0  # bumps on every change; keys derived caches
        self._cache: dict[Any, Any] = {}
        self.partial: Partial | None = None

    # -- sizes -------------------------------------------------------------------
    @property
    def n_rows(self) -> int:
        return len(self.ids)

    @property
    def live(self) -> int:
        return len(self.pos)

    def nbytes(self) -> int:
        ann = self.ann.nbytes() if self.ann is not None else 0
        own = self.vectors.nbytes if self.vectors is not None else 0
        own += sum(p.nbytes for p in self._pending)
        return int(own + self.alive.nbytes + self.lists.nbytes + ann + 64 * self.n_rows)

    def rows(self, rows: np.ndarray | list[int]) -> np.ndarray:
        """Stored vectors of ``rows`` as float32, wherever they live."""
        if self.vectors is not None:
            self._flush()
            return np.asarray(self.vectors[np.asarray(rows, dtype=np.int64)], dtype=np.float32)
        assert self.ann is not None
        return self.ann.reconstruct(np.asarray(rows, dtype=np.int64))

    def _space(self, x: np.ndarray) -> np.ndarray:
        """Stored rows → the space faiss searches (L2 there ranks like the metric)."""
        return normalize(x) if self.metric == "cosine" and not self.unit_rows else x

    def _materialize(self) -> None:
        """Bring rows back into a numpy array (before faiss must be rebuilt)."""
        if self.vectors is None:
            assert self.ann is not None
            vectors = np.empty((len(self.alive), self.ann.dim), dtype=np.dtype(self.precision))
            vectors[: self.n_rows] = self.ann.reconstruct(np.arange(self.n_rows))
            self.vectors = vectors
        else:
            self._flush()

    def _flush(self) -> None:
        """Copy pending rows into ``vectors`` (growing it by half again when full)."""
        if not self._pending:
            return
        assert self.vectors is not None
        start = self.n_rows - self._pending_rows
        if len(self.vectors) < self.n_rows:
            cap = max(self.n_rows, int(len(self.vectors) * 1.5) + 1024)
            grown = np.empty((cap, self.vectors.shape[1]), dtype=self.vectors.dtype)
            grown[:start] = self.vectors[:start]
            self.vectors = grown
        for chunk in self._pending:
            self.vectors[start : start + len(chunk)] = chunk
            start += len(chunk)
        self._pending.clear()
        self._pending_rows = 0

    # -- mutation ----------------------------------------------------------------
    def _grow(self, extra: int) -> None:
        need = self.n_rows + extra
        if need <= len(self.alive):
            return
        cap = max(need, int(len(self.alive) * 1.5) + 1024)
        alive = np.zeros(cap, dtype=bool)
        alive[: self.n_rows] = self.alive[: self.n_rows]
        self.alive = alive
        lists = np.full(cap, -1, dtype=np.int64)
        lists[: self.n_rows] = self.lists[: self.n_rows]
        self.lists = lists

    def apply(
        self, segment: Segment, seq: int, ivf_list: int | np.ndarray = -1, *, shadows: bool = True
    ) -> None:
        """Apply one committed segment (must be the next in sequence order); ``ivf_list``
        pins its rows to IVF lists (one for all, or one per row), else (-1) faiss picks
        the nearest centroid. In a partial state the segment's ids shadow older run rows
        unless ``shadows`` is off (rows of a run itself)."""
        self._cache.clear()
        self.version += 1
        self.applied_seq = max(self.applied_seq, seq)
        if self.partial is not None and shadows:
            self.partial.shadow.update(dict.fromkeys(segment.ids, seq))
        if segment.kind == "delete":
            dead = [r for r in (self.pos.pop(i, None) for i in segment.ids) if r is not None]
            if dead:
                self.alive[dead] = False
            return
        assert segment.vectors is not None
        n = len(segment)
        if self.n_rows == 0 and self.dimension != segment.vectors.shape[1]:
            self.dimension = int(segment.vectors.shape[1])
            self.vectors = np.empty((0, self.dimension), dtype=np.dtype(self.precision))
        if self.metric == "cosine" and self.unit_rows and not unit_norm(segment.vectors):
            self._materialize()  # faiss must now hold normalised rows: keep both copies
            self.unit_rows = False
            self.ann = None
        self._grow(n)
        start = self.n_rows
        rows = np.arange(start, start + n)
        old = [r for r in (self.pos.get(i) for i in segment.ids) if r is not None]
        if old:
            self.alive[old] = False
        self.pos.update(zip(segment.ids, rows.tolist(), strict=True))
        self.ids.extend(segment.ids)
        self.lists[start : start + n] = ivf_list
        if self.vectors is not None:
            self._pending.append(segment.vectors.astype(self.vectors.dtype, copy=False))
            self._pending_rows += n
        else:
            assert self.ann is not None
            self.ann.add(self._space(segment.vectors), self.lists[start : start + n])
        if len(set(segment.ids)) == n:
            self.alive[start : start + n] = True
        else:  # duplicate ids in one write: the last one wins
            current = np.fromiter((self.pos[i] for i in segment.ids), dtype=np.int64, count=n)
            self.alive[start : start + n] = current == rows
        self.metadata.extend(segment.metadata or [None] * n)
        self.contents.extend(segment.contents or [None] * n)

    def open_run(self, name: str, seq: int, directory: Directory) -> None:
        """Add a run whose lists load later (``apply_list``)."""
        if self.partial is None:
            self.partial = Partial()
        if self.metric == "cosine" and self.unit_rows and not directory.unit:
            self._materialize()  # faiss must hold normalised rows: keep both copies
            self.unit_rows = False
            self.ann = None
        self.partial.runs.append(PartialRun(name, seq, directory))
        self.applied_seq = max(self.applied_seq, seq)

    def apply_list(self, run: PartialRun, k: int, rows: Segment) -> None:
        """Load list ``k`` of a partial run: its rows, minus ids written since."""
        partial = self.partial
        assert partial is not None and run in partial.runs and k not in run.loaded
        shadow = partial.shadow
        keep = [j for j, i in enumerate(rows.ids) if shadow.get(i, -1) < run.seq]
        if len(keep) < len(rows):
            rows = rows.take(keep)
        run.loaded.add(k)
        if len(rows):
            if any(r.seq < run.seq and r.missing() for r in partial.runs):
                shadow.update(dict.fromkeys(rows.ids, run.seq))  # an older run may hold them too
            self.apply(rows, run.seq, ivf_list=k, shadows=False)
        if not partial.missing():
            self.partial = None  # every list is in: an ordinary, complete state

    def set_centroids(self, name: str | None, centroids: np.ndarray | None) -> None:
        """Adopt trained centroids (``None``: back to exact search)."""
        self._materialize()
        self.lists[:] = -1  # list numbers of other centroids mean nothing here
        self.centroids = centroids
        self.centroids_name = name
        self.ann = None
        self._cache.clear()
        self.version += 1

    def searchable(self, backend: Backend) -> AnnIndex:
        """The faiss index over every row, brought up to date with appended rows; then,
        where faiss holds rows exactly as stored, the numpy copy is released."""
        if self.ann is None:
            assert self.vectors is not None
            half = self.precision == "float16"
            self.ann = backend.ann_index(self.vectors.shape[1], self.centroids, half=half)
        step = 65536
        start = self.n_rows - self._pending_rows  # rows from here on are pending arrays
        while self.ann.ntotal < start:
            assert self.vectors is not None
            lo = self.ann.ntotal
            hi = min(lo + step, start)
            self.ann.add(self._space(self.vectors[lo:hi].astype(np.float32)), self.lists[lo:hi])
        if self._pending:
            assert self.ann.ntotal == start
            for chunk in self._pending:
                for lo in range(0, len(chunk), step):
                    part = chunk[lo : lo + step].astype(np.float32)
                    first = self.ann.ntotal
                    self.ann.add(self._space(part), self.lists[first : first + len(part)])
        # faiss's flat or fp16 codes hold exactly the stored values (float32 or float16).
        exact_copy = self.metric != "cosine" or self.unit_rows
        if exact_copy and self.vectors is not None:
            self.vectors = None
            self._pending.clear()
            self._pending_rows = 0
        else:
            self._flush()
        return self.ann

    @property
    def dead_fraction(self) -> float:
        return 1.0 - self.live / self.n_rows if self.n_rows else 0.0

    def compact(self) -> None:
        """Drop dead rows from memory (row numbers change)."""
        keep = np.flatnonzero(self.alive[: self.n_rows])
        if len(keep) == self.n_rows:
            return
        self._materialize()
        assert self.vectors is not None
        self.vectors = self.vectors[keep].copy()
        self.ann = None
        self.alive = np.ones(len(keep), dtype=bool)
        self.lists = self.lists[keep].copy()
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
            self.rows(live),
            metadata if any(m is not None for m in metadata) else None,
            contents if any(c is not None for c in contents) else None,
        )

    def cached(self, key: Any, compute: Any) -> Any:
        """Memoise ``compute()`` until the next change (e.g. a filter's row mask)."""
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]
