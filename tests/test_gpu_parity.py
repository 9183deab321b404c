"""GPU (faiss-gpu) vs CPU parity. Skipped without a GPU; run on a GPU host with
`pytest -m gpu` after installing the [gpu] extra."""

import numpy as np
import pytest

from ciphervec.engine import backend as backend_mod
from ciphervec.engine.backend import Backend
from tests.conftest import clustered

faiss = backend_mod.faiss
has_gpu = faiss is not None and hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not has_gpu, reason="needs an NVIDIA GPU and faiss-gpu")]


@pytest.fixture
def backends():
    return Backend("numpy", np, False), Backend("cupy", None, True)


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
