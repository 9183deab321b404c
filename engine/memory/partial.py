"""The runs of a partial snapshot: which of their IVF lists are loaded, and the ids whose
newer writes shadow the rows those lists still hold (``state.py``)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..codec.run import Directory


class Memo:
    """A value computed on first use, then shared by every snapshot holding this memo (a
    run's text postings: successive snapshots of one partial state share their runs')."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done = False
        self._value: Any = None

    def get(self, compute: Callable[[], Any]) -> Any:
        with self._lock:  # one computes; the others wait for its value
            if not self._done:
                self._value, self._done = compute(), True
            return self._value

    def peek(self) -> Any:
        """The value if computed (None if not)."""
        return self._value


@dataclass(frozen=True)
class PartialRun:
    """One run of a partial state: which of its lists are loaded."""

    name: str
    seq: int
    directory: Directory
    loaded: frozenset[int] = frozenset()
    text: Memo = field(default_factory=Memo, compare=False, repr=False)  # its text postings, once read

    def missing(self, lists: Any = None) -> list[int]:
        """Non-empty lists (of ``lists``, default all) not loaded yet, ascending."""
        pick = range(self.directory.n_lists) if lists is None else sorted({int(k) for k in lists})
        rows = self.directory.rows
        return [k for k in pick if k < len(rows) and rows[k] and k not in self.loaded]


@dataclass(frozen=True, eq=False)
class Partial:
    """The runs of a state whose lists load on demand, and what shadows their rows."""

    runs: tuple[PartialRun, ...] = ()
    # id -> sequence number of its newest write or delete applied so far; read and grown
    # only by writers (one at a time), so successive snapshots share it
    shadow: dict[str, int] = field(default_factory=dict)

    def missing(self, lists: Any = None) -> list[tuple[PartialRun, int]]:
        """``(run, list)`` pairs not loaded yet (of ``lists``, default all)."""
        return [(r, k) for r in self.runs for k in r.missing(lists)]

    def unloaded_rows(self) -> int:
        return sum(r.directory.rows[k] for r, k in self.missing())
