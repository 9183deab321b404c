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

from ..codec import crypto, run
from ..codec.runtext import text_name
from ..errors import CipherVecError
from ..memory.cache import StateCache
from ..memory.lazy import READERS
from ..names import new_id
from ..store import workers
from ..store.heads import Head, Heads
from ..store.jobs import Jobs
from ..store.keys import KeyRing
from ..store.manifest import Envelope
from ..store.transactions import REWRITE_START_SECONDS, Rekey, SetRewrite, SwapRewritten, rewrite_active
from ..timing import event


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
        """A rewrite is marked and someone may still be doing it (``transactions``)."""
        return rewrite_active(env, self.clock())

    def unmark(self, tenant: str, name: str, kek: bytes | None) -> None:
        """Take a rewrite's mark back (its job failed or could not be queued), so that the
        next write queues it again; quietly, if even that fails."""
        with contextlib.suppress(CipherVecError):
            self.heads.commit(self.heads.open(tenant, name, kek), SetRewrite(None))

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
        now = self.clock()
        op = Rekey(
            fresh.key_mode,
            fresh.wrapped_dek,
            fresh.kms_name,
            dek_id=new_id(),
            old_kid=new_id(),
            old_dek=base64.b64encode(head.dek).decode(),
            rewrite_mark=workers.mark(self.worker, now, now + REWRITE_START_SECONDS),
        )
        self.heads.commit(head, op, new_dek=new_dek)
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
            self.heads.commit(head, SetRewrite(workers.mark(self.worker, self.clock(), until)))
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
        try:
            done = self.heads.commit(head, SwapRewritten(copies, self.clock())).outcome
        except BaseException:
            self.heads.delete_all(head, written)
            raise
        unused = [copies[o] for o in copies if o not in done]  # merged away meanwhile
        if unused:
            self.heads.delete_all(head, unused)
        event("objects_rewritten", len(done))
        return len(done)

    def _copy(self, head: Head, stale: list[tuple[str, str]], written: list[str]) -> dict[str, str]:
        """Each stale object (a run: its lists and text objects, then its directory) read, opened with its old
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
                lists += [(text_name(old, g), text_name(new, g)) for g in range(len(directory.text))]
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
