"""The analysed terms of a batch of rows' full-text fields, and their byte format.

A write analyses its own rows' ``full_text`` fields once (``analyze``) and stores the result
in the segment beside the rows (``segment.encode``'s terms section, sealed with them), so no
container ever analyses those rows again: a cold one reads the terms as it reads the rows,
merges and trainings carry them over row by row. Terms exist only inside sealed objects
and in memory, like the metadata they come from.

``FieldTerms`` holds one field over ``n`` rows, row-major: row ``i``'s distinct terms are
``term[indptr[i]:indptr[i+1]]`` (ids into ``vocab``, ascending) with their counts ``tf``; a
row's length (what BM25 normalises by) is the sum of its counts.

Byte layout (inside a segment, after the vectors)::

    0   4   header length H (uint32, little-endian)
    4   H   header: UTF-8 JSON {"analyzer": version, "fields": [[name, n_terms, n_postings,
            vocab_bytes], ...]}
    ..      per field, in header order: vocab (JSON array of strings), indptr (n+1 int64),
            term (int32), tf (int32)
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..arrays import text as analysis
from ..arrays.filters import lookup


@dataclass(frozen=True, eq=False)
class FieldTerms:
    """One full-text field's terms over a batch of rows (see the module docstring)."""

    vocab: tuple[str, ...]
    indptr: np.ndarray  # int64 (n + 1,)
    term: np.ndarray  # int32 (postings,)
    tf: np.ndarray  # int32 (postings,)

    def __len__(self) -> int:
        return len(self.indptr) - 1

    @staticmethod
    def of(texts: list[str]) -> FieldTerms:
        """Analyse ``texts`` (one per row) as the index and its queries do."""
        ids, vocab = analysis.analyze_ids(texts)
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter((t for doc in ids for t in doc), dtype=np.int64, count=int(lengths.sum()))
        row = np.repeat(np.arange(len(ids), dtype=np.int64), lengths)
        width = max(len(vocab), 1)
        keys, tf = np.unique(row * width + flat, return_counts=True)  # by row, then term
        counts = np.bincount(keys // width, minlength=len(ids))
        indptr = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        return FieldTerms(tuple(vocab), indptr, (keys % width).astype(np.int32), tf.astype(np.int32))

    def lengths(self) -> np.ndarray:
        """Each row's length in terms (int64)."""
        out = np.zeros(len(self), dtype=np.int64)
        nonempty = self.indptr[1:] > self.indptr[:-1]
        if len(self.tf):
            out[nonempty] = np.add.reduceat(self.tf.astype(np.int64), self.indptr[:-1][nonempty])
        return out

    def take(self, rows: Any) -> FieldTerms:
        """Rows ``rows`` (any order, repeats allowed), over the same vocabulary."""
        rows = np.asarray(rows, dtype=np.int64)
        starts, ends = self.indptr[rows], self.indptr[rows + 1]
        counts = ends - starts
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        at = np.repeat(starts - indptr[:-1], counts) + np.arange(indptr[-1], dtype=np.int64)
        return FieldTerms(self.vocab, indptr, self.term[at], self.tf[at])

    def pruned(self) -> FieldTerms:
        """The same rows over only the terms they use (what is stored)."""
        used = np.unique(self.term)
        if len(used) == len(self.vocab):
            return self
        vocab = tuple(self.vocab[i] for i in used.tolist())
        return FieldTerms(vocab, self.indptr, np.searchsorted(used, self.term).astype(np.int32), self.tf)

    @staticmethod
    def concat(parts: list[FieldTerms]) -> FieldTerms:
        """The rows of ``parts`` one after another, over one merged vocabulary."""
        if len(parts) == 1:
            return parts[0]
        index: dict[str, int] = {}
        terms, indptrs, offset = [], [np.zeros(1, dtype=np.int64)], 0
        for part in parts:
            # only the terms the part's rows use: a part taken out of a bigger batch keeps
            # that batch's whole vocabulary (a list of a run gathered from many segments)
            used = np.unique(part.term)
            remap = np.zeros(len(part.vocab), dtype=np.int32)
            remap[used] = np.fromiter(
                (index.setdefault(part.vocab[i], len(index)) for i in used.tolist()),
                dtype=np.int32,
                count=len(used),
            )
            terms.append(remap[part.term] if len(part.term) else part.term)
            indptrs.append(part.indptr[1:] + offset)
            offset += int(part.indptr[-1])
        term = np.concatenate(terms)
        tf = np.concatenate([p.tf for p in parts])
        indptr = np.concatenate(indptrs)
        # each row's terms ascending again (the merged vocabulary renumbered them)
        row = np.repeat(np.arange(len(indptr) - 1, dtype=np.int64), np.diff(indptr))
        order = np.lexsort((term, row))
        return FieldTerms(tuple(index), indptr, term[order], tf[order])


Terms = dict[str, FieldTerms]


def field_texts(metadata: list[dict[str, Any] | None] | None, n: int, field: str) -> list[str]:
    """The text of ``field`` in each row's metadata ('' where it has none)."""
    if not metadata:
        return [""] * n
    path = field.split(".")
    return [_text(lookup(m, path)) if m is not None else "" for m in metadata]


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return " ".join(v for v in value if isinstance(v, str))
    return ""


def analyze(metadata: list[dict[str, Any] | None] | None, n: int, fields: tuple[str, ...]) -> Terms:
    """The terms of every full-text field of ``n`` rows."""
    return {f: FieldTerms.of(field_texts(metadata, n, f)) for f in fields}


def take(terms: Terms | None, rows: Any) -> Terms | None:
    return None if terms is None else {f: t.take(rows) for f, t in terms.items()}


def concat(parts: list[Terms]) -> Terms:
    """The terms of several batches, one after another (the fields every batch has)."""
    fields = [f for f in parts[0] if all(f in p for p in parts)]
    return {f: FieldTerms.concat([p[f] for p in parts]) for f in fields}


def pick(rows: list[tuple[Any, int]]) -> Terms | None:
    """The terms of rows picked out of several segments, ``(segment, row)`` in the order
    wanted (``None`` when one of those segments carries no terms)."""
    sources: dict[int, tuple[Any, list[int], list[int]]] = {}
    for out, (seg, j) in enumerate(rows):
        if seg.terms is None:
            return None
        entry = sources.setdefault(id(seg), (seg, [], []))
        entry[1].append(out)
        entry[2].append(j)
    if not sources:
        return None
    merged = concat([{f: t.take(js) for f, t in seg.terms.items()} for seg, _, js in sources.values()])
    placed = np.concatenate([np.asarray(outs, dtype=np.int64) for _, outs, _ in sources.values()])
    back = np.empty_like(placed)
    back[placed] = np.arange(len(placed), dtype=np.int64)
    return {f: t.take(back) for f, t in merged.items()}


def encode(terms: Terms) -> bytes:
    """The terms section of a segment."""
    fields, chunks = [], []
    for name, full in terms.items():
        ft = full.pruned()
        vocab = json.dumps(list(ft.vocab), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        fields.append([name, len(ft.vocab), len(ft.term), len(vocab)])
        chunks += [
            vocab,
            np.ascontiguousarray(ft.indptr, dtype="<i8").tobytes(),
            np.ascontiguousarray(ft.term, dtype="<i4").tobytes(),
            np.ascontiguousarray(ft.tf, dtype="<i4").tobytes(),
        ]
    header = json.dumps({"analyzer": analysis.ANALYZER, "fields": fields}).encode()
    return b"".join([struct.pack("<I", len(header)), header, *chunks])


def decode(raw: bytes | memoryview, n: int) -> Terms | None:
    """Parse a terms section of ``n`` rows (``None``: written by another analyzer, so the
    reader analyses the rows itself). Malformed input raises ``ValueError``."""
    raw = memoryview(raw)
    (hlen,) = struct.unpack_from("<I", raw, 0)
    header = json.loads(bytes(raw[4 : 4 + hlen]))
    if header["analyzer"] != analysis.ANALYZER:
        return None
    at, out = 4 + hlen, {}
    for name, n_terms, n_post, vocab_bytes in header["fields"]:
        vocab = json.loads(bytes(raw[at : at + vocab_bytes]))
        at += vocab_bytes
        indptr = np.frombuffer(raw, dtype="<i8", count=n + 1, offset=at).astype(np.int64)
        at += 8 * (n + 1)
        term = np.frombuffer(raw, dtype="<i4", count=n_post, offset=at).astype(np.int32)
        at += 4 * n_post
        tf = np.frombuffer(raw, dtype="<i4", count=n_post, offset=at).astype(np.int32)
        at += 4 * n_post
        bad_term = len(term) and (int(term.min()) < 0 or int(term.max()) >= n_terms)
        if len(vocab) != n_terms or indptr[0] != 0 or indptr[-1] != n_post or bad_term:
            raise ValueError("terms section does not add up")
        if (np.diff(indptr) < 0).any() or (len(tf) and int(tf.min()) < 1):
            raise ValueError("terms section does not add up")
        out[str(name)] = FieldTerms(tuple(vocab), indptr, term, tf)
    if at != len(raw):
        raise ValueError("terms section has trailing bytes")
    return out
