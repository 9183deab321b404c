"""Rows as a file holds them (``Chunk``), the check that makes them an upsert segment or
says which rows are refused and why, and the line between a bad file and a passing fault."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..codec.segment import Segment
from ..errors import BadSource, CipherVecError
from ..model import MAX_VALUE

ChunkSource = Callable[[dict[str, Any], int | None], Iterable["Chunk"]]


@dataclass
class Chunk:
    """Rows read from a file, not yet checked. ``vectors`` is ``(n, d)`` when every row had
    ``d`` numbers, else None and the reader's findings are in ``bad``."""

    first_row: int
    ids: list[Any]
    vectors: np.ndarray | None
    metadata: list[Any] | None = None
    contents: list[Any] | None = None
    bad: list[tuple[int, str]] = field(default_factory=list)
    # Rows (offsets in the chunk) without a vector but with contents, for the index's
    # embedding model; their rows of ``vectors`` are placeholders until ``embedded``.
    to_embed: list[int] = field(default_factory=list)
    position: dict[str, Any] = field(default_factory=dict)  # where the next chunk starts
    bytes_read: int = 0  # of the file, up to the end of this chunk

    def __len__(self) -> int:
        return len(self.ids)


def check(
    chunk: Chunk, dimension: int, bound: float = MAX_VALUE
) -> tuple[Segment | None, list[tuple[int, str]]]:
    """The chunk's rows as an upsert segment, or the rows refused and why (file row numbers)."""
    bad = list(chunk.bad)
    n, first = len(chunk), chunk.first_row
    if chunk.to_embed:  # not embedded: the index has no embedding model
        why = "row has no vector, and the index has no embedding_model to embed its contents"
        return None, sorted(set(bad) | {(first + r, why) for r in chunk.to_embed})
    vectors = chunk.vectors
    if vectors is not None:
        if vectors.ndim != 2 or vectors.shape[0] != n:
            bad.append((first, "the vector column does not have one vector per row"))
        elif vectors.shape[1] == 0:
            bad.extend((first + r, "vector is empty") for r in range(n))
        elif vectors.shape[1] != dimension:
            bad.extend(
                (first + r, f"vector has {vectors.shape[1]} values; the index dimension is {dimension}")
                for r in range(n)
            )
        else:
            vectors = np.asarray(vectors, dtype=np.float32)
            # Each row's largest and smallest value: a NaN or an infinity makes one of them
            # so, and a finite pair bounds the row (two reductions, no copy of the rows).
            with np.errstate(invalid="ignore"):
                high, low = vectors.max(axis=1), vectors.min(axis=1)
                finite = np.isfinite(high) & np.isfinite(low)
                huge = finite & ((high > bound) | (low < -bound))
            bad.extend((first + int(r), "vector has NaN or Inf values") for r in np.flatnonzero(~finite))
            bad.extend((first + int(r), f"vector has values beyond ±{bound:g}") for r in np.flatnonzero(huge))
    if set(map(type, chunk.ids)) - {str} or not all(chunk.ids):  # the rare file with a bad id
        bad.extend(
            (first + r, "id is not a non-empty string") for r, i in enumerate(chunk.ids) if not _is_id(i)
        )
    metadata = None
    if chunk.metadata is not None:
        metadata = []
        for r, m in enumerate(chunk.metadata):
            value, reason = _metadata(m)
            if reason:
                bad.append((first + r, reason))
            metadata.append(value)
    if chunk.contents is not None:
        bad.extend(
            (first + r, "contents is not a string")
            for r, c in enumerate(chunk.contents)
            if c is not None and not isinstance(c, str)
        )
    if bad or vectors is None:
        return None, sorted(set(bad)) or [(first, "rows have no vectors")]
    contents = [c or None for c in chunk.contents] if chunk.contents is not None else None
    return Segment("upsert", list(chunk.ids), vectors, _none_if_empty(metadata), _none_if_empty(contents)), []


def embedded(chunk: Chunk, embed: Callable[[list[str]], np.ndarray]) -> Chunk:
    """``chunk`` with the rows in ``to_embed`` given ``embed(their contents)`` as vectors
    (rows that came with a vector keep it; rows the reader refused stay refused)."""
    if not chunk.to_embed or chunk.contents is None:
        return chunk
    rows = [r for r in chunk.to_embed if isinstance(chunk.contents[r], str) and chunk.contents[r]]
    vectors, chunk.to_embed = chunk.vectors, []
    if vectors is None or not rows:  # refused already, for what the reader found
        return chunk
    found = np.asarray(embed([chunk.contents[r] for r in rows]), dtype=np.float32)
    if vectors.shape[1] == 0:  # no row came with a vector
        vectors = np.zeros((len(chunk), found.shape[1]), dtype=np.float32)
    elif vectors.shape[1] != found.shape[1]:
        chunk.bad.append(
            (chunk.first_row, f"vectors have {vectors.shape[1]} values; the model makes {found.shape[1]}")
        )
        return chunk
    else:
        vectors = np.array(vectors, dtype=np.float32)
    vectors[rows] = found
    chunk.vectors = vectors
    return chunk


def _is_id(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _metadata(value: Any) -> tuple[dict[str, Any] | None, str | None]:
    if value is None or value == "":
        return None, None
    if isinstance(value, str | bytes):
        try:
            value = json.loads(value)
        except ValueError:
            return None, "metadata is not valid JSON"
    if value is None:
        return None, None
    if not isinstance(value, dict):
        return None, "metadata is not a JSON object"
    try:  # NaN/Inf or other values JSON cannot carry
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return None, "metadata holds a value JSON cannot represent"
    return value or None, None


def _none_if_empty(values: list[Any] | None) -> list[Any] | None:
    return values if values is not None and any(v is not None for v in values) else None


def transient(exc: BaseException) -> bool:
    """A fault of the network or the disk, worth retrying (not a property of the file): OS
    errors other than the plain ones pyarrow raises for corrupt data, and AWS client errors."""
    if isinstance(exc, OSError):
        return type(exc) is not OSError and not type(exc).__module__.startswith("pyarrow")
    return type(exc).__module__.split(".")[0] in ("botocore", "urllib3", "s3transfer")


@contextmanager
def unreadable(message: str) -> Iterator[None]:
    """Whatever the file makes the code inside raise becomes ``BadSource(message)``
    (``{name}`` in it: the error's type); faults worth a retry, and refusals that already
    say why, pass through."""
    try:
        yield
    except CipherVecError:
        raise
    except Exception as exc:
        if transient(exc):
            raise
        raise BadSource(message.format(name=type(exc).__name__)) from None


def guarded(chunks: Iterable[Chunk]) -> Iterator[Chunk]:
    """``chunks``, with whatever a file can make a reader raise turned into ``BadSource``."""
    items = iter(chunks)
    while True:
        with unreadable("the file could not be read ({name})"):
            try:
                chunk = next(items)
            except StopIteration:
                return
        yield chunk


def checked(
    chunk: Chunk, dimension: int, bound: float = MAX_VALUE
) -> tuple[Segment | None, list[tuple[int, str]]]:
    try:
        return check(chunk, dimension, bound)
    except Exception as exc:  # check is pure: whatever it raises, the rows are to blame
        return None, [(chunk.first_row, f"rows could not be read ({type(exc).__name__})")]
