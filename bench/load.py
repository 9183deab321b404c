"""Batch-load benchmark: vectors/s and peak RSS loading one Parquet file of real 384-d MiniLM
embeddings (1M: the 101k real ones plus blends of them, as bench/scale.py makes), side by side:

* plain     pyarrow reads the file into one numpy array (no crypto, no store): the ceiling
* direct    the loader as IngestFunction runs it: the file in S3 (a moto server), the index
            in S3 too, staged sealed segments, one commit
* local     the same loader from a local file into a file store (`ciphervec load --store`):
            the engine's own speed, without moto sharing the two cores
* cli_url   `ciphervec load FILE --url` against `ciphervec serve` (upsert_binary batches of
            5 MB, the size API Gateway takes); cli_url_32 the same with `--batch-mb 32`
* sdk       the official cyborgdb SDK's upsert, 1,000-vector batches, against `ciphervec serve`

Each load runs in its own process, so its peak RSS is its own.

    .venv/bin/python bench/load.py [--sizes 100000,1000000] [--no-sdk]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import API_KEY, moto_s3, save, start_ciphervec  # noqa: E402

KEY = bytes(range(32))
ROADS = ("plain", "direct", "local", "cli_url", "cli_url_32", "sdk")


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM). Not ru_maxrss: Linux carries the parent's peak over
    fork and exec into it, so every worker would report the benchmark's own peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_parquet(path: Path, base: np.ndarray) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = base.shape[1]
    schema = pa.schema([("id", pa.string()), ("vector", pa.list_(pa.float32(), d))])
    with pq.ParquetWriter(path, schema, compression="snappy") as w:
        for lo in range(0, len(base), 65536):
            part = base[lo : lo + 65536]
            ids = pa.array([f"doc-{i}" for i in range(lo, lo + len(part))])
            vecs = pa.FixedSizeListArray.from_arrays(pa.array(part.ravel()), d)
            w.write_table(pa.table({"id": ids, "vector": vecs}, schema=schema))


# -- workers (one process per measured load) ----------------------------------------------------
def worker_plain(path: str) -> dict[str, Any]:
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    table = pq.read_table(path)
    col = table.column("vector").combine_chunks()
    x = col.flatten().to_numpy().reshape(len(col), -1)
    ids = table.column("id").to_pylist()
    seconds = time.perf_counter() - t0
    assert len(ids) == len(x)
    return {"seconds": seconds, "rows": len(x)}


def worker_direct(source: str, store: str, name: str) -> dict[str, Any]:
    from ciphervec.engine.model import IndexConfig
    from ciphervec.infra.loading import Target, start, work
    from ciphervec.infra.settings import Settings
    from ciphervec.infra.wiring import configure

    c = configure(Settings.from_env(store_uri=store, train_threshold=10**12))
    c.service.create_index("bench", name, IndexConfig(dimension=384, metric="cosine"), kek=KEY)
    before = peak_rss_mb()
    target = Target("bench", name, KEY)
    t0 = time.perf_counter()
    job, _ = start(c.service, target, source)
    done = work(c.service, target, job.job_id)
    seconds = time.perf_counter() - t0
    assert done.state == "succeeded", done.status()
    return {"seconds": seconds, "rows": done.rows_loaded, "rss_before_mb": before}


def worker_sdk(url: str, path: str, name: str) -> dict[str, Any]:
    import pyarrow.parquet as pq
    from cyborgdb import Client

    table = pq.read_table(path)
    col = table.column("vector").combine_chunks()
    x = col.flatten().to_numpy().reshape(len(col), -1)
    ids = table.column("id").to_pylist()
    index = Client(url, API_KEY).create_index(name, KEY, dimension=384, metric="cosine")
    t0 = time.perf_counter()
    for lo in range(0, len(x), 1000):
        index.upsert(ids[lo : lo + 1000], x[lo : lo + 1000])
    return {"seconds": time.perf_counter() - t0, "rows": len(x)}


def worker(argv: list[str]) -> int:
    kind, *rest = argv
    out = {"plain": worker_plain, "direct": worker_direct, "sdk": worker_sdk}[kind](*rest)
    out["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(out))
    return 0


def _run(args: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line[7:]))
    raise RuntimeError(f"{args[0]} worker failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")


def _cli_url(url: str, path: Path, name: str, tmp: Path, batch_mb: float = 5) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "ciphervec.handlers.cli", "load", str(path), "--index", name, "--url", url]
    cmd += ["--batch-mb", str(batch_mb)]
    cmd += ["--api-key", API_KEY, "--index-key", KEY.hex(), "--create", "--dimension", "384"]
    cmd += ["--metric", "cosine", "--quiet"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"ciphervec load failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    out = json.loads(proc.stdout)
    return {"seconds": seconds, "rows": out["rows_loaded"]}


def run(tmp: Path, sizes: list[int], sdk: bool = True) -> list[dict[str, Any]]:
    from scale import vectors

    rows: list[dict[str, Any]] = []
    with moto_s3("cv-loads", "cv-data") as (env, s3):
        server = start_ciphervec(tmp)  # a file store; training held back past these sizes
        try:
            for n in sizes:
                base, _, kind = vectors(n, 0)
                path = tmp / f"emb-{n}.parquet"
                write_parquet(path, base)
                mb = path.stat().st_size / 1e6
                s3.upload_file(str(path), "cv-loads", f"bench/emb-{n}.parquet")
                del base
                row: dict[str, Any] = {"n": n, "data": kind, "file_mb": round(mb, 1)}
                row["plain"] = _run(["plain", str(path)])
                row["direct"] = _run(
                    ["direct", f"s3://cv-loads/bench/emb-{n}.parquet", f"s3://cv-data/i{n}", f"d{n}"], env
                )
                row["local"] = _run(["direct", str(path), f"file://{tmp}/local-{n}", f"l{n}"])
                row["cli_url"] = _cli_url(server.url, path, f"u{n}", tmp)
                row["cli_url_32"] = _cli_url(server.url, path, f"w{n}", tmp, 32)
                if sdk:
                    row["sdk"] = _run(["sdk", server.url, str(path), f"s{n}"])
                for key in ROADS:
                    if key in row:
                        row[key]["vps"] = round(row[key]["rows"] / row[key]["seconds"])
                rows.append(row)
                print_row(row)
                path.unlink()
        finally:
            server.stop()
    return rows


def print_row(row: dict[str, Any]) -> None:
    print(f"\n  {row['n']:,} vectors ({row['data']}), Parquet {row['file_mb']} MB")
    print(f"  {'road':<12}{'vectors/s':>12}{'seconds':>10}{'peak RSS MB':>13}")
    for key in ROADS:
        r = row.get(key)
        if r:
            rss = f"{r['peak_rss_mb']:.0f}" if "peak_rss_mb" in r else "-"
            print(f"  {key:<12}{r['vps']:>12,}{r['seconds']:>10.2f}{rss:>13}")
    if "sdk" in row:
        print(
            f"  cli_url / sdk: {row['cli_url']['vps'] / row['sdk']['vps']:.1f}x,"
            f" cli_url_32 / sdk: {row['cli_url_32']['vps'] / row['sdk']['vps']:.1f}x (goal >= 3x);"
            f" direct: {row['direct']['vps']:,}/s (goal >= 150,000/s)"
        )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return worker(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--no-sdk", action="store_true")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="cv-load-"))
    print("== batch loads: one Parquet file of 384-d embeddings, end to end ==")
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "loads": run(tmp, [int(s) for s in args.sizes.split(",")], not args.no_sdk),
    }
    save(report, "load")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
