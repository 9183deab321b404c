"""Parts of IVF codes (a trained tq or float16 index) merge by copying their codes list by
list: the merged part holds exactly the codes, norms and lists of the parts it joins, and
answers exactly as one part built from all their rows at once."""

from __future__ import annotations

import time

import numpy as np
import pytest

from ciphervec.engine.arrays import ann, kmeans
from ciphervec.engine.arrays.ann import flat_quantizer, sq_ranges
from ciphervec.engine.arrays.backend import select
from ciphervec.engine.arrays.kernels import normalize
from ciphervec.engine.arrays.turboquant import TIERS
from ciphervec.engine.memory import parts
from ciphervec.engine.memory.parts import Layout
from tests.conftest import BACKEND, clustered

D = 24


@pytest.mark.parametrize("small_join", [1 << 16, 0], ids=["in-faiss", "sized"])
@pytest.mark.parametrize("precision", ["tq8", "tq4", "float16", "tq12"])
def test_merged_codes_are_the_parts_codes(precision, small_join, monkeypatch):
    """Both ways of joining codes (faiss's loop over copies for small parts, lists sized
    from Python for big ones) hold exactly the parts' codes and leave the parts as they were."""
    monkeypatch.setattr(ann, "SMALL_JOIN", small_join)
    backend = select(BACKEND)
    space = normalize(clustered(3000, D, seed=2))
    # tq parts keep each row's norm beside its codes; float16 parts of unit rows are codes alone
    x = space if precision == "float16" else space * np.linspace(0.5, 3.0, 3000, dtype=np.float32)[:, None]
    cent = kmeans.train_centroids(backend, x, 16, "cosine", max_iters=10, tolerance=1e-6)
    ranges = sq_ranges(space, TIERS[precision]) if precision in ("tq8", "tq6", "tq4") else None
    layout = Layout(D, "cosine", precision, cent, flat_quantizer(cent), ranges)
    lists = kmeans.assign_lists(backend, x, cent, "cosine")
    cuts = [0, 700, 1900, 2000, 3000]
    pieces = [
        parts.build(backend, layout, a, x[a:b], lists[a:b]) for a, b in zip(cuts, cuts[1:], strict=False)
    ]
    before = [(p.all_rows(), p.ann.list_sizes()) for p in pieces]
    joined = parts.merged(backend, layout, pieces, lists)
    for p, (rows, sizes) in zip(pieces, before, strict=True):  # the parts are shared: untouched
        assert np.array_equal(p.all_rows(), rows) and np.array_equal(p.ann.list_sizes(), sizes)
        assert p.ann.ntotal == p.n == p.ann.index.ntotal
    whole = parts.build(backend, layout, 0, x, lists)
    # list sizes come from the direct map, in one pass: exactly what faiss holds per list
    for got in (joined, whole, *pieces):
        sizes = [got.ann.index.invlists.list_size(k) for k in range(16)]
        assert got.ann.list_sizes().tolist() == sizes and sum(sizes) == got.n
    assert joined.ann.list_sizes().tolist() == np.bincount(lists, minlength=16).tolist()
    assert joined.ann.kind == whole.ann.kind and joined.stored is None and joined.n == 3000
    assert np.array_equal(joined.all_rows(), np.concatenate([p.all_rows() for p in pieces]))
    assert np.array_equal(joined.all_rows(), whole.all_rows())
    q = space[::37]
    valid = np.ones(3000, dtype=bool)
    valid[::5] = False  # with a selector too
    for n_probes in (1, 4, 16):
        for alive in (np.ones(3000, dtype=bool), valid):
            got = joined.ann.search(q, 10, n_probes, alive)
            want = whole.ann.search(q, 10, n_probes, alive)
            assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))


@pytest.mark.parametrize("precision", ["tq8", "float32"])
def test_a_whole_load_indexes_as_it_goes_and_answers_the_same(precision, monkeypatch):
    """A cold container loading a run whole indexes every ``FLUSH_ROWS`` rows into the part
    it grows (never every row as float32 at once, nor parts to merge later) and answers as
    one that held them all first."""
    from ciphervec.engine.memory import cache, state
    from ciphervec.engine.model import IndexConfig, RowBatch
    from ciphervec.infra.storage.memory import MemoryStore
    from tests.test_service import fresh

    kek = bytes(range(32))
    store = MemoryStore()
    svc = fresh(store, train_threshold=10**9)
    svc.create_index(
        "t", "i", IndexConfig(dimension=D, metric="cosine", storage_precision=precision), kek=kek
    )
    x = clustered(4000, D, seed=8)
    svc.upsert("t", "i", kek, RowBatch([f"r{i}" for i in range(4000)], x))
    assert svc.train("t", "i", kek, n_lists=16).trained
    q = normalize(clustered(30, D, seed=9))
    answers = []
    flushed: list[int] = []
    real = state.Builder.flush
    monkeypatch.setattr(
        state.Builder, "flush", lambda self, b: flushed.append(self.pending_rows) or real(self, b)
    )
    for flush in (10**9, 300):
        monkeypatch.setattr(cache, "FLUSH_ROWS", flush)
        flushed.clear()
        cold = fresh(store, lazy_rows=0)
        got = cold.query("t", "i", kek, q, top_k=10, n_probes=4)
        assert (len(flushed) >= 5 and max(flushed) < 1000) if flush == 300 else not flushed, flushed
        key = ("t", "i")
        if precision == "float32":
            # rows kept as stored beside faiss (cosine rows not of unit length) are not grown
            # in place: a part per flush, which the cache's merger joins in the background
            deadline = time.monotonic() + 60
            while len(cold.cache.current(key).parts) > 1 and time.monotonic() < deadline:
                merging = cold.cache.merger(key)
                if merging is not None:
                    merging.join(0.1)
                else:
                    time.sleep(0.01)
        assert len(cold.cache.current(key).parts) == 1  # tq codes: one part grown, nothing to merge
        vectors = cold.get("t", "i", kek, [f"r{i}" for i in range(0, 4000, 7)], ["vector"])
        answers.append((got, vectors))
    assert answers[0][1] == answers[1][1]  # the same values held
    if precision == "float32":  # exact distances: the same answers however the rows are split
        assert answers[0][0] == answers[1][0]
    else:  # tq codes: each part re-ranks its own candidates, so the split may change the tail
        truth = np.argsort(-(q @ normalize(x).T), axis=1)[:, :10]
        for got, _ in answers:
            found = [{int(h["id"][1:]) for h in row} for row in got]
            assert np.mean([len(f & set(t.tolist())) / 10 for f, t in zip(found, truth, strict=True)]) >= 0.9
