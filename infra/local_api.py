"""A real HTTP server that turns each request into an API Gateway HTTP API (v2) event
and hands it to the same ``lambda_handler`` that Lambda runs. Threaded, keep-alive."""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger("ciphervec.local_api")

_DRAIN_LIMIT = 1 << 30
Handler = Callable[[dict[str, Any], Any], dict[str, Any]]


class LocalContext:
    """The few attributes of a Lambda context that code may read."""

    function_name = "ciphervec-local"
    function_version = "$LATEST"
    memory_limit_in_mb = 0
    invoked_function_arn = "arn:aws:lambda:local:000000000000:function:ciphervec-local"

    def __init__(self, request_id: str) -> None:
        self.aws_request_id = request_id

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 900_000


def to_event(
    method: str, target: str, headers: dict[str, str], body: bytes, source_ip: str
) -> dict[str, Any]:
    """Build an API Gateway v2 event for one HTTP request."""
    parts = urlsplit(target)
    request_id = headers.get("x-request-id") or os.urandom(12).hex()
    try:
        text, is_b64 = body.decode("utf-8"), False
    except UnicodeDecodeError:
        text, is_b64 = base64.b64encode(body).decode(), True
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": parts.path,
        "rawQueryString": parts.query,
        "headers": headers,
        "requestContext": {
            "accountId": "local",
            "apiId": "local",
            "domainName": headers.get("host", "localhost"),
            "http": {
                "method": method,
                "path": parts.path,
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": headers.get("user-agent", ""),
            },
            "requestId": request_id,
            "routeKey": "$default",
            "stage": "$default",
            "timeEpoch": 0,
        },
        "body": text,
        "isBase64Encoded": is_b64,
    }


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Nagle off: headers and body are two writes, which would otherwise wait for a
    # delayed ACK (~40 ms per response on Linux loopback).
    disable_nagle_algorithm = True
    server: LocalServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s %s", self.address_string(), format % args)

    def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for key, value in headers.items():
            if key.lower() not in ("content-length", "connection"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close" if self.close_connection else "keep-alive")
        # Headers and body leave in one write (one syscall, one segment for small answers).
        self._headers_buffer.append(b"\r\n")  # what end_headers() adds before flushing
        if self.command != "HEAD":
            self._headers_buffer.append(body)
        self.flush_headers()

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        limit = self.server.max_body_bytes
        if limit and length > limit:
            # Drain (bounded) so the client reads our answer instead of a broken pipe.
            remaining = length if length <= _DRAIN_LIMIT else 0
            while remaining > 0:
                chunk = self.rfile.read(min(remaining, 1 << 20))
                if not chunk:
                    break
                remaining -= len(chunk)
            self.close_connection = True
            detail = (
                f'{{"status_code":413,"detail":"request body is {length} bytes; the limit is {limit}. '
                'Split the batch into smaller upserts."}'
            )
            self._answer(413, {"Content-Type": "application/json"}, detail.encode())
            return
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        event = to_event(self.command, self.path, headers, body, self.client_address[0])
        result = self.server.handler(event, LocalContext(event["requestContext"]["requestId"]))
        raw = result.get("body") or ""
        payload = base64.b64decode(raw) if result.get("isBase64Encoded") else raw.encode("utf-8")
        out_headers = dict(result.get("headers") or {})
        for key, values in (result.get("multiValueHeaders") or {}).items():
            out_headers[key] = ", ".join(values)
        self._answer(int(result.get("statusCode", 500)), out_headers, payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle


class LocalServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: Handler, max_body_bytes: int) -> None:
        super().__init__(address, _RequestHandler)
        self.handler = handler
        self.max_body_bytes = max_body_bytes
