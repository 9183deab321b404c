"""Out-of-core training: an index too big to hold as float32 rows, trained from its stored
objects in passes, holding a k-means sample, a few numbers per row and the stored codes of
one group of lists at a time, never every row decoded.

The passes, over the committed objects in sequence order (a run's lists in list order):

1. ``survey``: kinds and ids only (no vector decoded): which rows are live (last write of
   an id wins; tombstones kill).
2. ``gather``: the k-means sample and the calibration queries, decoding only those rows.
3. ``assign``: every live row decoded a chunk at a time: its IVF list, the calibration
   queries' exact neighbours, whether every row has unit norm, a tier's quantizer ranges.
4. ``write``: for each group of lists of at most ``GROUP_BYTES`` stored bytes, the rows of
   those lists gathered with their stored codes untouched (``segment.Coded``) and written.
   A tq8/tq6/tq4 index's lists also carry the codes its parts hold in memory within the
   fitted ranges (``segment.Held``), so a cold load copies those instead of decoding.

A row's list object holds exactly the codes it was stored with, so a reader decodes the
values the assignment pass saw.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..arrays import blas, kmeans, turboquant
from ..arrays.ann import ranges_key, sq_codes, sq_ranges
from ..arrays.kernels import normalize, unit_norm
from ..arrays.turboquant import SQ_TIERS
from ..codec import run, segment
from ..codec.segment import Coded, Held, Segment
from ..codec.terms import Terms
from ..store.heads import Head, Heads
from .textparts import TextParts

GROUP_BYTES = 3 << 30  # stored bytes of the lists gathered per pass of ``write``
PREFETCH = 4  # objects read ahead of the one being parsed
ROW_OVERHEAD = 96  # bytes a gathered row takes besides its codes (its id, its place in lists)


@dataclass(frozen=True)
class Piece:
    """One stored object of rows: its name and the row numbers it holds."""

    name: str
    start: int
    n: int


@dataclass
class Survey:
    """The committed rows as training numbers them, and which are live."""

    pieces: list[Piece]
    alive: np.ndarray  # one bool per row

    @property
    def live(self) -> np.ndarray:
        """Row numbers of the live rows, ascending."""
        return np.flatnonzero(self.alive)


def objects(heads: Heads, head: Head) -> list[str]:
    """The names of every committed object of rows and tombstones, in sequence order."""
    out: list[str] = []
    for ref in head.body.segments:
        if ref.kind == "run":
            out += [run.list_name(ref.name, k) for k in heads.read_directory(head, ref.name).lists()]
        else:
            out.append(ref.name)
    return out


def stream(
    heads: Heads, head: Head, names: Iterable[str], ahead: int = PREFETCH
) -> Iterator[tuple[str, bytes]]:
    """``(name, plaintext)`` of each object in order, a few read ahead in threads."""
    todo = iter(names)
    with ThreadPoolExecutor(max_workers=ahead) as pool:
        queue = deque((n, pool.submit(heads.read, head, n)) for n in itertools.islice(todo, ahead))
        while queue:
            name, future = queue.popleft()
            data = future.result()
            following = next(todo, None)
            if following is not None:
                queue.append((following, pool.submit(heads.read, head, following)))
            yield name, data


def survey(heads: Heads, head: Head) -> Survey:
    """Pass 1: number every row and find the live ones, parsing only kinds and ids."""
    capacity = sum(r.rows for r in head.body.segments if r.kind != "delete")
    alive = np.zeros(max(capacity, 1), dtype=bool)
    where: dict[str, int] = {}
    pieces: list[Piece] = []
    total = 0
    for name, data in stream(heads, head, objects(heads, head)):
        kind, ids = segment.decode_ids(data)
        del data
        if kind == "delete":
            rows = np.fromiter((where.pop(i, -1) for i in ids), dtype=np.int64, count=len(ids))
            alive[rows[rows >= 0]] = False
            continue
        n = len(ids)
        if total + n > len(alive):
            alive = np.concatenate([alive, np.zeros(max(n, len(alive) // 2), dtype=bool)])
        alive[total : total + n] = True
        if len(set(ids)) == n:
            older = np.fromiter(map(where.get, ids, itertools.repeat(-1)), dtype=np.int64, count=n)
            where.update(zip(ids, range(total, total + n), strict=True))
            alive[older[older >= 0]] = False
        else:  # an id twice in one object: the later row wins
            for row, key in enumerate(ids, total):
                before = where.get(key, -1)
                if before >= 0:
                    alive[before] = False
                where[key] = row
        pieces.append(Piece(name, total, n))
        total += n
    return Survey(pieces, alive[:total])


def _stored(coded: Coded, precision: str) -> tuple[Coded, np.ndarray]:
    """The rows as the run stores them (re-encoded only if stored at another precision) and
    their values as every reader decodes them."""
    values = coded.decode()
    if coded.dtype != precision:
        coded = segment.coded(values, precision)
        values = coded.decode()
    return coded, values


def gather(heads: Heads, head: Head, found: Survey, rows: np.ndarray) -> np.ndarray:
    """Pass 2: the stored values (float32) of ``rows`` (row numbers, ascending), decoding no others."""
    out = np.empty((len(rows), int(head.body.config["dimension"])), dtype=np.float32)
    starts = np.array([p.start for p in found.pieces], dtype=np.int64)
    owner = np.searchsorted(starts, rows, side="right") - 1
    wanted = sorted(set(owner.tolist()))
    for i, (_, data) in zip(wanted, stream(heads, head, [found.pieces[i].name for i in wanted]), strict=True):
        _, coded = segment.decode_coded(data)
        del data
        assert coded is not None
        at = np.flatnonzero(owner == i)
        _, out[at] = _stored(coded.take(rows[at] - found.pieces[i].start), head.precision)
    return out


@dataclass
class Assigned:
    """Pass 3's results, per live row (numbered by their rank among live rows)."""

    labels: np.ndarray  # each live row's IVF list
    nearest: tuple[np.ndarray, np.ndarray]  # the calibration queries' exact neighbours
    unit: bool  # every row has unit L2 norm
    ranges: np.ndarray | None  # a tq tier's quantizer ranges


def assign(
    heads: Heads,
    head: Head,
    backend: Any,
    found: Survey,
    centroids: np.ndarray,
    queries: np.ndarray,
    k: int,
) -> Assigned:
    """Pass 3: decode every live row, a chunk at a time, once."""
    cosine = head.metric == "cosine"
    rank = np.cumsum(found.alive) - 1  # a live row's number among live rows
    labels = np.full(int(rank[-1]) + 1 if len(rank) else 0, -1, dtype=np.int32)
    nearest = kmeans.Nearest(backend, queries, k) if k else None
    unit, extremes = True, []
    for piece, (_, data) in zip(
        found.pieces, stream(heads, head, [p.name for p in found.pieces]), strict=True
    ):
        live = np.flatnonzero(found.alive[piece.start : piece.start + piece.n])
        if not len(live):
            continue
        _, coded = segment.decode_coded(data)
        del data
        assert coded is not None
        for lo in range(0, len(live), kmeans.ASSIGN_ROWS):
            local = live[lo : lo + kmeans.ASSIGN_ROWS]
            _, values = _stored(coded.take(local), head.precision)
            space = backend.to_host(normalize(backend.asarray(values))) if cosine else values
            at = rank[piece.start + local]
            labels[at] = backend.nearest(space, centroids, 1)[:, 0]
            if nearest is not None:
                nearest.add(space, at)
            unit = unit and (not cosine or unit_norm(values))
            if head.precision in SQ_TIERS:
                extremes.append(np.stack([space.min(0), space.max(0)]))
    ranges = sq_ranges(extremes, turboquant.TIERS[head.precision]) if head.precision in SQ_TIERS else None
    got = nearest.result() if nearest is not None else (np.empty((0, 0)), np.empty((0, 0), dtype=np.int64))
    return Assigned(labels, got, unit, ranges)


def holder(
    precision: str, metric: str, rows: int, ranges: np.ndarray | None, unit: Callable[[], bool]
) -> Callable[[np.ndarray], Held] | None:
    """How a training turns rows (decoded, as every reader holds them) into the codes its
    parts will hold in memory (``Held``, written beside them), or None where it writes none:
    only a tq8/tq6/tq4 index of ``HELD_FROM_ROWS`` rows or more whose parts hold its rows
    as given (L2, or cosine rows of unit norm: ``unit``, asked last), within ``ranges``."""
    if precision not in SQ_TIERS or ranges is None or rows < segment.HELD_FROM_ROWS:
        return None
    if metric == "cosine" and not unit():
        return None
    bits, key, fitted = turboquant.TIERS[precision], ranges_key(ranges), ranges
    return lambda values: Held(bits, key, sq_codes(values, bits, fitted))


def _put(
    write_rows: Callable[[str, Segment, Coded], Segment],
    hold: Callable[[np.ndarray], Held] | None,
    name: str,
    k: int,
    parts: list[tuple[Segment, Coded]],
) -> tuple[list[str], Terms | None]:
    """Write list ``k`` of run ``name`` from its gathered pieces (codes held of an earlier
    training's ranges are replaced by this one's); returns its ids and terms as written."""
    coded = Coded.concat([c for _, c in parts])
    rows = replace(segment.concat([s for s, _ in parts]), held=hold(coded.decode()) if hold else None)
    written = write_rows(run.list_name(name, k), rows, coded)
    return written.ids, written.terms


def groups(sizes: np.ndarray, row_bytes: int, budget: int = GROUP_BYTES) -> list[tuple[int, int]]:
    """Consecutive ranges ``[a, b)`` of lists, each of at most ``budget`` bytes (or one list)."""
    out, start, held = [], 0, 0
    for k, n in enumerate(sizes.tolist()):
        cost = n * (row_bytes + ROW_OVERHEAD)
        if k > start and held + cost > budget:
            out.append((start, k))
            start, held = k, 0
        held += cost
    if len(sizes):
        out.append((start, len(sizes)))
    return out


def write(
    heads: Heads,
    head: Head,
    found: Survey,
    got: Assigned,
    name: str,
    n_lists: int,
    write_rows: Callable[[str, Segment, Coded], Segment],
    budget: int | None = None,
    readers: int = 16,
) -> run.Directory:
    """Pass 4: the run ``name``, a group of lists per pass over the objects, and its text
    objects as its lists are written; then its directory (the caller deletes the run if
    this raises)."""
    text = TextParts(heads, head, name)
    sizes = np.bincount(got.labels, minlength=n_lists)
    d = int(head.body.config["dimension"])
    tier = turboquant.TIERS.get(head.precision)
    width = turboquant.nbytes(1, d, tier) if tier else d * (2 if head.precision == "float16" else 4)
    rank = np.cumsum(found.alive) - 1
    hold = holder(head.precision, head.metric, len(got.labels), got.ranges, lambda: got.unit)
    for a, b in groups(sizes, width, budget or GROUP_BYTES):
        buckets: dict[int, list[tuple[Segment, Coded]]] = {k: [] for k in range(a, b) if sizes[k]}
        for piece, (_, data) in zip(
            found.pieces, stream(heads, head, [p.name for p in found.pieces]), strict=True
        ):
            live = np.flatnonzero(found.alive[piece.start : piece.start + piece.n])
            lists = got.labels[rank[piece.start + live]] if len(live) else np.empty(0, dtype=np.int32)
            mine = (lists >= a) & (lists < b)
            if not mine.any():
                continue
            seg, coded = segment.decode_coded(data)
            del data
            assert coded is not None
            local, lists = live[mine], lists[mine]
            order = np.argsort(lists, kind="stable")
            local, lists = local[order], lists[order]
            bounds = np.searchsorted(lists, np.arange(a, b + 1))
            coded, _ = (coded, None) if coded.dtype == head.precision else _stored(coded, head.precision)
            for k in range(a, b):
                rows = local[bounds[k - a] : bounds[k - a + 1]]
                if len(rows):
                    buckets[k].append((seg.take(rows), coded.take(rows)))

        with blas.one_thread(), ThreadPoolExecutor(max_workers=readers) as pool:  # each decodes
            for ids, terms in pool.map(
                lambda k, todo=buckets: _put(write_rows, hold, name, k, todo.pop(k)), sorted(buckets)
            ):
                text.add(ids, terms)  # in list order
    rows_per_list = tuple(int(n) for n in sizes)
    directory = run.Directory(n_lists, rows_per_list, got.unit, head.precision, text.finish())
    heads.write(head, name, directory.to_json())
    return directory
