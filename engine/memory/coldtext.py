"""A text query on a partial snapshot: its own rows plus, for each run whose lists are not
all loaded, the postings of the run's text object (``codec/runtext.py``), so a cold
container ranks every live row without reading the lists' vectors.

Which rows of such a run are live is what loading its lists would leave live
(``Builder.apply_list``): a row of a loaded list is the snapshot's already (not counted
twice); a row whose id was written or deleted at or after the run (``Partial.shadow``), or
that a newer run's unloaded row holds, is not; and a snapshot row whose id an unloaded,
live row holds is superseded by it (that row is the newer: loading would replace it).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from ..codec.runtext import RunText
from .partial import PartialRun
from .textindex import Block, Source, TextView


class RunPostings:
    """A run's text object as searchable blocks, its ids' rows, where its lists start."""

    def __init__(self, text: RunText, rows_per_list: tuple[int, ...]) -> None:
        self.ids = text.ids
        self.n = len(text.ids)
        self.blocks: dict[str, tuple[Block, ...]] = {
            name: (Block(0, self.n, f.lengths, f.terms.astype(np.int64), f.ptr, f.rows, f.tf),)
            for name, f in text.fields.items()
        }
        self.vocab = {name: {t: i for i, t in enumerate(f.vocab)} for name, f in text.fields.items()}
        self.starts = np.zeros(len(rows_per_list) + 1, dtype=np.int64)
        np.cumsum(rows_per_list, out=self.starts[1:])
        if self.starts[-1] != self.n:
            raise ValueError("a run's text object does not hold its rows")
        self._index: dict[str, int] | None = None
        self._lock = threading.Lock()

    def row_of(self, key: str) -> int | None:
        """The run row of id ``key`` (a map built on first use)."""
        with self._lock:
            if self._index is None:
                self._index = dict(zip(self.ids, range(self.n), strict=True))
        return self._index.get(key)

    def list_of(self, row: int) -> int:
        return int(np.searchsorted(self.starts, row, side="right")) - 1

    def nbytes(self) -> int:
        return sum(b.nbytes() for blocks in self.blocks.values() for b in blocks) + 64 * self.n


def view(snap: Any, texts: dict[str, RunPostings]) -> tuple[TextView, list[tuple[PartialRun, RunPostings]]]:
    """The text view of partial snapshot ``snap`` (``texts``: the postings of every run with
    missing lists) and its run sources in order (view rows past ``snap.n_rows``)."""
    runs = sorted((r for r in snap.partial.runs if r.missing()), key=lambda r: r.seq, reverse=True)
    shadow: dict[str, int] = snap.partial.shadow
    newer: list[tuple[RunPostings, np.ndarray]] = []  # unloaded rows of newer runs, and which live
    for r in runs:
        t = texts[r.name]
        alive = np.ones(t.n, dtype=bool)
        for k in r.loaded:
            alive[t.starts[k] : t.starts[k + 1]] = False
        if len(shadow) < t.n:  # written or deleted since: whichever side is smaller is walked
            for key, seq in shadow.items():
                row = t.row_of(key) if seq >= r.seq else None
                if row is not None:
                    alive[row] = False
        else:
            seqs = np.fromiter((shadow.get(i, -1) for i in t.ids), dtype=np.int64, count=t.n)
            alive &= seqs < r.seq
        for other, live in newer:
            for j in np.flatnonzero(live).tolist():
                row = t.row_of(other.ids[j])
                if row is not None:
                    alive[row] = False
        newer.append((t, alive))
    own = snap.alive
    if snap.live:
        own = own.copy()
        for t, alive in newer:
            own[_superseded(snap, t, alive)] = False
    sources = [Source.of(snap, own)]
    offset = snap.n_rows
    for t, alive in newer:
        sources.append(Source(offset, alive, t.blocks, t.vocab))
        offset += t.n
    return TextView(sources), [(r, texts[r.name]) for r in runs]


def _superseded(snap: Any, t: RunPostings, alive: np.ndarray) -> list[int]:
    """Live snapshot rows whose id a live, unloaded row of run ``t`` holds."""
    live = snap.live_rows()
    if len(live) <= int(np.count_nonzero(alive)):
        out = []
        for r in live.tolist():
            j = t.row_of(snap.ids[r])
            if j is not None and alive[j]:
                out.append(r)
        return out
    found = (snap.row_of(t.ids[j]) for j in np.flatnonzero(alive).tolist())
    return [r for r in found if r is not None]


def locate(
    snap: Any, runs: list[tuple[PartialRun, RunPostings]], rows: np.ndarray
) -> tuple[list[str], list[tuple[PartialRun, int]]]:
    """The ids of view ``rows`` and the unloaded lists that hold those past the snapshot's."""
    ids, lists = [], {}
    for row in rows.tolist():
        if row < snap.n_rows:
            ids.append(snap.ids[row])
            continue
        row -= snap.n_rows
        for r, t in runs:
            if row < t.n:
                ids.append(t.ids[row])
                k = t.list_of(row)
                lists[(r.name, k)] = (r, k)
                break
            row -= t.n
    return ids, list(lists.values())
