"""``ciphervec load SOURCE``: load a file from a laptop or a job, with a progress bar.

Three roads, chosen by the flags:

* ``--store URI``: the loader itself, as IngestFunction runs it — staged sealed segments, one
  commit, all or nothing; Ctrl-C pauses the job and the same command continues it.
* ``--url`` with an ``s3://`` SOURCE: ``POST /v1/vectors/load`` (the server loads the file,
  all or nothing) and the job followed until it ends.
* ``--url`` with a local SOURCE: ``upsert_binary`` batches under Lambda's 6 MB limit, several
  in flight. Each acknowledged batch is committed on its own (the API has no staging), so a
  bad row stops the load with the rows before it loaded; a progress file lets the same
  command continue after Ctrl-C from the last chunk every batch of which was acknowledged.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pybase64

from ..engine.errors import CipherVecError
from ..engine.model import IndexConfig
from ..engine.store.jobs import LoadJob
from ..engine.usecases.chunks import check
from ..infra import formats
from ..infra.sources import open_source

BODY_BYTES = 5 << 20  # upsert_binary bodies stay under API Gateway/Lambda's 6 MB
RETRIES = 6


def add_parser(sub: Any) -> None:
    p = sub.add_parser("load", help="load a Parquet/.npy/.npz/.jsonl file (local or s3://) into an index")
    p.add_argument("source", help="a local path or s3://bucket/key")
    p.add_argument("--index", required=True, help="index name")
    p.add_argument("--index-key", help="the index key, 64 hex digits (client-key indexes)")
    p.add_argument("--kms-name", help="with --create: a server-managed key instead of --index-key")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a ciphervec (or CyborgDB-compatible) API base URL")
    where.add_argument("--store", help="write straight to a store: file://PATH or s3://BUCKET/PREFIX")
    p.add_argument("--api-key", help="with --url: an API key with write rights (or CIPHERVEC_API_KEY)")
    p.add_argument("--tenant", default="default", help="with --store: the tenant (default: default)")
    p.add_argument("--create", action="store_true", help="create the index when it does not exist")
    p.add_argument("--dimension", type=int, help="with --create")
    p.add_argument(
        "--metric", default="euclidean", help="with --create (euclidean, cosine, squared_euclidean)"
    )
    p.add_argument(
        "--precision",
        default="float32",
        help="with --create: storage precision (float32, float16, tq12, tq8, tq6, tq4)",
    )
    p.add_argument("--columns", help="Parquet column names, e.g. id=doc_id,vector=embedding")
    p.add_argument("--parallel", type=int, default=4, help="with --url: batches in flight (default 4)")
    p.add_argument(
        "--batch-mb",
        type=float,
        default=BODY_BYTES / (1 << 20),
        help="with --url and a local file: request body size (default 5, under API Gateway's 6 MB; "
        "`ciphervec serve` takes up to 64: bigger batches load faster)",
    )
    p.add_argument("--no-train", action="store_true", help="with --store: leave a due training queued")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=main)


def _columns(spec: str | None) -> dict[str, str]:
    if not spec:
        return {}
    out = {}
    for part in spec.split(","):
        name, _, value = part.partition("=")
        if name.strip() not in ("id", "vector", "metadata", "contents") or not value.strip():
            raise SystemExit(f"--columns: expected id=,vector=,metadata=,contents= names, not {part!r}")
        out[name.strip()] = value.strip()
    return out


class Progress:
    """rows, MB/s and ETA on a TTY; silent otherwise."""

    def __init__(self, total_bytes: int, quiet: bool) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=total_bytes or None,
            unit="B",
            unit_scale=True,
            unit_divisor=1 << 20,
            disable=quiet or not sys.stderr.isatty(),
            desc="loading",
        )
        self.done = 0

    def update(self, bytes_read: int, rows: int) -> None:
        self.bar.update(max(0, bytes_read - self.done))
        self.done = max(self.done, bytes_read)
        self.bar.set_postfix(rows=f"{rows:,}", refresh=False)

    def close(self) -> None:
        self.bar.close()


def main(args: argparse.Namespace) -> int:
    try:
        if args.store:
            return _direct(args)
        if args.source.startswith("s3://"):
            return _server_side(args)
        return _stream(args)
    except CipherVecError as exc:
        print(f"error: {exc.detail}", file=sys.stderr)
        return 1


def _report(status: dict[str, Any]) -> int:
    print(json.dumps(status, indent=2))
    return 0 if status.get("status") == "succeeded" else 1


# -- --store: the loader itself ---------------------------------------------------------------
def _direct(args: argparse.Namespace) -> int:
    from ..engine.codec import crypto
    from ..engine.errors import IndexExists, IndexNotFound
    from ..infra.loading import Target, start, work
    from ..infra.settings import Settings
    from ..infra.wiring import configure

    c = configure(Settings.from_env(store_uri=args.store))
    kek = crypto.parse_index_key(args.index_key) if args.index_key else None
    target = Target(args.tenant, args.index, kek)
    if args.create:
        try:
            config = IndexConfig(
                dimension=args.dimension or 0, metric=args.metric, storage_precision=args.precision
            )
        except CipherVecError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        try:
            kms = None if kek else (args.kms_name or "default")
            c.service.create_index(args.tenant, args.index, config, kek=kek, kms_name=kms)
        except IndexExists:
            pass
    options = {"columns": _columns(args.columns)}
    try:
        job, _ = start(c.service, target, args.source, options=options)
    except IndexNotFound:
        print(f"error: index {args.index!r} not found (add --create --dimension D)", file=sys.stderr)
        return 1
    bar = Progress(job.bytes_total, args.quiet)
    bar.update(job.bytes_read, job.rows_read)

    def progress(record: LoadJob) -> None:
        bar.update(record.bytes_read, record.rows_read)

    try:
        done = work(c.service, target, job.job_id, progress=progress, embedder=c.embedder)
    except KeyboardInterrupt:
        bar.close()
        print("\ninterrupted: the load is paused; run the same command to continue it", file=sys.stderr)
        return 130
    bar.close()
    status = done.status()
    if done.training_triggered and not args.no_train:
        print("training the index (the load made it due) ...", file=sys.stderr)
        result = c.service.train(args.tenant, args.index, kek)
        status["training"] = {"trained": result.trained, "n_lists": result.n_lists}
    return _report(status)


# -- --url with an s3:// source: the server loads it -------------------------------------------
class Api:
    """A small JSON client over urllib3 (connection pool, retries on 429/503 and faults)."""

    def __init__(self, url: str, api_key: str | None, pool: int = 8) -> None:
        import urllib3

        self.url = url.rstrip("/")
        self.headers = {"Content-Type": "application/json", **({"X-API-Key": api_key} if api_key else {})}
        self.http = urllib3.PoolManager(maxsize=pool, retries=False, timeout=urllib3.Timeout(10, 300))

    def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        import urllib3

        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        sent = {**self.headers, **(headers or {})}
        for attempt in range(RETRIES):
            try:
                resp = self.http.request(method, self.url + path, body=data, headers=sent)
            except urllib3.exceptions.HTTPError:
                if attempt == RETRIES - 1:
                    raise
                time.sleep(0.2 * 2**attempt)
                continue
            if resp.status in (429, 502, 503, 504) and attempt < RETRIES - 1:
                time.sleep(float(resp.headers.get("Retry-After") or 0.2 * 2**attempt))
                continue
            try:
                return resp.status, json.loads(resp.data or b"null")
            except ValueError:
                return resp.status, {"detail": resp.data[:200].decode("utf-8", "replace")}
        raise AssertionError("unreachable")

    def ok(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        status, out = self.call(method, path, body, headers)
        if status >= 300:
            detail = out.get("detail") if isinstance(out, dict) else out
            raise CipherVecError(f"{method} {path} answered {status}: {detail}")
        return out


def _api(args: argparse.Namespace) -> Api:
    import os

    return Api(args.url, args.api_key or os.environ.get("CIPHERVEC_API_KEY"), pool=max(4, args.parallel * 2))


def _ensure_index(api: Api, args: argparse.Namespace) -> int:
    """The index's dimension (0: not known yet), creating the index with --create."""
    body = {"index_name": args.index, "index_key": args.index_key}
    status, out = api.call("POST", "/v1/indexes/describe", body)
    if status == 404 and args.create:
        create = {**body, "dimension": args.dimension, "metric": args.metric}
        if args.precision != "float32":
            create["storage_precision"] = args.precision
        if not args.index_key:
            create["kms_name"] = args.kms_name or "default"
        api.ok("POST", "/v1/indexes/create", create)
        return int(args.dimension or 0)
    if status >= 300:
        raise CipherVecError(
            f"describe answered {status}: {out.get('detail') if isinstance(out, dict) else out}"
        )
    return int(out.get("dimension") or 0)


def _server_side(args: argparse.Namespace) -> int:
    api = _api(args)
    _ensure_index(api, args)
    body = {"index_name": args.index, "index_key": args.index_key, "source": args.source}
    if args.columns:
        body["columns"] = _columns(args.columns)
    job = api.ok("POST", "/v1/vectors/load", body)
    key_header = {"X-Index-Key": args.index_key} if args.index_key else {}
    if job["status"] in ("succeeded", "failed"):  # an earlier run of the same job
        job = api.ok("GET", f"/v1/loads/{job['job_id']}", headers=key_header)
    bar = Progress(int(job.get("bytes_total") or 0), args.quiet)
    while job["status"] in ("queued", "running", "paused", "committing"):
        time.sleep(0.5)
        job = api.ok("GET", f"/v1/loads/{job['job_id']}", headers=key_header)
        bar.update(int(job.get("bytes_read") or 0), int(job.get("rows_read") or 0))
    bar.close()
    return _report(job)


# -- --url with a local source: upsert_binary batches ------------------------------------------
def _batches(seg: Any, dim: int, target: dict[str, Any], body_bytes: int = BODY_BYTES) -> list[bytes]:
    """The rows of ``seg`` as upsert_binary request bodies under ``body_bytes`` each, written
    directly: base64 needs no JSON escaping, and json.dumps over megabytes of it is the
    client's biggest cost otherwise."""
    n = len(seg)
    ids_bytes = sum(len(i) for i in seg.ids) + 4 * n
    extra = len(json.dumps(seg.metadata)) if seg.metadata else 0
    extra += len(json.dumps(seg.contents)) if seg.contents else 0
    per_row = dim * 4 * 4 / 3 + (ids_bytes + extra) / max(n, 1)
    rows = max(1, int(body_bytes / per_row))
    opening = json.dumps(target)[:-1].encode() + b',"batch":{"ids":'
    out = []
    for start in range(0, n, rows):
        part = seg.take(range(start, min(n, start + rows)))
        vectors = np.ascontiguousarray(part.vectors, dtype="<f4")
        pieces = [opening, json.dumps(part.ids).encode(), b',"vectors_b64":"']
        pieces += [pybase64.b64encode(vectors.data), b'","dimension":', str(dim).encode()]
        if part.metadata:
            pieces += [b',"metadata":', json.dumps(part.metadata).encode()]
        if part.contents:
            pieces += [b',"contents":', json.dumps(part.contents).encode()]
        out.append(b"".join([*pieces, b"}}"]))
    return out


def _stream(args: argparse.Namespace) -> int:
    api = _api(args)
    dim = _ensure_index(api, args)
    src = open_source(args.source)
    state_dir = Path(".ciphervec-load")
    words = (args.url, args.index, src.location, src.version)
    state_file = state_dir / f"{hashlib.sha256(chr(0).join(words).encode()).hexdigest()[:24]}.json"
    saved: dict[str, Any] = {"position": {}, "rows": 0, "bytes": 0}
    if state_file.exists():
        saved = json.loads(state_file.read_text())
    read = formats.reader(src, formats.Columns(**_columns(args.columns)))
    bar = Progress(src.size, args.quiet)
    bar.update(saved["bytes"], saved["rows"])
    rows_sent = saved["rows"]
    started = time.perf_counter()
    inflight: deque[tuple[list[Future[Any]], dict[str, Any], int, int]] = deque()

    def settle(wait_first: bool) -> None:
        """Record the chunks whose every batch is acknowledged, in file order (waiting for the
        oldest one with ``wait_first``)."""
        while inflight:
            futures, position, rows, bytes_read = inflight[0]
            if not wait_first and not all(f.done() for f in futures):
                return
            inflight.popleft()
            for f in futures:
                f.result()
            state_dir.mkdir(exist_ok=True)
            state_file.write_text(json.dumps({"position": position, "rows": rows, "bytes": bytes_read}))
            bar.update(bytes_read, rows)
            wait_first = False

    def drain() -> None:
        while inflight:
            settle(True)

    body = {"index_name": args.index, "index_key": args.index_key}
    try:
        with ThreadPoolExecutor(max_workers=args.parallel) as pool:
            for chunk in read(saved["position"], dim or None):
                seg, bad = check(chunk, dim or (chunk.vectors.shape[1] if chunk.vectors is not None else 0))
                if bad or seg is None:
                    drain()
                    bar.close()
                    return _report(
                        {
                            "status": "failed",
                            "rows_loaded": rows_sent,
                            "refused": [{"row": r, "reason": why} for r, why in bad[:10]],
                            "error": "stopped at a bad row; the rows before it are loaded",
                        }
                    )
                assert seg.vectors is not None  # a chunk of rows always has vectors
                dim = dim or seg.vectors.shape[1]
                futures = [
                    pool.submit(api.ok, "POST", "/v1/vectors/upsert_binary", request)
                    for request in _batches(seg, dim, body, int(args.batch_mb * (1 << 20)))
                ]
                rows_sent = chunk.first_row + len(chunk)
                inflight.append((futures, chunk.position, rows_sent, chunk.bytes_read))
                while len(inflight) > 2:  # bounded memory: two chunks in flight at most
                    settle(True)
                settle(False)
            drain()
    except KeyboardInterrupt:
        bar.close()
        print(
            "\ninterrupted; run the same command to continue from the last acknowledged chunk",
            file=sys.stderr,
        )
        return 130
    bar.close()
    state_file.unlink(missing_ok=True)
    seconds = time.perf_counter() - started
    loaded = rows_sent - saved["rows"]
    return _report(
        {
            "status": "succeeded",
            "rows_loaded": rows_sent,
            "seconds": round(seconds, 3),
            "rows_per_second": round(loaded / seconds) if seconds else None,
        }
    )
