"""Maintenance: training (k-means centroids + every live row rewritten as a run), merges of
the write-ahead tail, sweeps of retired objects, and the training marks kept in the head."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from ..arrays import kmeans, turboquant
from ..arrays.ann import sq_ranges
from ..arrays.kernels import normalize, unit_norm
from ..arrays.turboquant import SQ_TIERS
from ..codec import run, segment, terms
from ..codec.centroids import TrainedLists
from ..codec.segment import Coded, Segment
from ..errors import CipherVecError, InvalidRequest, TrainingFailed
from ..memory.cache import StateCache
from ..memory.parts import Layout
from ..memory.state import Builder
from ..model import TrainResult
from ..names import born, new_id
from ..store import workers
from ..store.heads import Head, Heads
from ..store.manifest import Centroids, Envelope, SegmentRef
from ..store.transactions import Compact, DropRetired, MergeTail, SetTraining, TrainingStage, training_active
from ..timing import event
from . import outofcore
from .writes import Writer

log = logging.getLogger("ciphervec.maintenance")

SMALL_SEGMENT_ROWS = 8192
IN_MEMORY_BYTES = 2 << 30


class Maintenance:
    """Train, merge and sweep one index at a time."""

    def __init__(
        self,
        heads: Heads,
        cache: StateCache,
        writer: Writer,
        backend: Any,
        *,
        train_threshold: int = 65536,
        retire_grace_seconds: float = 900.0,
        merge_at: int = 256,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.heads = heads
        self.cache = cache
        self.writer = writer
        self.backend = backend
        self.train_threshold = train_threshold
        self.retire_grace = retire_grace_seconds
        self.merge_at = merge_at
        self.clock = clock
        # Who marks trainings from here: this process (local), or the function (Lambda).
        self.worker = workers.this_worker()
        # Whether a batch load's staged segments must outlive the grace period (``jobs.Jobs.keeps``).
        self.keeps_staged: Callable[[str, str, float], bool] = lambda tenant, job, now: False
        # Rows that would take more than this as float32 train out of core (``outofcore``):
        # the in-memory path peaks near 3.3x it, inside a 10 GB TrainFunction.
        self.in_memory_bytes = IN_MEMORY_BYTES

    # -- training marks --------------------------------------------------------------------
    def training_active(self, env: Envelope) -> bool:
        """A training is marked and someone may still be doing it (``transactions``)."""
        return training_active(env, self.clock())

    def merge_due(self, head: Head | None) -> bool:
        return head is not None and len(merge_run(head.body.segments)) >= self.merge_at

    def set_training(
        self, tenant: str, name: str, kek: bytes | None, state: str | None, until: float | None = None
    ) -> None:
        """Record ``queued``/``running``/``None`` in the head so every container sees it;
        ``until``: when the worker will have stopped for sure (a Lambda invocation's deadline)."""
        head = self.heads.open(tenant, name, kek)
        new = workers.mark(self.worker, self.clock(), until, state=state) if state else None
        self.heads.commit(head, SetTraining(new))

    # -- training --------------------------------------------------------------------------
    def train(
        self,
        tenant: str,
        name: str,
        kek: bytes | None,
        *,
        n_lists: int | None = None,
        max_iters: int = kmeans.DEFAULT_ITERATIONS,
        tolerance: float = 1e-6,
    ) -> TrainResult:
        """Train (or retrain) IVF centroids and compact all segments into one run."""
        head = self.heads.open(tenant, name, kek)
        head = self._stage(head, "sampling rows")
        if self.out_of_core(head):
            return self._train_out_of_core(head, kek, n_lists, max_iters, tolerance)
        snap = self.cache.snapshot(head)
        metric = head.metric
        count = snap.live
        lists = self._lists(head, count, n_lists)
        if count < max(2 * lists, 2):
            return self._too_few(head, kek, count, lists)
        rows = snap.live_segment()  # every live row, in row order
        assert rows.vectors is not None
        vectors = rows.vectors
        applied, seq = list(snap.applied), snap.applied_seq
        layout = Layout(snap.dimension, metric, snap.precision, text=snap.layout.text)
        del snap  # the rows live on in ``rows`` until the new snapshot holds them
        head = self._stage(head, "k-means")
        with _fitting():
            calibration = kmeans.held_out(len(vectors))
            centroids = kmeans.train_centroids(
                self.backend,
                vectors,
                lists,
                metric,
                max_iters=max_iters,
                tolerance=tolerance,
                exclude=calibration,
            )
            head = self._stage(head, "assigning lists")
            labels = kmeans.assign_lists(self.backend, vectors, centroids, metric)
            head = self._stage(head, "measuring n_probes")
            chosen = kmeans.choose_n_probes(
                self.backend, vectors, labels, centroids, metric, calibration, kmeans.AIMS
            )
            (probes, recall), (probes_100, _) = chosen[10], chosen[100]
        cent_name, snap_name = f"run/{new_id()}", f"run/{new_id()}"
        head = self._stage(head, "writing the run")
        # The rows encoded once, for the run; what every reader will hold is those codes
        # decoded, turned so in place a chunk at a time (nothing needs the rows as given any
        # more), and in the same pass a tier's quantizer ranges, fitted once for every part
        sq_tier = layout.precision in SQ_TIERS
        coded = segment.coded(vectors, head.precision)
        extremes = []
        for lo in range(0, len(vectors), STORED_ROWS):
            chunk = vectors[lo : lo + STORED_ROWS]
            if head.precision != "float32":
                chunk[:] = coded.slice(lo, lo + len(chunk)).decode()
            if sq_tier:
                space = normalize(chunk) if metric == "cosine" else chunk
                extremes.append(np.stack([space.min(0), space.max(0)]))
        ranges = sq_ranges(extremes, turboquant.TIERS[layout.precision]) if sq_tier else None
        trained_lists = TrainedLists(self.backend.to_host(centroids).astype(np.float32), ranges)
        unit = metric != "cosine" or unit_norm(vectors)  # of the rows as stored: once, for both
        hold = outofcore.holder(layout.precision, metric, len(vectors), ranges, lambda: unit)
        codes = hold(vectors) if hold else None
        try:
            self.writer.run(head, snap_name, rows, labels, lists, coded=coded, held=codes, unit=unit)
            del coded, codes
            self.heads.write_centroids(head, cent_name, trained_lists)
        except BaseException:
            self.heads.delete_all(head, [snap_name, cent_name])
            raise
        held = vectors
        written = [cent_name, snap_name]
        head = self._stage(head, "committing")
        now = self.clock()
        cent = Centroids(cent_name, lists, probes, len(rows), now, round(recall, 4))
        cent.auto_n_probes_100 = max(probes, probes_100)
        try:
            committed = self.heads.commit(head, Compact(tuple(applied), seq, snap_name, len(rows), cent)).head
        except BaseException:
            self.heads.delete_all(head, written)
            raise
        if committed.body.segments and committed.body.segments[0].name == snap_name:

            def trained() -> Builder:  # the run's content, instead of reading it back
                fresh = Builder(layout)
                fresh.set_centroids(cent_name, trained_lists)
                rows.vectors = held
                fresh.apply(rows, seq, ivf_list=labels)
                return fresh

            self.cache.replace(committed, trained, [snap_name])
        self.sweep(tenant, name, kek)
        event("trainings")
        return TrainResult(True, f"Index '{name}' trained successfully", lists, probes, recall)

    def _lists(self, head: Head, count: int, n_lists: int | None) -> int:
        """The list count to train: asked for, set at creation, or the rule's for ``count``."""
        hint = (head.body.config.get("index_config") or {}).get("n_lists")
        lists = int(n_lists or hint or kmeans.auto_n_lists(count))
        if lists < 1:
            raise InvalidRequest("n_lists must be at least 1")
        return lists

    def _too_few(self, head: Head, kek: bytes | None, count: int, lists: int) -> TrainResult:
        self.set_training(head.tenant, head.name, kek, None)
        return TrainResult(
            False,
            f"Index '{head.name}' has {count} vectors; training {lists} lists needs at least "
            f"{max(2 * lists, 2)}. Queries stay exact.",
        )

    def out_of_core(self, head: Head) -> bool:
        """Train from the stored objects in passes (``outofcore``) rather than from a
        snapshot in memory: the rows as float32 would take more than ``in_memory_bytes``."""
        rows = sum(r.rows for r in head.body.segments if r.kind != "delete")
        return rows * max(int(head.body.config.get("dimension") or 0), 1) * 4 > self.in_memory_bytes

    def _train_out_of_core(
        self, head: Head, kek: bytes | None, n_lists: int | None, max_iters: int, tolerance: float
    ) -> TrainResult:
        """``train`` for an index too big to hold decoded: see ``outofcore``."""
        found = outofcore.survey(self.heads, head)
        live = found.live
        count = len(live)
        lists = self._lists(head, count, n_lists)
        if count < max(2 * lists, 2):
            return self._too_few(head, kek, count, lists)
        applied = tuple(r.name for r in head.body.segments)
        seq = max((r.seq for r in head.body.segments), default=0)
        calibration = kmeans.held_out(count)
        rng = np.random.default_rng(1234)
        picked = kmeans.sample_rows(count, kmeans.sample_limit(lists), calibration, rng)
        sample_at = np.arange(count) if picked is None else picked
        chosen = np.union1d(sample_at, calibration)
        values = outofcore.gather(self.heads, head, found, live[chosen])
        sample = values[np.searchsorted(chosen, sample_at)]
        queries = values[np.searchsorted(chosen, calibration)]
        del values
        cosine = head.metric == "cosine"
        head = self._stage(head, "k-means")
        with _fitting():
            centroids = kmeans.train_centroids(
                self.backend, sample, lists, head.metric, max_iters=max_iters, tolerance=tolerance
            )
            del sample
            head = self._stage(head, "assigning lists")
            space = self.backend.to_host(normalize(self.backend.asarray(queries))) if cosine else queries
            k = kmeans.calibration_k(count, kmeans.AIMS)
            got = outofcore.assign(self.heads, head, self.backend, found, centroids, space, k)
            head = self._stage(head, "measuring n_probes")
            chosen_probes = kmeans.probes_for(
                self.backend, space, got.nearest, calibration, got.labels, centroids, count, kmeans.AIMS
            )
            (probes, recall), (probes_100, _) = chosen_probes[10], chosen_probes[100]
        cent_name, snap_name = f"run/{new_id()}", f"run/{new_id()}"
        head = self._stage(head, "writing the run")
        written = [snap_name, cent_name]
        at = head

        def write_rows(obj: str, rows: Segment, coded: Coded) -> Segment:
            return self.heads.write_rows(at, obj, rows, coded)

        try:
            outofcore.write(self.heads, head, found, got, snap_name, lists, write_rows)
            trained = TrainedLists(self.backend.to_host(centroids).astype(np.float32), got.ranges)
            self.heads.write_centroids(head, cent_name, trained)
        except BaseException:
            self.heads.delete_all(head, written)
            raise
        head = self._stage(head, "committing")
        cent = Centroids(cent_name, lists, probes, count, self.clock(), round(recall, 4))
        cent.auto_n_probes_100 = max(probes, probes_100)
        try:
            self.heads.commit(head, Compact(applied, seq, snap_name, count, cent))
        except BaseException:
            self.heads.delete_all(head, written)
            raise
        self.cache.drop(head.key)  # the next reader opens the run (its probed lists first)
        self.sweep(head.tenant, head.name, kek)
        event("trainings")
        return TrainResult(True, f"Index '{head.name}' trained successfully", lists, probes, recall)

    def _stage(self, head: Head, stage: str) -> Head:
        """Show ``stage`` in the running training's mark, and return the head after it. Only
        for a training started with a running mark; best effort: a failed write hides the
        progress, never stops the training."""
        mark = head.envelope.training
        if not mark or mark.get("state") != "running":
            return head
        try:
            return self.heads.commit(head, TrainingStage(stage, self.clock())).head
        except CipherVecError as exc:
            log.warning("could not record training stage %r: %s", stage, type(exc).__name__)
            return head

    # -- merges and sweeps --------------------------------------------------------------------
    def merge_tail(self, tenant: str, name: str, kek: bytes | None) -> int:
        """Merge the newest stretch of write-ahead segments (see ``merge_run``) into one
        upsert segment and one tombstone segment; returns how many segments were merged.
        In a trained index the upserts become a run grouped by the current IVF lists, so
        a cold container reads only the probed lists of it too.

        Keeps the head short and cold loads few objects between trainings. The merged
        objects hold the stretch's net effect (last write per id wins; ids whose last write
        is a delete become tombstones, which may still shadow older rows).
        """
        head = self.heads.open(tenant, name, kek)
        refs = head.body.segments
        tail = merge_run(refs)
        if len(tail) < max(self.merge_at, 2):
            return 0
        base = [r.name for r in refs[: len(refs) - len(tail)]]
        cent = head.body.centroids
        merged = self._net_effect(head, tail, trained=cent is not None)
        try:
            for obj, seg in merged:
                if obj.startswith("run/"):
                    assert cent is not None and seg.vectors is not None
                    arr = self.heads.read_centroids(head, cent).centroids
                    labels = kmeans.assign_lists(self.backend, seg.vectors, arr, head.metric)
                    self.writer.run(head, obj, seg, labels, cent.n_lists)
                else:
                    self.heads.write_rows(head, obj, seg)
        except BaseException:
            self.heads.delete_all(head, [obj for obj, _ in merged])
            raise
        tail_names = [r.name for r in tail]
        last_seq = tail[-1].seq
        refs_merged = tuple(
            SegmentRef(obj, last_seq, "run" if obj.startswith("run/") else seg.kind, len(seg))
            for obj, seg in merged
        )
        op = MergeTail(tuple(base), tuple(tail_names), cent.name if cent else None, refs_merged, self.clock())
        try:
            self.heads.commit(head, op)
        except BaseException:
            self.heads.delete_all(head, [obj for obj, _ in merged])
            raise
        self.cache.rename(head.key, base, tail_names, [obj for obj, _ in merged])  # same rows
        event("tail_merges")
        return len(tail)

    def _net_effect(self, head: Head, tail: list[SegmentRef], *, trained: bool) -> list[tuple[str, Segment]]:
        """The rows of ``tail`` as at most one tombstone segment and one upsert object (a run
        name when ``trained``), each with the object name it will be written under."""
        latest: dict[str, tuple[Segment, int] | None] = {}
        for ref in tail:
            seg = segment.decode(self.heads.read(head, ref.name))
            if seg.kind == "delete":
                latest.update(dict.fromkeys(seg.ids))
            else:
                latest.update((i, (seg, j)) for j, i in enumerate(seg.ids))
        live = [(i, v) for i, v in latest.items() if v is not None]
        merged: list[tuple[str, Segment]] = []
        tombstones = [i for i, v in latest.items() if v is None]
        if tombstones:
            merged.append((f"seg/{new_id()}", Segment("delete", tombstones)))
        if live:
            rows = [seg.vectors[j] for _, (seg, j) in live if seg.vectors is not None]
            meta = [seg.metadata[j] if seg.metadata else None for _, (seg, j) in live]
            text = [seg.contents[j] if seg.contents else None for _, (seg, j) in live]
            up = Segment(
                "upsert",
                [i for i, _ in live],
                np.vstack(rows),
                meta if any(m is not None for m in meta) else None,
                text if any(t is not None for t in text) else None,
                terms.pick([pick for _, pick in live]),  # carried over: no row analysed again
            )
            merged.append((f"{'run' if trained else 'seg'}/{new_id()}", up))
        return merged

    def sweep(self, tenant: str, name: str, kek: bytes | None) -> int:
        """Delete retired objects past the grace period, and old uncommitted orphans."""
        head = self.heads.open(tenant, name, kek)
        now = self.clock()
        due = [r["name"] for r in head.body.retired if now - r["at"] >= self.retire_grace]
        live = {s.name for s in head.body.segments}
        if head.body.centroids:
            live.add(head.body.centroids.name)
        retired = {r["name"] for r in head.body.retired}
        orphans = []
        kept: dict[str, bool] = {}  # load job -> still working towards its commit
        for key in self.heads.store.list(head.root):
            obj = key[len(head.root) :]
            if obj == "head" or run.base_name(obj) in live or run.base_name(obj) in retired:
                continue
            if obj.startswith("load/"):
                job = obj.split("/")[1]
                if job not in kept:
                    kept[job] = self.keeps_staged(head.tenant, job, now)
                if kept[job]:
                    continue
            if now - born(obj, now) >= self.retire_grace:
                orphans.append(obj)
        staged = [o for o in orphans if o.startswith("load/")]
        if staged:  # a load may have committed them since the head was read: look again
            fresh = self.heads.open(tenant, name, kek).body
            named = {s.name for s in fresh.segments} | {r["name"] for r in fresh.retired}
            orphans = [o for o in orphans if o not in named]
        if due:
            self.heads.commit(head, DropRetired(frozenset(due)))
        self.heads.delete_all(head, due + orphans)
        return len(due) + len(orphans)


@contextmanager
def _fitting() -> Iterator[None]:
    """k-means, assignment and calibration: an error of their own is a failed training."""
    try:
        yield
    except CipherVecError:
        raise
    except Exception as exc:
        raise TrainingFailed(f"training failed: {type(exc).__name__}") from exc


def merge_run(refs: list[SegmentRef]) -> list[SegmentRef]:
    """The newest write-ahead segments worth merging, size-tiered like an LSM tree: walking
    back from the newest, ordinary writes (up to 8,192 rows) always join; a bigger one (an
    earlier merge's output) joins only once all newer rows together reach its size. Each
    row is then rewritten O(log n) times, not once per merge."""
    stretch: list[SegmentRef] = []
    total = 0
    for ref in reversed(refs):
        if ref.kind in ("snapshot", "run") or (ref.rows > max(total, SMALL_SEGMENT_ROWS)):
            break
        stretch.insert(0, ref)
        total += ref.rows
    return stretch


STORED_ROWS = 16384  # rows turned into their stored form at a time (TurboQuant works in float64)
