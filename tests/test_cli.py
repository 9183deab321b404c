"""`ciphervec keys …` and `ciphervec bench` as a person would run them."""

import json
import subprocess
import sys

import pytest

from ciphervec.engine.errors import Unauthorized
from ciphervec.infra.keystore import Authenticator, open_keystore


def cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "ciphervec.handlers.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
    )


def test_keys_create_list_revoke(tmp_path):
    uri = f"file://{tmp_path}/keys.json"
    made = cli("keys", "--keys", uri, "create", "--tenant", "acme", "--role", "write", "--label", "ci")
    assert made.returncode == 0, made.stderr
    api_key = made.stdout.strip()
    auth = Authenticator(open_keystore(uri), cache_seconds=0)
    assert auth.authenticate(api_key).tenant == "acme"
    scoped = cli(
        "keys", "--keys", uri, "create", "--tenant", "acme", "--index", "docs", "--permissions", "read"
    )
    assert auth.authenticate(scoped.stdout.strip()).index_name == "docs"
    listed = [
        json.loads(line)
        for line in cli("keys", "--keys", uri, "list", "--tenant", "acme").stdout.splitlines()
    ]
    assert {r["role"] for r in listed} == {"write", "user"} and all(
        api_key not in json.dumps(r) for r in listed
    )
    key_id = api_key.split("_")[1]
    assert cli("keys", "--keys", uri, "revoke", key_id).returncode == 0
    with pytest.raises(Unauthorized):
        auth.authenticate(api_key)
    assert cli("keys", "--keys", uri, "revoke", "0" * 16).returncode == 1


def test_bench_outside_a_checkout_says_so(tmp_path):
    out = cli("bench", "--repo", str(tmp_path), "--", "--help")
    assert out.returncode == 2 and "source checkout" in out.stderr
