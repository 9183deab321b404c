"""A text query on a partial snapshot: its own rows plus, for each run whose lists are not
all loaded, the postings of the run's text objects (``codec/runtext.py``), so a cold
container ranks every live row without reading the lists' vectors.

Which rows of such a run are live is what loading its lists would leave live
(``Builder.apply_list``): a row of a loaded list is the snapshot's already (not counted
twice); a row whose id was written or deleted at or after the run (``Partial.shadow``), or
that a newer run's unloaded row holds, is not; and a snapshot row whose id an unloaded,
live row holds is superseded by it (that row is the newer: loading would replace it).
"""

from __future__ import annotations

import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..codec.run import Directory
from ..codec.runtext import RunText, text_name
from ..errors import CorruptObject
from ..store.heads import Head, Heads
from ..timing import event
from .cache import StateCache
from .lazy import READERS
from .partial import PartialRun
from .textindex import Block, Source, TextView


@dataclass(frozen=True, eq=False)
class TextPart:
    """One text object of a run: its rows' postings (rows from 0) and term ids per field."""

    start: int  # its first row, in run order
    n: int
    blocks: dict[str, tuple[Block, ...]]
    vocab: dict[str, dict[str, int]]

    @staticmethod
    def of(start: int, text: RunText) -> TextPart:
        n = len(text.ids)
        blocks: dict[str, tuple[Block, ...]] = {
            name: (Block(0, n, f.lengths, f.terms.astype(np.int64), f.ptr, f.rows, f.tf),)
            for name, f in text.fields.items()
        }
        vocab = {name: {t: i for i, t in enumerate(f.vocab)} for name, f in text.fields.items()}
        return TextPart(start, n, blocks, vocab)


class RunPostings:
    """A run's text objects as searchable parts, its ids' rows, where its lists start."""

    def __init__(self, texts: list[RunText], directory: Directory) -> None:
        self.ids = [i for t in texts for i in t.ids]
        self.n = len(self.ids)
        self.parts, start = [], 0
        for t, size in zip(texts, directory.text, strict=True):
            if len(t.ids) != size:
                raise ValueError("a text object does not hold the rows its run's directory says")
            self.parts.append(TextPart.of(start, t))
            start += size
        self.starts = np.zeros(len(directory.rows) + 1, dtype=np.int64)
        np.cumsum(directory.rows, out=self.starts[1:])
        if self.starts[-1] != self.n:
            raise ValueError("a run's text objects do not hold its rows")
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
        own = sum(b.nbytes() for p in self.parts for blocks in p.blocks.values() for b in blocks)
        return own + 64 * self.n


def text_view(cache: StateCache, head: Head, snap: Any) -> tuple[Any, TextView, list[Any]] | None:
    """What a text query searches on partial snapshot ``snap`` (or the current one, its
    successor) without loading its lists: that snapshot, its view and its run sources
    (``view``); None where a run with missing lists has no usable text objects (the caller
    then loads the lists). Each run's objects are read once and shared by the snapshots of
    its partial state.

    The view is computed under the index's writer lock, on the current snapshot: the
    shadow map is shared by successive snapshots and grown by whoever builds the next one,
    so only then does it say exactly what that snapshot's writes shadow."""
    runs = [r for r in snap.partial.runs if r.missing()]
    if not all(r.directory.text for r in runs):
        return None

    def load(r: PartialRun) -> RunPostings | None:
        return r.text.get(lambda: _read(cache.heads, head, r))

    with ThreadPoolExecutor(max_workers=max(1, min(8, len(runs)))) as pool:
        got = list(pool.map(load, runs))
    if any(g is None for g in got):
        return None
    texts = {r.name: g for r, g in zip(runs, got, strict=True) if g is not None}
    with cache.writer(head.key):
        current = cache.current(head.key)
        if current is None or current.uid != snap.uid or current.partial is None:
            return None  # loaded whole, dropped or replaced meanwhile: the caller loads it
        if any(r.name not in texts for r in current.partial.runs if r.missing()):
            return None
        return current, current.cached("text-view", lambda: view(current, texts)), _runs(current, texts)


def _runs(snap: Any, texts: dict[str, RunPostings]) -> list[tuple[PartialRun, RunPostings]]:
    """The runs with missing lists, newest first (the order of their sources in ``view``)."""
    runs = sorted((r for r in snap.partial.runs if r.missing()), key=lambda r: r.seq, reverse=True)
    return [(r, texts[r.name]) for r in runs]


def _read(heads: Heads, head: Head, r: PartialRun) -> RunPostings | None:
    """Run ``r``'s text objects, read in parallel and opened (None: of another analyzer)."""

    def one(g: int) -> RunText | None:
        raw = heads.read(head, text_name(r.name, g))
        try:
            return RunText.decode(raw)
        except (ValueError, KeyError, TypeError, struct.error) as exc:
            raise CorruptObject(f"text object {g} of run {r.name!r} is malformed") from exc

    with ThreadPoolExecutor(max_workers=max(1, min(READERS, len(r.directory.text)))) as pool:
        texts = list(pool.map(one, range(len(r.directory.text))))
    event("run_texts_loaded", len(texts))
    if any(t is None for t in texts):
        return None
    try:
        return RunPostings([t for t in texts if t is not None], r.directory)
    except ValueError as exc:
        raise CorruptObject(f"the text objects of run {r.name!r} do not match it") from exc


def view(snap: Any, texts: dict[str, RunPostings]) -> TextView:
    """The text view of partial snapshot ``snap`` (``texts``: the postings of every run with
    missing lists; their sources follow the snapshot's rows in ``_runs`` order). Call it
    with the index's writer lock held and ``snap`` current (``text_view``)."""
    shadow: dict[str, int] = snap.partial.shadow
    newer: list[tuple[RunPostings, np.ndarray]] = []  # unloaded rows of newer runs, and which live
    for r, t in _runs(snap, texts):
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
        for p in t.parts:
            sources.append(Source(offset + p.start, alive[p.start : p.start + p.n], p.blocks, p.vocab))
        offset += t.n
    return TextView(sources)


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
