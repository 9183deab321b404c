"""After `sam build`: every function fits Lambda's 250 MB unzipped and ships its bytecode
(every module compiled for this Python, unchecked-hash: Lambda's code directory is read-only,
so a module without it is compiled again on every cold start), each handler imports from its
package with nothing compiled at import, the IngestFunction package (no faiss, trimmed
pyarrow) loads a Parquet file of vectors and one of texts it embeds on Lambda's Python, and
the ApiFunction package embeds a sentence with the ONNX export it carries.

Run by `make deploy-check` as ``python3.12 tests/package_check.py .aws-sam/build``.
"""

from __future__ import annotations

import importlib.util
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

# Texts without vectors into an index with an embedding_model: embedded by the package's own
# ONNX Runtime and model, as the handler's container wires them.
from ciphervec.infra.embedding_onnx import OnnxModels
models = OnnxModels()
assert [m.name for m in models.available()] == ["all-MiniLM-L6-v2"], models.dirs
texts = [f"sentence number {i} about a batch load" for i in range(40)]
pq.write_table(pa.table({"id": [f"s{i}" for i in range(40)], "contents": texts}), f"{d}/t.parquet")
svc.create_index("t", "e", IndexConfig(dimension=384, embedding_model="all-MiniLM-L6-v2"), kek=bytes(32))
target = Target("t", "e", bytes(32))
job, _ = start(svc, target, f"{d}/t.parquet")
done = work(svc, target, job.job_id, embedder=models)
assert done.state == "succeeded" and done.rows_loaded == 40, done.status()
"""


HANDLERS = {
    "ApiFunction": "ciphervec.handlers.api",
    "TrainFunction": "ciphervec.handlers.train",
    "IngestFunction": "ciphervec.handlers.ingest",
}
# Imports the handler as Lambda does, then lists the modules it loaded from source files
# with no bytecode beside them (each was compiled during the import).
IMPORT = r"""
import importlib, importlib.util, os, sys, time
t = time.perf_counter()
importlib.import_module(sys.argv[1])
spent = time.perf_counter() - t
compiled = sorted(
    m.__file__ for m in list(sys.modules.values())
    if getattr(m, "__file__", None) and m.__file__.endswith(".py") and m.__file__.startswith(sys.argv[2])
    and not os.path.exists(importlib.util.cache_from_source(m.__file__))
)
print(f"{spent:.3f} {len(compiled)}")
for name in compiled[:5]:
    print(name)
"""
UNCHECKED_HASH = 0b01  # PEP 552 flags: hash-based, source not checked


# ApiFunction's own embedding runtime and model, from nothing but its package: the handler's
# import, then the first sentence embedded (what a cold container's first embedding costs).
EMBED = r"""
import time
started = time.perf_counter()
from ciphervec.handlers import api  # noqa: F401 - the handler imports
from ciphervec.infra.embedding_onnx import OnnxModels
from ciphervec.engine.embedding import model_spec
models = OnnxModels()
assert [m.name for m in models.available()] == ["all-MiniLM-L6-v2"], models.dirs
assert "/ciphervec/models/" in str(models._dir(model_spec("all-MiniLM-L6-v2"))), "not the package's model"
v = models.encode("all-MiniLM-L6-v2", ["ciphervec embeds this sentence inside ApiFunction"])
assert v.shape == (1, 384) and abs(float((v * v).sum()) - 1.0) < 1e-3, v.shape
print(f"{(time.perf_counter() - started) * 1000:.0f}")
import Stemmer  # stripped of its symbol table, as pyarrow's, tokenizers' and cryptography's are
assert Stemmer.Stemmer("english").stemWords(["running", "indexes"]) == ["run", "index"]
"""


def bytecode_gaps(fn: Path) -> tuple[int, int, list[str]]:
    """``(modules, without bytecode, examples)``: every ``.py`` needs a ``.pyc`` for this
    Python (its magic number) that is hash-based and unchecked."""
    total, bad = 0, []
    for root, dirs, files in os.walk(fn):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if not name.endswith(".py"):
                continue
            total += 1
            source = os.path.join(root, name)
            cached = importlib.util.cache_from_source(source)
            try:
                with open(cached, "rb") as f:
                    head = f.read(8)
            except OSError:
                bad.append(source)
                continue
            flags = int.from_bytes(head[4:8], "little")
            if head[:4] != importlib.util.MAGIC_NUMBER or flags != UNCHECKED_HASH:
                bad.append(source)
    return total, len(bad), [os.path.relpath(b, fn) for b in bad[:5]]


def handler_import(fn: Path, module: str) -> tuple[bool, str]:
    """Import ``module`` from the package as Lambda would (nothing writable, no cache
    written): ok when it imports and compiled nothing; the detail gives the time."""
    env = {"PYTHONPATH": str(fn), "PYTHONDONTWRITEBYTECODE": "1", "PATH": os.environ.get("PATH", "")}
    out = subprocess.run(
        [sys.executable, "-c", IMPORT, module, str(fn)], env=env, cwd="/", capture_output=True, text=True
    )
    if out.returncode:
        return False, f"import failed: {out.stderr.strip().splitlines()[-1:]}"
    first, *names = out.stdout.split("\n")
    spent, compiled = first.split()
    if int(compiled):
        return False, f"{compiled} modules compiled at import, e.g. {names[0]}"
    return True, f"{float(spent) * 1000:.0f} ms, all from bytecode"


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
        total, missing, examples = bytecode_gaps(fn)
        bad += missing > 0
        print(
            f"  {fn.name:<16} bytecode for {total - missing} of {total} modules  "
            + ("ok" if not missing else f"MISSING, e.g. {', '.join(examples)}")
        )
        if fn.name in HANDLERS:
            imported, detail = handler_import(fn, HANDLERS[fn.name])
            bad += not imported
            print(f"  {fn.name:<16} handler import: {detail}  {'ok' if imported else 'FAILED'}")
    api = root / "ApiFunction"
    if api.is_dir():
        env = {**os.environ, "PYTHONPATH": str(api), "PYTHONNOUSERSITE": "1"}
        run = subprocess.run(
            [sys.executable, "-c", EMBED], env=env, cwd="/", check=False, capture_output=True, text=True
        )
        embedded = run.returncode == 0
        bad += not embedded
        last = (run.stdout.strip().splitlines() or ["?"])[-1]  # after the model's log line
        detail = f"import + first embedding {last} ms" if embedded else run.stderr.strip()[-300:]
        print(
            f"  ApiFunction      embeds a sentence (ONNX Runtime, int8 export): {detail}  {'ok' if embedded else 'FAILED'}"
        )
    env = {**os.environ, "PYTHONPATH": str(root / "IngestFunction")}
    smoke = subprocess.run([sys.executable, "-c", SMOKE], env=env, cwd="/", check=False)
    print(
        f"  IngestFunction package loads Parquet files (vectors; texts it embeds) on Python {sys.version.split()[0]}: "
        f"{'ok' if smoke.returncode == 0 else 'FAILED'}"
    )
    return 1 if bad or smoke.returncode else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1] if len(sys.argv) > 1 else ".aws-sam/build"))
