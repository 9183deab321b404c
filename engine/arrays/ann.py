"""The faiss index of one state: flat or IVF, rows appended in order, dead or filtered rows
excluded by an id bitmap, mirrored to a GPU when the backend has one. Host numpy in and out:
this is the faiss boundary."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from collections.abc import Iterable
from typing import Any

import numpy as np

from .kernels import first_valid

log = logging.getLogger("ciphervec.ann")
# A function packaged without faiss (IngestFunction) never searches.
HAS_FAISS = importlib.util.find_spec("faiss") is not None


class _Faiss:
    """The faiss module, imported on first use: it is a tenth of a cold start's import, and
    a request that searches nothing trained (health, keys, writes, exact scans) never needs it.
    The first use puts the module itself in its place, so later calls go straight to it."""

    def __getattr__(self, name: str) -> Any:
        return getattr(load_faiss(), name)


def load_faiss() -> Any:
    """faiss itself, loaded once the OpenBLAS kernels it will run are named
    (``blas.kernels_named``); the same for a benchmark's own faiss."""
    from .blas import kernels_named

    with kernels_named():
        import faiss as module

    globals()["faiss"] = module
    return module


faiss: Any = _Faiss()


# Rows up to which ``join_codes`` lets faiss copy the lists (a little slack) instead of
# sizing each list exactly from Python (one call per list: slow at thousands of lists).
SMALL_JOIN = 1 << 16


class AnnIndex:
    """A faiss index over search-space vectors whose ids are state row numbers.

    Untrained: ``IndexFlatL2`` (exact). Trained: ``IndexIVFFlat`` over the given centroids
    (per-list contiguous storage inside faiss). Rows are only ever appended; dead or
    filtered-out rows are excluded at search time by a bitmap selector, so a delete or
    overwrite never has to touch the index.
    """

    # Over-fetch on the device when at most this many rows are excluded; else use the host.
    DEVICE_EXCLUSION_LIMIT = 1024
    # Below this many queries, exact search is a numpy mat-vec (faiss switches to BLAS at 20).
    FEW_QUERIES = 20

    def __init__(
        self,
        dim: int,
        centroids: np.ndarray | None = None,
        gpu: Any = None,
        *,
        half: bool = False,
        quantizer: Any = None,
        bits: int = 0,
        ranges: np.ndarray | None = None,
    ) -> None:
        """``quantizer``: a flat index over ``centroids`` to share (it is only searched).
        ``bits`` 8, 6 or 4 with ``ranges`` (a trained faiss scalar quantizer's per-dimension
        ranges, the same for every part of an index): IVF codes of that many bits per value."""
        self.dim = dim
        self.ntotal = 0
        self.gpu = gpu
        self.device: Any = None
        self.quantizer: Any = None
        fp16 = faiss.ScalarQuantizer.QT_fp16
        if centroids is None:
            self.index: Any = (
                faiss.IndexScalarQuantizer(dim, fp16, faiss.METRIC_L2) if half else faiss.IndexFlatL2(dim)
            )
        else:
            cent = np.ascontiguousarray(centroids, dtype=np.float32)
            self.quantizer = quantizer if quantizer is not None else flat_quantizer(cent)
            if bits:
                assert ranges is not None
                self.index = faiss.IndexIVFScalarQuantizer(
                    self.quantizer, dim, len(cent), sq_type(bits), faiss.METRIC_L2, False
                )
                fitted = np.ascontiguousarray(ranges, dtype=np.float32).ravel()
                faiss.copy_array_to_vector(fitted, self.index.sq.trained)
                self.index.is_trained = True  # fixed ranges: a row's codes never depend on its part
            elif half:
                # Codes of the rows themselves, not of their residuals to the centroid: a
                # residual can leave float16's range (65,504 - (-c)), and came back as inf.
                self.index = faiss.IndexIVFScalarQuantizer(
                    self.quantizer, dim, len(cent), fp16, faiss.METRIC_L2, False
                )
                self.index.train(cent)  # the quantizer is set; fp16 codes need no training
            else:
                self.index = faiss.IndexIVFFlat(self.quantizer, dim, len(cent), faiss.METRIC_L2)
            # Rows are added in order, so faiss ids are row numbers; an array direct map
            # lets rows be read back (the index can then be their only copy).
            self.index.set_direct_map_type(faiss.DirectMap.Array)
        self.ivf = centroids is not None
        self.half = half
        self.bits = bits if centroids is not None else 0
        # faiss's single-query flat scan is ~2x slower here than a BLAS mat-vec over the
        # same memory; for a few queries the flat index is read through a numpy view.
        self._flat_view = centroids is None and not half
        self._sqnorms = np.empty(0, dtype=np.float32)
        self._params: dict[int, Any] = {}  # n_probes -> search parameters without a selector

    def add(self, x: np.ndarray, lists: np.ndarray | None = None) -> None:
        """Append rows ``ntotal .. ntotal+len(x)-1``; an IVF index puts each row in its
        given list (``lists``; -1 or ``None``: the nearest centroid, as faiss would)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.ivf and lists is not None and len(x) and bool((np.asarray(lists) >= 0).any()):
            assign = np.array(lists, dtype=np.int64)
            free = assign < 0
            if free.any():
                assign[free] = self.quantizer.search(x[free], 1)[1][:, 0]
            self.index.add_core(len(x), faiss.swig_ptr(x), None, faiss.swig_ptr(assign))
        else:
            self.index.add(x)
        if self._flat_view:
            self._sqnorms = np.concatenate([self._sqnorms, np.einsum("ij,ij->i", x, x)])
        self.ntotal += len(x)
        self.device = None  # re-mirrored on the next device search

    def add_codes(self, codes: np.ndarray, lists: np.ndarray) -> None:
        """Append rows ``ntotal ..`` given as this index's own codes (``sq_codes`` of the
        same bits and ranges), each into its list (``lists``, all >= 0): what ``add`` of
        the rows they encode would hold, bit for bit, without decoding or encoding a row."""
        assert self.ivf and self.bits
        n = len(codes)
        if not n:
            return
        coarse = self.index.coarse_code_size()
        prefix = np.ascontiguousarray(lists, dtype="<u8").view(np.uint8).reshape(n, 8)[:, :coarse]
        self.index.add_sa_codes(np.ascontiguousarray(np.hstack([prefix, codes])))
        self.ntotal += n
        self.device = None

    @property
    def plain(self) -> bool:
        """faiss holds the rows exactly as float32 (a flat or IVF-flat index, no codes)."""
        return not self.half and isinstance(self.index, faiss.IndexFlatL2 | faiss.IndexIVFFlat)

    def extend(self, other: AnnIndex, lists: np.ndarray) -> None:
        """Append ``other``'s rows (both ``plain``, same kind and centroids) in one copy: a
        flat index's rows are read in place and their squared norms carried over; an IVF
        index's rows keep their lists (``lists``)."""
        if other.ntotal == 0:
            return
        if self.ivf:
            self.add(other.reconstruct(np.arange(other.ntotal)), lists)
            return
        xb = faiss.rev_swig_ptr(other.index.get_xb(), other.ntotal * self.dim).reshape(other.ntotal, self.dim)
        self.index.add(xb)
        if self._flat_view:
            self._sqnorms = np.concatenate([self._sqnorms, other._sqnorms])
        self.ntotal += other.ntotal
        self.device = None

    def join_codes(self, others: list[AnnIndex]) -> None:
        """Append the rows of IVF indexes ``others`` (the same kind of codes over the same
        centroids, in row order) by copying their codes list by list: nothing decoded or
        encoded again, so a merge of parts of codes holds exactly the codes they held, and
        never their rows as float32 (15 GB at 10M x 384 where the codes take 3.8 GB)."""
        self.index.set_direct_map_type(faiss.DirectMap.NoMap)
        try:
            if self.ntotal + sum(o.ntotal for o in others) <= SMALL_JOIN:
                self._join_in_faiss(others)
            else:
                self._join_sized(others)
        finally:
            self.index.set_direct_map_type(faiss.DirectMap.Array)  # ids are the rows 0 .. ntotal-1
        self.device = None

    def _join_in_faiss(self, others: list[AnnIndex]) -> None:
        """Small parts (a write's rows, their first merges): faiss's own loop over the lists,
        on copies (it empties what it merges from, and the parts are shared). Lists keep up
        to twice their codes' room, bounded by ``SMALL_JOIN``; at 4,096 lists this takes
        ~7 ms of CPU where sizing each list from Python takes ~50."""
        before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)  # (this thread's calls only) small lists: no team to wake
        try:
            for other in others:
                copy = faiss.clone_index(other.index)  # held while faiss reads its lists
                self.index.invlists.merge_from(copy.invlists, self.ntotal)
                del copy
                self.ntotal += other.ntotal
                self.index.ntotal = self.ntotal
        finally:
            faiss.omp_set_num_threads(before)

    def _join_sized(self, others: list[AnnIndex]) -> None:
        """Big parts: each list sized once, exactly (faiss's appends leave up to twice the
        codes' size), then every part's codes copied into it."""
        dst, nlist = self.index.invlists, self.index.nlist
        sizes = np.stack([o.list_sizes() for o in others]).reshape(len(others), nlist)
        touched = np.flatnonzero(sizes.sum(0))
        at = np.zeros(nlist, dtype=np.int64)  # read only for the lists it grows
        for k in touched.tolist():  # each list sized once: no slack
            at[k] = dst.list_size(k)
            dst.resize(k, int(at[k] + sizes[:, k].sum()))
        for j, other in enumerate(others):
            src = other.index.invlists
            for k in np.flatnonzero(sizes[j]).tolist():
                n = int(sizes[j, k])
                ids = faiss.rev_swig_ptr(src.get_ids(k), n).astype(np.int64) + self.ntotal
                dst.update_entries(k, int(at[k]), n, faiss.swig_ptr(ids), src.get_codes(k))
                at[k] += n
            self.ntotal += other.ntotal
            self.index.ntotal = self.ntotal

    def list_sizes(self) -> np.ndarray:
        """Rows in each IVF list, counted from the direct map (a list and offset per row)
        in one pass, not asked of faiss list by list (thousands of calls at 10M rows)."""
        rows = faiss.vector_to_array(self.index.direct_map.array).astype(np.int64)
        assert len(rows) == self.ntotal  # every IVF index here keeps an array direct map
        return np.bincount(rows >> 32, minlength=self.index.nlist).astype(np.int64)

    @property
    def kind(self) -> tuple[bool, bool, int]:
        """What the codes are: rows of two indexes of one kind can be joined (``join_codes``)."""
        return self.ivf, self.half, self.bits

    def reconstruct(self, rows: np.ndarray) -> np.ndarray:
        """The stored vectors of ``rows`` (float32)."""
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        return np.asarray(self.index.reconstruct_batch(rows), dtype=np.float32)

    def nbytes(self) -> int:
        return self.ntotal * int(getattr(self.index, "code_size", self.dim * 4))

    def _device_index(self) -> Any:
        if self.device is None:
            self.device = faiss.index_cpu_to_gpu(self.gpu, 0, self.index)
        return self.device

    def _device_ready(self) -> bool:
        """Mirror on the GPU; index kinds faiss-gpu cannot clone stay on the host."""
        try:
            self._device_index()
        except RuntimeError as exc:  # faiss raises RuntimeError for unsupported clones
            log.warning("GPU mirror unavailable (%s); searching on the host", type(self.index).__name__)
            log.debug("faiss: %s", exc)
            self.gpu = None
            return False
        return True

    def search(
        self,
        q: np.ndarray,
        k: int,
        nprobe: int,
        valid: np.ndarray,
        excluded: int | None = None,
        *,
        host: bool = False,
        assigned: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(distances, rows)`` of the ``k`` nearest valid rows; missing slots are -1.

        ``excluded`` (rows of ``valid`` that are False) is counted here unless given;
        ``host`` searches on the host even with a GPU (an index still being filled would
        be mirrored to the device again after every addition); ``assigned``: the queries'
        ``nprobe`` nearest centroids (distances, lists) from the shared quantizer, computed
        once for every part of a snapshot, so an IVF search here only scans those lists."""
        if excluded is None:
            excluded = self.ntotal - int(np.count_nonzero(valid[: self.ntotal]))
        device = self.gpu is not None and not host
        if device and excluded <= self.DEVICE_EXCLUSION_LIMIT and self._device_ready():
            return self._search_device(q, k, nprobe, valid, excluded)
        if self._flat_view and len(q) < self.FEW_QUERIES and self.ntotal:
            return self._search_view(q, k, valid, excluded)
        bits = None
        if excluded == 0:  # nothing to exclude: the selector-free scan is faster
            params: Any = None
            if self.ivf and (params := self._params.get(nprobe)) is None:
                params = self._params.setdefault(nprobe, faiss.SearchParametersIVF(nprobe=nprobe))
        else:
            bits = np.packbits(valid[: self.ntotal], bitorder="little")
            selector = faiss.IDSelectorBitmap(self.ntotal, faiss.swig_ptr(bits))
            if self.ivf:
                params = faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)
            else:
                params = faiss.SearchParameters(sel=selector)
        q = np.ascontiguousarray(q, dtype=np.float32)
        if assigned is not None and self.ivf:  # (params: IVF ones, nprobe as assigned)
            dq = np.ascontiguousarray(assigned[0], dtype=np.float32)
            iq = np.ascontiguousarray(assigned[1], dtype=np.int64)
            dist = np.empty((len(q), k), dtype=np.float32)
            rows = np.empty((len(q), k), dtype=np.int64)
            ptr = faiss.swig_ptr
            self.index.search_preassigned_c(
                len(q), ptr(q), k, ptr(iq), ptr(dq), ptr(dist), ptr(rows), False, params
            )
        else:
            dist, rows = self.index.search(q, k, params=params)
        del bits
        return dist, rows

    def _search_view(
        self, q: np.ndarray, k: int, valid: np.ndarray, excluded: int
    ) -> tuple[np.ndarray, np.ndarray]:
        xb = faiss.rev_swig_ptr(self.index.get_xb(), self.ntotal * self.dim).reshape(self.ntotal, self.dim)
        q = np.ascontiguousarray(q, dtype=np.float32)
        d2 = self._sqnorms[None, :] - 2.0 * (q @ xb.T) + np.einsum("ij,ij->i", q, q)[:, None]
        if excluded:
            d2[:, ~valid[: self.ntotal]] = np.inf
        k = min(k, self.ntotal)
        part = np.argpartition(d2, k - 1, axis=1)[:, :k]
        dist = np.take_along_axis(d2, part, 1)
        order = np.argsort(dist, axis=1)
        rows = np.take_along_axis(part, order, 1)
        dist = np.take_along_axis(dist, order, 1)
        rows[~np.isfinite(dist)] = -1
        return dist, rows

    def _search_device(
        self, q: np.ndarray, k: int, nprobe: int, valid: np.ndarray, excluded: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """GPU search has no id selector: over-fetch by the excluded count, drop them here."""
        index = self._device_index()
        if self.ivf:
            index.nprobe = nprobe
        fetch = min(self.ntotal, k + excluded)
        dist, rows = index.search(np.ascontiguousarray(q, dtype=np.float32), fetch)
        if excluded:
            return first_valid(dist, rows, valid, k)
        return dist[:, :k], rows[:, :k]


def sq_type(bits: int) -> Any:
    """faiss's scalar-quantizer type of ``bits`` (8, 6 or 4) bits per value."""
    sq = faiss.ScalarQuantizer
    return {8: sq.QT_8bit, 6: sq.QT_6bit, 4: sq.QT_4bit}[bits]


def sq_ranges(vectors: np.ndarray | Iterable[np.ndarray], bits: int) -> np.ndarray:
    """Per-dimension ranges of a ``bits``-bit faiss scalar quantizer fitted to ``vectors``
    (search space; an array, or its rows in chunks), widened by 2 % each way for rows
    written later: ``(2, d)`` float32. The fit reads only each dimension's minimum and
    maximum, so the chunks' extremes, as two rows, fit the same quantizer (tested)."""
    low = high = None
    for chunk in [vectors] if isinstance(vectors, np.ndarray) else vectors:
        if len(chunk):
            c_low, c_high = chunk.min(0), chunk.max(0)
            low = c_low if low is None else np.minimum(low, c_low)
            high = c_high if high is None else np.maximum(high, c_high)
    if low is None or high is None:
        raise ValueError("no rows to fit the quantizer to")
    sq = faiss.ScalarQuantizer(len(low), sq_type(bits))
    sq.rangestat = faiss.ScalarQuantizer.RS_minmax
    sq.rangestat_arg = 0.02
    sq.train(np.ascontiguousarray(np.stack([low, high]), dtype=np.float32))
    return faiss.vector_to_array(sq.trained).astype(np.float32).reshape(2, -1)


def _scalar_quantizer(d: int, bits: int, ranges: np.ndarray) -> Any:
    sq = faiss.ScalarQuantizer(d, sq_type(bits))
    faiss.copy_array_to_vector(np.ascontiguousarray(ranges, dtype=np.float32).ravel(), sq.trained)
    return sq


def sq_codes(values: np.ndarray, bits: int, ranges: np.ndarray) -> np.ndarray:
    """The ``bits``-bit codes within ``ranges`` that an IVF index of those (``AnnIndex``)
    holds for rows ``values`` (search space, float32): ``(n, code bytes)`` uint8."""
    x = np.ascontiguousarray(values, dtype=np.float32)
    return np.asarray(_scalar_quantizer(x.shape[1], bits, ranges).compute_codes(x), dtype=np.uint8)


def sq_decode(codes: np.ndarray, d: int, bits: int, ranges: np.ndarray) -> np.ndarray:
    """The rows (float32 ``(n, d)``) that ``sq_codes`` encoded, as the index reconstructs them."""
    if not len(codes):
        return np.empty((0, d), dtype=np.float32)
    sq = _scalar_quantizer(d, bits, ranges)
    return np.asarray(sq.decode(np.ascontiguousarray(codes, dtype=np.uint8)), dtype=np.float32)


def ranges_key(ranges: np.ndarray) -> str:
    """A short name of a quantizer's ranges: codes stored beside rows (``segment.Held``) are
    used only by an index whose ranges have the same name."""
    data = np.ascontiguousarray(ranges, dtype="<f4").tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def flat_quantizer(centroids: np.ndarray) -> Any:
    """An exact L2 index over IVF centroids (assigns rows and queries to lists)."""
    cent = np.ascontiguousarray(centroids, dtype=np.float32)
    quantizer = faiss.IndexFlatL2(cent.shape[1])
    quantizer.add(cent)
    return quantizer
