"""The OpenAPI document describes every route with its wire model, and schemathesis, fuzzing
every operation from it against a real server (an index named as the examples say exists),
finds no server error."""

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

from ciphervec.handlers import api  # noqa: F401 (registers every route)
from ciphervec.handlers.routing import ROUTES
from ciphervec.handlers.schemas import EXAMPLE_KEY
from tests.conftest import ROOT_KEY


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
