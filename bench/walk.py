"""The files one warm ``upsert_binary`` passes through, and the moves between them:

    .venv/bin/python bench/walk.py [--base REV]

The handler is fed an API Gateway event in this process (file store, a warm index of 200
rows), then a third upsert of 100 rows is traced with ``sys.setprofile``: every Python call
into ``engine/``, ``handlers/`` or ``infra/`` is logged by file, and a move is a call into a
file other than the previous call's. ``--base REV`` runs the same walk on git revision REV
of this repository (in a subprocess, from ``git archive``) beside this checkout.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOTS = ("/engine/", "/handlers/", "/infra/")


def walk() -> dict[str, object]:
    import numpy as np

    from ciphervec.handlers.api import lambda_handler
    from ciphervec.infra.settings import Settings
    from ciphervec.infra.wiring import configure

    tmp = tempfile.mkdtemp()
    root, key = "walk-root-key", "ab" * 32
    configure(
        Settings(
            store_uri=f"file://{tmp}/data",
            keys_uri="memory://",
            root_key=root,
            kms_uri=f"local://{tmp}/kms",
            train_threshold=10**6,
        )
    )

    def call(path: str, body: dict[str, object]) -> None:
        event = {
            "version": "2.0",
            "routeKey": "$default",
            "rawPath": path,
            "rawQueryString": "",
            "headers": {"content-type": "application/json", "x-api-key": root},
            "requestContext": {"http": {"method": "POST", "path": path, "sourceIp": "127.0.0.1"}},
            "body": json.dumps(body),
            "isBase64Encoded": False,
        }
        assert lambda_handler(event, None)["statusCode"] == 200

    x = np.random.default_rng(0).standard_normal((100, 4)).astype("<f4")

    def upsert(prefix: str) -> None:
        batch = {
            "ids": [f"{prefix}{i}" for i in range(100)],
            "vectors_b64": base64.b64encode(x.tobytes()).decode(),
            "dimension": 4,
        }
        call("/v1/vectors/upsert_binary", {"index_name": "walk", "index_key": key, "batch": batch})

    call("/v1/indexes/create", {"index_name": "walk", "index_key": key})
    upsert("a")
    upsert("b")
    seq: list[str] = []

    def profile(frame: object, event: str, arg: object) -> None:
        name = frame.f_code.co_filename  # type: ignore[attr-defined]
        if event != "call" or "/.venv/" in name or "/tests/" in name:
            return
        at = [name.find(r) for r in ROOTS if r in name]
        if at:
            short = name[min(at) + 1 :]
            if not seq or seq[-1] != short:
                seq.append(short)

    sys.setprofile(profile)
    upsert("c")
    sys.setprofile(None)
    return {"files": len(set(seq)), "moves": len(seq) - 1, "walk": seq}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", help="also walk this git revision")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.json:
        print(json.dumps(walk()))
        return
    rows = [
        (
            "now",
            subprocess.run([sys.executable, __file__, "--json"], capture_output=True, text=True, check=True),
        )
    ]
    if args.base:
        sys.path.insert(0, str(HERE))
        from common import source_of

        src = source_of(args.base, Path(tempfile.mkdtemp()))
        env = {**os.environ, "PYTHONPATH": str(src)}
        run = subprocess.run(
            [sys.executable, __file__, "--json"], capture_output=True, text=True, check=True, env=env
        )
        rows.append((args.base, run))
    for label, run in rows:
        got = json.loads(run.stdout.strip().splitlines()[-1])
        print(f"{label:>10}: {got['files']} files, {got['moves']} moves")
        print("            " + " ".join(sorted(set(got["walk"]))))


if __name__ == "__main__":
    main()
