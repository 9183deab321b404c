"""``ciphervec serve`` on uvicorn: every HTTP request becomes the API Gateway (HTTP API,
payload 2.0) event the Lambda handler sees, run on a thread pool over the shared state.

What a production HTTP server adds over the stdlib one: a real HTTP/1.1 parser (chunked
bodies are bodies, malformed framing is a 400, never a second request), no thread per
connection (idle keep-alive connections cost a socket, not a thread), and bounds — the time
a client may take to send headers and body, the keep-alive idle time, the connections and
requests at once — with every refusal answered as JSON.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .local_api import Handler, LocalContext, to_event
from .settings import Settings

DRAIN_BYTES = 1 << 30  # of a refused body read and dropped before answering


def _json(status: int, detail: str) -> bytes:
    return json.dumps({"status_code": status, "detail": detail}).encode()


class ApiGatewayApp:
    """The ASGI application: HTTP request → API Gateway event → ``handler`` → HTTP response."""

    def __init__(self, handler: Handler, settings: Settings) -> None:
        self.handler = handler
        self.settings = settings
        self.pool = ThreadPoolExecutor(
            max_workers=settings.http_threads, thread_name_prefix="ciphervec-request"
        )

    async def _answer(self, send: Any, status: int, headers: dict[str, str], body: bytes) -> None:
        raw = [(k.lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in headers.items()]
        raw = [h for h in raw if h[0] not in (b"content-length", b"connection", b"transfer-encoding")]
        raw.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})

    async def _refuse(self, send: Any, status: int, detail: str) -> None:
        headers = {"content-type": "application/json", "connection": "close"}
        await self._answer(send, status, headers, _json(status, detail))

    async def _drain(self, receive: Any, seen: int) -> None:
        """Read and drop the rest of a refused body, up to ``DRAIN_BYTES`` in all."""
        more = True
        while more and seen < DRAIN_BYTES:
            try:
                message = await asyncio.wait_for(receive(), self.settings.http_body_seconds)
            except TimeoutError:
                return
            if message["type"] == "http.disconnect":
                return
            seen += len(message.get("body", b""))
            more = bool(message.get("more_body"))

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/metrics" and scope["method"] == "GET":  # Prometheus, no secrets in it
            from .wiring import container

            text = container().metrics.exposition()
            await self._answer(send, 200, {"content-type": "text/plain; version=0.0.4"}, text)
            return
        body = bytearray()
        limit = self.settings.max_body_bytes
        while True:
            try:
                message = await asyncio.wait_for(receive(), self.settings.http_body_seconds)
            except TimeoutError:
                await self._refuse(
                    send, 408, f"the request body did not arrive within {self.settings.http_body_seconds:g} s"
                )
                return
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if limit and len(body) > limit:
                await self._drain(receive, len(body))  # so the client reads the answer, not a reset
                await self._refuse(
                    send,
                    413,
                    f"request body is over the {limit}-byte limit. Split the batch into smaller upserts, "
                    "or load large batches through the S3 batch path",
                )
                return
            if not message.get("more_body"):
                break
        headers: dict[str, str] = {}
        for key, value in scope["headers"]:
            name = key.decode("latin-1").lower()
            text = value.decode("latin-1")
            headers[name] = f"{headers[name]}, {text}" if name in headers else text
        target = scope.get("raw_path", b"").decode("latin-1") or scope["path"]
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        client = scope.get("client") or ("", 0)
        event = to_event(scope["method"], target, headers, bytes(body), str(client[0]))
        context = LocalContext(event["requestContext"]["requestId"])
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self.pool, self.handler, event, context)
        raw = result.get("body") or ""
        payload = base64.b64decode(raw) if result.get("isBase64Encoded") else raw.encode("utf-8")
        out = dict(result.get("headers") or {})
        for key, values in (result.get("multiValueHeaders") or {}).items():
            out[key] = ", ".join(values)
        if scope["method"] == "HEAD":
            payload = b""
        await self._answer(send, int(result.get("statusCode", 500)), out, payload)


async def _over_limit(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The answer beyond ``CIPHERVEC_HTTP_MAX_CONNECTIONS``: JSON, as every other refusal."""
    body = _json(503, "the server is at its limit of connections and requests at once; retry shortly")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(b"retry-after", b"1"), (b"connection", b"close")]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BoundedHttp(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a deadline for each request's headers and JSON for
    the requests it refuses before the application sees them (malformed framing, over the
    limits)."""

    header_seconds = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        self._cancel()
        self._header_timer: asyncio.TimerHandle | None = self.loop.call_later(
            self.header_seconds, self._expire
        )

    def _cancel(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def _expire(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._cancel()
        super().on_headers_complete()

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        # uvicorn answers over its concurrency limit with plain text: answer JSON instead
        super()._start_asgi_task(cycle, _over_limit if app is service_unavailable else app)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        body = _json(400, f"malformed HTTP request: {msg}")
        head = (
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
            + b"content-length: "
            + str(len(body)).encode()
            + b"\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head + body)
        self.transport.close()


def serve(sock: socket.socket, handler: Handler, settings: Settings) -> None:
    """Serve ``sock`` until interrupted, within the ``http_*`` settings."""
    import uvicorn

    protocol = type("Http", (BoundedHttp,), {"header_seconds": settings.http_header_seconds})
    config = uvicorn.Config(
        ApiGatewayApp(handler, settings),
        http=protocol,
        lifespan="off",
        access_log=False,
        log_level="warning",
        server_header=False,
        timeout_keep_alive=int(max(1, settings.http_keep_alive_seconds)),
        limit_concurrency=settings.http_max_connections,
        backlog=2048,
    )
    uvicorn.Server(config).run(sockets=[sock])
