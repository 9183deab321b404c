"""``ciphervec serve``'s HTTP/1.1: bytes → httptools (llhttp, the parser uvicorn uses) → the
API Gateway (HTTP API 2.0) event the Lambda handler sees, run on a pool of threads over the
shared state → bytes; uvicorn's server runs it (sockets, signals, graceful shutdown).

Where the time goes decided the shape. The handler is not an ASGI application, so there is
no ASGI in between (uvicorn's ASGI cycle and executor hop: ~0.49 ms of server CPU per
request on this 2-core box, for an empty answer). The event loop only reads and parses;
the thread that ran the request writes its answer to the socket itself (through its own
duplicate of the descriptor, so a connection closed meanwhile can never hand the answer to
another client), instead of waking the loop to write it; deadlines are checked by one
sweep four times a second instead of a timer per request. An answer too big for the
socket's buffer is finished by the loop, as is everything after it on that connection.

Every request is bounded, and every refusal is JSON: headers must arrive within
``http_header_seconds`` (else the connection closes); a body must keep arriving (a gap of
``http_body_seconds``) and, after ``http_body_grace_seconds``, average at least
``http_min_body_rate`` bytes a second (Kestrel's rule) — else 408; a body over
``max_body_bytes`` is 413; more than ``http_max_connections`` connections or requests at
once are 503, more than ``http_connections_per_address`` connections from one address 429;
malformed framing is a 400 and closes the connection. Idle keep-alive connections cost a
socket, not a thread, and close after ``http_keep_alive_seconds``.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import httptools

from . import memory
from .http_wire import Request, json_detail, status_head
from .local_api import Handler, LocalContext, to_event
from .request_threads import Workers
from .settings import Settings

log = logging.getLogger("ciphervec.server")

DRAIN_BYTES = 1 << 30  # of a refused body read and dropped before answering, so it is read
# After a refusal the connection is half-closed and what the client still sends is read and
# dropped for this long: closing at once would make the client's kernel answer its next
# bytes with a reset, which discards the refusal before the client reads it.
LINGER_SECONDS = 2.0
SWEEP_SECONDS = 0.25  # how often deadlines are checked
IDLE_TRIM_SECONDS = 2.0  # idle this long after requests: freed heap memory goes back to the OS
PIPELINED = 8  # requests queued behind the one running before reading pauses


class Shared:
    """What every connection of one server shares: the handler, the limits, the worker
    threads, the connections (for the deadline sweep), per-address counts and the number of
    requests in flight."""

    def __init__(self, handler: Handler, settings: Settings, metrics: Callable[[], bytes] | None) -> None:
        self.handler = handler
        self.settings = settings
        self.metrics = metrics
        self.workers = Workers(settings.http_threads)
        self.connections: set[ApiProtocol] = set()
        self.per_address: dict[str, int] = {}
        self.lock = threading.Lock()
        self.in_flight = 0
        self.sweeping = False
        self.last_done = 0.0  # when the last request ended (0: none since the last trim)

    def sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Check every connection's deadline (and give back the memory of a burst of
        requests once idle), then again in ``SWEEP_SECONDS``."""
        now = time.monotonic()
        for connection in list(self.connections):
            connection.check(now)
        if self.last_done and not self.in_flight and now - self.last_done >= IDLE_TRIM_SECONDS:
            self.last_done = 0.0
            memory.release()
        loop.call_later(SWEEP_SECONDS, self.sweep, loop)


class ApiProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection (keep-alive; pipelined requests answered in order).

    ``phase`` says which deadline applies: ``headers`` (since ``since``), ``body``,
    ``busy`` (a request is running: none), ``idle`` (keep-alive), ``linger`` (refused)."""

    shared: Shared  # set on the subclass ``serve`` makes

    def __init__(self, config: Any, server_state: Any, app_state: Any = None, _loop: Any = None) -> None:
        self.loop = _loop or asyncio.get_event_loop()
        self.state = server_state
        self.settings = self.shared.settings
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.address = ""
        self.counted = False  # counted in ``per_address``
        self.lock = threading.Lock()  # busy, pipeline, phase: shared with the worker
        self.busy = False
        self.pipeline: deque[Request] = deque()
        self.paused = False  # reading paused: too many pipelined requests
        self.keep_alive = True  # false once the server shuts down
        self.via_loop = False  # answers go through the transport (one did not fit the socket)
        self.phase = "headers"
        self.since = time.monotonic()
        self.partial = False  # a request's headers or body have begun
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.size = 0
        self.refused = 0  # the status a request is refused with once its body is drained
        self.reason = ""
        self.body_started = self.last_chunk = 0.0

    # -- the connection -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        shared = self.shared
        self.transport = transport
        self.state.connections.add(self)
        shared.connections.add(self)
        if not shared.sweeping:
            shared.sweeping = True
            self.loop.call_later(SWEEP_SECONDS, shared.sweep, self.loop)
        peer = transport.get_extra_info("peername")
        self.address = str(peer[0]) if isinstance(peer, tuple) else ""
        cap = self.settings.http_connections_per_address
        held = shared.per_address.get(self.address, 0)
        if cap and held >= cap:
            self._refuse(
                429, f"more than {cap} connections at once from this address; close some and retry", True
            )
            return
        shared.per_address[self.address] = held + 1
        self.counted = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.connections.discard(self)
        self.shared.connections.discard(self)
        if self.counted:
            self.counted = False
            left = self.shared.per_address.get(self.address, 1) - 1
            if left > 0:
                self.shared.per_address[self.address] = left
            else:
                self.shared.per_address.pop(self.address, None)

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: close now if idle, else after the answer."""
        with self.lock:
            self.keep_alive = False
            busy = self.busy
        if not busy:
            self._close()

    def _close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def check(self, now: float) -> None:
        """The deadline of the current phase (run by the sweep, on the loop)."""
        phase, s = self.phase, self.settings
        if phase == "busy":
            return
        if phase == "idle":
            if now - self.since >= s.http_keep_alive_seconds:
                self._close()
        elif phase == "headers":
            if now - self.since >= s.http_header_seconds:
                self._close()
        elif phase == "body":
            elapsed = now - self.body_started
            if now - self.last_chunk >= s.http_body_seconds:
                self._refuse(408, f"the request body did not arrive within {s.http_body_seconds:g} s")
            elif (
                s.http_min_body_rate > 0
                and elapsed >= s.http_body_grace_seconds
                and self.size < s.http_min_body_rate * elapsed
            ):
                self._refuse(
                    408,
                    f"the request body arrived at {self.size / elapsed:.0f} bytes/s, under the minimum of "
                    f"{s.http_min_body_rate:g} bytes/s (after {s.http_body_grace_seconds:g} s)",
                )
        elif phase == "linger" and now - self.since >= LINGER_SECONDS:
            self._close()

    def data_received(self, data: bytes) -> None:
        if self.phase == "linger":
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            self._refuse(400, f"malformed HTTP request: {exc}")

    def eof_received(self) -> bool | None:
        return None  # close the connection

    # -- parser callbacks (on the loop) ---------------------------------------------------
    def on_message_begin(self) -> None:
        self._reset()
        self.partial = True
        with self.lock:
            if not self.busy:
                self.phase, self.since = "headers", time.monotonic()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text

    def on_headers_complete(self) -> None:
        limit = self.settings.max_body_bytes
        declared = self.headers.get("content-length")
        if limit and declared is not None and declared.isdigit() and int(declared) > limit:
            self._over_limit(limit)
        elif self.headers.get("expect", "").lower() == "100-continue" and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.body_started = self.last_chunk = time.monotonic()
        with self.lock:
            if not self.busy:
                self.phase = "body"

    def on_body(self, chunk: bytes) -> None:
        self.size += len(chunk)
        self.last_chunk = time.monotonic()
        if self.refused:
            if self.size > DRAIN_BYTES:
                self._refuse(self.refused, self.reason)
            return
        self.body.append(chunk)
        limit = self.settings.max_body_bytes
        if limit and self.size > limit:
            self.body = []
            self._over_limit(limit)

    def on_message_complete(self) -> None:
        self.partial = False
        if self.refused:
            self._refuse(self.refused, self.reason)
            return
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        method = self.parser.get_method().decode("ascii")
        request = Request(method, self.url, self.headers, body, self.parser.should_keep_alive())
        self.body = []
        with self.lock:
            queued = self.busy
            if queued:
                self.pipeline.append(request)
                pause = len(self.pipeline) >= PIPELINED and not self.paused
                self.paused = self.paused or pause
            else:
                self.busy, self.phase = True, "busy"
        if not queued:
            self._start(request)
        elif pause and self.transport is not None:
            self.transport.pause_reading()

    # -- bounds -------------------------------------------------------------------------
    def _over_limit(self, limit: int) -> None:
        self.refused = 413
        self.reason = (
            f"request body is over the {limit}-byte limit. Split the batch into smaller upserts, "
            "or load large batches through the S3 batch path"
        )

    def _refuse(self, status: int, detail: str, retry_after: bool = False) -> None:
        """Answer ``status`` as JSON and close the connection (after a short linger)."""
        transport = self.transport
        if transport is None or transport.is_closing() or self.phase == "linger":
            return
        self.phase, self.since = "linger", time.monotonic()
        body = json_detail(status, detail)
        headers = [("content-type", "application/json")]
        if retry_after:
            headers.append(("retry-after", "1"))
        transport.write(status_head(status, headers, len(body), True) + body)
        if transport.can_write_eof():
            transport.write_eof()
        else:
            transport.close()

    # -- running a request --------------------------------------------------------------
    def _start(self, request: Request) -> None:
        """Run ``request`` on a worker (on the loop; the connection is marked busy)."""
        shared, limit = self.shared, self.settings.http_max_connections
        with shared.lock:
            over = len(self.state.connections) > limit or shared.in_flight >= limit
            if not over:
                shared.in_flight += 1
        if over:
            with self.lock:
                self.busy = False
                self.pipeline.clear()
            self._refuse(
                503, "the server is at its limit of connections and requests at once; retry shortly", True
            )
            return
        assert self.transport is not None
        # The worker's own descriptor of the socket: should the connection close meanwhile,
        # its number could be reused by another client's connection, this one cannot.
        fd = -1 if self.via_loop else os.dup(self.transport.get_extra_info("socket").fileno())
        shared.workers.submit(lambda: self._run(request, fd))

    def _run(self, request: Request | None, fd: int) -> None:
        """Answer ``request`` and those pipelined after it (on a worker)."""
        while request is not None:
            try:
                status, headers, body = self._answer(request)
            except Exception:  # the handler answers its own errors: this is a last resort
                log.exception("request failed outside the handler")
                status, headers, body = (
                    500,
                    [("content-type", "application/json")],
                    json_detail(500, "Internal server error"),
                )
            keep = request.keep_alive and self.keep_alive
            data = status_head(status, headers, len(body), not keep) + body
            rest = data if fd < 0 else self._send(fd, data)
            if rest is not None:  # the loop writes it, and carries on with the connection
                self._release(fd)
                self.loop.call_soon_threadsafe(self._written_by_loop, rest, keep)
                return
            resume = False
            with self.lock:
                request = self.pipeline.popleft() if keep and self.pipeline else None
                if request is None:
                    self.busy = False
                    self.since = time.monotonic()
                    self.phase = "headers" if self.partial else "idle"
                    resume, self.paused = self.paused, False
        self._release(fd)
        if not keep:
            self.loop.call_soon_threadsafe(self._close)
        elif resume:
            self.loop.call_soon_threadsafe(self._resume)

    @staticmethod
    def _send(fd: int, data: bytes) -> bytes | None:
        """Write ``data`` to the socket; what did not fit (or ``None``: all of it did). A
        connection the client closed drops the answer."""
        view, sent = memoryview(data), 0
        try:
            while sent < len(view):
                sent += os.write(fd, view[sent:])
        except BlockingIOError:
            return bytes(view[sent:])
        except OSError:
            return None
        return None

    def _release(self, fd: int) -> None:
        with self.shared.lock:
            self.shared.in_flight -= 1
            self.shared.last_done = time.monotonic()
        if fd >= 0:
            os.close(fd)

    def _written_by_loop(self, data: bytes, keep: bool) -> None:
        """An answer the socket could not take at once: the transport buffers it, and this
        connection's later answers go the same way, so they stay in order (on the loop)."""
        self.via_loop = True
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(data)
        if not keep:
            transport.close()
            return
        with self.lock:
            request = self.pipeline.popleft() if self.pipeline else None
            if request is None:
                self.busy = False
                self.since = time.monotonic()
                self.phase = "headers" if self.partial else "idle"
        if request is not None:
            self._start(request)
        elif self.paused:
            self._resume()

    def _resume(self) -> None:
        self.paused = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def _answer(self, request: Request) -> tuple[int, list[tuple[str, str]], bytes]:
        """Status, headers and body for ``request`` (on a worker)."""
        parsed = httptools.parse_url(request.url)
        path = parsed.path.decode("latin-1")
        if request.method == "GET" and path == "/metrics" and self.shared.metrics is not None:
            return 200, [("content-type", "text/plain; version=0.0.4")], self.shared.metrics()
        query = (parsed.query or b"").decode("latin-1")
        event = to_event(request.method, path, query, request.headers, request.body, self.address)
        request.body = b""  # the event holds it now, and the handler lets go of it once parsed
        try:
            result = self.shared.handler(event, LocalContext(event["requestContext"]["requestId"]))
        except Exception:  # the handler answers its own errors; this is a last resort
            return 500, [("content-type", "application/json")], json_detail(500, "Internal server error")
        raw = result.get("body") or ""
        if result.get("isBase64Encoded"):
            payload = base64.b64decode(raw)
        else:
            payload = raw if isinstance(raw, bytes) else raw.encode("utf-8")
        headers = list((result.get("headers") or {}).items())
        return int(result.get("statusCode") or 500), headers, b"" if request.method == "HEAD" else payload


def serve(
    sock: socket.socket, handler: Handler, settings: Settings, metrics: Callable[[], bytes] | None
) -> None:
    """Serve ``sock`` until interrupted, within the ``http_*`` settings; ``GET /metrics``
    answers ``metrics()`` (Prometheus text) when given."""
    import uvicorn

    shared = Shared(handler, settings, metrics)
    protocol = type("Http", (ApiProtocol,), {"shared": shared})

    async def unused(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover
        raise RuntimeError("requests are handled by the protocol")

    config = uvicorn.Config(
        unused,
        http=protocol,
        lifespan="off",
        access_log=False,
        log_level="warning",
        server_header=False,
        proxy_headers=False,
        backlog=2048,
    )
    uvicorn.Server(config).run(sockets=[sock])
