"""GPU (CuPy + faiss-gpu) vs CPU parity. Skipped without a GPU; run on a GPU host with
`pytest -m gpu` after installing the [gpu] extra. The kernels themselves run on CuPy in
test_kernels.py and test_filters.py (the ``xp`` fixture's gpu-marked parameter)."""

import os

import numpy as np
import pytest

from ciphervec.engine.arrays import backend as backend_mod
from ciphervec.engine.arrays.backend import Backend
from ciphervec.engine.model import IndexConfig, RowBatch
from ciphervec.engine.service import IndexService
from ciphervec.engine.store.manifest import RetryPolicy
from ciphervec.infra.storage.memory import MemoryStore
from tests.conftest import clustered

faiss = backend_mod.ann.faiss
has_gpu = backend_mod.HAS_FAISS and hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not has_gpu, reason="needs an NVIDIA GPU and faiss-gpu")]


@pytest.fixture
def backends():
    import array_api_compat.cupy
    import array_api_compat.numpy

    return Backend("numpy", array_api_compat.numpy, False), Backend("cupy", array_api_compat.cupy, True)


def test_cupy_backend_converts_at_its_edges(backends):
    _, gpu = backends
    x = clustered(50, 8, seed=9)
    on_device = gpu.asarray(x)
    assert type(on_device).__module__.startswith("cupy")
    np.testing.assert_array_equal(gpu.to_host(on_device), x)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_service_answers_alike_on_cupy_and_numpy(backends, metric):
    """Queries (normalisation, re-scoring, filter masks on the device) and training agree."""
    x, q = clustered(6000, 32, seed=10), clustered(20, 32, seed=11)
    meta = [{"g": i % 5, "s": f"k{i % 13}"} for i in range(len(x))]
    answers = []
    for be in backends:
        svc = IndexService(
            MemoryStore(), backend=be, train_threshold=10**9, retry=RetryPolicy(sleep=lambda s: None)
        )
        kek = os.urandom(32)
        svc.create_index("t", "i", IndexConfig(metric=metric), kek=kek)
        svc.upsert("t", "i", kek, RowBatch([str(i) for i in range(len(x))], x, meta, None))
        flat = svc.query("t", "i", kek, q, top_k=10, include=["distance"], filters={"s": {"$gte": "k5"}})
        svc.train("t", "i", kek, n_lists=32)
        ivf = svc.query("t", "i", kek, q, top_k=10, n_probes=32, include=["distance"])
        answers.append((flat, ivf))
    for got, want in zip(answers[1], answers[0]):
        assert [[r["id"] for r in row] for row in got] == [[r["id"] for r in row] for row in want]
        np.testing.assert_allclose(
            [[r["distance"] for r in row] for row in got],
            [[r["distance"] for r in row] for row in want],
            rtol=1e-6,
        )


def test_knn_parity(backends):
    cpu, gpu = backends
    x, q = clustered(20000, 64, seed=1), clustered(100, 64, seed=2)
    np.testing.assert_array_equal(cpu.knn(q, x, 10)[:, :5], gpu.knn(q, x, 10)[:, :5])


def test_kmeans_inertia_parity(backends):
    cpu, gpu = backends
    x = clustered(20000, 32, clusters=64, seed=3)

    def inertia(c):
        _, d = faiss.knn(x, c, 1)
        return float(d.sum())

    a = inertia(cpu.kmeans(x, 64, niter=20, seed=1, spherical=False, tol=0))
    b = inertia(gpu.kmeans(x, 64, niter=20, seed=1, spherical=False, tol=0))
    assert abs(a - b) / a < 0.05


@pytest.mark.parametrize("trained", [False, True])
def test_ann_search_parity_with_excluded_rows(backends, trained):
    cpu, gpu = backends
    x, q = clustered(10000, 32, seed=4), clustered(50, 32, seed=5)
    cent = cpu.kmeans(x, 32, niter=10, seed=1, spherical=False, tol=0) if trained else None
    valid = np.ones(len(x), bool)
    valid[::97] = False  # a few dead rows: the device over-fetches and drops them
    results = []
    for b in (cpu, gpu):
        ann = b.ann_index(32, cent)
        ann.add(x)
        results.append(ann.search(q, 10, 8, valid))
    (d_cpu, r_cpu), (d_gpu, r_gpu) = results
    assert valid[r_gpu[r_gpu >= 0]].all()
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(r_cpu, r_gpu)])
    assert overlap >= 0.99
    np.testing.assert_allclose(np.sort(d_cpu, 1), np.sort(d_gpu, 1), rtol=1e-3, atol=1e-3)
