"""Batch loads on the memory store from local files: every format, all-or-nothing, resume,
exactly-once commits, sweeps of abandoned staging."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ciphervec.engine.errors import IndexBusy, LoadBusy, LostLease
from ciphervec.engine.model import IndexConfig, RowBatch
from ciphervec.engine.service import IndexService
from ciphervec.infra.loading import Target, start, work
from ciphervec.infra.storage.memory import MemoryStore
from tests.conftest import clustered

D = 16


def write_parquet(path: Path, ids, vectors, metadata=None, contents=None, row_group=None, fixed=False):
    cols = {"id": pa.array(ids)}
    if fixed:
        cols["vector"] = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1])
    else:
        cols["vector"] = pa.array([list(map(float, v)) for v in vectors], type=pa.list_(pa.float32()))
    if metadata is not None:
        cols["metadata"] = pa.array(metadata)
    if contents is not None:
        cols["contents"] = pa.array(contents)
    pq.write_table(pa.table(cols), path, row_group_size=row_group)
    return path


@pytest.fixture
def index(service: IndexService, kek: bytes) -> Target:
    service.create_index("t", "docs", IndexConfig(dimension=D, metric="euclidean"), kek=kek)
    return Target("t", "docs", kek)


def load(service: IndexService, target: Target, path: Path, **kw):
    job, _ = start(service, target, str(path), options=kw.pop("options", None))
    return work(service, target, job.job_id, **kw)


def test_parquet_loads_whole_and_is_queryable(service, index, tmp_path):
    x = clustered(1000, D, seed=1)
    ids = [f"r{i}" for i in range(1000)]
    meta = [json.dumps({"i": i, "even": i % 2 == 0}) for i in range(1000)]
    path = write_parquet(
        tmp_path / "a.parquet", ids, x, meta, [f"text {i}" for i in range(1000)], row_group=300
    )
    done = load(service, index, path, options={"rows": 256})
    assert done.state == "succeeded", done.status()
    assert done.rows_loaded == 1000 and done.index_count == 1000
    assert len(done.staged) == 4  # 256-row chunks
    assert service.num_vectors("t", "docs", index.kek) == 1000
    got = service.get("t", "docs", index.kek, ["r7"], ["vector", "metadata", "contents"])
    np.testing.assert_allclose(got[0]["vector"], x[7], rtol=1e-6)
    assert got[0]["metadata"] == {"i": 7, "even": False} and got[0]["contents"] == "text 7"
    hits = service.query("t", "docs", index.kek, x[42:43], top_k=1, n_probes=0, filters=None, include=[])
    assert hits[0][0]["id"] == "r42"


def test_fixed_size_lists_float16_and_struct_metadata(service, index, tmp_path):
    x = clustered(50, D, seed=2).astype(np.float16)
    meta = pa.array([{"k": i} for i in range(50)])
    table = pa.table(
        {
            "doc": pa.array([f"d{i}" for i in range(50)]),
            "emb": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), D),
            "metadata": meta,
        }
    )
    pq.write_table(table, tmp_path / "b.parquet")
    done = load(service, index, tmp_path / "b.parquet", options={"columns": {"id": "doc", "vector": "emb"}})
    assert done.state == "succeeded", done.status()
    got = service.get("t", "docs", index.kek, ["d3"], ["vector", "metadata"])
    np.testing.assert_allclose(got[0]["vector"], x[3].astype(np.float32))
    assert got[0]["metadata"] == {"k": 3}


def test_npy_with_ids_sidecar_and_npz(service, index, tmp_path):
    x = clustered(300, D, seed=3)
    np.save(tmp_path / "v.npy", x.astype(np.float64))
    (tmp_path / "v.ids.txt").write_text("".join(f"n{i}\n" for i in range(300)))
    assert load(service, index, tmp_path / "v.npy", options={"rows": 64}).state == "succeeded"
    np.savez(tmp_path / "z.npz", ids=np.array([f"z{i}" for i in range(300)]), vectors=x)
    assert load(service, index, tmp_path / "z.npz", options={"rows": 100}).state == "succeeded"
    assert service.num_vectors("t", "docs", index.kek) == 600
    got = service.get("t", "docs", index.kek, ["n299", "z0"], ["vector"])
    np.testing.assert_allclose(got[0]["vector"], x[299], rtol=1e-6)
    np.testing.assert_allclose(got[1]["vector"], x[0], rtol=1e-6)


def test_jsonl_items_duplicates_last_wins_and_overwrites(service, index, tmp_path):
    x = clustered(20, D, seed=4)
    from ciphervec.engine.model import RowBatch

    service.upsert("t", "docs", index.kek, RowBatch(["j0"], x[19:20]))
    lines = [json.dumps({"id": f"j{i}", "vector": x[i].tolist(), "metadata": {"n": i}}) for i in range(10)]
    lines.append(json.dumps({"id": "j3", "vector": x[15].tolist(), "contents": "again"}))
    (tmp_path / "items.jsonl").write_text("\n".join(lines) + "\n")
    done = load(service, index, tmp_path / "items.jsonl", options={"rows": 4})
    assert done.state == "succeeded", done.status()
    assert service.num_vectors("t", "docs", index.kek) == 10
    got = service.get("t", "docs", index.kek, ["j3", "j0"], ["vector", "contents", "metadata"])
    np.testing.assert_allclose(got[0]["vector"], x[15], rtol=1e-6)
    assert got[0]["contents"] == "again" and not got[0]["metadata"]
    np.testing.assert_allclose(got[1]["vector"], x[0], rtol=1e-6)  # the index's old j0 overwritten


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("dimension", "vector has 5 values; expected 16"),
        ("nan", "NaN or Inf"),
        ("id", "id is not a non-empty string"),
        ("metadata", "metadata is not valid JSON"),
    ],
)
def test_a_bad_row_loads_nothing_and_says_why(service, index, tmp_path, store: MemoryStore, kind, reason):
    x = clustered(500, D, seed=5)
    ids: list = [f"b{i}" for i in range(500)]
    meta = [json.dumps({"i": i}) for i in range(500)]
    if kind == "dimension":
        path = tmp_path / "bad.jsonl"
        rows = [{"id": ids[i], "vector": x[i].tolist()} for i in range(500)]
        rows[437]["vector"] = rows[437]["vector"][:5]
        path.write_text("\n".join(json.dumps(r) for r in rows))
    else:
        if kind == "nan":
            x[437, 3] = np.nan
        if kind == "id":
            ids[437] = ""
        if kind == "metadata":
            meta[437] = "{not json"
        path = write_parquet(tmp_path / "bad.parquet", ids, x, meta)
    before = set(store.list(""))
    done = load(service, index, path, options={"rows": 100})
    assert done.state == "failed"
    assert done.rows_loaded == 0 and done.refused >= 1
    assert any(r["row"] == 437 and reason in r["reason"] for r in done.reasons), done.reasons
    assert service.num_vectors("t", "docs", index.kek) == 0
    left = {k for k in store.list("") if "/load/" in k}
    assert not left, "staged segments of a failed load are removed"
    assert not [k for k in set(store.list("")) - before if ".loads/" not in k]
    # nothing of the file's data in the failure record
    raw = b"".join(store.get(k)[0] for k in store.list("") if ".loads/" in k)
    assert b"b437" not in raw and b"not json" not in raw


def test_not_a_parquet_file(service, index, tmp_path):
    (tmp_path / "x.parquet").write_bytes(b"garbage" * 100)
    done = load(service, index, tmp_path / "x.parquet")
    assert done.state == "failed" and "not a readable Parquet file" in done.reasons[0]["reason"]


def test_interrupted_job_resumes_and_commits_once(service, index, tmp_path, store):
    x = clustered(1000, D, seed=6)
    path = write_parquet(tmp_path / "r.parquet", [f"r{i}" for i in range(1000)], x, row_group=128)
    job, new = start(service, index, str(path), options={"rows": 100})
    assert new
    calls = iter(range(100))
    paused = work(service, index, job.job_id, should_stop=lambda: next(calls) >= 3)
    assert paused.state == "paused" and 400 <= paused.rows_read < 1000  # chunks in flight are kept
    assert paused.position == {"row": paused.rows_read}
    assert sum(rows for _, rows in paused.staged) == paused.rows_read
    assert service.num_vectors("t", "docs", index.kek) == 0  # nothing visible before the commit
    again, new = start(service, index, str(path), options={"rows": 100})  # a redelivered message
    assert not new and again.job_id == job.job_id
    done = work(service, index, job.job_id)
    assert done.state == "succeeded" and done.rows_read == 1000 and done.invocations == 2
    assert service.num_vectors("t", "docs", index.kek) == 1000
    head = service.heads.open("t", "docs", index.kek)
    assert sum(s.rows for s in head.body.segments if s.name.startswith("load/")) == 1000  # none twice
    # a duplicate delivery after the end does nothing
    assert work(service, index, job.job_id).state == "succeeded"
    assert len(service.heads.open("t", "docs", index.kek).body.segments) == len(head.body.segments)


def die_after_commit(service, target, job_id):
    """Run the job, the worker dying after its head commit, before the record says so."""
    jobs = service.loader.jobs
    real_save = jobs.save

    def save(tenant, record, head):
        if record.state == "succeeded":
            raise ConnectionError("the worker died after the head commit")
        real_save(tenant, record, head)

    jobs.save = save
    try:
        with pytest.raises(ConnectionError):
            work(service, target, job_id)
    finally:
        jobs.save = real_save


def test_crash_after_commit_does_not_commit_twice(service, index, tmp_path, store):
    x = clustered(100, D, seed=7)
    path = write_parquet(tmp_path / "c.parquet", [f"c{i}" for i in range(100)], x)
    job, _ = start(service, index, str(path))
    die_after_commit(service, index, job.job_id)
    n_refs = len(service.heads.open("t", "docs", index.kek).body.segments)
    service.loader.jobs.clock = lambda: 10**12  # the crashed worker's lease has run out
    done = work(service, index, job.job_id)
    assert done.state == "succeeded"
    assert len(service.heads.open("t", "docs", index.kek).body.segments) == n_refs
    assert service.num_vectors("t", "docs", index.kek) == 100


def test_a_running_job_is_not_taken_over_until_its_lease_runs_out(service, index, tmp_path):
    x = clustered(300, D, seed=8)
    path = write_parquet(tmp_path / "l.parquet", [f"l{i}" for i in range(300)], x)
    job, _ = start(service, index, str(path), options={"rows": 100})
    head = service.heads.open("t", "docs", index.kek)
    mine = service.loader.claim(head, job.job_id, "worker-a")
    with pytest.raises(LoadBusy):
        work(service, index, job.job_id, owner="worker-b")
    t = service.loader.jobs.clock()
    service.loader.jobs.clock = lambda: t + 1000
    assert work(service, index, job.job_id, owner="worker-b").state == "succeeded"
    with pytest.raises(LostLease):  # worker a wakes up: its record is stale
        service.loader.jobs.save("t", mine, head)


def test_sweep_keeps_staging_of_live_jobs_and_removes_abandoned(store, kek, tmp_path):
    import time as _t

    t0 = _t.time()
    now = [t0]
    service = IndexService(store, train_threshold=10**9, retire_grace_seconds=10, clock=lambda: now[0])
    service.create_index("t", "docs", IndexConfig(dimension=D), kek=kek)
    target = Target("t", "docs", kek)
    x = clustered(600, D, seed=9)
    path = write_parquet(tmp_path / "s.parquet", [f"s{i}" for i in range(600)], x)
    job, _ = start(service, target, str(path), options={"rows": 100})
    paused = work(service, target, job.job_id, should_stop=lambda: True)
    assert 1 <= len(paused.staged) <= 1 + 2  # the chunks already in flight are kept
    staged = [k for k in store.list("") if "/load/" in k]
    assert len(staged) == len(paused.staged)
    now[0] = t0 + 3600  # past the grace period, the job idle for an hour only
    service.sweep("t", "docs", kek)
    assert [k for k in store.list("") if "/load/" in k] == staged
    now[0] = t0 + 3 * 86400  # abandoned for days
    service.sweep("t", "docs", kek)
    assert not [k for k in store.list("") if "/load/" in k]
    # a later attempt starts over instead of committing what the sweep removed
    done = work(service, target, job.job_id)
    assert done.state == "succeeded" and service.num_vectors("t", "docs", kek) == 600


def test_load_can_trigger_training(store, kek, tmp_path):
    service = IndexService(store, train_threshold=500)
    service.create_index("t", "docs", IndexConfig(dimension=D), kek=kek)
    x = clustered(800, D, seed=10)
    path = write_parquet(tmp_path / "big.parquet", [f"g{i}" for i in range(800)], x)
    done = load(service, Target("t", "docs", kek), path)
    assert done.training_triggered
    assert service.heads.open("t", "docs", kek).envelope.training["state"] == "queued"


def test_dimension_is_taken_from_the_file_when_the_index_has_none(service, kek, tmp_path):
    service.create_index("t", "free", IndexConfig(), kek=kek)
    x = clustered(10, 7, seed=11)
    path = write_parquet(tmp_path / "f.parquet", [f"f{i}" for i in range(10)], x)
    done = load(service, Target("t", "free", kek), path)
    assert done.state == "succeeded"
    assert service.describe("t", "free", kek)["dimension"] == 7


def test_wrong_key_cannot_start_or_read_a_job(service, index, tmp_path):
    from ciphervec.engine.errors import Unauthorized

    path = write_parquet(tmp_path / "k.parquet", ["a"], clustered(1, D))
    with pytest.raises(Unauthorized):
        start(service, Target("t", "docs", bytes(32)), str(path))


def test_plaintext_never_reaches_the_store(service, index, tmp_path, store):
    x = clustered(64, D, seed=12)
    path = write_parquet(
        tmp_path / "p.parquet",
        [f"secret-id-{i}" for i in range(64)],
        x,
        [json.dumps({"tag": "secret-tag"})] * 64,
        ["secret contents"] * 64,
    )
    assert load(service, index, path).state == "succeeded"
    blob = b"".join(store.get(k)[0] for k in store.list(""))
    for needle in (b"secret-id", b"secret-tag", b"secret contents", b"p.parquet", x[:2].tobytes()[:16]):
        assert needle not in blob


def test_a_recreated_index_loads_the_same_file_anew(service, index, tmp_path):
    path = write_parquet(tmp_path / "again.parquet", ["a", "b"], clustered(2, D))
    first = load(service, index, path)
    assert first.state == "succeeded"
    service.delete_index("t", "docs", index.kek)
    service.create_index("t", "docs", IndexConfig(dimension=D), kek=index.kek)
    second = load(service, index, path)
    assert second.job_id != first.job_id and second.state == "succeeded"
    assert service.num_vectors("t", "docs", index.kek) == 2


def test_npy_job_follows_its_ids_file(service, index, tmp_path):
    np.save(tmp_path / "late.npy", clustered(3, D))
    early = load(service, index, tmp_path / "late.npy")
    assert early.state == "failed" and "ids.txt" in early.reasons[0]["reason"]
    (tmp_path / "late.ids.txt").write_text("x\ny\nz\n")
    later = load(service, index, tmp_path / "late.npy")  # the same array, now with its ids
    assert later.job_id != early.job_id and later.state == "succeeded"


# -- found in review: each of these lost rows, stuck a job or committed twice before ---------
def jsonl_file(path: Path, n: int, d: int = D, dims=None) -> Path:
    x = clustered(n, 16, seed=20)[:, :1].repeat(max(d, 1), axis=1) if n else np.zeros((0, d))
    with open(path, "w") as f:
        for i in range(n):
            width = dims(i) if dims else d
            f.write(json.dumps({"id": f"r{i}", "vector": [float(x[i, 0]) + j for j in range(width)]}) + "\n")
    return path


def test_a_failed_staged_write_is_redone_not_skipped(kek, tmp_path):
    class Flaky(MemoryStore):
        n = 0

        def put_if_absent(self, key, data):
            if "/load/" in key:
                self.n += 1
                if self.n == 2:
                    raise ConnectionError("S3 answered 500 to the second staged segment")
            return super().put_if_absent(key, data)

    service = IndexService(Flaky(), train_threshold=10**9)
    service.create_index("t", "docs", IndexConfig(dimension=D), kek=kek)
    target = Target("t", "docs", kek)
    job, _ = start(service, target, str(jsonl_file(tmp_path / "f.jsonl", 1000)), options={"rows": 100})
    with pytest.raises(ConnectionError):
        work(service, target, job.job_id)
    record = service.loader.jobs.read("t", job.job_id, service.heads.open("t", "docs", kek))
    # the checkpoint stops before the lost write, whichever of the parallel writes it was
    assert record.position.get("row", 0) == sum(rows for _, rows in record.staged) < 1000
    service.loader.jobs.clock = lambda: 10**12  # the lease ran out: a redelivery takes over
    done = work(service, target, job.job_id)
    assert done.state == "succeeded" and done.rows_loaded == 1000
    assert len(service.get("t", "docs", kek, [f"r{i}" for i in range(100, 200)], [])) == 100


@pytest.mark.parametrize(
    "line",
    [
        json.dumps({"id": "x", "vector": [1.0] * (D - 1) + [int("9" * 400)]}),  # overflows float
        '{"id": "x", "vector": ' + "[" * 5000 + "]" * 5000 + "}",  # nesting beyond the parser
        json.dumps({"id": "x", "vector": []}),  # no values at all
    ],
)
def test_a_file_that_breaks_the_reader_fails_the_job_instead_of_sticking(service, index, tmp_path, line):
    path = tmp_path / "odd.jsonl"
    path.write_text(json.dumps({"id": "ok", "vector": [0.5] * D}) + "\n" + line + "\n")
    done = load(service, index, path)
    assert done.state == "failed" and done.refused >= 1
    assert service.num_vectors("t", "docs", index.kek) == 0


def test_a_commit_is_recognised_after_many_later_loads(service, index, tmp_path):
    from ciphervec.engine.model import RowBatch

    path = write_parquet(tmp_path / "once.parquet", ["r0", "r1"], clustered(2, D, seed=21))
    job, _ = start(service, index, str(path))
    die_after_commit(service, index, job.job_id)
    newer = np.full((1, D), 9.0, dtype=np.float32)
    service.upsert("t", "docs", index.kek, RowBatch(["r0"], newer))
    for i in range(70):  # more loads than the head remembers by id
        small = write_parquet(tmp_path / f"s{i}.parquet", [f"s{i}"], clustered(1, D, seed=i))
        assert load(service, index, small).state == "succeeded"
    service.loader.jobs.clock = lambda: 10**12
    assert work(service, index, job.job_id).state == "succeeded"  # the redelivered message
    names = [s.name for s in service.heads.open("t", "docs", index.kek).body.segments]
    assert len(names) == len(set(names))
    got = service.get("t", "docs", index.kek, ["r0"], ["vector"])
    np.testing.assert_allclose(got[0]["vector"], newer[0])  # the newer write stands


def test_a_paused_load_keeps_the_file_dimension_it_started_with(service, kek, tmp_path):
    service.create_index("t", "free", IndexConfig(), kek=kek)
    target = Target("t", "free", kek)
    path = jsonl_file(tmp_path / "mixed.jsonl", 200, dims=lambda i: 4 if i < 100 else 6)
    job, _ = start(service, target, str(path), options={"rows": 100})
    assert work(service, target, job.job_id, should_stop=lambda: True).state == "paused"
    done = work(service, target, job.job_id)
    assert done.state == "failed" and done.reasons[0]["row"] == 100
    assert service.num_vectors("t", "free", kek) == 0


def test_a_load_committing_during_a_sweep_keeps_its_segments(store, kek, tmp_path):
    import time as _t

    t0 = _t.time()
    now = [t0]
    service = IndexService(store, train_threshold=10**9, retire_grace_seconds=10, clock=lambda: now[0])
    service.create_index("t", "docs", IndexConfig(dimension=D), kek=kek)
    target = Target("t", "docs", kek)
    path = write_parquet(tmp_path / "race.parquet", [f"r{i}" for i in range(300)], clustered(300, D))
    job, _ = start(service, target, str(path), options={"rows": 100})
    work(service, target, job.job_id, should_stop=lambda: True)
    now[0] = t0 + 600  # staged segments past the grace period
    real = service.maintenance.keeps_staged

    def racing(tenant, job_id, at):
        if not racing.done:
            racing.done = True
            assert work(service, target, job.job_id).state == "succeeded"  # another container
        return real(tenant, job_id, at)

    racing.done = False
    service.maintenance.keeps_staged = racing
    service.sweep("t", "docs", kek)
    assert service.num_vectors("t", "docs", kek) == 300


def test_refused_counts_rows_not_reasons(service, index, tmp_path):
    path = tmp_path / "two-bad.jsonl"
    path.write_text(
        json.dumps({"id": "ok", "vector": [0.5] * D})
        + "\n"
        + "[1, 2]\n"
        + json.dumps({"id": "", "vector": [0.5] * D, "metadata": [1]})
        + "\n"
    )
    done = load(service, index, path)
    assert done.state == "failed" and done.rows_read == 3 and done.refused == 2
    assert {r["row"] for r in done.reasons} == {1, 2}


def test_many_small_loads_queue_a_merge_as_upserts_do(store, kek, tmp_path):
    from ciphervec.infra.training import LocalTrainer

    service = IndexService(store, train_threshold=10**9, merge_at=4)
    service.create_index("t", "docs", IndexConfig(dimension=D), kek=kek)
    trainer = LocalTrainer(service)
    target = Target("t", "docs", kek)
    for i in range(5):
        path = write_parquet(tmp_path / f"m{i}.parquet", [f"m{i}"], clustered(1, D, seed=i))
        job, _ = start(service, target, str(path))
        work(service, target, job.job_id, trainer=trainer)
    deadline = time.time() + 10
    while len(service.heads.open("t", "docs", kek).body.segments) > 2 and time.time() < deadline:
        time.sleep(0.05)
    assert len(service.heads.open("t", "docs", kek).body.segments) <= 2  # merged in the background
    assert service.num_vectors("t", "docs", kek) == 5


def test_reencrypt_waits_for_a_load_in_progress(service, index, tmp_path):
    """A load's staged rows and checkpoint are sealed under the current data key, so a
    rotation onto a new one is refused (409, nothing changed) until the load has ended."""
    x = clustered(300, D, seed=9)
    path = write_parquet(tmp_path / "k.parquet", [f"k{i}" for i in range(300)], x, row_group=100)
    job, _ = start(service, index, str(path), options={"rows": 100})
    calls = iter(range(100))
    assert work(service, index, job.job_id, should_stop=lambda: next(calls) >= 1).state == "paused"
    new = bytes(range(5, 37))
    with pytest.raises(IndexBusy):
        service.rotate_key("t", "docs", index.kek, new, None, reencrypt=True)
    assert work(service, index, job.job_id).state == "succeeded"  # the old key still opens it
    service.rotate_key("t", "docs", index.kek, new, None, reencrypt=True)
    head = service.heads.open("t", "docs", new)
    # before the rewrite the checkpoint is under the old key: the public record still reads
    assert service.loader.jobs.read("t", job.job_id, head).state == "succeeded"
    service.rewrite("t", "docs", new)
    assert service.num_vectors("t", "docs", new) == 300
    assert service.describe("t", "docs", new)["key_rotation"]["objects_under_old_keys"] == 0
    # the rewrite sealed the job's checkpoint again under the new data key
    record = service.loader.jobs.read("t", job.job_id, service.heads.open("t", "docs", new))
    assert record.state == "succeeded" and record.source == str(path)
    again, fresh_job = start(service, Target("t", "docs", new), str(path), options={"rows": 100})
    assert not fresh_job and again.state == "succeeded"  # the same file: the same job, once


def test_a_checkpoint_no_key_opens_fails_its_job_instead_of_a_500(service, index, tmp_path):
    """A job still to run whose checkpoint was sealed under a data key the index dropped
    (rotated with reencrypt meanwhile, not yet resealed) reads as failed, with the reason."""
    x = clustered(200, D, seed=10)
    path = write_parquet(tmp_path / "f.parquet", [f"f{i}" for i in range(200)], x, row_group=100)
    job, _ = start(service, index, str(path), options={"rows": 100})
    new = bytes(range(7, 39))
    service.rotate_key("t", "docs", index.kek, new, None, reencrypt=True)  # queued: not in progress
    record = service.loader.jobs.read("t", job.job_id, service.heads.open("t", "docs", new))
    assert record.state == "failed" and "rotation" in record.error
    assert work(service, Target("t", "docs", new), job.job_id).state == "failed"


@pytest.fixture(scope="module")
def embedder():
    from ciphervec.infra.embedding import SentenceTransformerModels

    models = SentenceTransformerModels()
    if not models.available():
        pytest.skip("needs sentence-transformers and the packaged MiniLM weights")
    return models


MODEL = "all-MiniLM-L6-v2"
TEXTS = [
    f"note {i}: " + ("encrypted search on lambda" if i % 2 else "cooking pasta at home") for i in range(40)
]


def test_contents_without_vectors_are_embedded_by_the_indexs_model(service, kek, tmp_path, embedder):
    """A Parquet file of id + contents into an index with an embedding_model: every row
    embedded as an upsert of contents would be; a JSON Lines file may mix both kinds."""
    service.create_index("t", "emb", IndexConfig(embedding_model=MODEL, metric="cosine"), kek=kek)
    target = Target("t", "emb", kek)
    path = tmp_path / "texts.parquet"
    pq.write_table(pa.table({"id": [f"p{i}" for i in range(40)], "contents": TEXTS}), path)
    done = load(service, target, path, options={"rows": 16}, embedder=embedder)
    assert done.state == "succeeded", done.status()
    assert service.num_vectors("t", "emb", kek) == 40
    want = embedder.encode(MODEL, TEXTS)
    got = service.get("t", "emb", kek, ["p0", "p7"], ["vector", "contents"])
    np.testing.assert_allclose(got[0]["vector"], want[0], atol=1e-5)
    np.testing.assert_allclose(got[1]["vector"], want[7], atol=1e-5)
    assert got[1]["contents"] == TEXTS[7]

    own = np.zeros(384, dtype=np.float32)
    own[0] = 1.0
    lines = [
        {"id": "j0", "vector": own.tolist(), "contents": "kept as given"},
        {"id": "j1", "contents": TEXTS[3]},
    ]
    (tmp_path / "mixed.jsonl").write_text("\n".join(json.dumps(r) for r in lines))
    done = load(service, target, tmp_path / "mixed.jsonl", embedder=embedder)
    assert done.state == "succeeded", done.status()
    got = service.get("t", "emb", kek, ["j0", "j1"], ["vector"])
    np.testing.assert_array_equal(got[0]["vector"], own)  # a row with a vector keeps it
    np.testing.assert_allclose(got[1]["vector"], want[3], atol=1e-5)
    hits = service.query("t", "emb", kek, want[5:6], top_k=1, n_probes=0, filters=None, include=[])
    assert hits[0][0]["id"] == "p5"


def test_contents_without_vectors_need_a_model(service, index, tmp_path, embedder):
    path = tmp_path / "texts.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "contents": ["one", "two"]}), path)
    done = load(service, index, path, embedder=embedder)
    assert done.state == "failed" and "no embedding_model" in done.reasons[0]["reason"]
    assert service.num_vectors("t", "docs", index.kek) == 0
    pq.write_table(pa.table({"id": ["a", "b"]}), tmp_path / "ids.parquet")
    done = load(service, index, tmp_path / "ids.parquet", embedder=embedder)
    assert (
        done.state == "failed" and "neither a 'vector' nor a 'contents' column" in done.reasons[0]["reason"]
    )


def test_an_embedding_load_where_the_model_is_missing_fails_plainly(service, kek, tmp_path):
    from ciphervec.infra.embedding import SentenceTransformerModels

    service.create_index("t", "emb2", IndexConfig(embedding_model=MODEL), kek=kek)
    path = tmp_path / "texts.parquet"
    pq.write_table(pa.table({"id": ["a"], "contents": ["one"]}), path)
    nowhere = SentenceTransformerModels(model_dir=str(tmp_path / "no-models"))
    done = load(service, Target("t", "emb2", kek), path, embedder=nowhere)
    assert done.state == "failed" and "is not installed where this load runs" in done.error
    assert service.num_vectors("t", "emb2", kek) == 0


def test_a_bad_row_among_texts_is_refused_for_what_it_is(service, kek, tmp_path, embedder):
    service.create_index("t", "emb3", IndexConfig(embedding_model=MODEL), kek=kek)
    path = tmp_path / "texts.parquet"
    pq.write_table(pa.table({"id": ["a", "", "c"], "contents": ["one", "two", ""]}), path)
    done = load(service, Target("t", "emb3", kek), path, embedder=embedder)
    assert done.state == "failed"
    reasons = {r["row"]: r["reason"] for r in done.reasons}
    assert "id is not a non-empty string" in reasons[1] and "neither a vector nor contents" in reasons[2]
    assert 0 not in reasons and not any("embedding_model" in why for why in reasons.values())


def test_a_load_after_an_interrupted_reencryption_queues_the_rewrite_again(store, kek, tmp_path):
    """A rotation with reencrypt whose rewrite never ran (its mark given back, as after a
    failed job): the next batch load's commit marks it again and queues it, as an upsert
    would, and the in-process worker rewrites every object under the new data key."""
    from ciphervec.infra.training import LocalTrainer

    service = IndexService(store, train_threshold=10**9)
    service.create_index("t", "docs", IndexConfig(dimension=D), kek=kek)
    service.upsert("t", "docs", kek, RowBatch(["a"], clustered(1, D, seed=1)))
    new = bytes(range(5, 37))
    service.rotate_key("t", "docs", kek, new, None, reencrypt=True)
    service.rekeyer.unmark("t", "docs", new)  # the rewrite's job failed and gave its mark back
    assert service.heads.open("t", "docs", new).body.stale_objects() == 1
    target = Target("t", "docs", new)
    path = write_parquet(tmp_path / "r.parquet", ["b", "c"], clustered(2, D, seed=2))
    job, _ = start(service, target, str(path))
    done = work(service, target, job.job_id, trainer=LocalTrainer(service))
    assert done.state == "succeeded" and done.rewrite_triggered
    deadline = time.time() + 10
    while service.heads.open("t", "docs", new).body.stale_objects() and time.time() < deadline:
        time.sleep(0.05)
    assert service.heads.open("t", "docs", new).body.stale_objects() == 0
    assert sorted(service.list_ids("t", "docs", new)) == ["a", "b", "c"]


def _blas_threads() -> set[int]:
    from threadpoolctl import threadpool_info

    return {int(pool["num_threads"]) for pool in threadpool_info() if pool["user_api"] == "blas"}


def test_a_load_runs_on_one_blas_thread_and_gives_the_others_back(service, index, tmp_path):
    """The staging threads are a load's parallelism: BLAS is held to one thread while any
    load runs (counted, so one load ending does not lift another's limit), then restored."""
    from threadpoolctl import threadpool_limits

    from ciphervec.engine.arrays import blas

    seen: list[set[int]] = []
    path = write_parquet(tmp_path / "a.parquet", [f"r{i}" for i in range(300)], clustered(300, D, seed=3))
    with threadpool_limits(limits=2, user_api="blas"):
        if _blas_threads() != {2}:
            pytest.skip("no BLAS library that takes a thread count")
        done = load(
            service, index, path, options={"rows": 100}, progress=lambda job: seen.append(_blas_threads())
        )
        assert done.state == "succeeded" and seen and all(s == {1} for s in seen)
        assert _blas_threads() == {2}
        with blas.one_thread():
            with blas.one_thread():
                assert _blas_threads() == {1}
            assert _blas_threads() == {1}  # the outer block still holds it
        assert _blas_threads() == {2}
