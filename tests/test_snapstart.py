"""Lambda SnapStart: a restore is modelled by forking a process after init, as many restored
environments share one snapshot. The children must never produce the same nonce, id, data
key or random draw, must make their own AWS clients with their own credentials, and must
serve sealed indexes end to end. Without the restore hooks the children draw the same
``random`` numbers: the check can fail."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from cfnlint.decode.cfn_yaml import loads as cfn_loads

from tests.conftest import ROOT

# Init (what Lambda snapshots), then two forks; each child runs the after-restore hooks (or
# not, with "no-hooks") and writes what it made to <tag>.json in the given folder.
SNAPSHOT = textwrap.dedent(
    r"""
    import base64, json, os, random, sys
    import numpy as np
    import snapshot_restore_py as hooks

    os.environ.update(AWS_DEFAULT_REGION="us-east-1", AWS_ACCESS_KEY_ID="snapshot-key",
                      AWS_SECRET_ACCESS_KEY="snapshot-secret")
    from ciphervec.engine.arrays import ann
    from ciphervec.engine.codec import crypto
    from ciphervec.engine.store import jobs
    from ciphervec.engine import names
    from ciphervec.handlers.api import lambda_handler
    from ciphervec.infra import aws
    from ciphervec.infra.settings import Settings
    from ciphervec.infra.wiring import configure

    configure(Settings(store_uri="memory://", keys_uri="memory://", root_key="root-key-for-the-test",
                       kms_uri="local://" + sys.argv[2] + "/kms", train_threshold=10**9))
    for fn, args, kwargs in reversed(hooks.get_before_snapshot()):  # as the runtime does
        fn(*args, **kwargs)
    before = aws.client("s3")
    assert "faiss" in sys.modules and type(ann.faiss).__name__ == "module"  # warmed

    def call(method, path, body):
        event = {"version": "2.0", "rawPath": path, "rawQueryString": "", "body": json.dumps(body),
                 "headers": {"x-api-key": "root-key-for-the-test", "content-type": "application/json"},
                 "requestContext": {"http": {"method": method, "path": path, "sourceIp": "10.0.0.1"},
                                    "requestId": "r"}}
        out = lambda_handler(event, None)
        return out["statusCode"], json.loads(out["body"])

    np.random.random()  # init drew from numpy's global generator: it is in the snapshot
    snapshot_random = random.getstate()

    def child(tag):
        # A fork reseeds Python's random (os.register_at_fork); a restore resumes the memory
        # image as it was, so the child starts from the snapshot's state.
        random.setstate(snapshot_random)
        os.environ["AWS_ACCESS_KEY_ID"] = f"restored-{tag}"  # this environment's credentials
        if sys.argv[1] == "hooks":
            for fn, args, kwargs in hooks.get_after_restore():
                fn(*args, **kwargs)
        cipher = crypto.IndexCipher(bytes(32), "t", "i")
        sealed = [cipher.encrypt("obj", b"x") for _ in range(200)]
        head = len(crypto.OBJECT_MAGIC)
        s3 = aws.client("s3")
        key = "ab" * 32
        rows = np.random.default_rng(7).standard_normal((40, 8)).astype(np.float32)
        items = [{"id": str(i), "vector": rows[i].tolist()} for i in range(40)]
        status = [
            call("POST", "/v1/indexes/create", {"index_name": "docs", "index_key": key, "dimension": 8})[0],
            call("POST", "/v1/vectors/upsert", {"index_name": "docs", "index_key": key, "items": items})[0],
        ]
        code, found = call("POST", "/v1/vectors/query",
                           {"index_name": "docs", "index_key": key, "query_vectors": rows[3].tolist(), "top_k": 1})
        report = {
            "nonces": [bytes(s[head:head + crypto.NONCE_BYTES]).hex() for s in sealed],
            "opened": all(cipher.decrypt("obj", s) == b"x" for s in sealed),
            "data_keys": [crypto.new_data_key().hex() for _ in range(50)],
            "ids": [names.new_id()[16:] for _ in range(50)] + [jobs.new_owner() for _ in range(50)],
            "random": [random.random() for _ in range(20)],
            "numpy": np.random.random(20).tolist(),
            "new_client": s3 is not before,
            "access_key": s3._request_signer._credentials.access_key,
            "status": status + [code],
            "nearest": found["results"][0]["id"] if code == 200 else None,
        }
        with open(os.path.join(sys.argv[2], f"{tag}.json"), "w") as f:
            json.dump(report, f)

    pids = []
    for tag in ("a", "b"):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                child(tag)
                code = 0
            except BaseException:
                import traceback
                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(code)
        pids.append(pid)
    sys.exit(max(os.waitpid(pid, 0)[1] for pid in pids) and 1)
    """
)


def restore_twice(tmp_path, hooks: bool) -> list[dict]:
    out = subprocess.run(
        [sys.executable, "-c", SNAPSHOT, "hooks" if hooks else "no-hooks", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    missing = [tag for tag in "ab" if not (tmp_path / f"{tag}.json").exists()]
    assert not missing, out.stderr[-2000:]
    return [json.loads((tmp_path / f"{tag}.json").read_text()) for tag in "ab"]


def test_two_restores_of_one_snapshot_share_no_nonce_id_key_or_draw(tmp_path):
    a, b = restore_twice(tmp_path, hooks=True)
    for field in ("nonces", "data_keys", "ids", "random", "numpy"):
        assert len(set(a[field])) == len(a[field]), field  # none repeats within a child
        assert not set(a[field]) & set(b[field]), field  # nor across them
    for report, tag in ((a, "a"), (b, "b")):
        assert report["opened"]  # sealing works after the restore
        assert report["status"] == [200, 200, 200]
        assert report["nearest"] == "3"
        assert report["new_client"]  # the snapshot's client (connections, credentials) is gone
        assert report["access_key"] == f"restored-{tag}"


def test_without_the_restore_hooks_the_children_draw_the_same_numbers(tmp_path):
    a, b = restore_twice(tmp_path, hooks=False)
    assert a["random"] == b["random"] and a["numpy"] == b["numpy"]  # what the hooks are for
    assert not a["new_client"] and a["access_key"] == "snapshot-key"
    assert not set(a["nonces"]) & set(b["nonces"])  # os.urandom at each use needs no hook


def test_snapstart_is_on_for_the_api_function_and_can_be_turned_off():
    t = cfn_loads((ROOT / "template.yaml").read_text())
    api = t["Resources"]["ApiFunction"]["Properties"]
    assert api["SnapStart"] == {"ApplyOn": {"Ref": "ApiSnapStart"}}
    assert api["AutoPublishAlias"]  # SnapStart applies to published versions
    param = t["Parameters"]["ApiSnapStart"]
    assert param["Default"] == "PublishedVersions" and set(param["AllowedValues"]) == {
        "PublishedVersions",
        "None",
    }
    # Lambda refuses SnapStart with more than 512 MB of ephemeral storage
    storage = t["Resources"]["ApiFunction"]["Properties"].get("EphemeralStorage", {"Size": 512})
    assert storage["Size"] <= 512
