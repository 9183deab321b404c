"""The engine's array math on every namespace (numpy, array-api-strict, CuPy where present),
checked against plain numpy references on seeded data."""

import numpy as np
import pytest

from ciphervec.engine.arrays import kernels
from ciphervec.engine.arrays.backend import select
from tests.conftest import clustered, host


def test_normalize_gives_unit_rows_and_keeps_zero_rows(xp):
    x = clustered(200, 24, seed=1)
    x[7] = 0.0
    got = host(kernels.normalize(xp.asarray(x)))
    want = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert got.dtype == np.float32 and not got[7].any()


def test_unit_norm_tells_unit_rows_apart(xp):
    x = clustered(100, 16, seed=2)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert kernels.unit_norm(xp.asarray(unit)) and kernels.unit_norm(xp.asarray(unit), chunk=7)
    unit[93] *= 1.01  # in the last chunk of 7, a short one
    assert not kernels.unit_norm(xp.asarray(unit)) and not kernels.unit_norm(xp.asarray(unit), chunk=7)
    if hasattr(xp, "float16"):  # not in the standard: float16 rows live on the host (numpy, CuPy)
        assert kernels.unit_norm(xp.asarray(unit[:3].astype(np.float16)))


@pytest.mark.parametrize("metric", ["euclidean", "squared_euclidean", "cosine"])
def test_exact_distances_match_a_float64_reference(xp, metric):
    rows, q = clustered(300, 32, seed=3), clustered(1, 32, seed=4)[0]
    rows[5] = q  # the query itself: distance exactly 0
    got = host(kernels.exact_distances(metric, xp.asarray(q), xp.asarray(rows)))
    r64, q64 = rows.astype(np.float64), q.astype(np.float64)
    if metric == "cosine":
        want = 1 - (r64 @ q64) / (np.linalg.norm(r64, axis=1) * np.linalg.norm(q64))
    else:
        want = ((r64 - q64) ** 2).sum(1)
        want = np.sqrt(want) if metric == "euclidean" else want
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
    assert got[5] == pytest.approx(0.0, abs=1e-12)


def test_cosine_distance_of_a_zero_vector_is_one(xp):
    rows = np.zeros((2, 4), np.float32)
    rows[1] = [1, 0, 0, 0]
    got = host(
        kernels.exact_distances("cosine", xp.asarray(np.array([0, 1, 0, 0], np.float32)), xp.asarray(rows))
    )
    assert got.tolist() == [1.0, 1.0]


def test_order_by_distance_breaks_ties_by_row(xp):
    rows = np.array([9, 4, 7, 1, 3], dtype=np.int64)
    dist = np.array([0.5, 0.1, 0.5, 0.1, 0.0])
    r, d = kernels.order_by_distance(xp.asarray(rows), xp.asarray(dist))
    order = np.lexsort((rows, dist))  # the numpy reference: distance, then row
    assert host(r).tolist() == rows[order].tolist() == [3, 1, 4, 7, 9]
    assert host(d).tolist() == dist[order].tolist()


def test_first_valid_keeps_order_and_pads_with_minus_one(xp):
    rng = np.random.default_rng(5)
    rows = np.stack([rng.permutation(50)[:20] for _ in range(6)]).astype(np.int64)
    rows[2, 15:] = -1  # faiss pads missing results with -1
    dist = np.sort(rng.random((6, 20)), axis=1)
    valid = rng.random(50) > 0.5
    got_d, got_r = (
        host(a) for a in kernels.first_valid(xp.asarray(dist), xp.asarray(rows), xp.asarray(valid), 8)
    )
    for i in range(6):
        keep = [(d, r) for d, r in zip(dist[i], rows[i]) if r >= 0 and valid[r]][:8]
        want_r = [r for _, r in keep] + [-1] * (8 - len(keep))
        assert got_r[i].tolist() == want_r
        np.testing.assert_array_equal(got_d[i, : len(keep)], [d for d, _ in keep])


def test_recall_curve_matches_a_bincount_reference(xp):
    rng = np.random.default_rng(6)
    n_lists = 12
    ranking = np.stack([rng.permutation(n_lists) for _ in range(30)]).astype(np.int64)
    rank_of = np.empty_like(ranking)
    rank_of[np.arange(30)[:, None], ranking] = np.arange(n_lists)[None, :]
    assert host(kernels.inverse_permutation(xp.asarray(ranking))).tolist() == rank_of.tolist()
    ranks = rng.integers(0, n_lists, (30, 10)).astype(np.int64)
    usable = rng.random((30, 10)) > 0.2
    hits = np.bincount(ranks[usable] + 1, minlength=n_lists + 1)
    want = np.cumsum(hits)[1:] / usable.sum()
    np.testing.assert_allclose(
        host(kernels.recall_curve(xp.asarray(ranks), xp.asarray(usable), n_lists)), want
    )


def test_all_finite(xp):
    x = np.ones((3, 4), np.float32)
    assert kernels.all_finite(xp.asarray(x))
    x[1, 2] = np.nan
    assert not kernels.all_finite(xp.asarray(x))
    x[1, 2] = np.inf
    assert not kernels.all_finite(xp.asarray(x))


@pytest.mark.parametrize("name", ["numpy", "strict"])
def test_backend_converts_only_at_its_edges(name):
    be = select(name)
    x = clustered(10, 4, seed=7)
    arr = be.asarray(x)
    assert (arr is x) == (name == "numpy")  # numpy: no copy at all
    back = be.to_host(kernels.normalize(arr))
    assert isinstance(back, np.ndarray)
    np.testing.assert_allclose(back, x / np.linalg.norm(x, axis=1, keepdims=True), rtol=1e-6)


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="strict"):
        select("tpu")
