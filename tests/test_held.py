"""Held codes: a tq8/tq6/tq4 index's training (in memory or out of core) writes, beside each
list's rows, the codes its parts hold in memory (``segment.Held``). A cold container copies them into its
lists instead of decoding every row and encoding it again, and holds exactly what it
would have held by decoding: the same codes, rows, answers and distances, loading whole
or list by list, with writes, overwrites and deletes after the training; with rows written
since outside the fitted ranges, what a container warm before those writes holds. Codes of other
ranges are never used; a retraining writes its own."""

from __future__ import annotations

import numpy as np
import pytest

from ciphervec.engine.arrays import turboquant
from ciphervec.engine.arrays.ann import AnnIndex, ranges_key, sq_codes, sq_decode, sq_ranges
from ciphervec.engine.arrays.kernels import normalize
from ciphervec.engine.codec import run, segment
from ciphervec.engine.memory import parts
from ciphervec.engine.model import IndexConfig, RowBatch
from ciphervec.infra.storage.memory import MemoryStore
from tests.conftest import clustered
from tests.test_service import fresh

KEK = bytes(range(32))
D = 24


@pytest.fixture(autouse=True)
def _small_indexes_hold_codes(monkeypatch):
    """The indexes here are small: let their trainings write held codes as big ones do."""
    monkeypatch.setattr(segment, "HELD_FROM_ROWS", 100)


def near(x: np.ndarray, metric: str) -> np.ndarray:
    """Rows close to ``x`` but none equal to a row (equal rows tie, and ties rank by row)."""
    moved = x + 1e-3 * np.random.default_rng(len(x)).standard_normal(x.shape).astype(np.float32)
    return normalize(moved) if metric == "cosine" else moved


def trained(store, precision: str, metric: str, *, later: bool = True, in_memory: bool = False):
    """An index trained (16 lists; out of core unless ``in_memory``), with overwrites and
    deletes before the training and, when ``later``, writes after it (close to rows the
    training saw, inside its ranges)."""
    svc = fresh(store, train_threshold=10**9)
    svc.create_index("t", "i", IndexConfig(dimension=D, metric=metric, storage_precision=precision), kek=KEK)
    x = clustered(2400, D, seed=11)
    x = normalize(x) if metric == "cosine" else x
    ids = [f"r{i}" for i in range(2400)]
    for lo in range(0, 2000, 400):
        svc.upsert("t", "i", KEK, RowBatch(ids[lo : lo + 400], x[lo : lo + 400]))
    svc.upsert("t", "i", KEK, RowBatch(ids[10:60], near(x[1000:1050], metric)))  # overwrites
    svc.delete_vectors("t", "i", KEK, ids[300:340])
    svc.maintenance.in_memory_bytes = 2**40 if in_memory else 0
    assert svc.train("t", "i", KEK, n_lists=16).trained
    if later:
        svc.upsert("t", "i", KEK, RowBatch(ids[2000:2400], near(x[400:800], metric)))
        svc.upsert("t", "i", KEK, RowBatch(ids[100:150], near(x[1500:1550], metric)))  # over run rows
        svc.delete_vectors("t", "i", KEK, ids[700:720])
    return svc


def run_objects(svc):
    head = svc.heads.open("t", "i", KEK)
    ref = head.body.segments[0]
    assert ref.kind == "run"
    trained_lists = svc.heads.read_centroids(head, head.body.centroids)
    directory = svc.heads.read_directory(head, ref.name)
    raw = {k: svc.heads.read(head, run.list_name(ref.name, k)) for k in directory.lists()}
    return trained_lists, raw


def same(a: list, b: list) -> None:
    """The same ids in the same order, at the same distances (to the last bits a search's
    arithmetic path may round differently in: a lazy load's parts depend on timing)."""
    assert [[[h["id"] for h in q] for q in r] for r in a] == [[[h["id"] for h in q] for q in r] for r in b]
    da = np.array([[[h["distance"] for h in q] for q in r] for r in a])
    assert np.allclose(da, np.array([[[h["distance"] for h in q] for q in r] for r in b]), rtol=1e-12, atol=0)


def answers(svc, lazy: bool):
    """A cold container's rows, answers and distances over the whole index."""
    cold = fresh(svc.store)
    cold.cache.lazy_rows = 1 if lazy else 0
    q = normalize(clustered(30, D, seed=12))
    if lazy:  # the probed lists first, the rest in the background: compared once all are in
        cold.query("t", "i", KEK, q[:1], top_k=1)
        worker = cold.cache.filler(("t", "i"))
        assert worker is not None
        worker.join()
    out = [cold.query("t", "i", KEK, q, top_k=10, n_probes=p, include=["distance"]) for p in (1, 3, 16)]
    ids = [f"r{i}" for i in range(2400)]
    got = cold.get("t", "i", KEK, ids, ["vector"])
    return out, {g["id"]: np.asarray(g["vector"], dtype=np.float32) for g in got}, cold


@pytest.mark.parametrize("in_memory", [False, True])
@pytest.mark.parametrize(
    ("precision", "metric"), [("tq8", "cosine"), ("tq6", "euclidean"), ("tq4", "cosine")]
)
def test_training_writes_the_codes_the_parts_hold(precision, metric, in_memory):
    svc = trained(MemoryStore(), precision, metric, later=False, in_memory=in_memory)
    lists, raw = run_objects(svc)
    bits = turboquant.TIERS[precision]
    key = ranges_key(lists.ranges)
    for k, data in raw.items():
        seg = segment.decode(data, key)
        _, coded = segment.decode_coded(data)
        assert seg.held is not None and seg.held.key == key and seg.held.bits == bits
        values = coded.decode()  # as any reader decodes the stored codes
        ann = AnnIndex(D, lists.centroids, bits=bits, ranges=lists.ranges)
        ann.add(values, np.full(len(values), k))  # as a part built from them holds them
        assert np.array_equal(seg.held.codes, sq_codes(values, bits, lists.ranges))
        assert np.array_equal(
            ann.reconstruct(np.arange(len(values))), sq_decode(seg.held.codes, D, bits, lists.ranges)
        )
        # a reader of these ranges takes the codes and leaves the vectors undecoded
        mine = segment.decode(data, key)
        assert mine.vectors is None and np.array_equal(mine.held.codes, seg.held.codes)
        other = segment.decode(data, "0" * 16)
        assert other.held is None and np.array_equal(other.vectors, values)


@pytest.mark.parametrize(
    ("precision", "metric", "lazy", "in_memory"),
    [
        ("tq8", "cosine", False, False),
        ("tq8", "cosine", True, False),
        ("tq6", "euclidean", False, False),
        ("tq6", "euclidean", True, False),
        ("tq8", "cosine", False, True),
        ("tq4", "euclidean", True, True),
    ],
)
def test_a_cold_load_holds_what_decoding_would(precision, metric, lazy, in_memory, monkeypatch):
    store = MemoryStore()
    svc = trained(store, precision, metric, in_memory=in_memory)
    decoded = {"rows": 0}
    real = turboquant.decode

    def counting(raw, n, d, bits):
        decoded["rows"] += n
        return real(raw, n, d, bits)

    monkeypatch.setattr(turboquant, "decode", counting)
    with_codes, rows_codes, cold = answers(svc, lazy)
    assert decoded["rows"] == 400 + 50  # the writes after training only: no run row decoded
    snap = cold.cache.snapshot(cold.heads.open("t", "i", KEK))
    assert any(p.ann.bits for p in snap.parts) and snap.partial is None
    with monkeypatch.context() as m:  # the same store read by a container that decodes every row
        m.setattr(parts.Layout, "held", property(lambda self: None))
        decoded["rows"] = 0
        by_decoding, rows_decoded, _ = answers(svc, lazy)
        assert decoded["rows"] > 2000
    same(with_codes, by_decoding)
    assert rows_codes.keys() == rows_decoded.keys() and len(rows_codes) == 2400 - 40 - 20
    for i, v in rows_codes.items():
        assert np.array_equal(v, rows_decoded[i]), i


def test_with_drifted_rows_a_cold_load_holds_what_a_warm_container_holds():
    """Rows written after the training outside its ranges are held as float32 in parts of
    their own; the run's rows keep their codes, in a cold container as in one that held the
    index before those writes and synced them."""
    store = MemoryStore()
    svc = trained(store, "tq8", "euclidean", later=False)
    early = fresh(store)
    early.cache.lazy_rows = 0
    q = normalize(clustered(30, D, seed=12))
    early.query("t", "i", KEK, q[:1], top_k=1)  # loaded before the writes below
    x = clustered(400, D, seed=13) * 3  # far outside the fitted ranges
    svc.upsert("t", "i", KEK, RowBatch([f"r{i}" for i in range(2000, 2400)], x))
    svc.delete_vectors("t", "i", KEK, ["r5"])
    warm = [early.query("t", "i", KEK, q, top_k=10, n_probes=p, include=["distance"]) for p in (1, 3, 16)]
    cold_answers, _, cold = answers(svc, lazy=False)
    kinds = [p.ann.bits for p in cold.cache.snapshot(cold.heads.open("t", "i", KEK)).parts]
    assert kinds[0] == 8 and 0 in kinds
    same(warm, cold_answers)


def test_codes_of_other_ranges_are_not_used_and_a_retraining_writes_its_own():
    store = MemoryStore()
    svc = trained(store, "tq8", "cosine")
    first, _ = run_objects(svc)
    assert svc.train("t", "i", KEK, n_lists=8).trained  # reads the held run, writes a new one
    second, raw = run_objects(svc)
    assert ranges_key(second.ranges) != ranges_key(first.ranges)
    for data in raw.values():
        assert segment.decode(data, ranges_key(first.ranges)).held is None
        seg = segment.decode(data, ranges_key(second.ranges))
        assert seg.held is not None and seg.vectors is None
    q = normalize(clustered(10, D, seed=3))
    assert fresh(store).query("t", "i", KEK, q, top_k=5, n_probes=8) == svc.query(
        "t", "i", KEK, q, top_k=5, n_probes=8
    )


@pytest.mark.parametrize("in_memory", [False, True])
def test_no_codes_for_rows_held_normalised(in_memory):
    """Cosine rows of other norms are held normalised, with their norms: no held codes."""
    store = MemoryStore()
    svc = fresh(store, train_threshold=10**9)
    svc.create_index("t", "i", IndexConfig(dimension=D, metric="cosine", storage_precision="tq8"), kek=KEK)
    x = clustered(800, D, seed=4)  # not unit norm
    svc.upsert("t", "i", KEK, RowBatch([f"r{i}" for i in range(800)], x))
    svc.maintenance.in_memory_bytes = 2**40 if in_memory else 0
    assert svc.train("t", "i", KEK, n_lists=4).trained
    lists, raw = run_objects(svc)
    key = ranges_key(lists.ranges)
    assert all(segment.decode(data, key).held is None for data in raw.values())


def test_held_codes_round_trip_and_malformed_ones_are_refused():
    x = normalize(clustered(50, D, seed=1))
    ranges = sq_ranges(x, 8)
    held = segment.Held(8, ranges_key(ranges), sq_codes(x, 8, ranges))
    seg = segment.Segment("snapshot", [f"r{i}" for i in range(50)], x, held=held)
    data = segment.encode(seg, "tq8")
    back = segment.decode(data, held.key)
    assert back.vectors is None and back.ids == seg.ids and np.array_equal(back.held.codes, held.codes)
    assert segment.decode(data).held is None  # a reader of no ranges decodes the vectors
    bad = data.replace(b'"bits": 8', b'"bits": 6')
    with pytest.raises(segment.CorruptObject):
        segment.decode(bad, held.key)
    with pytest.raises(ValueError):
        segment.encode(segment.Segment("snapshot", seg.ids[:10], x[:10], held=held), "tq8")


@pytest.mark.parametrize("in_memory", [False, True])
def test_small_indexes_store_no_codes_twice(in_memory, monkeypatch):
    """Below ``HELD_FROM_ROWS`` rows a cold load decodes quickly: no held codes are stored."""
    monkeypatch.setattr(segment, "HELD_FROM_ROWS", 2400)
    svc = trained(MemoryStore(), "tq8", "cosine", later=False, in_memory=in_memory)
    lists, raw = run_objects(svc)
    key = ranges_key(lists.ranges)
    assert all(segment.decode(data, key).held is None for data in raw.values())
