"""IngestFunction: batch loads from SQS — S3 notifications of files dropped into the load
bucket under ``<tenant>/<index_name>/<file>``, and jobs ``POST /v1/vectors/load`` queued.

Each message is one record of a powertools batch with partial failures: a record that fails
on a fault (storage, KMS) goes back to the queue and, after ``maxReceiveCount`` tries, to the
dead-letter queue; its job keeps its checkpoint. A job that would outlast the invocation
checkpoints, sends itself to the queue again, and goes on in the next invocation. A dropped
file's outcome is written next to it as ``<key>.result.json``.
"""

from __future__ import annotations

import json
import time
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from ..engine.errors import CipherVecError, LoadBusy, LostLease
from ..engine.store.jobs import LoadJob
from ..infra.loading import QueueLoads, Target, start, work
from ..infra.metrics import emit_events
from ..infra.sources import file_format, s3_event_key
from ..infra.wiring import Container, container

logger = Logger(service="ciphervec-ingest")
processor = BatchProcessor(event_type=EventType.SQS)
RESULT_SUFFIX = ".result.json"
# Stop taking chunks when less than this is left of the invocation (a chunk and the commit fit).
MARGIN_SECONDS = 90.0


def _queue(c: Container) -> QueueLoads:
    loads = c.loads
    if isinstance(loads, QueueLoads):
        return loads
    return QueueLoads(c.service, c.settings.load_queue)


def _result(c: Container, bucket: str, key: str, body: dict[str, Any]) -> None:
    s3 = c.s3
    if s3 is None:
        import boto3

        s3 = boto3.client("s3")
    s3.put_object(
        Bucket=bucket,
        Key=key + RESULT_SUFFIX,
        Body=json.dumps(body, indent=2).encode(),
        ContentType="application/json",
    )


def _failed(error: str, started: float) -> dict[str, Any]:
    return {"status": "failed", "error": error, "rows_loaded": 0, "seconds": round(time.time() - started, 3)}


class Invocation:
    """What one Lambda invocation may still do."""

    def __init__(self, context: Any) -> None:
        self.context = context

    def should_stop(self) -> bool:
        remaining = getattr(self.context, "get_remaining_time_in_millis", None)
        return remaining is not None and remaining() < MARGIN_SECONDS * 1000


def _advance(
    c: Container, target: Target, job: str, result_to: dict[str, str] | None, run: Invocation
) -> None:
    try:
        done = work(
            c.service,
            target,
            job,
            s3=c.s3,
            should_stop=run.should_stop,
            trainer=c.trainer,
            embedder=c.embedder,
        )
    except (LoadBusy, LostLease):
        logger.info("load job is being run elsewhere", extra={"job_id": job})
        return
    _report(c, target, done, result_to)


def _report(c: Container, target: Target, done: LoadJob, result_to: dict[str, str] | None) -> None:
    logger.info(
        "load job",
        extra={"job_id": done.job_id, "state": done.state, "rows": done.rows_read, "seconds": done.seconds},
    )
    if done.state == "paused":
        queue = _queue(c)
        queue.send(queue.message(target, done.job_id, result_to))
    elif result_to is not None:
        _result(c, result_to["bucket"], result_to["key"], done.status())


def _dropped_file(c: Container, rec: dict[str, Any], run: Invocation) -> None:
    """A file put into the load bucket: ``<tenant>/<index_name>/<name>.<ext>``."""
    bucket = rec["s3"]["bucket"]["name"]
    key = s3_event_key(rec["s3"]["object"]["key"])
    if key.endswith(RESULT_SUFFIX) or file_format(key) is None:
        return  # our own results, ids sidecars, anything else
    started = time.time()
    parts = key.split("/")
    if len(parts) < 3 or not parts[0] or not parts[1]:
        _result(c, bucket, key, _failed("files go under <tenant>/<index_name>/", started))
        return
    tenant, name = parts[0], parts[1]
    try:
        if c.service.key_mode(tenant, name) != "kms":
            raise CipherVecError(
                "only indexes with a kms_name load from the bucket; use POST /v1/vectors/load "
                "with the index_key for this index"
            )
        target = Target(tenant, name, None)
        job, _ = start(c.service, target, f"s3://{bucket}/{key}", s3=c.s3)
    except CipherVecError as exc:
        _result(c, bucket, key, _failed(exc.detail, started))
        return
    _advance(c, target, job.job_id, {"bucket": bucket, "key": key}, run)


def record_handler(record: SQSRecord, run: Invocation) -> None:
    body = json.loads(record.body)
    if body.get("kind") == QueueLoads.MESSAGE:
        c = container()
        target, job = _queue(c).open(body)
        _advance(c, target, job, body.get("result_to"), run)
        return
    if body.get("Type") == "Notification" and "Message" in body:  # S3 -> SNS -> SQS
        body = json.loads(body["Message"])
    if body.get("Event") == "s3:TestEvent":
        return
    records = body.get("Records")
    if not isinstance(records, list) or not all(isinstance(r, dict) and "s3" in r for r in records):
        # Not ours to drop silently: it fails, goes back, and ends in the dead-letter queue,
        # whose alarm tells someone a notification is wired wrong.
        raise ValueError("the message is neither an S3 notification nor a ciphervec load job")
    for rec in records:
        if str(rec.get("eventName", "")).startswith("ObjectCreated"):
            _dropped_file(container(), rec, run)


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    run = Invocation(context)
    try:
        return process_partial_response(  # type: ignore[return-value]
            event=event,
            record_handler=lambda record: record_handler(record, run),
            processor=processor,
            context=context,
        )
    finally:
        emit_events("ingest")  # rows written, store bytes, trainings queued: CloudWatch EMF
