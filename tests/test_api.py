"""The handler driven by API Gateway events: every row of the API.md §3 status table."""

import base64
import json
import os
import time

import numpy as np
import pytest

from ciphervec.engine.model import RowBatch
from ciphervec.engine.service import IndexService
from ciphervec.engine.store.manifest import RetryPolicy
from ciphervec.handlers.api import lambda_handler
from ciphervec.infra.settings import Settings
from ciphervec.infra.wiring import configure
from tests.conftest import ROOT
from tests.test_service import RacingStore

EVENTS = ROOT / "events"
EVENT_ROOT_KEY = "example-root-key-change-me"
KEY = "ab" * 32


def make_event(method, path, body=None, key=EVENT_ROOT_KEY, raw=None, headers=None, rest=False, stage=None):
    hdrs = {"content-type": "application/json", **(headers or {})}
    if key is not None:
        hdrs["x-api-key"] = key
    text = raw if raw is not None else (json.dumps(body) if body is not None else None)
    if rest:
        return {
            "resource": "/{proxy+}",
            "path": path,
            "httpMethod": method,
            "headers": hdrs,
            "multiValueHeaders": {k: [v] for k, v in hdrs.items()},
            "queryStringParameters": None,
            "requestContext": {
                "requestId": "rest-req",
                "stage": "prod",
                "httpMethod": method,
                "path": "/prod" + path,
            },
            "body": text,
            "isBase64Encoded": False,
        }
    raw_path = (f"/{stage}" if stage else "") + path
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": raw_path,
        "rawQueryString": "",
        "headers": hdrs,
        "requestContext": {
            "http": {"method": method, "path": raw_path, "sourceIp": "127.0.0.1"},
            "requestId": "req-1",
            "stage": stage or "$default",
        },
        "body": text,
        "isBase64Encoded": False,
    }


def call(method, path, body=None, **kw):
    out = lambda_handler(make_event(method, path, body, **kw), None)
    payload = json.loads(out["body"]) if out.get("body") else None
    return out["statusCode"], payload, out.get("headers") or {}


@pytest.fixture
def app(tmp_path):
    settings = Settings(
        store_uri=f"file://{tmp_path}/data",
        keys_uri="memory://",
        root_key=EVENT_ROOT_KEY,
        kms_uri=f"local://{tmp_path}/kms",
        train_threshold=1000,
        max_body_bytes=1 << 20,
        max_top_k=1000,
        train_sync_seconds=30,
    )
    return configure(settings)


def create(name="idx", key=KEY, **extra):
    return call("POST", "/v1/indexes/create", {"index_name": name, "index_key": key, **extra})


def upsert_b64(name, ids, vecs, key=KEY, **batch):
    b = {
        "ids": ids,
        "vectors_b64": base64.b64encode(np.asarray(vecs, "<f4").tobytes()).decode(),
        "dimension": int(np.asarray(vecs).shape[1]),
        **batch,
    }
    return call("POST", "/v1/vectors/upsert_binary", {"index_name": name, "index_key": key, "batch": b})


def count(name="idx", key=KEY):
    return call("POST", "/v1/vectors/num_vectors", {"index_name": name, "index_key": key})[1]["result"]


def test_seed_events_from_events_folder(app):
    for name, expected in (
        ("health", None),
        ("create", {"status": "success", "message": "Index 'seed-index' created successfully"}),
        ("upsert_binary", {"status": "success", "message": "Upserted 2 vectors"}),
    ):
        out = lambda_handler(json.loads((EVENTS / f"{name}.json").read_text()), None)
        assert out["statusCode"] == 200, out
        if expected:
            assert json.loads(out["body"]) == expected
        assert out["headers"]["X-Request-Id"].startswith("example-")
    out = lambda_handler(json.loads((EVENTS / "query.json").read_text()), None)
    results = json.loads(out["body"])["results"]
    assert results[0] == {"id": "doc-1", "distance": 0.0, "metadata": {"lang": "en"}}
    assert results[1]["id"] == "doc-2" and results[1]["metadata"] == {}


def test_health_needs_no_key(app):
    status, body, headers = call("GET", "/v1/health", key=None)
    assert status == 200 and body["status"] == "healthy" and isinstance(body["version"], str)
    assert "Server-Timing" in headers


def test_missing_and_bad_api_key_are_401(app):
    assert call("GET", "/v1/indexes/list", key=None)[:2] == (
        401,
        {"status_code": 401, "detail": "API key is required"},
    )
    assert call("GET", "/v1/indexes/list", key="cv_0000000000000000_" + "0" * 64)[0] == 401


def test_wrong_index_key_is_401_warm_and_cold(app, tmp_path):
    create()
    upsert_b64("idx", ["a"], [[1, 2, 3, 4]])
    other = "cd" * 32
    assert call("POST", "/v1/vectors/num_vectors", {"index_name": "idx", "index_key": other})[0] == 401
    configure(app.settings)  # a fresh container: nothing cached
    assert call("POST", "/v1/indexes/describe", {"index_name": "idx", "index_key": other})[0] == 401
    assert call("POST", "/v1/indexes/describe", {"index_name": "idx"})[0] == 401
    assert count() == 1


def test_unknown_index_and_other_tenant_are_404(app):
    create()
    assert call("POST", "/v1/indexes/describe", {"index_name": "nope", "index_key": KEY})[0] == 404
    other_key, _ = app.auth.create_key("other", "admin")
    assert (
        call("POST", "/v1/indexes/describe", {"index_name": "idx", "index_key": KEY}, key=other_key)[0] == 404
    )
    assert call("GET", "/v1/indexes/list", key=other_key)[1] == {"indexes": []}


def test_create_existing_is_409(app):
    assert create()[0] == 200
    assert create()[0] == 409


@pytest.mark.parametrize(
    "body",
    [
        {"index_name": "x", "index_key": "zz" * 32},
        {"index_name": "x", "index_key": "ab" * 16},
        {"index_name": "x", "index_key": KEY, "kms_name": "default"},
        {"index_name": "x"},
        {"index_name": "", "index_key": KEY},
        {"index_name": "x", "index_key": KEY, "metric": "hamming"},
        {"index_name": "x", "index_key": KEY, "dimension": -3},
        {"index_name": "x", "index_key": KEY, "embedding_model": "word2vec"},
        {"index_name": "x", "index_key": KEY, "embedding_model": "all-MiniLM-L6-v2", "dimension": 8},
        {"index_name": "x", "index_key": KEY, "storage_precision": "tq3"},
    ],
)
def test_bad_create_is_400(app, body):
    status, payload, _ = call("POST", "/v1/indexes/create", body)
    assert status == 400 and isinstance(payload["detail"], str) and payload["status_code"] == 400
    assert call("GET", "/v1/indexes/list")[1] == {"indexes": []}


def test_sdk_nulls_and_legacy_index_config_are_accepted(app):
    body = {
        "index_name": "legacy",
        "index_key": KEY,
        "kms_name": None,
        "dimension": None,
        "metric": None,
        "embedding_model": None,
        "storage_precision": None,
        "metadata_schema": None,
        "text_fields": None,
        "bm25_k1": None,
        "bm25_b": None,
        "index_config": {"type": "ivfflat", "dimension": 8, "n_lists": 4},
    }
    assert call("POST", "/v1/indexes/create", body)[0] == 200
    d = call("POST", "/v1/indexes/describe", {"index_name": "legacy", "index_key": KEY})[1]
    assert d["dimension"] == 8 and d["index_type"] == "ivfflat" and d["index_config"]["n_lists"] == 1
    assert d["is_trained"] is False and d["n_lists"] == 1 and d["bm25"] is None and d["metric"] == "euclidean"


@pytest.mark.parametrize(
    "batch",
    [
        {
            "ids": ["a", "b"],
            "vectors_b64": base64.b64encode(np.zeros(4, "<f4").tobytes()).decode(),
            "dimension": 4,
        },
        {"ids": ["a"], "vectors_b64": "!!!not-base64!!!", "dimension": 4},
        {
            "ids": ["a"],
            "vectors_b64": base64.b64encode(np.zeros(3, "<f4").tobytes()).decode(),
            "dimension": 3,
        },
        {
            "ids": ["a"],
            "vectors_b64": base64.b64encode(np.array([np.nan, 0, 0, 0], "<f4").tobytes()).decode(),
            "dimension": 4,
        },
        {"ids": [1], "vectors_b64": base64.b64encode(np.zeros(4, "<f4").tobytes()).decode(), "dimension": 4},
        {
            "ids": ["a"],
            "vectors_b64": base64.b64encode(np.zeros(4, "<f4").tobytes()).decode(),
            "dimension": 0,
        },
    ],
)
def test_bad_upserts_are_422_and_write_nothing(app, batch):
    create(dimension=4)
    upsert_b64("idx", ["keep"], [[1, 2, 3, 4]])
    status, payload, _ = call(
        "POST", "/v1/vectors/upsert_binary", {"index_name": "idx", "index_key": KEY, "batch": batch}
    )
    assert (
        status == 422
        and isinstance(payload["detail"], list)
        and {"loc", "msg", "type"} <= set(payload["detail"][0])
    )
    assert count() == 1


def test_json_upsert_errors(app):
    create(dimension=3)
    bad = [
        {"items": [{"id": 7, "vector": [1, 2, 3]}]},
        {"items": [{"id": "a", "vector": [1, 2]}, {"id": "b", "vector": [1, 2, 3]}]},
        {"items": [{"id": "a", "vector": [1, 2]}]},
        {"items": [{"id": "a", "vector": ["x", 2, 3]}]},
    ]
    for body in bad:
        assert call("POST", "/v1/vectors/upsert", {"index_name": "idx", "index_key": KEY, **body})[0] == 422
    status, payload, _ = call(
        "POST",
        "/v1/vectors/upsert",
        {"index_name": "idx", "index_key": KEY, "items": [{"id": "a", "contents": "embed me"}]},
    )
    assert status == 400 and "embedding_model" in payload["detail"]
    assert count() == 0


def test_query_validation_and_server_keeps_serving(app):
    create()
    upsert_b64("idx", ["a", "b"], [[1, 0, 0, 0], [0, 1, 0, 0]])
    q = {"index_name": "idx", "index_key": KEY, "query_vectors": [1, 0, 0, 0]}
    assert call("POST", "/v1/vectors/query", {**q, "top_k": 0})[0] == 422
    assert call("POST", "/v1/vectors/query", {**q, "top_k": 100000})[0] == 422
    assert call("POST", "/v1/vectors/query", {**q, "query_vectors": [1, 0, 0]})[0] == 422
    assert call("POST", "/v1/vectors/query", {**q, "filters": {"x": {"$near": 1}}})[0] == 400
    assert (
        call("POST", "/v1/vectors/query", {**q, "query_vectors": None, "query_contents": "hello"})[0] == 400
    )
    assert call("POST", "/v1/vectors/query", {**q, "n_probes": -1})[0] == 422
    status, body, _ = call("POST", "/v1/vectors/query", {**q, "top_k": 5, "include": ["distance"]})
    assert status == 200 and body["results"] == [
        {"id": "a", "distance": 0.0},
        {"id": "b", "distance": pytest.approx(2**0.5)},
    ]
    status, body, _ = call(
        "POST", "/v1/vectors/query", {**q, "query_vectors": [[1, 0, 0, 0], [0, 1, 0, 0]], "top_k": 1}
    )
    assert body["results"] == [[{"id": "a"}], [{"id": "b"}]]
    status, body, _ = call("POST", "/v1/vectors/query", {**q, "query_vectors": [[0, 1, 0, 0]], "top_k": 1})
    assert body["results"] == [{"id": "b"}]


def test_routing_errors(app):
    assert call("GET", "/v1/nothing")[0] == 404
    assert call("GET", "/v1/vectors/query")[0] == 405
    assert call("DELETE", "/v1/health")[0] == 405
    create()
    # a route's pattern holds to the end of the path: "$" also matched before a final newline
    assert call("GET", "/v1/indexes/idx/users")[0] != 404  # found (what it answers is beside the point)
    assert call("GET", "/v1/indexes/idx/users\n")[0] == 404
    status, payload, _ = call("POST", "/v1/indexes/describe", raw="{not json")
    assert status == 422 and isinstance(payload["detail"], list)


def test_body_over_limit_is_413(app):
    create(dimension=4)
    big = np.zeros((70000, 4), "<f4")
    status, payload, _ = upsert_b64("idx", [str(i) for i in range(70000)], big)
    assert status == 413 and "Split" in payload["detail"]
    assert count() == 0


def test_rest_v1_events_and_stage_prefix(app):
    status, body, _ = call("POST", "/v1/indexes/create", {"index_name": "r", "index_key": KEY}, rest=True)
    assert status == 200, body
    assert call("GET", "/v1/indexes/list", stage="prod")[1] == {"indexes": ["r"]}


def test_roles_are_enforced(app):
    create()
    reader, _ = app.auth.create_key("default", "read")
    writer, _ = app.auth.create_key("default", "write")
    b = {"ids": ["a"], "vectors_b64": base64.b64encode(np.ones(4, "<f4").tobytes()).decode(), "dimension": 4}
    assert (
        call(
            "POST",
            "/v1/vectors/upsert_binary",
            {"index_name": "idx", "index_key": KEY, "batch": b},
            key=reader,
        )[0]
        == 403
    )
    assert (
        call(
            "POST",
            "/v1/vectors/upsert_binary",
            {"index_name": "idx", "index_key": KEY, "batch": b},
            key=writer,
        )[0]
        == 200
    )
    assert call("POST", "/v1/indexes/create", {"index_name": "z", "index_key": KEY}, key=writer)[0] == 403
    assert call("POST", "/v1/vectors/num_vectors", {"index_name": "idx", "index_key": KEY}, key=reader)[
        1
    ] == {"result": 1}


def test_contention_is_503_with_retry_after(app):
    store = RacingStore()
    app.service = IndexService(store, retry=RetryPolicy(attempts=2, sleep=lambda s: None))
    rival = IndexService(store)
    create("hot")
    rows = lambda: RowBatch([os.urandom(4).hex()], np.ones((1, 4), np.float32))  # noqa: E731
    store.rival = lambda: rival.upsert("default", "hot", bytes.fromhex(KEY), rows())
    store.races = 100
    status, payload, headers = upsert_b64("hot", ["a"], [[1, 2, 3, 4]])
    assert status == 503 and headers["Retry-After"] == "1" and payload["status_code"] == 503


def test_training_failure_is_500_and_unexpected_errors_hide_details(app, monkeypatch):
    create()
    upsert_b64("idx", [str(i) for i in range(64)], np.random.default_rng(0).standard_normal((64, 4)))

    def broken(*a, **k):
        raise RuntimeError("kmeans exploded " + KEY)

    monkeypatch.setattr(app.service.backend, "kmeans", broken)
    status, payload, _ = call(
        "POST", "/v1/indexes/train", {"index_name": "idx", "index_key": KEY, "n_lists": 4}
    )
    assert status == 500 and KEY not in json.dumps(payload)
    monkeypatch.setattr(app.service.reader, "num_vectors", broken)
    status, payload, headers = call(
        "POST", "/v1/vectors/num_vectors", {"index_name": "idx", "index_key": KEY}
    )
    assert status == 500 and "Traceback" not in payload["detail"] and KEY not in payload["detail"]
    assert headers["X-Request-Id"] in payload["detail"]


def test_explicit_train_and_training_status(app):
    create()
    x = np.random.default_rng(1).standard_normal((400, 4)).astype(np.float32)
    upsert_b64("idx", [str(i) for i in range(400)], x)
    status, body, _ = call(
        "POST",
        "/v1/indexes/train",
        {
            "index_name": "idx",
            "index_key": KEY,
            "n_lists": 8,
            "batch_size": None,
            "max_iters": None,
            "tolerance": None,
            "max_memory": None,
        },
    )
    assert (status, body) == (200, {"status": "success", "message": "Index 'idx' trained successfully"})
    d = call("POST", "/v1/indexes/describe", {"index_name": "idx", "index_key": KEY})[1]
    assert d["is_trained"] is True and d["n_lists"] == 8
    st = call("GET", "/v1/indexes/training-status")[1]
    assert (
        st["training_indexes"] == [] and st["retrain_threshold"] == 1000 and isinstance(st["worker_pid"], int)
    )
    status, body, _ = call(
        "POST", "/v1/indexes/train", {"index_name": "idx", "index_key": KEY, "n_lists": 512}
    )
    assert status == 200 and "Queries stay exact" in body["message"]


def test_auto_training_is_triggered_with_the_seed_message(app):
    create()
    x = np.random.default_rng(2).standard_normal((1001, 4)).astype(np.float32)
    status, body, _ = upsert_b64("idx", [str(i) for i in range(1001)], x)
    assert body["training_triggered"] is True
    assert body["training_message"] == "Index training has been triggered (vectors: 1001, threshold: 1000)"
    job_done = app.trainer
    deadline = time.time() + 30
    # the job commits the trained head, then clears its status: wait for both
    while time.time() < deadline:
        trained = call("POST", "/v1/indexes/describe", {"index_name": "idx", "index_key": KEY})[1][
            "is_trained"
        ]
        if trained and job_done.status("default")["currently_training"] is None:
            break
        time.sleep(0.1)
    assert call("POST", "/v1/indexes/describe", {"index_name": "idx", "index_key": KEY})[1]["n_lists"] == 32
    assert job_done.status("default")["currently_training"] is None


def test_users_endpoints(app):
    call("POST", "/v1/indexes/create", {"index_name": "kms-idx", "kms_name": "default"})
    status, user, _ = call("POST", "/v1/indexes/kms-idx/users", {"permissions": ["read"]})
    assert status == 200 and user["api_key"].startswith("cv_")
    upsert = {
        "index_name": "kms-idx",
        "batch": {
            "ids": ["a"],
            "vectors_b64": base64.b64encode(np.ones(2, "<f4").tobytes()).decode(),
            "dimension": 2,
        },
    }
    assert call("POST", "/v1/vectors/upsert_binary", upsert)[0] == 200
    assert call("POST", "/v1/vectors/num_vectors", {"index_name": "kms-idx"}, key=user["api_key"])[1] == {
        "result": 1
    }
    assert call("POST", "/v1/vectors/upsert_binary", upsert, key=user["api_key"])[0] == 403
    create("other")
    assert (
        call(
            "POST", "/v1/vectors/num_vectors", {"index_name": "other", "index_key": KEY}, key=user["api_key"]
        )[0]
        == 403
    )
    assert call("GET", "/v1/indexes/kms-idx/users")[1] == {
        "users": [{"user_id": user["user_id"], "permissions": ["read"]}]
    }
    assert call("POST", "/v1/indexes/kms-idx/users", {"permissions": ["admin"]})[0] == 400
    status, _, _ = call("DELETE", f"/v1/indexes/kms-idx/users/{user['user_id']}")
    assert status == 204
    assert call("POST", "/v1/vectors/num_vectors", {"index_name": "kms-idx"}, key=user["api_key"])[0] == 401
    assert call("DELETE", f"/v1/indexes/kms-idx/users/{user['user_id']}")[0] == 404


def test_response_over_limit_is_413(app):
    app.settings = app.settings.with_(max_response_bytes=500)
    create()
    upsert_b64("idx", [f"id-{i}" for i in range(100)], np.ones((100, 4)))
    status, payload, _ = call("POST", "/v1/vectors/list_ids", {"index_name": "idx", "index_key": KEY})
    assert status == 413 and "limit" in payload["detail"]


def test_long_write_ahead_tail_is_merged_in_the_background(app):
    app.service.maintenance.merge_at = 3
    create()
    for n in range(4):
        upsert_b64("idx", [f"{n}-{i}" for i in range(10)], np.random.default_rng(n).standard_normal((10, 4)))
    deadline = time.time() + 30
    while time.time() < deadline and len(app.service.heads.held(("default", "idx")).body.segments) > 2:
        time.sleep(0.05)
        call("POST", "/v1/vectors/num_vectors", {"index_name": "idx", "index_key": KEY})
    assert len(app.service.heads.held(("default", "idx")).body.segments) <= 2
    assert count() == 40
    assert app.trainer.status("default") == {
        "currently_training": None,
        "queued_indexes": [],
        "worker_running": True,
    }


def test_concurrent_requests_never_see_each_others_event(app):
    """Threads resolving at once (as ``ciphervec serve`` does) each keep their own headers and
    body: powertools keeps the current event in one class attribute unless told otherwise."""
    import sys
    import threading

    create("alpha")
    create("beta")
    reader, _ = app.auth.create_key("default", "user", index_name="beta", permissions=["read"])
    wrong, total = [], []

    def describe(name, key, n=1500):
        for _ in range(n):
            status, payload, _ = call(
                "POST", "/v1/indexes/describe", {"index_name": name, "index_key": KEY}, key=key
            )
            total.append(1)
            # The beta-only key must never be used for alpha, nor answer with the other index.
            if status != 200 or payload["index_name"] != name:
                wrong.append((name, status))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often, so the two requests interleave
    try:
        threads = [
            threading.Thread(target=describe, args=("alpha", EVENT_ROOT_KEY)),
            threading.Thread(target=describe, args=("beta", reader)),
            threading.Thread(target=describe, args=("alpha", EVENT_ROOT_KEY)),
            threading.Thread(target=describe, args=("beta", reader)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert len(total) == 6000 and wrong == []


def test_turboquant_tiers_over_the_api(app):
    for tier in ("tq12", "tq8", "tq6", "tq4"):
        assert create(name=tier, storage_precision=tier, metric="cosine")[0] == 200
        assert upsert_b64(tier, ["a", "b"], [[1, 0, 0, 0], [0, 1, 0, 0]])[0] == 200
        q = {"index_name": tier, "index_key": KEY, "query_vectors": [0.9, 0.1, 0, 0], "top_k": 1}
        assert call("POST", "/v1/vectors/query", q)[1]["results"][0]["id"] == "a"
        described = call("POST", "/v1/indexes/describe", {"index_name": tier, "index_key": KEY})[1]
        assert described["storage_precision"] == tier
    big = {"index_name": "tq12", "index_key": KEY, "items": [{"id": "c", "vector": [7e4, 0, 0, 0]}]}
    assert call("POST", "/v1/vectors/upsert", big)[0] == 422  # tq12 holds trained rows as float16


def test_body_limit_defaults_256_mib_locally_and_6_mib_in_lambda(monkeypatch):
    """API.md §8: LangChain's add_texts sends ~175 MB in one upsert; API Gateway's 6 MB binds in AWS."""
    monkeypatch.delenv("CIPHERVEC_MAX_BODY_BYTES", raising=False)
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME", raising=False)
    assert Settings.from_env().max_body_bytes == 256 << 20
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "api")
    assert Settings.from_env().max_body_bytes == 6 << 20


def test_a_request_reads_its_index_head_once(app, monkeypatch):
    """A request opens its index once (``rq.index``): the hybrid query's two legs, an upsert
    and what it queues, a training's checks all share the head read when the request began."""
    create(dimension=4, metric="cosine", text_fields=["title"])
    x = np.eye(4, dtype=np.float32)
    titles = [{"title": t} for t in ("zebra crossing", "vector search", "zebra stripes", "pasta")]
    assert upsert_b64("idx", ["a", "b", "c", "d"], x, metadata=titles)[0] == 200
    store, reads = app.service.store, []
    real_get = store.get

    def get(key, *a, **k):
        reads.append(key.rsplit("/", 1)[-1])
        return real_get(key, *a, **k)

    monkeypatch.setattr(store, "get", get)
    requests = [
        ("/v1/vectors/query", {"query_vectors": x[3].tolist(), "text": "zebra stripes", "top_k": 2}),
        ("/v1/vectors/query", {"text": "zebra", "top_k": 2}),
        ("/v1/vectors/get", {"ids": ["a"]}),
        ("/v1/indexes/describe", {}),
        ("/v1/vectors/delete", {"ids": ["d"]}),
    ]
    for path, body in requests:
        reads.clear()
        status, payload, _ = call("POST", path, {"index_name": "idx", "index_key": KEY, **body})
        assert status == 200, payload
        assert reads.count("head") == 1, (path, reads)
    reads.clear()
    assert upsert_b64("idx", ["e"], x[:1], metadata=[{"title": "zebra"}])[0] == 200
    assert reads.count("head") == 1, reads


def test_training_status_reads_each_index_head_once(app, monkeypatch):
    for name in ("a", "b", "c"):
        create(name)
    store, reads = app.service.store, []
    real_get = store.get

    def get(key, *a, **k):
        reads.append(key)
        return real_get(key, *a, **k)

    monkeypatch.setattr(store, "get", get)
    status, body, _ = call("GET", "/v1/indexes/training-status")
    assert status == 200 and body["training_indexes"] == []
    heads = [k for k in reads if k.endswith("/head")]
    assert len(heads) == 3 and len(set(heads)) == 3, reads
