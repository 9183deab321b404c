"""API Gateway → routes → IndexService. Every route: authenticate, parse the wire model,
one service call, shape the response. Errors become ``{"status_code", "detail"}``.

HTTP API (payload v2) and REST API (v1) events are both accepted; the routes live on one
``Router`` included into a resolver of each kind.
"""

from __future__ import annotations

import binascii
import json
import re
import time
import traceback
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any
from urllib.parse import unquote

import numpy as np
import pybase64
from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import (
    APIGatewayHttpResolver,
    APIGatewayRestResolver,
    Response,
)
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.router import Router
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import to_json

from ..engine import crypto
from ..engine.errors import (
    CipherVecError,
    Contention,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    ValidationFailed,
)
from ..engine.model import INCLUDABLE, IndexConfig, RowBatch, check_index_name
from ..infra.keystore import Principal
from ..infra.training import TrainJob, worker_pid
from ..infra.wiring import Container, container
from . import schemas

logger = Logger(service="ciphervec")
try:
    __version__ = version("ciphervec")
except PackageNotFoundError:  # a source tree without installation
    __version__ = "0.0.0"
router = Router()
_ROUTES: list[tuple[str, re.Pattern[str]]] = []
# Anything before "/v1/" is a stage or base-path prefix (API Gateway stage, proxy path).
_PREFIX = re.compile(r"^/.*?(?=/v1(/|$))")
_UNSUPPORTED_TEXT = "is not supported by this server (no embedding or BM25 text search yet)"


def route(method: str, path: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a route and remember it, so a wrong method can answer 405."""
    pattern = re.compile("^" + re.sub(r"<\w+>", r"[^/]+", path) + "$")
    _ROUTES.append((method, pattern))
    return getattr(router, method.lower())(path)  # type: ignore[no-any-return]


# -- request helpers ---------------------------------------------------------------------
def _c() -> Container:
    return container()


def _header(name: str) -> str | None:
    for key, value in (router.current_event.headers or {}).items():
        if key.lower() == name:
            return str(value)
    return None


def _principal(right: str, index_name: str | None = None) -> Principal:
    principal = _c().auth.authenticate(_header("x-api-key"))
    principal.require(right, index_name)
    return principal


def _raw_body() -> str | bytes:
    event = router.current_event
    raw: str | bytes = event.body or ""
    if event.is_base64_encoded:
        raw = pybase64.b64decode(raw)
    limit = _c().settings.max_body_bytes
    if limit and len(raw) > limit:
        raise PayloadTooLarge(
            f"request body is {len(raw)} bytes; the limit is {limit}. Split the batch into "
            "smaller upserts, or load large batches through the S3 batch path"
        )
    return raw


def _parse(model: type[BaseModel]) -> Any:
    return model.model_validate_json(_raw_body() or b"{}")


def _kek(index_key: str | None) -> bytes | None:
    return None if index_key is None else crypto.parse_index_key(index_key)


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    # pydantic-core's serializer: an order of magnitude faster than json.dumps on float lists.
    return Response(
        status_code=status,
        content_type="application/json",
        body=to_json(body).decode(),
        headers=headers or {},
    )


def _ok(body: Any) -> Response:
    return _json(200, body)


def _index_target(right: str, req: schemas.IndexRequest) -> tuple[str, bytes | None]:
    check_index_name(req.index_name)
    principal = _principal(right, req.index_name)
    return principal.tenant, _kek(req.index_key)


def _decode_vectors(b64: str, rows: int | None, dimension: int, where: str) -> np.ndarray:
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


def _refuse_text(req: Any, *fields: str) -> None:
    for name in fields:
        if getattr(req, name, None) not in (None, [], ""):
            raise InvalidRequest(f"'{name}' {_UNSUPPORTED_TEXT}")


# -- routes: health and indexes ----------------------------------------------------------
@route("GET", "/v1/health")
def health() -> Response:
    return _ok({"status": "healthy", "api_version": "v1", "version": __version__})


@route("GET", "/v1/indexes/list")
def list_indexes() -> Response:
    principal = _principal("admin")
    names = _c().service.list_indexes(principal.tenant)
    return _ok({"indexes": names})


@route("POST", "/v1/indexes/create")
def create_index() -> Response:
    req: schemas.CreateIndexRequest = _parse(schemas.CreateIndexRequest)
    check_index_name(req.index_name)
    principal = _principal("admin", req.index_name)
    if (req.index_key is None) == (req.kms_name is None):
        raise InvalidRequest("give exactly one of index_key and kms_name")
    _refuse_text(req, "embedding_model", "text_fields", "bm25_k1", "bm25_b")
    for field, policy in (req.metadata_schema or {}).items():
        if isinstance(policy, dict) and policy.get("full_text"):
            raise InvalidRequest(f"full_text on '{field}' {_UNSUPPORTED_TEXT}")
    legacy = dict(req.index_config or {})
    dimension = req.dimension if req.dimension is not None else legacy.get("dimension") or 0
    if not isinstance(dimension, int) or dimension < 0:
        raise InvalidRequest("dimension must be a non-negative integer")
    legacy_type = str(legacy.get("type") or legacy.get("index_type") or "ivfflat").lower()
    if legacy_type not in ("ivf", "ivfflat", "ivfpq", "ivf_flat", "ivf_pq"):
        raise InvalidRequest(f"unknown index_config type {legacy_type!r}")
    config = IndexConfig(
        dimension=dimension,
        metric=req.metric or legacy.get("metric") or "euclidean",
        storage_precision=req.storage_precision or "float32",
        metadata_schema=req.metadata_schema or {},
        index_type=legacy_type,
        index_config=legacy,
    )
    _c().service.create_index(
        principal.tenant, req.index_name, config, kek=_kek(req.index_key), kms_name=req.kms_name
    )
    return _ok({"status": "success", "message": f"Index '{req.index_name}' created successfully"})


@route("POST", "/v1/indexes/describe")
def describe_index() -> Response:
    req: schemas.IndexRequest = _parse(schemas.IndexRequest)
    tenant, kek = _index_target("read", req)
    return _ok(_c().service.describe(tenant, req.index_name, kek))


@route("POST", "/v1/indexes/delete")
def delete_index() -> Response:
    req: schemas.IndexRequest = _parse(schemas.IndexRequest)
    tenant, kek = _index_target("admin", req)
    _c().service.delete_index(tenant, req.index_name, kek)
    for record in _c().auth.store.list(tenant):
        if record.index_name == req.index_name and record.revoked_at is None:
            _c().auth.revoke(record.key_id)
    return _ok({"status": "success", "message": f"Index '{req.index_name}' deleted successfully"})


@route("POST", "/v1/indexes/train")
def train_index() -> Response:
    req: schemas.TrainRequest = _parse(schemas.TrainRequest)
    tenant, kek = _index_target("admin", req)
    if req.n_lists is not None and req.n_lists < 0:
        raise ValidationFailed("n_lists must be >= 0", ("body", "n_lists"))
    if req.max_iters is not None and req.max_iters < 0:
        raise ValidationFailed("max_iters must be >= 0", ("body", "max_iters"))
    params: dict[str, Any] = {"n_lists": req.n_lists or None}
    if req.max_iters:
        params["max_iters"] = req.max_iters
    if req.tolerance is not None:
        params["tolerance"] = float(req.tolerance)
    c = _c()
    c.service.describe(tenant, req.index_name, kek)  # 404/401 now, not from the worker
    result = c.trainer.train(TrainJob(tenant, req.index_name, kek, params), c.settings.train_sync_seconds)
    if result is None:
        return _json(
            202,
            {
                "status": "queued",
                "message": f"Training of index '{req.index_name}' continues in the background; "
                "see /v1/indexes/training-status",
            },
        )
    return _ok({"status": "success", "message": result.message})


@route("GET", "/v1/indexes/training-status")
def training_status() -> Response:
    principal = _principal("admin")
    c = _c()
    local = c.trainer.status(principal.tenant)
    marked = c.service.training_indexes(principal.tenant)
    queued = list(dict.fromkeys(local["queued_indexes"] + [n for n, s in marked if s == "queued"]))
    current = local["currently_training"] or next((n for n, s in marked if s == "running"), None)
    training = list(dict.fromkeys(([current] if current else []) + queued + [n for n, _ in marked]))
    return _ok(
        {
            "training_indexes": training,
            "currently_training": current,
            "queued_indexes": queued,
            "retrain_threshold": c.settings.train_threshold,
            "worker_running": bool(local["worker_running"]),
            "worker_pid": worker_pid(),
            "global_training": {},
        }
    )


# -- routes: vectors ---------------------------------------------------------------------
def _upsert_response(tenant: str, name: str, kek: bytes | None, batch: RowBatch) -> Response:
    c = _c()
    result = c.service.upsert(tenant, name, kek, batch)
    body: dict[str, Any] = {"status": "success", "message": f"Upserted {result.upserted} vectors"}
    if result.training_triggered:
        c.trainer.enqueue(tenant, name, kek)
        body["training_triggered"] = True
        body["training_message"] = (
            f"Index training has been triggered (vectors: {result.total}, threshold: {result.threshold})"
        )
    elif result.merge_due:
        c.trainer.enqueue(tenant, name, kek, kind="merge")
    return _ok(body)


@route("POST", "/v1/vectors/upsert")
def upsert() -> Response:
    req: schemas.UpsertRequest = _parse(schemas.UpsertRequest)
    tenant, kek = _index_target("write", req)
    if any(item.vector is None for item in req.items):
        raise InvalidRequest(f"items without 'vector' need an embedding model, which {_UNSUPPORTED_TEXT}")
    try:
        vectors = np.array([item.vector for item in req.items], dtype=np.float32)
    except ValueError:
        raise ValidationFailed("all vectors must have the same dimension", ("body", "items")) from None
    if vectors.ndim != 2:
        raise ValidationFailed("all vectors must have the same dimension", ("body", "items"))
    batch = RowBatch(
        [item.id for item in req.items],
        vectors,
        [item.metadata for item in req.items],
        [item.contents for item in req.items],
    )
    return _upsert_response(tenant, req.index_name, kek, batch)


@route("POST", "/v1/vectors/upsert_binary")
def upsert_binary() -> Response:
    req: schemas.UpsertBinaryRequest = _parse(schemas.UpsertBinaryRequest)
    tenant, kek = _index_target("write", req)
    b = req.batch
    vectors = _decode_vectors(b.vectors_b64, len(b.ids), b.dimension, "batch")
    return _upsert_response(tenant, req.index_name, kek, RowBatch(b.ids, vectors, b.metadata, b.contents))


def _search(req: schemas.SearchOptions, queries: np.ndarray, tenant: str, kek: bytes | None) -> Response:
    _refuse_text(req, "text", "text_fields", "text_field_weights")
    c = _c()
    top_k = 100 if req.top_k is None else req.top_k
    if not 1 <= top_k <= c.settings.max_top_k:
        raise ValidationFailed(f"top_k must be between 1 and {c.settings.max_top_k}", ("body", "top_k"))
    if req.n_probes is not None and req.n_probes < 0:
        raise ValidationFailed("n_probes must be >= 0 (0 or null = automatic)", ("body", "n_probes"))
    include = req.include or []
    unknown = [f for f in include if f not in INCLUDABLE]
    if unknown:
        raise ValidationFailed(f"unknown include fields {unknown}", ("body", "include"))
    results = c.service.query(
        tenant,
        req.index_name,
        kek,
        queries,
        top_k=top_k,
        n_probes=req.n_probes or None,
        filters=req.filters,
        include=include,
    )
    return _ok({"results": results[0] if len(results) == 1 else results})


@route("POST", "/v1/vectors/query")
def query() -> Response:
    req: schemas.QueryRequest = _parse(schemas.QueryRequest)
    tenant, kek = _index_target("read", req)
    if req.query_contents:
        raise InvalidRequest(f"'query_contents' {_UNSUPPORTED_TEXT}")
    if not req.query_vectors:
        raise ValidationFailed("query_vectors is required", ("body", "query_vectors"))
    first = req.query_vectors[0]
    rows = req.query_vectors if isinstance(first, list) else [req.query_vectors]
    try:
        queries = np.array(rows, dtype=np.float32)
    except ValueError:
        raise ValidationFailed(
            "all query vectors must have one dimension", ("body", "query_vectors")
        ) from None
    if queries.ndim != 2 or queries.shape[1] == 0:
        raise ValidationFailed("all query vectors must have one dimension", ("body", "query_vectors"))
    return _search(req, queries, tenant, kek)


@route("POST", "/v1/vectors/query_binary")
def query_binary() -> Response:
    req: schemas.QueryBinaryRequest = _parse(schemas.QueryBinaryRequest)
    tenant, kek = _index_target("read", req)
    queries = _decode_vectors(req.batch.vectors_b64, None, req.batch.dimension, "batch")
    if len(queries) == 0:
        raise ValidationFailed("at least one query vector is required", ("body", "batch"))
    return _search(req, queries, tenant, kek)


@route("POST", "/v1/vectors/get")
def get_vectors() -> Response:
    req: schemas.GetRequest = _parse(schemas.GetRequest)
    tenant, kek = _index_target("read", req)
    include = ["vector", "contents", "metadata"] if req.include is None else req.include
    unknown = [f for f in include if f not in ("vector", "contents", "metadata", "distance")]
    if unknown:
        raise ValidationFailed(f"unknown include fields {unknown}", ("body", "include"))
    return _ok({"results": _c().service.get(tenant, req.index_name, kek, req.ids, include)})


@route("POST", "/v1/vectors/delete")
def delete_vectors() -> Response:
    req: schemas.DeleteRequest = _parse(schemas.DeleteRequest)
    tenant, kek = _index_target("write", req)
    n = _c().service.delete_vectors(tenant, req.index_name, kek, req.ids)
    return _ok({"status": "success", "message": f"Deleted {n} vectors"})


@route("POST", "/v1/vectors/list_ids")
def list_ids() -> Response:
    req: schemas.IndexRequest = _parse(schemas.IndexRequest)
    tenant, kek = _index_target("read", req)
    ids = _c().service.list_ids(tenant, req.index_name, kek)
    return _ok({"ids": ids, "count": len(ids)})


@route("POST", "/v1/vectors/num_vectors")
def num_vectors() -> Response:
    req: schemas.IndexRequest = _parse(schemas.IndexRequest)
    tenant, kek = _index_target("read", req)
    return _ok({"result": _c().service.num_vectors(tenant, req.index_name, kek)})


@route("POST", "/v1/vectors/query_metadata")
def query_metadata() -> Response:
    req: schemas.QueryMetadataRequest = _parse(schemas.QueryMetadataRequest)
    tenant, kek = _index_target("read", req)
    _refuse_text(req, "text", "text_fields", "text_field_weights")
    if req.top_k is not None and req.top_k < 0:
        raise ValidationFailed("top_k must be >= 0", ("body", "top_k"))
    order_by, ascending = req.order_by, req.ascending is not False
    if isinstance(order_by, dict):
        if len(order_by) != 1:
            raise InvalidRequest("order_by must name exactly one field")
        ((order_by, direction),) = order_by.items()
        ascending = direction >= 0
    ids = _c().service.query_metadata(
        tenant,
        req.index_name,
        kek,
        req.filters or {},
        top_k=req.top_k,
        order_by=order_by,
        ascending=ascending,
    )
    return _ok({"results": [{"id": i} for i in ids], "ids": ids, "count": len(ids)})


@route("GET", "/v1/embedding-models")
def embedding_models() -> Response:
    _principal("read")
    return _ok({"models": []})


# -- routes: per-index users ---------------------------------------------------------------
def _user_index(index_name: str, right: str = "admin") -> tuple[str, str]:
    name = unquote(index_name)
    check_index_name(name)
    return _principal(right, name).tenant, name


@route("POST", "/v1/indexes/<index_name>/users")
def create_user(index_name: str) -> Response:
    tenant, name = _user_index(index_name)
    req: schemas.CreateUserRequest = _parse(schemas.CreateUserRequest)
    c = _c()
    c.service.describe(tenant, name, _kek(req.index_key))  # the index exists and the key opens it
    api_key, record = c.auth.create_key(tenant, "user", index_name=name, permissions=req.permissions)
    return _ok({"user_id": record.key_id, "api_key": api_key})


@route("GET", "/v1/indexes/<index_name>/users")
def list_users(index_name: str) -> Response:
    tenant, name = _user_index(index_name)
    c = _c()
    c.service.describe(tenant, name, _kek(_header("x-index-key")))
    users = [
        {"user_id": r.key_id, "permissions": list(r.permissions)}
        for r in c.auth.store.list(tenant)
        if r.index_name == name and r.role == "user" and r.revoked_at is None
    ]
    return _ok({"users": sorted(users, key=lambda u: u["user_id"])})


@route("DELETE", "/v1/indexes/<index_name>/users/<user_id>")
def delete_user(index_name: str, user_id: str) -> Response:
    tenant, name = _user_index(index_name)
    c = _c()
    c.service.describe(tenant, name, _kek(_header("x-index-key")))
    record = c.auth.store.get(unquote(user_id))
    if record is None or record.tenant != tenant or record.index_name != name or record.revoked_at:
        raise NotFound(f"no user '{unquote(user_id)}' on index '{name}'")
    c.auth.revoke(record.key_id)
    return Response(status_code=204, body="")


# -- errors --------------------------------------------------------------------------------
def _error(status: int, detail: Any, headers: dict[str, str] | None = None) -> Response:
    return _json(status, {"status_code": status, "detail": detail}, headers)


def on_engine_error(exc: CipherVecError) -> Response:
    if isinstance(exc, ValidationFailed):
        return _error(422, [{"loc": list(exc.loc), "msg": exc.detail, "type": "value_error"}])
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Contention) else None
    return _error(exc.status, exc.detail, headers)


def on_validation_error(exc: PydanticValidationError) -> Response:
    # Only loc/msg/type: the offending input may hold vectors or keys.
    errors = [{"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    return _error(422, errors)


def on_not_found(exc: NotFoundError) -> Response:
    event = router.current_event
    path = _PREFIX.sub("", event.path)
    if any(p.match(path) for m, p in _ROUTES):
        return _error(405, f"Method {event.http_method} not allowed on {path}")
    return _error(404, "Not Found")


def on_unexpected(exc: Exception) -> Response:
    request_id = _request_id(router.current_event.raw_event)
    # Type and frames only: messages of unexpected errors may quote request data.
    frames = "".join(traceback.format_tb(exc.__traceback__))
    logger.error("unhandled error", extra={"error": type(exc).__name__, "frames": frames})
    return _error(500, f"Internal server error (request id {request_id})")


def _request_id(event: dict[str, Any]) -> str:
    return str((event.get("requestContext") or {}).get("requestId") or "-")


def _make(resolver: Any) -> Any:
    app = resolver(strip_prefixes=[_PREFIX])
    app.include_router(router)
    app.exception_handler(CipherVecError)(on_engine_error)
    app.exception_handler(PydanticValidationError)(on_validation_error)
    app.exception_handler(NotFoundError)(on_not_found)
    app.exception_handler(Exception)(on_unexpected)
    return app


http_app = _make(APIGatewayHttpResolver)
rest_app = _make(APIGatewayRestResolver)


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Entry point of ApiFunction (and of ``ciphervec serve`` for every request)."""
    started = time.perf_counter()
    app = http_app if event.get("version") == "2.0" else rest_app
    result: dict[str, Any] = app.resolve(event, context)
    limit = _c().settings.max_response_bytes
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
    headers["Server-Timing"] = f"app;dur={elapsed:.2f}"
    result["headers"] = headers
    logger.info(
        "request",
        extra={
            "route": app.current_event.path if hasattr(app, "current_event") else None,
            "status": result.get("statusCode"),
            "ms": round(elapsed, 2),
            "request_id": headers["X-Request-Id"],
        },
    )
    return result
