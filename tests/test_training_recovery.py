"""A training or re-encryption queued or running in a process that died is taken up again:
by the next request on the index that proves its key (an upsert, or only reads), and by the
next `ciphervec serve` on the store (server-managed keys)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from ciphervec.engine.errors import Unauthorized
from ciphervec.engine.model import IndexConfig, RowBatch
from ciphervec.engine.service import IndexService
from ciphervec.engine.store import workers
from ciphervec.infra.storage import open_store
from tests.conftest import ROOT_KEY, clustered
from tests.test_api import app  # noqa: F401 (fixture)


def dead_worker() -> str:
    """The worker name a process had, once it has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.2)"])
    name = workers.this_worker().split(":")[0] + f":{proc.pid}:" + (workers._start_time(proc.pid) or "0")
    proc.wait()
    return name


def test_worker_names_tell_the_living_from_the_dead():
    assert not workers.gone(workers.this_worker())
    assert workers.gone(dead_worker())
    assert not workers.gone("another-host:1:1") and not workers.gone("lambda") and not workers.gone(None)


def test_the_next_upsert_queues_a_training_a_dead_process_had_queued(store, kek):
    service = IndexService(store, train_threshold=100)
    service.create_index("t", "i", IndexConfig(dimension=8), kek=kek)
    x = clustered(300, 8)
    assert service.upsert("t", "i", kek, RowBatch([f"a{i}" for i in range(150)], x[:150])).training_triggered
    # before the fix: the mark of the dead process blocked every later trigger for an hour
    service.maintenance.worker = dead_worker()
    service.set_training("t", "i", kek, "queued")
    service.maintenance.worker = workers.this_worker()
    assert service.orphaned_jobs() == [("t", "i", "client", "train")]
    result = service.upsert("t", "i", kek, RowBatch([f"b{i}" for i in range(10)], x[150:160]))
    assert result.training_triggered
    assert service.heads.open("t", "i", kek).envelope.training["worker"] == workers.this_worker()
    assert service.orphaned_jobs() == []


def test_serve_queues_again_what_a_killed_server_was_training(tmp_path, server_factory):
    store_uri = f"file://{tmp_path}/data"
    env = {"CIPHERVEC_KMS": f"local://{tmp_path}/kms"}
    server = server_factory("--store", store_uri, "--train-threshold", "1000000", env=env)
    status, _, _ = server.request(
        "POST", "/v1/indexes/create", {"index_name": "k", "kms_name": "default", "dimension": 8}
    )
    assert status == 200
    x = clustered(2000, 8)
    items = [{"id": f"r{i}", "vector": x[i].tolist()} for i in range(2000)]
    assert server.request("POST", "/v1/vectors/upsert", {"index_name": "k", "items": items})[0] == 200
    server.stop()
    # what a kill -9 during training leaves: the head says "running", by a process now gone
    from ciphervec.infra.kms import open_key_wrapper

    service = IndexService(open_store(store_uri), open_key_wrapper(f"local://{tmp_path}/kms", {}))
    service.maintenance.worker = dead_worker()
    service.set_training("default", "k", None, "running")
    again = server_factory("--store", store_uri, env=env, name="again")
    deadline = time.time() + 60
    trained = False
    while time.time() < deadline and not trained:
        status, out, _ = again.request("POST", "/v1/indexes/describe", {"index_name": "k"}, key=ROOT_KEY)
        trained = status == 200 and out["is_trained"]
        time.sleep(0.2)
    assert trained
    assert "was interrupted: queued again" in again.log.read_text()


def test_a_lambda_training_past_its_invocation_deadline_is_orphaned(store, kek):
    """TrainFunction marks ``running`` with its invocation's deadline: a worker in another
    process (not visible from here) that timed out or crashed stops holding auto-training
    back a minute after that deadline, not an hour after it started."""
    now = [1_000_000.0]
    service = IndexService(store, train_threshold=100, clock=lambda: now[0])
    service.create_index("t", "i", IndexConfig(dimension=8), kek=kek)
    x = clustered(300, 8)
    service.upsert("t", "i", kek, RowBatch([f"a{i}" for i in range(150)], x[:150]))
    service.maintenance.worker = "lambda:ciphervec-train"  # not a process of this host
    service.set_training("t", "i", kek, "running", until=now[0] + 900)
    now[0] += 899
    assert service.orphaned_jobs() == []  # still within its invocation
    assert not service.upsert("t", "i", kek, RowBatch(["b0"], x[150:151])).training_triggered
    now[0] += 1 + 61
    assert service.orphaned_jobs() == [("t", "i", "client", "train")]
    assert service.upsert("t", "i", kek, RowBatch(["b1"], x[151:152])).training_triggered


def test_any_request_that_proves_the_key_takes_up_what_a_dead_process_marked(store, kek):
    service = IndexService(store, train_threshold=100)
    service.create_index("t", "i", IndexConfig(dimension=8), kek=kek)
    x = clustered(150, 8)
    service.upsert("t", "i", kek, RowBatch([f"a{i}" for i in range(150)], x))
    assert service.recover("t", "i", kek) == []  # this process's own mark holds
    service.maintenance.worker = dead_worker()
    service.set_training("t", "i", kek, "running")
    service.maintenance.worker = workers.this_worker()
    try:
        service.recover("t", "i", os.urandom(32))
        raise AssertionError("a wrong key took up the job")
    except Unauthorized:
        pass
    assert service.heads.open("t", "i", kek).envelope.training["worker"] != workers.this_worker()
    assert service.recover("t", "i", kek) == ["train"]
    mark = service.heads.open("t", "i", kek).envelope.training
    assert mark["worker"] == workers.this_worker() and mark["state"] == "queued"
    assert service.recover("t", "i", kek) == []  # taken once
    assert service.orphaned_jobs() == []


def _await_trained(server, body, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        status, out, _ = server.request("POST", "/v1/indexes/describe", body, key=ROOT_KEY)
        assert status == 200, out
        if out["is_trained"]:
            return True
        time.sleep(0.2)
    return False


def test_kill_9_during_auto_training_of_a_client_key_index_is_recovered_by_reads(tmp_path, server_factory):
    """The issue's trial: kill -9 while an automatic training of a client-key index is queued
    or running, restart, and send only describe with the right key: it gets trained."""
    store_uri = f"file://{tmp_path}/data"
    first = server_factory("--store", store_uri, "--train-threshold", "1000")
    key = os.urandom(32).hex()
    body = {"index_name": "c", "index_key": key}
    assert server_request_ok(first, "/v1/indexes/create", {**body, "dimension": 32})
    x = clustered(6000, 32)
    items = [{"id": f"r{i}", "vector": x[i].tolist()} for i in range(len(x))]
    status, out, _ = first.request("POST", "/v1/vectors/upsert", {**body, "items": items})
    assert status == 200 and out.get("training_triggered"), out
    first.proc.kill()  # SIGKILL, the moment the answer is in: the training has barely started
    first.proc.wait()
    again = server_factory("--store", store_uri, name="again")
    assert "queued again by the next request that gives its key" in again.log.read_text()
    status, out, _ = again.request("POST", "/v1/indexes/describe", body, key=ROOT_KEY)
    assert status == 200 and not out["is_trained"]  # the killed training did not finish
    assert _await_trained(again, body)
    status, out, _ = again.request("POST", "/v1/vectors/num_vectors", body, key=ROOT_KEY)
    assert status == 200 and out["result"] == 6000


def test_a_wrong_key_takes_up_nothing(tmp_path, server_factory):
    store_uri = f"file://{tmp_path}/data"
    key = os.urandom(32).hex()
    body = {"index_name": "c", "index_key": key}
    server = server_factory("--store", store_uri, "--train-threshold", "1000000")
    assert server_request_ok(server, "/v1/indexes/create", {**body, "dimension": 8})
    x = clustered(300, 8)
    items = [{"id": f"r{i}", "vector": x[i].tolist()} for i in range(len(x))]
    assert server_request_ok(server, "/v1/vectors/upsert", {**body, "items": items})
    # what a kill -9 leaves: a training marked by a process now gone
    service = IndexService(open_store(store_uri))
    kek = bytes.fromhex(key)
    service.maintenance.worker = dead_worker()
    service.set_training("default", "c", kek, "queued")
    wrong = {**body, "index_key": os.urandom(32).hex()}
    assert server.request("POST", "/v1/indexes/describe", wrong, key=ROOT_KEY)[0] == 401
    assert IndexService(open_store(store_uri)).orphaned_jobs() == [("default", "c", "client", "train")]
    assert server_request_ok(server, "/v1/indexes/describe", body)
    assert IndexService(open_store(store_uri)).orphaned_jobs() == []


def server_request_ok(server, path, body) -> bool:
    status, out, _ = server.request("POST", path, body, key=ROOT_KEY)
    assert status == 200, out
    return True


@pytest.mark.usefixtures("app")
def test_a_store_fault_while_taking_up_a_job_leaves_the_answer_as_it_was(monkeypatch):
    """The request's own work is done when recovery runs: a store that fails then (the
    re-mark's commit) is logged, the answer stands, and the next request tries again."""
    from ciphervec.engine.ports import StoreError
    from ciphervec.handlers import request as rq
    from tests.test_api import KEY, call, create, upsert_b64

    create()
    upsert_b64("idx", ["a", "b"], [[1, 0, 0, 0], [0, 1, 0, 0]])
    service = rq.app().service
    kek = bytes.fromhex(KEY)
    service.maintenance.worker = dead_worker()
    service.set_training("default", "idx", kek, "queued")  # what a killed process leaves
    service.maintenance.worker = workers.this_worker()
    assert call("POST", "/v1/vectors/num_vectors", {"index_name": "idx", "index_key": KEY})[0] == 200
    assert service.orphaned_jobs() == []  # taken up by that read (and queued)

    service.maintenance.worker = dead_worker()
    service.set_training("default", "idx", kek, "queued")
    service.maintenance.worker = workers.this_worker()
    put = service.store.put_if_match

    def failing(*args, **kwargs):
        raise StoreError("injected store fault")

    monkeypatch.setattr(service.store, "put_if_match", failing)
    status, body, _ = call("POST", "/v1/vectors/num_vectors", {"index_name": "idx", "index_key": KEY})
    assert status == 200 and body == {"result": 2}
    assert service.orphaned_jobs() == [("default", "idx", "client", "train")]
    monkeypatch.setattr(service.store, "put_if_match", put)
    assert call("POST", "/v1/indexes/describe", {"index_name": "idx", "index_key": KEY})[0] == 200
    assert service.orphaned_jobs() == []
