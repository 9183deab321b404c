"""A training's centroids object: the IVF centroids and, for a TurboQuant tier, the scalar
quantizer's per-dimension ranges (fitted once for every part), stored as one ``.npy`` array
with the two ranges rows below the ``n_lists`` centroids."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TrainedLists:
    """What a training fixed for the lists: ``centroids`` (n_lists × d, float32 on the host)
    and ``ranges`` (2 × d, the tq tiers' quantizer ranges) or None."""

    centroids: np.ndarray
    ranges: np.ndarray | None = None

    def encode(self) -> bytes:
        arr = self.centroids if self.ranges is None else np.concatenate([self.centroids, self.ranges])
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(arr, dtype=np.float32), allow_pickle=False)
        return buf.getvalue()

    @classmethod
    def decode(cls, raw: bytes, ranges: bool) -> TrainedLists:
        """``ranges``: the index's tier is a TurboQuant one, so the last two rows are ranges."""
        arr = np.load(io.BytesIO(raw), allow_pickle=False)
        if not ranges:
            return cls(arr)
        if len(arr) < 3:
            raise ValueError(f"a centroids object of {len(arr)} rows cannot hold its ranges")
        return cls(arr[:-2], arr[-2:])
