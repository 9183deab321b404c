"""TurboQuant storage tiers: the codec (rotation, codebook, packing) and indexes of every tier
(bytes stored and held shrink with the tier, recall stays close, every reader sees the same
values)."""

import numpy as np
import pytest

from ciphervec.engine.arrays import turboquant
from ciphervec.engine.codec import segment
from ciphervec.engine.codec.segment import Segment
from ciphervec.engine.errors import CorruptObject, ValidationFailed
from ciphervec.engine.model import IndexConfig, RowBatch
from ciphervec.infra.storage.memory import MemoryStore
from tests.conftest import clustered
from tests.test_service import fresh

KEK = bytes(range(32))


@pytest.mark.parametrize("bits", [4, 6, 8, 12])
@pytest.mark.parametrize("d", [1, 7, 384])
def test_codes_pack_and_unpack_exactly(bits, d):
    codes = np.random.default_rng(bits * d).integers(0, 1 << bits, size=(5, d)).astype(np.uint16)
    packed = turboquant._pack(codes, bits)
    assert packed.shape == (5, turboquant.row_bytes(d, bits))
    np.testing.assert_array_equal(turboquant._unpack(packed, d, bits), codes)


def test_rotation_is_orthogonal_and_fixed():
    r = turboquant.rotation(96)
    np.testing.assert_allclose(r @ r.T, np.eye(96), atol=1e-5)
    assert r is turboquant.rotation(96)
    assert not np.allclose(r, turboquant.rotation(97)[:96, :96])


def test_codebook_is_lloyd_max_for_a_gaussian():
    z = np.random.default_rng(0).standard_normal(400_000).astype(np.float32)
    # Lloyd-Max mean squared error for N(0, 1): 0.009497 at 4 bits (Max, 1960)
    for bits, mse in ((4, 0.009497),):
        levels, edges = turboquant.codebook(bits)
        assert len(levels) == 1 << bits and np.all(np.diff(levels) > 0)
        np.testing.assert_allclose(levels, -levels[::-1], atol=1e-3)  # symmetric
        err = float(np.mean((levels[np.searchsorted(edges, z)] - z) ** 2))
        assert abs(err - mse) / mse < 0.05
    errs = [
        np.mean((turboquant.codebook(b)[0][np.searchsorted(turboquant.codebook(b)[1], z)] - z) ** 2)
        for b in (4, 6, 8, 12)
    ]
    assert errs == sorted(errs, reverse=True)


@pytest.mark.parametrize("tier, floor", [("tq12", 0.99999), ("tq8", 0.9998), ("tq6", 0.998), ("tq4", 0.99)])
def test_rows_come_back_with_their_norm_and_close_direction(tier, floor):
    bits = turboquant.TIERS[tier]
    x = clustered(2000, 64, seed=3) * np.float32(7.5)
    x[0] = 0  # a zero row stays zero
    raw = turboquant.encode(x, bits)
    assert len(raw) == turboquant.nbytes(2000, 64, bits) == 2000 * (4 + 64 * bits // 8)
    y = turboquant.decode(raw, 2000, 64, bits)
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), np.linalg.norm(x, axis=1), rtol=1e-5)
    assert not y[0].any()
    cos = (x[1:] * y[1:]).sum(1) / np.linalg.norm(x[1:], axis=1) / np.linalg.norm(y[1:], axis=1)
    assert cos.mean() >= floor
    # rows written again from decoded values (training, merges) do not drift away
    again = y
    for _ in range(10):
        again = turboquant.decode(turboquant.encode(again, bits), 2000, 64, bits)
    cos10 = (x[1:] * again[1:]).sum(1) / np.linalg.norm(x[1:], axis=1) / np.linalg.norm(again[1:], axis=1)
    assert cos10.mean() >= cos.mean() - 2e-5


def test_a_segment_of_the_wrong_size_is_corrupt():
    seg = Segment("upsert", ["a", "b"], np.ones((2, 8), np.float32))
    data = bytearray(segment.encode(seg, "tq6"))
    assert segment.decode(bytes(data)).vectors.shape == (2, 8)
    header_end = data.index(b"}") + 1
    broken = bytes(data[:header_end]).replace(b'"d": 8', b'"d": 9') + bytes(data[header_end:])
    with pytest.raises(CorruptObject):
        segment.decode(broken)


N, D = 4000, 48


def build(tier, store):
    svc = fresh(store, train_threshold=10**9, lazy_rows=0)
    svc.create_index("t", tier, IndexConfig(dimension=D, metric="cosine", storage_precision=tier), kek=KEK)
    x = clustered(N, D, clusters=24, seed=5)
    ids = [f"r{i}" for i in range(N)]
    for lo in range(0, N, 1000):
        svc.upsert("t", tier, KEK, RowBatch(ids[lo : lo + 1000], x[lo : lo + 1000]))
    assert svc.train("t", tier, KEK, n_lists=16).trained
    return svc, x


def stored_bytes(store, tier):
    return sum(len(v) for k, v in store.items() if f"/{tier}/run/" in k)


def test_every_tier_stores_and_holds_fewer_bytes_and_finds_the_neighbours():
    store = MemoryStore()
    queries = clustered(60, D, clusters=24, seed=5)[:60] + 0.01
    unit = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sizes, held, recall = {}, {}, {}
    for tier in ("float32", "tq12", "tq8", "tq6", "tq4"):
        svc, x = build(tier, store)
        truth = np.argsort(-(unit @ (x / np.linalg.norm(x, axis=1, keepdims=True)).T), axis=1)[:, :10]
        hits = svc.query("t", tier, KEK, queries, top_k=10, n_probes=16)
        recall[tier] = np.mean(
            [len({int(h["id"][1:]) for h in r} & set(t)) / 10 for r, t in zip(hits, truth)]
        )
        sizes[tier] = stored_bytes(store, tier) / N
        cold = fresh(store, lazy_rows=0)
        cold.query("t", tier, KEK, queries[:1], top_k=1)
        held[tier] = sum(p.nbytes() for p in cold.cache.current(("t", tier)).parts) / N
        # every reader holds the same values: the writer's copy, a cold reader's
        assert cold.get("t", tier, KEK, ["r7", "r8"], ["vector"]) == svc.get(
            "t", tier, KEK, ["r7", "r8"], ["vector"]
        )
    assert sizes["float32"] > sizes["tq12"] > sizes["tq8"] > sizes["tq6"] > sizes["tq4"]
    assert sizes["tq4"] < 0.2 * sizes["float32"]
    assert held["float32"] > held["tq12"] > held["tq8"] > held["tq6"] > held["tq4"]
    # codes of 8 and 4 bits per value, and the row's norm (these rows are not unit length)
    assert held["tq8"] == D + 4 and held["tq4"] == D / 2 + 4
    # tight synthetic clusters are hard at few bits (real MiniLM rows: bench/turboquant.py)
    assert recall["float32"] >= 0.99 and recall["tq12"] >= 0.98 and recall["tq8"] >= 0.93
    assert recall["tq8"] >= recall["tq6"] >= recall["tq4"] >= 0.5


def test_a_tier_index_keeps_its_semantics_through_writes_deletes_and_a_restart():
    store = MemoryStore()
    svc, x = build("tq6", store)
    svc.upsert("t", "tq6", KEK, RowBatch(["new"], x[:1] * 3))  # after training: in range or clipped
    svc.delete_vectors("t", "tq6", KEK, ["r1", "r2"])
    svc.merge_tail("t", "tq6", KEK)
    cold = fresh(store)
    assert cold.num_vectors("t", "tq6", KEK) == N - 1
    assert cold.query("t", "tq6", KEK, x[:1] * 3, top_k=2, n_probes=16)[0][0]["id"] in ("new", "r0")
    assert cold.get("t", "tq6", KEK, ["r1"], ["vector"]) == []
    assert cold.describe("t", "tq6", KEK)["storage_precision"] == "tq6"
    with pytest.raises(ValidationFailed):  # tq12 holds trained rows as float16 codes
        svc2 = fresh(store)
        svc2.create_index("t", "big", IndexConfig(dimension=2, storage_precision="tq12"), kek=KEK)
        svc2.upsert("t", "big", KEK, RowBatch(["a"], np.array([[1e6, 0]], np.float32)))


def test_rows_outside_the_trained_ranges_are_not_clipped():
    """Codes hold values only within the ranges fitted at training; a part with a row beyond
    them (the data drifted) is held in float32, so the row comes back whole."""
    store = MemoryStore()
    svc = fresh(store, train_threshold=10**9, lazy_rows=0)
    svc.create_index("t", "e", IndexConfig(dimension=4, storage_precision="tq8"), kek=KEK)
    x = np.random.default_rng(1).uniform(-1, 1, (400, 4)).astype(np.float32)
    svc.upsert("t", "e", KEK, RowBatch([f"r{i}" for i in range(400)], x))
    assert svc.train("t", "e", KEK, n_lists=4).trained
    far = np.array([[0, 0, 0, 50.0]], np.float32)
    svc.upsert("t", "e", KEK, RowBatch(["far"], far))
    for reader in (svc, fresh(store, lazy_rows=0)):
        got = np.array(reader.get("t", "e", KEK, ["far"], ["vector"])[0]["vector"])
        assert np.linalg.norm(got - far[0]) < 0.05 * 50  # tq8's error, not a clip to ~1
        assert reader.query("t", "e", KEK, far, top_k=1, n_probes=4)[0][0]["id"] == "far"


def test_a_trainings_centroids_object_keeps_the_ranges_apart_from_the_centroids():
    """One stored object, two things: the IVF centroids, and for a tq tier the quantizer's
    ranges as the two rows below them; decoding gives each back, exactly."""
    from ciphervec.engine.codec.centroids import TrainedLists

    rng = np.random.default_rng(1)
    centroids, ranges = (
        rng.standard_normal((5, 8)).astype(np.float32),
        rng.standard_normal((2, 8)).astype(np.float32),
    )
    raw = TrainedLists(centroids, ranges).encode()
    back = TrainedLists.decode(raw, ranges=True)
    assert np.array_equal(back.centroids, centroids) and np.array_equal(back.ranges, ranges)
    plain = TrainedLists.decode(TrainedLists(centroids).encode(), ranges=False)
    assert np.array_equal(plain.centroids, centroids) and plain.ranges is None
    with pytest.raises(ValueError):
        TrainedLists.decode(TrainedLists(centroids[:2]).encode(), ranges=True)


def test_quantizer_ranges_fitted_in_chunks_equal_one_fit_of_every_row():
    """Training fits a tier's scalar-quantizer ranges over its rows a chunk at a time: the
    chunks' extremes fit the very same quantizer as all rows at once."""
    from ciphervec.engine.arrays.ann import sq_ranges

    x = np.random.default_rng(7).standard_normal((20_000, 48)).astype(np.float32) * np.arange(1, 49)
    for bits in (8, 6, 4):
        whole = sq_ranges(x, bits)
        assert np.array_equal(sq_ranges((x[lo : lo + 3000] for lo in range(0, len(x), 3000)), bits), whole)
    with pytest.raises(ValueError):
        sq_ranges(iter([]), 8)


@pytest.mark.parametrize("tier", ["float16", "tq8"])
def test_training_in_small_chunks_stores_and_holds_the_same_as_in_one(monkeypatch, tier):
    """Training assigns lists and converts rows to their stored form a chunk at a time
    (bounded memory): with chunks of about a hundred rows it writes the same objects' rows
    and holds the same values as with chunks bigger than the index."""
    from ciphervec.engine.arrays import kmeans
    from ciphervec.engine.usecases import maintenance

    results = []
    for rows in (10**6, 97):
        monkeypatch.setattr(kmeans, "ASSIGN_ROWS", rows)
        monkeypatch.setattr(maintenance, "STORED_ROWS", rows)
        svc, x = build(tier, MemoryStore())
        got = svc.get("t", tier, KEK, [f"r{i}" for i in range(0, N, 7)], ["vector"])
        cold = fresh(svc.store, lazy_rows=0).query("t", tier, KEK, x[:20], top_k=5, n_probes=3)
        results.append((got, cold, svc.describe("t", tier, KEK)))
    assert results[0] == results[1]


@pytest.mark.parametrize("bits", [4, 6, 8, 12])
def test_quantize_is_exactly_a_binary_search_over_the_edges(bits):
    """The lookup-table quantizer gives every value the code ``np.searchsorted`` would: on
    the edges themselves, a float32 step either side of them, far out and in between."""
    _, edges = turboquant.codebook(bits)
    rng = np.random.default_rng(bits)
    z = np.concatenate(
        [
            rng.standard_normal(200_000).astype(np.float32) * 3,
            edges,
            np.nextafter(edges, np.float32(-9)),
            np.nextafter(edges, np.float32(9)),
            np.float32([-1e30, 1e30, -8, 8, 7.99999, -8.00001, 0, -0.0]),
        ]
    ).astype(np.float32)
    assert np.array_equal(turboquant.quantize(z, bits), np.searchsorted(edges, z))


@pytest.mark.parametrize("bits", [4, 6, 8, 12])
@pytest.mark.parametrize("d", [384, 383, 5, 1])
def test_packed_layout_is_the_documented_one(bits, d):
    """Stored codes keep the module's layout whatever packs them: g values of b bits,
    little-endian, in g*b/8 bytes, the last group padded with zeros; and unpack inverts it."""
    rng = np.random.default_rng(bits * 1000 + d)
    codes = rng.integers(0, 1 << bits, (3, d)).astype(np.uint16)
    g = {4: 2, 6: 4, 8: 1, 12: 2}[bits]
    nbytes = g * bits // 8
    want = bytearray()
    for row in codes.tolist():
        row = row + [0] * (-d % g)
        for lo in range(0, len(row), g):
            value = sum(int(c) << (bits * j) for j, c in enumerate(row[lo : lo + g]))
            want += value.to_bytes(nbytes, "little")
    packed = turboquant._pack(codes, bits)
    assert packed.shape == (3, turboquant.row_bytes(d, bits)) and packed.tobytes() == bytes(want)
    assert np.array_equal(turboquant._unpack(packed, d, bits), codes)
