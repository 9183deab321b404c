"""The write path: rows sealed into immutable objects (segments, runs), committed to the
head by compare-and-swap, and adopted by this container's cache without a read-back."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np

from ..arrays.kernels import unit_norm
from ..codec import run, segment
from ..codec.segment import Coded, Held, Segment
from ..memory.cache import StateCache
from ..memory.lazy import READERS
from ..names import new_id
from ..store.heads import Committed, Head, Heads
from ..store.transactions import Append, Due, JobRules
from ..timing import stage
from .textparts import TextParts


class Writer:
    """Writes segments and runs of an index."""

    def __init__(self, heads: Heads, cache: StateCache) -> None:
        self.heads = heads
        self.cache = cache

    def segment(
        self,
        head: Head,
        seg: Segment,
        *,
        dimension: int | None = None,
        estimate: int = 0,
        rules: JobRules | None = None,
    ) -> Committed[Due]:
        """Write ``seg`` immutably, then commit it to the head (``transactions.Append``: an
        upsert's ``dimension`` checked, and with ``rules`` what the index's ``estimate`` rows
        make due marked); clean up if the commit fails. Returns the commit, once acknowledged."""
        name = f"seg/{new_id()}"
        precision = head.precision
        # Encoded once: the object's codes, and decoded from them the rows as every reader
        # holds them (this container's cache must hold the same values).
        coded = None
        if seg.vectors is not None and precision != "float32":
            coded = segment.coded(seg.vectors, precision)
        bare = seg if coded is None else replace(seg, vectors=None)
        written = self.heads.write_rows(head, name, bare, coded)
        op = Append(name, seg.kind, len(seg), dimension, estimate, rules)
        try:
            done = self.heads.commit(head, op)
        except BaseException:
            self.heads.store.delete(head.root + name)
            raise
        seg = written if coded is None else replace(written, vectors=coded.decode())
        self.cache.adopt(done.head, name, seg)
        return done

    def run(
        self,
        head: Head,
        name: str,
        rows: Segment,
        labels: np.ndarray,
        n_lists: int,
        *,
        coded: Coded | None = None,
        held: Held | None = None,
        unit: bool | None = None,
    ) -> None:
        """Write ``rows`` as run ``name``: one object per non-empty list (in parallel), then
        the directory. On failure nothing of it is left behind. ``coded``: the rows encoded
        already; ``held``: their codes in a trained index's memory, written beside them;
        ``unit``: whether every row has unit norm, if the caller knows."""
        assert rows.vectors is not None
        precision = head.precision
        if unit is None:
            unit = head.metric != "cosine" or unit_norm(rows.vectors)
        members = run.group(rows, labels, n_lists)
        # With full-text fields, the run's postings also go in text objects of their own
        # (what a cold text query reads instead of the lists), from the rows' terms
        # (analysed here, once, for rows written before terms were stored).
        text = TextParts(self.heads, head, name)
        bare = replace(rows.with_terms(text.fields), vectors=None, held=held)
        # Every row encoded in one call, then sliced per list: an encode per list object
        # (thousands at 10M rows) spent most of a tail merge waiting on BLAS's lock.
        coded = coded if coded is not None else segment.coded(rows.vectors, precision)
        directory = run.Directory(n_lists, tuple(len(m) for m in members), unit, precision)

        def put(k: int) -> None:
            self.heads.write_rows(head, run.list_name(name, k), bare.take(members[k]), coded.take(members[k]))

        try:
            with stage("io"), ThreadPoolExecutor(max_workers=READERS) as pool:
                list(pool.map(put, directory.lists()))
            text.add_all(bare, members)
            self.heads.write(head, name, replace(directory, text=text.finish()).to_json())
        except BaseException:
            self.heads.delete_all(head, [name])
            raise
