"""Snapshots immutable in fact: the id map's published levels are never written again, and
every snapshot answers as it did when it was published, whatever is built after it."""

import copy
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ciphervec.engine.arrays.backend import select
from ciphervec.engine.codec.segment import Segment
from ciphervec.engine.memory.idmap import RATIO, IdMap, IdMapBuilder
from ciphervec.engine.memory.parts import Layout
from ciphervec.engine.memory.state import Builder, Snapshot

BACKEND = select("numpy")
D = 4


def test_levels_stay_geometric_and_published_ones_are_never_written():
    maps, seen = [], []
    builder = IdMapBuilder()
    truth: dict[str, int] = {}
    rng = np.random.default_rng(0)
    row = 0
    for _ in range(300):
        ids = [f"k{int(i)}" for i in rng.integers(0, 5000, 50)]
        for key in ids:
            builder.set(key, row)
            truth[key] = row
            row += 1
        published = builder.freeze()
        maps.append((published, copy.deepcopy(published.levels), dict(truth)))
        sizes = [len(level) for level in published.levels]
        assert all(a * RATIO <= b for a, b in zip(sizes, sizes[1:], strict=False)), sizes
        seen.append(len(sizes))
        builder = IdMapBuilder(published)
    assert max(seen) <= 8  # log-structured: a handful of levels for 15,000 writes
    for published, levels, expected in maps:
        assert published.levels == levels  # no level changed after it was published
        keys = sorted(expected)
        assert published.rows(keys).tolist() == [expected[k] for k in keys]
        assert [published.get(k) for k in keys] == [expected[k] for k in keys]
        assert published.get("absent") == -1


def test_a_big_tip_is_handed_over_not_copied():
    builder = IdMapBuilder(IdMap(({"a": 0},)))
    own = {f"k{i}": i + 1 for i in range(1000)}
    builder.update(own.items())
    tip = builder.tip
    published = builder.freeze()
    assert published.levels[0] is tip and len(published.levels) == 1  # took "a" in place
    assert published.get("a") == 0 and published.get("k999") == 1000


def _rows(n: int, start: int) -> np.ndarray:
    return np.random.default_rng(start).standard_normal((n, D)).astype(np.float32)


def _answers(snap: Snapshot, keys: list[str]) -> list[int | None]:
    return [snap.row_of(k) for k in keys]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["upsert", "delete", "fail"]),
            st.lists(st.integers(0, 40), min_size=1, max_size=12),
        ),
        min_size=1,
        max_size=25,
    )
)
def test_every_snapshot_answers_as_when_it_was_published(steps):
    """Upserts (duplicates, overwrites), deletes and builds that fail part-way, each from the
    newest snapshot or from an older one (a failed build's base): every snapshot's rows by
    id, its live count and its new-id count stay what they were when it was published."""
    keys = [f"id{i}" for i in range(41)]
    snap = Builder(Layout(D, "euclidean", "float32")).freeze(BACKEND)
    published = [(snap, _answers(snap, keys), snap.live, snap.count_new(keys))]
    seq = 0
    for kind, picks in steps:
        seq += 1
        ids = [keys[i] for i in picks]
        builder = Builder(snap.layout, snap)
        if kind == "delete":
            builder.apply(Segment("delete", ids), seq)
        else:
            builder.apply(Segment("upsert", ids, _rows(len(ids), seq)), seq)
        if kind == "fail":  # a build that dies before it is frozen: its base stays current
            continue
        snap = builder.freeze(BACKEND)
        published.append((snap, _answers(snap, keys), snap.live, snap.count_new(keys)))
    for old, answers, live, new in published:
        assert _answers(old, keys) == answers
        assert old.live == live and old.count_new(keys) == new
        assert live == sum(a is not None for a in answers)


def test_readers_never_see_a_snapshot_change_while_writers_build():
    """Reader threads check published snapshots against what they answered when published,
    while a writer keeps building (overwrites, deletes, failed builds)."""
    keys = [f"id{i}" for i in range(200)]
    snap = Builder(Layout(D, "euclidean", "float32")).freeze(BACKEND)
    board: list[tuple[Snapshot, list[int | None]]] = [(snap, _answers(snap, keys))]
    stop, errors = threading.Event(), []

    def reader(seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            old, answers = board[int(rng.integers(0, len(board)))]
            if _answers(old, keys) != answers:
                errors.append(old.version)

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    rng = np.random.default_rng(1)
    try:
        for seq in range(1, 400):
            ids = [keys[int(i)] for i in rng.integers(0, len(keys), 20)]
            builder = Builder(snap.layout, snap)
            if seq % 5 == 0:
                builder.apply(Segment("delete", ids), seq)
            else:
                builder.apply(Segment("upsert", ids, _rows(len(ids), seq)), seq)
            if seq % 7 == 0:
                continue  # failed before freeze
            snap = builder.freeze(BACKEND)
            board.append((snap, _answers(snap, keys)))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    assert len(board) > 300


@pytest.mark.parametrize("n", [1, 1000])
def test_of_is_the_last_row_of_each_id(n):
    ids = [f"k{i % max(1, n // 2)}" for i in range(n)]
    idmap = IdMap.of(ids)
    last = {k: i for i, k in enumerate(ids)}
    assert all(idmap.get(k) == r for k, r in last.items())
