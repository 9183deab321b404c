"""BM25 full-text and hybrid search: the same ranking as a plain bm25s index over the live
rows, statistics that follow deletes and overwrites, filters on both legs, rank fusion, and
the official SDK's text calls against `ciphervec serve`."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import bm25s
import botocore
import numpy as np
import pytest
from cyborgdb import Client

from ciphervec.engine.arrays.text import TextConfig, TextQuery, analyze, fuse
from ciphervec.engine.errors import InvalidRequest, ValidationFailed
from ciphervec.engine.model import IndexConfig, RowBatch
from ciphervec.infra.storage.memory import MemoryStore
from tests.conftest import ROOT_KEY
from tests.test_sdk_server import scan_for_plaintext, store_files
from tests.test_service import fresh

KEK = bytes(range(32))
QUERIES = ["bucket encryption key", "stream records shard", "delete the table", "queue message visibility"]


def corpus(n: int = 1500) -> list[str]:
    """Real English sentences: the AWS API documentation that ships inside botocore."""
    out: list[str] = []
    data = Path(botocore.__file__).parent / "data"
    for service in ("s3", "dynamodb", "sqs", "kinesis", "lambda"):
        path = next((data / service).glob("*/service-2.json*"))
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        docs = re.findall(r'"documentation":"((?:[^"\\]|\\.)*)"', raw.decode())
        for doc in docs:
            text = re.sub(r"<[^>]+>", " ", json.loads(f'"{doc}"'))
            out += [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if len(s.split()) >= 5]
    return list(dict.fromkeys(out))[:n]


def plain_top(texts: list[str], query: str, k: int = 10) -> list[int]:
    """A plain bm25s index over ``texts`` with the same analysis: its top-k doc numbers."""
    index = bm25s.BM25(k1=1.2, b=0.75)
    index.index(analyze(texts), show_progress=False)
    scores = index.get_scores(analyze([query])[0])
    hit = np.flatnonzero(scores > 0)
    return hit[np.lexsort((hit, -scores[hit]))][:k].tolist()


def build(texts, **text):
    svc = fresh(MemoryStore())
    svc.create_index(
        "t", "i", IndexConfig(dimension=4, text=TextConfig.declare(["title"], None, **text)), kek=KEK
    )
    x = np.random.default_rng(0).standard_normal((len(texts), 4)).astype(np.float32)
    svc.upsert(
        "t", "i", KEK, RowBatch([f"d{i}" for i in range(len(texts))], x, [{"title": t} for t in texts])
    )
    return svc, x


def ranked(svc, query, **kw):
    return [int(h["id"][1:]) for h in svc.text_query("t", "i", KEK, TextQuery(query), top_k=10, **kw)]


def test_text_queries_rank_as_a_plain_bm25s_index():
    texts = corpus()
    assert len(texts) >= 1000
    svc, _ = build(texts, k1=None, b=None)
    for q in QUERIES:
        assert ranked(svc, q) == plain_top(texts, q), q


def test_deletes_and_overwrites_change_the_statistics():
    texts = corpus(600)
    svc, x = build(texts, k1=None, b=None)
    gone = [i for i in range(0, 600, 3)]
    svc.delete_vectors("t", "i", KEK, [f"d{i}" for i in gone])
    svc.upsert("t", "i", KEK, RowBatch(["d1"], x[:1], [{"title": "bucket bucket bucket encryption"}]))
    live = {i: t for i, t in enumerate(texts) if i not in gone} | {1: "bucket bucket bucket encryption"}
    order = sorted(live)
    for q in QUERIES[:2]:
        want = [order[j] for j in plain_top([live[i] for i in order], q)]
        assert ranked(svc, q) == want
    assert ranked(svc, "bucket encryption")[0] == 1


def test_fields_weights_all_terms_and_filters():
    svc = fresh(MemoryStore())
    text = TextConfig.declare(
        ["title"], {"body": {"full_text": True}, "lang": {"filterable": True}}, 1.5, 0.5
    )
    svc.create_index("t", "i", IndexConfig(dimension=2, text=text), kek=KEK)
    meta = [
        {"title": "encrypted vector search", "body": "fast queries", "lang": "en"},
        {"title": "cooking pasta", "body": "encrypted vector recipes", "lang": "en"},
        {"title": "encrypted archives", "body": "nothing else", "lang": "fr"},
    ]
    svc.upsert("t", "i", KEK, RowBatch(["a", "b", "c"], np.eye(2, dtype=np.float32)[[0, 1, 0]], meta))
    assert svc.describe("t", "i", KEK)["bm25"] == {
        "k1": 1.5,
        "b": 0.5,
        "analyzer_version": "en-porter2-stop-v1",
        "text_fields": ["title", "body"],
    }

    def ids(query, **kw):
        return [h["id"] for h in svc.text_query("t", "i", KEK, query, top_k=10, **kw)]

    assert set(ids(TextQuery("encrypted vector"))) == {"a", "b", "c"}
    assert ids(TextQuery("encrypted vector", ["body"])) == ["b"]
    assert ids(TextQuery("encrypted vector", require_all=True))[:2] in (["a", "b"], ["b", "a"])
    assert "c" not in ids(TextQuery("encrypted vector", require_all=True))
    assert ids(TextQuery("vector", ["title", "body"], [0.0, 1.0])) == ["b"]
    assert ids(TextQuery("encrypted"), filters={"lang": "fr"}) == ["c"]
    assert ids(TextQuery("the of and")) == []  # stopwords only: nothing to match
    with pytest.raises(InvalidRequest):
        ids(TextQuery("x", ["lang"]))  # not a full_text field
    with pytest.raises(ValidationFailed):
        ids(TextQuery("x", ["title"], [1.0, 2.0]))
    # hybrid: the text leg lifts b (body matches) above c for a vector nearest to a and c
    hybrid = svc.hybrid_query("t", "i", KEK, np.array([[1, 0]], np.float32), TextQuery("recipes"), top_k=3)[0]
    assert hybrid[0]["id"] in ("a", "b") and {h["id"] for h in hybrid} == {"a", "b", "c"}
    assert all("score" in h and "distance" not in h for h in hybrid)
    only_fr = svc.hybrid_query(
        "t", "i", KEK, np.array([[1, 0]], np.float32), TextQuery("encrypted"), top_k=3, filters={"lang": "fr"}
    )[0]
    assert [h["id"] for h in only_fr] == ["c"]  # filters apply to both legs


def test_search_runs_the_search_its_inputs_ask_for():
    """IndexService.search: vectors alone are nearest neighbours, a text alone is BM25 (one
    list), both are the hybrid with the fusion defaults; bad fusion knobs are refused."""
    svc, x = build(corpus(300), k1=None, b=None)
    q, text = x[:2], TextQuery("encryption keys")
    assert svc.search("t", "i", KEK, q, None, top_k=5) == svc.query("t", "i", KEK, q, top_k=5)
    assert svc.search("t", "i", KEK, None, text, top_k=5) == [svc.text_query("t", "i", KEK, text, top_k=5)]
    both = svc.hybrid_query("t", "i", KEK, q, text, top_k=5, alpha=0.5, rrf_k=60.0, window=3)
    assert svc.search("t", "i", KEK, q, text, top_k=5) == both
    assert svc.search("t", "i", KEK, q, text, top_k=5, alpha=0.0) != both
    for knobs, message in (
        ({"window": 0}, "window_mult must be at least 1"),
        ({"rrf_k": 0.0}, "rrf_k must be"),
    ):
        with pytest.raises(InvalidRequest, match=message):
            svc.search("t", "i", KEK, q, text, top_k=5, **knobs)
    with pytest.raises(InvalidRequest):
        svc.search("t", "i", KEK, None, None)


def test_fusion_is_weighted_reciprocal_rank():
    fused = dict(fuse(["a", "b"], ["b", "c"], alpha=0.25, rrf_k=10, top_k=3))
    assert fused == pytest.approx({"b": 0.25 / 12 + 0.75 / 11, "c": 0.75 / 12, "a": 0.25 / 11})
    # a leg of weight 0 adds nothing: alpha 1 is the vector ranking, alpha 0 the BM25 one
    assert [i for i, _ in fuse(["a", "b"], ["b", "c"], 1.0, 60, 3)] == ["a", "b"]
    assert [i for i, _ in fuse(["a", "b"], ["c", "b"], 0.0, 60, 3)] == ["c", "b"]


def test_sdk_text_and_hybrid_queries_over_http(server_factory, tmp_path):
    data = tmp_path / "data"
    srv = server_factory("--store", f"file://{data}")
    client = Client(srv.url, ROOT_KEY)
    key = Client.generate_key()
    index = client.create_index("docs", key, dimension=4, metric="cosine", text_fields=["title"])
    titles = ["zebra crossing rules", "encrypted vector search", "zebra stripes pattern", "cooking pasta"]
    vectors = np.eye(4, dtype=np.float32)
    index.upsert(
        [
            {"id": f"t{i}", "vector": v.tolist(), "metadata": {"title": t}}
            for i, (v, t) in enumerate(zip(vectors, titles, strict=True))
        ]
    )
    rows = index.query_metadata(text="zebra")
    assert [r["id"] for r in rows][:2] in (["t0", "t2"], ["t2", "t0"]) and all(r["score"] > 0 for r in rows)
    hits = index.query(query_vectors=vectors[3], text="zebra stripes", top_k=2)
    # in both legs beats first in one: t2 (text rank 1) and t0 (text rank 2) over t3 (vector rank 1)
    assert {h["id"] for h in hits} == {"t2", "t0"} and all("score" in h and "distance" not in h for h in hits)
    assert index.query(query_vectors=vectors[3], text="zebra stripes", top_k=1, alpha=1.0)[0]["id"] == "t3"
    status, body, _ = srv.request(
        "POST",
        "/v1/vectors/query",
        {"index_name": "docs", "index_key": key.hex(), "text": "pasta", "top_k": 1},
    )
    assert status == 200 and body["results"][0]["id"] == "t3"
    described = srv.request("POST", "/v1/indexes/describe", {"index_name": "docs", "index_key": key.hex()})[1]
    assert described["bm25"]["k1"] == 1.2 and described["bm25"]["text_fields"] == ["title"]
    bad = {"index_name": "docs", "index_key": key.hex(), "text": "x", "order_by": "title"}
    assert srv.request("POST", "/v1/vectors/query_metadata", bad)[0] == 400
    srv.stop()
    assert scan_for_plaintext(store_files(data), [b"zebra", b"pasta", b"stripe"]) == []
