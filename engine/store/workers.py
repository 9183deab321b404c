"""Who is doing a job, and whether they still can: a worker is named by host, process id and
the process's start time, so a job marked by a process that has since died (or whose pid
was reused) is recognised as orphaned and taken up again."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any


def _start_time(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot), or None if there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 of stat, after the command name


def this_worker() -> str:
    """This process, as a worker name."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_time(pid) or 0}"


def gone(worker: str | None) -> bool:
    """Whether ``worker`` is a process on this host that no longer runs. Workers elsewhere
    (another host, a Lambda function) cannot be seen from here: they are not called gone."""
    if not worker or worker.count(":") != 2:
        return False
    host, pid, started = worker.split(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    if not Path("/proc/self/stat").exists():  # no /proc here: ask the kernel by signal 0
        return not alive(int(pid))
    return _start_time(int(pid)) != started  # no such process, or another one under its pid


def mark(worker: str, now: float, until: float | None = None, **extra: Any) -> dict[str, Any]:
    """A job mark for a head: who (``worker``) since when, and ``until``, the time it stops
    for sure when it knows one (a Lambda invocation's deadline); ``holds`` reads it."""
    out: dict[str, Any] = {**extra, "since": now, "worker": worker}
    if until is not None:
        out["until"] = until
    return out


def holds(mark: dict[str, Any] | None, now: float, stale_seconds: float, grace: float = 60.0) -> bool:
    """Whether a job mark in a head (``{"since", "worker", "until"?}``) still stands for work
    someone may be doing: not older than ``stale_seconds``, not more than ``grace`` past
    the deadline its worker gave (``until``: a Lambda invocation's end), and not by a
    process of this host that has died since."""
    if not mark:
        return False
    if now - float(mark.get("since", 0)) >= stale_seconds:
        return False
    if mark.get("until") is not None and now > float(mark["until"]) + grace:
        return False
    return not gone(mark.get("worker"))


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (signal 0)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
