"""Brute-force counts shared between processes (Lambda containers) through DynamoDB (moto):
failures spread over several containers lock the key in each, and the table holds hashes
and counts, never an address, key id or index name."""

import hashlib
import json

import boto3
import pytest
from moto import mock_aws

from ciphervec.infra.throttle import FailureThrottle, SharedFailureThrottle
from tests.conftest import FAKE_AWS


@pytest.fixture
def dynamodb(monkeypatch):
    for k, v in FAKE_AWS.items():
        monkeypatch.setenv(k, v)
    with mock_aws():
        client = boto3.client("dynamodb")
        client.create_table(
            TableName="throttle",
            AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
        )
        yield client


def test_failures_spread_over_containers_lock_the_key_everywhere(dynamodb):
    containers = [
        SharedFailureThrottle(
            "throttle", client=dynamodb, secret="s3cret", limit=5, window=60, lock_seconds=60
        )
        for _ in range(4)
    ]
    key = ("index_key", "cv_0123", "tenant-a", "payroll-index")
    other = ("index_key", "cv_0123", "tenant-a", "another-index")
    # 5 failures, round robin: no container alone sees more than 2 — per process none would lock
    for n in range(5):
        containers[n % 4].failed(key)
    assert all(c.retry_after(key) == 0 for c in containers)
    containers[1].failed(key)  # the 6th, anywhere: over the shared limit
    assert containers[1].retry_after(key) > 0
    # the others learn of it at their next failure: each lets at most one more through
    for c in (containers[0], containers[2], containers[3]):
        assert c.retry_after(key) == 0
        c.failed(key)
        assert c.retry_after(key) > 0
    assert all(c.retry_after(other) == 0 for c in containers)  # other keys are not affected
    items = dynamodb.scan(TableName="throttle")["Items"]
    text = json.dumps(items)
    assert "payroll" not in text and "cv_0123" not in text and "tenant-a" not in text
    assert sorted(int(i["n"]["N"]) for i in items) == [9]  # one window, every failure counted
    assert all(int(i["expires"]["N"]) > 0 for i in items)
    # the item key is an HMAC under the deployment's secret: without it, no address or key
    # can be confirmed by hashing guesses
    assert items[0]["k"]["S"].split(":")[0] != hashlib.sha256(repr(key).encode()).hexdigest()
    other_secret = SharedFailureThrottle("throttle", client=dynamodb, secret="another")
    assert other_secret.item_key(key) != containers[0].item_key(key) == containers[3].item_key(key)


def test_a_per_process_throttle_alone_would_not_have_locked():
    local = [FailureThrottle(limit=5, window=60, lock_seconds=60) for _ in range(4)]
    key = ("address", "203.0.113.9")
    for n in range(9):
        local[n % 4].failed(key)
    assert all(t.retry_after(key) == 0 for t in local)


def test_an_unreachable_table_leaves_the_local_count(dynamodb):
    throttle = SharedFailureThrottle("no-such-table", client=dynamodb, limit=2, window=60, lock_seconds=60)
    key = ("address", "198.51.100.7")
    for _ in range(3):
        throttle.failed(key)
    assert throttle.retry_after(key) > 0


def test_the_setting_shares_the_count(dynamodb, tmp_path):
    from ciphervec.infra import wiring
    from ciphervec.infra.settings import Settings

    settings = Settings(store_uri=f"file://{tmp_path}/d", keys_uri="memory://", throttle_table="throttle")
    c = wiring.build(settings, dynamodb=dynamodb)
    assert isinstance(c.throttle, SharedFailureThrottle) and c.throttle.limit == settings.throttle_failures
    assert (
        type(wiring.build(settings.with_(throttle_table=""), dynamodb=dynamodb).throttle) is FailureThrottle
    )
