"""Re-encryption: a new data key for an index (``rotate_key`` with ``reencrypt``), and every
object still sealed under an older one rewritten under it, online.

The rotation commits first, in one head compare-and-swap: the new data key is wrapped under
the new key-encryption key, the old data key moves into the sealed head body
(``HeadBody.old_keys``) and every live object is tagged with it. From that commit on the
old key opens nothing, new writes are sealed under the new data key, and readers open the
tagged objects with the old one (``IndexCipher`` legacy keys).

The rewrite then copies each tagged object (a segment, a run's directory and lists, the
centroids) under a new name sealed with the current data key, and swaps the names in one
more commit; the old objects are retired like a merge's, and the head lists old -> new
(``HeadBody.renamed``) so that containers holding the rows rename instead of reloading
them. Load jobs' checkpoints are sealed again in place. Writers only append to the head,
so they never conflict with it for long; a rewrite that is interrupted leaves the head
as it was (what it wrote is an orphan for the sweep), and the next one starts again from
the objects still tagged. The old data key leaves the head once nothing names it (after
the sweep of the retired objects).
"""

from __future__ import annotations

import base64
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from . import crypto, run, workers
from .cache import StateCache
from .errors import CipherVecError
from .heads import Head, Heads
from .jobs import Jobs
from .keys import KeyRing
from .lazy import READERS
from .manifest import Envelope, HeadBody
from .names import new_id
from .timing import event

REWRITE_STALE_SECONDS = 3600.0
# A rotation's mark holds this long for the job it queues to start and claim it.
REWRITE_START_SECONDS = 960.0


class Rekeyer:
    """Rotates an index onto a new data key and rewrites its objects under it."""

    def __init__(
        self,
        heads: Heads,
        cache: StateCache,
        keys: KeyRing,
        jobs: Jobs,
        sweep: Callable[[str, str, bytes | None], int],
        retire_grace_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.heads = heads
        self.cache = cache
        self.keys = keys
        self.jobs = jobs
        self.sweep = sweep
        self.retire_grace = retire_grace_seconds
        self.clock = clock
        self.worker = workers.this_worker()

    # -- the mark ----------------------------------------------------------------------
    def active(self, env: Envelope) -> bool:
        """A rewrite is marked and someone may still be doing it (as ``training_active``)."""
        return workers.holds(env.rewrite, self.clock(), REWRITE_STALE_SECONDS)

    def due(self, env: Envelope, body: HeadBody) -> bool:
        """Nobody is at it, and objects wait for a rewrite, or objects under an old key wait
        past the grace period for the sweep that frees the key."""
        if not body.old_keys or self.active(env):
            return False
        now = self.clock()
        return bool(body.stale_objects()) or any(
            r.get("key") and now - r["at"] >= self.retire_grace for r in body.retired
        )

    def maybe_mark(self, env: Envelope, body: HeadBody) -> bool:
        """Mark a rewrite (and its sweep) as started when one is ``due`` (a writer's commit
        calls this: the caller then queues the job)."""
        if not self.due(env, body):
            return False
        env.rewrite = workers.mark(self.worker, self.clock())
        return True

    def unmark(self, tenant: str, name: str, kek: bytes | None) -> None:
        """Take a rewrite's mark back (its job failed or could not be queued), so that the
        next write queues it again; quietly, if even that fails."""
        with contextlib.suppress(CipherVecError):

            def clear(env: Envelope, body: HeadBody) -> None:
                env.rewrite = None

            self.heads.commit(self.heads.open(tenant, name, kek), clear)

    def sweep_delay(self, tenant: str, name: str, kek: bytes | None) -> float | None:
        """Seconds until the objects still under an old key may be swept (None: none left)."""
        body = self.heads.open(tenant, name, kek).body
        if not body.old_keys:
            return None
        ats = [r["at"] for r in body.retired if r.get("key")]
        if not ats:
            return None
        return max(0.0, min(ats) + self.retire_grace - self.clock())

    # -- rotation ------------------------------------------------------------------------
    def rotate(self, head: Head, new_kek: bytes | None, new_kms_name: str | None) -> str:
        """Commit a new data key wrapped under the new key; the current one becomes an old
        key of the body that every live object is tagged with. Returns the new key mode."""
        new_dek = crypto.new_data_key()
        fresh = self.keys.envelope(head.tenant, head.name, new_dek, new_kek, new_kms_name)
        old_kid, new_id_ = new_id(), new_id()
        old = base64.b64encode(head.dek).decode()
        now = self.clock()

        def rekey(env: Envelope, body: HeadBody) -> None:
            env.key_mode, env.wrapped_dek, env.kms_name = fresh.key_mode, fresh.wrapped_dek, fresh.kms_name
            env.dek_id = new_id_
            env.training = None  # a training under the old data key can no longer commit
            env.rewrite = workers.mark(self.worker, now, now + REWRITE_START_SECONDS)
            body.old_keys[old_kid] = old
            body.segments = [s if s.key else replace(s, key=old_kid) for s in body.segments]
            if body.centroids is not None and not body.centroids.key:
                body.centroids = replace(body.centroids, key=old_kid)
            body.retired = [r if r.get("key") else {**r, "key": old_kid} for r in body.retired]

        self.heads.commit(head, rekey, new_dek=new_dek)
        event("key_rotations")
        return fresh.key_mode

    # -- rewrite -------------------------------------------------------------------------
    def rewrite(self, tenant: str, name: str, kek: bytes | None, until: float | None = None) -> int:
        """Rewrite every object still sealed under an older data key, then sweep (what is past
        the grace period goes, and with the last of it the old key); returns how many live
        objects (segments, runs, centroids) were rewritten. The mark names this worker (and
        ``until``, its deadline in Lambda) while it runs; a rewrite that fails takes its mark
        back, so that the next write queues it again."""
        head = self.heads.open(tenant, name, kek)
        if head.body.stale_objects():
            mark = workers.mark(self.worker, self.clock(), until)

            def claim(env: Envelope, body: HeadBody) -> None:
                env.rewrite = dict(mark)

            self.heads.commit(head, claim)
        old = [base64.b64decode(dek) for dek in head.body.old_keys.values()]
        try:
            rewritten = self._rewrite(head)
            if old:  # load jobs' checkpoints are sealed with the index's data key too
                self.jobs.reseal(tenant, name, head, old)
            self.sweep(tenant, name, kek)
            return rewritten
        except BaseException:
            self.unmark(tenant, name, kek)
            raise

    def _rewrite(self, head: Head) -> int:
        body = head.body
        stale = [(s.name, s.kind) for s in body.segments if s.key]
        if body.centroids is not None and body.centroids.key:
            stale.append((body.centroids.name, "centroids"))
        copies: dict[str, str] = {}
        written: list[str] = []
        try:
            if stale:
                copies = self._copy(head, stale, written)
        except BaseException:
            self.heads.delete_all(head, written)
            raise
        now = self.clock()

        def swap(env: Envelope, body: HeadBody) -> list[str]:
            # the copied objects the head still names under an old key (a merge or training
            # under the new key may have replaced some meanwhile)
            done = [s.name for s in body.segments if s.key and s.name in copies]
            cent = body.centroids
            if cent is not None and cent.key and cent.name in copies:
                done.append(cent.name)
            body.retire(done, now)
            moved = set(done)
            body.segments = [
                replace(s, name=copies[s.name], key=None) if s.name in moved else s for s in body.segments
            ]
            if cent is not None and cent.name in moved:
                body.centroids = replace(cent, name=copies[cent.name], key=None)
            body.renamed.update((old, copies[old]) for old in done)
            body.prune_old_keys()
            if not body.stale_objects():
                env.rewrite = None
            return done

        try:
            done = self.heads.commit(head, swap)
        except BaseException:
            self.heads.delete_all(head, written)
            raise
        unused = [copies[o] for o in copies if o not in done]  # merged away meanwhile
        if unused:
            self.heads.delete_all(head, unused)
        event("objects_rewritten", len(done))
        return len(done)

    def _copy(self, head: Head, stale: list[tuple[str, str]], written: list[str]) -> dict[str, str]:
        """Each stale object (a run: its lists, then its directory) read, opened with its old
        key and sealed under a new name with the current one; names go into ``written`` as
        they are written. Returns old name -> new name."""
        copies: dict[str, str] = {}
        lists: list[tuple[str, str]] = []  # (old, new) names of runs' list objects
        for old, kind in stale:
            prefix = "run" if old.startswith("run/") else "seg"
            new = copies[old] = f"{prefix}/{new_id()}"
            if kind == "run":
                directory = self.heads.read_directory(head, old)
                lists += [(run.list_name(old, k), run.list_name(new, k)) for k in directory.lists()]
        tops = list(copies.items())

        def one(pair: tuple[str, str]) -> None:
            src, dst = pair
            plain = self.heads.read(head, src)
            written.append(dst)
            self.heads.write(head, dst, plain)

        with ThreadPoolExecutor(max_workers=READERS) as pool:
            list(pool.map(one, lists))
            list(pool.map(one, tops))  # a run's directory once its lists are there
        return copies
