"""Where the time goes: Server-Timing per stage on every answer, Prometheus metrics on
`ciphervec serve`, CloudWatch EMF lines in Lambda — with route templates, never values."""

import json

import numpy as np

from tests.conftest import ROOT_KEY
from tests.test_api import EVENT_ROOT_KEY, KEY, call, configure, create, upsert_b64

SECRET_NAME = "payroll-index-7f3a"


def timings(headers):
    raw = {k.lower(): v for k, v in headers.items()}["server-timing"]
    return {part.split(";")[0].strip(): float(part.split("dur=")[1]) for part in raw.split(",")}


def test_server_timing_and_prometheus_metrics(server_factory, tmp_path):
    srv = server_factory("--store", f"file://{tmp_path}/data")
    body = {"index_name": SECRET_NAME, "index_key": KEY, "dimension": 4}
    status, _, headers = srv.request("POST", "/v1/indexes/create", body)
    assert status == 200 and {"auth", "store", "crypto", "app"} <= set(timings(headers))
    items = [{"id": "secret-id-1", "vector": [1, 0, 0, 0], "metadata": {"who": "alice"}}]
    assert srv.request("POST", "/v1/vectors/upsert", {**body, "items": items})[0] == 200
    q = {"index_name": SECRET_NAME, "index_key": KEY, "query_vectors": [1, 0, 0, 0], "top_k": 1}
    status, _, headers = srv.request("POST", "/v1/vectors/query", q)
    spent = timings(headers)
    assert status == 200 and {"auth", "store", "search", "app"} <= set(spent)
    assert sum(v for k, v in spent.items() if k != "app") <= spent["app"] + 0.05
    srv.request("POST", f"/v1/indexes/{SECRET_NAME}/users", {"index_key": KEY, "permissions": ["read"]})
    srv.request("GET", "/v1/nowhere", key=None)

    import urllib.request

    text = urllib.request.urlopen(srv.url + "/metrics", timeout=10).read().decode()
    assert 'ciphervec_requests_total{method="POST",route="/v1/vectors/query",status="200"} 1.0' in text
    assert 'route="/v1/indexes/<index_name>/users"' in text and 'route="other"' in text
    assert 'ciphervec_stage_seconds_count{route="/v1/vectors/query",stage="search"} 1.0' in text
    for secret in (SECRET_NAME, "secret-id-1", "alice", KEY, ROOT_KEY, "nowhere"):
        assert secret not in text
    counted = {
        line.split('"')[1]: float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("ciphervec_events_total{")
    }
    assert counted["rows_written"] == 1 and counted["cache_hits"] >= 1
    assert counted["store_bytes_written"] > 0 and counted["request_bytes"] > 0


def test_lambda_writes_embedded_metrics(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "ciphervec-api")
    from ciphervec.infra.settings import Settings

    configure(Settings(store_uri=f"file://{tmp_path}/data", keys_uri="memory://", root_key=EVENT_ROOT_KEY))
    assert create(name=SECRET_NAME)[0] == 200
    assert upsert_b64(SECRET_NAME, ["secret-id-1"], np.eye(4)[:1])[0] == 200
    capsys.readouterr()
    q = {"index_name": SECRET_NAME, "index_key": KEY, "query_vectors": [1, 0, 0, 0], "top_k": 1}
    assert call("POST", "/v1/vectors/query", q)[0] == 200
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    emf = [x for x in lines if "_aws" in x]
    assert len(emf) == 2  # the request's, and the engine events it added
    (directive,) = emf[0]["_aws"]["CloudWatchMetrics"]
    names = {m["Name"] for m in directive["Metrics"]}
    assert directive["Namespace"] == "ciphervec" and {"RequestMs", "Requests", "searchMs"} <= names
    assert emf[0]["route"] == "/v1/vectors/query"
    (directive,) = emf[1]["_aws"]["CloudWatchMetrics"]
    counted = {m["Name"]: m.get("Unit") for m in directive["Metrics"]}
    assert "route" not in emf[1] and counted["RequestBytes"] == "Bytes" and counted["CacheHits"] == "Count"
    assert emf[1]["CacheHits"] == [1.0] and "RowsWritten" not in emf[1]  # grown since the upsert
    assert SECRET_NAME not in json.dumps(emf) and "secret-id-1" not in json.dumps(emf)
    # the next request writes only what grew since
    assert call("POST", "/v1/vectors/query", q)[0] == 200
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    (events_line,) = [x for x in lines if "_aws" in x and "route" not in x]
    assert events_line["CacheHits"] == [1.0]


def test_engine_events_count_trainings_merges_and_cache_use():
    from ciphervec.engine.model import IndexConfig, RowBatch
    from ciphervec.engine.timing import events
    from ciphervec.infra.storage.memory import MemoryStore
    from tests.conftest import clustered
    from tests.test_service import fresh

    kek = bytes(range(32))
    svc = fresh(MemoryStore(), train_threshold=10**9, merge_at=2)
    svc.create_index("t", "i", IndexConfig(dimension=8), kek=kek)
    before = events()
    x = clustered(400, 8)
    for lo in range(0, 400, 100):
        svc.upsert("t", "i", kek, RowBatch([f"r{i}" for i in range(lo, lo + 100)], x[lo : lo + 100]))
    svc.delete_vectors("t", "i", kek, ["r1", "r2"])
    svc.merge_tail("t", "i", kek)
    svc.train("t", "i", kek, n_lists=4)
    svc.query("t", "i", kek, x[:1], top_k=1)
    after = events()

    def grew(name):
        return after.get(name, 0) - before.get(name, 0)

    assert grew("rows_written") == 400 and grew("rows_deleted") == 2
    assert grew("tail_merges") == 1 and grew("trainings") == 1
    assert grew("cache_hits") >= 1 and grew("store_bytes_written") > 0


def test_parallel_object_reads_count_as_io():
    """A cold trained index reads its probed IVF lists on helper threads: the request's
    wait for them is its ``io`` stage (their store, crypto and decode are not lost)."""
    from ciphervec.engine import timing
    from ciphervec.engine.model import IndexConfig, RowBatch
    from ciphervec.infra.storage.memory import MemoryStore
    from tests.conftest import clustered
    from tests.test_service import fresh

    kek, store = bytes(range(32)), MemoryStore()
    svc = fresh(store, lazy_rows=10)
    svc.create_index("t", "i", IndexConfig(dimension=8), kek=kek)
    x = clustered(800, 8)
    svc.upsert("t", "i", kek, RowBatch([f"r{i}" for i in range(800)], x))
    svc.train("t", "i", kek, n_lists=8)
    cold = fresh(store, lazy_rows=10)
    timing.begin()
    cold.query("t", "i", kek, x[:1], top_k=5, n_probes=4)
    spent = timing.end()
    assert spent["io"] > 0 and {"store", "crypto"} <= set(spent)
