"""Event-driven loads on moto: a file put into the load bucket → S3's notification on SQS →
IngestFunction → rows the official SDK queries; API loads of client-key indexes with the key
sealed by KMS; bad files, redeliveries, continuations across invocations."""

from __future__ import annotations

import io
import json
import time
import urllib.request

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cyborgdb import Client
from moto.server import ThreadedMotoServer

from ciphervec.engine.model import IndexConfig
from ciphervec.handlers import api, ingest
from ciphervec.infra import wiring
from ciphervec.infra.settings import Settings
from tests.conftest import FAKE_AWS, ROOT_KEY, clustered, conforms, free_port
from tests.test_sdk_server import scan_for_plaintext

AWS = FAKE_AWS
D = 32
DATA, LOADS = "cv-data", "cv-loads"


class Context:
    """The two things IngestFunction asks of its Lambda context."""

    function_name = "ingest"
    aws_request_id = "test"

    def __init__(self, seconds: float = 900.0):
        self.deadline = time.monotonic() + seconds

    def get_remaining_time_in_millis(self) -> int:
        return int((self.deadline - time.monotonic()) * 1000)


@pytest.fixture
def moto_aws(monkeypatch, tmp_path):
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    urllib.request.urlopen(
        urllib.request.Request(url + "/moto-api/reset", method="POST")
    ).read()  # moto's state is per process
    for k, v in {**AWS, "AWS_ENDPOINT_URL": url}.items():
        monkeypatch.setenv(k, v)
    s3, sqs, kms = boto3.client("s3"), boto3.client("sqs"), boto3.client("kms")
    s3.create_bucket(Bucket=DATA)
    s3.create_bucket(Bucket=LOADS)
    dlq = sqs.create_queue(QueueName="ingest-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    queue = sqs.create_queue(
        QueueName="ingest",
        Attributes={
            "VisibilityTimeout": "1",
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "3"}),
        },
    )["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(
        Bucket=LOADS,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "QueueArn": arn,
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {"Key": {"FilterRules": [{"Name": "suffix", "Value": ext}]}},
                }
                for ext in (".parquet",)
            ]
        },
    )
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    test_event = sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=1)["Messages"]  # S3 says hello
    assert json.loads(test_event[0]["Body"])["Event"] == "s3:TestEvent"
    assert ingest.lambda_handler(event(test_event, arn), Context()) == {"batchItemFailures": []}
    sqs.delete_message(QueueUrl=queue, ReceiptHandle=test_event[0]["ReceiptHandle"])
    settings = Settings(
        store_uri=f"s3://{DATA}/idx",
        keys_uri=f"file://{tmp_path}/keys.json",
        root_key=ROOT_KEY,
        kms_uri="aws",
        kms_keys={"default": key_id, "jobs": key_id},
        load_queue=queue,
        load_bucket=LOADS,
        train_threshold=10**9,
    )
    c = wiring.configure(settings)
    yield {
        "s3": s3,
        "sqs": sqs,
        "queue": queue,
        "dlq": dlq,
        "c": c,
        "url": url,
        "key_id": key_id,
        "queue_arn": arn,
    }
    server.stop()


def parquet_bytes(ids, x, meta=None) -> bytes:
    cols = {"id": pa.array(ids), "vector": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1])}
    if meta is not None:
        cols["metadata"] = pa.array(meta)
    buf = io.BytesIO()
    pq.write_table(pa.table(cols), buf, row_group_size=500)
    return buf.getvalue()


def drain(moto_aws, wait: float = 0.5) -> list[dict]:
    """Messages waiting on the ingest queue, as the SQS event Lambda would be given."""
    out = []
    deadline = time.time() + 5
    while time.time() < deadline:
        got = moto_aws["sqs"].receive_message(
            QueueUrl=moto_aws["queue"], MaxNumberOfMessages=10, WaitTimeSeconds=0
        )
        msgs = got.get("Messages", [])
        out.extend(msgs)
        if not msgs and out:
            break
        if not msgs:
            time.sleep(0.1)
    for m in out:
        moto_aws["sqs"].delete_message(QueueUrl=moto_aws["queue"], ReceiptHandle=m["ReceiptHandle"])
    return out


def event(msgs: list[dict], arn: str) -> dict:
    return {
        "Records": [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": {},
                "messageAttributes": {},
                "md5OfBody": m["MD5OfBody"],
                "eventSource": "aws:sqs",
                "eventSourceARN": arn,
                "awsRegion": "us-east-1",
            }
            for m in msgs
        ]
    }


def result(moto_aws, key: str) -> dict:
    return json.loads(moto_aws["s3"].get_object(Bucket=LOADS, Key=key + ".result.json")["Body"].read())


def test_dropped_file_loads_and_the_sdk_queries_it(moto_aws, server_factory, monkeypatch):
    c = moto_aws["c"]
    c.service.create_index("default", "docs", IndexConfig(dimension=D, metric="cosine"), kms_name="default")
    x = clustered(2000, D, seed=1)
    ids = [f"doc-{i}" for i in range(2000)]
    meta = [json.dumps({"n": i}) for i in range(2000)]
    moto_aws["s3"].put_object(
        Bucket=LOADS, Key="default/docs/batch 1.parquet", Body=parquet_bytes(ids, x, meta)
    )
    msgs = drain(moto_aws)
    assert len(msgs) == 1 and "Records" in json.loads(msgs[0]["Body"])  # S3's own notification
    out = ingest.lambda_handler(event(msgs, moto_aws["queue_arn"]), Context())
    assert out == {"batchItemFailures": []}
    res = result(moto_aws, "default/docs/batch 1.parquet")
    assert res["status"] == "succeeded" and res["rows_loaded"] == 2000 and res["index_count"] == 2000
    assert res["rows_refused"] == 0 and res["seconds"] > 0

    # a redelivered notification: no second load, no second commit
    head = c.service.heads.open("default", "docs", None)
    again = ingest.lambda_handler(event(msgs, moto_aws["queue_arn"]), Context())
    assert again == {"batchItemFailures": []}
    assert c.service.heads.open("default", "docs", None).body.segments == head.body.segments

    # the official SDK, over HTTP, against a server on the same store
    env = {
        **AWS,
        "AWS_ENDPOINT_URL": moto_aws["url"],
        "CIPHERVEC_KMS": "aws",
        "CIPHERVEC_KMS_KEYS": json.dumps({"default": moto_aws["key_id"]}),
    }
    srv = server_factory("--store", f"s3://{DATA}/idx", env=env)
    idx = Client(srv.url, ROOT_KEY).load_index("docs")
    hits = idx.query(query_vectors=x[:5], top_k=1, include=["metadata"])
    assert [h[0]["id"] for h in hits] == ids[:5]
    assert hits[3][0]["metadata"] == {"n": 3}

    blobs = []
    for obj in moto_aws["s3"].list_objects_v2(Bucket=DATA)["Contents"]:
        blobs.append((obj["Key"], moto_aws["s3"].get_object(Bucket=DATA, Key=obj["Key"])["Body"].read()))
    needles = [i.encode() for i in ids[100:150]] + [x[i].tobytes() for i in range(5)] + [b"batch 1"]
    assert scan_for_plaintext(blobs, needles) == []


def test_bad_file_loads_nothing_and_result_says_why(moto_aws):
    c = moto_aws["c"]
    c.service.create_index("default", "docs", IndexConfig(dimension=D), kms_name="default")
    x = clustered(1200, D, seed=2)
    x[777, 0] = np.inf
    moto_aws["s3"].put_object(
        Bucket=LOADS, Key="default/docs/bad.parquet", Body=parquet_bytes([f"b{i}" for i in range(1200)], x)
    )
    out = ingest.lambda_handler(event(drain(moto_aws), moto_aws["queue_arn"]), Context())
    assert out == {"batchItemFailures": []}
    res = result(moto_aws, "default/docs/bad.parquet")
    assert res["status"] == "failed" and res["rows_loaded"] == 0
    assert res["refused"] == [{"row": 777, "reason": "vector has NaN or Inf values"}]
    assert c.service.num_vectors("default", "docs", None) == 0
    assert not [
        o for o in moto_aws["s3"].list_objects_v2(Bucket=DATA).get("Contents", []) if "/load/" in o["Key"]
    ]


def test_client_key_index_is_refused_from_the_bucket(moto_aws):
    c = moto_aws["c"]
    c.service.create_index("default", "mine", IndexConfig(dimension=D), kek=bytes(range(32)))
    moto_aws["s3"].put_object(
        Bucket=LOADS, Key="default/mine/a.parquet", Body=parquet_bytes(["a"], clustered(1, D))
    )
    ingest.lambda_handler(event(drain(moto_aws), moto_aws["queue_arn"]), Context())
    res = result(moto_aws, "default/mine/a.parquet")
    assert res["status"] == "failed" and "kms_name" in res["error"]


def test_long_load_continues_in_the_next_invocation_and_commits_once(moto_aws, monkeypatch):
    from ciphervec.infra import formats

    monkeypatch.setattr(formats, "MAX_CHUNK_ROWS", 1000)
    c = moto_aws["c"]
    c.service.create_index("default", "docs", IndexConfig(dimension=D), kms_name="default")
    x = clustered(3000, D, seed=3)
    moto_aws["s3"].put_object(
        Bucket=LOADS, Key="default/docs/long.parquet", Body=parquet_bytes([f"l{i}" for i in range(3000)], x)
    )
    msgs = drain(moto_aws)
    # an invocation with only a little time left: it takes one chunk, checkpoints, re-queues
    ingest.lambda_handler(event(msgs, moto_aws["queue_arn"]), Context(seconds=ingest.MARGIN_SECONDS - 1))
    with pytest.raises(Exception):
        moto_aws["s3"].get_object(Bucket=LOADS, Key="default/docs/long.parquet.result.json")
    assert c.service.num_vectors("default", "docs", None) == 0
    follow = drain(moto_aws)
    assert len(follow) == 1 and json.loads(follow[0]["Body"])["kind"] == "ciphervec-load"
    assert json.loads(follow[0]["Body"])["sealed_key"] is None  # a kms index: no key travels
    # the continuation and a duplicate of it arrive together
    ingest.lambda_handler(event(follow + follow, moto_aws["queue_arn"]), Context())
    res = result(moto_aws, "default/docs/long.parquet")
    assert res["status"] == "succeeded" and res["rows_loaded"] == 3000 and res["invocations"] == 2
    head = c.service.heads.open("default", "docs", None)
    assert sum(s.rows for s in head.body.segments) == 3000


def api_call(method: str, path: str, body=None, key=ROOT_KEY, headers=None):
    ev = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {"x-api-key": key, "content-type": "application/json", **(headers or {})},
        "requestContext": {
            "http": {"method": method, "path": path, "sourceIp": "127.0.0.1"},
            "requestId": "r",
            "stage": "$default",
        },
        "body": json.dumps(body) if body is not None else None,
        "isBase64Encoded": False,
    }
    out = api.lambda_handler(ev, None)
    return out["statusCode"], json.loads(out["body"])


def test_api_load_of_a_client_key_index_seals_the_key(moto_aws):
    c = moto_aws["c"]
    key = bytes(range(32))
    c.service.create_index("default", "mine", IndexConfig(dimension=D), kek=key)
    x = clustered(700, D, seed=4)
    moto_aws["s3"].put_object(
        Bucket=LOADS, Key="default/staging/f.parquet", Body=parquet_bytes([f"m{i}" for i in range(700)], x)
    )
    drain(moto_aws)  # the bucket's own notification: no index named "staging", handled elsewhere
    status, body = api_call(
        "POST",
        "/v1/vectors/load",
        {"index_name": "mine", "index_key": key.hex(), "source": f"s3://{LOADS}/default/staging/f.parquet"},
    )
    assert status == 202 and body["status"] == "queued" and len(body["job_id"]) == 32
    conforms("POST", "/v1/vectors/load", body)  # the answer the OpenAPI document gives
    msgs = drain(moto_aws)
    assert len(msgs) == 1
    raw = msgs[0]["Body"]
    assert key.hex() not in raw and json.loads(raw)["sealed_key"]
    status, body2 = api_call("GET", f"/v1/loads/{body['job_id']}")
    assert status == 200 and body2["status"] == "queued"
    assert ingest.lambda_handler(event(msgs, moto_aws["queue_arn"]), Context()) == {"batchItemFailures": []}
    status, done = api_call("GET", f"/v1/loads/{body['job_id']}")
    assert status == 200 and done["status"] == "succeeded" and done["rows_loaded"] == 700
    conforms("GET", f"/v1/loads/{body['job_id']}", done)
    assert c.service.num_vectors("default", "mine", key) == 700
    # the same file again: the same job, already done, nothing queued
    status, same = api_call(
        "POST",
        "/v1/vectors/load",
        {"index_name": "mine", "index_key": key.hex(), "source": f"s3://{LOADS}/default/staging/f.parquet"},
    )
    assert status == 202 and same["job_id"] == body["job_id"] and same["status"] == "succeeded"
    assert drain(moto_aws) == []


def test_api_load_refusals(moto_aws):
    c = moto_aws["c"]
    key = bytes(range(32))
    c.service.create_index("default", "mine", IndexConfig(dimension=D), kek=key)
    cases = [
        ({"source": "/etc/passwd"}, 400),
        ({"source": f"s3://{LOADS}/other-tenant/x/f.parquet"}, 403),
        ({"source": f"s3://{LOADS}/default/missing.parquet"}, 404),
        ({"source": f"s3://{LOADS}/default/f.csv"}, 400),
        ({"source": f"s3://{LOADS}/default/f.parquet", "index_key": bytes(32).hex()}, 401),
    ]
    moto_aws["s3"].put_object(
        Bucket=LOADS, Key="default/f.parquet", Body=parquet_bytes(["a"], clustered(1, D))
    )
    for extra, want in cases:
        body = {"index_name": "mine", "index_key": key.hex(), **extra}
        status, out = api_call("POST", "/v1/vectors/load", body)
        assert status == want, (extra, out)
    assert api_call("GET", "/v1/loads/" + "0" * 32)[0] == 404
    assert api_call("GET", "/v1/loads/not-a-job")[0] == 404


def test_a_message_that_is_not_ours_fails_towards_the_dead_letter_queue(moto_aws):
    odd = {"MessageId": "m1", "ReceiptHandle": "r1", "Body": json.dumps({"hello": "world"}), "MD5OfBody": ""}
    fine = {
        "MessageId": "m2",
        "ReceiptHandle": "r2",
        "Body": json.dumps({"Event": "s3:TestEvent"}),
        "MD5OfBody": "",
    }
    out = ingest.lambda_handler(event([odd, fine], moto_aws["queue_arn"]), Context())
    assert out == {"batchItemFailures": [{"itemIdentifier": "m1"}]}


def test_sns_wrapped_notifications_load_too(moto_aws):
    c = moto_aws["c"]
    c.service.create_index("default", "docs", IndexConfig(dimension=D), kms_name="default")
    moto_aws["s3"].put_object(
        Bucket=LOADS, Key="default/docs/sns.parquet", Body=parquet_bytes(["s"], clustered(1, D))
    )
    s3_msg = drain(moto_aws)[0]
    wrapped = dict(s3_msg, Body=json.dumps({"Type": "Notification", "Message": s3_msg["Body"]}))
    assert ingest.lambda_handler(event([wrapped], moto_aws["queue_arn"]), Context()) == {
        "batchItemFailures": []
    }
    assert result(moto_aws, "default/docs/sns.parquet")["status"] == "succeeded"


def test_why_rows_were_refused_needs_the_index_key(moto_aws):
    c = moto_aws["c"]
    key = bytes(range(32))
    c.service.create_index("default", "mine", IndexConfig(dimension=D), kek=key)
    x = clustered(10, D, seed=5)
    x[3, 1] = np.nan
    moto_aws["s3"].put_object(
        Bucket=LOADS, Key="default/staging/bad.parquet", Body=parquet_bytes([f"b{i}" for i in range(10)], x)
    )
    drain(moto_aws)
    status, job = api_call(
        "POST",
        "/v1/vectors/load",
        {"index_name": "mine", "index_key": key.hex(), "source": f"s3://{LOADS}/default/staging/bad.parquet"},
    )
    assert status == 202
    ingest.lambda_handler(event(drain(moto_aws), moto_aws["queue_arn"]), Context())
    status, plain = api_call("GET", f"/v1/loads/{job['job_id']}")
    assert status == 200 and plain["status"] == "failed" and plain["refused"] == [{"row": 3}]
    status, opened = api_call("GET", f"/v1/loads/{job['job_id']}", headers={"x-index-key": key.hex()})
    assert opened["refused"] == [{"row": 3, "reason": "vector has NaN or Inf values"}]
    status, wrong = api_call("GET", f"/v1/loads/{job['job_id']}", headers={"x-index-key": bytes(32).hex()})
    assert status == 401


def test_a_dropped_file_of_texts_is_embedded_by_the_indexs_model(moto_aws):
    """id + contents, no vectors, into a kms index with an embedding_model: IngestFunction
    embeds every row as an upsert of contents would (where the model is installed)."""
    c = moto_aws["c"]
    if not c.embedder.available():
        pytest.skip("needs sentence-transformers and the packaged MiniLM weights")
    config = IndexConfig(embedding_model="all-MiniLM-L6-v2", metric="cosine")
    c.service.create_index("default", "notes", config, kms_name="default")
    texts = [f"note {i} on " + ("encrypted search" if i % 2 else "pasta recipes") for i in range(300)]
    buf = io.BytesIO()
    pq.write_table(pa.table({"id": [f"n{i}" for i in range(300)], "contents": texts}), buf)
    moto_aws["s3"].put_object(Bucket=LOADS, Key="default/notes/texts.parquet", Body=buf.getvalue())
    out = ingest.lambda_handler(event(drain(moto_aws), moto_aws["queue_arn"]), Context())
    assert out == {"batchItemFailures": []}
    res = result(moto_aws, "default/notes/texts.parquet")
    assert res["status"] == "succeeded" and res["rows_loaded"] == 300, res
    want = c.embedder.encode("all-MiniLM-L6-v2", [texts[11]])
    hits = c.service.query("default", "notes", None, want, top_k=1, n_probes=0, filters=None, include=[])
    assert hits[0][0]["id"] == "n11"
