"""A training queued or running in a process that died is taken up again: by the next
upsert, and by the next `ciphervec serve` on the store (server-managed keys)."""

from __future__ import annotations

import subprocess
import sys
import time

from ciphervec.engine import workers
from ciphervec.engine.model import IndexConfig, RowBatch
from ciphervec.engine.service import IndexService
from ciphervec.infra.storage import open_store
from tests.conftest import ROOT_KEY, clustered


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
