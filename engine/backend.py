"""The only module that imports faiss or cupy, and picks CPU vs GPU once per process.

``select(name)`` with ``auto`` (default), ``numpy`` or ``cupy``; ``auto`` takes CuPy when
``cupy.is_available()`` and faiss GPU when ``faiss.get_num_gpus() > 0``. The rest of the
engine receives a ``Backend`` and never imports either library itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger("ciphervec.backend")

try:
    import faiss
except ImportError:  # pragma: no cover - faiss is a hard dependency of the [cpu]/[gpu] extras
    faiss = None


@dataclass
class Backend:
    """Array module plus the handful of numeric kernels that differ per device."""

    name: str
    xp: Any
    faiss_gpu: bool
    _resources: Any = None

    @property
    def gpu_resources(self) -> Any:
        """One ``StandardGpuResources`` per process (streams, scratch memory)."""
        if self._resources is None:
            self._resources = faiss.StandardGpuResources()
        return self._resources

    def ann_index(self, dim: int, centroids: np.ndarray | None = None, *, half: bool = False) -> AnnIndex:
        """A flat or IVF index (float16 codes when ``half``); mirrored on a GPU when present."""
        return AnnIndex(dim, centroids, self.gpu_resources if self.faiss_gpu else None, half=half)

    def knn(self, queries: np.ndarray, base: np.ndarray, k: int) -> np.ndarray:
        """Exact L2 ``k`` nearest rows of ``base`` for each query (brute force)."""
        return self.knn_with_distances(queries, base, k)[1]

    def knn_with_distances(
        self, queries: np.ndarray, base: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(squared L2 distances, rows)`` of the exact ``k`` nearest rows."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        x = np.ascontiguousarray(base, dtype=np.float32)
        if self.faiss_gpu:
            dist, idx = faiss.knn_gpu(self.gpu_resources, q, x, k)
        else:
            dist, idx = faiss.knn(q, x, k)
        return np.asarray(dist), np.asarray(idx)

    def kmeans(
        self, x: np.ndarray, k: int, *, niter: int, seed: int, spherical: bool, tol: float
    ) -> np.ndarray:
        """Train ``k`` centroids on float32 rows ``x``; returns float32 ``(k, d)``."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if faiss is not None:
            km = faiss.Kmeans(
                x.shape[1],
                k,
                niter=niter,
                seed=seed,
                spherical=spherical,
                gpu=self.faiss_gpu,
                verbose=False,
                max_points_per_centroid=256,
                min_points_per_centroid=1,
            )
            km.train(x)
            return np.asarray(km.centroids, dtype=np.float32)
        return _numpy_kmeans(x, k, niter=niter, seed=seed, spherical=spherical, tol=tol)

    def nearest(self, x: np.ndarray, centroids: np.ndarray, k: int = 1) -> np.ndarray:
        """Indices ``(n, k)`` of the ``k`` nearest centroids (L2) for each row of ``x``."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if len(x) == 0:
            return np.empty((0, k), dtype=np.int64)
        if faiss is not None:
            return self.knn(x, centroids, k)
        d2 = (centroids**2).sum(1)[None, :] - 2.0 * (x @ centroids.T)
        if k == 1:
            return d2.argmin(1)[:, None]
        part = np.argpartition(d2, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(d2, part, 1).argsort(1)
        return np.take_along_axis(part, order, 1)


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
        self, dim: int, centroids: np.ndarray | None = None, gpu: Any = None, *, half: bool = False
    ) -> None:
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
            self.quantizer = faiss.IndexFlatL2(dim)
            self.quantizer.add(cent)
            if half:
                self.index = faiss.IndexIVFScalarQuantizer(
                    self.quantizer, dim, len(cent), fp16, faiss.METRIC_L2
                )
                self.index.train(cent)  # the quantizer is set; fp16 codes need no training
            else:
                self.index = faiss.IndexIVFFlat(self.quantizer, dim, len(cent), faiss.METRIC_L2)
            # Rows are added in order, so faiss ids are row numbers; an array direct map
            # lets rows be read back (the index can then be their only copy).
            self.index.set_direct_map_type(faiss.DirectMap.Array)
        self.ivf = centroids is not None
        self.half = half
        # faiss's single-query flat scan is ~2x slower here than a BLAS mat-vec over the
        # same memory; for a few queries the flat index is read through a numpy view.
        self._flat_view = centroids is None and not half
        self._sqnorms = np.empty(0, dtype=np.float32)

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

    def reconstruct(self, rows: np.ndarray) -> np.ndarray:
        """The stored vectors of ``rows`` (float32)."""
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        return np.asarray(self.index.reconstruct_batch(rows), dtype=np.float32)

    def nbytes(self) -> int:
        return self.ntotal * self.dim * (2 if self.half else 4)

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
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(distances, rows)`` of the ``k`` nearest valid rows; missing slots are -1.

        ``excluded`` (rows of ``valid`` that are False) is counted here unless given;
        ``host`` searches on the host even with a GPU (an index still being filled would
        be mirrored to the device again after every addition)."""
        if excluded is None:
            excluded = self.ntotal - int(np.count_nonzero(valid[: self.ntotal]))
        device = self.gpu is not None and not host
        if device and excluded <= self.DEVICE_EXCLUSION_LIMIT and self._device_ready():
            return self._search_device(q, k, nprobe, valid, excluded)
        if self._flat_view and len(q) < self.FEW_QUERIES and self.ntotal:
            return self._search_view(q, k, valid, excluded)
        bits = None
        if excluded == 0:  # nothing to exclude: the selector-free scan is faster
            params: Any = faiss.SearchParametersIVF(nprobe=nprobe) if self.ivf else None
        else:
            bits = np.packbits(valid[: self.ntotal], bitorder="little")
            selector = faiss.IDSelectorBitmap(self.ntotal, faiss.swig_ptr(bits))
            if self.ivf:
                params = faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)
            else:
                params = faiss.SearchParameters(sel=selector)
        dist, rows = self.index.search(np.ascontiguousarray(q, dtype=np.float32), k, params=params)
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
            keep = (rows >= 0) & valid[np.clip(rows, 0, None)]
            order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
            rows = np.where(np.take_along_axis(keep, order, 1), np.take_along_axis(rows, order, 1), -1)
            dist = np.take_along_axis(dist, order, 1)
        return dist[:, :k], rows[:, :k]


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    norms = np.sqrt(np.einsum("...i,...i->...", x, x))[..., None]
    return x / np.maximum(norms, 1e-30)


def _numpy_kmeans(x: np.ndarray, k: int, *, niter: int, seed: int, spherical: bool, tol: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cent = x[rng.choice(len(x), size=k, replace=False)].copy()
    prev = np.inf
    for _ in range(niter):
        d2 = (cent**2).sum(1)[None, :] - 2.0 * (x @ cent.T)
        assign = d2.argmin(1)
        inertia = float(d2[np.arange(len(x)), assign].sum())
        for j in range(k):
            members = x[assign == j]
            cent[j] = members.mean(0) if len(members) else x[rng.integers(len(x))]
        if spherical:
            cent /= np.maximum(np.linalg.norm(cent, axis=1, keepdims=True), 1e-12)
        if abs(prev - inertia) <= tol * max(abs(prev), 1.0):
            break
        prev = inertia
    return cent.astype(np.float32)


_selected: Backend | None = None


def select(name: str = "auto") -> Backend:
    """Choose the backend once per process and log the choice."""
    global _selected
    if _selected is not None and name in ("auto", _selected.name):
        return _selected
    faiss_gpu = bool(faiss is not None and hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0)
    chosen: Backend
    if name in ("auto", "cupy"):
        try:
            import cupy

            if cupy.is_available():
                chosen = Backend("cupy", cupy, faiss_gpu)
            elif name == "cupy":
                raise RuntimeError("CIPHERVEC_BACKEND=cupy but no CUDA device is available")
            else:
                chosen = Backend("numpy", np, faiss_gpu)
        except ImportError:
            if name == "cupy":
                raise RuntimeError("CIPHERVEC_BACKEND=cupy but cupy is not installed") from None
            chosen = Backend("numpy", np, faiss_gpu)
    elif name == "numpy":
        chosen = Backend("numpy", np, False)
    else:
        raise ValueError(f"unknown backend {name!r}; use auto, numpy or cupy")
    log.info("array backend: %s (faiss %s)", chosen.name, "gpu" if chosen.faiss_gpu else "cpu")
    _selected = chosen
    return chosen
