"""Routes of batch loads (our extension): start one from an S3 object, and follow it."""

from __future__ import annotations

from ..engine.errors import CorruptObject, IndexNotFound
from ..infra.loading import Target, check_source, start
from . import request as rq
from . import responses, schemas
from .request import Response
from .routing import route


@route("POST", "/v1/vectors/load", schemas.LoadRequest, answer=responses.LoadStatus, status=202)
def load() -> Response:
    """Load a Parquet, JSON Lines or .npy file from S3 into an index, as a job (our extension).

    All or nothing; the same file again is the same job. Follow it at /v1/loads/{job_id}."""
    req: schemas.LoadRequest = rq.parse(schemas.LoadRequest)
    tenant, kek = rq.index_target("write", req)
    c = rq.app()
    check_source(req.source, tenant, c.settings.load_sources, c.settings.load_bucket)
    columns = req.columns.model_dump(exclude_none=True) if req.columns else {}
    target = Target(tenant, req.index_name, kek)
    job, new = start(
        c.service, target, req.source, s3=c.s3, options={"columns": columns} if columns else None
    )
    if new or c.service.load_wants_worker(job):
        c.loads.enqueue(target, job.job_id)
    return rq.answer(202, {"job_id": job.job_id, **job.status()})


@route("GET", "/v1/loads/<job_id>", answer=responses.LoadStatus)
def load_status(job_id: str) -> Response:
    """A batch load's status and progress.

    Why rows were refused is sealed with the index: it is included when the server can open
    it (a kms_name index, or the key in an ``X-Index-Key`` header)."""
    c = rq.app()
    who = c.auth.authenticate(rq.header("x-api-key"))
    job = c.service.load_job(who.tenant, job_id)
    who.require("read", job.index_name)
    kek = rq.kek(rq.header("x-index-key"))
    try:
        if kek is not None or c.service.key_mode(who.tenant, job.index_name) == "kms":
            job = c.service.open(who.tenant, job.index_name, kek).read_load(job_id)
    except (IndexNotFound, CorruptObject):
        pass  # the index is gone (or was replaced): the public part is all there is
    return rq.ok(job.status())
