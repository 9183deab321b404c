"""TurboQuant codes of stored vectors: a random rotation, then a scalar quantizer fitted to
the coordinates' known distribution (data-oblivious: no training, every row alone).

A row ``x`` is stored as its norm (float32) and the codes of ``sqrt(d) * R x / |x|``: after
a random orthogonal rotation ``R`` every coordinate of a unit vector is close to N(0, 1/d),
so one Lloyd-Max codebook for N(0, 1) at ``b`` bits fits every coordinate of every row.
Decoding reverses the rotation and restores the norm exactly; the direction carries the
quantization error. Rows written again from decoded values (training, merges) may move by
one step of a few codes, and no further: the error to the original row does not grow with
rewrites (tested over ten). ``R`` is drawn from a fixed seed per dimension (it hides nothing: the
codes are sealed like every other byte), so any reader decodes any segment.

Layout of a segment's vector section for ``tq<b>``::

    n float32 norms (little-endian), then n rows of ceil(d / g) * (g * b / 8) bytes, where
    g values of b bits are packed little-endian into g * b / 8 bytes (b=4: g=2, 6: 4, 8: 1, 12: 2)
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

TIERS = {"tq12": 12, "tq8": 8, "tq6": 6, "tq4": 4}
# Trained indexes of these tiers hold their rows in memory as faiss scalar-quantizer codes of
# the same width, within per-dimension ranges fitted at training and stored with the
# centroids (two rows below them); tq12 rows are held as float16 codes.
SQ_TIERS = ("tq8", "tq6", "tq4")
_GROUP = {4: 2, 6: 4, 8: 1, 12: 2}  # values per packed group (a whole number of bytes)
MAX_DIMENSION = 4096  # the rotation is a dense d x d matrix (64 MB at 4096)
_SEED = 0x7475_7262_6F71  # "turboq"

F = TypeVar("F", bound=Callable[..., Any])
_computing = threading.RLock()


def _once(fn: F) -> F:
    """A memo of ``fn`` (up to 8 arguments), computed by one thread only: a cold container's
    first query decodes lists in 16 threads, which otherwise all computed the rotation's QR
    and the codebook at once (2.5 s of its first query at 300k rows)."""
    memo: dict[tuple[Any, ...], Any] = {}

    @functools.wraps(fn)
    def call(*args: Any) -> Any:
        got = memo.get(args)
        if got is None:
            with _computing:
                got = memo.get(args)
                if got is None:
                    if len(memo) >= 8:
                        memo.clear()
                    got = memo[args] = fn(*args)
        return got

    return call  # type: ignore[return-value]


@_once
def rotation(d: int) -> np.ndarray:
    """The fixed random orthogonal ``d x d`` rotation (QR of a seeded Gaussian matrix)."""
    g = np.random.default_rng([_SEED, d]).standard_normal((d, d))
    q, r = np.linalg.qr(g)
    q *= np.sign(np.diag(r))  # Haar-distributed, not biased by QR's sign convention
    return np.ascontiguousarray(q, dtype=np.float32)


@_once
def _rotation64(d: int) -> np.ndarray:
    """``rotation(d)`` in float64: rows are decoded in float64 and rounded once, so a row
    gets the same values alone or in a batch (float32 BLAS sums round differently per
    batch shape, and a writer and a cold reader must hold the same values)."""
    return rotation(d).astype(np.float64)


@_once
def _levels64(bits: int) -> np.ndarray:
    """``codebook(bits)``'s levels in float64, as ``decode`` looks them up."""
    return codebook(bits)[0].astype(np.float64)


@_once
def _forward(d: int) -> np.ndarray:
    """``sqrt(d) * R.T`` in float32: a row times it is ``sqrt(d) R x`` (one product, where
    scaling the rows before or after it is two more passes over them)."""
    return np.ascontiguousarray(_rotation64(d).T * np.sqrt(d), dtype=np.float32)


@_once
def codebook(bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd-Max levels for N(0, 1) at ``bits`` bits, and the decision thresholds between them."""
    k = 1 << bits
    grid = np.linspace(-8.0, 8.0, 1 << 18)
    weight = np.exp(-0.5 * grid * grid)
    levels = np.quantile(np.random.default_rng(bits).standard_normal(1 << 20), (np.arange(k) + 0.5) / k)
    for _ in range(60 if bits <= 8 else 12):
        edges = (levels[1:] + levels[:-1]) / 2
        cell = np.searchsorted(edges, grid)
        mass = np.bincount(cell, weight, minlength=k)
        moment = np.bincount(cell, weight * grid, minlength=k)
        levels = np.where(mass > 0, moment / np.maximum(mass, 1e-300), levels)
    levels = np.sort(levels)
    return levels.astype(np.float32), ((levels[1:] + levels[:-1]) / 2).astype(np.float32)


# The lookup table's bins: ``z + 24`` lies in [16, 32) for every value of [-8, 8), where a
# float32's exponent is fixed and its mantissa is linear in the value, so the mantissa's top
# 20 bits are the bin (2^20 bins of 16 / 2^20): a subtraction and a shift, no float scaling.
_OFFSET = np.float32(24.0)
_LOW, _HIGH = np.float32(16.0), np.nextafter(np.float32(32.0), np.float32(0.0))
_SHIFT = 3  # mantissa bits below the bin number
_BASE = int(_LOW.view(np.int32))
_MIXED = np.uint16(0xFFFF)  # a bin whose values may have different codes


@_once
def _table(bits: int) -> np.ndarray:
    """Each bin's code, or ``_MIXED`` for a bin that holds an edge or borders one (``z + 24``
    rounds a value at most a sixteenth of a bin away, so a value in any other bin has every
    edge of its neighbours on the same side as the bin's left end)."""
    _, edges = codebook(bits)
    bins = 1 << (23 - _SHIFT)
    width = 16.0 / bins
    left = float(_LOW) + width * np.arange(bins, dtype=np.float64)
    shifted = edges.astype(np.float64) + float(_OFFSET)
    table = np.searchsorted(shifted, left).astype(np.uint16)
    at = np.floor((shifted - float(_LOW)) / width).astype(np.int64)
    mixed = np.clip(np.concatenate([at - 1, at, at + 1]), 0, bins - 1)
    table[mixed] = _MIXED
    return table


def quantize(z: np.ndarray, bits: int) -> np.ndarray:
    """The code of each value of ``z``: how many of the codebook's edges lie below it, exactly
    ``np.searchsorted(edges, z)``: a table lookup for most values, the binary search only for
    the few in bins next to an edge (a binary search per value was two thirds of an encode)."""
    _, edges = codebook(bits)
    y = np.add(z, _OFFSET, dtype=np.float32)
    np.clip(y, _LOW, _HIGH, out=y)
    at = np.empty(y.shape, dtype=np.intp)
    np.subtract(y.view(np.int32), _BASE, out=at, casting="unsafe")
    np.right_shift(at, _SHIFT, out=at)
    del y
    codes = _table(bits)[at]
    flat = codes.reshape(-1)
    mixed = np.flatnonzero(flat == _MIXED)
    if len(mixed):
        flat[mixed] = np.searchsorted(edges, np.asarray(z, dtype=np.float32).reshape(-1)[mixed])
    return codes


def row_bytes(d: int, bits: int) -> int:
    """Bytes of one row's codes (without its norm)."""
    g = _GROUP[bits]
    return -(-d // g) * (g * bits // 8)


def _pack(codes: np.ndarray, bits: int) -> np.ndarray:
    n, d = codes.shape
    if bits == 8:  # one value per byte: the codes are the bytes
        return codes.astype(np.uint8)
    g = _GROUP[bits]
    pad = -d % g
    if pad:
        codes = np.pad(codes, ((0, 0), (0, pad)))
    groups = codes.reshape(n, -1, g)
    nbytes = g * bits // 8
    if nbytes == 1:  # tq4: two values to a byte
        acc8 = groups[:, :, 0].astype(np.uint8)
        for j in range(1, g):
            acc8 |= (groups[:, :, j] << (bits * j)).astype(np.uint8)
        return acc8
    # A group's bits (24 at most) in a little-endian uint32, of which the first nbytes bytes
    # are the packed group (uint64 arithmetic and a shift per byte took 2-4x as long).
    acc = groups[:, :, 0].astype("<u4")
    for j in range(1, g):
        acc |= groups[:, :, j].astype("<u4") << np.uint32(bits * j)
    return acc.view(np.uint8).reshape(n, -1, 4)[:, :, :nbytes].reshape(n, -1)


def _unpack(packed: np.ndarray, d: int, bits: int) -> np.ndarray:
    n = packed.shape[0]
    if bits == 8:
        return packed[:, :d].astype(np.uint16)
    g = _GROUP[bits]
    nbytes = g * bits // 8
    mask = (1 << bits) - 1
    if nbytes == 1:
        acc: np.ndarray = packed
    else:  # each group's bytes widened to a little-endian uint32
        wide = np.zeros((n, packed.shape[1] // nbytes, 4), dtype=np.uint8)
        wide[:, :, :nbytes] = packed.reshape(n, -1, nbytes)
        acc = wide.view("<u4")[:, :, 0]
    codes = np.empty((n, acc.shape[1], g), dtype=np.uint16)
    for j in range(g):
        codes[:, :, j] = (acc >> (bits * j)) & mask
    out = codes.reshape(n, -1)
    return out if out.shape[1] == d else np.ascontiguousarray(out[:, :d])


def _norms(x: np.ndarray) -> np.ndarray:
    """Each row's length, summed in float64 (whatever ``x``'s type)."""
    return np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))


def encode(vectors: np.ndarray, bits: int) -> bytes:
    """The norms and packed codes of float32 ``(n, d)`` rows.

    The rotation is a float32 product (its rounding moves a value by about 1e-7, and a code
    only where a value lies that close to an edge: 1.6e-5 of them, against float64's
    product, which was 40 % of an encode). What a reader holds depends only on the codes
    (``decode`` is float64 throughout), and every row is encoded once, so no two writers
    need to agree on them. The norm is summed in float64: it is stored, and restored exactly.
    """
    x = np.asarray(vectors, dtype=np.float32)
    n, d = x.shape
    length = _norms(x)
    z = x @ _forward(d)  # sqrt(d) R x, divided by the norm below
    z /= np.where(length > 0, length, 1).astype(np.float32)[:, None]
    codes = quantize(z, bits)
    return length.astype("<f4").tobytes() + _pack(codes, bits).tobytes()


def decode(raw: bytes | memoryview, n: int, d: int, bits: int) -> np.ndarray:
    """Float32 ``(n, d)`` rows from ``encode``'s bytes: the norm exact, the direction close."""
    size = 4 * n + n * row_bytes(d, bits)
    if len(raw) != size:
        raise ValueError(f"{len(raw)} bytes of tq{bits} codes, expected {size}")
    norms = np.frombuffer(raw, dtype="<f4", count=n)
    packed = np.frombuffer(raw, dtype=np.uint8, offset=4 * n).reshape(n, row_bytes(d, bits))
    codes = packed if bits == 8 and packed.shape[1] == d else _unpack(packed, d, bits)
    y = _levels64(bits)[codes] @ _rotation64(d)  # back from the rotated frame
    length = _norms(y)
    scale = np.where(length > 0, norms / np.where(length > 0, length, 1), 0)
    out = np.empty((n, d), dtype=np.float32)
    np.multiply(y, scale[:, None], out=out, casting="same_kind")  # scaled in float64, rounded once
    return out


def nbytes(n: int, d: int, bits: int) -> int:
    """Stored bytes of ``n`` rows of dimension ``d``."""
    return n * (4 + row_bytes(d, bits))
