"""Where an index's objects live: escaped tenant and index roots, time-ordered object ids."""

from __future__ import annotations

import os
import time
from urllib.parse import quote, unquote


def new_id() -> str:
    """Time-ordered unique object id: 16 hex digits of nanoseconds + 16 random."""
    return f"{time.time_ns():016x}{os.urandom(8).hex()}"


def born(obj: str, default: float) -> float:
    """The creation time (seconds) encoded in an object name from ``new_id``."""
    return int(obj.split("/")[-1][:16], 16) / 1e9 if "/" in obj else default


def base_name(obj: str) -> str:
    """The run an object belongs to (``run/<id>-<k>`` → ``run/<id>``); others unchanged."""
    return obj.split("-", 1)[0] if obj.startswith("run/") else obj


def escape(name: str) -> str:
    """One path component: percent-encoded, never ``.`` or ``..``."""
    escaped = quote(name, safe="")
    return "%2E" + escaped[1:] if escaped.startswith(".") else escaped


def unescape(part: str) -> str:
    return unquote(part)


def tenant_root(prefix: str, tenant: str) -> str:
    return f"{prefix}{escape(tenant)}/"


def index_root(prefix: str, tenant: str, name: str) -> str:
    return f"{tenant_root(prefix, tenant)}{escape(name)}/"
