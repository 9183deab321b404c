"""The route table: which function serves a method and path, the wire model of its body, and
the template that metrics, logs and the OpenAPI document name it by.

A static path is one dictionary lookup; the few paths with a parameter (``<index_name>``)
are matched by pattern. It replaces powertools' resolver on the request path: that walked
every route's pattern, built a middleware chain, an event wrapper and a response builder
per request — 0.4 to 0.5 ms of a single query's CPU on this 2-core box (in-process, the
handler fed API Gateway events), where this table costs microseconds. The API Gateway
semantics stay: HTTP API and REST API events, stage prefixes, CORS, 404/405 (``api``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel


@dataclass(frozen=True)
class Route:
    """One operation: ``method`` on ``template`` (``/v1/indexes/<index_name>/users``)."""

    method: str
    template: str
    pattern: re.Pattern[str]
    body: type[BaseModel] | None
    fn: Callable[..., Any]
    dynamic: bool
    documented: bool  # part of the OpenAPI document (the document and its page are not)
    answer: type[BaseModel] | None = None  # the success body (handlers/responses.py)
    accepted: bool = False  # may also answer 202 (the work goes on in the background)
    status: int = 200  # the success status

    @property
    def tag(self) -> str:
        """The group the documentation page lists it under."""
        if "/users" in self.template:
            return "users"
        if self.template.startswith(("/v1/loads", "/v1/vectors/load")):
            return "batch loads"
        if self.template.startswith("/v1/indexes"):
            return "indexes"
        if self.template.startswith("/v1/vectors"):
            return "vectors"
        return "service"


ROUTES: list[Route] = []
_static: dict[tuple[str, str], Route] = {}
_dynamic: list[Route] = []
_paths: set[str] = set()  # static paths served by any method (a wrong method is a 405)


def route(
    method: str,
    path: str,
    body: type[BaseModel] | None = None,
    *,
    answer: type[BaseModel] | None = None,
    accepted: bool = False,
    status: int = 200,
    documented: bool = True,
) -> Callable[[Any], Any]:
    """Register the decorated function as ``method path``; ``<name>`` parts of the path are
    passed to it as keyword arguments. ``body``: the request's wire model; ``answer``: the
    success body's; the function's docstring is the operation's summary and description."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        dynamic = "<" in path
        pattern = re.compile("^" + re.sub(r"<(\w+)>", r"(?P<\1>[^/]+)", path) + r"\Z")
        entry = Route(method, path, pattern, body, fn, dynamic, documented, answer, accepted, status)
        ROUTES.append(entry)
        if dynamic:
            _dynamic.append(entry)
        else:
            _static[(method, path)] = entry
            _paths.add(path)
        return fn

    return register


def find(method: str, path: str) -> tuple[Route, dict[str, str]] | None:
    """The route serving ``method path`` and its path parameters, or ``None``."""
    found = _static.get((method, path))
    if found is not None:
        return found, {}
    for entry in _dynamic:
        if entry.method == method and (match := entry.pattern.match(path)):
            return entry, match.groupdict()
    return None


def served(path: str) -> bool:
    """Whether any method is served on ``path`` (so another method is a 405, not a 404)."""
    return path in _paths or any(entry.pattern.match(path) for entry in _dynamic)


def methods() -> list[str]:
    """Every method some route serves (CORS preflight answers)."""
    return sorted({entry.method for entry in ROUTES} | {"OPTIONS"})
