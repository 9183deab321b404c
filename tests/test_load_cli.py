"""``ciphervec load``: straight to a store (atomic, resumable), over HTTP with upsert_binary
batches (resumable), and over HTTP with an s3:// source loaded by the server."""

from __future__ import annotations

import json
import urllib.request

import boto3
import numpy as np
import pytest
from cyborgdb import Client
from moto.server import ThreadedMotoServer

from ciphervec.engine.service import IndexService
from ciphervec.handlers import load_cli
from ciphervec.handlers.cli import main
from ciphervec.infra.storage import open_store
from tests.conftest import FAKE_AWS, ROOT_KEY, clustered, free_port
from tests.test_loads import write_parquet

D = 24
KEY = bytes(range(32))
REAL_UPDATE = load_cli.Progress.update


def interrupt_after(monkeypatch, calls: int) -> None:
    """Ctrl-C while the progress bar is drawn for the ``calls``-th time."""
    real = load_cli.Progress.update
    seen = {"n": 0}

    def update(self, bytes_read, rows):
        seen["n"] += 1
        if seen["n"] == calls:
            raise KeyboardInterrupt
        real(self, bytes_read, rows)

    monkeypatch.setattr(load_cli.Progress, "update", update)


def test_store_load_creates_pauses_on_ctrl_c_and_continues(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("ciphervec.infra.formats.MAX_CHUNK_ROWS", 500)
    x = clustered(2000, D, seed=1)
    path = write_parquet(tmp_path / "v.parquet", [f"v{i}" for i in range(2000)], x, row_group=500)
    store = f"file://{tmp_path}/data"
    args = ["load", str(path), "--index", "vec", "--store", store, "--index-key", KEY.hex()]
    interrupt_after(monkeypatch, 3)  # the first draw is the start; two chunks staged
    assert main([*args, "--create", "--dimension", str(D)]) == 130
    service = IndexService(open_store(store))
    assert service.num_vectors("default", "vec", KEY) == 0  # nothing visible yet
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "succeeded" and out["rows_loaded"] == 2000 and out["invocations"] == 2
    service = IndexService(open_store(store))
    assert service.num_vectors("default", "vec", KEY) == 2000
    head = service.heads.open("default", "vec", KEY)
    assert sum(s.rows for s in head.body.segments) == 2000


def test_store_load_reports_bad_rows(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    x = clustered(10, D)
    x[4, 2] = np.nan
    path = write_parquet(tmp_path / "b.parquet", [f"b{i}" for i in range(10)], x)
    code = main(
        [
            "load",
            str(path),
            "--index",
            "b",
            "--store",
            f"file://{tmp_path}/d",
            "--create",
            "--dimension",
            str(D),
            "--index-key",
            KEY.hex(),
            "--quiet",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 1 and out["status"] == "failed" and out["refused"][0]["row"] == 4


def test_url_load_streams_batches_and_resumes(tmp_path, monkeypatch, capsys, server_factory):
    srv = server_factory("--store", f"file://{tmp_path}/srv")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("ciphervec.infra.formats.MAX_CHUNK_ROWS", 1000)
    x = clustered(5000, D, seed=2)
    ids = [f"u{i}" for i in range(5000)]
    path = tmp_path / "u.npy"
    np.save(path, x)
    (tmp_path / "u.ids.txt").write_text("\n".join(ids) + "\n")
    args = [
        "load",
        str(path),
        "--index",
        "u",
        "--url",
        srv.url,
        "--api-key",
        ROOT_KEY,
        "--index-key",
        KEY.hex(),
        "--batch-mb",
        "0.0625",  # several batches per chunk
    ]
    interrupt_after(monkeypatch, 3)
    assert main([*args, "--create", "--dimension", str(D)]) == 130
    state = list((tmp_path / ".ciphervec-load").glob("*.json"))
    assert len(state) == 1 and json.loads(state[0].read_text())["rows"] >= 1000
    monkeypatch.setattr(load_cli.Progress, "update", REAL_UPDATE)
    capsys.readouterr()
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "succeeded" and out["rows_loaded"] == 5000
    assert not list((tmp_path / ".ciphervec-load").glob("*.json"))
    idx = Client(srv.url, ROOT_KEY).load_index("u", KEY)
    assert sorted(idx.list_ids()) == sorted(ids)
    got = idx.get(["u4321"], include=["vector"])
    np.testing.assert_allclose(got[0]["vector"], x[4321], rtol=1e-6)


@pytest.fixture
def moto_s3(monkeypatch):
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    urllib.request.urlopen(urllib.request.Request(url + "/moto-api/reset", method="POST")).read()
    env = {**FAKE_AWS, "AWS_ENDPOINT_URL": url}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    yield env
    server.stop()


def test_url_load_of_an_s3_source_is_done_by_the_server(
    tmp_path, monkeypatch, capsys, server_factory, moto_s3
):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="drops")
    x = clustered(3000, D, seed=3)
    local = write_parquet(tmp_path / "s.parquet", [f"s{i}" for i in range(3000)], x)
    s3.upload_file(str(local), "drops", "default/s.parquet")
    srv = server_factory("--store", f"file://{tmp_path}/srv", env=moto_s3)
    monkeypatch.chdir(tmp_path)
    args = [
        "load",
        "s3://drops/default/s.parquet",
        "--index",
        "s",
        "--url",
        srv.url,
        "--api-key",
        ROOT_KEY,
        "--index-key",
        KEY.hex(),
        "--create",
        "--dimension",
        str(D),
        "--quiet",
    ]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "succeeded" and out["rows_loaded"] == 3000 and out["index_count"] == 3000
    idx = Client(srv.url, ROOT_KEY).load_index("s", KEY)
    hits = idx.query(query_vectors=x[7:8], top_k=1)
    assert hits[0]["id"] == "s7"


def test_store_load_creates_at_the_given_precision(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    x = clustered(300, D, seed=3)
    path = write_parquet(tmp_path / "p.parquet", [f"p{i}" for i in range(300)], x)
    store = f"file://{tmp_path}/d"
    base = ["load", str(path), "--index", "q", "--store", store, "--index-key", KEY.hex(), "--create"]
    assert main([*base, "--dimension", str(D), "--precision", "tq9"]) == 2
    assert "storage_precision" in capsys.readouterr().err
    assert main([*base, "--dimension", str(D), "--precision", "tq8"]) == 0
    service = IndexService(open_store(store))
    assert service.heads.open("default", "q", KEY).precision == "tq8"
    assert service.num_vectors("default", "q", KEY) == 300
