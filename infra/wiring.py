"""Composition root: settings → adapters → IndexService, built once per container."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from ..engine.arrays import ann
from ..engine.arrays.backend import select
from ..engine.service import IndexService
from . import aws, memory
from .embedding import SentenceTransformerModels
from .embedding_onnx import OnnxModels
from .keystore import Authenticator, open_keystore
from .kms import AwsKmsWrapper, open_key_wrapper
from .loading import LocalLoads, QueueLoads
from .metrics import RequestMetrics
from .settings import Settings
from .storage import open_store
from .throttle import FailureThrottle, SharedFailureThrottle
from .training import LambdaTrainer, LocalTrainer

log = logging.getLogger("ciphervec.wiring")


@dataclass
class Container:
    settings: Settings
    service: IndexService
    auth: Authenticator
    trainer: Any
    loads: Any  # LocalLoads or QueueLoads
    s3: Any = None  # the S3 client loads read sources with (None: boto3's default)
    throttle: FailureThrottle = field(default_factory=FailureThrottle)  # failed keys, per process
    embedder: Any = None  # engine.embedding.Embedder (OnnxModels or SentenceTransformerModels)
    metrics: RequestMetrics = field(default_factory=RequestMetrics)  # per process


_container: Container | None = None


def embedding_runtime(settings: Settings, s3: Any = None) -> Any:
    """ONNX Runtime on the build's export (``auto``: wherever it is installed), else
    sentence-transformers on torch (``torch``, or no export here)."""
    if settings.embed_runtime != "torch":
        onnx = OnnxModels(settings.model_dir, settings.embed_batch)
        if settings.embed_runtime == "onnx" or onnx.available():
            return onnx
    return SentenceTransformerModels(settings.model_dir, settings.embed_batch, settings.embed_device, s3=s3)


_lock = threading.Lock()


def build(settings: Settings, **clients: Any) -> Container:
    """Build every adapter from ``settings``; ``clients`` injects boto3 clients (tests)."""
    memory.tune()
    aws.renew()  # a new container reads the environment again: AWS clients too (region, endpoint)
    store = open_store(settings.store_uri, s3_client=clients.get("s3"))
    wrapper = open_key_wrapper(settings.kms_uri, settings.kms_keys)
    if isinstance(wrapper, AwsKmsWrapper) and clients.get("kms") is not None:
        wrapper._client = clients["kms"]
    service = IndexService(
        store,
        wrapper,
        train_threshold=settings.train_threshold,
        backend=select(settings.backend),
        cache_bytes=settings.cache_bytes,
        merge_at=settings.merge_at,
        lazy_rows=settings.lazy_rows,
        max_filter_scan=settings.max_filter_scan or None,
    )
    keys = open_keystore(settings.keys_uri, dynamodb_client=clients.get("dynamodb"))
    auth = Authenticator(
        keys,
        root_key=settings.root_key,
        enabled=settings.auth,
        cache_seconds=settings.key_cache_seconds,
    )
    trainer: Any
    if settings.train_function:
        trainer = LambdaTrainer(service, settings.train_function, client=clients.get("lambda"))
    else:
        trainer = LocalTrainer(service)
    embedder = embedding_runtime(settings, clients.get("s3"))
    loads: Any
    if settings.load_queue:
        loads = QueueLoads(service, settings.load_queue, client=clients.get("sqs"))
    else:
        loads = LocalLoads(
            service, trainer, workers=settings.load_workers, s3=clients.get("s3"), embedder=embedder
        )
    if not settings.auth:
        log.warning("authentication is OFF (explicitly configured); never do this outside development")
    limits: dict[str, Any] = {
        "limit": settings.throttle_failures,
        "window": settings.throttle_window_seconds,
        "lock_seconds": settings.throttle_lock_seconds,
    }
    throttle = (
        SharedFailureThrottle(
            settings.throttle_table, client=clients.get("dynamodb"), secret=settings.throttle_secret, **limits
        )
        if settings.throttle_table
        else FailureThrottle(**limits)
    )
    return Container(
        settings, service, auth, trainer, loads, clients.get("s3"), throttle=throttle, embedder=embedder
    )


def container() -> Container:
    """The process-wide container, built from the environment on first use."""
    global _container
    if _container is not None:  # every request asks: no lock once built
        return _container
    with _lock:
        if _container is None:
            _container = build(Settings.from_env())
        return _container


def configure(settings: Settings | None = None, **clients: Any) -> Container:
    """Replace the process-wide container (CLI and tests)."""
    global _container
    with _lock:
        _container = build(settings or Settings.from_env(), **clients)
        return _container


def aws_services(settings: Settings) -> list[str]:
    """The AWS services ``settings`` send requests to (their clients are worth making ahead)."""
    wanted = {
        "s3": settings.store_uri.startswith("s3://") or bool(settings.load_bucket),
        "dynamodb": settings.keys_uri.startswith("dynamodb://") or bool(settings.throttle_table),
        "kms": settings.kms_uri == "aws",
        "lambda": bool(settings.train_function),
        "sqs": bool(settings.load_queue),
    }
    return [name for name, used in wanted.items() if used]


def warm() -> Container:
    """Load ahead what the first request would: the container, faiss, and the boto3 clients
    of the services the settings name (a Lambda SnapStart snapshot keeps all of it)."""
    c = container()
    if ann.HAS_FAISS:
        ann.faiss.IndexFlatL2  # noqa: B018 - the attribute imports faiss
    aws.warm(*aws_services(c.settings))
    return c


def renew() -> None:
    """After a SnapStart restore: boto3 clients made again (connections and credentials of
    the snapshot belong to the environment that took it); the container itself holds none."""
    aws.renew()
