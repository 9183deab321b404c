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

from dataclasses import dataclass
from typing import Any

import numpy as np

from .ann import AnnIndex
from .backend import Backend
from .kernels import normalize, unit_norm


@dataclass(frozen=True, eq=False)
class Layout:
    """How every part of one state is built."""

    dimension: int
    metric: str
    precision: str
    centroids: np.ndarray | None = None
    quantizer: Any = None  # shared flat index over ``centroids``


@dataclass(frozen=True, eq=False)
class Part:
    """Rows ``start .. start + n - 1`` of a state and the faiss index that searches them."""

    start: int
    n: int
    ann: AnnIndex
    stored: np.ndarray | None  # the rows as stored, when faiss holds them normalised

    @property
    def end(self) -> int:
        return self.start + self.n

    def rows(self, local: np.ndarray) -> np.ndarray:
        """Stored vectors (float32) of rows ``local`` (numbered from this part's start)."""
        local = np.asarray(local, dtype=np.int64)
        if self.stored is not None:
            return np.asarray(self.stored[local], dtype=np.float32)
        return self.ann.reconstruct(local)

    def all_rows(self) -> np.ndarray:
        if self.stored is not None:
            return np.asarray(self.stored, dtype=np.float32)
        return self.ann.reconstruct(np.arange(self.n))

    def nbytes(self) -> int:
        return self.ann.nbytes() + (self.stored.nbytes if self.stored is not None else 0)


def build(backend: Backend, layout: Layout, start: int, vectors: np.ndarray, lists: np.ndarray) -> Part:
    """A part over ``vectors`` (stored rows, float32 or the storage precision) that become
    rows ``start ..``; ``lists`` pins each row to an IVF list (-1: the nearest centroid)."""
    exact = layout.metric != "cosine" or unit_norm(vectors)
    half = layout.precision == "float16"
    ann = backend.ann_index(max(layout.dimension, 1), layout.centroids, half=half, quantizer=layout.quantizer)
    step = 65536
    for lo in range(0, len(vectors), step):
        chunk = np.asarray(vectors[lo : lo + step], dtype=np.float32)
        ann.add(chunk if exact else normalize(chunk), lists[lo : lo + step])
    stored = None if exact else np.asarray(vectors, dtype=np.dtype(layout.precision))
    return Part(start, len(vectors), ann, stored)


def merged(backend: Backend, layout: Layout, parts: list[Part], lists: np.ndarray) -> Part:
    """One part holding the rows of consecutive ``parts`` (``lists``: every row's IVF list,
    indexed by row number)."""
    start, end = parts[0].start, parts[-1].end
    vectors = np.concatenate([p.all_rows() for p in parts]) if len(parts) > 1 else parts[0].all_rows()
    return build(backend, layout, start, vectors, lists[start:end])


FANOUT = 4  # neighbours of like size merged at once: each row is rewritten log4(n) times
MAX_PARTS = 24  # beyond this many parts, the two smallest neighbours merge regardless


def next_merge(parts: tuple[Part, ...]) -> tuple[int, int] | None:
    """Parts ``[i, j)`` to merge into one: the rightmost run of ``FANOUT`` or more
    neighbours of like size (none more than twice the smallest); past ``MAX_PARTS`` parts,
    the two smallest neighbours. ``None`` when nothing is due."""
    for end in range(len(parts), 0, -1):
        start, smallest = end - 1, parts[end - 1].n
        while start > 0 and parts[start - 1].n <= 2 * smallest:
            start -= 1
            smallest = min(smallest, parts[start].n)
        if end - start >= FANOUT:
            return start, end
    if len(parts) > MAX_PARTS:
        i = min(range(len(parts) - 1), key=lambda i: parts[i].n + parts[i + 1].n)
        return i, i + 2
    return None
