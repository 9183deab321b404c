"""S3 sources on moto: reads return exactly the object's bytes for any access pattern, a file
read front to back costs a handful of streaming GETs, and a file changed mid-load is refused."""

from __future__ import annotations

import io
import os
import random

import boto3
import pytest
from moto import mock_aws

from ciphervec.engine.errors import BadSource, NotFound
from ciphervec.infra import sources


@pytest.fixture
def s3(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setattr(sources, "BLOCK", 64 << 10)
    monkeypatch.setattr(sources, "SPAN_MIN", 256 << 10)
    with mock_aws():
        client = boto3.client("s3", aws_access_key_id="t", aws_secret_access_key="t")
        client.create_bucket(Bucket="drops")
        gets = []
        client.meta.events.register("before-call.s3.GetObject", lambda params, **kw: gets.append(params))
        yield client, gets


def test_sequential_reads_are_exact_and_take_few_requests(s3):
    client, gets = s3
    data = os.urandom(3_000_000 + 17)
    client.put_object(Bucket="drops", Key="t/i/a.npy", Body=data)
    src = sources.open_source("s3://drops/t/i/a.npy", client)
    assert src.size == len(data) and src.version and src.fmt == "npy"
    out = bytearray()
    with src.open() as f:
        while chunk := f.read(100_000):
            out += chunk
    assert bytes(out) == data
    assert len(gets) <= 6  # streaming spans, not one request per block


def test_random_access_footer_then_body(s3):
    client, gets = s3
    data = os.urandom(1_500_000)
    client.put_object(Bucket="drops", Key="t/i/b.parquet", Body=data)
    f = sources.open_source("s3://drops/t/i/b.parquet", client).open()
    rng = random.Random(0)
    f.seek(-8, io.SEEK_END)
    assert f.read(8) == data[-8:]
    for _ in range(40):
        at, n = rng.randrange(len(data)), rng.choice([1, 100, 70_000, 300_000])
        f.seek(at)
        assert f.read(n) == data[at : at + n]
    f.seek(0)
    assert f.read() == data
    f.close()


def test_a_file_changed_while_loading_is_refused(s3):
    client, _ = s3
    client.put_object(Bucket="drops", Key="t/i/c.npy", Body=os.urandom(1_000_000))
    f = sources.open_source("s3://drops/t/i/c.npy", client).open()
    f.read(10)
    client.put_object(Bucket="drops", Key="t/i/c.npy", Body=os.urandom(1_000_000))
    with pytest.raises(BadSource, match="changed"):
        f.seek(500_000)
        f.read(600_000)
    f.close()


def test_missing_object_and_unknown_type(s3):
    client, _ = s3
    with pytest.raises(NotFound):
        sources.open_source("s3://drops/t/i/none.parquet", client)
    from ciphervec.engine.errors import InvalidRequest

    with pytest.raises(InvalidRequest):
        sources.open_source("s3://drops/t/i/x.csv", client)


def test_no_credentials_is_a_clear_refusal(monkeypatch):
    from ciphervec.engine.errors import InvalidRequest

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    client = boto3.session.Session().client("s3")  # not the default session other tests warmed
    with pytest.raises(InvalidRequest, match="credentials"):
        sources.open_source("s3://drops/t/i/a.parquet", client)
