"""``s3://bucket/prefix``: S3 with conditional writes.

``put_if_absent`` uses ``If-None-Match: *`` and ``put_if_match`` uses ``If-Match``;
S3 answers a lost race with 412 (PreconditionFailed) or 409 (ConditionalRequestConflict),
both translated to ``StoreConflict``. The boto3 client is injected (tests use moto) or
created lazily, honouring ``AWS_ENDPOINT_URL_S3`` through botocore's own configuration.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from botocore.exceptions import ClientError

from ...engine.ports import BlobNotFound, StoreConflict
from .. import aws

_LOST_RACE = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}
_MISSING = {"NoSuchKey", "404", "NotFound"}


def _code(exc: ClientError) -> tuple[str, int]:
    err = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return str(err.get("Code", "")), int(status)


CLIENT_CONFIG = {"retries": {"max_attempts": 5, "mode": "standard"}, "max_pool_connections": 32}


class S3Store:
    """A BlobStore on one S3 bucket under a key prefix."""

    def __init__(self, bucket: str, prefix: str = "", client: Any = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is not None:  # injected (tests)
            return self._client
        return aws.client(
            "s3", {"retries": {"max_attempts": 5, "mode": "standard"}, "max_pool_connections": 32}
        )

    def _translate(self, exc: ClientError, key: str) -> Exception:
        code, status = _code(exc)
        if code in _LOST_RACE or status in (409, 412):
            return StoreConflict(key)
        if code in _MISSING or status == 404:
            return BlobNotFound(key)
        return exc

    def get(self, key: str, if_none_match: str | None = None) -> tuple[bytes, str] | None:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self.prefix + key}
        if if_none_match is not None:
            kwargs["IfNoneMatch"] = if_none_match
        try:
            resp = self.client.get_object(**kwargs)
        except ClientError as exc:
            code, status = _code(exc)
            if status == 304 or code in ("304", "NotModified"):
                return None
            raise self._translate(exc, key) from exc
        return resp["Body"].read(), resp["ETag"]

    def put_if_absent(self, key: str, data: bytes) -> str:
        try:
            resp = self.client.put_object(
                Bucket=self.bucket, Key=self.prefix + key, Body=data, IfNoneMatch="*"
            )
        except ClientError as exc:
            raise self._translate(exc, key) from exc
        return str(resp["ETag"])

    def put_if_match(self, key: str, data: bytes, etag: str) -> str:
        try:
            resp = self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data, IfMatch=etag)
        except ClientError as exc:
            raise self._translate(exc, key) from exc
        return str(resp["ETag"])

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.prefix + key)
        except ClientError as exc:
            err = self._translate(exc, key)
            if not isinstance(err, BlobNotFound):
                raise err from exc

    def list(self, prefix: str) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
            for obj in page.get("Contents", []):
                yield obj["Key"][len(self.prefix) :]
