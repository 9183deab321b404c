"""POST /v1/indexes/rotate_key: the data key re-wrapped under a new client key or KMS key
name (either way round), in one head commit; the old key stops at once, in every container."""

import threading

import numpy as np
import pytest

from ciphervec.engine.errors import InvalidRequest, Unauthorized
from ciphervec.engine.model import IndexConfig, RowBatch
from ciphervec.infra.kms import LocalKeyWrapper
from ciphervec.infra.storage.memory import MemoryStore
from tests.test_api import KEY, app, call, count, create, upsert_b64  # noqa: F401 (app: fixture)
from tests.test_service import fresh

NEW = "cd" * 32
THIRD = "ef" * 32


def query(key=None, name="idx"):
    body = {"index_name": name, "query_vectors": [1, 0, 0, 0], "top_k": 2}
    if key is not None:
        body["index_key"] = key
    return call("POST", "/v1/vectors/query", body)


def rotate(**body):
    return call("POST", "/v1/indexes/rotate_key", {"index_name": "idx", **body})


@pytest.mark.usefixtures("app")
def test_client_key_to_client_key(tmp_path):
    create()
    upsert_b64("idx", ["a", "b"], [[1, 0, 0, 0], [0, 1, 0, 0]])
    before = query(KEY)[1]
    status, body, _ = rotate(index_key=KEY, new_index_key=NEW)
    assert status == 200 and body["key_mode"] == "client" and NEW not in str(body)
    assert query(KEY)[0] == 401  # this container held the head: the old key still fails
    assert query(NEW)[1] == before
    assert upsert_b64("idx", ["c"], [[0, 0, 1, 0]], key=NEW)[0] == 200 and count(key=NEW) == 3
    assert upsert_b64("idx", ["d"], [[0, 0, 0, 1]], key=KEY)[0] == 401
    store = tmp_path / "data"
    for path in store.rglob("*"):  # the new key is never stored
        if path.is_file():
            assert bytes.fromhex(NEW) not in path.read_bytes() and NEW.encode() not in path.read_bytes()


@pytest.mark.usefixtures("app")
def test_client_key_to_kms_and_back():
    create()
    upsert_b64("idx", ["a", "b"], [[1, 0, 0, 0], [0, 1, 0, 0]])
    assert query()[0] == 401  # a client-key index needs its key
    status, body, _ = rotate(index_key=KEY, new_kms_name="default")
    assert status == 200 and body["key_mode"] == "kms"
    assert query()[0] == 200 and count(key=None) == 2  # server-managed now: no index_key
    assert query(KEY)[0] == 200  # an index_key is ignored by a kms index, as at create
    assert rotate(kms_name="other", new_index_key=THIRD)[0] == 401  # not its KMS key name
    status, body, _ = rotate(kms_name="default", new_index_key=THIRD)
    assert status == 200 and body["key_mode"] == "client"
    assert query()[0] == 401 and query(KEY)[0] == 401
    assert [h["id"] for h in query(THIRD)[1]["results"]] == ["a", "b"]


@pytest.mark.usefixtures("app")
def test_per_index_user_keys_keep_working():
    create()
    upsert_b64("idx", ["a"], [[1, 0, 0, 0]])
    status, user, _ = call("POST", "/v1/indexes/idx/users", {"permissions": ["read"], "index_key": KEY})
    assert status == 200
    assert rotate(index_key=KEY, new_index_key=NEW)[0] == 200
    body = {"index_name": "idx", "index_key": NEW}
    assert call("POST", "/v1/vectors/num_vectors", body, key=user["api_key"])[1] == {"result": 1}
    # and a read key cannot rotate
    assert (
        call("POST", "/v1/indexes/rotate_key", {**body, "new_index_key": THIRD}, key=user["api_key"])[0]
        == 403
    )


@pytest.mark.parametrize(
    "body, status",
    [
        ({"index_key": KEY}, 400),  # no new key
        ({"index_key": KEY, "new_index_key": NEW, "new_kms_name": "default"}, 400),  # both
        ({"index_key": KEY, "new_index_key": "zz" * 32}, 400),  # not a key
        ({"index_key": NEW, "new_index_key": THIRD, "reencrypt": True}, 401),  # wrong key, reencrypt
        ({"index_key": NEW, "new_index_key": THIRD}, 401),  # wrong current key
        ({"new_index_key": THIRD}, 401),  # no current key
        ({"index_key": KEY, "new_index_key": NEW, "index_name": "nope"}, 404),
    ],
)
@pytest.mark.usefixtures("app")
def test_refused_rotations_change_nothing(body, status):
    create()
    upsert_b64("idx", ["a"], [[1, 0, 0, 0]])
    got, payload, _ = rotate(**body)
    assert got == status and isinstance(payload["detail"], str)
    assert NEW not in payload["detail"] and "zz" * 32 not in payload["detail"]
    assert count() == 1  # the current key still opens it


def test_writes_racing_a_rotation_lose_nothing(tmp_path):
    """Writers with the old key either commit before the rotation (and stay) or get 401;
    a cold container afterwards opens the index with the new key only."""
    store, wrapper = MemoryStore(), LocalKeyWrapper(tmp_path)
    old, new = bytes(range(32)), bytes(range(1, 33))
    svc = fresh(store, key_wrapper=wrapper)
    svc.create_index("t", "i", IndexConfig(dimension=4), kek=old)
    acked: list[str] = []
    stop = threading.Event()

    def writer(w: int) -> None:
        n = 0
        while not stop.is_set():
            rid = f"w{w}-{n}"
            try:
                svc.upsert("t", "i", old, RowBatch([rid], np.ones((1, 4), np.float32) * n))
            except Unauthorized:
                return
            acked.append(rid)
            n += 1

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    while len(acked) < 30:
        pass
    assert fresh(store, key_wrapper=wrapper).rotate_key("t", "i", old, new, None) == "client"
    for t in threads:
        t.join(timeout=20)
    stop.set()
    assert not any(t.is_alive() for t in threads)  # every writer was refused after the commit
    cold = fresh(store, key_wrapper=wrapper)
    with pytest.raises(Unauthorized):
        cold.num_vectors("t", "i", old)
    assert set(acked) <= set(cold.list_ids("t", "i", new))
    with pytest.raises(InvalidRequest):
        cold.rotate_key("t", "i", new, new, "default")  # one new key, not two


@pytest.mark.parametrize("name", ["key\n", "../key", "", "k" * 129])
def test_local_key_names_hold_to_the_whole_string(tmp_path, name):
    """A local master key is a file named after the key: a name is letters, digits, '.',
    '_' and '-' to its very end ("$" also matched before a final newline)."""
    with pytest.raises(InvalidRequest):
        LocalKeyWrapper(tmp_path).wrap(name, b"k" * 32, {"index": "i"})
    assert not list(tmp_path.iterdir())
