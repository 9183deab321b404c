"""The process's AWS clients: one per service and configuration, made on first use and
shared by every adapter, and renewed after a Lambda SnapStart restore.

A restored snapshot runs in another execution environment: the connections a client pooled
and the credentials it resolved before the snapshot belong to the environment that took it.
``renew()`` forgets the clients and their session; the service models botocore parsed (the
slow part of making a client: ~50 ms each) are kept, so a renewed client is cheap.
"""

from __future__ import annotations

import json
import threading
from typing import Any

_lock = threading.Lock()
_clients: dict[str, Any] = {}
_core: Any = None  # the botocore session clients are made from
_session: Any = None  # a boto3 session over it, for resources
_loader: Any = None  # botocore's data loader (parsed service models), kept across renewals
generation = 0  # incremented by every renewal: holders of derived objects (tables) rebuild them


def _botocore_session() -> Any:
    global _core
    if _core is None:
        import botocore.session

        _core = botocore.session.Session()
        if _loader is not None:
            _core.register_component("data_loader", _loader)
    return _core


def _boto3_session() -> Any:
    global _session
    if _session is None:
        import boto3

        _session = boto3.Session(botocore_session=_botocore_session())
    return _session


def _make(kind: str, service: str, config: dict[str, Any] | None) -> Any:
    key = f"{kind}:{service}:{json.dumps(config, sort_keys=True) if config else ''}"
    found = _clients.get(key)
    if found is not None:
        return found
    with _lock:  # a session makes one client at a time
        found = _clients.get(key)
        if found is None:
            from botocore.config import Config

            options = {"config": Config(**config)} if config else {}
            if kind == "client":  # botocore's own: boto3 and s3transfer are not imported for it
                found = _botocore_session().create_client(service, **options)
            else:
                found = _boto3_session().resource(service, **options)
            _clients[key] = found
        return found


def client(service: str, config: dict[str, Any] | None = None) -> Any:
    """The shared client of ``service`` (``config``: botocore ``Config`` options)."""
    return _make("client", service, config)


def resource(service: str, config: dict[str, Any] | None = None) -> Any:
    """The shared boto3 resource of ``service``."""
    return _make("resource", service, config)


def warm(*services: str) -> None:
    """Make the clients of ``services`` now (their service models parsed and kept)."""
    for service in services:
        client(service)


def renew() -> None:
    """Forget every client, its connections and its credentials; keep the parsed models."""
    global _session, _core, _loader, generation
    with _lock:
        if _core is not None:
            _loader = _core.get_component("data_loader")
        _session = _core = None
        _clients.clear()
        generation += 1
