"""The SDK flow with `--store s3://…` and `--keys dynamodb://…` against a moto server."""

import boto3
import pytest
from cyborgdb import Client
from moto.server import ThreadedMotoServer

from tests.conftest import FAKE_AWS, ROOT_KEY, free_port
from tests.sdk_flow import run_sdk_flow
from tests.test_sdk_server import scan_for_plaintext

AWS = FAKE_AWS


@pytest.fixture
def moto_server(monkeypatch):
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for k, v in AWS.items():
        monkeypatch.setenv(k, v)
    yield f"http://127.0.0.1:{port}"
    server.stop()


def key_table(endpoint: str, name: str):
    """The API-key table, as the template creates it; returns the DynamoDB client."""
    ddb = boto3.client("dynamodb", endpoint_url=endpoint)
    ddb.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "key_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "key_id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    return ddb


def test_sdk_flow_on_s3_and_dynamodb(moto_server, server_factory):
    s3 = boto3.client("s3", endpoint_url=moto_server)
    s3.create_bucket(Bucket="ciphervec-it")
    ddb = key_table(moto_server, "ciphervec-keys")
    env = {**AWS, "AWS_ENDPOINT_URL": moto_server}
    args = ("--store", "s3://ciphervec-it/prod", "--keys", "dynamodb://ciphervec-keys")
    srv = server_factory(*args, env=env)
    stored = run_sdk_flow(Client(srv.url, ROOT_KEY), tag="s3")

    # the per-index user key went through DynamoDB, hashed
    items = ddb.scan(TableName="ciphervec-keys")["Items"]
    assert items and all("secret_hash" in i for i in items)

    # a second process (cold) reads the same index from S3, lazily: the first query reads
    # only the lists it probes, list_ids then needs (and loads) every row
    srv.stop()
    srv2 = server_factory(*args, env={**env, "CIPHERVEC_LAZY_ROWS": "100"}, name="cold")
    idx = Client(srv2.url, ROOT_KEY).load_index(stored["name"], stored["key"])
    first = idx.query(stored["x"][100:110], top_k=1, include=["distance"])
    assert [r[0]["id"] for r in first] == stored["ids"][100:110] and all(
        r[0]["distance"] == 0.0 for r in first
    )
    assert len(idx.list_ids()) == 2999 and idx.is_trained()

    blobs = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="ciphervec-it"):
        for obj in page.get("Contents", []):
            assert obj["Key"].startswith("prod/default/")
            blobs.append((obj["Key"], s3.get_object(Bucket="ciphervec-it", Key=obj["Key"])["Body"].read()))
    x = stored["x"]
    needles = [i.encode() for i in stored["ids"][2000:2050]] + [x[i].tobytes() for i in range(2, 100)]
    needles += [m["name"].encode() for m in stored["meta"][:50]] + [
        stored["key"],
        stored["key"].hex().encode(),
    ]
    assert len(blobs) >= 3 and scan_for_plaintext(blobs, needles) == []


def test_embeddings_bm25_and_turboquant_on_s3_and_dynamodb(moto_server, server_factory):
    """Server-side embeddings into a tq8 index with a full_text field, through the SDK, on
    S3 + DynamoDB (moto): contents embedded, text and hybrid queries, a cold second process."""
    pytest.importorskip("sentence_transformers")
    from tests.test_embeddings import SENTENCES

    s3 = boto3.client("s3", endpoint_url=moto_server)
    s3.create_bucket(Bucket="ciphervec-emb")
    key_table(moto_server, "ciphervec-keys-emb")
    env = {**AWS, "AWS_ENDPOINT_URL": moto_server}
    args = ("--store", "s3://ciphervec-emb/p", "--keys", "dynamodb://ciphervec-keys-emb")
    srv = server_factory(*args, env=env)
    key = Client.generate_key()
    index = Client(srv.url, ROOT_KEY).create_index(
        "notes", key, embedding_model="all-MiniLM-L6-v2", storage_precision="tq8", text_fields=["text"]
    )
    index.upsert([{"id": f"s{i}", "contents": s, "metadata": {"text": s}} for i, s in enumerate(SENTENCES)])
    assert index.query(query_contents="tomatoes and basil in the garden", top_k=1)[0]["id"] == "s5"
    srv.stop()
    cold = server_factory(*args, env=env, name="cold")
    again = Client(cold.url, ROOT_KEY).load_index("notes", key)
    assert again.query(query_contents="a bug fixed with a lock", top_k=1)[0]["id"] == "s11"
    assert again.query_metadata(text="glaciers valleys")[0]["id"] == "s7"
    hybrid = again.query(query_contents="mountains and ice", text="glaciers", top_k=2)
    assert hybrid[0]["id"] == "s7" and "score" in hybrid[0]
    blobs = [
        (o["Key"], s3.get_object(Bucket="ciphervec-emb", Key=o["Key"])["Body"].read())
        for o in s3.list_objects_v2(Bucket="ciphervec-emb")["Contents"]
    ]
    assert scan_for_plaintext(blobs, [s.encode() for s in SENTENCES] + [key, key.hex().encode()]) == []
