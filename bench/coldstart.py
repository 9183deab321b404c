"""Lambda cold start of ApiFunction, from the package `make sam-build` builds (part of
`make bench`, or on its own):

    make sam-build && .venv/bin/python bench/coldstart.py [--n 100000] [--rounds 5]

Everything runs on Lambda's Python (3.12) from `.aws-sam/build/ApiFunction`, with nothing
writable (PYTHONDONTWRITEBYTECODE, cwd /), as Lambda imports it:

* import: `import ciphervec.handlers.api`, with the package's bytecode and, in the same run,
  from a copy without it (what every cold start paid before the build compiled it);
* first query: a fresh process imports the handler and answers one API Gateway query event
  on an n-row trained index in S3 (a moto server), end to end: container, S3 client, head,
  centroids and probed lists, faiss. The process clock starts before the import;
* after a restore (SnapStart): the process imports and runs the before-snapshot hook, then
  forks, as a restore resumes a snapshot; the child runs the after-restore hook and answers
  the first query. Lambda's own restore time (it reads the snapshot) is not in this figure.

Medians of ``--rounds`` fresh processes each.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import API_KEY, moto_s3, save  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / ".aws-sam" / "build" / "ApiFunction"

IMPORT = "import time; t = time.perf_counter(); import ciphervec.handlers.api; print(time.perf_counter() - t)"
# argv: mode ("cold" or "restore"), then the query event as JSON on stdin.
FIRST_QUERY = r"""
import json, os, sys, time
t0 = time.perf_counter()
from ciphervec.handlers.api import lambda_handler
imported = time.perf_counter() - t0
raw = sys.stdin.read()

def ask():  # each invocation gets its own event, as in Lambda (the handler lets go of its body)
    event = json.loads(raw)
    t = time.perf_counter()
    out = lambda_handler(event, None)
    assert out["statusCode"] == 200, out["body"][:300]
    return time.perf_counter() - t

if sys.argv[1] == "cold":
    first = ask()
    print(json.dumps({"import_s": imported, "first_query_s": first, "total_s": time.perf_counter() - t0,
                      "second_query_s": ask()}))
else:
    from ciphervec.handlers import snapstart
    snapstart.warm()
    init = time.perf_counter() - t0
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        t1 = time.perf_counter()
        snapstart.renew()
        renew = time.perf_counter() - t1
        first = ask()
        os.write(w, json.dumps({"init_s": init, "renew_s": renew, "first_query_s": first,
                                "total_s": time.perf_counter() - t1, "second_query_s": ask()}).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    print(os.read(r, 65536).decode())
"""


def lambda_python() -> str | None:
    """A working Python 3.12 (Lambda's runtime): on PATH or in pyenv, as the Makefile finds it."""
    candidates = [
        "python3.12",
        *sorted(str(p) for p in Path.home().glob(".pyenv/versions/3.12*/bin/python3.12")),
    ]
    for exe in candidates:
        try:
            out = subprocess.run(
                [exe, "-c", "import sys; print(sys.executable)"], capture_output=True, text=True
            )
        except OSError:
            continue
        if out.returncode == 0:
            return out.stdout.strip()
    return None


def lambda_env(package: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(package),
        "PYTHONDONTWRITEBYTECODE": "1",
        "AWS_LAMBDA_FUNCTION_NAME": "bench-api",
        "CIPHERVEC_BACKEND": "numpy",
        **(extra or {}),
    }


def import_times(python: str, package: Path, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        out = subprocess.run(
            [python, "-c", IMPORT],
            env=lambda_env(package),
            cwd="/",
            capture_output=True,
            text=True,
            check=True,
        )
        times.append(float(out.stdout))
    return times


def without_bytecode(package: Path, tmp: Path) -> Path:
    copy = tmp / "ApiFunction-no-bytecode"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"), symlinks=True)
    return copy


def build_index(tmp: Path, n: int, env: dict[str, str]) -> tuple[bytes, np.ndarray]:
    """An n-row trained index in S3 through `ciphervec serve` and the SDK (scale.py's way)."""
    import scale

    base, queries, _ = scale.vectors(n, 10)
    from cyborgdb import Client

    key = Client.generate_key()
    srv = scale.serve(tmp, "s3://cv-bench/idx", env, "coldstart-build")
    try:
        scale.ingest_train(srv.url, base, key)
    finally:
        srv.stop()
    return key, queries


def query_event(key: bytes, vector: np.ndarray) -> str:
    body = {"index_name": "scale", "index_key": key.hex(), "query_vectors": vector.tolist(), "top_k": 10}
    path = "/v1/vectors/query"
    return json.dumps(
        {
            "version": "2.0",
            "rawPath": path,
            "rawQueryString": "",
            "headers": {"x-api-key": API_KEY, "content-type": "application/json"},
            "requestContext": {
                "http": {"method": "POST", "path": path, "sourceIp": "10.0.0.1"},
                "requestId": "b",
            },
            "body": json.dumps(body),
            "isBase64Encoded": False,
        }
    )


def first_queries(python: str, mode: str, env: dict[str, str], events: list[str]) -> list[dict[str, float]]:
    runs = []
    for event in events:
        out = subprocess.run(
            [python, "-c", FIRST_QUERY, mode],
            input=event,
            env=lambda_env(PACKAGE, env),
            cwd="/",
            capture_output=True,
            text=True,
        )
        if out.returncode:
            raise RuntimeError(out.stderr[-1500:])
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return runs


def med(runs: list[dict[str, float]], field: str) -> float:
    return statistics.median(r[field] for r in runs)


def run(n: int = 100_000, rounds: int = 5) -> dict[str, Any] | None:
    python = lambda_python()
    if python is None or not (PACKAGE / "ciphervec").exists():
        print("  skipped: needs Python 3.12 and the built package (make sam-build)")
        return None
    tmp = Path(tempfile.mkdtemp(prefix="cv-coldstart-"))
    report: dict[str, Any] = {"n": n, "rounds": rounds, "python": python}
    try:
        with_pyc = import_times(python, PACKAGE, rounds)
        no_pyc = import_times(python, without_bytecode(PACKAGE, tmp), rounds)
        report.update(import_s=statistics.median(with_pyc), import_no_bytecode_s=statistics.median(no_pyc))
        print(
            f"  handler import, built package, nothing writable: {report['import_s'] * 1e3:.0f} ms"
            f" with its bytecode, {report['import_no_bytecode_s'] * 1e3:.0f} ms without"
            f" (median of {rounds}; target <= 350 ms)"
        )
        with moto_s3("cv-bench") as (env, _):
            key, queries = build_index(tmp, n, env)
            lambda_vars = {
                **env,
                "CIPHERVEC_STORE": "s3://cv-bench/idx",
                "CIPHERVEC_KEYS": "memory://",
                "CIPHERVEC_ROOT_KEY": API_KEY,
                "POWERTOOLS_LOG_LEVEL": "WARNING",
            }
            events = [query_event(key, queries[i % len(queries)]) for i in range(rounds)]
            cold = first_queries(python, "cold", lambda_vars, events)
            restored = first_queries(python, "restore", lambda_vars, events)
        report["cold"] = {f: med(cold, f) for f in cold[0]}
        report["restore"] = {f: med(restored, f) for f in restored[0]}
        c, r = report["cold"], report["restore"]
        print(
            f"  fresh process, {n:,}-row trained index in S3 (moto): import {c['import_s'] * 1e3:.0f} ms"
            f" + first query {c['first_query_s'] * 1e3:.0f} ms = {c['total_s'] * 1e3:.0f} ms"
            f" (target <= 600 ms); second query {c['second_query_s'] * 1e3:.1f} ms"
        )
        print(
            f"  after a restore (fork after the before-snapshot hook; init {r['init_s'] * 1e3:.0f} ms is in the"
            f" snapshot): after-restore hook {r['renew_s'] * 1e3:.1f} ms + first query"
            f" {r['first_query_s'] * 1e3:.0f} ms = {r['total_s'] * 1e3:.0f} ms"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    print("Lambda cold start (ApiFunction package, Python 3.12):")
    report = run(args.n, args.rounds)
    if report is None:
        return 1
    save({"date": time.strftime("%Y-%m-%d %H:%M:%S"), **report}, "coldstart")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
