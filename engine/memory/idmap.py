"""IdMap: each id's newest row in a snapshot, as levels of dicts that never change once published.

A snapshot's ``IdMap`` is a tuple of plain dicts, newest first, each at least ``RATIO``
times smaller than the one after it. A ``IdMapBuilder`` (one per snapshot builder, under
the index's writer lock) writes only into a dict of its own, the *tip*; ``freeze`` puts
the tip in front of the published levels and merges neighbours while a newer level is
more than a quarter of the one after it — into a new dict, so a level a published map
holds is never written again (a log-structured merge: each entry is copied about
log4(n / write) times; a load into an empty map hands its tip over without a copy).

Readers of any snapshot therefore read only dicts nobody writes: safe without the GIL,
with no walking back past rows written after the snapshot, and a build that fails leaves
nothing to undo (its tip is dropped with it).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import numpy as np

RATIO = 4  # a level merges into the next while it holds more than 1/RATIO of that one's entries


class IdMap:
    """id -> newest row of one snapshot (levels newest first, never written once published)."""

    __slots__ = ("levels",)

    def __init__(self, levels: tuple[dict[str, int], ...] = ()) -> None:
        self.levels = levels

    def get(self, key: str, default: int = -1) -> int:
        for level in self.levels:
            row = level.get(key)
            if row is not None:
                return row
        return default

    def rows(self, keys: list[str]) -> np.ndarray:
        """``get`` of each of ``keys`` (int64, -1 where absent)."""
        out = np.full(len(keys), -1, dtype=np.int64)
        at, todo = None, keys  # ``todo``: the keys not found yet (``at``: their places; None: all)
        for level in self.levels:
            if not level:
                continue
            got = np.fromiter(map(level.get, todo, itertools.repeat(-1)), dtype=np.int64, count=len(todo))
            hit = got >= 0
            if not hit.any():
                continue
            if at is None:
                out[hit] = got[hit]
                at = np.flatnonzero(~hit)
            else:
                out[at[hit]] = got[hit]
                at = at[~hit]
            if not len(at):
                break
            todo = [keys[i] for i in at.tolist()]
        return out

    def entries(self) -> int:
        """Entries over all levels (an id in two levels counts twice): for size estimates."""
        return sum(len(level) for level in self.levels)

    @staticmethod
    def of(ids: Iterable[str]) -> IdMap:
        """The map of a fresh lineage of rows: row ``i`` holds ``ids[i]`` (the last wins)."""
        return IdMap(({key: row for row, key in enumerate(ids)},))


class IdMapBuilder:
    """The next snapshot's id map: the published levels of its base, read-only, and a tip
    of this builder's own that it writes in place."""

    def __init__(self, base: IdMap | None = None) -> None:
        self.levels = base.levels if base is not None else ()
        self.tip: dict[str, int] = {}

    def get(self, key: str, default: int = -1) -> int:
        row = self.tip.get(key)
        if row is not None:
            return row
        for level in self.levels:
            row = level.get(key)
            if row is not None:
                return row
        return default

    def rows(self, keys: list[str]) -> np.ndarray:
        return IdMap((self.tip, *self.levels)).rows(keys)

    def set(self, key: str, row: int) -> None:
        self.tip[key] = row

    def update(self, pairs: Iterable[tuple[str, int]]) -> None:
        self.tip.update(pairs)

    def freeze(self) -> IdMap:
        """The map of everything set so far, published: the tip joins the levels (merged as
        the module docstring says) and this builder starts a new tip."""
        if not self.tip:
            return IdMap(self.levels)
        own, levels = self.tip, list(self.levels)
        self.tip = {}
        while levels and len(own) * RATIO > len(levels[0]):
            own = _merged(own, levels.pop(0))
        self.levels = (own, *levels)
        return IdMap(self.levels)


def _merged(newer: dict[str, int], older: dict[str, int]) -> dict[str, int]:
    """One dict of ``newer`` over ``older``, never writing ``older`` (published). ``newer``
    is the builder's own (a tip or a merge it made), so it may take ``older``'s other
    entries in place when it is the bigger of the two."""
    if len(newer) >= len(older):
        newer.update((k, older[k]) for k in older.keys() - newer.keys())
        return newer
    merged = dict(older)
    merged.update(newer)
    return merged
