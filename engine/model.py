"""Typed inputs and outputs of the use cases (independent of the wire format)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .arrays.turboquant import MAX_DIMENSION as MAX_TQ_DIMENSION
from .arrays.turboquant import TIERS
from .errors import InvalidRequest, ValidationFailed
from .names import escape

METRICS = ("euclidean", "squared_euclidean", "cosine")
PRECISIONS = ("float32", "float16", *TIERS)  # tq*: TurboQuant codes (``turboquant``)
INCLUDABLE = ("distance", "metadata", "vector", "contents")
MAX_NAME_BYTES = 255


MAX_DIMENSION = 65536  # values per vector
MAX_LISTS = 65536  # IVF lists (auto n_lists is capped there too)
MAX_VALUE = 1e15  # |value| of a vector component: squared distances stay finite in float32
MAX_FLOAT16 = 65504.0  # the largest float16: a float16 index stores nothing bigger


def memory_dtype(precision: str) -> np.dtype:
    """How rows of an index of ``precision`` are held before they are indexed (tq tiers:
    their decoded float32 values; faiss keeps them as codes of the same width)."""
    return np.dtype(np.float16 if precision == "float16" else np.float32)


def value_bound(precision: str) -> float:
    """The largest |value| an index of ``precision`` stores as given."""
    return MAX_FLOAT16 if precision in ("float16", "tq12") else MAX_VALUE


def check_index_name(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidRequest("index_name must be a non-empty string")
    # The store keeps the name percent-encoded as one path component (``names.escape``): a
    # byte outside ASCII letters, digits and "-._~" takes three, and no file system holds a
    # component over 255 bytes (the file store answered such a name with a 500).
    if len(escape(name)) > MAX_NAME_BYTES:
        raise InvalidRequest(
            f"index_name is too long: at most {MAX_NAME_BYTES} bytes once percent-encoded"
            " (a byte other than an ASCII letter, digit or -._~ counts 3)"
        )
    return name


@dataclass
class IndexConfig:
    """What an index is created with. Defaults match the CyborgDB service."""

    dimension: int = 0  # 0: detected from the first upsert
    metric: str = "euclidean"  # true L2 distance
    storage_precision: str = "float32"
    metadata_schema: dict[str, Any] = field(default_factory=dict)
    index_type: str = "ivfflat"  # reported for legacy SDKs; the engine is IVF-Flat
    index_config: dict[str, Any] = field(default_factory=dict)
    embedding_model: str | None = None
    text: dict[str, Any] | None = None  # full_text fields and BM25 constants (``text.TextConfig``)

    def __post_init__(self) -> None:
        if not isinstance(self.dimension, int) or not 0 <= self.dimension <= MAX_DIMENSION:
            raise InvalidRequest(f"dimension must be an integer from 0 to {MAX_DIMENSION}")
        if self.metric not in METRICS:
            raise InvalidRequest(f"unknown metric; use one of {', '.join(METRICS)}")
        if self.storage_precision not in PRECISIONS:
            raise InvalidRequest(f"storage_precision is not supported; use one of {', '.join(PRECISIONS)}")
        if self.storage_precision in TIERS and self.dimension > MAX_TQ_DIMENSION:
            raise InvalidRequest(f"TurboQuant tiers take dimensions up to {MAX_TQ_DIMENSION}")


@dataclass
class RowBatch:
    """Rows of one upsert, validated: ids are strings, vectors finite float32 (n, d)."""

    ids: list[str]
    vectors: np.ndarray
    metadata: list[dict[str, Any] | None] | None = None
    contents: list[str | None] | None = None

    def __post_init__(self) -> None:
        n = len(self.ids)
        if n == 0:
            raise ValidationFailed("at least one item is required", ("body", "ids"))
        try:  # str.join refuses anything but strings, in C (a generator over the ids cost ~0.5 ms)
            "".join(self.ids)
        except TypeError:
            raise ValidationFailed("every id must be a non-empty string", ("body", "ids")) from None
        if "" in self.ids:
            raise ValidationFailed("every id must be a non-empty string", ("body", "ids"))
        if self.vectors.ndim != 2 or self.vectors.shape[0] != n:
            raise ValidationFailed(
                f"{n} ids but {self.vectors.shape[0] if self.vectors.ndim else 0} vectors",
                ("body", "vectors"),
            )
        if self.vectors.shape[1] < 1:
            raise ValidationFailed("vectors must have at least one dimension", ("body", "vectors"))
        # Two reductions without a temporary (NaN propagates through both); the message is
        # worked out only for a batch that fails.
        if n and not (float(self.vectors.min()) >= -MAX_VALUE and float(self.vectors.max()) <= MAX_VALUE):
            if not np.isfinite(self.vectors).all():
                raise ValidationFailed("vectors must not contain NaN or Inf", ("body", "vectors"))
            raise ValidationFailed(
                f"vector values must lie within ±{MAX_VALUE:g} (so distances stay finite)",
                ("body", "vectors"),
            )
        for name, values in (("metadata", self.metadata), ("contents", self.contents)):
            if values is not None and len(values) != n:
                raise ValidationFailed(f"{n} ids but {len(values)} {name} entries", ("body", name))
        if self.metadata is not None:
            if any(m is not None and not isinstance(m, dict) for m in self.metadata):
                raise ValidationFailed("metadata entries must be JSON objects", ("body", "metadata"))
            self.metadata = [m if m else None for m in self.metadata]
        if self.contents is not None:
            if any(c is not None and not isinstance(c, str) for c in self.contents):
                raise ValidationFailed("contents entries must be strings", ("body", "contents"))
            self.contents = [c if c else None for c in self.contents]

    @property
    def dimension(self) -> int:
        return int(self.vectors.shape[1])


@dataclass
class UpsertResult:
    upserted: int
    total: int
    training_triggered: bool = False
    threshold: int = 0
    merge_due: bool = False  # the write-ahead tail is long enough to merge in the background
    rewrite_due: bool = False  # an interrupted re-encryption (``rekey``) is to be queued again


@dataclass(frozen=True)
class JobResult:
    """What a background job did (``kind``: ``train``, ``merge`` or ``reencrypt``): its
    message, and for a training what was trained."""

    kind: str
    message: str
    training: TrainResult | None = None


@dataclass(frozen=True)
class Rotation:
    """What a key rotation did: the new key mode, and the rewrite of every object under a
    new data key — ``none`` (not asked for), ``done``, ``running`` (in the background) or
    ``retry`` (could not start; the next request on the index takes it up again)."""

    key_mode: str
    rewrite: str = "none"


@dataclass
class TrainResult:
    trained: bool
    message: str
    n_lists: int = 1
    n_probes: int = 1
    recall_estimate: float | None = None
