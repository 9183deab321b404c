"""The official cyborgdb SDK and raw HTTP against `ciphervec serve` (file store)."""

import base64
import json
import threading
import urllib.request
from pathlib import Path

import numpy as np
from cyborgdb import Client

from tests.conftest import ROOT_KEY
from tests.sdk_flow import run_sdk_flow

SEED_VECTORS = np.array([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]], dtype="<f4")


def scan_for_plaintext(blobs, needles):
    leaks = []
    for where, data in blobs:
        for needle in needles:
            if needle and needle in data:
                leaks.append((where, needle[:40]))
    return leaks


def store_files(root: Path):
    return [(str(p), p.read_bytes()) for p in root.rglob("*") if p.is_file()]


def test_sdk_every_method_then_restart_and_scan(server_factory, tmp_path):
    data = tmp_path / "data"
    srv = server_factory("--store", f"file://{data}", "--keys", f"file://{tmp_path}/keys.json")
    client = Client(srv.url, ROOT_KEY)
    stored = run_sdk_flow(client)
    srv.stop()

    # durability: a new process over the same directory sees everything, cold
    srv2 = server_factory("--store", f"file://{data}", "--keys", f"file://{tmp_path}/keys.json", name="again")
    idx = Client(srv2.url, ROOT_KEY).load_index(stored["name"], stored["key"])
    assert len(idx.list_ids()) == 2999 and idx.is_trained()
    assert idx.get([stored["ids"][2003]], include=["metadata"])[0]["metadata"] == stored["meta"][3]
    status, body, _ = srv2.request(
        "POST", "/v1/vectors/num_vectors", {"index_name": stored["name"], "index_key": "ee" * 32}
    )
    assert status == 401

    # nothing plaintext reached the store
    x = stored["x"]
    needles = [i.encode() for i in stored["ids"][2000:2100]]
    needles += [m["name"].encode() for m in stored["meta"][:100]]
    needles += [c.encode() for c in stored["contents"][:100] if c]
    needles += [x[i].tobytes() for i in range(2, 200)] + [x[i, :4].tobytes() for i in range(2, 200)]
    needles += [b"json contents", b"nested", stored["key"], stored["key"].hex().encode(), b"euclidean"]
    files = store_files(data)
    assert len(files) >= 3
    assert scan_for_plaintext(files, needles) == []


def test_seed_request_over_real_http(server_factory, tmp_path):
    # a 64 MiB limit (the default is 256 MiB) keeps the oversized body below small to send
    srv = server_factory(
        "--store", f"file://{tmp_path}/d", "--keys", f"file://{tmp_path}/k.json", "--max-body-mb", "64"
    )
    key = "0123456789abcdef" * 4
    assert (
        srv.request("POST", "/v1/indexes/create", {"index_name": "seed", "index_key": key, "dimension": 4})[0]
        == 200
    )
    body = {
        "index_name": "seed",
        "index_key": key,
        "batch": {
            "ids": ["doc-1", "doc-2"],
            "vectors_b64": base64.b64encode(SEED_VECTORS.tobytes()).decode(),
            "dimension": 4,
        },
    }
    req = urllib.request.Request(
        srv.url + "/v1/vectors/upsert_binary", data=json.dumps(body).encode(), method="POST"
    )
    req.add_header("Content-Type", "application/json")
    req.add_header("X-API-Key", ROOT_KEY)
    with urllib.request.urlopen(req) as resp:
        raw = resp.read()
        assert resp.status == 200 and resp.headers["X-Request-Id"]
    assert json.loads(raw) == {"status": "success", "message": "Upserted 2 vectors"}
    status, out, _ = srv.request(
        "POST",
        "/v1/vectors/query",
        {
            "index_name": "seed",
            "index_key": key,
            "query_vectors": [0.5, 0.6, 0.7, 0.8],
            "top_k": 1,
            "include": ["distance"],
        },
    )
    assert out == {"results": [{"id": "doc-2", "distance": 0.0}]}
    # oversize body: clear 413 before reading it; the server keeps serving
    status, out, _ = srv.request("POST", "/v1/vectors/upsert_binary", raw=b"x" * (65 << 20))
    assert status == 413 and "limit" in out["detail"]
    assert srv.request("GET", "/v1/health", key=None)[0] == 200


def test_first_run_prints_a_working_admin_key(server_factory, tmp_path):
    srv = server_factory(
        "--store",
        f"file://{tmp_path}/d",
        "--keys",
        f"file://{tmp_path}/fresh.json",
        env={"CIPHERVEC_ROOT_KEY": ""},
    )
    log = srv.log.read_text()
    key = next(word for word in log.split() if word.startswith("cv_"))
    assert "curl" in log
    assert srv.request("GET", "/v1/indexes/list", key=key)[:2] == (200, {"indexes": []})
    assert srv.request("GET", "/v1/indexes/list", key=ROOT_KEY)[0] == 401


def test_two_processes_and_many_threads_lose_no_write(server_factory, tmp_path):
    args = ("--store", f"file://{tmp_path}/shared", "--keys", f"file://{tmp_path}/k.json")
    a = server_factory(*args, name="a")
    b = server_factory(*args, name="b")
    key = Client.generate_key()
    Client(a.url, ROOT_KEY).create_index("shared", key, dimension=8)
    errors = []

    def writer(url, n):
        try:
            idx = Client(url, ROOT_KEY).load_index("shared", key)
            rng = np.random.default_rng(n)
            for j in range(8):
                idx.upsert(
                    [f"w{n}-{j}-{k}" for k in range(25)], rng.standard_normal((25, 8)).astype(np.float32)
                )
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(srv.url, n)) for n, srv in enumerate([a, b] * 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for srv in (a, b):
        ids = Client(srv.url, ROOT_KEY).load_index("shared", key).list_ids()
        assert len(ids) == 6 * 8 * 25 == len(set(ids))


def test_worker_processes_share_the_port_and_every_acknowledged_write(server_factory, tmp_path):
    """--workers 2: two processes serve one port; a write acknowledged through one connection
    is seen through any other (whichever process holds it), and both processes serve."""
    srv = server_factory(
        "--store", f"file://{tmp_path}/data", "--keys", f"file://{tmp_path}/keys.json", "--workers", "2"
    )
    children = Path(f"/proc/{srv.proc.pid}/task/{srv.proc.pid}/children").read_text().split()
    assert len(children) == 2
    key = Client.generate_key()
    Client(srv.url, ROOT_KEY).create_index("w", key, metric="cosine", dimension=8)
    # Each client keeps its own keep-alive connection, accepted by either process.
    indexes = [Client(srv.url, ROOT_KEY).load_index("w", key) for _ in range(12)]
    rng = np.random.default_rng(3)
    for i in range(48):
        vector = rng.standard_normal(8).astype(np.float32)
        indexes[i % 12].upsert([f"id{i}"], vector[None, :])
        reader = indexes[(i + 5) % 12]
        got = reader.get([f"id{i}"], include=["vector"])
        assert got and np.allclose(got[0]["vector"], vector, atol=1e-6)
        assert reader.query(vector, top_k=1)[0]["id"] == f"id{i}"
    assert len(indexes[0].list_ids()) == 48
    ticks = [int(Path(f"/proc/{c}/stat").read_text().rsplit(")", 1)[1].split()[11]) for c in children]
    assert all(t > 0 for t in ticks)  # both processes answered requests
