"""An HTTP request as the API Gateway HTTP API (v2) event and the Lambda context the
handler sees in AWS: what ``ciphervec serve`` (``infra/server.py``) hands ``lambda_handler``."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]


class LocalContext:
    """The few attributes of a Lambda context that code may read."""

    __slots__ = ("aws_request_id",)
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
    method: str, path: str, query: str, headers: dict[str, str], body: bytes, source_ip: str
) -> dict[str, Any]:
    """An API Gateway v2 event for one HTTP request. The body stays bytes (API Gateway
    would give text, or base64 for binary; the handler takes either): no copy of it is made."""
    request_id = headers.get("x-request-id") or os.urandom(12).hex()
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
        "headers": headers,
        "requestContext": {
            "accountId": "local",
            "apiId": "local",
            "domainName": headers.get("host", "localhost"),
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": headers.get("user-agent", ""),
            },
            "requestId": request_id,
            "routeKey": "$default",
            "stage": "$default",
            "timeEpoch": 0,
        },
        "body": body,
        "isBase64Encoded": False,
    }
