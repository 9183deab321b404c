"""Snapshots that stay what they were: every snapshot answers as it did when it was
published, whatever is built after it (``state.py``'s invariant: readers share only what
later builders append to or move forward, never what they take back)."""

import threading

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ciphervec.engine.arrays.backend import select
from ciphervec.engine.codec.segment import Segment
from ciphervec.engine.memory.parts import Layout
from ciphervec.engine.memory.state import Builder, Snapshot

BACKEND = select("numpy")
D = 4


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
        if kind == "fail":  # a build that dies before it is frozen: the cache undoes it
            builder.undo()
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
            try:
                if _answers(old, keys) != answers:
                    errors.append(old.version)
            except Exception as exc:  # a row past the snapshot's own, say
                errors.append(repr(exc))

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
                builder.undo()  # failed before freeze, as the cache takes it back
                continue
            snap = builder.freeze(BACKEND)
            board.append((snap, _answers(snap, keys)))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    assert len(board) > 300
