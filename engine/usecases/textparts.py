"""A run's text objects, written as its lists are: one per ``PART_ROWS`` rows or so, each
ending where a list ends (``codec/runtext.py``); what the run's directory lists."""

from __future__ import annotations

import numpy as np

from ..arrays.text import TextConfig
from ..codec import terms as terms_codec
from ..codec.runtext import text_name
from ..codec.segment import Segment
from ..codec.terms import Terms
from ..memory.textindex import run_text
from ..store.heads import Head, Heads

# Rows per text object: each is grouped by term in memory at once (a few hundred MB at a
# million rows of sentences), and a cold container reads them in parallel.
PART_ROWS = 1 << 20


class TextParts:
    """The text objects of run ``name``, fed its lists in order; nothing for an index
    without full-text fields."""

    def __init__(self, heads: Heads, head: Head, name: str) -> None:
        self.heads, self.head, self.name = heads, head, name
        self.fields = TextConfig.fields_of(head.body.config)
        self.sizes: list[int] = []
        self._pending: list[tuple[list[str], Terms]] = []
        self._rows = 0

    def add(self, ids: list[str], terms: Terms | None) -> None:
        """The rows of the run's next list, as written (their terms of every field)."""
        if not self.fields or not ids:
            return
        assert terms is not None  # rows are written with the terms of every field
        self._pending.append((ids, {f: terms[f].pruned() for f in self.fields}))
        self._rows += len(ids)
        if self._rows >= PART_ROWS:
            self.flush()

    def add_all(self, rows: Segment, members: list[np.ndarray]) -> None:
        """Every list at once: list k is rows ``members[k]`` of ``rows`` (whose terms share
        one vocabulary, so each object takes its rows without merging vocabularies)."""
        if not self.fields:
            return
        assert rows.terms is not None
        terms = {f: rows.terms[f] for f in self.fields}
        start, held = 0, 0
        for k, m in enumerate(members):
            held += len(m)
            if held and (held >= PART_ROWS or k == len(members) - 1):
                self._write(rows.ids, terms, np.concatenate(members[start : k + 1]))
                start, held = k + 1, 0

    def flush(self) -> None:
        if self._pending:
            ids = [i for got, _ in self._pending for i in got]
            terms = terms_codec.concat([t for _, t in self._pending])
            self._write(ids, terms, np.arange(len(ids)))

    def finish(self) -> tuple[int, ...]:
        """The rows of each object written (the directory's ``text``)."""
        self.flush()
        return tuple(self.sizes)

    def _write(self, ids: list[str], terms: Terms, order: np.ndarray) -> None:
        text = run_text(ids, terms, order)
        self.heads.write(self.head, text_name(self.name, len(self.sizes)), text.encode())
        self.sizes.append(len(order))
        self._pending, self._rows = [], 0
