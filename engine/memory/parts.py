"""Parts: immutable blocks of consecutive rows, each searched through its own faiss index.

A state's rows ``[start, start + n)`` belong to one part. A writer builds a part once and
readers only search it, so a search holds no lock while writers build the next parts.
Parts merge in tiers, in the background (the cache's merger): four neighbours of like size
become one, so an index settles at a few parts per size tier and a row is rewritten
log4(n) times, never while a write waits.

faiss holds each part's rows exactly as stored when it can (L2 metrics, or cosine rows of
unit norm; float32 or fp16 codes), and is then their only copy; otherwise (cosine rows of
other norms, which faiss must hold normalised) the part keeps the stored rows too.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..arrays.ann import AnnIndex, ranges_key, sq_decode
from ..arrays.backend import Backend
from ..arrays.kernels import normalize, row_norms, unit_norm
from ..arrays.turboquant import TIERS
from ..codec.segment import Held
from ..model import memory_dtype


@dataclass(frozen=True, eq=False)
class Layout:
    """How every part of one state is built."""

    dimension: int
    metric: str
    precision: str
    centroids: np.ndarray | None = None
    quantizer: Any = None  # shared flat index over ``centroids``
    ranges: np.ndarray | None = None  # a trained tq8/6/4 index's scalar-quantizer ranges
    text: tuple[str, ...] = ()  # the full-text fields (``textindex.py`` keeps their postings)

    @property
    def bits(self) -> int:
        """Bits per value of the IVF codes in memory: a trained tq8/tq6/tq4 index; else 0."""
        return TIERS.get(self.precision, 0) if self.ranges is not None and self.precision != "tq12" else 0

    @functools.cached_property
    def held(self) -> str | None:
        """The name of the ranges whose stored codes (``segment.Held``) parts take as they
        are: a trained tq8/tq6/tq4 index's; else None."""
        return ranges_key(self.ranges) if self.bits and self.ranges is not None else None


@dataclass(frozen=True, eq=False)
class Part:
    """Rows ``start .. start + n - 1`` of a state and the faiss index that searches them."""

    start: int
    n: int
    ann: AnnIndex
    stored: np.ndarray | None  # the rows as stored, when faiss holds them normalised
    # ... or only their norms ``(n, 1)``, when faiss holds them as tq codes (the codes are
    # the rows' directions: a full copy beside them would undo the tier's saving)
    norms: np.ndarray | None = None

    @property
    def end(self) -> int:
        return self.start + self.n

    def rows(self, local: np.ndarray) -> np.ndarray:
        """Stored vectors (float32) of rows ``local`` (numbered from this part's start)."""
        local = np.asarray(local, dtype=np.int64)
        if self.stored is not None:
            return np.asarray(self.stored[local], dtype=np.float32)
        if self.norms is not None:
            return self.ann.reconstruct(local) * self.norms[local]
        return self.ann.reconstruct(local)

    def all_rows(self) -> np.ndarray:
        if self.stored is not None:
            return np.asarray(self.stored, dtype=np.float32)
        return self.rows(np.arange(self.n))

    def nbytes(self) -> int:
        extra = sum(a.nbytes for a in (self.stored, self.norms) if a is not None)
        return self.ann.nbytes() + extra


STEP = 65536  # rows added to faiss at a time


def joined(batch: list[np.ndarray] | list[Held] | list[np.ndarray | Held]) -> np.ndarray | Held:
    """Consecutive pending rows of one kind (vectors, or held codes of one ranges) as one."""
    first = batch[0]
    if len(batch) == 1:
        return first
    if isinstance(first, Held):
        return Held(first.bits, first.key, np.concatenate([b.codes for b in batch if isinstance(b, Held)]))
    return np.concatenate([b for b in batch if not isinstance(b, Held)])


def values(layout: Layout, rows: np.ndarray | Held) -> np.ndarray:
    """Rows as float32: held codes as the parts they go into reconstruct them."""
    if isinstance(rows, Held):
        assert layout.ranges is not None
        return sq_decode(rows.codes, layout.dimension, rows.bits, layout.ranges)
    return np.asarray(rows, dtype=np.float32)


def _space(vectors: np.ndarray, exact: bool) -> Iterator[tuple[int, np.ndarray]]:
    """``vectors`` as faiss holds them (float32; normalised unless ``exact``), a chunk at a
    time: a big part never has a second full copy."""
    for lo in range(0, len(vectors), STEP):
        chunk = np.asarray(vectors[lo : lo + STEP], dtype=np.float32)
        yield lo, chunk if exact else normalize(chunk)


def _norms(vectors: np.ndarray) -> np.ndarray:
    """Each row's L2 norm ``(n, 1)`` float32, summed in float64 a chunk at a time: the same
    rows give the same norms whatever their layout in memory (float32 sums differ in the
    last bit between SIMD paths), so a writer and a cold reader hold the same values."""
    out = np.empty((len(vectors), 1), dtype=np.float32)
    for lo in range(0, len(vectors), STEP):
        out[lo : lo + STEP, 0] = row_norms(np.asarray(vectors[lo : lo + STEP], dtype=np.float64))
    return out


def within(space: np.ndarray, ranges: np.ndarray | None) -> bool:
    """Every value of ``space`` lies inside a fitted scalar quantizer's ``(vmin, vdiff)``."""
    if ranges is None or not len(space):
        return True
    low, width = ranges[0], ranges[1]
    return bool(np.all(space >= low) and np.all(space <= low + width))


def build(
    backend: Backend, layout: Layout, start: int, vectors: np.ndarray | Held, lists: np.ndarray
) -> Part:
    """A part over ``vectors`` (stored rows, float32 or the storage precision; or their
    ``Held`` codes of ``layout.held``) that become rows ``start ..``; ``lists`` pins each
    row to an IVF list (-1: the nearest centroid; held rows are always pinned)."""
    if isinstance(vectors, Held):  # the codes ``build`` would make of the rows they stand for
        ann = backend.ann_index(
            max(layout.dimension, 1),
            layout.centroids,
            quantizer=layout.quantizer,
            bits=layout.bits,
            ranges=layout.ranges,
        )
        ann.add_codes(vectors.codes, lists)
        return Part(start, len(vectors), ann, None)
    exact = layout.metric != "cosine" or unit_norm(vectors)
    # float16 rows are held as float16 codes; tq rows, once trained, as codes of their width
    # (tq12: float16); before training a tq index is small and searched exactly in float32
    half = layout.precision == "float16" or (layout.precision == "tq12" and layout.centroids is not None)
    # Codes within the ranges fitted at training: a part holding a row outside them (data
    # that drifted since) is held in float32 instead, so no value is ever clipped.
    bits = layout.bits
    if bits and not all(within(chunk, layout.ranges) for _, chunk in _space(vectors, exact)):
        bits = 0
    ann = backend.ann_index(
        max(layout.dimension, 1),
        layout.centroids,
        half=half,
        quantizer=layout.quantizer,
        bits=bits,
        ranges=layout.ranges,
    )
    for lo, chunk in _space(vectors, exact):
        ann.add(chunk, lists[lo : lo + STEP])
    if exact:
        return Part(start, len(vectors), ann, None)
    if layout.precision in TIERS and (half or bits):
        return Part(start, len(vectors), ann, None, _norms(vectors))
    return Part(start, len(vectors), ann, np.asarray(vectors, dtype=memory_dtype(layout.precision)))


def extended(
    backend: Backend, layout: Layout, part: Part, vectors: np.ndarray | Held, lists: np.ndarray
) -> Part | None:
    """``part`` with ``vectors`` (or their ``Held`` codes) appended to its own faiss index
    (only for a part no snapshot holds yet: a load growing one part instead of many to
    merge later), or ``None`` when they need another kind of part than it is."""
    if part.stored is not None:
        return None
    if isinstance(vectors, Held):  # into a part of these codes, as given (held rows are exact)
        if part.norms is not None or part.ann.kind != (True, False, layout.bits):
            return None
        part.ann.add_codes(vectors.codes, lists)
        return Part(part.start, part.n + len(vectors), part.ann, None)
    exact = part.norms is None  # as given; else normalised, with each row's norm beside
    if exact and layout.metric == "cosine" and not unit_norm(vectors):
        return None
    if part.ann.bits and not all(within(chunk, layout.ranges) for _, chunk in _space(vectors, exact)):
        return None
    for lo, chunk in _space(vectors, exact):
        part.ann.add(chunk, lists[lo : lo + STEP])
    norms = None if exact else np.concatenate([part.norms, _norms(vectors)])
    return Part(part.start, part.n + len(vectors), part.ann, None, norms)


def merged(backend: Backend, layout: Layout, parts: list[Part], lists: np.ndarray) -> Part:
    """One part holding the rows of consecutive ``parts`` (``lists``: every row's IVF list,
    indexed by row number)."""
    start, end = parts[0].start, parts[-1].end
    if all(p.stored is None and p.norms is None and p.ann.plain for p in parts):
        # faiss holds every row as stored, exactly: the merged index is those rows appended
        # in one copy each (reading them back, joining, checking and adding them again was
        # five passes over the rows, a third of an ingest's CPU)
        ann = backend.ann_index(max(layout.dimension, 1), layout.centroids, quantizer=layout.quantizer)
        for p in parts:
            ann.extend(p.ann, lists[p.start : p.end])
        return Part(start, end - start, ann, None)
    first = parts[0]
    if (
        first.ann.ivf
        and (first.ann.half or first.ann.bits)
        and all(p.stored is None and p.ann.kind == first.ann.kind for p in parts)
        and len({p.norms is None for p in parts}) == 1
    ):
        # IVF codes of one kind (a trained tq or float16 index): the merged index is their
        # codes copied list by list, and their norms joined; no row is decoded
        ann = backend.ann_index(
            max(layout.dimension, 1),
            layout.centroids,
            half=first.ann.half,
            quantizer=layout.quantizer,
            bits=first.ann.bits,
            ranges=layout.ranges,
        )
        ann.join_codes([p.ann for p in parts])
        norms = (
            None if first.norms is None else np.concatenate([p.norms for p in parts if p.norms is not None])
        )
        return Part(start, end - start, ann, None, norms)
    vectors = np.concatenate([p.all_rows() for p in parts]) if len(parts) > 1 else parts[0].all_rows()
    return build(backend, layout, start, vectors, lists[start:end])


FANOUT = 4  # neighbours of like size merged at once: each row is rewritten log4(n) times
MAX_PARTS = 24  # beyond this many parts, the two smallest neighbours merge regardless
# A merge builds its part beside the parts it replaces, which snapshots hold until it is
# swapped in: the memory one merge adds. Parts that would merge past it stay apart (a
# query finds its lists once for all parts, then scans each); a 10M-row tq8 index settles
# at a few parts instead of peaking at twice its codes while they merge into one.
MERGE_BYTES = 1 << 30


def packed(parts: tuple[Part, ...], cap: int | None = None) -> list[tuple[int, int]]:
    """``parts`` in consecutive groups ``[i, j)`` of at most ``cap`` bytes each (default
    ``MERGE_BYTES``; a bigger part is a group of its own), filled from the left."""
    cap = MERGE_BYTES if cap is None else cap
    out, start, held = [], 0, 0
    for i, p in enumerate(parts):
        size = p.nbytes()
        if i > start and held + size > cap:
            out.append((start, i))
            start, held = i, 0
        held += size
    if parts:
        out.append((start, len(parts)))
    return out


def next_merge(parts: tuple[Part, ...], cap: int | None = None) -> tuple[int, int] | None:
    """Parts ``[i, j)`` to merge into one: the rightmost run of ``FANOUT`` or more
    neighbours of like size (none more than twice the smallest) whose merged part stays
    within ``cap`` bytes (else its last ``FANOUT`` if they do); past ``MAX_PARTS`` parts,
    the two smallest neighbours. ``None`` when nothing is due. ``cap``: ``MERGE_BYTES``."""
    cap = MERGE_BYTES if cap is None else cap
    sizes = [p.nbytes() for p in parts]
    for end in range(len(parts), 0, -1):
        start, smallest = end - 1, parts[end - 1].n
        while start > 0 and parts[start - 1].n <= 2 * smallest:
            start -= 1
            smallest = min(smallest, parts[start].n)
        if end - start >= FANOUT:
            if sum(sizes[start:end]) <= cap:
                return start, end
            if sum(sizes[end - FANOUT : end]) <= cap:
                return end - FANOUT, end
    if len(parts) > MAX_PARTS:
        i = min(range(len(parts) - 1), key=lambda i: parts[i].n + parts[i + 1].n)
        return i, i + 2
    return None
