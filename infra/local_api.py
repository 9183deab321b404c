"""An HTTP request as the API Gateway HTTP API (v2) event and the Lambda context the
handler sees in AWS: what ``ciphervec serve`` (``infra/asgi.py``) hands ``lambda_handler``."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

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
