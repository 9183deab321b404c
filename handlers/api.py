"""ApiFunction's entry point: an API Gateway event (HTTP API payload 2.0, or REST API 1.0) →
the route that serves it (``routing``) → the API Gateway answer. Engine errors become
``{"status_code", "detail"}`` through the one table below; every answer carries an
``X-Request-Id`` and ``Server-Timing``, and is counted in the metrics and the request log.
``ciphervec serve`` hands every HTTP request to the same function.
"""

from __future__ import annotations

import base64
import logging
import time
import traceback
from typing import Any

from aws_lambda_powertools import Logger
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import to_json

from ..engine import timing
from ..engine.errors import CipherVecError, KeyRotated, RetryLater, Unauthorized, ValidationFailed
from ..infra.wiring import container
from . import (
    openapi,
    recovery,
    routes_indexes,
    routes_loads,
    routes_users,
    routes_vectors,
    routing,
    snapstart,
)
from . import request as rq

ROUTE_MODULES = (routes_indexes, routes_vectors, routes_loads, routes_users, openapi)  # imported: registered
HOOKS = snapstart  # imported: its SnapStart runtime hooks are registered
logger = Logger(service="ciphervec")
CORS_ALLOW = "Content-Type,X-API-Key,X-Index-Key"
CORS_EXPOSE = "X-Request-Id,Server-Timing,Retry-After"


# -- errors --------------------------------------------------------------------------------
def _error(status: int, detail: Any, headers: dict[str, str] | None = None) -> rq.Response:
    return rq.answer(status, {"status_code": status, "detail": detail}, headers)


def on_engine_error(exc: CipherVecError) -> rq.Response:
    if isinstance(exc, Unauthorized) and not isinstance(exc, KeyRotated):  # not a guess
        rq.failed_attempt()
    if isinstance(exc, ValidationFailed):
        return _error(422, [{"loc": list(exc.loc), "msg": exc.detail, "type": "value_error"}])
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, RetryLater) else None
    return _error(exc.status, exc.detail, headers)


def on_validation_error(exc: PydanticValidationError) -> rq.Response:
    # Only loc/msg/type: the offending input may hold vectors or keys.
    errors = [{"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    return _error(422, errors)


def on_unexpected(exc: Exception, request: rq.Request) -> rq.Response:
    # Type and frames only: messages of unexpected errors may quote request data.
    frames = "".join(traceback.format_tb(exc.__traceback__))
    logger.error(
        "unhandled error",
        extra={"error": type(exc).__name__, "frames": frames, "request_id": request.request_id},
    )
    return _error(500, f"Internal server error (request id {request.request_id})")


def _call(
    found: tuple[routing.Route, dict[str, str]] | None, request: rq.Request, origins: tuple[str, ...]
) -> rq.Response:
    """The route's answer, or the answer of the error it raised."""
    try:
        if found is None:
            return _unrouted(request, origins)
        entry, params = found
        return entry.fn(**params)
    except CipherVecError as exc:
        return on_engine_error(exc)
    except PydanticValidationError as exc:
        return on_validation_error(exc)
    except Exception as exc:
        return on_unexpected(exc, request)


def _unrouted(request: rq.Request, origins: tuple[str, ...]) -> rq.Response:
    """A CORS preflight (``OPTIONS`` with configured origins), a 405 for a served path, else 404."""
    if request.method == "OPTIONS" and origins:
        return rq.Response(204, None, "", {"Access-Control-Allow-Methods": ",".join(routing.methods())})
    if routing.served(request.path):
        return _error(405, f"Method {request.method} not allowed on {request.path}")
    return _error(404, "Not Found")


def _cors(headers: dict[str, str], request: rq.Request, origins: tuple[str, ...]) -> None:
    """CORS headers for a request from one of ``origins`` (``*``: any)."""
    origin = request.headers.get("origin")
    if not origin:
        return
    if origin not in origins:
        if "*" not in origins:
            return
        origin = "*"
    headers["Access-Control-Allow-Origin"] = origin
    headers["Access-Control-Allow-Headers"] = CORS_ALLOW
    headers["Access-Control-Expose-Headers"] = CORS_EXPOSE
    headers["Access-Control-Max-Age"] = "600"


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Entry point of ApiFunction (and of ``ciphervec serve`` for every request)."""
    started = time.perf_counter()
    timing.begin()
    c = container()
    settings = c.settings
    request = rq.Request(event)
    request_bytes = len(event.get("body") or "")  # the body is let go of once parsed
    rq.begin(request, c)
    found = routing.find(request.method, request.path)
    try:
        response = _call(found, request, settings.cors_origins)
        recovery.after(response.status_code)
    finally:
        stages = timing.end()
        rq.end()
    status = response.status_code
    body = response.body
    limit = settings.max_response_bytes
    if limit and len(body) > limit:
        detail = (
            f"response would be {len(body)} bytes, over the {limit}-byte limit; "
            "lower top_k, include fewer fields, or split the request"
        )
        status, body = 413, to_json({"status_code": 413, "detail": detail}).decode()
        response.headers["Content-Type"] = "application/json"
    encoded = isinstance(body, bytes)
    if isinstance(body, bytes):
        body = base64.b64encode(body).decode()
    headers = response.headers
    if settings.cors_origins:
        _cors(headers, request, settings.cors_origins)
    elapsed = (time.perf_counter() - started) * 1000
    headers["X-Request-Id"] = request.request_id
    timings = [f"{name};dur={stages[name] * 1000:.2f}" for name in timing.STAGES if name in stages]
    timings.append(f"app;dur={elapsed:.2f}")
    headers["Server-Timing"] = ", ".join(timings)
    route = found[0].template if found is not None else "other"
    timing.count(request_bytes=request_bytes, response_bytes=len(body))
    c.metrics.observe(route, request.method, status, elapsed / 1000, stages)
    if logger.log_level <= logging.INFO:
        spent = {name: round(stages[name] * 1000, 2) for name in timing.STAGES if name in stages}
        logger.info(
            "request",
            extra={
                "route": route,
                "status": status,
                "ms": round(elapsed, 2),
                "stages_ms": spent,
                "request_id": request.request_id,
            },
        )
    result: dict[str, Any] = {"statusCode": status, "body": body, "isBase64Encoded": encoded}
    if "version" in event:  # HTTP API: one value per header
        result["headers"] = headers
    else:  # REST API
        result["multiValueHeaders"] = {k: [v] for k, v in headers.items()}
        result["headers"] = headers
    return result
