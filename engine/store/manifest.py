"""The index head: the one mutable object of an index, and the commit protocol.

Head layout::

    0   4   magic b"CVH1"
    4   4   envelope length E (uint32 little-endian)
    8   E   envelope: plaintext UTF-8 JSON, nothing secret —
            {"v": 1, "uid": index instance id, "generation": g, "key_mode": "client"|"kms",
             "kms_name": str|null, "wrapped_dek": base64, "dek_id": str,
             "training": null|{...}, "rewrite": null|{...}, "deleting": bool}
    8+E ..  body: the JSON of ``HeadBody`` sealed by ``IndexCipher`` under the object name
            "head@<uid>@<generation>", so a body cannot be paired with another envelope.

Commit protocol (the design card's storage section): write immutable objects with
``put_if_absent`` first, then read the head with its tag, apply a typed operation
(``transactions``) to it, write it back with
``put_if_match``; on ``StoreConflict`` re-read and retry with jittered backoff; after a
bounded number of tries raise ``Contention`` (503). Acknowledge only after success.
"""

from __future__ import annotations

import base64
import copy
import json
import random
import struct
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol, TypeVar

from ..codec.crypto import IndexCipher
from ..errors import Contention, CorruptObject, IndexNotFound, KeyRotated
from ..ports import BlobNotFound, BlobStore, StoreConflict
from ..timing import stage

T = TypeVar("T")
MAGIC = b"CVH1"
VERSION = 1


@dataclass
class Envelope:
    """The plaintext part of a head."""

    uid: str
    generation: int
    key_mode: str  # "client" | "kms"
    wrapped_dek: bytes
    kms_name: str | None = None
    training: dict[str, Any] | None = None
    # Set by delete_index before it deletes the objects: readers answer 404 and writers are
    # refused from then on, and a delete interrupted part-way is finished by the next one.
    deleting: bool = False
    # Names the data key (random, not secret): a rotation with ``reencrypt`` changes it, and a
    # commit prepared under another data key is refused (its objects are sealed under it).
    dek_id: str = ""
    # Marked while objects are being rewritten under a new data key (``reencrypt``), like
    # ``training``: {"since", "worker"}.
    rewrite: dict[str, Any] | None = None

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "v": VERSION,
                "uid": self.uid,
                "generation": self.generation,
                "key_mode": self.key_mode,
                "kms_name": self.kms_name,
                "wrapped_dek": base64.b64encode(self.wrapped_dek).decode(),
                "training": self.training,
                "deleting": self.deleting,
                "dek_id": self.dek_id,
                "rewrite": self.rewrite,
            }
        ).encode()


@dataclass
class SegmentRef:
    name: str
    seq: int
    kind: str
    rows: int
    key: str | None = None  # an older data key (``HeadBody.old_keys``) it is still sealed under


@dataclass
class Centroids:
    name: str
    n_lists: int
    auto_n_probes: int  # keeps recall@10 at its aim (``kmeans.choose_n_probes``)
    trained_rows: int
    trained_at: float
    measured_recall: float | None = None
    key: str | None = None  # as ``SegmentRef.key``
    auto_n_probes_100: int | None = None  # ... recall@100, for queries of top_k over 10

    def probes_for(self, top_k: int) -> int:
        """The auto ``n_probes`` of a query asking for ``top_k`` neighbours."""
        if top_k > 10 and self.auto_n_probes_100:
            return self.auto_n_probes_100
        return self.auto_n_probes


@dataclass
class HeadBody:
    """The sealed part of a head: configuration and the live object list."""

    config: dict[str, Any]
    next_seq: int = 1
    segments: list[SegmentRef] = field(default_factory=list)
    centroids: Centroids | None = None
    retired: list[dict[str, Any]] = field(default_factory=list)
    # Ids of the batch-load jobs committed most recently, so a job is committed exactly once.
    loads: list[str] = field(default_factory=list)
    # Older data keys (id -> base64) that objects named here (segments, centroids, retired
    # objects: their ``key``) are still sealed under, until a rewrite and a sweep free them.
    old_keys: dict[str, str] = field(default_factory=dict)
    # Objects a re-encryption rewrote (old name -> new name, the same rows), while the old
    # ones are retired: a container holding the old names renames instead of reloading.
    renamed: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> bytes:
        # Plain dicts built by hand: dataclasses.asdict deep-copies and is slow for long lists.
        data = {
            "config": self.config,
            "next_seq": self.next_seq,
            "segments": [_ref_json(s) for s in self.segments],
            "centroids": asdict(self.centroids) if self.centroids else None,
            "retired": self.retired,
            "loads": self.loads,
        }
        if self.old_keys:
            data["old_keys"] = self.old_keys
        if self.renamed:
            data["renamed"] = self.renamed
        return json.dumps(data, separators=(",", ":")).encode()

    def copy(self) -> HeadBody:
        """A copy that mutations cannot reach through (refs are never edited in place)."""
        return HeadBody(
            copy.deepcopy(self.config),
            self.next_seq,
            list(self.segments),
            self.centroids,
            [dict(r) for r in self.retired],
            list(self.loads),
            dict(self.old_keys),
            dict(self.renamed),
        )

    @classmethod
    def from_json(cls, raw: bytes) -> HeadBody:
        data = json.loads(raw)
        return cls(
            config=data["config"],
            next_seq=data["next_seq"],
            segments=[SegmentRef(**s) for s in data["segments"]],
            centroids=_known(Centroids, data["centroids"]) if data["centroids"] else None,
            retired=data["retired"],
            loads=data.get("loads", []),
            old_keys=data.get("old_keys", {}),
            renamed=data.get("renamed", {}),
        )

    def retire(self, names: list[str], at: float) -> None:
        """Add ``names`` (still named here) to ``retired``, keeping the older data key each is
        sealed under (call it before the objects' replacements go in)."""
        keys = {s.name: s.key for s in self.segments}
        if self.centroids is not None:
            keys[self.centroids.name] = self.centroids.key
        for name in names:
            kid = keys.get(name)
            self.retired.append({"name": name, "at": at, "key": kid} if kid else {"name": name, "at": at})

    def legacy_keys(self) -> dict[str, bytes]:
        """Object (or run) name -> the older data key it is sealed under, for ``IndexCipher``."""
        if not self.old_keys:
            return {}
        keys = {kid: base64.b64decode(dek) for kid, dek in self.old_keys.items()}
        named = [(s.name, s.key) for s in self.segments] + [(r["name"], r.get("key")) for r in self.retired]
        if self.centroids is not None:
            named.append((self.centroids.name, self.centroids.key))
        return {name: keys[kid] for name, kid in named if kid in keys}

    def prune_old_keys(self) -> None:
        """Forget the older data keys nothing names any more, and the renames of objects
        swept since."""
        used = {s.key for s in self.segments} | {r.get("key") for r in self.retired}
        if self.centroids is not None:
            used.add(self.centroids.key)
        self.old_keys = {kid: dek for kid, dek in self.old_keys.items() if kid in used}
        if self.renamed:
            retired = {r["name"] for r in self.retired}
            self.renamed = {old: new for old, new in self.renamed.items() if old in retired}

    def stale_objects(self) -> int:
        """Live objects (segments, runs, centroids) still sealed under an older data key."""
        n = sum(1 for s in self.segments if s.key)
        return n + (1 if self.centroids is not None and self.centroids.key else 0)


def _ref_json(s: SegmentRef) -> dict[str, Any]:
    out: dict[str, Any] = {"name": s.name, "seq": s.seq, "kind": s.kind, "rows": s.rows}
    if s.key:
        out["key"] = s.key
    return out


def body_name(envelope: Envelope) -> str:
    return f"head@{envelope.uid}@{envelope.generation}"


def parse_envelope(raw: bytes) -> tuple[Envelope, bytes]:
    """Split a head into its envelope and the still-sealed body."""
    try:
        if raw[:4] != MAGIC:
            raise ValueError("bad magic")
        (elen,) = struct.unpack_from("<I", raw, 4)
        data = json.loads(raw[8 : 8 + elen])
        if data["v"] != VERSION:
            raise ValueError(f"unsupported head version {data['v']}")
        env = Envelope(
            uid=data["uid"],
            generation=int(data["generation"]),
            key_mode=data["key_mode"],
            wrapped_dek=base64.b64decode(data["wrapped_dek"]),
            kms_name=data.get("kms_name"),
            training=data.get("training"),
            deleting=bool(data.get("deleting", False)),
            dek_id=str(data.get("dek_id", "")),
            rewrite=data.get("rewrite"),
        )
    except (ValueError, KeyError, TypeError, struct.error) as exc:
        raise CorruptObject(f"index head is malformed: {exc}") from None
    return env, raw[8 + elen :]


def seal_head(envelope: Envelope, body: HeadBody, cipher: IndexCipher) -> bytes:
    env = envelope.to_json()
    sealed = cipher.encrypt(body_name(envelope), body.to_json())
    return MAGIC + struct.pack("<I", len(env)) + env + sealed


def _known(cls: Any, data: dict[str, Any]) -> Any:
    """``cls`` from the fields of ``data`` it has (a newer writer's extra fields are skipped)."""
    return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def open_body(envelope: Envelope, sealed: bytes, cipher: IndexCipher) -> HeadBody:
    return HeadBody.from_json(cipher.decrypt(body_name(envelope), sealed))


@dataclass
class RetryPolicy:
    """Bounded, jittered exponential backoff for head compare-and-swap."""

    attempts: int = 12
    base_delay: float = 0.01
    max_delay: float = 0.5
    sleep: Callable[[float], None] = time.sleep

    def pause(self, attempt: int) -> None:
        cap = min(self.max_delay, self.base_delay * (2**attempt))
        self.sleep(random.uniform(0, cap))


T_co = TypeVar("T_co", covariant=True)


class Operation(Protocol[T_co]):
    """A typed change to a head (``engine/transactions.py``): ``apply`` edits the envelope and
    body in place and returns its outcome, or raises to refuse (nothing is written)."""

    def apply(self, env: Envelope, body: HeadBody) -> T_co: ...


def commit(
    store: BlobStore,
    head_key: str,
    cipher: IndexCipher,
    op: Operation[T],
    retry: RetryPolicy,
    expected_uid: str,
    known: tuple[Envelope, HeadBody, str] | None = None,
    *,
    expected_dek: str | None = None,
    reseal: IndexCipher | None = None,
) -> tuple[Envelope, HeadBody, T, str]:
    """Apply ``op`` to the current head and CAS it back; retry on lost races.

    ``op.apply`` edits the envelope/body in place and returns a value passed back to the
    caller; it may raise to abort (nothing is written). It runs once per attempt, on a
    freshly read head; an operation is a frozen value, so each attempt applies the same change.

    ``known``: a head this process already holds (envelope, body, tag). The first attempt
    works on a copy of it instead of reading the head again; the compare-and-swap on its
    tag makes that exactly as safe, and a stale copy only costs the retry.

    ``expected_dek``: the ``dek_id`` the caller's objects are sealed under; a head that names
    another data key (rotated with ``reencrypt`` meanwhile) refuses the commit (``KeyRotated``).
    ``reseal``: seal the new head under this cipher (the rotation that changes the data key).
    """
    for attempt in range(retry.attempts):
        optimistic = attempt == 0 and known is not None and known[0].uid == expected_uid
        if optimistic:
            assert known is not None
            envelope, body, etag = replace(known[0]), known[1].copy(), known[2]
        else:
            try:
                with stage("store"):
                    got = store.get(head_key)
            except BlobNotFound:
                raise IndexNotFound("index not found") from None
            assert got is not None
            raw, etag = got
            envelope, sealed = parse_envelope(raw)
            if envelope.uid != expected_uid:
                raise IndexNotFound("index was deleted or replaced")
            if expected_dek is not None and envelope.dek_id != expected_dek:
                raise KeyRotated(
                    "the index's data key was replaced (key rotation) while this request ran; "
                    "nothing was written"
                )
            body = open_body(envelope, sealed, cipher)
        if envelope.deleting:
            raise IndexNotFound("index is being deleted")
        outcome = op.apply(envelope, body)
        envelope.generation += 1
        try:
            with stage("crypto"):
                sealed_head = seal_head(envelope, body, reseal or cipher)
            with stage("store"):
                new_etag = store.put_if_match(head_key, sealed_head, etag)
        except StoreConflict:
            if not optimistic:  # a stale copy is no contention: read and retry at once
                retry.pause(attempt)
            continue
        except BlobNotFound:
            raise IndexNotFound("index not found") from None
        return envelope, body, outcome, new_etag
    raise Contention("too many concurrent writers on this index; retry shortly", retry_after=1)
