"""Parts of IVF codes (a trained tq or float16 index) merge by copying their codes list by
list: the merged part holds exactly the codes, norms and lists of the parts it joins, and
answers exactly as one part built from all their rows at once."""

from __future__ import annotations

import numpy as np
import pytest

from ciphervec.engine.arrays import kmeans
from ciphervec.engine.arrays.ann import flat_quantizer, sq_ranges
from ciphervec.engine.arrays.backend import select
from ciphervec.engine.arrays.kernels import normalize
from ciphervec.engine.arrays.turboquant import TIERS
from ciphervec.engine.memory import parts
from ciphervec.engine.memory.parts import Layout
from tests.conftest import BACKEND, clustered

D = 24


@pytest.mark.parametrize("precision", ["tq8", "tq4", "float16", "tq12"])
def test_merged_codes_are_the_parts_codes(precision):
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
    joined = parts.merged(backend, layout, pieces, lists)
    whole = parts.build(backend, layout, 0, x, lists)
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
