"""What every route does with a request: read headers and body, authenticate, parse the
wire model, decode vectors, and answer JSON."""

from __future__ import annotations

import binascii
import functools
import re
import threading
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
import pybase64
from pydantic import BaseModel
from pydantic_core import to_json

from ..engine import timing
from ..engine.codec import crypto
from ..engine.errors import PayloadTooLarge, TooManyFailures, Unauthorized, ValidationFailed
from ..engine.handle import OpenIndex
from ..engine.model import check_index_name
from ..infra.keystore import Principal
from ..infra.wiring import Container, container
from . import schemas


@functools.cache
def package_version() -> str:
    """ciphervec's installed version (read on first use: the metadata reader costs a cold start
    more than a health check does)."""
    try:
        return version("ciphervec")
    except PackageNotFoundError:  # a source tree without installation
        return "0.0.0"


# Anything before "/v1/" is a stage or base-path prefix (API Gateway stage, proxy path).
_PREFIX = re.compile(r"^/.*?(?=/v1(/|$))")
_local = threading.local()


class Response:
    """What a route answers: a status, a body (text, or bytes sent base64-encoded through
    API Gateway) and headers."""

    __slots__ = ("status_code", "body", "headers")

    def __init__(
        self,
        status_code: int,
        content_type: str | None,
        body: str | bytes,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status_code = status_code
        self.body = body
        self.headers = headers if headers is not None else {}
        if content_type:
            self.headers["Content-Type"] = content_type


class Request:
    """The parts of an API Gateway event (HTTP API v2 or REST v1) a route reads."""

    __slots__ = ("event", "method", "path", "headers", "source_ip")

    def __init__(self, event: dict[str, Any]) -> None:
        self.event = event
        context = event.get("requestContext") or {}
        http = context.get("http")
        if http is not None:  # HTTP API, payload 2.0
            self.method = str(http.get("method") or "").upper()
            raw = event.get("rawPath") or http.get("path") or "/"
            self.source_ip = http.get("sourceIp")
        else:  # REST API, payload 1.0
            self.method = str(event.get("httpMethod") or "").upper()
            raw = event.get("path") or "/"
            self.source_ip = (context.get("identity") or {}).get("sourceIp")
        self.path = raw if raw.startswith("/v1/") else _PREFIX.sub("", raw)
        headers = event.get("headers") or {}
        # HTTP API (2.0) sends header names in lower case already; REST API (1.0) as given
        self.headers = headers if http is not None else {k.lower(): v for k, v in headers.items()}

    @property
    def request_id(self) -> str:
        return str((self.event.get("requestContext") or {}).get("requestId") or "-")


def begin(request: Request, container: Container) -> None:
    """Start this thread's request (the container is taken once, for all of it)."""
    _local.request = request
    _local.attempt = None
    _local.container = container
    _local.target = None
    _local.index = None


def end() -> None:
    _local.request = None
    _local.container = None
    _local.target = None
    _local.index = None


def current() -> Request:
    """The request this thread is serving."""
    return _local.request


def app() -> Container:
    """The container (settings, service, authenticator, trainer) serving this request."""
    return getattr(_local, "container", None) or container()


def header(name: str) -> str | None:
    """A request header by its lower-case name."""
    value = current().headers.get(name)
    return None if value is None else str(value)


def principal(right: str, index_name: str | None = None) -> Principal:
    """The caller, authenticated by ``X-API-Key`` and holding ``right`` (on ``index_name``).

    Brute force is throttled before anything is checked: an address with too many unknown
    API keys, or an API key with too many wrong ``index_key``s for one index, gets 429 for a
    while; other addresses, keys and indexes are not affected."""
    with timing.stage("auth"):
        return _principal(right, index_name)


def _principal(right: str, index_name: str | None) -> Principal:
    container = app()
    throttle = container.throttle
    address = ("address", current().source_ip)
    if wait := throttle.retry_after(address):
        raise TooManyFailures("too many failed API keys from this address; retry later", wait)
    try:
        who = container.auth.authenticate(header("x-api-key"))
    except Unauthorized:
        throttle.failed(address)
        raise
    if index_name is not None:
        attempt = ("index_key", who.key_id, who.tenant, index_name)
        if wait := throttle.retry_after(attempt):
            raise TooManyFailures(
                "too many wrong index keys for this index with this API key; retry later", wait
            )
        _local.attempt = attempt
    who.require(right, index_name)
    return who


def failed_attempt() -> None:
    """The request's ``index_key`` did not open its index: count it against the API key."""
    attempt = getattr(_local, "attempt", None)
    if attempt is not None:
        app().throttle.failed(attempt)


def raw_body() -> str | bytes:
    event = current().event
    raw: str | bytes = event.get("body") or ""
    if event.get("isBase64Encoded"):
        raw = pybase64.b64decode(raw)
    limit = app().settings.max_body_bytes
    if limit and len(raw) > limit:
        raise PayloadTooLarge(
            f"request body is {len(raw)} bytes; the limit is {limit}. Split the batch into "
            "smaller upserts, or load large batches through the S3 batch path"
        )
    return raw


def parse(model: type[BaseModel]) -> Any:
    """The body as ``model``; the event lets go of the raw bytes once they are parsed (an
    upsert's JSON is several times the size of its vectors: not kept for the whole request)."""
    event = current().event
    parsed = model.model_validate_json(raw_body() or b"{}")
    if not event.get("isBase64Encoded"):
        event["body"] = None
    return parsed


def kek(index_key: str | None) -> bytes | None:
    return None if index_key is None else crypto.parse_index_key(index_key)


def answer(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    # pydantic-core's serializer: an order of magnitude faster than json.dumps on float lists.
    return Response(status, "application/json", to_json(body).decode(), headers)


def ok(body: Any) -> Response:
    return answer(200, body)


def index_target(right: str, req: schemas.IndexRequest) -> tuple[str, bytes | None]:
    """The tenant and index key of a request on one index (remembered: ``target``)."""
    check_index_name(req.index_name)
    tenant, key = principal(right, req.index_name).tenant, kek(req.index_key)
    _local.target, _local.index = (tenant, req.index_name, key), None
    return tenant, key


def index() -> OpenIndex:
    """The index this request named (``index_target`` first), opened with its key the first
    time it is asked for: one head read and one key proof per request (404 and 401 come from
    here, after the request's own validation)."""
    opened = getattr(_local, "index", None)
    if opened is None:
        named = target()
        assert named is not None, "index_target names the index first"
        opened = _local.index = app().service.open(*named)
    return opened


def target() -> tuple[str, str, bytes | None] | None:
    """``(tenant, index_name, kek)`` of the index this request named, once authorised."""
    return getattr(_local, "target", None)


def decode_vectors(b64: str, rows: int | None, dimension: int, where: str) -> np.ndarray:
    if dimension < 1:
        raise ValidationFailed("dimension must be a positive integer", ("body", where, "dimension"))
    try:
        raw = pybase64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise ValidationFailed("vectors_b64 is not valid base64", ("body", where, "vectors_b64")) from None
    if len(raw) % (4 * dimension):
        raise ValidationFailed(
            f"vectors_b64 holds {len(raw)} bytes, not a multiple of 4 x dimension ({dimension})",
            ("body", where, "vectors_b64"),
        )
    n = len(raw) // (4 * dimension)
    if rows is not None and n != rows:
        raise ValidationFailed(f"{rows} ids but {n} vectors of dimension {dimension}", ("body", where))
    return np.frombuffer(raw, dtype="<f4").reshape(n, dimension)
