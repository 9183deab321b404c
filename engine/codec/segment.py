"""Plaintext byte format of segments (before sealing by ``crypto.IndexCipher``).

A segment is an immutable batch of rows: either upserted rows (ids, vectors, optional
metadata and contents) or tombstones (ids only). Compaction writes a *snapshot*
segment holding every live row of an index as of a sequence number.

Layout, format version 1, 2 when the rows carry analysed terms, 3 when they also carry
the codes a trained index holds in memory::

    0   4   magic b"CVS1"
    4   4   header length H (uint32, little-endian)
    8   H   header: UTF-8 JSON {"v": 1|2|3, "kind": "upsert"|"delete"|"snapshot",
            "n": rows, "d": dimension, "dtype": "float32"|"float16"|"tq12"|"tq8"|"tq6"|"tq4",
            "sizes": [ids, metadata, contents, vectors(, terms(, held))]}   (section bytes)
            version 3 adds "held": {"bits": 8|6|4, "key": the ranges' name}
    ..      ids       JSON array of strings
    ..      metadata  JSON array of objects or null        (empty when absent)
    ..      contents  JSON array of strings or null        (empty when absent)
    ..      vectors   n*d little-endian floats, C order     (empty for tombstones);
                      for the tq tiers, norms and codes (``turboquant``)
    ..      terms     versions 2 and 3: the full-text fields' terms (``terms.py``; may be empty)
    ..      held      version 3 only: n rows of the faiss scalar-quantizer codes a trained
                      tq8/tq6/tq4 index holds for these rows (``Held``)

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
VERSION_HELD = 3
_SECTIONS = {VERSION: 4, VERSION_TERMS: 5, VERSION_HELD: 6}
KINDS = ("upsert", "delete", "snapshot")
_DTYPES: dict[str, np.dtype[Any]] = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}


# A training writes held codes for an index of at least this many rows: below it a cold
# load decodes in a few CPU-seconds, not worth storing the codes twice (tq8: 784 bytes per
# row instead of 400).
HELD_FROM_ROWS = 1 << 18


@dataclass(frozen=True, eq=False)
class Held:
    """The codes a trained tq8/tq6/tq4 index holds in memory for a segment's rows: faiss
    scalar-quantizer codes of the rows as decoded, within the ranges named ``key``
    (``ann.ranges_key``). A training writes them beside its run's rows, so a cold load
    copies them into its lists instead of decoding every row (a float64 rotation) and
    encoding it again; an index whose ranges have another name ignores them."""

    bits: int
    key: str
    codes: np.ndarray  # (n, code bytes) uint8

    def __len__(self) -> int:
        return len(self.codes)

    def take(self, rows: Any) -> Held:
        return Held(self.bits, self.key, self.codes[np.asarray(rows, dtype=np.int64)])

    @staticmethod
    def concat(parts: list[Held | None]) -> Held | None:
        """The parts' codes joined, if every part has codes of the same ranges; else None."""
        first = parts[0]
        if first is None or any(p is None or (p.bits, p.key) != (first.bits, first.key) for p in parts):
            return None
        return Held(first.bits, first.key, np.concatenate([p.codes for p in parts if p is not None]))


@dataclass
class Segment:
    """Rows of one write. ``vectors`` is float32 ``(n, d)``; None for tombstones."""

    kind: str
    ids: list[str]
    vectors: np.ndarray | None = None
    metadata: list[dict[str, Any] | None] | None = None
    contents: list[str | None] | None = None
    terms: Terms | None = None  # the full-text fields' analysed terms (``terms.py``)
    held: Held | None = None  # the rows' codes in a trained index's memory (``Held``)

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
            None if self.held is None else self.held.take(rows),
        )


def _dump(values: list[Any] | None) -> bytes:
    if values is None or not any(v is not None for v in values):
        return b""
    return json.dumps(values, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def encode(segment: Segment, dtype: str = "float32", coded: Coded | None = None) -> bytes:
    """Serialise a segment. ``dtype`` is the storage precision of the vectors; ``coded``:
    the rows' vectors as stored already (``segment.vectors`` is then ``None``)."""
    if segment.kind not in KINDS:
        raise ValueError(f"unknown segment kind {segment.kind!r}")
    ids = json.dumps(segment.ids, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    metadata = _dump(segment.metadata)
    contents = _dump(segment.contents)
    vectors: bytes | memoryview
    if coded is not None:
        if coded.dtype != dtype or len(coded) != len(segment.ids):
            raise ValueError("coded rows do not match the segment")
        vectors, d = coded.section(), coded.d
    elif segment.vectors is None:
        vectors, d = b"", 0
    elif dtype in turboquant.TIERS:
        d = int(segment.vectors.shape[1])
        vectors = turboquant.encode(segment.vectors, turboquant.TIERS[dtype])
    else:  # a view: the join below is the only copy
        vectors = np.ascontiguousarray(segment.vectors, dtype=_DTYPES[dtype]).data.cast("B")
        d = int(segment.vectors.shape[1])
    sections: list[bytes | memoryview] = [ids, metadata, contents, vectors]
    held = segment.held if segment.kind != "delete" else None
    if (segment.terms and segment.kind != "delete") or held is not None:
        sections.append(terms_codec.encode(segment.terms) if segment.terms else b"")
    fields: dict[str, Any] = {}
    if held is not None:
        if len(held) != len(segment.ids):
            raise ValueError("held codes do not match the segment")
        sections.append(np.ascontiguousarray(held.codes, dtype=np.uint8).data.cast("B"))
        fields["held"] = {"bits": held.bits, "key": held.key}
    version = {4: VERSION, 5: VERSION_TERMS, 6: VERSION_HELD}[len(sections)]
    header = json.dumps(
        {
            "v": version,
            "kind": segment.kind,
            "n": len(segment.ids),
            "d": d,
            "dtype": dtype,
            "sizes": [len(x) for x in sections],
            **fields,
        }
    ).encode()
    return b"".join([MAGIC, struct.pack("<I", len(header)), header, *sections])


# Rows TurboQuant encodes at a time: it keeps several copies of its input alive at once
# (float32 products, int64 bin numbers: ~18 bytes per value, 7 GB for a million 384-d rows).
ENCODE_ROWS = 1 << 16


def coded(vectors: np.ndarray, dtype: str) -> Coded:
    """``vectors`` (float32 ``(n, d)``) encoded at ``dtype``, as a segment stores them (a
    row's codes do not depend on the rows encoded with it)."""
    n, d = vectors.shape
    if dtype not in turboquant.TIERS:
        return Coded.parse(np.ascontiguousarray(vectors, dtype=_DTYPES[dtype]).tobytes(), n, d, dtype)
    bits = turboquant.TIERS[dtype]
    parts = [
        Coded.parse(
            turboquant.encode(vectors[lo : lo + ENCODE_ROWS], bits), min(ENCODE_ROWS, n - lo), d, dtype
        )
        for lo in range(0, max(n, 1), ENCODE_ROWS)
    ]
    return parts[0] if len(parts) == 1 else Coded.concat(parts)


def _sections(data: bytes | memoryview) -> tuple[dict[str, Any], list[memoryview]]:
    """The header and the sections of a segment's bytes (checked for size only)."""
    if bytes(data[:4]) != MAGIC:
        raise ValueError("bad magic")
    (hlen,) = struct.unpack_from("<I", data, 4)
    header = json.loads(bytes(data[8 : 8 + hlen]))
    if header["v"] not in _SECTIONS or header["kind"] not in KINDS:
        raise ValueError("unsupported version or kind")
    sizes = header["sizes"]
    if len(sizes) != _SECTIONS[header["v"]]:
        raise ValueError("wrong number of sections")
    offset = 8 + hlen
    parts = []
    for size in sizes:
        parts.append(memoryview(data)[offset : offset + int(size)])
        offset += int(size)
    if offset != len(data):
        raise ValueError("section sizes do not add up")
    return header, parts


def _rows(header: dict[str, Any], parts: list[memoryview], held: str | None = None) -> Segment:
    """Every section but the vectors, parsed; the held codes only if of the ranges ``held``."""
    n = int(header["n"])
    ids = json.loads(bytes(parts[0]))
    metadata = json.loads(bytes(parts[1])) if len(parts[1]) else None
    contents = json.loads(bytes(parts[2])) if len(parts[2]) else None
    if len(ids) != n or any(x is not None and len(x) != n for x in (metadata, contents)):
        raise ValueError("row counts disagree")
    terms = terms_codec.decode(parts[4], n) if len(parts) >= 5 and len(parts[4]) else None
    return Segment(header["kind"], ids, None, metadata, contents, terms, _held(header, parts, n, held))


def _held(header: dict[str, Any], parts: list[memoryview], n: int, want: str | None) -> Held | None:
    """The held codes section (version 3) if its ranges are ``want``, copied out of the
    object's bytes; else None (other ranges' codes are of no use to the reader)."""
    if len(parts) < 6 or want is None or str(header["held"]["key"]) != want:
        return None
    spec = header["held"]
    bits, key = int(spec["bits"]), str(spec["key"])
    raw = parts[5]
    if bits not in (8, 6, 4) or (n and len(raw) % n) or (not n and len(raw)):
        raise ValueError("held codes do not fit the rows")
    width = len(raw) // n if n else 0
    if width != -(-int(header["d"]) * bits // 8):
        raise ValueError("held codes have the wrong width")
    return Held(bits, key, np.frombuffer(raw, dtype=np.uint8).reshape(n, width).copy())


def decode(data: bytes, held: str | None = None) -> Segment:
    """Parse bytes written by ``encode``; anything malformed raises ``CorruptObject``.
    ``held``: the ranges' name of the index reading the rows; when the segment holds codes
    of those ranges, its vectors are left undecoded (``vectors`` is None: the codes stand
    for them)."""
    try:
        header, parts = _sections(data)
        seg = _rows(header, parts, held)
        if len(parts[3]) and seg.held is None:
            seg.vectors = _vectors(parts[3], len(seg), int(header["d"]), header["dtype"])
    except (ValueError, KeyError, TypeError, struct.error) as exc:
        raise CorruptObject(f"segment is malformed: {exc}") from None
    return seg


def _vectors(raw: memoryview, n: int, d: int, dtype: str) -> np.ndarray:
    """A vector section as float32 ``(n, d)``, decoded straight from the object's bytes."""
    if dtype in turboquant.TIERS:
        return turboquant.decode(raw, n, d, turboquant.TIERS[dtype])
    return np.frombuffer(raw, dtype=_DTYPES[dtype]).reshape(n, d).astype(np.float32)


def decode_coded(data: bytes) -> tuple[Segment, Coded | None]:
    """Parse bytes written by ``encode`` but leave the vectors as stored (``Coded``): what a
    rewrite that keeps every row's codes needs, without decoding a value."""
    try:
        header, parts = _sections(data)
        seg = _rows(header, parts)
        coded = Coded.parse(parts[3], len(seg), int(header["d"]), header["dtype"]) if len(parts[3]) else None
    except (ValueError, KeyError, TypeError, struct.error) as exc:
        raise CorruptObject(f"segment is malformed: {exc}") from None
    return seg, coded


def decode_ids(data: bytes) -> tuple[str, list[str]]:
    """Only the kind and ids of a segment's bytes (nothing else parsed)."""
    try:
        header, parts = _sections(data)
        ids = json.loads(bytes(parts[0]))
        if not isinstance(ids, list) or len(ids) != int(header["n"]):
            raise ValueError("row counts disagree")
    except (ValueError, KeyError, TypeError, struct.error) as exc:
        raise CorruptObject(f"segment is malformed: {exc}") from None
    return header["kind"], ids


def concat(parts: list[Segment]) -> Segment:
    """Rows of ``parts`` (of one kind, vectors as ``None`` or all present) as one segment."""
    first = parts[0]
    if len(parts) == 1:
        return first
    n = [len(p) for p in parts]
    vectors = [p.vectors for p in parts if p.vectors is not None]
    return Segment(
        first.kind,
        [i for p in parts for i in p.ids],
        np.concatenate(vectors) if len(vectors) == len(parts) else None,
        _joined([p.metadata for p in parts], n),
        _joined([p.contents for p in parts], n),
        terms_codec.concat([p.terms or {} for p in parts]) if any(p.terms for p in parts) else None,
        Held.concat([p.held for p in parts]),
    )


def _joined(columns: list[list[Any] | None], n: list[int]) -> list[Any] | None:
    if all(c is None for c in columns):
        return None
    return [v for c, m in zip(columns, n, strict=True) for v in (c if c is not None else [None] * m)]


@dataclass
class Coded:
    """Rows' vectors exactly as stored: raw float bytes, or a tq tier's norms and codes, one
    row of ``rows`` per vector. Taken and joined without decoding, so rows rewritten this way
    keep every bit of their codes."""

    dtype: str
    d: int
    norms: np.ndarray | None  # (n,) float32: the tq tiers only
    rows: np.ndarray  # (n, bytes per row) uint8

    def __len__(self) -> int:
        return len(self.rows)

    @classmethod
    def parse(cls, raw: bytes | memoryview, n: int, d: int, dtype: str) -> Coded:
        if dtype in turboquant.TIERS:
            width = turboquant.row_bytes(d, turboquant.TIERS[dtype])
            if len(raw) != n * (4 + width):
                raise ValueError(f"{len(raw)} bytes of {dtype} codes, expected {n * (4 + width)}")
            norms = np.frombuffer(raw, dtype="<f4", count=n)
            return cls(dtype, d, norms, np.frombuffer(raw, dtype=np.uint8, offset=4 * n).reshape(n, width))
        width = d * _DTYPES[dtype].itemsize
        if len(raw) != n * width:
            raise ValueError(f"{len(raw)} bytes of {dtype} vectors, expected {n * width}")
        return cls(dtype, d, None, np.frombuffer(raw, dtype=np.uint8).reshape(n, width))

    def slice(self, lo: int, hi: int) -> Coded:
        """Rows ``lo .. hi - 1`` (a view)."""
        return Coded(self.dtype, self.d, None if self.norms is None else self.norms[lo:hi], self.rows[lo:hi])

    def take(self, rows: Any) -> Coded:
        """The rows at positions ``rows`` (copied)."""
        rows = np.asarray(rows, dtype=np.int64)
        return Coded(self.dtype, self.d, None if self.norms is None else self.norms[rows], self.rows[rows])

    @staticmethod
    def concat(parts: list[Coded]) -> Coded:
        first = parts[0]
        norms = (
            None if first.norms is None else np.concatenate([p.norms for p in parts if p.norms is not None])
        )
        return Coded(first.dtype, first.d, norms, np.concatenate([p.rows for p in parts]))

    def section(self) -> bytes:
        """The vector section of a segment holding these rows."""
        body = np.ascontiguousarray(self.rows).tobytes()
        return body if self.norms is None else np.ascontiguousarray(self.norms, dtype="<f4").tobytes() + body

    def decode(self) -> np.ndarray:
        """The rows as float32 ``(n, d)``: what every reader of them holds."""
        return _vectors(memoryview(self.section()), len(self.rows), self.d, self.dtype)
