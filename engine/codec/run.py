"""Runs: the trained base of an index, stored one IVF list per object.

Training writes every live row into a run grouped by IVF list, so that a cold container
answers its first query after reading only the head, the centroids, the run's directory
and the lists the query probes, instead of the whole index. One object per list also
keeps every object small (a single object would meet S3's 5 GB PUT limit at a few
million 384-d rows) and lets lists be read in parallel.

Objects of a run called ``name`` (e.g. ``run/<id>``), each sealed by ``IndexCipher``
under its own object name, so a list moved to another list, run, index or tenant fails
authentication like any swapped object::

    <name>       the directory: UTF-8 JSON
                 {"v": 1, "n_lists": L, "rows": [rows of each list], "unit": bool,
                  "dtype": "float32"|"float16", "text": [rows of each text object]}
    <name>-<k>   list k: a segment (``segment.encode``) of kind "snapshot" with the
                 list's rows; empty lists have no object
    <name>-text-<g>  text object g of the run, when the directory lists them: the BM25
                 postings and ids of the next ``text[g]`` rows of the run in list order
                 (``runtext.py``), what a cold text query reads instead of the lists
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from ..errors import CorruptObject
from ..names import base_name as base_name  # (re-exported: a run's objects)
from .segment import Segment

VERSION = 1


@dataclass(frozen=True)
class Directory:
    """How many rows each list of a run holds."""

    n_lists: int
    rows: tuple[int, ...]
    unit: bool  # every row has unit L2 norm (cosine indexes can keep one copy)
    dtype: str
    text: tuple[int, ...] = ()  # rows of each text object (``runtext.py``); () when none

    def to_json(self) -> bytes:
        data = {
            "v": VERSION,
            "n_lists": self.n_lists,
            "rows": list(self.rows),
            "unit": self.unit,
            "dtype": self.dtype,
            "text": list(self.text),
        }
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes, name: str) -> Directory:
        try:
            data = json.loads(raw)
            if data["v"] != VERSION:
                raise ValueError("unsupported run version")
            out = cls(
                int(data["n_lists"]),
                tuple(int(r) for r in data["rows"]),
                bool(data["unit"]),
                data["dtype"],
                tuple(int(r) for r in data.get("text", ())),
            )
            if len(out.rows) != out.n_lists:
                raise ValueError("row counts do not match the list count")
            if out.text and sum(out.text) != sum(out.rows):
                raise ValueError("text objects do not cover the run's rows")
            return out
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptObject(f"run {name!r} has a malformed directory") from exc

    def lists(self) -> list[int]:
        """Lists that have rows (and an object)."""
        return [k for k, n in enumerate(self.rows) if n]


def list_name(name: str, k: int) -> str:
    return f"{name}-{k}"


def group(snapshot: Segment, labels: np.ndarray, n_lists: int) -> list[np.ndarray]:
    """Row numbers of ``snapshot`` in each list (``labels``: each row's IVF list)."""
    labels = np.asarray(labels, dtype=np.int64)
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(n_lists + 1))
    return [order[bounds[k] : bounds[k + 1]] for k in range(n_lists)]
