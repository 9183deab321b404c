"""Runs: the trained base of an index, one object whose IVF lists can be read one by one.

Training writes every live row into a run grouped by IVF list, so that a cold container
answers its first query after reading only the head, the centroids, the run's directory
and the lists the query probes (ranged reads), instead of the whole index.

Layout, format version 1 (``name`` is the run's object name, e.g. ``run/<id>``)::

    0   4   magic b"CVR1"
    4   4   directory length D (uint32 little-endian)
    8   D   directory, sealed as "<name>#dir": UTF-8 JSON
            {"v": 1, "n_lists": L, "rows": [..L], "offsets": [..L], "lengths": [..L],
             "unit": bool, "dtype": "float32"|"float16"}
            offsets are absolute byte positions of the frames in this object
    ..      frames: list k sealed as "<name>#list/<k>" — a segment (``segment.encode``)
            of kind "snapshot" with the list's rows; empty lists have no frame

Each frame is sealed on its own under its own name, so a frame moved to another list,
run, index or tenant fails authentication like any swapped object (crypto.py); the
directory is sealed too, so not even the list sizes are readable without the key.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import segment
from .crypto import IndexCipher
from .errors import CorruptObject
from .segment import Segment

MAGIC = b"CVR1"
VERSION = 1
# A cold reader fetches this many leading bytes first; most directories fit.
PREFIX_BYTES = 65536


@dataclass(frozen=True)
class Directory:
    """Where each list's frame lies in a run object."""

    n_lists: int
    rows: tuple[int, ...]
    offsets: tuple[int, ...]
    lengths: tuple[int, ...]
    unit: bool  # every row has unit L2 norm (cosine indexes can keep one copy)
    dtype: str

    @property
    def total_rows(self) -> int:
        return sum(self.rows)


def frame_name(name: str, k: int) -> str:
    return f"{name}#list/{k}"


def encode(
    cipher: IndexCipher,
    name: str,
    snapshot: Segment,
    labels: np.ndarray,
    n_lists: int,
    dtype: str,
    unit: bool,
) -> bytes:
    """Seal ``snapshot``'s rows grouped by ``labels`` (the IVF list of each row)."""
    assert snapshot.vectors is not None
    labels = np.asarray(labels, dtype=np.int64)
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(n_lists + 1))
    frames: list[bytes] = []
    rows: list[int] = []
    for k in range(n_lists):
        sel = order[bounds[k] : bounds[k + 1]]
        rows.append(len(sel))
        if not len(sel):
            frames.append(b"")
            continue
        part = Segment(
            "snapshot",
            [snapshot.ids[i] for i in sel],
            snapshot.vectors[sel],
            [snapshot.metadata[i] for i in sel] if snapshot.metadata else None,
            [snapshot.contents[i] for i in sel] if snapshot.contents else None,
        )
        frames.append(cipher.encrypt(frame_name(name, k), segment.encode(part, dtype)))
    lengths = [len(f) for f in frames]

    def directory(base: int) -> bytes:
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]) + base if lengths else np.zeros(0)
        plain = json.dumps(
            {
                "v": VERSION,
                "n_lists": n_lists,
                "rows": rows,
                "offsets": [int(o) for o in offsets],
                "lengths": lengths,
                "unit": unit,
                "dtype": dtype,
            },
            separators=(",", ":"),
        ).encode()
        return cipher.encrypt(f"{name}#dir", plain)

    # The directory's size depends on how many digits the offsets have, and the offsets
    # on the directory's size: seal until the size stops changing (two rounds, in practice).
    size = len(directory(0))
    while True:
        sealed = directory(8 + size)
        if len(sealed) == size:
            break
        size = len(sealed)
    return b"".join([MAGIC, struct.pack("<I", size), sealed, *frames])


def read_directory(cipher: IndexCipher, name: str, read: Callable[[int, int], bytes]) -> Directory:
    """Open a run's directory with ranged reads (``read(start, length)``)."""
    head = read(0, PREFIX_BYTES)
    if len(head) < 8 or head[:4] != MAGIC:
        raise CorruptObject(f"object {name!r} is not a run")
    (size,) = struct.unpack("<I", head[4:8])
    if len(head) < 8 + size:
        head += read(len(head), 8 + size - len(head))
    return _directory(cipher, name, head[8 : 8 + size])


def _directory(cipher: IndexCipher, name: str, sealed: bytes) -> Directory:
    try:
        data = json.loads(cipher.decrypt(f"{name}#dir", sealed))
        if data["v"] != VERSION:
            raise ValueError("unsupported run version")
        n = int(data["n_lists"])
        out = Directory(
            n,
            tuple(data["rows"]),
            tuple(data["offsets"]),
            tuple(data["lengths"]),
            bool(data["unit"]),
            str(data["dtype"]),
        )
        if not (len(out.rows) == len(out.offsets) == len(out.lengths) == n):
            raise ValueError("directory arrays disagree")
        return out
    except CorruptObject:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptObject(f"run {name!r} has a malformed directory") from exc


def open_list(cipher: IndexCipher, name: str, k: int, sealed: bytes) -> Segment:
    """Decrypt and decode list ``k``'s frame."""
    return segment.decode(cipher.decrypt(frame_name(name, k), sealed))


def decode_all(cipher: IndexCipher, name: str, blob: bytes) -> list[tuple[int, Segment]]:
    """Every non-empty list of a whole run object, as ``(list number, rows)``."""
    if len(blob) < 8 or blob[:4] != MAGIC:
        raise CorruptObject(f"object {name!r} is not a run")
    (size,) = struct.unpack("<I", blob[4:8])
    directory = _directory(cipher, name, blob[8 : 8 + size])
    out = []
    for k in range(directory.n_lists):
        if directory.rows[k]:
            start, length = directory.offsets[k], directory.lengths[k]
            out.append((k, open_list(cipher, name, k, blob[start : start + length])))
    return out
