"""Async training in AWS: the ApiFunction seals the key with KMS (moto), TrainFunction opens it."""

import json
import os

import boto3
import numpy as np
import pytest
from moto import mock_aws

from ciphervec.engine.arrays.backend import select
from ciphervec.engine.model import IndexConfig, RowBatch
from ciphervec.engine.service import IndexService
from ciphervec.handlers import train as train_handler
from ciphervec.infra import wiring
from ciphervec.infra.kms import AwsKmsWrapper
from ciphervec.infra.settings import Settings
from ciphervec.infra.storage.memory import MemoryStore
from ciphervec.infra.training import IndexJob, LambdaTrainer, LocalTrainer
from tests.conftest import BACKEND, FAKE_AWS, clustered


class RecordingLambda:
    """Stands in for the Lambda service's invoke endpoint only (the network hop)."""

    def __init__(self):
        self.calls = []

    def invoke(self, **kwargs):
        self.calls.append(kwargs)
        return {"StatusCode": 202}


@pytest.fixture
def aws(monkeypatch):
    for k, v in FAKE_AWS.items():
        monkeypatch.setenv(k, v)
    with mock_aws():
        kms = boto3.client("kms")
        key_id = kms.create_key()["KeyMetadata"]["KeyId"]
        yield kms, key_id


def test_enqueue_seals_the_key_and_train_function_trains(aws, tmp_path):
    kms, key_id = aws
    settings = Settings(
        store_uri=f"file://{tmp_path}/d",
        keys_uri="memory://",
        kms_uri="aws",
        kms_keys={"default": key_id, "jobs": key_id},
        train_function="ciphervec-train",
        train_threshold=100,
    )
    recorder = RecordingLambda()
    c = wiring.configure(settings, kms=kms, **{"lambda": recorder})
    assert isinstance(c.trainer, LambdaTrainer)
    kek = os.urandom(32)
    c.service.create_index("default", "big", IndexConfig(), kek=kek)
    x = clustered(400, 8)
    result = c.service.upsert("default", "big", kek, RowBatch([str(i) for i in range(400)], x))
    assert result.training_triggered
    c.trainer.enqueue("default", "big", kek)
    (call,) = recorder.calls
    assert call["InvocationType"] == "Event" and call["FunctionName"] == "ciphervec-train"
    payload = call["Payload"]
    assert kek not in payload and kek.hex().encode() not in payload
    assert len(payload) < 1 << 20  # async invoke payload limit
    assert c.service.training_indexes("default") == [("big", "queued")]

    # TrainFunction: a fresh container over the same store, same KMS
    worker = wiring.configure(settings.with_(train_function=""), kms=kms)
    assert isinstance(worker.trainer, LocalTrainer)
    out = train_handler.lambda_handler(json.loads(payload), None)
    assert out == {"status": "success", "n_lists": 16}
    assert worker.service.describe("default", "big", kek)["is_trained"] is True
    assert worker.service.training_indexes("default") == []


def test_sealed_key_is_bound_to_its_index(aws):
    kms, key_id = aws
    svc = IndexService(MemoryStore(), AwsKmsWrapper({"jobs": key_id}, client=kms), backend=select(BACKEND))
    trainer = LambdaTrainer(svc, "fn", client=RecordingLambda())
    sealed = trainer.seal("t", "a", os.urandom(32))
    with pytest.raises(Exception) as info:
        trainer.open({"tenant": "t", "index_name": "b", "sealed_key": sealed})
    assert type(info.value).__name__ == "WrongKey"


def test_small_explicit_train_runs_inline_in_lambda(aws):
    kms, key_id = aws
    svc = IndexService(MemoryStore(), AwsKmsWrapper({"jobs": key_id}, client=kms), backend=select(BACKEND))
    recorder = RecordingLambda()
    trainer = LambdaTrainer(svc, "fn", client=recorder)
    kek = os.urandom(32)
    svc.create_index("t", "small", IndexConfig(), kek=kek)
    svc.upsert("t", "small", kek, RowBatch([str(i) for i in range(300)], clustered(300, 8)))
    result = trainer.train(IndexJob("t", "small", kek, {"n_lists": 4}), wait_seconds=25)
    assert result is not None and result.training is not None and result.training.trained
    assert recorder.calls == [] and result.kind == "train"
    np.testing.assert_equal(svc.describe("t", "small", kek)["n_lists"], 4)


def test_sizing_a_training_in_lambda_loads_no_row(aws, monkeypatch):
    """The API container decides inline or TrainFunction from the head alone: a cold one
    handing a training on never loads the index (minutes and gigabytes at 10M rows)."""
    kms, key_id = aws
    store, kek = MemoryStore(), os.urandom(32)
    svc = IndexService(store, AwsKmsWrapper({"jobs": key_id}, client=kms), backend=select(BACKEND))
    svc.create_index("t", "big", IndexConfig(), kek=kek)
    svc.upsert("t", "big", kek, RowBatch([str(i) for i in range(300)], clustered(300, 8)))
    cold = IndexService(store, AwsKmsWrapper({"jobs": key_id}, client=kms), backend=select(BACKEND))

    def loads(*args, **kwargs):
        raise AssertionError("the index was loaded to size its training")

    monkeypatch.setattr(cold.cache, "snapshot", loads)
    recorder = RecordingLambda()
    assert LambdaTrainer(cold, "fn", client=recorder).train(IndexJob("t", "big", kek), wait_seconds=0) is None
    (call,) = recorder.calls
    assert json.loads(call["Payload"])["kind"] == "train"
    assert cold.open("t", "big", kek).estimated_rows == 300


def test_a_big_rewrite_goes_to_train_function_with_the_new_key_sealed(aws, tmp_path):
    """rotate_key with reencrypt in Lambda: past the inline budget the rewrite is invoked
    asynchronously, the new client key sealed by KMS; TrainFunction rewrites every object."""
    kms, key_id = aws
    settings = Settings(
        store_uri=f"file://{tmp_path}/d",
        keys_uri="memory://",
        kms_uri="aws",
        kms_keys={"default": key_id, "jobs": key_id},
        train_function="ciphervec-train",
    )
    recorder = RecordingLambda()
    c = wiring.configure(settings, kms=kms, **{"lambda": recorder})
    old, new = os.urandom(32), os.urandom(32)
    c.service.create_index("default", "idx", IndexConfig(), kek=old)
    c.service.upsert("default", "idx", old, RowBatch([str(i) for i in range(300)], clustered(300, 8)))
    c.service.rotate_key("default", "idx", old, new, None, reencrypt=True)
    assert c.trainer.train(IndexJob("default", "idx", new, kind="reencrypt"), wait_seconds=0) is None
    (call,) = recorder.calls
    payload = call["Payload"]
    assert new not in payload and new.hex().encode() not in payload and old.hex().encode() not in payload
    assert json.loads(payload)["kind"] == "reencrypt"

    worker = wiring.configure(settings.with_(train_function=""), kms=kms)
    out = train_handler.lambda_handler(json.loads(payload), None)
    assert out["status"] == "success"
    rotation = worker.service.describe("default", "idx", new)["key_rotation"]
    assert rotation["objects_under_old_keys"] == 0 and not rotation["rewriting"]
    assert worker.service.num_vectors("default", "idx", new) == 300


def test_an_upsert_whose_training_cannot_be_queued_is_acknowledged_and_gives_the_mark_back(aws, tmp_path):
    """The commit went through, then the queue (an async invoke of a TrainFunction that does
    not exist: moto's real error) refuses the job: the upsert still answers 200 with every
    row kept, says no training was triggered, and leaves no ``queued`` mark behind to block
    automatic training for an hour; the next write with a working queue triggers it."""
    from ciphervec.engine.store.manifest import parse_envelope
    from tests.test_api import EVENT_ROOT_KEY, KEY, call, create, upsert_b64

    kms, key_id = aws
    settings = Settings(
        store_uri=f"file://{tmp_path}/d",
        keys_uri="memory://",
        root_key=EVENT_ROOT_KEY,
        kms_uri="aws",
        kms_keys={"default": key_id, "jobs": key_id},
        train_function="no-such-function",
        train_threshold=100,
    )
    c = wiring.configure(settings, kms=kms)
    assert create()[0] == 200
    x = clustered(400, 8)
    status, body, _ = upsert_b64("idx", [str(i) for i in range(400)], x)
    assert status == 200 and "training_triggered" not in body, body
    describe = call("POST", "/v1/indexes/describe", {"index_name": "idx", "index_key": KEY})[1]
    assert describe["is_trained"] is False
    (head_key,) = [k for k in c.service.store.list("") if k.endswith("/head")]
    assert parse_envelope(c.service.store.get(head_key)[0])[0].training is None  # given back
    assert (
        call("POST", "/v1/vectors/num_vectors", {"index_name": "idx", "index_key": KEY})[1]["result"] == 400
    )

    c.trainer = LocalTrainer(c.service)  # the queue works again
    status, body, _ = upsert_b64("idx", ["last"], clustered(1, 8, seed=3))
    assert status == 200 and body.get("training_triggered") is True, body
