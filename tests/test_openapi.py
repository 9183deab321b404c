"""The OpenAPI document describes every route with its wire model, and schemathesis, fuzzing
every operation from it against a real server (an index named as the examples say exists),
finds no server error."""

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from ciphervec.handlers import api  # noqa: F401 (registers every route)
from ciphervec.handlers.routing import ROUTES
from ciphervec.handlers.schemas import EXAMPLE_KEY
from tests.conftest import ROOT_KEY
from tests.test_api import app  # noqa: F401 (fixture)


def test_every_route_is_in_the_document(server_factory, tmp_path):
    srv = server_factory("--store", f"file://{tmp_path}/data")
    doc = json.loads(urllib.request.urlopen(srv.url + "/v1/openapi.json", timeout=10).read())
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert documented == {
        (r.method, r.template.replace("<", "{").replace(">", "}")) for r in ROUTES if r.documented
    }
    create = doc["paths"]["/v1/indexes/create"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]
    assert "embedding_model" in doc["components"]["schemas"][create["$ref"].rsplit("/", 1)[1]]["properties"]


def test_schemathesis_finds_no_server_error(server_factory, tmp_path):
    srv = server_factory("--store", f"file://{tmp_path}/data", env={"CIPHERVEC_THROTTLE_FAILURES": "1000000"})
    body = {"index_name": "docs", "index_key": EXAMPLE_KEY, "dimension": 4, "text_fields": ["title"]}
    assert srv.request("POST", "/v1/indexes/create", body)[0] == 200
    exe = Path(sys.executable).parent / "schemathesis"
    out = subprocess.run(
        [str(exe), "run", srv.url + "/v1/openapi.json", "-H", f"X-API-Key: {ROOT_KEY}"]
        + [
            "--checks",
            "not_a_server_error",
            "-n",
            "30",
            "--seed",
            "7",
            "--phases",
            "examples,coverage,fuzzing",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert out.returncode == 0, out.stdout[-3000:]
    assert "passed" in out.stdout


def test_the_docs_page_serves_the_document_offline(server_factory, tmp_path):
    srv = server_factory("--store", f"file://{tmp_path}/data")
    with urllib.request.urlopen(srv.url + "/v1/docs", timeout=10) as got:
        assert got.status == 200 and got.headers["Content-Type"].startswith("text/html")
        html = got.read().decode()
    assert "<title>ciphervec API</title>" in html and "SwaggerUIBundle(" in html
    assert "<script src" not in html and "<link" not in html  # no CDN: script and styles inlined
    doc = json.loads(urllib.request.urlopen(srv.url + "/v1/openapi.json", timeout=10).read())
    assert json.dumps(doc["paths"]["/v1/indexes/rotate_key"]).replace("</", "<\\/") in html


@pytest.mark.usefixtures("app")
def test_every_operation_is_tagged_summarised_and_its_real_answers_fit_the_document():
    """Every operation sits under a tag with a one-line summary, and documents its success
    body; a flow through every route (the handler fed API Gateway events) gets answers that
    fit those bodies exactly (a field the document does not name fails)."""
    import base64

    import numpy as np

    from ciphervec.handlers.openapi import TAGS, document
    from tests.conftest import conforms
    from tests.test_api import KEY, call

    doc = document()
    tags = {t["name"] for t in TAGS}
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op["tags"][0] in tags and op["summary"] and "\n" not in op["summary"], (method, path)
            ok = op["responses"].get("200") or op["responses"].get("202") or op["responses"]["204"]
            assert "content" not in ok or ok["content"]["application/json"]["schema"].get("$ref"), (
                method,
                path,
            )

    seen = set()

    def send(method, path, body=None, want=200, **kw):
        status, answer, _ = call(method, path, body, **kw)
        assert status == want, (method, path, status, answer)
        if answer is not None:
            seen.add(conforms(method, path, answer))
        return answer

    idx = {"index_name": "idx", "index_key": KEY}
    send("GET", "/v1/health")
    send(
        "POST",
        "/v1/indexes/create",
        {**idx, "metadata_schema": {"k": {"filterable": True}}, "text_fields": ["t"]},
    )
    x = np.random.default_rng(0).standard_normal((30, 4)).astype("<f4")
    batch = {
        "ids": [f"i{i}" for i in range(30)],
        "vectors_b64": base64.b64encode(x.tobytes()).decode(),
        "dimension": 4,
    }
    send("POST", "/v1/vectors/upsert_binary", {**idx, "batch": batch})
    item = {"id": "z", "vector": [1, 2, 3, 4], "metadata": {"k": 1, "t": "hello world"}, "contents": "hello"}
    send("POST", "/v1/vectors/upsert", {**idx, "items": [item]})
    send("GET", "/v1/indexes/list")
    send("POST", "/v1/indexes/describe", idx)
    send(
        "POST",
        "/v1/vectors/query",
        {**idx, "query_vectors": [1, 2, 3, 4], "top_k": 2, "include": ["distance", "metadata"]},
    )
    send("POST", "/v1/vectors/query", {**idx, "query_vectors": [1, 2, 3, 4], "text": "hello", "top_k": 2})
    send("POST", "/v1/vectors/query", {**idx, "query_vectors": [[1, 2, 3, 4], [0, 1, 0, 0]], "top_k": 1})
    queries = {"vectors_b64": base64.b64encode(x[:2].tobytes()).decode(), "dimension": 4}
    send("POST", "/v1/vectors/query_binary", {**idx, "batch": queries, "top_k": 1})
    send(
        "POST", "/v1/vectors/get", {**idx, "ids": ["z", "i1"], "include": ["vector", "metadata", "contents"]}
    )
    send("POST", "/v1/vectors/list_ids", idx)
    send("POST", "/v1/vectors/num_vectors", idx)
    send("POST", "/v1/vectors/query_metadata", {**idx, "filters": {"k": 1}})
    send("POST", "/v1/vectors/query_metadata", {**idx, "text": "hello"})
    send("GET", "/v1/embedding-models")
    send("POST", "/v1/indexes/train", {**idx, "n_lists": 2})
    send("GET", "/v1/indexes/training-status")
    user = send("POST", "/v1/indexes/idx/users", {"permissions": ["read"], "index_key": KEY})
    send("GET", "/v1/indexes/idx/users", headers={"x-index-key": KEY})
    send("DELETE", f"/v1/indexes/idx/users/{user['user_id']}", want=204, headers={"x-index-key": KEY})
    send("POST", "/v1/indexes/rotate_key", {**idx, "new_index_key": "cd" * 32})
    idx["index_key"] = "cd" * 32
    send("POST", "/v1/vectors/delete", {**idx, "ids": ["z"]})
    send("POST", "/v1/indexes/delete", idx)
    answered = {r.template for r in ROUTES if r.documented and r.answer is not None}
    loads = {"/v1/vectors/load", "/v1/loads/<job_id>"}  # on S3: tests/test_ingest.py checks them
    assert answered - loads == seen
