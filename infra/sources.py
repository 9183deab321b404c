"""Where a batch load's file comes from: a local path or an S3 object, opened as a seekable
binary file (an S3 object through ranged GETs pinned to the ETag it had when the load began)."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO
from urllib.parse import unquote_plus

from ..engine.errors import InvalidRequest, NotFound
from ..engine.loads import BadSource

FORMATS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".npy": "npy",
    ".npz": "npz",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
BLOCK = 16 << 20  # bytes per ranged GET
AHEAD = 4  # ranged GETs in flight while a file is read front to back


def file_format(name: str) -> str | None:
    lower = name.lower()
    return next((fmt for ext, fmt in FORMATS.items() if lower.endswith(ext)), None)


@dataclass
class SourceFile:
    """One file to load: where it is, its size and version, and how to open it."""

    location: str  # s3://bucket/key or an absolute local path
    size: int
    version: str  # ETag (S3) or size and mtime (local): a changed file is another job
    fmt: str
    opener: Callable[[], BinaryIO]
    neighbour: Callable[[str], SourceFile | None]

    @property
    def name(self) -> str:
        return self.location.rsplit("/", 1)[-1]

    def open(self) -> BinaryIO:
        return self.opener()

    def sibling(self, suffix: str) -> SourceFile | None:
        """The file next to this one with ``suffix`` instead of the format's extension."""
        return self.neighbour(suffix)


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` → (bucket, key)."""
    if not uri.startswith("s3://"):
        raise InvalidRequest("source must be an s3:// URI")
    bucket, _, key = uri[5:].partition("/")
    if not bucket or not key:
        raise InvalidRequest("source must be s3://bucket/key")
    return bucket, key


def _stem(name: str) -> str:
    lower = name.lower()
    for ext in FORMATS:
        if lower.endswith(ext):
            return name[: -len(ext)]
    return name


def open_source(uri: str, s3: Any = None, fmt: str | None = None) -> SourceFile:
    """Locate ``uri`` (a local path or ``s3://bucket/key``) and read its size and version."""
    fmt = fmt or file_format(uri)
    if fmt is None:
        raise InvalidRequest(f"unknown file type; use one of {', '.join(sorted(FORMATS))}")
    if uri.startswith("s3://"):
        bucket, key = split_s3(uri)
        return s3_source(s3, bucket, key, fmt)
    path = os.path.abspath(uri[7:] if uri.startswith("file://") else uri)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise NotFound("source file not found") from None

    def neighbour(suffix: str) -> SourceFile | None:
        other = _stem(path) + suffix
        return open_source(other, fmt="sidecar") if os.path.exists(other) else None

    return SourceFile(
        path,
        st.st_size,
        f"{st.st_size}-{st.st_mtime_ns}",
        fmt,
        lambda: open(path, "rb"),  # noqa: SIM115 - the reader closes it
        neighbour,
    )


def s3_source(s3: Any, bucket: str, key: str, fmt: str) -> SourceFile:
    from botocore.exceptions import ClientError

    if s3 is None:
        import boto3

        s3 = boto3.client("s3")
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchKey", "NotFound"):
            raise NotFound("source object not found") from None
        if code in ("403", "AccessDenied"):
            raise NotFound("source object not found or not readable by ciphervec") from None
        raise
    etag = str(head["ETag"])
    size = int(head["ContentLength"])

    def neighbour(suffix: str) -> SourceFile | None:
        try:
            return s3_source(s3, bucket, _stem(key) + suffix, "sidecar")
        except NotFound:
            return None

    def opener() -> BinaryIO:
        return io.BufferedReader(S3Range(s3, bucket, key, size, etag), buffer_size=1 << 20)

    return SourceFile(f"s3://{bucket}/{key}", size, etag, fmt, opener, neighbour)


def s3_event_key(raw: str) -> str:
    """An object key as S3 event notifications spell it (URL-encoded, ``+`` for space)."""
    return unquote_plus(raw)


class S3Range(io.RawIOBase):
    """A read-only, seekable view of one version of an S3 object: ranged GETs pinned to its
    ETag, read ahead in parallel (S3 serves one connection at a fraction of what several do)."""

    def __init__(self, s3: Any, bucket: str, key: str, size: int, etag: str) -> None:
        self.s3, self.bucket, self.key, self.size, self.etag = s3, bucket, key, size, etag
        self.pos = 0
        self._blocks: dict[int, Future[bytes]] = {}
        self._pool = ThreadPoolExecutor(max_workers=AHEAD, thread_name_prefix="ciphervec-s3-read")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def close(self) -> None:
        if not self.closed:
            for future in self._blocks.values():
                future.cancel()
            self._blocks.clear()
            self._pool.shutdown(wait=True, cancel_futures=True)
        super().close()

    def _get(self, start: int, end: int) -> bytes:
        from botocore.exceptions import ClientError

        try:
            got = self.s3.get_object(
                Bucket=self.bucket, Key=self.key, Range=f"bytes={start}-{end - 1}", IfMatch=self.etag
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
                raise BadSource("the file changed while it was being loaded") from None
            raise
        return bytes(got["Body"].read())

    def _block(self, k: int) -> Future[bytes]:
        future = self._blocks.get(k)
        if future is None:
            start = k * BLOCK
            future = self._pool.submit(self._get, start, min(self.size, start + BLOCK))
            self._blocks[k] = future
        return future

    def readinto(self, buffer: Any) -> int:
        want = min(len(buffer), self.size - self.pos)
        if want <= 0:
            return 0
        k = self.pos // BLOCK
        for old in [b for b in self._blocks if b < k or b > k + AHEAD]:  # behind us, or a jump away
            self._blocks.pop(old).cancel()
        last = (self.size - 1) // BLOCK
        for ahead in range(k, min(last, k + AHEAD - 1) + 1):
            self._block(ahead)
        data = self._block(k).result()
        offset = self.pos - k * BLOCK
        n = min(want, len(data) - offset)
        memoryview(buffer)[:n] = data[offset : offset + n]
        self.pos += n
        return n
