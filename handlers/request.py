"""What every route does with a request: read headers and body, authenticate, parse the
wire model, decode vectors, and answer JSON."""

from __future__ import annotations

import binascii
import re
import threading
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
import pybase64
from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.api_gateway import BaseProxyEvent
from pydantic import BaseModel
from pydantic_core import to_json

from ..engine import crypto, timing
from ..engine.errors import PayloadTooLarge, TooManyFailures, Unauthorized, ValidationFailed
from ..engine.model import check_index_name
from ..infra.keystore import Principal
from ..infra.wiring import Container, container
from . import schemas

try:
    VERSION = version("ciphervec")
except PackageNotFoundError:  # a source tree without installation
    VERSION = "0.0.0"
# Every (method, path pattern) served, so that a known path with a wrong method answers 405.
# method, path pattern, path template, the body's wire model (the OpenAPI document is made of these)
ROUTES: list[tuple[str, re.Pattern[str], str, type[BaseModel] | None]] = []
_local = threading.local()


def route(
    router: Any, method: str, path: str, body: type[BaseModel] | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a route on ``router`` and remember it (405 answers, metrics, OpenAPI)."""
    ROUTES.append((method, re.compile("^" + re.sub(r"<\w+>", r"[^/]+", path) + "$"), path, body))
    return getattr(router, method.lower())(path)  # type: ignore[no-any-return]


def route_of(method: str, path: str) -> str:
    """The template of the route serving ``path`` (``/v1/indexes/<index_name>/users``), or
    ``other``: what metrics and logs may name, never the values in the path."""
    return next((t for m, p, t, _ in ROUTES if m == method and p.match(path)), "other")


def event() -> BaseProxyEvent:
    """The event of the request this thread is resolving (see ``api.ThreadEvent``)."""
    return _local.event  # type: ignore[no-any-return]


def set_event(value: BaseProxyEvent | None) -> None:
    """Start (or, with ``None``, end) this thread's request; its container is taken once."""
    _local.event = value
    _local.attempt = None
    _local.container = None if value is None else container()


def c() -> Container:
    """The container (settings, service, authenticator, trainer) serving this request."""
    return getattr(_local, "container", None) or container()


def header(name: str) -> str | None:
    for key, value in (event().headers or {}).items():
        if key.lower() == name:
            return str(value)
    return None


def principal(right: str, index_name: str | None = None) -> Principal:
    """The caller, authenticated by ``X-API-Key`` and holding ``right`` (on ``index_name``).

    Brute force is throttled before anything is checked: an address with too many unknown
    API keys, or an API key with too many wrong ``index_key``s for one index, gets 429 for a
    while; other addresses, keys and indexes are not affected."""
    with timing.stage("auth"):
        return _principal(right, index_name)


def _principal(right: str, index_name: str | None) -> Principal:
    container = c()
    throttle = container.throttle
    address = ("address", (event().raw_event.get("requestContext") or {}).get("http", {}).get("sourceIp"))
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
        c().throttle.failed(attempt)


def raw_body() -> str | bytes:
    current = event()
    raw: str | bytes = current.body or ""
    if current.is_base64_encoded:
        raw = pybase64.b64decode(raw)
    limit = c().settings.max_body_bytes
    if limit and len(raw) > limit:
        raise PayloadTooLarge(
            f"request body is {len(raw)} bytes; the limit is {limit}. Split the batch into "
            "smaller upserts, or load large batches through the S3 batch path"
        )
    return raw


def parse(model: type[BaseModel]) -> Any:
    return model.model_validate_json(raw_body() or b"{}")


def kek(index_key: str | None) -> bytes | None:
    return None if index_key is None else crypto.parse_index_key(index_key)


def answer(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    # pydantic-core's serializer: an order of magnitude faster than json.dumps on float lists.
    return Response(
        status_code=status,
        content_type="application/json",
        body=to_json(body).decode(),
        headers=headers or {},
    )


def ok(body: Any) -> Response:
    return answer(200, body)


def index_target(right: str, req: schemas.IndexRequest) -> tuple[str, bytes | None]:
    check_index_name(req.index_name)
    return principal(right, req.index_name).tenant, kek(req.index_key)


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
