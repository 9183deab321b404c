"""`ciphervec serve` as an HTTP server, spoken to over raw sockets: framing a proxy could be
fooled by, methods without routes, slow and idle clients, and JSON for every refusal."""

from __future__ import annotations

import base64
import json
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT_KEY

KEY = bytes(range(32)).hex()


@pytest.fixture
def srv(server_factory, tmp_path: Path):
    env = {
        "CIPHERVEC_HTTP_HEADER_SECONDS": "1",
        "CIPHERVEC_HTTP_BODY_SECONDS": "1",
        "CIPHERVEC_HTTP_KEEP_ALIVE_SECONDS": "1",
        "CIPHERVEC_MAX_BODY_BYTES": str(1 << 20),
    }
    server = server_factory("--store", f"file://{tmp_path}/data", env=env)
    status, _, _ = server.request(
        "POST", "/v1/indexes/create", {"index_name": "h", "index_key": KEY, "dimension": 2}
    )
    assert status == 200
    return server


def exchange(port: int, raw: bytes, wait: float = 5.0) -> bytes:
    """Send ``raw`` and read until the server closes or ``wait`` passes."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(raw)
        out = b""
        deadline = time.time() + wait
        while time.time() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            out += chunk
        return out


def parse(raw: bytes) -> list[tuple[int, dict]]:
    """Every response in ``raw``: (status, JSON body)."""
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = dict(line.decode().lower().split(": ", 1) for line in lines[1:])
        n = int(headers.get("content-length", 0))
        assert headers.get("content-type", "").startswith("application/json"), headers
        out.append((status, json.loads(rest[:n])))
        raw = rest[n:]
    return out


def request(method: str, path: str, body: bytes = b"", headers: str = "") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nX-API-Key: {ROOT_KEY}\r\n{headers}"
    if body and "transfer-encoding" not in headers.lower():
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


@pytest.mark.parametrize("method", ["OPTIONS", "TRACE", "PATCH"])
def test_methods_without_a_route_are_405_json(srv, method):
    [(status, body)] = parse(
        exchange(srv.port, request(method, "/v1/health", headers="Connection: close\r\n"))
    )
    assert status == 405 and body["status_code"] == 405


def test_malformed_content_length_is_a_json_400(srv):
    raw = request("POST", "/v1/vectors/num_vectors", b"{}", "Content-Length: abc\r\n")
    [(status, body)] = parse(exchange(srv.port, raw.replace(b"Content-Length: 2\r\n", b"")))
    assert status == 400 and body["status_code"] == 400


def test_a_chunked_body_is_the_body_not_a_second_request(srv):
    body = json.dumps(
        {
            "index_name": "h",
            "index_key": KEY,
            "batch": {"ids": ["c"], "vectors_b64": "AACAPwAAAEA=", "dimension": 2},
        }
    ).encode()
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:10], body[10:])) + b"0\r\n\r\n"
    raw = request(
        "POST", "/v1/vectors/upsert_binary", chunked, "Transfer-Encoding: chunked\r\nConnection: close\r\n"
    )
    answers = parse(exchange(srv.port, raw))
    assert [s for s, _ in answers] == [200]  # one request, one answer
    status, out, _ = srv.request("POST", "/v1/vectors/num_vectors", {"index_name": "h", "index_key": KEY})
    assert out["result"] == 1


def test_a_body_that_never_completes_is_a_408_and_frees_the_connection(srv):
    raw = request("POST", "/v1/vectors/num_vectors", b"", "Content-Length: 100\r\n") + b'{"index_'
    [(status, body)] = parse(exchange(srv.port, raw, wait=5))
    assert status == 408


def test_slow_headers_and_idle_connections_are_closed(srv):
    t0 = time.time()
    assert exchange(srv.port, b"GET /v1/hea", wait=5) == b""  # closed, no answer
    assert time.time() - t0 < 4
    t0 = time.time()
    assert exchange(srv.port, b"", wait=5) == b""
    assert time.time() - t0 < 4


def test_hundreds_of_idle_connections_cost_no_threads(srv):
    # from three addresses (all of 127/8 is loopback): one address may hold 256 at most
    socks = [
        socket.create_connection(("127.0.0.1", srv.port), source_address=(f"127.0.0.{2 + i % 3}", 0))
        for i in range(300)
    ]
    try:
        status, body, _ = srv.request("GET", "/v1/health", key=None)
        assert status == 200
        threads = int(
            next(
                line.split()[1]
                for line in Path(f"/proc/{srv.proc.pid}/status").read_text().splitlines()
                if line.startswith("Threads:")
            )
        )
        assert threads < 60  # the stdlib server held one thread per connection (300+)
    finally:
        for s in socks:
            s.close()


def test_oversized_body_is_a_json_413(srv):
    big = b"x" * (2 << 20)
    [(status, body)] = parse(
        exchange(srv.port, request("POST", "/v1/vectors/upsert", big, "Connection: close\r\n"))
    )
    assert status == 413 and "limit" in body["detail"]


def test_accepted_connections_send_without_nagle_delay():
    """The listening socket says it is TCP, so asyncio turns Nagle off on every accepted
    connection: a response's headers and body go out at once instead of ~40 ms apart."""
    from ciphervec.handlers.cli import _listen

    listener = _listen("127.0.0.1", 0)
    with listener, socket.create_connection(listener.getsockname()[:2]):
        accepted, _ = listener.accept()
        with accepted:
            assert accepted.proto == socket.IPPROTO_TCP
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_over_the_connection_limit_is_a_json_503(server_factory, tmp_path: Path):
    srv = server_factory(
        "--store", f"file://{tmp_path}/data", env={"CIPHERVEC_HTTP_MAX_CONNECTIONS": "3"}, name="limited"
    )
    held = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(3)]
    try:
        [(status, body)] = parse(exchange(srv.port, request("GET", "/v1/health"), wait=3))
        assert status == 503 and body["status_code"] == 503 and "retry" in body["detail"]
    finally:
        for s in held:
            s.close()
    time.sleep(0.2)
    assert srv.request("GET", "/v1/health", key=None)[0] == 200


def test_cors_preflight_and_headers_for_configured_origins(server_factory, tmp_path: Path):
    env = {"CIPHERVEC_CORS_ORIGINS": "https://app.example, https://admin.example"}
    srv = server_factory("--store", f"file://{tmp_path}/data", env=env, name="cors")
    ask = "Origin: https://admin.example\r\nAccess-Control-Request-Method: POST\r\n"
    raw = exchange(srv.port, request("OPTIONS", "/v1/vectors/query", headers=ask), wait=2)
    head = raw.split(b"\r\n\r\n")[0].decode().lower()
    assert head.startswith("http/1.1 204")
    assert "access-control-allow-origin: https://admin.example" in head and "x-api-key" in head
    status, _, headers = srv.request("GET", "/v1/health", key=None, headers={"Origin": "https://app.example"})
    lowered = {k.lower(): v for k, v in headers.items()}
    assert status == 200 and lowered["access-control-allow-origin"] == "https://app.example"
    _, _, headers = srv.request("GET", "/v1/health", key=None, headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in {k.lower() for k in headers}


def test_a_body_trickled_under_the_minimum_rate_is_a_408_after_the_grace(server_factory, tmp_path: Path):
    """One byte a second keeps a connection busy for minutes when only the gap between
    pieces is bounded; the minimum rate (240 B/s after the grace) closes it early."""
    env = {"CIPHERVEC_HTTP_BODY_GRACE_SECONDS": "1", "CIPHERVEC_HTTP_BODY_SECONDS": "30"}
    srv = server_factory("--store", f"file://{tmp_path}/data", env=env, name="trickle")
    head = request("POST", "/v1/vectors/num_vectors", b"", "Content-Length: 1000\r\n")
    t0 = time.time()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(head)
        out = b""
        while time.time() - t0 < 10:
            try:
                sock.sendall(b" ")
            except OSError:  # closed by the server
                break
            sock.settimeout(0.25)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                break
            out += chunk
    [(status, body)] = parse(out)
    assert status == 408 and "bytes/s" in body["detail"]
    assert time.time() - t0 < 4  # the grace (1 s), not the 30 s gap limit


def test_a_slow_but_steady_body_is_accepted(server_factory, tmp_path: Path):
    env = {"CIPHERVEC_HTTP_BODY_GRACE_SECONDS": "0.5"}
    srv = server_factory("--store", f"file://{tmp_path}/data", env=env, name="steady")
    body = json.dumps({"index_name": "none", "index_key": KEY, "pad": "x" * 3000}).encode()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(request("POST", "/v1/vectors/num_vectors", b"", f"Content-Length: {len(body)}\r\n"))
        for i in range(0, len(body), 600):  # ~1,200 bytes/s, over the minimum of 240
            sock.sendall(body[i : i + 600])
            time.sleep(0.5)
        head = sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 404")  # the request itself ran: the index does not exist


def test_connections_per_address_are_capped_with_a_json_429(server_factory, tmp_path: Path):
    env = {"CIPHERVEC_HTTP_CONNECTIONS_PER_ADDRESS": "2"}
    srv = server_factory("--store", f"file://{tmp_path}/data", env=env, name="capped")

    def connect(address: str) -> socket.socket:
        return socket.create_connection(("127.0.0.1", srv.port), timeout=5, source_address=(address, 0))

    held = [connect("127.0.0.7"), connect("127.0.0.7")]
    try:
        with connect("127.0.0.7") as third:
            third.sendall(request("GET", "/v1/health"))
            [(status, body)] = parse(third.recv(65536))
            assert status == 429 and "connections" in body["detail"]
        with connect("127.0.0.8") as other:  # another address is not affected
            other.sendall(request("GET", "/v1/health"))
            assert other.recv(65536).startswith(b"HTTP/1.1 200")
        held.pop().close()
        time.sleep(0.2)
        with connect("127.0.0.7") as again:  # a freed slot is free again
            again.sendall(request("GET", "/v1/health"))
            assert again.recv(65536).startswith(b"HTTP/1.1 200")
    finally:
        for s in held:
            s.close()


def test_pipelined_requests_are_answered_in_order_even_past_a_large_answer(srv):
    """Requests sent back to back on one connection get their answers in order, including
    when one answer is larger than the socket takes at once (it is finished by the loop)."""
    n, dim = 8000, 128  # an answer of ~20 MB: more than a loopback socket takes at once
    x = np.random.default_rng(0).random((n, dim), dtype=np.float32)
    assert (
        srv.request("POST", "/v1/indexes/create", {"index_name": "big", "index_key": KEY, "dimension": dim})[
            0
        ]
        == 200
    )
    ids = [f"v{i}" for i in range(n)]
    for lo in range(0, n, 1000):  # under the 1 MiB body limit of this server
        batch = {
            "ids": ids[lo : lo + 1000],
            "vectors_b64": base64.b64encode(x[lo : lo + 1000].tobytes()).decode(),
            "dimension": dim,
        }
        assert (
            srv.request(
                "POST", "/v1/vectors/upsert_binary", {"index_name": "big", "index_key": KEY, "batch": batch}
            )[0]
            == 200
        )
    batch = {"ids": ids}
    get = json.dumps(
        {"index_name": "big", "index_key": KEY, "ids": batch["ids"], "include": ["vector"]}
    ).encode()
    count = json.dumps({"index_name": "big", "index_key": KEY}).encode()
    raw = request("POST", "/v1/vectors/get", get) + request("POST", "/v1/vectors/num_vectors", count)
    raw += request("GET", "/v1/health", headers="Connection: close\r\n")
    answers = parse(exchange(srv.port, raw, wait=10))
    assert [status for status, _ in answers] == [200, 200, 200]
    assert len(answers[0][1]["results"]) == n and len(json.dumps(answers[0][1])) > 8 << 20
    assert answers[1][1] == {"result": n} and answers[2][1]["status"] == "healthy"
