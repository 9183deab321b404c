"""Plaintext byte format of segments (before sealing by ``crypto.IndexCipher``).

A segment is an immutable batch of rows: either upserted rows (ids, vectors, optional
metadata and contents) or tombstones (ids only). Compaction writes a *snapshot*
segment holding every live row of an index as of a sequence number.

Layout, format version 1, or 2 when the rows carry analysed terms::

    0   4   magic b"CVS1"
    4   4   header length H (uint32, little-endian)
    8   H   header: UTF-8 JSON {"v": 1|2, "kind": "upsert"|"delete"|"snapshot",
            "n": rows, "d": dimension, "dtype": "float32"|"float16"|"tq12"|"tq8"|"tq6"|"tq4",
            "sizes": [ids, metadata, contents, vectors(, terms)]}   (byte sizes of the sections)
    ..      ids       JSON array of strings
    ..      metadata  JSON array of objects or null        (empty when absent)
    ..      contents  JSON array of strings or null        (empty when absent)
    ..      vectors   n*d little-endian floats, C order     (empty for tombstones);
                      for the tq tiers, norms and codes (``turboquant``)
    ..      terms     version 2 only: the full-text fields' terms (``terms.py``)

JSON arrays keep the per-row work inside the C JSON codec; vectors stay raw.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..arrays import turboquant
from ..errors import CorruptObject
from . import terms as terms_codec
from .terms import Terms

MAGIC = b"CVS1"
VERSION = 1
VERSION_TERMS = 2
KINDS = ("upsert", "delete", "snapshot")
_DTYPES: dict[str, np.dtype[Any]] = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}


@dataclass
class Segment:
    """Rows of one write. ``vectors`` is float32 ``(n, d)``; None for tombstones."""

    kind: str
    ids: list[str]
    vectors: np.ndarray | None = None
    metadata: list[dict[str, Any] | None] | None = None
    contents: list[str | None] | None = None
    terms: Terms | None = None  # the full-text fields' analysed terms (``terms.py``)

    def __len__(self) -> int:
        return len(self.ids)

    def with_terms(self, fields: tuple[str, ...]) -> Segment:
        """This segment with the terms of every full-text field in ``fields`` (analysed here
        for the fields it does not carry yet)."""
        if self.kind == "delete" or not fields:
            return self
        missing = tuple(f for f in fields if self.terms is None or f not in self.terms)
        if not missing:
            return self
        fresh = terms_codec.analyze(self.metadata, len(self.ids), missing)
        return replace(self, terms={**(self.terms or {}), **fresh})

    def take(self, rows: Any) -> Segment:
        """The rows at positions ``rows``, as a segment of the same kind."""
        return Segment(
            self.kind,
            [self.ids[i] for i in rows],
            None if self.vectors is None else self.vectors[np.asarray(rows, dtype=np.int64)],
            [self.metadata[i] for i in rows] if self.metadata else None,
            [self.contents[i] for i in rows] if self.contents else None,
            terms_codec.take(self.terms, rows),
        )


def _dump(values: list[Any] | None) -> bytes:
    if values is None or not any(v is not None for v in values):
        return b""
    return json.dumps(values, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def encode(segment: Segment, dtype: str = "float32") -> bytes:
    """Serialise a segment. ``dtype`` is the storage precision of the vectors."""
    if segment.kind not in KINDS:
        raise ValueError(f"unknown segment kind {segment.kind!r}")
    ids = json.dumps(segment.ids, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    metadata = _dump(segment.metadata)
    contents = _dump(segment.contents)
    vectors: bytes | memoryview
    if segment.vectors is None:
        vectors, d = b"", 0
    elif dtype in turboquant.TIERS:
        d = int(segment.vectors.shape[1])
        vectors = turboquant.encode(segment.vectors, turboquant.TIERS[dtype])
    else:  # a view: the join below is the only copy
        vectors = np.ascontiguousarray(segment.vectors, dtype=_DTYPES[dtype]).data.cast("B")
        d = int(segment.vectors.shape[1])
    sections = [ids, metadata, contents, vectors]
    if segment.terms and segment.kind != "delete":
        sections.append(terms_codec.encode(segment.terms))
    header = json.dumps(
        {
            "v": VERSION if len(sections) == 4 else VERSION_TERMS,
            "kind": segment.kind,
            "n": len(segment.ids),
            "d": d,
            "dtype": dtype,
            "sizes": [len(x) for x in sections],
        }
    ).encode()
    return b"".join([MAGIC, struct.pack("<I", len(header)), header, *sections])


def as_stored(vectors: np.ndarray, dtype: str) -> np.ndarray:
    """``vectors`` as a reader decodes them after ``encode`` at ``dtype`` (a writer's own
    copy must hold what every other reader will)."""
    if dtype in turboquant.TIERS:
        bits = turboquant.TIERS[dtype]
        return turboquant.decode(turboquant.encode(vectors, bits), len(vectors), vectors.shape[1], bits)
    if dtype == "float16":
        return vectors.astype(np.float16).astype(np.float32)
    return vectors


def decode(data: bytes) -> Segment:
    """Parse bytes written by ``encode``; anything malformed raises ``CorruptObject``."""
    try:
        if data[:4] != MAGIC:
            raise ValueError("bad magic")
        (hlen,) = struct.unpack_from("<I", data, 4)
        header = json.loads(data[8 : 8 + hlen])
        if header["v"] not in (VERSION, VERSION_TERMS) or header["kind"] not in KINDS:
            raise ValueError("unsupported version or kind")
        n, d = int(header["n"]), int(header["d"])
        sizes = header["sizes"]
        if len(sizes) != (4 if header["v"] == VERSION else 5):
            raise ValueError("wrong number of sections")
        offset = 8 + hlen
        parts = []
        for size in sizes:
            parts.append(memoryview(data)[offset : offset + size])
            offset += size
        if offset != len(data):
            raise ValueError("section sizes do not add up")
        ids = json.loads(bytes(parts[0]))
        metadata = json.loads(bytes(parts[1])) if sizes[1] else None
        contents = json.loads(bytes(parts[2])) if sizes[2] else None
        vectors = None
        if sizes[3] and header["dtype"] in turboquant.TIERS:
            vectors = turboquant.decode(parts[3], n, d, turboquant.TIERS[header["dtype"]])
        elif sizes[3]:
            raw = np.frombuffer(parts[3], dtype=_DTYPES[header["dtype"]])
            vectors = raw.reshape(n, d).astype(np.float32)
        if len(ids) != n or any(x is not None and len(x) != n for x in (metadata, contents)):
            raise ValueError("row counts disagree")
        terms = terms_codec.decode(parts[4], n) if len(sizes) == 5 and sizes[4] else None
    except (ValueError, KeyError, TypeError, struct.error) as exc:
        raise CorruptObject(f"segment is malformed: {exc}") from None
    return Segment(header["kind"], ids, vectors, metadata, contents, terms)
