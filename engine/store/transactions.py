"""Typed head transactions: every change to a head as a small operation that holds all it
needs, with its ``apply`` and its conflict rule together, and the one rule of what a commit
makes due (a training, a re-encryption) for upserts and batch loads alike.

``Heads.commit(head, op)`` runs ``op.apply(envelope, body)`` on the newest head by
compare-and-swap (``manifest.commit``), once per attempt on a freshly read head: an operation
is a frozen value, so every attempt applies the same change, and it raises to refuse when
the head it is given conflicts with what its caller saw (nothing is written then).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..arrays import kmeans
from ..errors import Contention, ValidationFailed
from . import workers
from .manifest import Centroids, Envelope, HeadBody, SegmentRef

TRAINING_STALE_SECONDS = 3600.0
REWRITE_STALE_SECONDS = 3600.0
# A rotation's mark holds this long for the job it queues to start and claim it.
REWRITE_START_SECONDS = 960.0
KEEP_LOADS = 64  # batch-load job ids remembered in the head


# -- what is due ---------------------------------------------------------------------------
def training_active(env: Envelope, now: float) -> bool:
    """A training is marked and someone may still be doing it: not stale, not past the
    deadline its worker gave (a Lambda invocation's end), and not marked by a process of this
    host that has died since (a crashed server's queue)."""
    return workers.holds(env.training, now, TRAINING_STALE_SECONDS)


def rewrite_active(env: Envelope, now: float) -> bool:
    """A re-encryption is marked and someone may still be doing it (as ``training_active``)."""
    return workers.holds(env.rewrite, now, REWRITE_STALE_SECONDS)


def rewrite_due(env: Envelope, body: HeadBody, now: float, retire_grace: float) -> bool:
    """Nobody is at it, and objects wait for a rewrite, or objects under an old key wait past
    the grace period for the sweep that frees the key."""
    if not body.old_keys or rewrite_active(env, now):
        return False
    return bool(body.stale_objects()) or any(
        r.get("key") and now - r["at"] >= retire_grace for r in body.retired
    )


def check_dimension(known: int, given: int) -> None:
    """Vectors of ``given`` dimensions may go into an index of ``known`` (0: not yet set)."""
    if known and known != given:
        raise ValidationFailed(
            f"vector dimension {given} does not match the index dimension {known}", ("body", "vectors")
        )


@dataclass(frozen=True)
class Due:
    """What a commit made due and marked in the head it committed: the caller queues it."""

    training: bool = False
    rewrite: bool = False


@dataclass(frozen=True)
class JobRules:
    """When a commit makes a training or a re-encryption due, as of one moment: the rule
    upserts, batch loads and recoveries share, with the workers that mark them."""

    now: float
    train_worker: str
    rewrite_worker: str
    train_threshold: int
    retire_grace: float

    def training_due(self, env: Envelope, body: HeadBody, count: int) -> bool:
        """``count`` rows call for a (re)training: past the threshold, none running, and more
        lists than the current centroids have."""
        if count <= self.train_threshold or training_active(env, self.now):
            return False
        cent = body.centroids
        return cent is None or kmeans.auto_n_lists(count) > cent.n_lists

    def mark(self, env: Envelope, body: HeadBody, count: int, *, training: bool = True) -> Due:
        """Mark in ``env`` what is due once the index holds ``count`` rows (``training``:
        whether this commit may start one at all)."""
        train = training and self.training_due(env, body, count)
        if train:
            env.training = workers.mark(self.train_worker, self.now, state="queued", count=count)
        rewrite = rewrite_due(env, body, self.now, self.retire_grace)
        if rewrite:
            env.rewrite = workers.mark(self.rewrite_worker, self.now)
        return Due(train, rewrite)

    def orphans(self, env: Envelope, body: HeadBody | None = None) -> list[str]:
        """The jobs ``env`` marks that nobody is doing any more (``train``, ``reencrypt``);
        with ``body``, also a re-encryption that is due and unmarked (its mark was given back)."""
        kinds = []
        if env.training and not training_active(env, self.now):
            kinds.append("train")
        orphaned = bool(env.rewrite) and not rewrite_active(env, self.now)
        if orphaned or (body is not None and rewrite_due(env, body, self.now, self.retire_grace)):
            kinds.append("reencrypt")
        return kinds


# -- the operations ------------------------------------------------------------------------
@dataclass(frozen=True)
class Append:
    """A written segment becomes the head's newest. An upsert (``dimension`` set) must match
    the head's dimension, and the first one sets it; with ``rules``, the training and
    re-encryption the index then holds ``estimate`` rows for are marked. Returns them."""

    name: str
    kind: str
    rows: int
    dimension: int | None = None
    estimate: int = 0
    rules: JobRules | None = None

    def apply(self, env: Envelope, body: HeadBody) -> Due:
        if self.dimension is not None:
            check_dimension(int(body.config["dimension"]), self.dimension)
            body.config["dimension"] = self.dimension
        due = self.rules.mark(env, body, self.estimate) if self.rules is not None else Due()
        body.segments.append(SegmentRef(self.name, body.next_seq, self.kind, self.rows))
        body.next_seq += 1
        return due


@dataclass(frozen=True)
class LoadCommitted:
    """A batch load's commit: whether this one applied it, what became due, and the rows the
    head then counts (an upper bound: see ``estimate``)."""

    applied: bool
    due: Due
    count: int


@dataclass(frozen=True)
class CommitLoad:
    """A batch load's staged segments join the head, exactly once: a load the head already
    has (its id among the recent loads, one of its segments named, or ``done_before``: its
    staged objects gone since) applies nothing. Refused when the index's dimension changed
    during the load."""

    job_id: str
    staged: tuple[tuple[str, int], ...]
    dimension: int
    done_before: bool
    rules: JobRules

    def apply(self, env: Envelope, body: HeadBody) -> LoadCommitted:
        named = {s.name for s in body.segments} | {r["name"] for r in body.retired}
        if self.done_before or self.job_id in body.loads or any(n in named for n, _ in self.staged):
            return LoadCommitted(False, Due(), estimate(body))
        known = int(body.config.get("dimension") or 0)
        if self.staged and known and self.dimension and known != self.dimension:
            raise ValidationFailed(f"the index dimension changed to {known} during the load")
        if self.staged and not known and self.dimension:
            body.config["dimension"] = self.dimension
        for name, rows in self.staged:
            body.segments.append(SegmentRef(name, body.next_seq, "upsert", rows))
            body.next_seq += 1
        body.loads = [*body.loads, self.job_id][-KEEP_LOADS:]
        count = estimate(body)
        return LoadCommitted(True, self.rules.mark(env, body, count, training=bool(self.staged)), count)


@dataclass(frozen=True)
class Compact:
    """A training's result: every segment up to ``seq`` (exactly ``applied``, which it read)
    becomes the one ``run`` with new ``centroids``; the segments after it stay. Refused if
    the head's older segments are no longer ``applied`` (a merge or another training)."""

    applied: tuple[str, ...]
    seq: int
    run: str
    rows: int
    centroids: Centroids

    def apply(self, env: Envelope, body: HeadBody) -> None:
        older = [s for s in body.segments if s.seq <= self.seq]
        if tuple(s.name for s in older) != self.applied:
            raise Contention("the index was compacted concurrently; train again")
        now = self.centroids.trained_at
        body.retire([s.name for s in older] + ([body.centroids.name] if body.centroids else []), now)
        body.segments = [SegmentRef(self.run, self.seq, "run", self.rows)] + [
            s for s in body.segments if s.seq > self.seq
        ]
        body.centroids = self.centroids
        body.prune_old_keys()
        env.training = None


@dataclass(frozen=True)
class MergeTail:
    """A merge: the segments ``tail`` right after ``base`` become ``merged``. Refused if the
    head no longer starts with ``base`` + ``tail`` or has other centroids than it read."""

    base: tuple[str, ...]
    tail: tuple[str, ...]
    centroids: str | None
    merged: tuple[SegmentRef, ...]
    at: float

    def apply(self, env: Envelope, body: HeadBody) -> None:
        names = tuple(s.name for s in body.segments)
        held = body.centroids.name if body.centroids else None
        if names[: len(self.base) + len(self.tail)] != self.base + self.tail or held != self.centroids:
            raise Contention("the index was compacted concurrently")
        body.retire(list(self.tail), self.at)
        start = len(self.base)
        body.segments = body.segments[:start] + list(self.merged) + body.segments[start + len(self.tail) :]
        body.prune_old_keys()


@dataclass(frozen=True)
class DropRetired:
    """Retired objects leave the head (the sweep deletes them next); never conflicts."""

    names: frozenset[str]

    def apply(self, env: Envelope, body: HeadBody) -> None:
        body.retired = [r for r in body.retired if r["name"] not in self.names]
        body.prune_old_keys()


@dataclass(frozen=True)
class SetTraining:
    """The training mark (``workers.mark``: queued or running) or its end (None)."""

    mark: Mapping[str, Any] | None

    def apply(self, env: Envelope, body: HeadBody) -> None:
        env.training = dict(self.mark) if self.mark else None


@dataclass(frozen=True)
class TrainingStage:
    """How far a running training has come: its ``stage`` (one of ``STAGES``) since ``at``,
    written into the running mark (``training-status`` shows it). No conflict: without a
    running mark (a training started without one, or the mark taken by a newer one) it
    changes nothing and returns False."""

    stage: str
    at: float

    STAGES = (
        "sampling rows",
        "k-means",
        "assigning lists",
        "measuring n_probes",
        "writing the run",
        "committing",
    )

    def apply(self, env: Envelope, body: HeadBody) -> bool:
        if self.stage not in self.STAGES:
            raise ValueError(f"unknown training stage {self.stage!r}")
        if not env.training or env.training.get("state") != "running":
            return False
        done = self.STAGES.index(self.stage)
        env.training = {**env.training, "stage": self.stage, "stage_at": self.at, "step": done + 1}
        return True


@dataclass(frozen=True)
class SetRewrite:
    """The re-encryption mark (a rewrite claimed) or its end (None: given back)."""

    mark: Mapping[str, Any] | None

    def apply(self, env: Envelope, body: HeadBody) -> None:
        env.rewrite = dict(self.mark) if self.mark else None


@dataclass(frozen=True)
class TakeOrphans:
    """The jobs nobody is doing any more (``JobRules.orphans``, decided on the head this
    attempt reads) marked again as ``rules``' workers'. Returns their kinds."""

    rules: JobRules

    def apply(self, env: Envelope, body: HeadBody) -> list[str]:
        kinds = self.rules.orphans(env, body)
        if "train" in kinds:
            extra = {k: v for k, v in (env.training or {}).items() if k == "count"}
            env.training = workers.mark(self.rules.train_worker, self.rules.now, state="queued", **extra)
        if "reencrypt" in kinds:
            env.rewrite = workers.mark(self.rules.rewrite_worker, self.rules.now)
        return kinds


@dataclass(frozen=True)
class MarkDeleting:
    """The index is being deleted: readers answer 404, writers are refused."""

    def apply(self, env: Envelope, body: HeadBody) -> None:
        env.deleting = True


@dataclass(frozen=True)
class Rewrap:
    """The data key wrapped under another key (a client key or a KMS key, either way round):
    nothing else changes, and the old key stops opening the index."""

    key_mode: str
    wrapped_dek: bytes
    kms_name: str | None

    def apply(self, env: Envelope, body: HeadBody) -> None:
        env.key_mode, env.wrapped_dek, env.kms_name = self.key_mode, self.wrapped_dek, self.kms_name


@dataclass(frozen=True)
class Rekey:
    """A new data key (``dek_id``, wrapped as ``wrapped_dek``; the head is sealed under it):
    the current one becomes the old key ``old_kid`` that every live and retired object is
    tagged with, a training under it can no longer commit, and the rewrite is marked."""

    key_mode: str
    wrapped_dek: bytes
    kms_name: str | None
    dek_id: str
    old_kid: str
    old_dek: str  # base64, sealed in the body
    rewrite_mark: Mapping[str, Any] = field(default_factory=dict)

    def apply(self, env: Envelope, body: HeadBody) -> None:
        Rewrap(self.key_mode, self.wrapped_dek, self.kms_name).apply(env, body)
        env.dek_id = self.dek_id
        env.training = None
        env.rewrite = dict(self.rewrite_mark)
        kid = self.old_kid
        body.old_keys[kid] = self.old_dek
        body.segments = [s if s.key else replace(s, key=kid) for s in body.segments]
        if body.centroids is not None and not body.centroids.key:
            body.centroids = replace(body.centroids, key=kid)
        body.retired = [r if r.get("key") else {**r, "key": kid} for r in body.retired]


@dataclass(frozen=True)
class SwapRewritten:
    """A rewrite's copies (old name -> new name, the same rows under the current data key)
    replace the objects the head still names under an old key; the old ones are retired and
    listed as renamed. Copies of objects merged or trained away meanwhile are left out (the
    caller deletes them). Returns the old names swapped."""

    copies: Mapping[str, str]
    at: float

    def apply(self, env: Envelope, body: HeadBody) -> list[str]:
        done = [s.name for s in body.segments if s.key and s.name in self.copies]
        cent = body.centroids
        if cent is not None and cent.key and cent.name in self.copies:
            done.append(cent.name)
        body.retire(done, self.at)
        moved = set(done)
        body.segments = [
            replace(s, name=self.copies[s.name], key=None) if s.name in moved else s for s in body.segments
        ]
        if cent is not None and cent.name in moved:
            body.centroids = replace(cent, name=self.copies[cent.name], key=None)
        body.renamed.update((old, self.copies[old]) for old in done)
        body.prune_old_keys()
        if not body.stale_objects():
            env.rewrite = None
        return done


def estimate(body: HeadBody) -> int:
    """Rows the index holds, from its head alone: rows written since the last merge or training
    that overwrite an id are counted twice, deletes not subtracted (an upper bound)."""
    return sum(s.rows for s in body.segments if s.kind != "delete")
