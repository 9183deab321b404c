"""BlobStore adapters chosen by URI: ``memory://``, ``file://PATH``, ``s3://bucket/prefix``."""

from __future__ import annotations

from typing import Any

from ...engine.ports import BlobStore


def open_store(uri: str, *, s3_client: Any = None) -> BlobStore:
    """Open the store a URI names. ``s3_client`` is injected in tests (moto)."""
    if uri.startswith("memory://"):
        from .memory import MemoryStore

        return MemoryStore()
    if uri.startswith("file://"):
        from .file import FileStore

        return FileStore(uri[len("file://") :])
    if uri.startswith("s3://"):
        from .s3 import S3Store

        bucket, _, prefix = uri[len("s3://") :].partition("/")
        return S3Store(bucket, prefix, client=s3_client)
    raise ValueError(f"unsupported store URI {uri!r}; use memory://, file://PATH or s3://BUCKET/PREFIX")
