"""The bytes of ``ciphervec serve``'s HTTP/1.1 answers (status line, headers, JSON
refusals) and the parsed request the event loop hands to a request thread."""

from __future__ import annotations

import json

STATUS = {
    200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 400: "Bad Request",
    401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    408: "Request Timeout", 409: "Conflict", 413: "Content Too Large", 422: "Unprocessable Content",
    429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable",
    507: "Insufficient Storage",
}  # fmt: skip
_DROPPED = frozenset({"content-length", "connection", "transfer-encoding"})


def json_detail(status: int, detail: str) -> bytes:
    """A refusal's body: `{"status_code", "detail"}`."""
    return json.dumps({"status_code": status, "detail": detail}).encode()


def status_head(status: int, headers: list[tuple[str, str]], length: int, close: bool) -> bytes:
    """The status line and headers of an answer of `length` bytes."""
    lines = [f"HTTP/1.1 {status} {STATUS.get(status, 'Status')}"]
    lines += [f"{k}: {v}" for k, v in headers if k.lower() not in _DROPPED]
    lines.append(f"content-length: {length}")
    if close:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class Request:
    """One parsed request, handed from the event loop to a worker."""

    __slots__ = ("method", "url", "headers", "body", "keep_alive")

    def __init__(
        self, method: str, url: bytes, headers: dict[str, str], body: bytes, keep_alive: bool
    ) -> None:
        self.method, self.url, self.headers, self.body, self.keep_alive = (
            method,
            url,
            headers,
            body,
            keep_alive,
        )
