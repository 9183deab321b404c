"""TrainFunction: asynchronous training and write-ahead merges (invoked with
InvocationType=Event by ApiFunction).

Payload: ``{"tenant", "index_name", "sealed_key": base64|null, "params": {...},
"kind": "train"|"merge"|"reencrypt"}``; a client ``index_key`` arrives sealed under KMS, never in
plaintext.
"""

from __future__ import annotations

import time
from typing import Any

from aws_lambda_powertools import Logger

from ..engine.errors import CipherVecError
from ..infra.metrics import emit_events
from ..infra.training import LambdaTrainer, run_job
from ..infra.wiring import container

logger = Logger(service="ciphervec-train")


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    deadline = None
    if context is not None and hasattr(context, "get_remaining_time_in_millis"):
        deadline = time.time() + context.get_remaining_time_in_millis() / 1000
    try:
        return _handle(event, deadline)
    finally:
        emit_events("train")  # trainings, merges, rows rewritten, store bytes: CloudWatch EMF


def _handle(event: dict[str, Any], deadline: float | None) -> dict[str, Any]:
    c = container()
    trainer = c.trainer if isinstance(c.trainer, LambdaTrainer) else LambdaTrainer(c.service, "")
    job = trainer.open(event)
    logger.info("job started", extra={"tenant": job.tenant, "kind": job.kind})
    try:
        result = run_job(c.service, job, deadline)
    except CipherVecError as exc:
        logger.warning(
            "job failed", extra={"tenant": job.tenant, "kind": job.kind, "error": type(exc).__name__}
        )
        return {"status": "error", "error": type(exc).__name__}
    trained = result.training
    if trained is None:  # a merge, or a rewrite under a new data key
        return {"status": "success", "message": result.message}
    logger.info(
        "training finished",
        extra={"tenant": job.tenant, "n_lists": trained.n_lists, "n_probes": trained.n_probes},
    )
    return {"status": "success" if trained.trained else "skipped", "n_lists": trained.n_lists}
