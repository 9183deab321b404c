import numpy as np
import pytest

from ciphervec.engine.codec import segment
from ciphervec.engine.codec.segment import Segment
from ciphervec.engine.errors import CorruptObject


def sample(n=5, d=3):
    rng = np.random.default_rng(1)
    return Segment(
        "upsert",
        [f"id-{i}" for i in range(n - 1)] + ["ünï/cøde\u0000"],
        rng.standard_normal((n, d)).astype(np.float32),
        [{"a": i, "nested": {"x": [1, 2]}} if i % 2 else None for i in range(n)],
        [["text", None, "", "more"][i % 4] for i in range(n)],
    )


def test_round_trip_keeps_every_field():
    seg = sample()
    out = segment.decode(segment.encode(seg))
    assert out.kind == "upsert" and out.ids == seg.ids
    np.testing.assert_array_equal(out.vectors, seg.vectors)
    assert out.metadata == seg.metadata and out.contents == seg.contents


def test_float16_halves_vector_bytes_and_rounds():
    seg = sample(n=64, d=32)
    full, half = segment.encode(seg), segment.encode(seg, "float16")
    assert len(full) - len(half) == 64 * 32 * 2
    out = segment.decode(half)
    np.testing.assert_allclose(out.vectors, seg.vectors, atol=2e-3)


def test_tombstones_have_no_vectors():
    out = segment.decode(segment.encode(Segment("delete", ["a", "b"])))
    assert out.kind == "delete" and out.ids == ["a", "b"] and out.vectors is None


def test_header_pins_version():
    raw = segment.encode(sample())
    assert raw[:4] == b"CVS1" and b'"v": 1' in raw[:200]


@pytest.mark.parametrize(
    "mutate", [lambda b: b"XXXX" + b[4:], lambda b: b[:-3], lambda b: b + b"!", lambda b: b[:10]]
)
def test_malformed_is_corrupt(mutate):
    with pytest.raises(CorruptObject):
        segment.decode(mutate(segment.encode(sample())))


@pytest.mark.parametrize("dtype", ["tq8", "tq6", "tq4", "tq12", "float16", "float32"])
def test_codes_of_rows_are_their_rows_codes(dtype):
    # A run's lists are sliced from one encode of all its rows: each row's codes must be
    # exactly what encoding that row alone (or among other rows) gives.
    x = np.random.default_rng(5).normal(size=(300, 40)).astype(np.float32)
    whole = segment.coded(x, dtype)
    picks = np.array([7, 0, 299, 150, 151])
    alone = segment.coded(x[picks], dtype)
    taken = whole.take(picks)
    assert taken.section() == alone.section()
    assert np.array_equal(taken.decode(), alone.decode())


def test_rows_encode_a_chunk_at_a_time_to_the_codes_of_one_call(monkeypatch):
    """TurboQuant encodes in float64 with copies of its input alive: ``coded`` takes big
    batches a chunk at a time, and a row's codes do not depend on the rows beside it."""
    from ciphervec.engine.arrays import turboquant

    x = np.random.default_rng(3).standard_normal((50, 12)).astype(np.float32)
    monkeypatch.setattr(segment, "ENCODE_ROWS", 7)
    for dtype in ("tq8", "tq6", "tq4", "tq12"):
        whole = turboquant.encode(x, turboquant.TIERS[dtype])
        assert segment.coded(x, dtype).section() == whole
    assert len(segment.coded(x[:0], "tq8")) == 0
