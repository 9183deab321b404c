"""After `sam build`: every function fits Lambda's 250 MB unzipped, and the IngestFunction
package (no faiss, trimmed pyarrow) imports and loads a Parquet file on Lambda's Python.

Run by `make deploy-check` as ``python3.12 tests/package_check.py .aws-sam/build``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

LIMIT_MB = 250
SMOKE = r"""
import importlib.util, tempfile
assert importlib.util.find_spec("faiss") is None, "faiss must not be in IngestFunction"
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
from ciphervec.handlers import ingest  # noqa: F401 - the handler imports
from ciphervec.engine.model import IndexConfig
from ciphervec.engine.service import IndexService
from ciphervec.infra.loading import Target, start, work
from ciphervec.infra.storage.memory import MemoryStore

d = tempfile.mkdtemp()
x = np.random.default_rng(0).standard_normal((500, 8)).astype(np.float32)
vectors = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 8)
pq.write_table(pa.table({"id": [f"i{i}" for i in range(500)], "vector": vectors}), f"{d}/a.parquet")
svc = IndexService(MemoryStore(), train_threshold=100)
svc.create_index("t", "i", IndexConfig(dimension=8), kek=bytes(32))
target = Target("t", "i", bytes(32))
job, _ = start(svc, target, f"{d}/a.parquet")
done = work(svc, target, job.job_id)
assert done.state == "succeeded" and done.rows_loaded == 500 and done.training_triggered, done.status()
"""


def size_mb(path: Path) -> float:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            if not os.path.islink(full):
                total += os.path.getsize(full)
    return total / 1e6


def main(build: str) -> int:
    root = Path(build).resolve()
    functions = sorted(p for p in root.iterdir() if p.is_dir() and p.name.endswith("Function"))
    if not functions:
        print(f"no functions under {root}: run sam build first")
        return 1
    bad = 0
    for fn in functions:
        mb = size_mb(fn)
        ok = mb <= LIMIT_MB
        bad += not ok
        print(f"  {fn.name:<16} {mb:7.1f} MB unzipped  {'ok' if ok else f'OVER {LIMIT_MB} MB'}")
    env = {**os.environ, "PYTHONPATH": str(root / "IngestFunction")}
    smoke = subprocess.run([sys.executable, "-c", SMOKE], env=env, cwd="/", check=False)
    print(
        f"  IngestFunction package loads a Parquet file on Python {sys.version.split()[0]}: "
        f"{'ok' if smoke.returncode == 0 else 'FAILED'}"
    )
    return 1 if bad or smoke.returncode else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1] if len(sys.argv) > 1 else ".aws-sam/build"))
