"""Index storage: open and verify heads (a conditional GET when warm), commit changes to
them by compare-and-swap, and read, write and delete an index's sealed objects."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from ..arrays.text import TextConfig
from ..arrays.turboquant import SQ_TIERS
from ..codec import crypto, run, segment
from ..codec.centroids import TrainedLists
from ..codec.segment import Segment
from ..errors import CorruptObject, IndexNotFound, Unauthorized
from ..model import check_index_name
from ..names import index_root, tenant_root
from ..ports import BlobNotFound, BlobStore
from ..timing import event, stage
from .keys import KeyRing
from .manifest import Centroids, Envelope, HeadBody, Operation, RetryPolicy, commit, open_body, parse_envelope

Key = tuple[str, str]  # (tenant, index name)
T = TypeVar("T")


@dataclass
class Head:
    """A verified, decrypted head as of one read."""

    tenant: str
    name: str
    root: str
    etag: str
    envelope: Envelope
    body: HeadBody
    cipher: crypto.IndexCipher
    dek: bytes

    @property
    def key(self) -> Key:
        return (self.tenant, self.name)

    @property
    def precision(self) -> str:
        return str(self.body.config.get("storage_precision", "float32"))

    @property
    def metric(self) -> str:
        return str(self.body.config["metric"])


@dataclass
class Committed(Generic[T]):
    """What a commit returns: the head it wrote, and its operation's outcome."""

    head: Head
    outcome: T


class Heads:
    """The heads this container holds, and the sealed objects they name."""

    def __init__(self, store: BlobStore, keys: KeyRing, prefix: str = "", retry: RetryPolicy | None = None):
        self.store = store
        self.keys = keys
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.retry = retry or RetryPolicy()
        self._held: dict[Key, Head] = {}
        # Called when an index is found gone or re-created, so caches built on it let go.
        self.on_forget: Callable[[Key], None] = lambda key: None
        self._commit_locks: dict[Key, threading.Lock] = {}
        self._guard = threading.Lock()
        self._roots: dict[Key, str] = {}  # escaping a name is a dozen calls: once per index

    def tenant_root(self, tenant: str) -> str:
        return tenant_root(self.prefix, tenant)

    def root(self, tenant: str, name: str) -> str:
        root = self._roots.get((tenant, name))
        if root is None:
            root = index_root(self.prefix, tenant, name)
            if len(self._roots) < 65536:
                self._roots[(tenant, name)] = root
        return root

    def held(self, key: Key) -> Head | None:
        """The newest head this container has read or committed."""
        return self._held.get(key)

    def forget(self, key: Key) -> None:
        self._held.pop(key, None)
        self.on_forget(key)

    def open(self, tenant: str, name: str, kek: bytes | None, deleting: bool = False) -> Head:
        """Read the head (cheaply when unchanged) and prove the caller's key. An index being
        deleted is not found, unless ``deleting`` (the delete that finishes it)."""
        head = self._open(tenant, name, kek)
        if head.envelope.deleting and not deleting:
            self.forget(head.key)
            raise IndexNotFound(f"Index '{name}' not found")
        return head

    def _open(self, tenant: str, name: str, kek: bytes | None) -> Head:
        check_index_name(name)
        key = (tenant, name)
        root = self.root(tenant, name)
        cached = self._held.get(key)
        try:
            with stage("store"):
                got = self.store.get(root + "head", if_none_match=cached.etag if cached else None)
        except BlobNotFound:
            self.forget(key)
            raise IndexNotFound(f"Index '{name}' not found") from None
        if got is None and cached is not None:
            with stage("crypto"):
                dek = self.keys.unwrap(tenant, name, cached.envelope, kek)
            if dek != cached.dek:  # pragma: no cover - AEAD already rejects other keys
                raise Unauthorized("index_key does not open this index")
            return cached
        assert got is not None
        raw, etag = got
        env, sealed = parse_envelope(raw)
        with stage("crypto"):
            dek = self.keys.unwrap(tenant, name, env, kek)
            cipher = crypto.IndexCipher(dek, tenant, name)
            body = open_body(env, sealed, cipher)
            if body.old_keys:
                cipher = cipher.with_legacy(body.legacy_keys())
        head = Head(tenant, name, root, etag, env, body, cipher, dek)
        self._held[key] = head
        return head

    def envelope(self, tenant: str, name: str) -> Envelope:
        """The plaintext envelope of a head, without proving any key."""
        check_index_name(name)
        try:
            got = self.store.get(self.root(tenant, name) + "head")
        except BlobNotFound:
            raise IndexNotFound(f"Index '{name}' not found") from None
        assert got is not None
        return parse_envelope(got[0])[0]

    def commit(self, head: Head, op: Operation[T], new_dek: bytes | None = None) -> Committed[T]:
        """Apply ``op`` (``transactions``) to the newest head by CAS (``manifest.commit``);
        returns the head committed and the operation's outcome. Refused (``KeyRotated``) if the
        head names another data key than ``head`` did; with ``new_dek`` the new head is sealed
        under that data key instead."""
        key = head.key
        with self._guard:
            lock = self._commit_locks.setdefault(key, threading.Lock())
        dek = head.dek if new_dek is None else new_dek
        base = crypto.IndexCipher(dek, head.tenant, head.name)
        with lock:
            held = self._held.get(key)
            known = (held.envelope, held.body, held.etag) if held is not None else None
            if known is not None and known[0].dek_id != head.envelope.dek_id:
                known = None  # held under another data key: read the head afresh
            env, body, outcome, etag = commit(
                self.store,
                head.root + "head",
                head.cipher,
                op,
                self.retry,
                head.envelope.uid,
                known,
                expected_dek=head.envelope.dek_id,
                reseal=base if new_dek is not None else None,
            )
        cipher = base.with_legacy(body.legacy_keys()) if body.old_keys else base
        committed = self._held[key] = Head(head.tenant, head.name, head.root, etag, env, body, cipher, dek)
        return Committed(committed, outcome)

    # -- sealed objects ----------------------------------------------------------------
    def read(self, head: Head, name: str) -> bytes:
        try:
            with stage("store"):
                got = self.store.get(head.root + name)
        except BlobNotFound:
            raise IndexNotFound(f"object {name!r} of index '{head.name}' is missing") from None
        assert got is not None
        event("store_bytes_read", len(got[0]))
        with stage("crypto"):
            return head.cipher.decrypt(name, got[0])

    def write_rows(self, head: Head, name: str, seg: Segment, coded: segment.Coded | None = None) -> Segment:
        """Write the rows ``seg`` as object ``name`` at the index's precision, with the terms
        of its full-text fields (analysed here for rows that carry none: once per row, ever);
        returns the segment as written, terms included. ``coded``: the rows' vectors as
        stored already (kept bit for bit; ``seg.vectors`` is then ``None``)."""
        seg = seg.with_terms(TextConfig.fields_of(head.body.config))
        self.write(head, name, segment.encode(seg, head.precision, coded))
        return seg

    def write(self, head: Head, name: str, plaintext: bytes) -> None:
        with stage("crypto"):
            sealed = head.cipher.encrypt(name, plaintext)
        with stage("store"):
            self.store.put_if_absent(head.root + name, sealed)
        event("store_bytes_written", len(sealed))

    def read_centroids(self, head: Head, cent: Centroids) -> TrainedLists:
        """The centroids object ``cent`` names (and a tq tier's ranges)."""
        try:
            return TrainedLists.decode(self.read(head, cent.name), ranges=head.precision in SQ_TIERS)
        except ValueError as exc:
            raise CorruptObject(f"centroids of index '{head.name}': {exc}") from None

    def write_centroids(self, head: Head, name: str, trained: TrainedLists) -> None:
        self.write(head, name, trained.encode())

    def read_directory(self, head: Head, name: str) -> run.Directory:
        return run.Directory.from_json(self.read(head, name), name)

    def delete_all(self, head: Head, names: list[str]) -> None:
        """Delete objects; a run's name takes its list objects with it."""
        for obj in names:
            if obj.startswith("run/") and "-" not in obj:
                for key in list(self.store.list(f"{head.root}{obj}-")):
                    self.store.delete(key)
            self.store.delete(head.root + obj)
