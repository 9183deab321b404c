"""The official cyborgdb SDK exercised method by method, checking results."""

from __future__ import annotations

import numpy as np
import pytest
from cyborgdb import Client
from cyborgdb.exceptions import AuthenticationError, CyborgDBError, NotFoundError
from cyborgdb.exceptions import ValidationError as SDKValidationError

from tests.conftest import clustered


def brute_ids(x: np.ndarray, q: np.ndarray, k: int) -> list[list[int]]:
    d = ((q[:, None, :] - x[None]) ** 2).sum(-1)
    return np.argsort(d, axis=1, kind="stable")[:, :k].tolist()


def run_sdk_flow(client: Client, tag: str = "sdk") -> dict:
    """Every public method of Client and EncryptedIndex; returns what it stored."""
    assert client.get_health()["status"] == "healthy"
    key = Client.generate_key()
    name = f"{tag}/índex"
    idx = client.create_index(name, key, metric="euclidean")
    assert idx.index_name == name and idx.dimension == 0 and idx.metric == "euclidean"
    assert name in client.list_indexes()

    x = clustered(3000, 32, clusters=24, seed=11)
    ids = [f"{tag}-{i}" for i in range(len(x))]
    idx.upsert(ids[:2000], x[:2000])  # ids + ndarray -> upsert_binary
    meta = [{"group": i % 3, "score": float(i), "name": f"{tag}-name-{i}"} for i in range(2000, 3000)]
    contents = [f"{tag}-contents-{i}" if i % 2 else None for i in range(2000, 3000)]
    idx.upsert_binary(ids[2000:], x[2000:], metadata=meta, contents=contents)
    idx.upsert(
        [
            {
                "id": f"{tag}-json",
                "vector": x[0].tolist(),
                "contents": "json contents",
                "metadata": {"kind": "json", "nested": {"n": 1}},
            }
        ]
    )
    assert idx.dimension == 32 and idx.n_lists == 1 and idx.is_trained() is False
    assert idx.metadata_schema == {} and idx.bm25 is None

    loaded = client.load_index(name, key)
    assert sorted(loaded.list_ids()) == sorted(ids + [f"{tag}-json"])

    # exact search: recall 1.0 and self-distance 0
    q = x[:40]
    got = idx.query(q, top_k=10, include=["distance"])
    want = brute_ids(np.vstack([x, x[:1]]), q, 10)
    for row, w in zip(got, want):
        names = {r["id"] for r in row}
        expected = {ids[i] if i < len(ids) else f"{tag}-json" for i in w}
        assert len(names & expected) == 10 or (row[0]["distance"] == 0.0 and len(names & expected) >= 9)
    single = idx.query(x[2500], top_k=3, include=["distance", "metadata"])
    assert single[0]["id"] == ids[2500] and single[0]["distance"] == 0.0
    assert single[0]["metadata"] == meta[500]
    listed = idx.query(x[2501].tolist(), top_k=1, include=["distance"])
    assert listed[0]["id"] == ids[2501]
    batch = idx.query_binary(x[2002:2004], top_k=2)
    assert [b[0]["id"] for b in batch] == [ids[2002], ids[2003]]

    # filters restrict candidates
    filtered = idx.query(
        x[2500], top_k=20, filters={"group": 1, "score": {"$gte": 2600}}, include=["metadata"]
    )
    assert len(filtered) == 20 and all(
        r["metadata"]["group"] == 1 and r["metadata"]["score"] >= 2600 for r in filtered
    )
    assert idx.query_metadata({"name": f"{tag}-name-2100"}) == [{"id": ids[2100]}]
    ordered = idx.query_metadata({"group": 2}, top_k=3, order_by={"score": -1})
    assert [r["id"] for r in ordered] == [ids[2999 - ((2999 - 2) % 3) - k * 3] for k in range(3)]

    # get round trip
    got = idx.get([ids[2001], f"{tag}-json", "missing", ids[5]])
    assert [g["id"] for g in got] == [ids[2001], f"{tag}-json", ids[5]]
    assert got[0]["contents"] in (f"{tag}-contents-2001", b"") and got[0]["metadata"] == meta[1]
    np.testing.assert_array_equal(np.array(got[0]["vector"], np.float32), x[2001])
    assert got[1]["metadata"] == {"kind": "json", "nested": {"n": 1}}
    only_meta = idx.get([ids[2002]], include=["metadata"])
    assert only_meta == [{"id": ids[2002], "metadata": meta[2]}]

    # delete
    idx.delete([ids[0], ids[1]])
    remaining = idx.list_ids()
    assert ids[0] not in remaining and len(remaining) == 2999

    # train, then query with n_probes
    assert idx.is_training() is False
    idx.train(n_lists=16)
    assert idx.is_trained() is True and idx.n_lists == 16
    res = idx.query(x[100:140], top_k=10, n_probes=16, include=["distance"])
    assert all(r[0]["id"] == ids[100 + i] and r[0]["distance"] == 0.0 for i, r in enumerate(res))
    auto = idx.query(x[100:140], top_k=10)
    hits = np.mean([len({a["id"] for a in ar} & {b["id"] for b in br}) / 10 for ar, br in zip(auto, res)])
    assert hits >= 0.9

    # errors through the SDK, and the server keeps serving
    with pytest.raises(AuthenticationError):
        client.load_index(name, Client.generate_key())
    with pytest.raises(SDKValidationError):
        idx.query(x[0], top_k=0)
    with pytest.raises(NotFoundError):
        client.load_index(f"{tag}-missing", key)
    with pytest.raises(CyborgDBError):
        client.create_index(name, key)
    assert idx.query(x[7], top_k=1)[0]["id"] == ids[7]

    # per-index users on a server-managed key
    managed = client.create_index(f"{tag}-managed", kms_name="default", dimension=4)
    managed.upsert(["m1"], np.ones((1, 4), np.float32))
    user = managed.create_user(["read"])
    assert managed.list_users() == [{"user_id": user["user_id"], "permissions": ["read"]}]
    reader = Client(client.config.host, user["api_key"]).load_index(f"{tag}-managed")
    assert reader.list_ids() == ["m1"]
    managed.delete_user(user["user_id"])
    assert managed.list_users() == []
    managed.delete_index()

    return {"name": name, "key": key, "ids": ids, "x": x, "meta": meta, "contents": contents}
