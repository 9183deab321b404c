"""Routes under /v1/vectors: upsert (JSON and binary), query, get, delete, ids, counts, metadata query."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..engine import timing
from ..engine.arrays.text import TextQuery
from ..engine.errors import InvalidRequest, ValidationFailed
from ..engine.model import INCLUDABLE, RowBatch
from . import request as rq
from . import responses, schemas
from .request import Response
from .routing import route


def _embed(texts: list[Any]) -> np.ndarray:
    """``texts`` as vectors of the index's embedding model (400 if it has none)."""
    model = rq.index().embedding_model
    if model is None:
        raise InvalidRequest(
            "this index has no embedding_model: give every item a 'vector' (or query by vector), "
            "or create the index with embedding_model to embed contents on the server"
        )
    with timing.stage("embed"):
        return rq.app().embedder.encode(model, texts)


def _upsert_response(batch: RowBatch) -> Response:
    index = rq.index()
    result = index.upsert(batch)
    body: dict[str, Any] = {"status": "success", "message": f"Upserted {result.upserted} vectors"}
    queued = index.queue_after_upsert(result, rq.app().trainer)
    if "train" in queued:
        body["training_triggered"] = True
        body["training_message"] = (
            f"Index training has been triggered (vectors: {result.total}, threshold: {result.threshold})"
        )
    return rq.ok(body)


@route("POST", "/v1/vectors/upsert", schemas.UpsertRequest, answer=responses.Upserted)
def upsert() -> Response:
    """Add or replace rows: id, vector (or contents the index's model embeds), metadata.

    Acknowledged once the rows are committed; may queue the index's training."""
    req: schemas.UpsertRequest = rq.parse(schemas.UpsertRequest)
    rq.index_target("write", req)
    rows: list[Any] = [item.vector for item in req.items]
    missing = [i for i, row in enumerate(rows) if row is None]
    if missing:
        texts = [req.items[i].contents for i in missing]
        if any(not t for t in texts):
            raise ValidationFailed("an item without 'vector' needs 'contents' to embed", ("body", "items"))
        for i, vector in zip(missing, _embed(texts), strict=True):
            rows[i] = vector
    try:
        vectors = np.array(rows, dtype=np.float32)
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
    return _upsert_response(batch)


@route("POST", "/v1/vectors/upsert_binary", schemas.UpsertBinaryRequest, answer=responses.Upserted)
def upsert_binary() -> Response:
    """Add or replace rows whose vectors come as one base64 block of little-endian float32."""
    req: schemas.UpsertBinaryRequest = rq.parse(schemas.UpsertBinaryRequest)
    rq.index_target("write", req)
    b = req.batch
    vectors = rq.decode_vectors(b.vectors_b64, len(b.ids), b.dimension, "batch")
    return _upsert_response(RowBatch(b.ids, vectors, b.metadata, b.contents))


def _text(req: schemas.SearchOptions | schemas.QueryMetadataRequest) -> TextQuery | None:
    """The request's text leg, if it has one (``text`` omitted or empty: none)."""
    if not req.text:
        return None
    weights = None if req.text_field_weights is None else [float(w) for w in req.text_field_weights]
    return TextQuery(req.text, req.text_fields, weights, bool(req.require_all_terms))


def _check_include(include: list[str]) -> None:
    """A 422 naming the values ``include`` does not take (each cut to 40 characters)."""
    unknown = [f for f in include if f not in INCLUDABLE]
    if unknown:
        named = ", ".join(repr(f[:40]) for f in unknown[:5])
        raise ValidationFailed(
            f"include takes only {', '.join(sorted(INCLUDABLE))}; not {named}", ("body", "include")
        )


def _search(req: schemas.SearchOptions, queries: np.ndarray | None) -> Response:
    c = rq.app()
    top_k = 100 if req.top_k is None else req.top_k
    if not 1 <= top_k <= c.settings.max_top_k:
        raise ValidationFailed(f"top_k must be between 1 and {c.settings.max_top_k}", ("body", "top_k"))
    include = req.include or []
    _check_include(include)
    results = rq.index().search(
        queries,
        _text(req),
        top_k=top_k,
        n_probes=req.n_probes or None,
        filters=req.filters,
        include=include,
        alpha=None if req.alpha is None else float(req.alpha),
        rrf_k=None if req.rrf_k is None else float(req.rrf_k),
        window=req.window_mult,
    )
    return rq.ok({"results": results[0] if len(results) == 1 else results})


@route("POST", "/v1/vectors/query", schemas.QueryRequest, answer=responses.Found)
def query() -> Response:
    """The nearest rows to one or more vectors, to a text (BM25), or to both (hybrid).

    Filters test the decrypted metadata; ``include`` picks the fields returned."""
    req: schemas.QueryRequest = rq.parse(schemas.QueryRequest)
    rq.index_target("read", req)
    if not req.query_vectors and req.query_contents:
        return _search(req, _embed([req.query_contents]))
    if not req.query_vectors and req.text:
        return _search(req, None)
    if not req.query_vectors:
        raise ValidationFailed("query_vectors, query_contents or text is required", ("body", "query_vectors"))
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
    return _search(req, queries)


@route("POST", "/v1/vectors/query_binary", schemas.QueryBinaryRequest, answer=responses.Found)
def query_binary() -> Response:
    """A batch of queries whose vectors come as one base64 block of little-endian float32."""
    req: schemas.QueryBinaryRequest = rq.parse(schemas.QueryBinaryRequest)
    rq.index_target("read", req)
    queries = rq.decode_vectors(req.batch.vectors_b64, None, req.batch.dimension, "batch")
    if len(queries) == 0:
        raise ValidationFailed("at least one query vector is required", ("body", "batch"))
    return _search(req, queries)


@route("POST", "/v1/vectors/get", schemas.GetRequest, answer=responses.Rows)
def get_vectors() -> Response:
    """Rows by id, with the fields ``include`` asks for (ids not there are left out)."""
    req: schemas.GetRequest = rq.parse(schemas.GetRequest)
    rq.index_target("read", req)
    include = ["vector", "contents", "metadata"] if req.include is None else req.include
    _check_include(include)
    return rq.ok({"results": rq.index().get(req.ids, include)})


@route("POST", "/v1/vectors/delete", schemas.DeleteRequest, answer=responses.Message)
def delete_vectors() -> Response:
    """Delete rows by id."""
    req: schemas.DeleteRequest = rq.parse(schemas.DeleteRequest)
    rq.index_target("write", req)
    n = rq.index().delete(req.ids)
    return rq.ok({"status": "success", "message": f"Deleted {n} vectors"})


@route("POST", "/v1/vectors/list_ids", schemas.IndexRequest, answer=responses.Ids)
def list_ids() -> Response:
    """Every id of the index."""
    req: schemas.IndexRequest = rq.parse(schemas.IndexRequest)
    rq.index_target("read", req)
    ids = rq.index().list_ids()
    return rq.ok({"ids": ids, "count": len(ids)})


@route("POST", "/v1/vectors/num_vectors", schemas.IndexRequest, answer=responses.Count)
def num_vectors() -> Response:
    """How many rows the index holds."""
    req: schemas.IndexRequest = rq.parse(schemas.IndexRequest)
    rq.index_target("read", req)
    return rq.ok({"result": rq.index().num_vectors()})


@route("POST", "/v1/vectors/query_metadata", schemas.QueryMetadataRequest, answer=responses.MetadataHits)
def query_metadata() -> Response:
    """Rows whose metadata matches filters (and text, ranked by BM25), without a vector.

    The index's field policy binds: a filter on a field that is not filterable is a 400."""
    req: schemas.QueryMetadataRequest = rq.parse(schemas.QueryMetadataRequest)
    rq.index_target("read", req)
    text = _text(req)
    if text is not None:
        if req.order_by:
            raise InvalidRequest("order_by is not supported with text: text results are ranked by score")
        found = rq.index().text_query(
            text,
            top_k=req.top_k or rq.app().settings.max_top_k,
            filters=req.filters,
            policy=True,
        )
        ids = [f["id"] for f in found]
        return rq.ok({"results": found, "ids": ids, "count": len(ids)})
    order_by, ascending = req.order_by, req.ascending is not False
    if isinstance(order_by, dict):
        if len(order_by) != 1:
            raise InvalidRequest("order_by must name exactly one field")
        ((order_by, direction),) = order_by.items()
        ascending = direction >= 0
    ids = rq.index().query_metadata(
        req.filters or {},
        top_k=req.top_k,
        order_by=order_by,
        ascending=ascending,
    )
    return rq.ok({"results": [{"id": i} for i in ids], "ids": ids, "count": len(ids)})


@route("GET", "/v1/embedding-models", answer=responses.EmbeddingModels)
def embedding_models() -> Response:
    """The embedding models this deployment runs (what ``embedding_model`` may name)."""
    rq.principal("read")
    models = [
        {"name": m.full_name, "dimension": m.dimension, "max_seq_length": m.max_seq_length}
        for m in rq.app().embedder.available()
    ]
    return rq.ok({"models": models})
