"""The one place that picks the array namespace (numpy, CuPy, array-api-strict) and faiss CPU
or GPU, once per process, and logs the choice.

``select(name)`` with ``auto`` (default), ``numpy``, ``cupy`` or ``strict``: ``auto`` takes
CuPy when ``cupy.is_available()``, else numpy; faiss runs on the GPU when
``faiss.get_num_gpus() > 0``; ``strict`` is array-api-strict with host faiss, proving on a
CPU-only machine that the engine's array math (``kernels``) is portable. The engine's math
runs on ``Backend.xp``; ``asarray``/``to_host`` are the only conversions, at the faiss and
crypto boundaries.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from array_api_compat import is_cupy_array

from . import ann
from .ann import HAS_FAISS, AnnIndex

log = logging.getLogger("ciphervec.backend")
NAMES = ("auto", "numpy", "cupy", "strict")


@dataclass
class Backend:
    """An array namespace plus the handful of numeric kernels that differ per device."""

    name: str
    xp: Any
    faiss_gpu: bool
    _resources: Any = None

    def asarray(self, host: np.ndarray) -> Any:
        """A host array as an array of this backend's namespace (no copy on numpy)."""
        return host if self.name == "numpy" else self.xp.asarray(host)

    def to_host(self, x: Any) -> np.ndarray:
        """An array of this backend's namespace as host numpy (no copy on numpy)."""
        if isinstance(x, np.ndarray):
            return x
        if is_cupy_array(x):  # pragma: no cover - GPU hosts (tests marked gpu)
            return np.asarray(x.get())
        return np.from_dlpack(x)

    @contextmanager
    def threads(self, n: int) -> Iterator[None]:
        """faiss uses at most ``n`` OpenMP threads for calls made by this thread (the setting
        is per calling thread: training elsewhere keeps every core)."""
        before = ann.faiss.omp_get_max_threads()
        if before == n:
            yield
            return
        ann.faiss.omp_set_num_threads(n)
        try:
            yield
        finally:
            ann.faiss.omp_set_num_threads(before)

    @property
    def gpu_resources(self) -> Any:
        """One ``StandardGpuResources`` per process (streams, scratch memory)."""
        if self._resources is None:
            self._resources = ann.faiss.StandardGpuResources()
        return self._resources

    def ann_index(
        self,
        dim: int,
        centroids: np.ndarray | None = None,
        *,
        half: bool = False,
        quantizer: Any = None,
        bits: int = 0,
        ranges: np.ndarray | None = None,
    ) -> AnnIndex:
        """A flat or IVF index (float16 codes when ``half``, ``bits``-bit codes within
        ``ranges``); mirrored on a GPU when present."""
        gpu = self.gpu_resources if self.faiss_gpu else None
        return AnnIndex(dim, centroids, gpu, half=half, quantizer=quantizer, bits=bits, ranges=ranges)

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
            dist, idx = ann.faiss.knn_gpu(self.gpu_resources, q, x, k)
        else:
            dist, idx = ann.faiss.knn(q, x, k)
        return np.asarray(dist), np.asarray(idx)

    def kmeans(
        self, x: np.ndarray, k: int, *, niter: int, seed: int, spherical: bool, tol: float
    ) -> np.ndarray:
        """Train ``k`` centroids on float32 rows ``x``; returns float32 ``(k, d)``."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if HAS_FAISS:
            km = ann.faiss.Kmeans(
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
        if HAS_FAISS:
            return self.knn(x, centroids, k)
        d2 = (centroids**2).sum(1)[None, :] - 2.0 * (x @ centroids.T)
        if k == 1:
            return d2.argmin(1)[:, None]
        part = np.argpartition(d2, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(d2, part, 1).argsort(1)
        return np.take_along_axis(part, order, 1)


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


def _build(name: str) -> Backend:
    if name == "strict":
        try:
            import array_api_strict
        except ImportError:
            raise RuntimeError("CIPHERVEC_BACKEND=strict needs array-api-strict (the [dev] extra)") from None
        return Backend("strict", array_api_strict, False)
    if name == "numpy":
        return Backend("numpy", _compat("numpy"), False)
    # Asked only here: it imports faiss (numpy and strict never run faiss on a GPU).
    faiss_gpu = bool(HAS_FAISS and hasattr(ann.faiss, "get_num_gpus") and ann.faiss.get_num_gpus() > 0)
    try:
        import cupy
    except ImportError:
        if name == "cupy":
            raise RuntimeError("CIPHERVEC_BACKEND=cupy but cupy is not installed") from None
        return Backend("numpy", _compat("numpy"), faiss_gpu)
    if cupy.is_available():  # pragma: no cover - GPU hosts
        return Backend("cupy", _compat("cupy"), faiss_gpu)
    if name == "cupy":
        raise RuntimeError("CIPHERVEC_BACKEND=cupy but no CUDA device is available")
    return Backend("numpy", _compat("numpy"), faiss_gpu)


def _compat(name: str) -> Any:
    """The standard namespace over numpy (numpy >= 2.1 itself) or CuPy (array-api-compat's)."""
    if name == "cupy":  # pragma: no cover - GPU hosts
        import array_api_compat.cupy

        return array_api_compat.cupy
    return np


def select(name: str = "auto") -> Backend:
    """Choose the backend once per process and log the choice."""
    global _selected
    if _selected is not None and name in ("auto", _selected.name):
        return _selected
    if name not in NAMES:
        raise ValueError(f"unknown backend {name!r}; use one of {', '.join(NAMES)}")
    chosen = _build(name)
    log.info("array backend: %s (faiss %s)", chosen.name, "gpu" if chosen.faiss_gpu else "cpu")
    _selected = chosen
    return chosen
