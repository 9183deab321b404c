import boto3
import pytest
from moto import mock_aws

from ciphervec.engine.errors import Forbidden, InvalidRequest, Unauthorized
from ciphervec.infra.keystore import Authenticator, hash_secret, open_keystore


@pytest.fixture(params=["file", "dynamodb", "memory"])
def keystore(request, tmp_path):
    if request.param == "file":
        yield open_keystore(f"file://{tmp_path}/keys.json")
    elif request.param == "memory":
        yield open_keystore("memory://")
    else:
        with mock_aws():
            client = boto3.client("dynamodb", region_name="us-east-1")
            client.create_table(
                TableName="cv-keys",
                KeySchema=[{"AttributeName": "key_id", "KeyType": "HASH"}],
                AttributeDefinitions=[{"AttributeName": "key_id", "AttributeType": "S"}],
                BillingMode="PAY_PER_REQUEST",
            )
            yield open_keystore("dynamodb://cv-keys", dynamodb_client=client)


def test_create_authenticate_revoke(keystore):
    auth = Authenticator(keystore, cache_seconds=0)
    key, record = auth.create_key("acme", "write")
    p = auth.authenticate(key)
    assert p.tenant == "acme" and p.rights == {"read", "write"}
    p.require("write")
    with pytest.raises(Forbidden):
        p.require("admin")
    auth.revoke(record.key_id)
    with pytest.raises(Unauthorized):
        auth.authenticate(key)
    assert [r.key_id for r in keystore.list("acme")] == [record.key_id]


def test_store_keeps_only_a_hash(keystore, tmp_path):
    auth = Authenticator(keystore)
    key, record = auth.create_key("acme", "admin")
    secret = key.rsplit("_", 1)[1]
    stored = keystore.get(record.key_id)
    assert stored.secret_hash == hash_secret(secret) and secret not in repr(stored.to_item())
    for f in tmp_path.glob("*.json"):
        assert secret not in f.read_text()
        assert oct(f.stat().st_mode & 0o777) == "0o600"


def test_user_keys_are_scoped(keystore):
    auth = Authenticator(keystore)
    key, _ = auth.create_key("acme", "user", index_name="docs", permissions=["read"])
    p = auth.authenticate(key)
    p.require("read", "docs")
    with pytest.raises(Forbidden):
        p.require("read", "other")
    with pytest.raises(Forbidden):
        p.require("write", "docs")


@pytest.mark.parametrize("bad", [None, "", "nope", "cv_0123456789abcdef_" + "0" * 64, "cv_zz_zz"])
def test_bad_keys_are_401(keystore, bad):
    with pytest.raises(Unauthorized):
        Authenticator(keystore).authenticate(bad)


def test_a_real_key_with_a_newline_after_it_is_401(keystore):
    """Key and tenant patterns hold to the end of the string: ``$`` also matched before a
    final newline, so ``key + "\\n"`` authenticated and a tenant ``"acme\\n"`` was minted."""
    auth = Authenticator(keystore)
    key, _ = auth.create_key("acme", "read")
    assert auth.authenticate(key).tenant == "acme"
    with pytest.raises(Unauthorized):
        auth.authenticate(key + "\n")


def test_wrong_secret_for_a_real_key_id(keystore):
    auth = Authenticator(keystore)
    key, _ = auth.create_key("acme", "read")
    forged = key[:-4] + ("0000" if not key.endswith("0000") else "1111")
    with pytest.raises(Unauthorized):
        auth.authenticate(forged)


def test_root_key_and_disabled_auth(keystore):
    auth = Authenticator(keystore, root_key="r00t-key")
    assert auth.authenticate("r00t-key").tenant == "default"
    assert "admin" in Authenticator(keystore, enabled=False).authenticate(None).rights


@pytest.mark.parametrize("args", [("bad tenant!", "admin"), ("acme", "owner"), ("acme\n", "admin")])
def test_invalid_key_requests(keystore, args):
    with pytest.raises(InvalidRequest):
        Authenticator(keystore).create_key(*args)


def test_user_permissions_validated(keystore):
    with pytest.raises(InvalidRequest):
        Authenticator(keystore).create_key("acme", "user", index_name="i", permissions=["delete"])
