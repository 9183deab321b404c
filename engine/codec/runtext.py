"""A run's text objects: the BM25 postings of a run's rows grouped by term, with their ids,
so that a cold container answers a text query without reading the run's lists.

A training (or a tail merge) that writes a run of an index with full-text fields writes,
beside its list objects, ``<run>-text-0``, ``<run>-text-1``, ... (sealed like them, each
under its own name), and lists their row counts in the run's directory (``"text"``).
Object g holds the next ``text[g]`` rows of the run in run order: list 0's rows, then list
1's, and so on (``Directory.rows`` tells where each list starts); an object ends where a
list does. The terms come from the rows' stored terms, so nothing is analysed again; they
exist only in sealed objects and in memory, like the metadata they come from.

Byte layout::

    0   4   header length H (uint32, little-endian)
    4   H   header: UTF-8 JSON {"v": 1, "analyzer": version, "n": rows, "ids": bytes,
            "fields": [[name, n_terms, n_postings, vocab_bytes], ...]}
    ..      ids: JSON array of the rows' ids (strings)
    ..      per field, in header order: vocab (JSON array of strings: term id -> term),
            lengths (n int32: each row's length in terms), terms (n_terms int32, ascending,
            each used), ptr (n_terms + 1 int64), rows (n_postings int32: ascending within a
            term), tf (n_postings int32, each >= 1)
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import numpy as np

from ..arrays import text as analysis

VERSION = 1


def text_name(run_name: str, part: int) -> str:
    """Text object ``part`` of run ``run_name``."""
    return f"{run_name}-text-{part}"


@dataclass(frozen=True, eq=False)
class FieldPostings:
    """One full-text field over a run's rows, grouped by term (see the module docstring)."""

    vocab: tuple[str, ...]
    lengths: np.ndarray  # int32 (n,)
    terms: np.ndarray  # int32 (distinct terms,), ascending
    ptr: np.ndarray  # int64 (distinct terms + 1,)
    rows: np.ndarray  # int32 (postings,)
    tf: np.ndarray  # int32 (postings,)


@dataclass(frozen=True, eq=False)
class RunText:
    """The ids and full-text postings of a run's rows, in run order."""

    ids: list[str]
    fields: dict[str, FieldPostings]

    def encode(self) -> bytes:
        ids = json.dumps(self.ids, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        heads, chunks = [], [ids]
        for name, f in self.fields.items():
            vocab = json.dumps(list(f.vocab), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
            heads.append([name, len(f.terms), len(f.rows), len(vocab)])
            arrays = ((f.lengths, "<i4"), (f.terms, "<i4"), (f.ptr, "<i8"), (f.rows, "<i4"), (f.tf, "<i4"))
            chunks += [vocab] + [np.ascontiguousarray(a, dtype=t).tobytes() for a, t in arrays]
        header = {
            "v": VERSION, "analyzer": analysis.ANALYZER, "n": len(self.ids), "ids": len(ids), "fields": heads,
        }  # fmt: skip
        raw = json.dumps(header).encode()
        return b"".join([struct.pack("<I", len(raw)), raw, *chunks])

    @staticmethod
    def decode(raw: bytes | memoryview) -> RunText | None:
        """Parse a text object (``None``: written by another analyzer; the reader then loads
        the run's lists instead). Malformed input raises ``ValueError``."""
        raw = memoryview(raw)
        (hlen,) = struct.unpack_from("<I", raw, 0)
        header = json.loads(bytes(raw[4 : 4 + hlen]))
        if header["v"] != VERSION:
            raise ValueError("unsupported text object version")
        if header["analyzer"] != analysis.ANALYZER:
            return None
        n, at = int(header["n"]), 4 + hlen
        ids = json.loads(bytes(raw[at : at + int(header["ids"])]))
        at += int(header["ids"])
        if not isinstance(ids, list) or len(ids) != n or not all(isinstance(i, str) for i in ids):
            raise ValueError("text object ids do not add up")

        def take(dtype: str, count: int) -> np.ndarray:
            nonlocal at
            out = np.frombuffer(raw, dtype=dtype, count=count, offset=at)
            at += out.nbytes
            return out.astype(np.int64 if dtype == "<i8" else np.int32)

        fields = {}
        for name, n_terms, n_post, vocab_bytes in header["fields"]:
            vocab = json.loads(bytes(raw[at : at + vocab_bytes]))
            at += vocab_bytes
            f = FieldPostings(
                tuple(vocab), take("<i4", n), take("<i4", n_terms), take("<i8", n_terms + 1),
                take("<i4", n_post), take("<i4", n_post),
            )  # fmt: skip
            _check(f, n)
            fields[str(name)] = f
        if at != len(raw):
            raise ValueError("text object has trailing bytes")
        return RunText(ids, fields)


def _check(f: FieldPostings, n: int) -> None:
    """Every array in range, so a search indexes nothing out of bounds."""
    steps = np.diff(f.ptr)
    bad = (
        len(f.terms) > len(f.vocab)
        or f.ptr[0] != 0
        or f.ptr[-1] != len(f.rows)
        or (steps < 1).any()
        or (len(f.terms) and (int(f.terms.min()) < 0 or int(f.terms.max()) >= len(f.vocab)))
        or (np.diff(f.terms) <= 0).any()
        or (len(f.rows) and (int(f.rows.min()) < 0 or int(f.rows.max()) >= n or int(f.tf.min()) < 1))
        or (len(f.lengths) and int(f.lengths.min()) < 0)
    )
    if bad:
        raise ValueError("text object postings do not add up")
