"""ApiFunction's entry point: API Gateway event → powertools resolver → the routes of
``routes_indexes``, ``routes_vectors`` and ``routes_users``. Engine errors become
``{"status_code", "detail"}`` through the one table below.

HTTP API (payload v2) and REST API (v1) events are both accepted; the routers are included
into a resolver of each kind.
"""

from __future__ import annotations

import json
import re
import time
import traceback
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import (
    APIGatewayHttpResolver,
    APIGatewayRestResolver,
    CORSConfig,
    Response,
)
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from pydantic import ValidationError as PydanticValidationError

from ..engine import timing
from ..engine.errors import CipherVecError, KeyRotated, RetryLater, Unauthorized, ValidationFailed
from . import openapi, routes_indexes, routes_loads, routes_users, routes_vectors
from . import request as rq

logger = Logger(service="ciphervec")
# Anything before "/v1/" is a stage or base-path prefix (API Gateway stage, proxy path).
_PREFIX = re.compile(r"^/.*?(?=/v1(/|$))")


# -- errors --------------------------------------------------------------------------------
def _error(status: int, detail: Any, headers: dict[str, str] | None = None) -> Response:
    return rq.answer(status, {"status_code": status, "detail": detail}, headers)


def on_engine_error(exc: CipherVecError) -> Response:
    if isinstance(exc, Unauthorized) and not isinstance(exc, KeyRotated):  # not a guess
        rq.failed_attempt()
    if isinstance(exc, ValidationFailed):
        return _error(422, [{"loc": list(exc.loc), "msg": exc.detail, "type": "value_error"}])
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, RetryLater) else None
    return _error(exc.status, exc.detail, headers)


def on_validation_error(exc: PydanticValidationError) -> Response:
    # Only loc/msg/type: the offending input may hold vectors or keys.
    errors = [{"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    return _error(422, errors)


def on_not_found(exc: NotFoundError) -> Response:
    event = rq.event()
    path = _PREFIX.sub("", event.path)
    if any(p.match(path) for _, p, _, _ in rq.ROUTES):
        return _error(405, f"Method {event.http_method} not allowed on {path}")
    return _error(404, "Not Found")


def on_unexpected(exc: Exception) -> Response:
    request_id = _request_id(rq.event().raw_event)
    # Type and frames only: messages of unexpected errors may quote request data.
    frames = "".join(traceback.format_tb(exc.__traceback__))
    logger.error("unhandled error", extra={"error": type(exc).__name__, "frames": frames})
    return _error(500, f"Internal server error (request id {request_id})")


def _request_id(event: dict[str, Any]) -> str:
    return str((event.get("requestContext") or {}).get("requestId") or "-")


class ThreadEvent:
    """powertools keeps the event being resolved in one class attribute for the whole
    process, so a server resolving requests on several threads would let one request read
    another's headers and body. Resolvers with this mixin keep it per thread."""

    @property
    def current_event(self) -> Any:
        return rq.event()

    @current_event.setter
    def current_event(self, value: Any) -> None:
        rq.set_event(value)

    def resolve(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        rq.set_event(self._to_proxy_event(event))  # type: ignore[attr-defined]
        try:
            return super().resolve(event, context)  # type: ignore[misc, no-any-return]
        finally:
            rq.set_event(None)


class HttpResolver(ThreadEvent, APIGatewayHttpResolver):
    """API Gateway HTTP API (payload v2) events."""


class RestResolver(ThreadEvent, APIGatewayRestResolver):
    """API Gateway REST API (v1) events."""


def _make(resolver: Any, origins: tuple[str, ...] = ()) -> Any:
    """A resolver with every route and error handler; CORS for ``origins`` (preflight
    requests answered by powertools) when there are any."""
    cors = None
    if origins:
        cors = CORSConfig(
            allow_origin=origins[0],
            extra_origins=list(origins[1:]),
            allow_headers=["X-API-Key", "X-Index-Key", "Content-Type"],
            expose_headers=["X-Request-Id", "Server-Timing", "Retry-After"],
            max_age=600,
        )
    app = resolver(strip_prefixes=[_PREFIX], cors=cors)
    for routes in (routes_indexes, routes_vectors, routes_loads, routes_users, openapi):
        app.include_router(routes.router)
    app.exception_handler(CipherVecError)(on_engine_error)
    app.exception_handler(PydanticValidationError)(on_validation_error)
    app.exception_handler(NotFoundError)(on_not_found)
    app.exception_handler(Exception)(on_unexpected)
    return app


http_app = _make(HttpResolver)
rest_app = _make(RestResolver)
_cors_apps: dict[tuple[bool, tuple[str, ...]], Any] = {}


def _app(http: bool, origins: tuple[str, ...]) -> Any:
    """The resolver for this payload version, with CORS when origins are configured."""
    if not origins:
        return http_app if http else rest_app
    app = _cors_apps.get((http, origins))
    if app is None:
        app = _cors_apps.setdefault((http, origins), _make(HttpResolver if http else RestResolver, origins))
    return app


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Entry point of ApiFunction (and of ``ciphervec serve`` for every request)."""
    started = time.perf_counter()
    timing.begin()
    app = _app(event.get("version") == "2.0", rq.c().settings.cors_origins)
    try:
        result: dict[str, Any] = app.resolve(event, context)
    finally:
        stages = timing.end()
    limit = rq.c().settings.max_response_bytes
    if limit and len(result.get("body") or "") > limit:
        body = {
            "status_code": 413,
            "detail": f"response would be {len(result['body'])} bytes, over the {limit}-byte limit; "
            "lower top_k, include fewer fields, or split the request",
        }
        result.update(statusCode=413, body=json.dumps(body), isBase64Encoded=False)
    headers = result.setdefault("headers", {}) or {}
    elapsed = (time.perf_counter() - started) * 1000
    headers["X-Request-Id"] = _request_id(event)
    spent = {name: round(stages[name] * 1000, 2) for name in timing.STAGES if name in stages}
    headers["Server-Timing"] = ", ".join(
        [*(f"{name};dur={ms:.2f}" for name, ms in spent.items()), f"app;dur={elapsed:.2f}"]
    )
    result["headers"] = headers
    method = event.get("requestContext", {}).get("http", {}).get("method") or event.get("httpMethod") or ""
    route = rq.route_of(method, _PREFIX.sub("", event.get("rawPath") or event.get("path") or ""))
    status = int(result.get("statusCode") or 500)
    timing.event("request_bytes", len(event.get("body") or ""))
    timing.event("response_bytes", len(result.get("body") or ""))
    rq.c().metrics.observe(route, method, status, elapsed / 1000, stages)
    logger.info(
        "request",
        extra={
            "route": route,
            "status": status,
            "ms": round(elapsed, 2),
            "stages_ms": spent,
            "request_id": headers["X-Request-Id"],
        },
    )
    return result
