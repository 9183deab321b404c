"""Where a batch load's file comes from: a local path or an S3 object, opened as a seekable
binary file (an S3 object through ranged GETs pinned to the ETag it had when the load began)."""

from __future__ import annotations

import io
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO
from urllib.parse import unquote_plus

from ..engine.errors import BadSource, InvalidRequest, NotFound

FORMATS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".npy": "npy",
    ".npz": "npz",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
BLOCK = 8 << 20  # bytes handed from a streaming GET to the reader at a time
SPANS = 4  # a file is read in about this many streaming GETs
SPAN_MIN = 64 << 20
SPAN_DEPTH = 4  # blocks a span reads ahead of use


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

    return _with_sidecar(
        SourceFile(
            path,
            st.st_size,
            f"{st.st_size}-{st.st_mtime_ns}",
            fmt,
            lambda: open(path, "rb"),  # noqa: SIM115 - the reader closes it
            neighbour,
        )
    )


def _with_sidecar(src: SourceFile) -> SourceFile:
    """An ``.npy`` file's version includes its ids file's: uploading the ids after the array
    (a failed load) and the array again is a new job, not the failed one."""
    if src.fmt == "npy":
        ids = src.sibling(".ids.txt")
        src.version += f"+ids:{ids.version if ids else 'none'}"
    return src


def s3_source(s3: Any, bucket: str, key: str, fmt: str) -> SourceFile:
    from botocore.exceptions import ClientError, NoCredentialsError

    if s3 is None:
        from . import aws

        s3 = aws.client("s3")
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchKey", "NotFound"):
            raise NotFound("source object not found") from None
        if code in ("403", "AccessDenied"):
            raise NotFound("source object not found or not readable by ciphervec") from None
        raise
    except NoCredentialsError:
        raise InvalidRequest("this server has no AWS credentials to read s3:// sources") from None
    etag = str(head["ETag"])
    size = int(head["ContentLength"])

    def neighbour(suffix: str) -> SourceFile | None:
        try:
            return s3_source(s3, bucket, _stem(key) + suffix, "sidecar")
        except NotFound:
            return None

    def opener() -> BinaryIO:
        return io.BufferedReader(S3Range(s3, bucket, key, size, etag), buffer_size=1 << 20)

    return _with_sidecar(SourceFile(f"s3://{bucket}/{key}", size, etag, fmt, opener, neighbour))


def s3_event_key(raw: str) -> str:
    """An object key as S3 event notifications spell it (URL-encoded, ``+`` for space)."""
    return unquote_plus(raw)


class _Span:
    """One streaming GET over a stretch of the object, read block by block ahead of use by
    its own thread (at most ``depth`` blocks waiting)."""

    def __init__(self, fetch: Callable[[int, int], Any], start: int, end: int, depth: int) -> None:
        self.start, self.end = start, end
        self.blocks: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.next = start  # offset of the next block handed out
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(fetch,), name="ciphervec-s3-read", daemon=True)
        self.thread.start()

    def _run(self, fetch: Callable[[int, int], Any]) -> None:
        try:
            body = fetch(self.start, self.end)
            at = self.start
            while at < self.end and not self.stop.is_set():
                data = body.read(min(BLOCK, self.end - at))
                if not data:
                    raise ConnectionError("the object ended early")
                at += len(data)
                while not self.stop.is_set():
                    try:
                        self.blocks.put(data, timeout=0.05)
                        break
                    except queue.Full:
                        continue
            body.close()
        except BaseException as exc:  # handed to the reader
            self.blocks.put(exc)

    def take(self) -> bytes:
        if self.error is not None:  # the stream is gone: every later read fails the same way
            raise self.error
        got = self.blocks.get()
        if isinstance(got, BaseException):
            self.error = got
            raise got
        self.next += len(got)
        return got

    def close(self) -> None:
        self.stop.set()
        while self.thread.is_alive():
            try:
                self.blocks.get(timeout=0.05)
            except queue.Empty:
                continue


class S3Range(io.RawIOBase):
    """A read-only, seekable view of one version of an S3 object, pinned to its ETag.

    Front-to-back reading (what every format does after a look at a Parquet footer) runs on
    streaming GETs of large spans, the next span already streaming while this one is read:
    few requests (each costs a round trip, and an S3 stand-in such as moto reads the whole
    object for every ranged GET) and two connections' worth of throughput. A jump elsewhere
    reads just what is asked."""

    def __init__(self, s3: Any, bucket: str, key: str, size: int, etag: str) -> None:
        self.s3, self.bucket, self.key, self.size, self.etag = s3, bucket, key, size, etag
        self.pos = 0
        self.span_bytes = max(SPAN_MIN, -(-size // SPANS // BLOCK) * BLOCK)
        self._spans: list[_Span] = []  # the current span, then the one after it
        self._block = b""  # the block being read and where it starts
        self._block_at = 0

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
        for span in self._spans:
            span.close()
        self._spans = []
        super().close()

    def _open(self, start: int, end: int) -> Any:
        from botocore.exceptions import ClientError

        try:
            got = self.s3.get_object(
                Bucket=self.bucket, Key=self.key, Range=f"bytes={start}-{end - 1}", IfMatch=self.etag
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
                raise BadSource("the file changed while it was being loaded") from None
            raise
        return got["Body"]

    def _span(self, start: int) -> _Span:
        return _Span(self._open, start, min(self.size, start + self.span_bytes), depth=SPAN_DEPTH)

    def readinto(self, buffer: Any) -> int:
        want = min(len(buffer), self.size - self.pos)
        if want <= 0:
            return 0
        if not (self._block_at <= self.pos < self._block_at + len(self._block)):
            self._advance(want)
        offset = self.pos - self._block_at
        n = min(want, len(self._block) - offset)
        memoryview(buffer)[:n] = self._block[offset : offset + n]
        self.pos += n
        return n

    def _advance(self, want: int) -> None:
        """Make the block holding ``pos`` current: the next one of the spans when reading on;
        a small read that does not continue the last one (a footer) is a plain ranged GET;
        reading on past it, or a big read, starts streaming spans there."""
        spans = self._spans
        reading_on = bool(self._block) and self.pos == self._block_at + len(self._block)
        if spans and spans[0].next >= spans[0].end:  # this span is used up: on to the next
            spans.pop(0).close()
        if spans and spans[0].next == self.pos:
            self._block_at, self._block = self.pos, spans[0].take()
        elif want < BLOCK and not reading_on:
            end = min(self.size, self.pos + max(want, 64 << 10))
            self._block_at, self._block = self.pos, self._open(self.pos, end).read()
            return
        else:
            for span in spans:
                span.close()
            self._spans = spans = [self._span(self.pos)]
            self._block_at, self._block = self.pos, spans[0].take()
        if len(spans) == 1 and spans[0].end < self.size:  # keep the next span streaming
            spans.append(self._span(spans[0].end))
