"""Shared fixtures: the memory store as the fake, real servers over real HTTP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ciphervec.engine.arrays.ann import load_faiss
from ciphervec.engine.arrays.backend import select
from ciphervec.engine.service import IndexService
from ciphervec.engine.store.manifest import RetryPolicy
from ciphervec.infra.storage.memory import MemoryStore

load_faiss()  # before a test module's own `import faiss`: the OpenBLAS kernels the server runs

ROOT = Path(__file__).resolve().parent.parent
ROOT_KEY = "test-root-key-0123456789"
# Credentials and a region for moto: fake, so that nothing can reach real AWS.
FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


# The backend engine-level tests run on: numpy by default; `make test` runs them again with
# CIPHERVEC_BACKEND=strict (array-api-strict), which refuses anything non-portable.
BACKEND = os.environ.get("CIPHERVEC_BACKEND", "numpy")


@pytest.fixture
def service(store: MemoryStore) -> IndexService:
    return IndexService(
        store, train_threshold=10**9, backend=select(BACKEND), retry=RetryPolicy(sleep=lambda s: None)
    )


def _has_cupy() -> bool:
    try:
        import cupy

        return bool(cupy.is_available())
    except ImportError:
        return False


@pytest.fixture(
    params=[
        "numpy",
        "strict",
        pytest.param(
            "cupy", marks=[pytest.mark.gpu, pytest.mark.skipif(not _has_cupy(), reason="needs CuPy")]
        ),
    ]
)
def xp(request: pytest.FixtureRequest) -> Any:
    """An array namespace the engine's array math must run on unchanged."""
    if request.param == "numpy":
        import array_api_compat.numpy

        return array_api_compat.numpy
    if request.param == "strict":
        import array_api_strict

        return array_api_strict
    import array_api_compat.cupy

    return array_api_compat.cupy


def host(x: Any) -> np.ndarray:
    """Any namespace's array as numpy (for assertions)."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "get"):  # CuPy
        return np.asarray(x.get())
    return np.from_dlpack(x)


@pytest.fixture
def kek() -> bytes:
    return os.urandom(32)


def clustered(n: int, d: int, clusters: int = 32, seed: int = 0, spread: float = 0.35) -> np.ndarray:
    """Seeded clustered data: a stand-in for real embeddings in small tests."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, d)).astype(np.float32)
    labels = rng.integers(0, clusters, n)
    return (centers[labels] + spread * rng.standard_normal((n, d))).astype(np.float32)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``ciphervec serve`` in a subprocess on a free port."""

    def __init__(self, tmp: Path, *args: str, env: dict[str, str] | None = None, name: str = "srv") -> None:
        self.port_file = tmp / f"{name}.port"
        self.log = tmp / f"{name}.log"
        self.port_file.unlink(missing_ok=True)
        full_env = {**os.environ, "CIPHERVEC_ROOT_KEY": ROOT_KEY, **(env or {})}
        cmd = [sys.executable, "-m", "ciphervec.handlers.cli", "serve", "--port", "0"]
        cmd += ["--port-file", str(self.port_file), *args]
        self.proc = subprocess.Popen(
            cmd, cwd=tmp, env=full_env, stdout=open(self.log, "w"), stderr=subprocess.STDOUT
        )
        deadline = time.time() + 60
        while not self.port_file.exists() or not self.port_file.read_text():
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"server did not start: {self.log.read_text()}")
            time.sleep(0.05)
        self.port = int(self.port_file.read_text())
        self.url = f"http://127.0.0.1:{self.port}"

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        key: str | None = ROOT_KEY,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if key:
            req.add_header("X-API-Key", key)
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                text = resp.read()
                return resp.status, json.loads(text) if text else None, dict(resp.headers)
        except urllib.error.HTTPError as err:
            text = err.read()
            return err.code, json.loads(text) if text else None, dict(err.headers)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# The fixtures that start a server (ciphervec serve, a moto server): every test using one is
# marked `slow`, so `pytest -m "not slow"` is a quick loop over the rest; `make test` runs all.
SERVER_FIXTURES = frozenset({"server_factory", "served", "server", "moto_server", "moto_s3", "moto_aws"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def server_factory(tmp_path: Path):
    servers: list[Server] = []

    def start(*args: str, **kw: Any) -> Server:
        srv = Server(tmp_path, *args, **kw)
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.stop()


def conforms(method: str, path: str, body: Any) -> str:
    """Validate an answer body against the answer model the route documents (extra fields
    refused); returns the route's template."""
    from ciphervec.handlers import api  # noqa: F401 (registers every route)
    from ciphervec.handlers.routing import find

    found = find(method, path)
    assert found is not None, (method, path)
    entry = found[0]
    assert entry.answer is not None, f"{method} {entry.template} documents no answer"
    entry.answer.model_validate(body)
    return entry.template
