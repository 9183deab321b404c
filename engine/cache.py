"""The read cache: each index's decrypted state in this container, brought up to a head
(applying only segments it has not seen; cold trained indexes open lazily), filled in the
background, adopted from this container's own writes, and evicted least-recently-used."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from . import run, segment
from .heads import Head, Heads, Key
from .lazy import FILL_BATCH, FILL_READERS, apply_lists, fetch_lists, load_lists, read_run
from .manifest import SegmentRef
from .segment import Segment
from .state import IndexState, Partial

log = logging.getLogger("ciphervec.cache")


class Entry:
    """A cached state: the index incarnation it belongs to and the segments applied to it."""

    __slots__ = ("applied", "state", "uid")

    def __init__(self, uid: str, state: IndexState, applied: list[str]) -> None:
        self.uid, self.state, self.applied = uid, state, applied


class StateCache:
    """Decrypted index states per container, one lock per index, LRU-bounded in bytes."""

    def __init__(self, heads: Heads, *, cache_bytes: int = 8 << 30, lazy_rows: int = 50_000) -> None:
        self.heads = heads
        self.cache_bytes = cache_bytes
        self.lazy_rows = lazy_rows
        self._entries: OrderedDict[Key, Entry] = OrderedDict()
        self._locks: dict[Key, threading.RLock] = {}
        self._fillers: dict[Key, threading.Thread] = {}
        self._guard = threading.Lock()

    # -- lookups -----------------------------------------------------------------------
    def lock(self, key: Key) -> threading.RLock:
        """The lock held while reading or changing the state of one index."""
        with self._guard:
            return self._locks.setdefault(key, threading.RLock())

    def entry(self, key: Key) -> Entry | None:
        return self._entries.get(key)

    def filler(self, key: Key) -> threading.Thread | None:
        """The background thread filling a partial state of ``key``, if one was started."""
        return self._fillers.get(key)

    def drop(self, key: Key) -> None:
        with self._guard:
            self._entries.pop(key, None)

    def acquire(self, head: Head, full: bool = True) -> tuple[IndexState, threading.RLock]:
        """Lock the index and bring its state up to ``head``; the caller releases the lock.
        ``full=False`` accepts a partial state (the caller loads the lists it needs)."""
        lock = self.lock(head.key)
        lock.acquire()
        try:
            return self.sync(head, full), lock
        except BaseException:
            lock.release()
            raise

    # -- syncing -----------------------------------------------------------------------
    def sync(self, head: Head, full: bool = True) -> IndexState:
        """Bring the cached state up to ``head``; with ``full``, load every row (a partial
        state loads its missing lists now)."""
        state = self._sync_rows(head, full)
        if full and state.partial is not None:
            load_lists(self.heads, head, state, state.partial.missing())
        return state

    def _sync_rows(self, head: Head, full: bool) -> IndexState:
        """Apply new segments to the cached state, or rebuild it (lazily when allowed)."""
        key = head.key
        with self._guard:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
        if entry is not None and entry.uid == head.envelope.uid and entry.state.synced_etag == head.etag:
            return entry.state  # already at this head: the common case of a read
        names = [s.name for s in head.body.segments]
        same = entry is not None and entry.uid == head.envelope.uid
        if (
            same
            and entry is not None
            and len(entry.applied) > len(names)
            and entry.applied[: len(names)] == names
        ):
            return entry.state  # another request already applied a newer head
        if same and entry is not None and names[: len(entry.applied)] == entry.applied:
            state, applied = entry.state, entry.applied
        else:
            state, applied = self._fresh_state(head, full), []
        todo = head.body.segments[len(applied) :]
        lazy = state.partial is not None  # runs open by their directory; lists come later

        def read(ref: SegmentRef) -> Any:
            if ref.kind != "run":
                return self.heads.read(head, ref.name)
            return self.heads.read_directory(head, ref.name) if lazy else read_run(self.heads, head, ref.name)

        if todo:
            with ThreadPoolExecutor(max_workers=min(8, len(todo))) as pool:
                for ref, got in zip(todo, pool.map(read, todo), strict=True):
                    if isinstance(got, bytes):
                        state.apply(segment.decode(got), ref.seq)
                    elif isinstance(got, run.Directory):
                        state.open_run(ref.name, ref.seq, got)
                    else:
                        for k, rows in got:
                            state.apply(rows, ref.seq, ivf_list=k)
                    applied.append(ref.name)
        if state.partial is not None and not state.partial.missing():
            state.partial = None
        cent = head.body.centroids
        if (cent.name if cent else None) != state.centroids_name:
            if cent is None:
                state.set_centroids(None, None)
            else:
                state.set_centroids(cent.name, self.heads.read_centroids(head, cent.name))
        if state.n_rows > 4096 and state.dead_fraction > 0.5 and state.partial is None:
            state.compact()  # overwrites and deletes: drop dead rows from memory
        state.synced_etag = head.etag
        self.install(key, Entry(head.envelope.uid, state, applied))
        return state

    def _fresh_state(self, head: Head, full: bool) -> IndexState:
        """An empty state for ``head``; a trained index whose base is a run gets its
        centroids first (rows keep the run's lists) and, unless ``full``, opens its runs
        lazily: only their directories are read, lists come later."""
        cfg, cent, refs = head.body.config, head.body.centroids, head.body.segments
        state = IndexState(int(cfg["dimension"]), head.precision, cfg["metric"])
        if cent is None or not refs or refs[0].kind != "run":
            return state
        state.set_centroids(cent.name, self.heads.read_centroids(head, cent.name))
        if not full and self.lazy_rows and sum(r.rows for r in refs if r.kind == "run") >= self.lazy_rows:
            state.partial = Partial()  # runs below open lazily
        return state

    def install(self, key: Key, entry: Entry) -> None:
        """Make ``entry`` the cached state of ``key`` (most recently used), then evict."""
        with self._guard:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            self._evict()

    def _evict(self) -> None:
        total = sum(e.state.nbytes() for e in self._entries.values())
        while total > self.cache_bytes and len(self._entries) > 1:
            _, entry = self._entries.popitem(last=False)
            total -= entry.state.nbytes()

    # -- background fill ----------------------------------------------------------------
    def fill_later(self, head: Head, state: IndexState) -> None:
        """Load the rest of a partial state in a background thread, a few lists at a time,
        taking the index lock only to apply what was read."""
        key = head.key
        with self._guard:
            running = self._fillers.get(key)
            if running is not None and running.is_alive():
                return
            worker = threading.Thread(
                target=self._fill, args=(head, state), name="ciphervec-fill", daemon=True
            )
            self._fillers[key] = worker
        worker.start()

    def _fill(self, head: Head, state: IndexState) -> None:
        key = head.key
        lock = self.lock(key)
        started = time.perf_counter()
        while True:
            with lock:
                entry = self._entries.get(key)
                partial = state.partial
                if entry is None or entry.state is not state or partial is None:
                    break
                todo = [(r.name, k) for r, k in partial.missing()[:FILL_BATCH]]
            try:
                got = fetch_lists(self.heads, head, todo, FILL_READERS)
            except Exception as exc:  # the next full read reports it to its caller
                log.warning("background load of index lists stopped: %s", type(exc).__name__)
                return
            with lock:
                apply_lists(state, partial, got)
                if state.partial is None:
                    with self._guard:
                        self._evict()
        log.debug("index lists loaded in the background in %.2f s", time.perf_counter() - started)

    # -- this container's own writes ------------------------------------------------------
    def adopt(self, committed: Head, name: str, seg: Segment) -> None:
        """Apply a segment this container just committed as the last of ``committed``, when
        the state is right before it, so the next request does not read it back."""
        refs = committed.body.segments
        with self.lock(committed.key):
            entry = self._entries.get(committed.key)
            if entry is None or entry.uid != committed.envelope.uid or not refs or refs[-1].name != name:
                return
            if len(refs) != len(entry.applied) + 1 or [r.name for r in refs[:-1]] != entry.applied:
                return
            entry.state.apply(seg, refs[-1].seq)
            entry.applied.append(name)
            entry.state.synced_etag = committed.etag

    def replace(self, committed: Head, build: Any, applied: list[str]) -> None:
        """Drop the state of ``committed``'s index (releasing its rows), then install the one
        ``build()`` returns as having applied ``applied``."""
        with self.lock(committed.key):
            self.drop(committed.key)
            self.install(committed.key, Entry(committed.envelope.uid, build(), applied))

    def rename(self, key: Key, base: list[str], old: list[str], new: list[str]) -> None:
        """Segments ``old`` (applied right after ``base``) were rewritten as ``new`` holding
        the same rows: rename them in the applied list, keeping the state."""
        with self.lock(key):
            entry = self._entries.get(key)
            if entry is not None and entry.applied[: len(base) + len(old)] == base + old:
                entry.applied[len(base) : len(base) + len(old)] = new
