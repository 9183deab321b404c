"""One contract, three adapters: memory, file, and S3 (moto)."""

import multiprocessing
import os

import boto3
import pytest
from moto import mock_aws

from ciphervec.engine.ports import BlobNotFound, StoreConflict
from ciphervec.infra.storage import open_store
from ciphervec.infra.storage.file import FileStore


@pytest.fixture(params=["memory", "file", "s3"])
def blob_store(request, tmp_path):
    if request.param == "memory":
        yield open_store("memory://")
    elif request.param == "file":
        yield open_store(f"file://{tmp_path}/data")
    else:
        with mock_aws():
            client = boto3.client("s3", region_name="us-east-1")
            client.create_bucket(Bucket="cv-test-bucket")
            yield open_store("s3://cv-test-bucket/pre/fix", s3_client=client)


def test_put_if_absent_then_conflict(blob_store):
    tag = blob_store.put_if_absent("t/i/seg/1", b"one")
    assert blob_store.get("t/i/seg/1") == (b"one", tag)
    with pytest.raises(StoreConflict):
        blob_store.put_if_absent("t/i/seg/1", b"two")
    assert blob_store.get("t/i/seg/1")[0] == b"one"


def test_compare_and_swap(blob_store):
    first = blob_store.put_if_absent("t/i/head", b"v1")
    second = blob_store.put_if_match("t/i/head", b"v2", first)
    assert second != first
    with pytest.raises(StoreConflict):
        blob_store.put_if_match("t/i/head", b"v3", first)
    assert blob_store.get("t/i/head") == (b"v2", second)


def test_conditional_get(blob_store):
    tag = blob_store.put_if_absent("t/i/head", b"v1")
    assert blob_store.get("t/i/head", if_none_match=tag) is None
    assert blob_store.get("t/i/head", if_none_match="other")[0] == b"v1"


def test_missing_and_delete(blob_store):
    with pytest.raises(BlobNotFound):
        blob_store.get("t/none")
    blob_store.put_if_absent("t/a", b"x")
    blob_store.delete("t/a")
    blob_store.delete("t/a")
    with pytest.raises(BlobNotFound):
        blob_store.get("t/a")


def test_list_by_prefix(blob_store):
    for key in ("t/i/head", "t/i/seg/1", "t/ij/head", "u/i/head"):
        blob_store.put_if_absent(key, b"x")
    assert sorted(blob_store.list("t/i/")) == ["t/i/head", "t/i/seg/1"]
    assert sorted(blob_store.list("t/")) == ["t/i/head", "t/i/seg/1", "t/ij/head"]


def test_file_store_rejects_traversal(tmp_path):
    store = FileStore(tmp_path)
    for key in ("../x", "a/../../x", "a//b", "x.lock"):
        with pytest.raises(ValueError):
            store.put_if_absent(key, b"x")


def _increment(root, n, out):
    store = FileStore(root)
    done = 0
    while done < n:
        data, tag = store.get("counter")
        try:
            store.put_if_match("counter", str(int(data) + 1).encode(), tag)
            done += 1
        except StoreConflict:
            continue
    out.put(done)


def test_file_store_cas_across_processes(tmp_path):
    store = FileStore(tmp_path)
    store.put_if_absent("counter", b"0")
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_increment, args=(str(tmp_path), 40, out)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert sum(out.get() for _ in procs) == 120
    assert store.get("counter")[0] == b"120"
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]


def test_unknown_uri():
    with pytest.raises(ValueError):
        open_store("ftp://x")


def test_a_full_disk_is_storage_full_and_leaves_no_temp_files(tmp_path, monkeypatch):
    import errno

    from ciphervec.engine.errors import StorageFull
    from ciphervec.infra.storage import file as file_store

    store = file_store.FileStore(tmp_path)
    store.put_if_absent("a/head", b"v1")
    real_fsync = file_store.os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(file_store.os, "fsync", full)
    with pytest.raises(StorageFull):
        store.put_if_absent("a/seg", b"x" * 100)
    with pytest.raises(StorageFull):
        store.put_if_match("a/head", b"v2", store.get("a/head")[1])
    monkeypatch.setattr(file_store.os, "fsync", real_fsync)
    assert store.get("a/head")[0] == b"v1"  # reads keep working, the head is as it was
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".tmp-")]


def test_stale_temp_files_are_swept_and_fresh_ones_kept(tmp_path):
    import os
    import time

    from ciphervec.infra.storage.file import FileStore

    store = FileStore(tmp_path)
    (tmp_path / "i").mkdir()
    old, new = tmp_path / "i" / ".tmp-seg.1.aa", tmp_path / "i" / ".tmp-seg.2.bb"
    old.write_bytes(b"left by a kill -9")
    new.write_bytes(b"a write in progress")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert store.sweep_temps() == 1
    assert not old.exists() and new.exists()
