"""Routes under /v1/indexes (and /v1/health): create, describe, delete, train, training status, list."""

from __future__ import annotations

from typing import Any

from ..engine.arrays.text import TextConfig
from ..engine.embedding import model_spec
from ..engine.errors import InvalidRequest, ModelUnavailable
from ..engine.model import IndexConfig, check_index_name
from ..infra.training import worker_pid
from . import request as rq
from . import responses, schemas
from .request import Response
from .routing import route


@route("GET", "/v1/health", answer=responses.Health)
def health() -> Response:
    """Whether the service answers, and its version (no key needed)."""
    return rq.ok({"status": "healthy", "api_version": "v1", "version": rq.package_version()})


@route("GET", "/v1/indexes/list", answer=responses.IndexList)
def list_indexes() -> Response:
    """The names of the caller's indexes (an admin key)."""
    principal = rq.principal("admin")
    names = rq.app().service.list_indexes(principal.tenant)
    return rq.ok({"indexes": names})


@route("POST", "/v1/indexes/create", schemas.CreateIndexRequest, answer=responses.Message)
def create_index() -> Response:
    """Create an index under a client key (``index_key``) or a KMS key (``kms_name``).

    Its dimension, metric, storage precision, metadata schema, full-text fields and
    embedding model are fixed here; an index of that name already there is a 409."""
    req: schemas.CreateIndexRequest = rq.parse(schemas.CreateIndexRequest)
    check_index_name(req.index_name)
    principal = rq.principal("admin", req.index_name)
    if (req.index_key is None) == (req.kms_name is None):
        raise InvalidRequest("give exactly one of index_key and kms_name")
    text = TextConfig.declare(req.text_fields, req.metadata_schema, req.bm25_k1, req.bm25_b)
    legacy = dict(req.index_config or {})
    dimension = req.dimension if req.dimension is not None else legacy.get("dimension") or 0
    if not isinstance(dimension, int) or dimension < 0:
        raise InvalidRequest("dimension must be a non-negative integer")
    legacy_type = str(legacy.get("type") or legacy.get("index_type") or "ivfflat").lower().replace("_", "")
    if legacy_type not in ("ivf", "ivfflat", "ivfpq"):
        raise InvalidRequest("unknown index_config type; use ivf, ivfflat or ivfpq")
    model = None
    if req.embedding_model:
        spec = model_spec(req.embedding_model)
        if dimension not in (0, spec.dimension):
            raise InvalidRequest(f"{spec.name} makes {spec.dimension}-dimensional vectors, not {dimension}")
        dimension, model = spec.dimension, spec.name
        if spec not in rq.app().embedder.available():
            raise ModelUnavailable(
                f"embedding model {spec.name} is not installed on this server (its ONNX export, made "
                f"by `make install` and the Lambda build; or {spec.package} with the torch runtime)"
            )
    config = IndexConfig(
        dimension=dimension,
        metric=req.metric or legacy.get("metric") or "euclidean",
        storage_precision=req.storage_precision or "float32",
        metadata_schema=req.metadata_schema or {},
        index_type=legacy_type,
        index_config=legacy,
        embedding_model=model,
        text=text,
    )
    rq.app().service.create_index(
        principal.tenant, req.index_name, config, kek=rq.kek(req.index_key), kms_name=req.kms_name
    )
    return rq.ok({"status": "success", "message": f"Index '{req.index_name}' created successfully"})


@route("POST", "/v1/indexes/describe", schemas.IndexRequest, answer=responses.Description)
def describe_index() -> Response:
    """An index's configuration, training and key-rotation state."""
    req: schemas.IndexRequest = rq.parse(schemas.IndexRequest)
    rq.index_target("read", req)
    return rq.ok(rq.index().describe())


@route("POST", "/v1/indexes/delete", schemas.IndexRequest, answer=responses.Message)
def delete_index() -> Response:
    """Delete an index and every object of it (its key must open it)."""
    req: schemas.IndexRequest = rq.parse(schemas.IndexRequest)
    tenant, kek = rq.index_target("admin", req)
    rq.app().service.delete_index(tenant, req.index_name, kek)
    for record in rq.app().auth.store.list(tenant):
        if record.index_name == req.index_name and record.revoked_at is None:
            rq.app().auth.revoke(record.key_id)
    return rq.ok({"status": "success", "message": f"Index '{req.index_name}' deleted successfully"})


@route("POST", "/v1/indexes/rotate_key", schemas.RotateKeyRequest, answer=responses.KeyRotated, accepted=True)
def rotate_key() -> Response:
    """Put an index under a new key (a client key or a KMS key, either way round).

    One head commit: the old key stops opening the index at once. With ``reencrypt`` the
    index also gets a new data key and every object is rewritten under it (202 while that
    goes on in the background)."""
    req: schemas.RotateKeyRequest = rq.parse(schemas.RotateKeyRequest)
    rq.index_target("admin", req)
    if (req.new_index_key is None) == (req.new_kms_name is None):
        raise InvalidRequest("give exactly one of new_index_key and new_kms_name")
    c, new_kek = rq.app(), rq.kek(req.new_index_key)
    done = rq.index().rotate(
        new_kek,
        req.new_kms_name,
        c.trainer,
        kms_name=req.kms_name,
        reencrypt=bool(req.reencrypt),
        wait_seconds=c.settings.train_sync_seconds,
    )
    body: dict[str, Any] = {
        "status": "success",
        "message": f"The key of index '{req.index_name}' was rotated; the old key no longer opens it"
        + _REWRITE[done.rewrite],
        "key_mode": done.key_mode,
    }
    if done.rewrite in ("running", "retry"):
        return rq.answer(202, body | {"status": "rewriting"})
    return rq.ok(body)


_REWRITE = {  # what the answer to a rotation says of its rewrite (``model.Rotation``)
    "none": "",
    "done": "; every object was rewritten under a new data key",
    "running": "; its objects are being rewritten under the new data key in the background "
    "(see key_rotation in /v1/indexes/describe)",
    "retry": "; rewriting its objects under the new data key failed for now and is taken up "
    "again by the next request on the index (see key_rotation in /v1/indexes/describe)",
}


@route("POST", "/v1/indexes/train", schemas.TrainRequest, answer=responses.Message, accepted=True)
def train_index() -> Response:
    """Train the index's IVF lists (k-means) and compact its rows into one run.

    Answers when done if it fits the synchronous budget, else 202 while it goes on in the
    background (see training-status)."""
    req: schemas.TrainRequest = rq.parse(schemas.TrainRequest)
    rq.index_target("admin", req)
    params: dict[str, Any] = {"n_lists": req.n_lists or None}
    if req.max_iters:
        params["max_iters"] = req.max_iters
    if req.tolerance is not None:
        params["tolerance"] = float(req.tolerance)
    c = rq.app()
    result = rq.index().train(c.trainer, params, c.settings.train_sync_seconds)
    if result is None:
        return rq.answer(
            202,
            {
                "status": "queued",
                "message": f"Training of index '{req.index_name}' continues in the background; "
                "see /v1/indexes/training-status",
            },
        )
    return rq.ok({"status": "success", "message": result.message})


@route("GET", "/v1/indexes/training-status", answer=responses.TrainingStatus)
def training_status() -> Response:
    """The caller's indexes being trained or queued for training (an admin key)."""
    principal = rq.principal("admin")
    c = rq.app()
    local = c.trainer.status(principal.tenant)
    progress = c.service.training_progress(principal.tenant)  # each head read once
    marked = [(name, str(mark["state"])) for name, mark in progress.items()]
    queued = list(dict.fromkeys(local["queued_indexes"] + [n for n, s in marked if s == "queued"]))
    current = local["currently_training"] or next((n for n, s in marked if s == "running"), None)
    training = list(dict.fromkeys(([current] if current else []) + queued + [n for n, _ in marked]))
    return rq.ok(
        {
            "training_indexes": training,
            "currently_training": current,
            "queued_indexes": queued,
            "retrain_threshold": c.settings.train_threshold,
            "worker_running": bool(local["worker_running"]),
            "worker_pid": worker_pid(),
            "global_training": progress,
        }
    )
