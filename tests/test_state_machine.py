"""The engine against a plain dict, over random sequences of upserts, deletes, gets, queries,
trainings, merges, key rotations (re-wrapped, or re-encrypted and rewritten) and sweeps
(hypothesis), with extreme but accepted values."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ciphervec.engine.arrays.backend import select
from ciphervec.engine.model import MAX_FLOAT16, MAX_VALUE, IndexConfig, RowBatch
from ciphervec.engine.service import IndexService
from ciphervec.engine.store.manifest import RetryPolicy
from ciphervec.infra.storage.memory import MemoryStore
from tests.conftest import BACKEND

D = 4
KEK = bytes(range(32))
IDS = [f"id{i}" for i in range(40)]
value = st.one_of(
    st.floats(-1e3, 1e3, allow_nan=False, width=32),
    st.sampled_from([0.0, -0.0, MAX_VALUE, -MAX_VALUE, 1e-30, 3.0e14]),
)


class IndexModel(RuleBasedStateMachine):
    PRECISION = "float32"
    VALUES = value

    def __init__(self) -> None:
        super().__init__()
        self.store = MemoryStore()
        self.service = self.container()
        self.kek = KEK
        self.service.create_index(
            "t", "m", IndexConfig(dimension=D, storage_precision=self.PRECISION), kek=KEK
        )
        self.rows: dict[str, tuple[np.ndarray, dict | None]] = {}

    def container(self) -> IndexService:
        return IndexService(
            self.store,
            train_threshold=10**9,
            backend=select(BACKEND),
            retry=RetryPolicy(sleep=lambda s: None),
            merge_at=3,
            retire_grace_seconds=0.0,
        )

    @rule(data=st.data(), n=st.integers(1, 8))
    def upsert(self, data, n):
        ids = data.draw(st.lists(st.sampled_from(IDS), min_size=n, max_size=n))
        vecs = np.array(
            [data.draw(st.lists(self.VALUES, min_size=D, max_size=D)) for _ in ids], dtype=np.float32
        )
        meta = [data.draw(st.one_of(st.none(), st.fixed_dictionaries({"k": st.integers(0, 3)}))) for _ in ids]
        self.service.upsert("t", "m", self.kek, RowBatch(list(ids), vecs, meta))
        stored = vecs.astype(np.float16).astype(np.float32) if self.PRECISION == "float16" else vecs
        for i, v, m in zip(ids, stored, meta, strict=True):
            self.rows[i] = (v, m or None)

    @rule(ids=st.lists(st.sampled_from([*IDS, "never-there"]), max_size=6))
    def delete(self, ids):
        self.service.delete_vectors("t", "m", self.kek, list(ids))
        for i in ids:
            self.rows.pop(i, None)

    @rule(ids=st.lists(st.sampled_from([*IDS, "never-there"]), min_size=1, max_size=10))
    def get(self, ids):
        got = self.service.get("t", "m", self.kek, list(ids), ["vector", "metadata"])
        expect = [i for i in ids if i in self.rows]
        assert [g["id"] for g in got] == expect
        for g in got:
            v, m = self.rows[g["id"]]
            np.testing.assert_array_equal(np.asarray(g["vector"], dtype=np.float32), v)
            assert (g["metadata"] or None) == m

    @precondition(lambda self: self.rows)
    @rule(data=st.data())
    def query_finds_a_stored_vector(self, data):
        target = data.draw(st.sampled_from(sorted(self.rows)))
        v = self.rows[target][0]
        # every list probed: the search is exhaustive, whatever training did
        hits = self.service.query(
            "t",
            "m",
            self.kek,
            v[None, :],
            top_k=len(self.rows),
            n_probes=64,
            filters=None,
            include=["distance"],
        )[0]
        assert len(hits) == len(self.rows)
        assert all(np.isfinite(h["distance"]) for h in hits)
        best = min(h["distance"] for h in hits)
        assert any(
            h["id"] == target and h["distance"] <= best + 1e-6 * max(1.0, abs(best)) for h in hits
        ) or any(np.array_equal(self.rows[h["id"]][0], v) for h in hits if h["distance"] == best)

    @precondition(lambda self: len(self.rows) >= 8)
    @rule(lists=st.integers(1, 3))
    def train(self, lists):
        self.service.train("t", "m", self.kek, n_lists=lists, max_iters=5)

    @rule()
    def merge(self):
        self.service.merge_tail("t", "m", self.kek)

    @rule(reencrypt=st.booleans(), seed=st.integers(0, 2**32 - 1))
    def rotate(self, reencrypt, seed):
        new = np.random.default_rng(seed).bytes(32)
        self.service.rotate_key("t", "m", self.kek, new, None, reencrypt=reencrypt)
        self.kek = new

    @rule()
    def rewrite(self):
        self.service.rewrite("t", "m", self.kek)

    @rule()
    def sweep(self):
        self.service.sweep("t", "m", self.kek)

    @invariant()
    def counts_and_ids_agree(self):
        assert self.service.num_vectors("t", "m", self.kek) == len(self.rows)
        assert sorted(self.service.list_ids("t", "m", self.kek)) == sorted(self.rows)

    @invariant()
    def a_cold_container_agrees(self):
        cold = self.container()
        assert sorted(cold.list_ids("t", "m", self.kek)) == sorted(self.rows)


class Float16IndexModel(IndexModel):
    PRECISION = "float16"
    VALUES = st.one_of(
        st.floats(-1e3, 1e3, allow_nan=False, width=16),
        st.sampled_from([0.0, MAX_FLOAT16, -MAX_FLOAT16, 6e-8]),
    )


class TurboQuantIndexModel(IndexModel):
    """tq8: lossy, so vectors come back close (not equal) and a query finds every row; ids,
    metadata and counts stay exact."""

    PRECISION = "tq8"
    VALUES = st.floats(-1e3, 1e3, allow_nan=False, width=32)

    @rule(data=st.data(), n=st.integers(1, 8))
    def upsert(self, data, n):
        super().upsert(data, n)
        self.ever = [*getattr(self, "ever", []), *self.rows.values()]

    @rule(ids=st.lists(st.sampled_from([*IDS, "never-there"]), min_size=1, max_size=10))
    def get(self, ids):
        got = self.service.get("t", "m", self.kek, list(ids), ["vector", "metadata"])
        assert [g["id"] for g in got] == [i for i in ids if i in self.rows]
        for g in got:
            v, m = self.rows[g["id"]]
            w = np.asarray(g["vector"], dtype=np.float64)
            # within the tier's error in any state: the codes' error is relative to the row
            # (storage) and to the ranges fitted over every row at training (memory)
            peak = max(np.linalg.norm(r[0]) for r in self.ever)
            assert np.linalg.norm(w - v) <= 0.1 * np.linalg.norm(v) + 0.02 * peak
            assert (g["metadata"] or None) == m

    @precondition(lambda self: self.rows)
    @rule(data=st.data())
    def query_finds_a_stored_vector(self, data):
        target = data.draw(st.sampled_from(sorted(self.rows)))
        hits = self.service.query(
            "t",
            "m",
            self.kek,
            self.rows[target][0][None, :],
            top_k=len(self.rows),
            n_probes=64,
            include=["distance"],
        )[0]
        assert sorted(h["id"] for h in hits) == sorted(self.rows)
        assert all(np.isfinite(h["distance"]) for h in hits)


TestIndexModel = IndexModel.TestCase
TestFloat16IndexModel = Float16IndexModel.TestCase
TestTurboQuantIndexModel = TurboQuantIndexModel.TestCase
TestTurboQuantIndexModel.settings = TestIndexModel.settings = TestFloat16IndexModel.settings = settings(
    max_examples=60, stateful_step_count=25, deadline=None, suppress_health_check=list(HealthCheck)
)
