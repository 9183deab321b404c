"""One index's decrypted rows in a warm container, as immutable snapshots.

A ``Snapshot`` never changes once published: readers take the current one and search it
with no lock held. A ``Builder`` (one writer at a time per index) starts from a snapshot,
applies segments, IVF lists or new centroids, and ``freeze`` gives the next snapshot,
which the cache publishes with one pointer swap (read-copy-update).

What a snapshot shares with its successors only grows past what it reads, so it answers
the same for as long as anyone holds it (``tests/test_snapshots.py``):

* the id, metadata and contents lists and the IVF-list column grow past its ``n_rows``
  and it never reads past them (an outgrown column is copied, never shrunk);
* ``latest`` maps each id to its newest row and ``prev`` (a column) each row to the row
  that id had before. A builder writes a row's ``prev`` before it points ``latest`` at the
  row, and ``latest`` only ever points an id at a newer row, so a snapshot finds its own
  row by walking back past rows newer than itself. The one step back is a failed build's
  ``undo``, which returns ids to rows its base already had;
* ``prev`` grows by copy-then-swap of its one-element holder, so any reader sees every
  row's ``prev`` from the moment ``latest`` can name the row;
* liveness (one bool per row) and the tuple of parts (``parts.py``: immutable faiss
  indexes over row ranges) are each builder's own;
* ``Partial.shadow`` is read and written by builders only, under the writer lock.

Each of these is one dict, list or array operation at a time, which CPython keeps atomic
with or without the GIL (per-object locks in the free-threaded build); no reader relies on
two of them happening together (copy-on-write id maps cost a 10M-row lazy fill 2.5x the
time: see 0fd8a87). Segments are applied strictly in sequence order, so every container
that has applied the same sequence prefix holds the same rows.

A snapshot can be *partial*: opened from runs (run.py) with only some IVF lists loaded,
the rest read on demand (``partial.py``). Lists may load in any order, so every id remembers
the sequence number of its newest write or delete applied so far; a run's row loads only
where its run is newer, and a list loaded late never resurrects an overwritten or deleted
row. Each row remembers its IVF list (-1 where faiss assigns the nearest centroid), so the
lists a query probes hold exactly the rows the run put there.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..arrays.ann import flat_quantizer
from ..arrays.backend import Backend
from ..codec.centroids import TrainedLists
from ..codec.run import Directory
from ..codec.segment import Held, Segment
from ..model import memory_dtype
from . import parts
from .partial import Partial, PartialRun
from .parts import Layout, Part
from .textindex import TextBuilder, TextIndex

_versions = itertools.count(1)


@dataclass(frozen=True, eq=False)
class Snapshot:
    """An immutable view of one index's rows; see the module docstring."""

    layout: Layout
    n_rows: int
    live: int
    ids: list[str]
    metadata: list[dict[str, Any] | None]
    contents: list[str | None]
    alive: np.ndarray
    lists: np.ndarray
    latest: dict[str, int]
    prev_ref: list[np.ndarray]  # one column in a holder: a grown copy replaces it for all
    parts: tuple[Part, ...]
    centroids_name: str | None
    partial: Partial | None
    applied_seq: int
    text: TextIndex | None = None  # BM25 postings of the full-text fields (``textindex.py``)
    # the cache's bookkeeping: the index incarnation, the segments applied, the head synced to
    uid: str = ""
    applied: tuple[str, ...] = ()
    synced_etag: str | None = None
    version: int = field(default_factory=lambda: next(_versions))
    _cache: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    # -- views ---------------------------------------------------------------------------
    @property
    def dimension(self) -> int:
        return self.layout.dimension

    @property
    def metric(self) -> str:
        return self.layout.metric

    @property
    def precision(self) -> str:
        return self.layout.precision

    @property
    def centroids(self) -> np.ndarray | None:
        return self.layout.centroids

    @property
    def quantizer(self) -> Any:
        return self.layout.quantizer

    def row_of(self, key: str) -> int | None:
        """The live row of id ``key`` in this snapshot, if any."""
        row = self.latest.get(key, -1)
        while row >= self.n_rows:  # written after this snapshot: the row it had before
            row = int(self.prev_ref[0][row])
        return row if row >= 0 and self.alive[row] else None

    def count_new(self, keys: list[str]) -> int:
        """How many distinct ids of ``keys`` have no live row here."""
        unique = set(keys)
        rows = np.fromiter(
            map(self.latest.get, unique, itertools.repeat(-1)), dtype=np.int64, count=len(unique)
        )
        if (rows >= self.n_rows).any():  # written after this snapshot: ask row by row
            return sum(1 for k in unique if self.row_of(k) is None)
        known = rows[rows >= 0]
        return len(unique) - int(np.count_nonzero(self.alive[known]))

    def with_parts(self, merged: tuple[Part, ...]) -> Snapshot:
        """The same rows held by other parts (a background merge)."""
        return replace(self, parts=merged, _cache={})

    def with_bookkeeping(self, **changes: Any) -> Snapshot:
        """The same rows under new bookkeeping (``uid``, ``applied``, ``synced_etag``)."""
        return replace(self, **changes, _cache=self._cache)

    def nbytes(self) -> int:
        own = sum(p.nbytes() for p in self.parts) + (self.text.nbytes() if self.text is not None else 0)
        if self.partial is not None:  # the text postings of runs not loaded whole
            own += sum(t.nbytes() for t in (r.text.peek() for r in self.partial.runs) if t is not None)
        return int(own + self.alive.nbytes + self.lists.nbytes + self.prev_ref[0].nbytes + 64 * self.n_rows)

    def rows(self, rows: np.ndarray | list[int]) -> np.ndarray:
        """Stored vectors of ``rows`` as float32 (in the given order)."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(self.parts) == 1:
            start = self.parts[0].start
            return self.parts[0].rows(rows - start if start else rows)
        out = np.empty((len(rows), max(self.dimension, 1)), dtype=np.float32)
        if not len(rows):
            return out
        starts = np.array([p.start for p in self.parts], dtype=np.int64)
        owner = np.searchsorted(starts, rows, side="right") - 1
        for i in np.unique(owner).tolist():
            at = np.flatnonzero(owner == i)
            part = self.parts[i]
            out[at] = part.rows(rows[at] - part.start)
        return out

    def live_rows(self) -> np.ndarray:
        """Row numbers of live rows, ascending."""
        return self.cached("live_rows", lambda: np.flatnonzero(self.alive))

    def dead_per_part(self) -> list[int]:
        """Rows no longer live in each part (0: search it without an id selector)."""
        return self.cached(
            "dead_per_part",
            lambda: [p.n - int(np.count_nonzero(self.alive[p.start : p.end])) for p in self.parts],
        )

    def live_segment(self) -> Segment:
        """Every live row as one segment, in row order (what training reads)."""
        live = self.live_rows()
        metadata = [self.metadata[i] for i in live]
        contents = [self.contents[i] for i in live]
        return Segment(
            "snapshot",
            [self.ids[i] for i in live],
            self.rows(live),
            metadata if any(m is not None for m in metadata) else None,
            contents if any(c is not None for c in contents) else None,
            self.text.terms_of(live) if self.text is not None else None,
        )

    def cached(self, key: Any, compute: Any) -> Any:
        """Memoise ``compute()`` for this snapshot (e.g. a filter's row mask). Two readers
        may both compute it; either result is the same."""
        got = self._cache.get(key)
        if got is None:
            got = self._cache.setdefault(key, compute())
        return got


class Builder:
    """The next snapshot in the making (one writer at a time per index)."""

    def __init__(self, layout: Layout, base: Snapshot | None = None) -> None:
        self.layout = layout
        if base is None:
            self.ids: list[str] = []
            self.metadata: list[dict[str, Any] | None] = []
            self.contents: list[str | None] = []
            self.alive = np.empty(0, dtype=bool)
            self.lists = np.empty(0, dtype=np.int64)
            self.latest: dict[str, int] = {}
            self.prev_ref = [np.empty(0, dtype=np.int64)]
            self.parts: list[Part] = []
            self.live = 0
            self.applied_seq = 0
            self.centroids_name: str | None = None
            self.runs: list[PartialRun] | None = None
            self.shadow: dict[str, int] = {}
            n = 0
        else:
            n = base.n_rows
            # Append to the shared columns only from their tip; a base that something was
            # appended after (a newer snapshot, a failed build) gets its own copies.
            tip = len(base.ids) == len(base.metadata) == len(base.contents) == n
            self.ids = base.ids if tip else base.ids[:n]
            self.metadata = base.metadata if tip else base.metadata[:n]
            self.contents = base.contents if tip else base.contents[:n]
            self.lists = base.lists if tip else base.lists[:n].copy()
            self.prev_ref = base.prev_ref if tip else [base.prev_ref[0][:n].copy()]
            self.latest = base.latest if tip else _newest_rows(self.ids)
            # Liveness is this builder's own copy, with room to append (one copy per write).
            self.alive = np.zeros(n + max(1024, n // 2), dtype=bool)
            self.alive[:n] = base.alive
            self.parts = list(base.parts)
            self.live = base.live
            self.applied_seq = base.applied_seq
            self.centroids_name = base.centroids_name
            self.runs = list(base.partial.runs) if base.partial is not None else None
            self.shadow = base.partial.shadow if base.partial is not None else {}
        self._base_rows = n  # rows from here on were appended by this builder
        self._built = n  # rows below this are in ``parts``
        # rows from ``_built`` on: their vectors, or the codes that stand for them (``Held``)
        self._pending: list[np.ndarray | Held] = []
        self._rebuild = False  # every row must go into new parts (new centroids, compaction)
        self._growing: Part | None = None  # the last part, made by this builder: it may grow
        self.text = TextBuilder(layout.text, base.text if base is not None else None) if layout.text else None

    @property
    def n_rows(self) -> int:
        return len(self.ids)

    def undo(self) -> None:
        """Take back what this builder did to the id map its base shares (a failed build);
        rows it appended are dropped by the next builder."""
        prev = self.prev_ref[0]
        for row in range(self.n_rows - 1, self._base_rows - 1, -1):
            before = int(prev[row])
            if before >= 0:
                self.latest[self.ids[row]] = before
            else:
                self.latest.pop(self.ids[row], None)

    # -- changes -----------------------------------------------------------------------
    def apply(
        self, segment: Segment, seq: int, ivf_list: int | np.ndarray = -1, *, shadows: bool = True
    ) -> None:
        """Apply one committed segment (must be the next in sequence order); ``ivf_list``
        pins its rows to IVF lists (one for all, or one per row), else (-1) faiss picks the
        nearest centroid. In a partial state the segment's ids shadow older run rows unless
        ``shadows`` is off (rows of a run itself)."""
        self.applied_seq = max(self.applied_seq, seq)
        if self.runs is not None and shadows:
            self.shadow.update(dict.fromkeys(segment.ids, seq))
        if segment.kind == "delete":
            latest = self.latest
            rows = np.fromiter((latest.get(i, -1) for i in set(segment.ids)), dtype=np.int64)
            dead = rows[rows >= 0]
            dead = dead[self.alive[dead]]
            self.alive[dead] = False
            self.live -= len(dead)
            return
        # rows read with codes of this layout's ranges come without vectors, pinned to lists
        held = segment.held if segment.vectors is None else None
        assert segment.vectors is not None or (held is not None and held.key == self.layout.held)
        n = len(segment)
        if (
            segment.vectors is not None
            and self.n_rows == 0
            and self.layout.dimension != segment.vectors.shape[1]
        ):
            self.layout = replace(self.layout, dimension=int(segment.vectors.shape[1]))
        start = self.n_rows
        self._grow(n)
        latest, prev, ids = self.latest, self.prev_ref[0], segment.ids
        if len(set(ids)) == n:  # each id once: every row's prev is the id's row before this write
            prev[start : start + n] = np.fromiter(
                map(latest.get, ids, itertools.repeat(-1)), dtype=np.int64, count=n
            )
            latest.update(zip(ids, range(start, start + n), strict=True))
        else:
            for row, key in enumerate(ids, start):  # a duplicate id's earlier row is its prev
                prev[row] = latest.get(key, -1)
                latest[key] = row
        self.ids.extend(segment.ids)
        self.lists[start : start + n] = ivf_list
        if held is not None:
            self._pending.append(held)
        else:
            assert segment.vectors is not None
            self._pending.append(segment.vectors.astype(memory_dtype(self.layout.precision), copy=False))
        self.alive[start : start + n] = True
        older = prev[start : start + n]
        older = older[older >= 0]  # the rows these ids had: overwritten, the last write wins
        self.live += n - int(np.count_nonzero(self.alive[older]))
        self.alive[older] = False
        self.metadata.extend(segment.metadata or [None] * n)
        self.contents.extend(segment.contents or [None] * n)
        if self.text is not None:
            self.text.append(start, n, segment.metadata, segment.terms)

    def _grow(self, extra: int) -> None:
        """Room for ``extra`` more rows: liveness is this builder's own copy; the list column
        is shared with earlier snapshots, which never read past their rows."""
        need = self.n_rows + extra
        if need > len(self.alive):
            alive = np.zeros(max(need, int(len(self.alive) * 1.5) + 1024), dtype=bool)
            alive[: self.n_rows] = self.alive[: self.n_rows]
            self.alive = alive
        if need > len(self.lists):
            lists = np.full(max(need, int(len(self.lists) * 1.5) + 1024), -1, dtype=np.int64)
            lists[: self.n_rows] = self.lists[: self.n_rows]
            self.lists = lists
        old = self.prev_ref[0]
        if need > len(old):  # copy, then swap: readers of any snapshot see every row's prev
            prev = np.full(max(need, int(len(old) * 1.5) + 1024), -1, dtype=np.int64)
            prev[: self.n_rows] = old[: self.n_rows]
            self.prev_ref[0] = prev

    def open_run(self, name: str, seq: int, directory: Directory) -> None:
        """Add a run whose lists load later (``apply_list``)."""
        if self.runs is None:
            self.runs = []
        self.runs.append(PartialRun(name, seq, directory))
        self.applied_seq = max(self.applied_seq, seq)

    def apply_list(self, run: PartialRun, k: int, rows: Segment) -> None:
        """Load list ``k`` of a partial run: its rows, minus ids written since."""
        assert self.runs is not None
        at = next(i for i, r in enumerate(self.runs) if r.name == run.name)
        current = self.runs[at]
        if k in current.loaded:
            return
        keep = [j for j, i in enumerate(rows.ids) if self.shadow.get(i, -1) < current.seq]
        if len(keep) < len(rows):
            rows = rows.take(keep)
        self.runs[at] = replace(current, loaded=current.loaded | {k})
        if len(rows):
            if any(r.seq < current.seq and r.missing() for r in self.runs):
                self.shadow.update(dict.fromkeys(rows.ids, current.seq))  # an older run may hold them too
            self.apply(rows, current.seq, ivf_list=k, shadows=False)

    def set_centroids(self, name: str | None, trained: TrainedLists | None) -> None:
        """Adopt trained centroids (``None``: back to exact search): every row is indexed anew."""
        # List numbers of other centroids mean nothing here (a new column: earlier snapshots
        # share the old one); held codes mean nothing under other ranges.
        self._pending = [parts.values(self.layout, p) for p in self._pending]
        self.lists = np.full(max(len(self.lists), self.n_rows), -1, dtype=np.int64)
        centroids = trained.centroids if trained is not None else None
        ranges = trained.ranges if trained is not None else None
        quantizer = flat_quantizer(centroids) if centroids is not None else None
        self.layout = replace(self.layout, centroids=centroids, quantizer=quantizer, ranges=ranges)
        self.centroids_name = name
        self._rebuild = self.n_rows > 0

    def compact(self) -> None:
        """Drop dead rows (row numbers change; every row is indexed anew)."""
        keep = np.flatnonzero(self.alive[: self.n_rows])
        if len(keep) == self.n_rows:
            return
        vectors = self._all_rows()[keep]
        if self.text is not None:
            self.text.keep(keep)
        self.ids = [self.ids[i] for i in keep]
        self.metadata = [self.metadata[i] for i in keep]
        self.contents = [self.contents[i] for i in keep]
        self.lists = self.lists[keep].copy()
        self.alive = np.ones(len(keep), dtype=bool)
        self.latest, self.prev_ref = _newest_rows(self.ids), [np.full(len(keep), -1, dtype=np.int64)]
        self.parts, self._built, self._pending, self._base_rows = [], 0, [vectors], len(keep)
        self._growing = None

    def _all_rows(self) -> np.ndarray:
        chunks = [p.all_rows() for p in self.parts] + [parts.values(self.layout, c) for c in self._pending]
        return np.concatenate(chunks) if chunks else np.empty((0, max(self.layout.dimension, 1)), np.float32)

    @property
    def pending_rows(self) -> int:
        """Rows applied and not yet in a part (held as float32 until then)."""
        return self.n_rows - self._built

    def flush(self, backend: Backend) -> None:
        """Index the pending rows now, into the part this builder grows (a big load never
        holds every row as float32, nor parts to merge later); not while every row must be
        indexed anew."""
        if self._pending and not self._rebuild:
            self._index_pending(backend)

    def _index_pending(self, backend: Backend) -> None:
        """The pending rows into parts: each stretch of vectors or of held codes grows the
        part this builder grows when it can take them, else starts a new one."""
        at = self._built
        for _, group in itertools.groupby(self._pending, lambda p: isinstance(p, Held)):
            data = parts.joined(list(group))
            rows = self.lists[at : at + len(data)]
            last = self.parts[-1] if self.parts and self.parts[-1] is self._growing else None
            grown = parts.extended(backend, self.layout, last, data, rows) if last is not None else None
            if grown is None:
                grown = parts.build(backend, self.layout, at, data, rows)
                self.parts.append(grown)
            else:
                self.parts[-1] = grown
            self._growing, at = grown, at + len(data)
        self._pending, self._built = [], self.n_rows

    # -- the next snapshot ----------------------------------------------------------------
    def freeze(self, backend: Backend | None) -> Snapshot:
        """The snapshot of everything applied; new rows go into a new part."""
        if self._rebuild and (self.parts or self._pending):
            self._pending, self.parts, self._built, self._growing = [self._all_rows()], [], 0, None
        if self._pending:
            assert backend is not None
            self._index_pending(backend)
        self._pending, self._built, self._rebuild = [], self.n_rows, False
        self._growing = None  # published: its parts never change again
        partial = None
        if self.runs is not None and any(r.missing() for r in self.runs):
            partial = Partial(tuple(self.runs), self.shadow)
        return Snapshot(
            self.layout,
            self.n_rows,
            self.live,
            self.ids,
            self.metadata,
            self.contents,
            self.alive[: self.n_rows],
            self.lists,
            self.latest,
            self.prev_ref,
            tuple(self.parts),
            self.centroids_name,
            partial,
            self.applied_seq,
            self.text.freeze() if self.text is not None else None,
        )


def _newest_rows(ids: list[str]) -> dict[str, int]:
    """id → its newest row, for a new lineage of rows."""
    return {key: row for row, key in enumerate(ids)}
