"""The read cache: each index's current snapshot in this container (read-copy-update).

Readers take the current snapshot and search it with no lock held. Whatever changes an
index here — syncing to a newer head, this container's own writes, IVF lists loaded on
demand or in the background, a training's result — builds the next snapshot under that
index's writer lock and publishes it with one pointer swap. Cold trained indexes open
lazily; snapshots are evicted least-recently-used within a byte budget.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext, suppress
from typing import Any

from ..arrays.backend import Backend
from ..arrays.text import TextConfig
from ..codec import run, segment
from ..codec.segment import Segment
from ..store.heads import Head, Heads, Key
from ..store.manifest import SegmentRef
from ..timing import event, stage
from . import parts
from .lazy import FILL_BATCH, FILL_READERS, RUN_BATCH, InFlight, apply_lists, read_run
from .partial import PartialRun
from .parts import Layout, Part
from .state import Builder, Snapshot

log = logging.getLogger("ciphervec.cache")
BIG_ROWS = 1 << 20  # indexes this big merge parts of gigabytes: see ``big_heap``
FLUSH_ROWS = 1 << 19  # rows a load holds as float32 before it indexes them into a part
_OWN_THREAD_ROWS = 1 << 16  # a write this small is indexed on its request's thread alone
_COMPACT_ROWS = 4096  # states this big drop dead rows from memory once most rows are dead


class StateCache:
    """The current snapshot of each index, one writer at a time per index, LRU in bytes."""

    def __init__(
        self, heads: Heads, backend: Backend, *, cache_bytes: int = 8 << 30, lazy_rows: int = 50_000
    ) -> None:
        self.heads = heads
        self.backend = backend
        self.cache_bytes = cache_bytes
        self.lazy_rows = lazy_rows
        self._snaps: OrderedDict[Key, Snapshot] = OrderedDict()
        self._writers: dict[Key, threading.RLock] = {}
        self._fillers: dict[Key, threading.Thread] = {}
        self._mergers: dict[Key, threading.Thread] = {}
        self._guard = threading.Lock()  # the dicts above; held for O(1) steps only
        self.inflight = InFlight()  # list objects being read (a query and the fill share reads)
        self._trim_due = False  # a big merge freed parts: trim the heap when they are gone

    # -- lookups -----------------------------------------------------------------------
    def writer(self, key: Key) -> threading.RLock:
        """Held while building and publishing the next snapshot of one index (re-entrant: a
        writer may sync or load lists on its way)."""
        with self._guard:
            return self._writers.setdefault(key, threading.RLock())

    def current(self, key: Key) -> Snapshot | None:
        return self._snaps.get(key)

    def filler(self, key: Key) -> threading.Thread | None:
        """The background thread filling a partial snapshot of ``key``, if one was started."""
        return self._fillers.get(key)

    def merger(self, key: Key) -> threading.Thread | None:
        """The background thread merging the parts of ``key``, if one was started."""
        return self._mergers.get(key)

    def drop(self, key: Key) -> None:
        with self._guard:
            self._snaps.pop(key, None)

    def install(self, key: Key, snap: Snapshot) -> None:
        """Publish ``snap`` as the current snapshot of ``key`` (most recently used), then evict;
        parts out of shape are merged in the background."""
        if snap.n_rows >= BIG_ROWS:
            big_heap()
        with self._guard:
            self._snaps[key] = snap
            self._snaps.move_to_end(key)
            total = sum(s.nbytes() for s in self._snaps.values())
            while total > self.cache_bytes and len(self._snaps) > 1:
                _, old = self._snaps.popitem(last=False)
                total -= old.nbytes()
        if parts.next_merge(snap.parts) is not None:
            self._start(self._mergers, key, self._merge, "ciphervec-merge")

    def _start(self, table: dict[Key, threading.Thread], key: Key, target: Any, name: str) -> None:
        """Run ``target(key)`` in a background thread unless one is already running for it."""
        with self._guard:
            running = table.get(key)
            if running is not None and running.is_alive():
                return
            worker = threading.Thread(target=target, args=(key,), name=name, daemon=True)
            table[key] = worker
        worker.start()

    def _merge(self, key: Key) -> None:
        """Merge parts while a merge is due (``parts.next_merge``): each merged part is built
        with no lock held, then swapped in if those parts are still current."""
        while True:
            snap = self._snaps.get(key)
            due = parts.next_merge(snap.parts) if snap is not None else None
            if snap is None or due is None or self._merge_group(key, snap, *due) is None:
                del snap
                self._trim()
                return  # (a group changed meanwhile is planned again from the new snapshot)

    def _merge_group(self, key: Key, snap: Snapshot, start: int, end: int) -> bool | None:
        """Build one part from ``snap.parts[start:end]`` with no lock held and swap it in if
        those parts are still current: True if swapped, False if they changed meanwhile,
        None if the build failed (the rows stay searchable in the parts they are in)."""
        group = snap.parts[start:end]
        try:
            one = parts.merged(self.backend, snap.layout, list(group), snap.lists)
        except Exception as exc:
            log.warning("merging index parts stopped: %s", type(exc).__name__)
            return None
        with self.writer(key):
            current = self._snaps.get(key)
            if current is None or current.layout is not snap.layout or not _holds(current, start, group):
                return False
            merged = (*current.parts[:start], one, *current.parts[end:])
            with self._guard:
                if self._snaps.get(key) is current:
                    self._snaps[key] = current.with_parts(merged)
        event("part_merges")
        if end - start > 1 and one.n >= BIG_ROWS:
            self._trim_due = True  # once nothing holds the merged parts any more
        return True

    def _at(self, head: Head) -> Snapshot | None:
        """The current snapshot if it is at ``head`` (or past it), without any wait."""
        snap = self._snaps.get(head.key)
        if snap is None or snap.uid != head.envelope.uid:
            return None
        if snap.synced_etag != head.etag:
            names = [s.name for s in head.body.segments]
            if not (len(snap.applied) > len(names) and list(snap.applied[: len(names)]) == names):
                return None  # behind: it must be synced
        with self._guard:
            if head.key in self._snaps:
                self._snaps.move_to_end(head.key)
        return snap

    # -- reading ---------------------------------------------------------------------------
    def snapshot(self, head: Head, full: bool = True) -> Snapshot:
        """A snapshot at ``head``: the current one when it is there (no lock), else the next
        one synced to it. With ``full`` every row is loaded (a partial one loads its lists)."""
        snap = self._at(head)
        event("cache_hits" if snap is not None else "cache_misses")
        if snap is None:
            with self.writer(head.key):
                snap = self._at(head) or self._sync(head, full)
        if full and snap.partial is not None:
            todo = snap.partial.missing()
            for lo in range(0, len(todo), RUN_BATCH):  # a few hundred lists decoded at a time
                snap = self.load_lists(head, snap, todo[lo : lo + RUN_BATCH])
        return snap

    def load_lists(self, head: Head, snap: Snapshot, todo: list[tuple[PartialRun, int]]) -> Snapshot:
        """``snap`` with lists ``todo`` loaded: read with no lock held, then published."""
        if not todo:
            return snap
        got = self.inflight.fetch(self.heads, head, [(r.name, k) for r, k in todo], held=snap.layout.held)
        event("lists_loaded", len(got))
        with self.writer(head.key):
            current = self._snaps.get(head.key)
            base = current if current is not None and current.uid == snap.uid else snap
            if base.partial is None:
                return base
            builder = Builder(base.layout, base)
            with _undone_on_failure(builder):
                apply_lists(builder, got)
                new = self._publish(head.key, builder, base, current)
        return new

    def _publish(self, key: Key, builder: Builder, base: Snapshot, current: Snapshot | None) -> Snapshot:
        """Freeze ``builder`` (grown from ``base``) under ``base``'s bookkeeping; it becomes
        current unless something else replaced ``current`` meanwhile."""
        new = builder.freeze(self.backend).with_bookkeeping(
            uid=base.uid, applied=base.applied, synced_etag=base.synced_etag
        )
        if current is None or current is base:
            self.install(key, new)
        return new

    # -- syncing (writer lock held) -----------------------------------------------------------
    def _sync(self, head: Head, full: bool) -> Snapshot:
        """The next snapshot at ``head``: new segments applied to the current one, or a
        fresh one (lazy for a big trained index unless ``full``)."""
        key, uid = head.key, head.envelope.uid
        if sum(r.rows for r in head.body.segments) >= BIG_ROWS:
            big_heap()  # before its buffers are allocated
        current = self._snaps.get(key)
        if current is not None and head.body.renamed and current.partial is None:
            current = _renamed(current, head.body.renamed)  # re-encrypted: the same rows
        names = [s.name for s in head.body.segments]
        if (
            current is not None
            and current.uid == uid
            and names[: len(current.applied)] == list(current.applied)
        ):
            builder, applied = Builder(current.layout, current), list(current.applied)
        else:
            builder, applied = self._fresh(head, full), []
        with _undone_on_failure(builder):
            todo = head.body.segments[len(applied) :]
            lazy = builder.runs is not None  # runs open by their directory; lists come later

            def read(ref: SegmentRef) -> Any:
                if ref.kind != "run":
                    return self.heads.read(head, ref.name)
                return (
                    self.heads.read_directory(head, ref.name)
                    if lazy
                    else read_run(self.heads, head, ref.name, held=builder.layout.held)
                )

            if todo:
                with ThreadPoolExecutor(max_workers=min(8, len(todo))) as pool:
                    fetched = pool.map(read, todo)  # each released once applied
                    for ref in todo:
                        with stage("io"):
                            got = next(fetched)
                        _apply(builder, ref, got, self.backend)
                        applied.append(ref.name)
            cent = head.body.centroids
            if (cent.name if cent else None) != builder.centroids_name:
                trained = self.heads.read_centroids(head, cent) if cent else None
                builder.set_centroids(cent.name if cent else None, trained)
            loaded_whole = builder.runs is None or not any(r.missing() for r in builder.runs)
            if loaded_whole and builder.n_rows > _COMPACT_ROWS and builder.live < builder.n_rows / 2:
                builder.compact()  # overwrites and deletes: drop dead rows from memory
            snap = builder.freeze(self.backend).with_bookkeeping(
                uid=uid, applied=tuple(applied), synced_etag=head.etag
            )
            self.install(key, snap)
            return snap

    def _fresh(self, head: Head, full: bool) -> Builder:
        """An empty builder for ``head``; a trained index whose base is a run gets its
        centroids first (rows keep the run's lists) and, unless ``full``, opens its runs
        lazily: only their directories are read, lists come later."""
        cfg, cent, refs = head.body.config, head.body.centroids, head.body.segments
        layout = Layout(int(cfg["dimension"]), cfg["metric"], head.precision, text=TextConfig.fields_of(cfg))
        builder = Builder(layout)
        if cent is None or not refs or refs[0].kind != "run":
            return builder
        builder.set_centroids(cent.name, self.heads.read_centroids(head, cent))
        if not full and self.lazy_rows and sum(r.rows for r in refs if r.kind == "run") >= self.lazy_rows:
            builder.runs = []  # runs below open lazily
        return builder

    # -- background fill ----------------------------------------------------------------
    def fill_later(self, head: Head) -> None:
        """Load the rest of a partial snapshot in a background thread, a few lists at a
        time, taking the writer lock only to publish what was read."""
        self._start(self._fillers, head.key, lambda key: self._fill(head), "ciphervec-fill")

    def _fill(self, head: Head) -> None:
        started = time.perf_counter()
        if self._fill_lists(head):  # (its snapshots' parts are gone with its frame)
            self._consolidate(head.key)
        log.debug("index lists loaded in the background in %.2f s", time.perf_counter() - started)

    def _fill_lists(self, head: Head) -> bool:
        """Load the missing lists a few at a time; False if a read failed."""
        key, uid = head.key, head.envelope.uid
        while True:
            with self.writer(key):  # plan the next batch between writers
                snap = self._snaps.get(key)
                if snap is None or snap.uid != uid or snap.partial is None:
                    return True
                todo = [(r.name, k) for r, k in snap.partial.missing()[:FILL_BATCH]]
                held = snap.layout.held
            try:
                got = self.inflight.fetch(self.heads, head, todo, FILL_READERS, held)
            except Exception as exc:  # the next full read reports it to its caller
                log.warning("background load of index lists stopped: %s", type(exc).__name__)
                return False
            with self.writer(key):
                current = self._snaps.get(key)
                if current is None or current.uid != uid or current.partial is None:
                    return True
                builder = Builder(current.layout, current)
                with _undone_on_failure(builder):
                    apply_lists(builder, got)
                    self._publish(key, builder, current, current)

    def _consolidate(self, key: Key) -> None:
        """Merge a whole snapshot's parts into as few as ``parts.MERGE_BYTES`` allows
        (consecutive groups, right to left, so that the groups left of a merge keep their
        places). A fill publishes a part per few lists, which tiered merging leaves as many
        parts of uneven sizes; each part is one more IVF scan per query."""
        merging = self._mergers.get(key)
        if merging is not None:
            merging.join()  # its tier merges first, so that the parts below are the last word
        snap = self._snaps.get(key)
        groups = parts.packed(snap.parts) if snap is not None and snap.partial is None else []
        del snap, merging
        for start, end in reversed(groups):
            current = self._snaps.get(key)  # written meanwhile: its new parts are at the end
            if end - start > 1 and (current is None or not self._merge_group(key, current, start, end)):
                break
        self._trim()

    def _trim(self) -> None:
        """Give freed memory back after a big merge (``release_memory``)."""
        if self._trim_due:
            self._trim_due = False
            release_memory()

    # -- this container's own writes ------------------------------------------------------
    def adopt(self, committed: Head, name: str, seg: Segment) -> None:
        """Apply a segment this container just committed as the last of ``committed``, when
        the current snapshot is right before it, so the next request does not read it back."""
        refs = committed.body.segments
        key = committed.key
        with self.writer(key):
            current = self._snaps.get(key)
            if current is None or current.uid != committed.envelope.uid or not refs or refs[-1].name != name:
                return
            if len(refs) != len(current.applied) + 1 or [r.name for r in refs[:-1]] != list(current.applied):
                return
            builder = Builder(current.layout, current)
            # A request's own rows: the other core serves other requests (as a search does),
            # and an idle OpenMP team spinning after each small add costs more than it saves.
            one = len(seg) <= _OWN_THREAD_ROWS
            with _undone_on_failure(builder), self.backend.threads(1) if one else nullcontext():
                builder.apply(seg, refs[-1].seq)
                new = builder.freeze(self.backend).with_bookkeeping(
                    uid=current.uid, applied=(*current.applied, name), synced_etag=committed.etag
                )
            self.install(key, new)

    def replace(self, committed: Head, build: Callable[[], Builder], applied: list[str]) -> None:
        """Publish the snapshot ``build()`` makes (from nothing) as having applied ``applied``;
        the old one is dropped first so its rows can be released while the new one is built."""
        key = committed.key
        with self.writer(key):
            self.drop(key)
            snap = build().freeze(self.backend)
            self.install(key, snap.with_bookkeeping(uid=committed.envelope.uid, applied=tuple(applied)))

    def rename(self, key: Key, base: list[str], old: list[str], new: list[str]) -> None:
        """Segments ``old`` (applied right after ``base``) were rewritten as ``new`` holding
        the same rows: rename them in the applied list, keeping the rows."""
        with self.writer(key):
            current = self._snaps.get(key)
            if current is not None and list(current.applied[: len(base) + len(old)]) == base + old:
                applied = (*base, *new, *current.applied[len(base) + len(old) :])
                self.install(key, current.with_bookkeeping(applied=applied))


def release_memory() -> None:
    """Give the heap's free pages back to the system (glibc's ``malloc_trim``; elsewhere
    nothing), after merges: merged parts free many mid-sized faiss buffers, which the
    allocator otherwise keeps for the process's life."""
    with suppress(OSError, AttributeError):
        _libc().malloc_trim(0)


@functools.cache
def big_heap() -> None:
    """Once a container holds an index of ``BIG_ROWS`` rows or more: allocations of 128 KiB
    and more (a list's codes, a decoded list) are mapped on their own and unmapped when
    freed, as glibc does until its first such free raises the bar to 32 MiB. Merges of big
    parts free gigabytes of such buffers that the heap would otherwise keep (a 10M-row tq8
    fill ended at 10-11.7 GB RSS, 5.9 GB with this; and a list's spare capacity after its
    appends is never touched, so never resident). Not for small indexes: each request's
    buffers then cost a map and unmap (a third more server CPU per upsert at 50k rows)."""
    with suppress(OSError, AttributeError):
        _libc().mallopt(_M_MMAP_THRESHOLD, 1 << 17)


@functools.cache
def _libc() -> Any:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


_M_MMAP_THRESHOLD = -3  # glibc's malloc.h


def _apply(builder: Builder, ref: SegmentRef, got: Any, backend: Any) -> None:
    """Apply what was read for ``ref``: a segment's bytes, a lazy run's directory, or a run's
    lists (indexed into a part every ``FLUSH_ROWS`` rows)."""
    if isinstance(got, bytes):
        with stage("decode"):
            rows = segment.decode(got)
        builder.apply(rows, ref.seq)
        if builder.pending_rows >= FLUSH_ROWS:
            builder.flush(backend)
    elif isinstance(got, run.Directory):
        builder.open_run(ref.name, ref.seq, got)
    else:
        for k, rows in got:
            builder.apply(rows, ref.seq, ivf_list=k)
            if builder.pending_rows >= FLUSH_ROWS:
                builder.flush(backend)


def _renamed(snap: Snapshot, names: dict[str, str]) -> Snapshot:
    """``snap`` with objects rewritten under new names (``HeadBody.renamed``) renamed in its
    bookkeeping. Not for a partial snapshot: its runs read their lists by the old names."""
    applied = tuple(names.get(n, n) for n in snap.applied)
    cent = snap.centroids_name
    cent = names.get(cent, cent) if cent else cent
    if applied == snap.applied and cent == snap.centroids_name:
        return snap
    return snap.with_bookkeeping(applied=applied, centroids_name=cent)


def _holds(snap: Snapshot, at: int, group: tuple[Part, ...]) -> bool:
    """``snap`` still has exactly the parts ``group`` from position ``at`` on."""
    here = snap.parts[at : at + len(group)]
    return len(here) == len(group) and all(a is b for a, b in zip(here, group, strict=True))


@contextmanager
def _undone_on_failure(builder: Builder) -> Iterator[Builder]:
    """A build that fails takes back its changes to the id map its base shares."""
    try:
        yield builder
    except BaseException:
        builder.undo()
        raise
