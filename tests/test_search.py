"""Numerics against references: brute force, faiss, and each metric's definition."""

import faiss
import numpy as np
import pytest

from ciphervec.engine.arrays import kmeans
from ciphervec.engine.arrays.backend import Backend, select
from ciphervec.engine.model import IndexConfig, RowBatch
from ciphervec.engine.service import IndexService
from ciphervec.infra.storage.memory import MemoryStore
from tests.conftest import BACKEND, clustered


def brute(x, q, k, metric):
    if metric == "cosine":
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
        d = 1 - (q / np.linalg.norm(q, axis=1, keepdims=True)) @ xn.T
    else:
        d = ((q[:, None, :].astype(np.float64) - x[None].astype(np.float64)) ** 2).sum(-1)
        if metric == "euclidean":
            d = np.sqrt(d)
    return np.argsort(d, axis=1, kind="stable")[:, :k], np.sort(d, axis=1)[:, :k]


@pytest.mark.parametrize("metric", ["euclidean", "squared_euclidean", "cosine"])
def test_exact_search_matches_brute_force(service, kek, metric):
    x = clustered(2000, 24, seed=3)
    q = clustered(20, 24, seed=4)
    service.create_index("t", "i", IndexConfig(metric=metric), kek=kek)
    service.upsert("t", "i", kek, RowBatch([str(i) for i in range(len(x))], x))
    got = service.query("t", "i", kek, q, top_k=10, include=["distance"])
    want_ids, want_d = brute(x, q, 10, metric)
    for row, ids, dists in zip(got, want_ids, want_d):
        assert [int(r["id"]) for r in row] == ids.tolist()
        np.testing.assert_allclose([r["distance"] for r in row], dists, rtol=1e-4, atol=1e-5)


def test_self_query_distance_is_zero(service, kek):
    x = clustered(500, 16)
    service.create_index("t", "i", IndexConfig(), kek=kek)
    service.upsert("t", "i", kek, RowBatch([str(i) for i in range(500)], x))
    res = service.query("t", "i", kek, x[:50], top_k=1, include=["distance"])
    assert [r[0]["id"] for r in res] == [str(i) for i in range(50)]
    assert all(r[0]["distance"] == 0.0 for r in res)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_ivf_auto_probes_keep_recall(service, kek, metric):
    x = clustered(6000, 32, clusters=64, seed=5)
    rng = np.random.default_rng(9)
    q = x[rng.choice(len(x), 100, replace=False)] + 0.05 * rng.standard_normal((100, 32)).astype(np.float32)
    service.create_index("t", "i", IndexConfig(metric=metric), kek=kek)
    service.upsert("t", "i", kek, RowBatch([str(i) for i in range(len(x))], x))
    result = service.train("t", "i", kek)
    assert result.trained and result.n_lists == kmeans.auto_n_lists(6000) == 64
    assert 1 <= result.n_probes < result.n_lists
    got = service.query("t", "i", kek, q, top_k=10)
    want, _ = brute(x, q, 10, metric)
    recall = np.mean([len({int(r["id"]) for r in row} & set(w.tolist())) / 10 for row, w in zip(got, want)])
    assert recall >= 0.95


def test_more_probes_never_lose_recall(service, kek):
    x = clustered(4000, 16, clusters=40, seed=8)
    q = clustered(50, 16, clusters=40, seed=18)
    service.create_index("t", "i", IndexConfig(), kek=kek)
    service.upsert("t", "i", kek, RowBatch([str(i) for i in range(len(x))], x))
    service.train("t", "i", kek, n_lists=32)
    want, _ = brute(x, q, 10, "euclidean")

    def recall(p):
        got = service.query("t", "i", kek, q, top_k=10, n_probes=p)
        return np.mean([len({int(r["id"]) for r in row} & set(w.tolist())) / 10 for row, w in zip(got, want)])

    r1, r4, r32 = recall(1), recall(4), recall(32)
    assert r1 <= r4 <= r32 == 1.0


def test_numpy_kmeans_inertia_close_to_faiss():
    x = clustered(3000, 16, clusters=20, seed=2)
    ref = select("numpy").kmeans(x, 20, niter=25, seed=1, spherical=False, tol=0)
    ours = Backend("numpy", np, False)
    import ciphervec.engine.arrays.backend as backend_mod

    saved = backend_mod.HAS_FAISS
    backend_mod.HAS_FAISS = False  # as in a package without faiss
    try:
        pure = ours.kmeans(x, 20, niter=25, seed=1, spherical=False, tol=0)
    finally:
        backend_mod.HAS_FAISS = saved

    def inertia(c):
        _, d = faiss.knn(x, c, 1)
        return float(d.sum())

    assert inertia(pure) <= 1.15 * inertia(ref)


def test_auto_n_lists_rule():
    assert [kmeans.auto_n_lists(n) for n in (0, 1, 100, 10_000, 100_000, 10**12)] == [
        1,
        1,
        8,
        128,
        256,
        65536,
    ]


@pytest.mark.parametrize("trained", [False, True])
def test_device_overfetch_drops_excluded_rows(trained):
    """The GPU path has no id selector; its host-side over-fetch must equal the selector path."""
    cpu = select("numpy")
    x, q = clustered(5000, 16, seed=6), clustered(40, 16, seed=7)
    cent = cpu.kmeans(x, 16, niter=10, seed=1, spherical=False, tol=0) if trained else None
    ann = cpu.ann_index(16, cent)
    ann.add(x)
    ann._device_index = lambda: ann.index  # run the device code path on the host index
    valid = np.ones(len(x), bool)
    valid[::53] = False
    d_sel, r_sel = ann.search(q, 10, 16, valid)
    d_dev, r_dev = ann._search_device(q, 10, 16, valid, int((~valid).sum()))
    np.testing.assert_array_equal(r_sel, r_dev)
    np.testing.assert_allclose(d_sel, d_dev, rtol=1e-5)
    assert valid[r_dev].all()


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_float16_precision_halves_memory_and_keeps_recall(service, kek, metric):
    x = clustered(4000, 128, clusters=32, seed=12)
    q = clustered(60, 128, clusters=32, seed=13)
    for name, precision in (("full", "float32"), ("half", "float16")):
        service.create_index("t", name, IndexConfig(metric=metric, storage_precision=precision), kek=kek)
        service.upsert("t", name, kek, RowBatch([str(i) for i in range(len(x))], x))
        service.train("t", name, kek, n_lists=16)
    want, _ = brute(x, q, 10, metric)
    half = service.query("t", "half", kek, q, top_k=10, n_probes=16)
    service.query("t", "full", kek, q[:1], top_k=10)
    recall = np.mean([len({int(r["id"]) for r in row} & set(w.tolist())) / 10 for row, w in zip(half, want)])
    assert recall >= 0.98
    states = {name: service.cache.current(("t", name)) for name in ("full", "half")}
    assert states["half"].nbytes() < 0.6 * states["full"].nbytes()
    got = service.get("t", "half", kek, ["7"], ["vector"])[0]["vector"]
    np.testing.assert_allclose(got, x[7], rtol=1e-3, atol=1e-3)


def test_n_probes_estimate_ignores_exact_duplicates():
    """Duplicated rows sit in their query's own list; counting them would flatter few probes."""
    be = select(BACKEND)
    x = clustered(3000, 16, clusters=30, seed=21, spread=2.0)
    cent = kmeans.train_centroids(be, x, 32, "euclidean", max_iters=20, tolerance=0)
    plain = kmeans.choose_n_probes(
        be, x, be.nearest(x, cent)[:, 0], cent, "euclidean", kmeans.held_out(len(x))
    )[10]
    dup = np.vstack([x] * 6)
    sixfold = kmeans.choose_n_probes(
        be, dup, be.nearest(dup, cent)[:, 0], cent, "euclidean", kmeans.held_out(len(dup))
    )[10]
    assert plain[0] > 4 and sixfold[0] >= 0.7 * plain[0]


def test_flat_numpy_view_matches_faiss_scan():
    """Few queries read the flat index through a numpy view; many go to faiss: same answers."""
    be = select("numpy")
    x, q = clustered(3000, 16, seed=41), clustered(5, 16, seed=42)
    ann = be.ann_index(16)
    ann.add(x[:2000])
    ann.add(x[2000:])  # norms of appended rows are tracked too
    valid = np.ones(3000, bool)
    valid[::7] = False
    d_view, r_view = ann.search(q, 10, 1, valid)
    d_faiss, r_faiss = ann.search(np.vstack([q] * 5), 10, 1, valid)  # 25 queries: faiss path
    np.testing.assert_array_equal(r_view, r_faiss[:5])
    np.testing.assert_allclose(d_view, d_faiss[:5], rtol=1e-4, atol=1e-4)
    assert valid[r_view].all()


def test_an_index_the_gpu_cannot_mirror_is_searched_on_the_host():
    be = select("numpy")
    ann = be.ann_index(8)
    ann.add(clustered(100, 8, seed=3))

    def refuse():
        raise RuntimeError("not implemented for this index type")

    ann.gpu = object()  # pretend a GPU is there ...
    ann._device_index = refuse  # ... that cannot clone this index
    dist, rows = ann.search(clustered(2, 8, seed=4), 5, 1, np.ones(100, bool))
    assert ann.gpu is None and rows.shape == (2, 5) and (rows >= 0).all()


def test_n_probes_is_calibrated_on_rows_the_centroids_were_not_fitted_on(monkeypatch):
    """The calibration queries are held out of the k-means sample: recall estimated on rows
    the centroids were fitted on was optimistic exactly where every row is in the sample
    (20,000 MiniLM rows, 128 lists: estimated 0.98, measured 0.93 on outside queries)."""
    be = select(BACKEND)
    x = clustered(1500, 16, clusters=30, seed=23, spread=1.0)  # fewer than 32 lists x 256: all sampled
    held = kmeans.held_out(len(x))
    assert len(held) == 150 and len(set(held.tolist())) == 150  # a tenth of a small index
    assert len(kmeans.held_out(1_000_000)) == kmeans.CALIBRATION_QUERIES
    seen = []
    fit = be.kmeans

    def spy(sample, *args, **kwargs):
        seen.append(np.asarray(sample))
        return fit(sample, *args, **kwargs)

    monkeypatch.setattr(be, "kmeans", spy)
    kmeans.train_centroids(be, x, 32, "euclidean", max_iters=10, tolerance=0, exclude=held)
    sample = {row.tobytes() for row in seen[0]}
    assert len(sample) == len(x) - len(held)
    assert not any(x[i].tobytes() in sample for i in held)
    # and training uses it: the estimate describe reports comes from those held-out rows
    service = IndexService(MemoryStore(), backend=be, train_threshold=10**9)
    kek = bytes(range(32))
    service.create_index("t", "c", IndexConfig(dimension=16), kek=kek)
    service.upsert("t", "c", kek, RowBatch([str(i) for i in range(len(x))], x))
    seen.clear()
    result = service.train("t", "c", kek, n_lists=32)
    assert result.trained and len(seen[0]) == len(x) - len(held) and 0.95 <= result.recall_estimate <= 1.0


def test_queries_for_more_than_ten_neighbours_probe_as_recall_at_100_needs():
    be = select(BACKEND)
    service = IndexService(MemoryStore(), backend=be, train_threshold=10**9)
    kek = bytes(range(32))
    x = clustered(4000, 16, clusters=40, seed=29, spread=1.0)
    service.create_index("t", "k", IndexConfig(dimension=16), kek=kek)
    service.upsert("t", "k", kek, RowBatch([str(i) for i in range(len(x))], x))
    assert service.train("t", "k", kek, n_lists=64).trained
    cent = service.heads.open("t", "k", kek).body.centroids
    assert cent.auto_n_probes_100 >= cent.auto_n_probes
    assert cent.probes_for(10) == cent.auto_n_probes and cent.probes_for(100) == cent.auto_n_probes_100
    # an index trained before the setting existed probes the recall@10 value for any top_k
    from dataclasses import replace

    assert replace(cent, auto_n_probes_100=None).probes_for(100) == cent.auto_n_probes


@pytest.mark.parametrize("cosine", [True, False])
def test_calibration_truth_searched_in_chunks_equals_one_search(monkeypatch, cosine):
    """Training measures n_probes against the exact neighbours of its calibration rows,
    searched a chunk of rows at a time (no normalised copy of every row): the same
    neighbours and distances as one search over all of them."""
    be = select(BACKEND)
    x = np.random.default_rng(11).standard_normal((3000, 16)).astype(np.float32) * 3
    q = x[:50] + 0.01
    space = x / np.linalg.norm(x, axis=1, keepdims=True) if cosine else x
    queries = q / np.linalg.norm(q, axis=1, keepdims=True) if cosine else q
    want_d, want_i = be.knn_with_distances(queries, space, 18)
    monkeypatch.setattr(kmeans, "ASSIGN_ROWS", 97)
    got_d, got_i = kmeans._exact_neighbours(be, queries, x, 18, cosine)
    assert np.array_equal(got_i, want_i)
    assert np.allclose(got_d, want_d, rtol=1e-5, atol=1e-6)


def test_calibration_truth_puts_duplicates_at_zero_and_ties_on_the_earlier_row():
    """The calibration drops a query's exact duplicates by their distance of 0, so the truth
    measures distances directly (``|x|^2 - 2 q.x`` leaves ~1e-7 there); rows at the same
    distance come earliest first, across chunks and within one."""
    be = select(BACKEND)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[[7, 100]].copy()
    x[[2500, 900, 3999]] = q[0]  # duplicates of the first query, in three chunks
    x[[1500, 1501]] = q[1] * np.float32(1.5)  # two rows at the same distance from the second
    near = kmeans.Nearest(be, q, 5)
    for lo in range(0, len(x), 700):
        near.add(x[lo : lo + 700], np.arange(lo, min(lo + 700, len(x))))
    dist, rows = near.result()
    assert rows[0, :4].tolist() == [7, 900, 2500, 3999] and np.all(dist[0, :4] == 0)
    assert rows[1, 0] == 100 and dist[1, 0] == 0
    assert rows[1, 1:3].tolist() == [1500, 1501] and dist[1, 1] == dist[1, 2]


@pytest.mark.parametrize("half", [False, True])
def test_parts_searched_with_lists_found_once_answer_as_each_alone(half):
    """A snapshot's IVF parts share one coarse quantizer: knn finds each query's lists once
    and every part scans them (``assigned``), with and without an id selector, exactly as a
    part's own search does; and the lists given are the lists scanned."""
    from ciphervec.engine.arrays.ann import flat_quantizer

    cpu = select("numpy")
    x, q = clustered(6000, 16, seed=8), clustered(30, 16, seed=9)
    cent = cpu.kmeans(x, 32, niter=10, seed=1, spherical=False, tol=0)
    quantizer = flat_quantizer(cent)
    parts = [cpu.ann_index(16, cent, half=half, quantizer=quantizer) for _ in range(2)]
    parts[0].add(x[:3500])
    parts[1].add(x[3500:])
    assigned = quantizer.search(q, 5)
    for part, n in zip(parts, (3500, 2500), strict=True):
        for valid in (np.ones(n, bool), np.arange(n) % 7 != 0):
            d_own, r_own = part.search(q, 10, 5, valid)
            d_one, r_one = part.search(q, 10, 5, valid, assigned=assigned)
            np.testing.assert_array_equal(r_one, r_own)
            np.testing.assert_array_equal(d_one, d_own)
            assert valid[r_one[r_one >= 0]].all()
        far = (assigned[0], (assigned[1] + 16) % 32)  # other lists: other rows
        _, r_far = part.search(q, 10, 5, np.ones(n, bool), assigned=far)
        assert not np.array_equal(r_far, part.search(q, 10, 5, np.ones(n, bool))[1])
