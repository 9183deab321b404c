"""CyborgDB 0.18's metadata contract (API.md §7), through the official SDK against
`ciphervec serve`: what `describe` reports for text fields, the field policy of
`query_metadata` (with and without a schema, with and without `text`) while `query` takes
every filter, empty `$and`/`$or`, `$ne` on missing fields, hybrid at `alpha = 0` and its
bounds, the embedding models' names and the include refusal."""

from __future__ import annotations

import numpy as np
import pytest
from cyborgdb import Client

from tests.conftest import ROOT_KEY, Server

ROWS = [
    {"id": "a", "title": "zebra crossing rules", "lang": "en", "n": 1, "secret": "x"},
    {"id": "b", "title": "encrypted vector search", "lang": "fr", "n": 2},
    {"id": "c", "title": "zebra stripes pattern", "lang": "en"},
    {"id": "d", "title": "cooking pasta at home", "lang": "de", "n": 4, "secret": "y"},
]
SCHEMA = {"lang": {"filterable": True, "pattern": True}, "secret": {"filterable": False}}
TEXT_ONLY = {"filterable": False, "pattern": False, "full_text": True}
DESCRIBED = {
    "lang": {"filterable": True, "pattern": True, "full_text": False},
    "secret": {"filterable": False, "pattern": False, "full_text": False},
    "title": TEXT_ONLY,
}


@pytest.fixture(scope="module")
def indexes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("contract")
    srv = Server(tmp, "--store", f"file://{tmp}/data", name="contract")
    client = Client(srv.url, ROOT_KEY)
    vectors = np.eye(4, dtype=np.float32)
    items = [
        {"id": r["id"], "vector": v.tolist(), "metadata": {k: val for k, val in r.items() if k != "id"}}
        for r, v in zip(ROWS, vectors, strict=True)
    ]
    made = {}
    for name, kw in (
        ("schema", {"metadata_schema": SCHEMA, "text_fields": ["title"]}),
        ("plain", {}),
        ("text", {"text_fields": ["title"]}),
    ):
        index = client.create_index(name, Client.generate_key(), dimension=4, metric="cosine", **kw)
        index.upsert(items)
        made[name] = index
    yield srv, made, vectors
    srv.stop()


def refused(call) -> str:
    with pytest.raises(Exception) as caught:  # the SDK raises its own error type with the detail
        call()
    return str(caught.value)


def ids(rows) -> list[str]:
    return sorted(r["id"] for r in rows)


def test_describe_spells_out_text_fields(indexes):
    _, made, _ = indexes
    assert made["schema"].metadata_schema == DESCRIBED
    assert made["text"].metadata_schema == {"title": TEXT_ONLY}
    assert made["plain"].metadata_schema == {}


def test_query_metadata_obeys_the_field_policy(indexes):
    _, made, _ = indexes
    schema, plain, text = made["schema"], made["plain"], made["text"]
    assert ids(schema.query_metadata(filters={"lang": "en"})) == ["a", "c"]
    assert ids(schema.query_metadata(filters={"lang": {"$regex": "^(en|de)$"}})) == ["a", "c", "d"]
    assert ids(schema.query_metadata(filters={"n": {"$gt": 1}})) == ["b", "d"]  # unlisted: filterable
    for bad in (
        {"secret": "x"},  # filterable: false
        {"title": "zebra"},  # full_text
        {"$or": [{"lang": "en"}, {"secret": {"$exists": True}}]},  # nested
        {"n": {"$regex": "1"}},  # not a pattern field
    ):
        assert "400" in refused(lambda bad=bad: schema.query_metadata(filters=bad)), bad
        # with text as well
        assert "400" in refused(lambda bad=bad: schema.query_metadata(filters=bad, text="zebra")), bad
    # no schema: every field filterable, none a pattern
    assert ids(plain.query_metadata(filters={"secret": "x"})) == ["a"]
    assert "pattern" in refused(lambda: plain.query_metadata(filters={"lang": {"$regex": "^e"}}))
    assert "pattern" in refused(lambda: plain.query_metadata(filters={"title": {"$contains": "zebra"}}))
    assert "400" in refused(lambda: text.query_metadata(filters={"title": "zebra"}, text="zebra"))
    assert ids(text.query_metadata(filters={"lang": "en"}, text="zebra")) == ["a", "c"]


def test_query_takes_every_filter(indexes):
    _, made, vectors = indexes
    index = made["schema"]
    for spec, expect in (
        ({"secret": "x"}, ["a"]),
        ({"n": {"$regex": "1"}}, []),  # numbers are not strings
        ({"title": {"$contains": "zebra"}}, ["a", "c"]),
    ):
        assert ids(index.query(query_vectors=vectors[0], top_k=4, filters=spec)) == expect, spec
        hybrid = index.query(query_vectors=vectors[0], text="zebra", top_k=4, filters=spec)
        assert ids(hybrid) == [i for i in expect if i in ("a", "c")], spec


def test_empty_and_or_and_ne_on_missing_fields(indexes):
    _, made, vectors = indexes
    plain = made["plain"]
    assert ids(plain.query_metadata(filters={"$and": []})) == ["a", "b", "c", "d"]
    assert ids(plain.query_metadata(filters={"$or": []})) == []
    assert ids(plain.query(query_vectors=vectors[0], top_k=4, filters={"$or": []})) == []
    # c has no n: $ne leaves it out, $nin keeps it
    assert ids(plain.query_metadata(filters={"n": {"$ne": 2}})) == ["a", "d"]
    assert ids(plain.query_metadata(filters={"n": {"$nin": [2]}})) == ["a", "c", "d"]
    assert ids(plain.query(query_vectors=vectors[0], top_k=4, filters={"n": {"$ne": 2}})) == ["a", "d"]


def test_hybrid_alpha_zero_is_the_bm25_ranking_and_bounds_are_400(indexes):
    _, made, vectors = indexes
    index = made["text"]
    bm25 = [r["id"] for r in index.query_metadata(text="zebra stripes", top_k=4)]
    assert set(bm25) == {"a", "c"}
    # d is the vector leg's first row: at alpha 0 it is not appended
    fused = index.query(query_vectors=vectors[3], text="zebra stripes", top_k=4, alpha=0.0)
    assert [r["id"] for r in fused] == bm25
    vector_only = index.query(query_vectors=vectors[3], text="zebra stripes", top_k=4, alpha=1.0)
    assert vector_only[0]["id"] == "d" and len(vector_only) == 4
    for kw in ({"window_mult": 0}, {"window_mult": -3}, {"rrf_k": 0}):
        message = refused(lambda kw=kw: index.query(query_vectors=vectors[0], text="zebra", top_k=2, **kw))
        assert "400" in message, kw


def test_embedding_models_and_include_refusal(indexes):
    srv, made, vectors = indexes
    status, body, _ = srv.request("GET", "/v1/embedding-models")
    assert status == 200 and all(m["name"].startswith("sentence-transformers/") for m in body["models"])
    message = refused(lambda: made["plain"].query(query_vectors=vectors[0], top_k=1, include=["scores"]))
    assert "422" in message and "'scores'" in message


def test_a_schema_sent_without_the_sdk_is_described_in_full(indexes):
    srv, _, _ = indexes
    key = "ab" * 32
    body = {
        "index_name": "raw",
        "index_key": key,
        "dimension": 4,
        "metadata_schema": {"x": {"pattern": True}},
    }
    assert srv.request("POST", "/v1/indexes/create", {**body, "text_fields": ["t"]})[0] == 200
    described = srv.request("POST", "/v1/indexes/describe", {"index_name": "raw", "index_key": key})[1]
    assert described["metadata_schema"] == {
        "x": {"filterable": True, "pattern": True, "full_text": False},
        "t": TEXT_ONLY,
    }
